"""The node's kernel: netlink, interfaces, VIP address binding and route export.

The asyncio adapters every announcement mode shares to change the host: the
thread-held netlink socket (``netlink``), the interface inventory
(``interfaces``), VIPs bound as host addresses (``binding``) and VIPs written
as routes into export tables for the node's routing daemon (``routes``).
"""

"""Bidirectional Forwarding Detection (RFC 5880, 5881, 5883) for lbd's BGP sessions.

``packet``: the control packet codec; ``auth``: keyed SHA1 authentication;
``session``: the sans-IO session state machine; ``transport``: the UDP sockets
and the dedicated timing thread; ``manager``: what the BGP announcer uses.
"""

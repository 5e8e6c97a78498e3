"""pyroute2 netlink calls for asyncio code, uvloop included.

pyroute2's ``AsyncIPRoute`` opens its socket with ``create_datagram_endpoint``,
which uvloop refuses for AF_NETLINK ("invalid family 16"), and the
synchronous ``IPRoute`` cannot run inside a running loop. So lbd keeps one
synchronous ``IPRoute`` on a dedicated worker thread, driving its own plain
selector event loop, and awaits its calls from the daemon's loop. Netlink
calls are short (well under a millisecond), one thread serialises them, and
the daemon's loop never blocks on them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Netlink:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbd-netlink")
        self._ipr: Any = None

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            # An explicit SelectorEventLoop: a uvloop policy would hand out a uvloop one.
            self._ipr = IPRoute(use_event_loop=asyncio.SelectorEventLoop())
        result = getattr(self._ipr, method)(*args, **kwargs)
        if method.startswith("get_") or method in ("link", "addr", "route") and args and args[0] == "dump":
            return list(result)
        return result

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``IPRoute.<method>(*args, **kwargs)`` on the netlink thread; dumps come back as lists."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, method, args, kwargs)

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=False)

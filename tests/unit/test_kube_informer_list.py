"""Which list the informer asks for (issue 12): resourceVersion=0 first, as client-go's reflector,
so an API server answers from its watch cache in one response; a consistent, paged re-list after
a 410, including a 410 on a continue page."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lbd.sources import kube_informer
from lbd.sources.kube_client import ApiError


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(event)

    def warning(self, event: str, **kw: Any) -> None:
        raise AssertionError(f"unexpected warning {event}: {kw}")


def svc(i: int) -> dict:
    return {"metadata": {"name": f"svc-{i}", "namespace": "ns", "resourceVersion": str(100 + i)}}


class Server:
    """A fake API server. ``watch_cache``: a list at resourceVersion=0 is one response whatever
    the limit (kube-apiserver's cacher ignores limit there); other lists are paged by ``limit``.
    ``expire_pages``: the next N continue requests answer 410. ``watch_events``: what each watch
    sends before it idles (one list per watch)."""

    def __init__(self, n: int, *, watch_cache: bool, expire_pages: int = 0,
                 watch_events: list[list[dict]] | None = None) -> None:
        self.items = [svc(i) for i in range(n)]
        self.watch_cache, self.expire_pages = watch_cache, expire_pages
        self.watch_events = list(watch_events or [])
        self.lists: list[dict] = []
        self.watches: list[dict] = []
        self.watching = asyncio.Event()

    async def request(self, method: str, path: str, *, params: Any = None, **kw: Any) -> dict:
        params = dict(params or {})
        self.lists.append(params)
        start = int(params.get("continue", "0"))
        if "continue" in params and self.expire_pages > 0:
            self.expire_pages -= 1
            raise ApiError(410, "Expired", "The provided continue parameter is too old")
        limit = int(params.get("limit", "0"))
        if self.watch_cache and params.get("resourceVersion") == "0" and "continue" not in params:
            limit = 0
        limit = limit or len(self.items)
        meta: dict[str, Any] = {"resourceVersion": "555"}
        if start + limit < len(self.items):
            meta["continue"] = str(start + limit)
        return {"metadata": meta, "items": self.items[start:start + limit]}

    async def watch(self, path: str, params: Any, *, timeout: float) -> Any:
        self.watches.append(dict(params))
        for event in self.watch_events.pop(0) if self.watch_events else []:
            yield event
        self.watching.set()
        await asyncio.Event().wait()  # an idle watch until the test cancels the informer


def informer(server: Server, log: Any = None, page_size: int = 500) -> kube_informer.Informer:
    return kube_informer.Informer(server, "/api/v1/services", on_change=lambda: None,
                                  on_health=lambda p, e: True, log=log or _Log(), watch_timeout=5,
                                  backoff_initial=0.01, page_size=page_size)


async def run_until_watching(inf: kube_informer.Informer, server: Server, watches: int = 1) -> None:
    task = asyncio.create_task(inf.run())
    try:
        for _ in range(500):
            if len(server.watches) >= watches and server.watching.is_set():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"never watched {watches} times: {server.watches}, lists {server.lists}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_first_list_is_at_resource_version_0_and_one_response_from_a_watch_cache() -> None:
    server = Server(1200, watch_cache=True)
    inf = informer(server)
    await run_until_watching(inf, server)
    assert server.lists == [{"limit": "500", "resourceVersion": "0"}]
    assert len(inf.store) == 1200 and inf.synced
    assert server.watches[0]["resourceVersion"] == "555"


async def test_first_list_follows_pages_from_a_server_without_a_watch_cache() -> None:
    server = Server(1200, watch_cache=False)
    inf = informer(server)
    await run_until_watching(inf, server)
    assert server.lists == [{"limit": "500", "resourceVersion": "0"}, {"limit": "500", "continue": "500"},
                            {"limit": "500", "continue": "1000"}]
    assert len(inf.store) == 1200


async def test_a_watch_410_relists_consistently_and_in_pages() -> None:
    log = _Log()
    server = Server(1200, watch_cache=True,
                    watch_events=[[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}]])
    inf = informer(server, log)
    await run_until_watching(inf, server, watches=2)
    # the re-list has no resourceVersion ("most recent", not a possibly older cache) and is paged
    assert server.lists[1:] == [{"limit": "500"}, {"limit": "500", "continue": "500"},
                                {"limit": "500", "continue": "1000"}]
    assert log.events == ["watch_expired_relisting"] and len(inf.store) == 1200 and inf.relists == 2
    assert not inf.list_consistent  # the next 410 sets it again; a fresh informer starts at 0


@pytest.mark.parametrize("watch_cache", [True, False])
async def test_a_410_on_a_continue_page_relists_from_the_start(watch_cache: bool) -> None:
    server = Server(1200, watch_cache=watch_cache, watch_events=[
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410}}]] if watch_cache else [])
    server.expire_pages = 1
    store_during: list[int] = []
    inf = informer(server)
    real = server.request

    async def spying(*a: Any, **kw: Any) -> dict:
        store_during.append(len(inf.store))
        return await real(*a, **kw)

    server.request = spying  # type: ignore[method-assign]
    await run_until_watching(inf, server, watches=2 if watch_cache else 1)
    first_pages = [] if not watch_cache else [{"limit": "500", "resourceVersion": "0"}]
    if watch_cache:
        # the first list was whole; a watch 410 made the re-list paged, and its 2nd page expired
        assert server.lists == [*first_pages, {"limit": "500"}, {"limit": "500", "continue": "500"},
                                {"limit": "500"}, {"limit": "500", "continue": "500"},
                                {"limit": "500", "continue": "1000"}]
    else:
        assert server.lists == [{"limit": "500", "resourceVersion": "0"}, {"limit": "500", "continue": "500"},
                                {"limit": "500"}, {"limit": "500", "continue": "500"},
                                {"limit": "500", "continue": "1000"}]
    assert len(inf.store) == 1200
    # the pages of the expired list never reached the store: it held the last complete list
    assert set(store_during) <= {0, 1200}


@pytest.mark.parametrize("enabled_before", [True, False])
async def test_a_list_is_trimmed_without_the_cyclic_gc_and_leaves_it_as_found(enabled_before: bool) -> None:
    import gc

    seen: list[bool] = []
    server = Server(3, watch_cache=True)
    inf = kube_informer.Informer(server, "/api/v1/services", on_change=lambda: None, on_health=lambda p, e: True,
                                 log=_Log(), watch_timeout=5, trim=lambda o: seen.append(gc.isenabled()) or o)
    was = gc.isenabled()
    try:
        (gc.enable if enabled_before else gc.disable)()
        await inf._list()
        assert seen == [False, False, False] and len(inf.store) == 3
        assert gc.isenabled() is enabled_before
        # a trim that raises (a bug) leaves the collector as it was too
        inf.trim = lambda o: 1 / 0
        with pytest.raises(ZeroDivisionError):
            await inf._list()
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()

"""The informer: list + watch one Kubernetes resource into a dict store.

List, then watch from the list's resourceVersion with bookmarks; on 410 Gone a re-list replaces
the store. While the API server is unreachable the store stays as it is, and the informer retries
with capped, jittered backoff.

Which list, as client-go's reflector does it: the first list asks for ``resourceVersion=0``
("Any" in https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions: always
served from the API server's watch cache, no etcd read) with ``limit``. The watch cache ignores
``limit`` at resourceVersion 0 (kube-apiserver's cacher, ``computeListLimit``; client-go's
reflector keeps its pager on for that reason), so a cluster answers in one response; a server
without the watch cache answers in pages, which are followed. After a 410 the re-list is a
consistent one (no resourceVersion: "Most Recent"), paged: "0" could serve a cache older than the
version that just expired.
"""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any, Callable, Mapping

from lbd.backoff import capped_backoff
from lbd.sources.kube_translate import json_array, json_object


MAX_LIST_PAGES = 10_000  # 5 million objects at 500 a page: past this, a server that never stops paging


def describe_error(exc: BaseException, path: str) -> str:
    """One operator-readable line for a failed request: what failed and why.

    ``path`` is the API path listed/watched, or what was written ("status").
    403s carry the API server's own message, which names the user, the verb
    and the resource that the ClusterRole lacks.
    """
    from lbd.sources.kube_client import ApiError, Unreachable, WatchStreamError

    resource = path.rstrip("/").rsplit("/", 1)[-1]
    if isinstance(exc, ApiError):
        if exc.code == 401:
            return f"401 Unauthorized: the API server rejected lbd's credentials ({resource})"
        if exc.code == 403:
            return f"403 Forbidden: {exc.message}"
        return f"{resource}: {exc.code} {exc.reason}: {exc.message}"
    if isinstance(exc, Unreachable):
        return str(exc)
    if isinstance(exc, WatchStreamError):
        return f"{resource}: bad watch stream: {exc}"
    return f"{resource}: {type(exc).__name__}: {exc}"


class Informer:
    def __init__(self, client: Any, path: str, *, on_change: Callable[[], None],
                 on_health: Callable[[str, str | None], bool], log: Any, watch_timeout: float,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 store: dict[tuple[str, str], dict] | None = None, namespace: str | None = None,
                 trim: Callable[[dict], dict] | None = None, page_size: int = 500) -> None:
        self.client = client
        self.path = path
        self.on_change = on_change
        self.on_health = on_health
        self.log = log
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # With a namespaces filter, one informer per namespace shares one store
        # and owns the keys of its namespace.
        self.store: dict[tuple[str, str], dict] = store if store is not None else {}
        self.namespace = namespace
        # Objects are stored as ``trim`` returns them (kube_translate.prune: only what
        # lbd reads), so the store holds a fraction of what the API server sends.
        self.trim = trim or (lambda obj: obj)
        # Lists ask for pages (client-go's reflector asks for 500): where the server
        # pages (a consistent re-list, or no watch cache), the JSON of one page,
        # not of every object at once, is what a list costs.
        self.page_size = page_size
        self.resource_version: str | None = None
        # The next list is a consistent read (after a 410), not resourceVersion=0.
        self.list_consistent = False
        self.synced = False
        self.relists = 0

    @staticmethod
    def key(obj: Mapping[str, Any]) -> tuple[str, str]:
        meta = json_object(json_object(obj).get("metadata"))
        return (str(meta.get("namespace", "")), str(meta.get("name", "")))

    async def _list(self) -> None:
        fresh: dict[tuple[str, str], dict] = {}
        params: dict[str, str] = {"limit": str(self.page_size)} if self.page_size else {}
        if not self.list_consistent:
            params["resourceVersion"] = "0"
        for _ in range(MAX_LIST_PAGES):
            result = await self.client.request("GET", self.path, params=params)
            self._keep(json_array(result.get("items")), fresh)
            meta = json_object(result.get("metadata"))
            token = meta.get("continue")
            if not token or not isinstance(token, str):
                break
            # Every page of one list is at the first page's resourceVersion; an
            # expired continue token is a 410, which re-lists from the start. No
            # resourceVersion with a continue token (the API server refuses a
            # non-zero one; client-go's pager drops it too).
            params = {"limit": str(self.page_size), "continue": token}
            del result
        else:
            raise ValueError(f"a list of more than {MAX_LIST_PAGES} pages")  # hostile: retried with backoff
        if self.namespace is None:
            self.store.clear()
        else:
            for key in [k for k in self.store if k[0] == self.namespace]:
                del self.store[key]
        self.store.update(fresh)  # one step: no await between clear and update
        self.resource_version = meta.get("resourceVersion")
        self.list_consistent = False
        self.synced = True
        self.relists += 1
        self.on_health(self.path, None)
        self.on_change()

    def _keep(self, items: list[Any], fresh: dict[tuple[str, str], dict]) -> None:
        """The trimmed objects of one list response into ``fresh``, without the cyclic GC.

        Trimming makes tens of thousands of new dicts and lists, none of them garbage,
        while the whole parsed response is alive: every collection they trigger walks
        all of it again (~25 ms of the ~120 ms a 5,000-Service list took here; as the
        daemon's first pass, issue 9). No await in here, so nothing else runs with the
        collector off; it is left as it was found (the daemon may have it off already).
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for o in items:
                if isinstance(o, dict):
                    fresh[self.key(o)] = self.trim(o)
        finally:
            if was_enabled:
                gc.enable()

    async def run(self) -> None:
        from lbd.sources.kube_client import ApiError

        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                server_timeout = int(self.watch_timeout * random.uniform(1.0, 1.2))
                params = {"watch": "true", "resourceVersion": self.resource_version or "",
                          "allowWatchBookmarks": "true", "timeoutSeconds": str(server_timeout)}
                async for event in self.client.watch(self.path, params, timeout=server_timeout + 30):
                    if failures:
                        failures = 0
                        self.on_health(self.path, None)
                    if self._apply(event):
                        break
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.code == 410:
                    self._expire()
                    continue
                if exc.code == 504 and failures == 0:
                    # The API server's watch timed out on its side ("Timeout: Too large
                    # resource version" or a gateway): resume at once, like client-go.
                    failures += 1
                    continue
                failures += 1
                await self._fail(failures, exc)
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                # Unreachable, reset, timed out, garbage, an over-long line: keep the store, retry.
                failures += 1
                await self._fail(failures, exc)

    def _expire(self) -> None:
        # 410 Gone: our resourceVersion was compacted away. Re-list; the store
        # is replaced in one step so unchanged objects cause no churn.
        self.log.info("watch_expired_relisting", path=self.path, resource_version=self.resource_version)
        self.resource_version = None
        self.list_consistent = True

    def retry_delay(self, failures: int) -> float:
        return capped_backoff(max(1, failures), self.backoff_initial, self.backoff_max, jitter=0.2)

    async def _fail(self, failures: int, exc: BaseException) -> None:
        delay = self.retry_delay(failures)
        cause = describe_error(exc, self.path)
        if self.on_health(self.path, cause):
            # One line per distinct cause, not one per retry.
            self.log.warning("kube_watch_failed", path=self.path, error=cause, retry_in=round(delay, 2))
        await asyncio.sleep(delay)

    def _apply(self, event: Mapping[str, Any]) -> bool:
        """Apply one watch event; True when the watch must be restarted."""
        from lbd.sources.kube_client import ApiError

        kind = event.get("type")
        obj = json_object(event.get("object"))
        if kind == "ERROR":
            code = obj.get("code")
            # A Status's code is an int; anything else (hostile or broken) is a 500.
            code = code if isinstance(code, int) and not isinstance(code, bool) else 500
            if code == 410:
                self._expire()
                return True
            raise ApiError(code, str(obj.get("reason", ""))[:200], str(obj.get("message", ""))[:500])
        rv = json_object(obj.get("metadata")).get("resourceVersion")
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return False
        if not obj:
            return False
        if kind in ("ADDED", "MODIFIED"):
            self.store[self.key(obj)] = self.trim(obj)  # type: ignore[arg-type]
        elif kind == "DELETED":
            self.store.pop(self.key(obj), None)
        else:
            return False
        self.resource_version = rv or self.resource_version
        self.on_change()
        return False

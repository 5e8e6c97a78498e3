"""Compare Kubernetes client libraries for the kubernetes source, against the emulator.

Run (in a venv that has both libraries; lbd's own venv has only kubernetes_asyncio)::

    python bench/kube_clients.py [--services 5000] [--libs kubernetes_asyncio,lightkube]

Each library is measured in a fresh subprocess: import time, RSS after import,
time and RSS growth to list N Services (the library's own typed objects, and
raw dicts where the library offers them), and what its watch does with
bookmarks (``allowWatchBookmarks``) and with a resourceVersion the server has
compacted away (410 Gone). Prints one JSON line per library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compact(url: str) -> None:
    req = urllib.request.Request(url + "/emulator/compact", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(req).read()


async def measure_kubernetes_asyncio(kubeconfig: str, url: str) -> dict:
    out: dict = {}
    t = time.perf_counter()
    from kubernetes_asyncio import client, config, watch
    out["import_ms"] = (time.perf_counter() - t) * 1000
    out["rss_after_import_mib"] = rss_mib()
    t = time.perf_counter()
    api = await config.new_client_from_config(config_file=kubeconfig)
    v1 = client.CoreV1Api(api)
    out["client_ms"] = (time.perf_counter() - t) * 1000
    base = rss_mib()
    t = time.perf_counter()
    lst = await v1.list_service_for_all_namespaces()
    out["list_models_s"] = time.perf_counter() - t
    out["list_models_rss_growth_mib"] = rss_mib() - base
    rv = lst.metadata.resource_version
    del lst
    base = rss_mib()
    t = time.perf_counter()
    resp = await v1.list_service_for_all_namespaces(_preload_content=False)
    raw = json.loads(await resp.read())
    out["list_raw_s"] = time.perf_counter() - t
    out["list_raw_rss_growth_mib"] = rss_mib() - base
    del raw
    kinds: list[str] = []
    w = watch.Watch()
    try:
        async with asyncio.timeout(3):
            async for ev in w.stream(v1.list_service_for_all_namespaces, resource_version=rv,
                                     allow_watch_bookmarks=True, timeout_seconds=2):
                kinds.append(ev["type"])
    except TimeoutError:
        pass
    out["bookmarks_seen"] = kinds.count("BOOKMARK")
    out["watch_rv_after_bookmarks"] = w.resource_version
    compact(url)
    try:
        async with asyncio.timeout(3):
            async for ev in watch.Watch().stream(v1.list_service_for_all_namespaces, resource_version=rv,
                                                 timeout_seconds=2):
                out["on_410"] = f"event {ev['type']}"
                break
    except Exception as exc:  # noqa: BLE001 - we record what the library does
        out["on_410"] = f"raises {type(exc).__name__}: {str(exc)[:80]}"
    await api.close()
    return out


async def measure_lightkube(kubeconfig: str, url: str) -> dict:
    out: dict = {}
    t = time.perf_counter()
    from lightkube import AsyncClient, KubeConfig
    from lightkube.resources.core_v1 import Service
    out["import_ms"] = (time.perf_counter() - t) * 1000
    out["rss_after_import_mib"] = rss_mib()
    t = time.perf_counter()
    c = AsyncClient(KubeConfig.from_file(kubeconfig))
    out["client_ms"] = (time.perf_counter() - t) * 1000
    base = rss_mib()
    t = time.perf_counter()
    items = [s async for s in c.list(Service, namespace="*")]
    out["list_models_s"] = time.perf_counter() - t
    out["list_models_rss_growth_mib"] = rss_mib() - base
    n = len(items)
    del items
    out["listed"] = n
    # lightkube has no raw-dict list; its watch takes a resource_version but
    # hides BOOKMARK events (no allowWatchBookmarks parameter).
    kinds: list[str] = []
    try:
        async with asyncio.timeout(3):
            async for kind, _obj in c.watch(Service, namespace="*", resource_version="1"):
                kinds.append(kind)
    except TimeoutError:
        pass
    except Exception as exc:  # noqa: BLE001
        out["on_410"] = f"raises {type(exc).__name__}: {str(exc)[:80]}"
    out["watch_events_from_compacted_rv"] = len(kinds)
    await c.close()
    return out


def child(lib: str, kubeconfig: str, url: str) -> None:
    fn = {"kubernetes_asyncio": measure_kubernetes_asyncio, "lightkube": measure_lightkube}[lib]
    result = asyncio.run(fn(kubeconfig, url))
    print(json.dumps({"lib": lib, **{k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--libs", default="kubernetes_asyncio,lightkube")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    for lib in args.libs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = str(Path(tmp) / "kubeconfig")
            emu = subprocess.Popen([sys.executable, "-m", "tests.kubeapi_emulator", "--services", str(args.services),
                                    "--token", TOKEN, "--kubeconfig", kubeconfig, "--bookmark-interval", "0.5"],
                                   cwd=ROOT, stdout=subprocess.PIPE, text=True)
            try:
                assert emu.stdout is not None
                url = json.loads(emu.stdout.readline())["url"]
                subprocess.run([sys.executable, __file__, "--child", lib, kubeconfig, url], check=False,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
            finally:
                emu.terminate()
                emu.wait(timeout=10)


if __name__ == "__main__":
    main()

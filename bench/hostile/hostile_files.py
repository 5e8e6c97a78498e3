"""Hostile files (issue 10): FIFOs, devices, directories, symlinks where lbd reads a file.

Usage (root; run from a directory that is not a checkout, so CODE is what gets imported):
    cd /tmp && python /path/to/bench/hostile/hostile_files.py CODE
CODE is the root of an lbd tree (e.g. ``git archive <commit> | tar -x -C /tmp/old``).
Each case runs in a subprocess with a 5 s timeout and prints ok / crash / HANG:
8 kinds x (state file at start, drop-in present at start, drop-in created while running).
"""
import os, subprocess, sys, tempfile, json
CODE = sys.argv[1]
CASE = r'''
import sys as _s; _s.meta_path[:] = [f for f in _s.meta_path if 'editable' not in repr(f).lower()]
import asyncio, os, sys, stat, json
from pathlib import Path
kind, where, d = sys.argv[1], sys.argv[2], Path(sys.argv[3])
def make(p):
    if kind == "fifo": os.mkfifo(p)
    elif kind == "symlink-fifo": os.mkfifo(d.parent / "f"); os.symlink(d.parent / "f", p)
    elif kind == "dev-zero": os.symlink("/dev/zero", p)
    elif kind == "chardev": os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    elif kind == "directory": p.mkdir()
    elif kind == "symlink-dir": (d.parent / "dd").mkdir(); os.symlink(d.parent / "dd", p)
    elif kind == "dangling": os.symlink(d.parent / "nowhere", p)
    elif kind == "loop": os.symlink(p, p)
if where == "state":
    from lbd.state import StateStore
    make(d / "allocations.json")
    st = StateStore(d).load()
    print("ok", len(st.allocations))
else:
    from lbd.model import SourceConfig
    from lbd.sources.base import SourceContext
    from lbd.sources.directory import DirectorySource
    (d / "a.toml").write_text('[[service]]\nname = "web"\npool = "p"\n')
    errs = []
    async def main():
        src = DirectorySource(SourceConfig("directory", "x", {"path": str(d), "rescan_interval": 0.2, "settle": 0.1}),
                              SourceContext(node_name="n", set_error=errs.append))
        snaps = []
        t = asyncio.create_task(src.run(snaps.append))
        await asyncio.sleep(0.3)
        if where == "dropin-live":
            make(d / "bad.toml")
        else:
            pass
        await asyncio.sleep(1.0)
        t.cancel()
        return snaps
    if where == "dropin-start":
        make(d / "bad.toml")
    snaps = asyncio.run(main())
    print("ok", [sorted(s.name for s in x) for x in snaps][-1:], [e for e in errs if e][-1:])
'''
kinds = ["fifo", "symlink-fifo", "dev-zero", "chardev", "directory", "symlink-dir", "dangling", "loop"]
res = {}
for where in ("state", "dropin-start", "dropin-live"):
    for kind in kinds:
        d = tempfile.mkdtemp(prefix="h-", dir=None)
        sub = os.path.join(d, "d"); os.mkdir(sub)
        try:
            out = subprocess.run([sys.executable, "-c", CASE, kind, where, sub], env={**os.environ, "PYTHONPATH": CODE},
                                 capture_output=True, text=True, timeout=5)
            r = "ok" if out.returncode == 0 else "crash"
            detail = (out.stdout.strip().splitlines() or [""])[-1][:150] if r == "ok" else out.stderr.strip().splitlines()[-1][:150]
        except subprocess.TimeoutExpired:
            r, detail = "HANG", ""
        res[(where, kind)] = r
        print(f"{where:13} {kind:13} {r:5} {detail}")
print({w: {r: sum(1 for (ww, k), rr in res.items() if ww == w and rr == r) for r in ("ok", "crash", "HANG")} for w in ("state", "dropin-start", "dropin-live")})

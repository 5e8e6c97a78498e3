"""Control-socket abuse (issue 10): 300 clients that never read, nesting bombs.

Usage: cd /tmp && python /path/to/bench/hostile/hostile_ctl.py CODE   (CODE: root of an lbd tree)
Prints the server's file descriptors still held 2 s and 25 s after 300 clients
(half pipelining 5 requests) sent a request for a ~450 kB answer and never read,
whether a normal request is still answered, the answers to 4 nesting bombs and
how many tracebacks the server logged. Takes about 30 s.
"""
import json, os, socket, subprocess, sys, time, tempfile
CODE = sys.argv[1]
d = tempfile.mkdtemp(prefix="ctl-", dir=None)
path = os.path.join(d, "s.sock")
SERVER = r'''
import asyncio, sys
from pathlib import Path
from lbd.control import ControlServer
big = {"services": [{"name": f"static/svc-{i}", "addresses": ["10.77.1.1"], "reason": "x" * 200} for i in range(1500)]}
async def status(args): return big
async def main():
    s = ControlServer(Path(sys.argv[1]), {"status": status})
    await s.start()
    print("up", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
'''
srv = subprocess.Popen([sys.executable, "-c", SERVER, path], env={**os.environ, "PYTHONPATH": CODE}, cwd="/tmp",
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
while srv.stdout.readline().strip() != "up": pass
fds = lambda: len(os.listdir(f"/proc/{srv.pid}/fd"))
base = fds()
clients = []
for i in range(300):
    s = socket.socket(socket.AF_UNIX); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.connect(path); s.setblocking(False)
        s.send(b'{"command": "status"}\n' * (5 if i % 2 else 1))  # half pipeline 5 requests
    except OSError:
        pass
    clients.append(s)
time.sleep(2)
held_2s = fds() - base
time.sleep(23)
held_25s = fds() - base
# A well-behaved request still answered?
def ask(line, timeout=5):
    c = socket.socket(socket.AF_UNIX); c.settimeout(timeout)
    try:
        c.connect(path); c.sendall(line); buf = b""
        while not buf.endswith(b"\n"):
            ch = c.recv(1 << 16)
            if not ch: break
            buf += ch
        return buf
    except OSError as e:
        return repr(e).encode()
    finally:
        c.close()
for s in clients: s.close()
time.sleep(1)
ok = ask(b'{"command": "status"}\n', 10)[:30]
bombs = [ask(b"[" * n + b"\n")[:90] for n in (2000, 20000, 60000)] + [ask(b'{"command":"status","args":' + b'{"a":' * 5000 + b'1' + b'}' * 5001 + b"\n")[:90]]
srv.terminate(); err = srv.communicate(timeout=10)[0]
print(json.dumps({"fds_held_after_2s": held_2s, "fds_held_after_25s": held_25s, "status_after": ok.decode(errors="replace"),
                  "bomb_answers": [b.decode(errors="replace") for b in bombs],
                  "tracebacks_logged": err.count("Traceback") + err.count("RecursionError")}, indent=1))

"""Metrics-server slowloris (issue 10): 300 connections each sending a header line a second.

Usage: cd /tmp && python /path/to/bench/hostile/hostile_metrics.py CODE   (CODE: root of an lbd tree)
Prints the server's connections still held after 2, 6, 10 and 30 s. Uses 127.0.0.1:19371.
"""
import os, socket, subprocess, sys, time, json
CODE = sys.argv[1]
SERVER = r'''
import asyncio
from lbd.metrics_server import MetricsServer
async def main():
    s = MetricsServer("127.0.0.1:19371"); await s.start(); print("up", flush=True); await asyncio.sleep(3600)
asyncio.run(main())
'''
srv = subprocess.Popen([sys.executable, "-c", SERVER], env={**os.environ, "PYTHONPATH": CODE}, cwd="/tmp",
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
while srv.stdout.readline().strip() != "up": pass
fds = lambda: len(os.listdir(f"/proc/{srv.pid}/fd"))
base = fds()
socks = []
for i in range(300):
    s = socket.create_connection(("127.0.0.1", 19371)); s.setblocking(False); s.send(b"GET /metrics HTTP/1.1\r\n"); socks.append(s)
held = {}
t0 = time.time()
while time.time() - t0 < 30:
    for s in socks:
        try: s.send(b"X: y\r\n")
        except OSError: pass
    el = time.time() - t0
    for mark in (2, 6, 10, 30):
        if el >= mark - 1 and mark not in held and el >= mark: held[mark] = fds() - base
    time.sleep(1)
held[30] = fds() - base
for s in socks: s.close()
srv.terminate(); srv.wait()
print(json.dumps({f"held_after_{k}s": v for k, v in sorted(held.items())}))

"""Mixed traffic through ferryman for a while, and what ferryman holds
meanwhile: resident memory, open descriptors and live tasks, sampled every
second. Run by bench/soak.sh, which starts the origins and ferryman.

usage: soak.py PID PROXY ADMIN TOKEN PLAIN_ORIGIN TLS_ORIGIN WS_ORIGIN CA SECONDS
"""
import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

pid, proxy, admin, token, plain, tls_origin, ws_origin, ca, seconds = sys.argv[1:10]
seconds = int(seconds)
proxy_host, proxy_port = proxy.rsplit(":", 1)
proxy_port = int(proxy_port)
stop = threading.Event()
counts = {}
lock = threading.Lock()


def count(kind, ok):
    with lock:
        done, failed = counts.get(kind, (0, 0))
        counts[kind] = (done + 1, failed) if ok else (done, failed + 1)


def to_proxy():
    return socket.create_connection((proxy_host, proxy_port), timeout=10)


def read_head(s):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the head")
        head += chunk
    return head


def plain_http():
    # Keep-alive requests in absolute form through the proxy.
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection(proxy_host, proxy_port, timeout=10)
            for _ in range(50):
                conn.request("GET", f"http://{plain}/1k")
                response = conn.getresponse()
                count("plain", response.status == 200 and len(response.read()) == 1024)
            conn.close()
        except Exception:
            count("plain", False)


def connect_tunnel():
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection(proxy_host, proxy_port, timeout=10)
            conn.set_tunnel(plain)
            conn.request("GET", "/1k")
            response = conn.getresponse()
            count("connect", response.status == 200 and len(response.read()) == 1024)
            conn.close()
        except Exception:
            count("connect", False)


def intercepted():
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    while not stop.is_set():
        try:
            conn = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=10, context=context)
            conn.set_tunnel(tls_origin)
            for _ in range(10):
                conn.request("GET", "/1k")
                response = conn.getresponse()
                count("intercepted", response.status == 200 and len(response.read()) == 1024)
            conn.close()
        except Exception:
            count("intercepted", False)


def h2():
    while not stop.is_set():
        result = subprocess.run(
            ["curl", "-sS", "--http2", "-x", f"http://{proxy}", "--cacert", ca,
             "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
             f"https://{tls_origin}/1k", f"https://{tls_origin}/1k"],
            capture_output=True, text=True, timeout=30,
        )
        ok = result.returncode == 0 and result.stdout == "2 2002 200"
        if not ok and counts.get("h2", (0, 0))[1] == 0:
            print(f"h2 failed: {result.stdout!r} {result.stderr.strip()}", file=sys.stderr, flush=True)
        count("h2", ok)


def websocket():
    while not stop.is_set():
        try:
            s = to_proxy()
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(
                f"GET http://{ws_origin}/ HTTP/1.1\r\nHost: {ws_origin}\r\nConnection: Upgrade\r\n"
                f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode()
            )
            if b" 101 " not in read_head(s).split(b"\r\n")[0]:
                raise ConnectionError("no 101")
            ok = True
            for n in range(20):
                payload = f"message {n}".encode()
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
                frame = b""
                while len(frame) < 2 + len(payload):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed mid-echo")
                    frame += chunk
                ok = ok and frame[2:] == payload
            s.close()
            count("websocket", ok)
        except Exception:
            count("websocket", False)


def aborted():
    # Clients that leave at every stage: mid-head, mid-body, mid-response.
    stage = 0
    while not stop.is_set():
        stage += 1
        try:
            s = to_proxy()
            if stage % 3 == 0:
                s.sendall(f"GET http://{plain}/1k HTTP/1.1\r\nHost: x\r\nX-Half: ".encode())
            elif stage % 3 == 1:
                s.sendall(f"POST http://{plain}/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 1000)
            else:
                s.sendall(f"GET http://{plain}/1m HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                s.recv(100)
            s.close()
            count("aborted", True)
        except Exception:
            count("aborted", False)
        time.sleep(0.01)


def slow(gap, expected, kind):
    # A body that trickles a byte every `gap` seconds: within the pace
    # soak.sh sets it gets through, beyond it the answer is 408.
    while not stop.is_set():
        try:
            s = to_proxy()
            s.sendall(f"POST http://{plain}/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n".encode())
            try:
                for _ in range(20):
                    s.sendall(b"x")
                    time.sleep(gap)
            except OSError:
                pass  # cut off; the answer says why
            s.settimeout(10)
            status = read_head(s).split(b"\r\n")[0].split(b" ")[1]
            s.close()
            count(kind, status == expected)
        except Exception:
            count(kind, False)


def status():
    request = urllib.request.Request(f"http://{admin}/api/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def sample():
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    tasks = status()["config"].get("tasks", 0)
    return rss, fds, tasks


baseline = sample()
print(f"baseline: RSS {baseline[0] / 1024:.1f} MiB, {baseline[1]} fds, {baseline[2]} tasks", flush=True)
workers = [threading.Thread(target=f, daemon=True) for f in
           [plain_http, plain_http, connect_tunnel, intercepted, intercepted, h2, websocket, aborted]]
workers += [threading.Thread(target=slow, args=args, daemon=True) for args in
            [(0.05, b"200", "slow"), (0.2, b"408", "too-slow")]]
for w in workers:
    w.start()
samples = []
started = time.time()
while time.time() - started < seconds:
    time.sleep(1)
    samples.append(sample())
    if len(samples) % 60 == 0:
        rss, fds, tasks = samples[-1]
        print(f"{len(samples)}s: RSS {rss / 1024:.1f} MiB, {fds} fds, {tasks} tasks", flush=True)
stop.set()
for w in workers:
    w.join(timeout=30)
# Let what was in flight end (slow clients meet their deadlines), then see
# what is left: wait until the tasks are back to the baseline, or 30 s.
settle = time.time()
after = sample()
while after[2] > baseline[2] and time.time() - settle < 30:
    time.sleep(0.5)
    after = sample()
quarter = len(samples) // 4
first = max(s[0] for s in samples[:quarter]) if quarter else baseline[0]
last = max(s[0] for s in samples[-quarter:]) if quarter else after[0]
print("traffic (done / failed):")
for kind, (done, failed) in sorted(counts.items()):
    print(f"  {kind:12} {done:9} {failed:6}")
print(f"RSS: baseline {baseline[0] / 1024:.1f} MiB, peak {max(s[0] for s in samples) / 1024:.1f} MiB, "
      f"first-quarter peak {first / 1024:.1f}, last-quarter peak {last / 1024:.1f} "
      f"(growth {(last - first) / 1024:+.1f} MiB), after {after[0] / 1024:.1f} MiB")
# The trend over the second half (least squares), past the warm-up.
half = samples[len(samples) // 2:]
if len(half) > 1:
    xs = range(len(half))
    mx, my = (len(half) - 1) / 2, sum(s[0] for s in half) / len(half)
    slope = sum((x - mx) * (s[0] - my) for x, s in zip(xs, half)) / sum((x - mx) ** 2 for x in xs)
    print(f"RSS trend over the second half: {slope * 60 / 1024:+.2f} MiB/min")
print(f"fds: baseline {baseline[1]}, peak {max(s[1] for s in samples)}, after {after[1]}")
capture = status().get("capture") or {}
print("capture: " + ", ".join(f"{k} {v}" for k, v in sorted(capture.items())))
print(f"tasks: baseline {baseline[2]}, peak {max(s[2] for s in samples)}, after {after[2]}")

"""Opens N keep-alive connections to a proxy, sends one request on each, keeps
them idle, and reports the proxy's RSS growth per connection.

usage: idle_conns.py PID HOST:PORT URL N
"""
import asyncio
import resource
import sys

# Connections opened at once; the same as the warm-up, so the proxy's upstream
# pool is already at its working size when the baseline is taken.
BATCH = 64


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one(host, port, url, ready):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    ready.append(writer)


async def main():
    pid, addr, url, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    host, port = addr.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Warm the proxy up (pool, allocator arenas) before the baseline.
    warm = []
    await asyncio.gather(*(one(host, port, url, warm) for _ in range(64)))
    for w in warm:
        w.close()
    await asyncio.sleep(1)
    before = rss_kib(pid)
    open_conns = []
    for start in range(0, n, BATCH):
        await asyncio.gather(*(one(host, port, url, open_conns) for _ in range(start, min(n, start + BATCH))))
    await asyncio.sleep(1)
    after = rss_kib(pid)
    per = (after - before) / len(open_conns)
    print(f"RSS before {before} KiB, with {len(open_conns)} idle connections {after} KiB")
    print(f"RESULT {per:.1f} KiB per idle connection   (target <= 16)")
    for w in open_conns:
        w.close()


asyncio.run(main())

#!/usr/bin/env bash
# User-space instructions ferryman spends per request, counted by callgrind:
# deterministic where timings on a shared machine are not, so it is the
# figure to compare two builds by. One worker; a client sends $N sequential
# keep-alive requests for 1 KiB after a warm-up, and instrumentation is on
# only while they run. Needs valgrind (apt-get install valgrind), nginx,
# curl and python3.
#   bench/instructions.sh [ferryman binary ...]   (default: a fresh release build)
#   FERRYMAN_ARGS="-c rules.toml" bench/instructions.sh   (extra arguments for each run)
# valgrind counts a `rep movsb` copy a byte at a time, so memcpy weighs more
# here than on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
. bench/lib.sh

if [ $# -eq 0 ]; then
  cargo build --release -q -p ferryman
  set -- target/release/ferryman
fi

# The client: warm up, say so, wait for the go, send $N requests, say done.
cat > "$work/client.py" <<'PY'
import os, socket, ssl, sys, time
port, origin, mode, n, signals = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
s = socket.create_connection(("127.0.0.1", port))
if mode == "intercepted":
    s.sendall(f"CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    s = ssl.create_default_context(cafile=sys.argv[6]).wrap_socket(s, server_hostname="127.0.0.1")
    request = f"GET /1k HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode()
else:
    request = f"GET http://{origin}/1k HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode()
def run(k):
    for _ in range(k):
        s.sendall(request)
        got = b""
        while not (b"\r\n\r\n" in got and len(got.split(b"\r\n\r\n", 1)[1]) >= 1024):
            got += s.recv(65536)
def signal(name):
    open(os.path.join(signals, name), "w").close()
def wait(name):
    while not os.path.exists(os.path.join(signals, name)):
        time.sleep(0.02)
run(300)
signal("warm"); wait("go")
run(n)
signal("done"); wait("off")
PY

# Runs $1 under callgrind as a forward proxy in mode $2; prints instructions per request.
count() {
  local bin=$1 mode=$2 port data signals
  port=$(free_port); data="$work/data-$port"; signals="$work/signals-$port"
  mkdir -p "$signals"
  local intercept=none
  [ "$mode" = intercepted ] && intercept=all
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.$port" \
    "$bin" --proxy-listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 --data-dir "$data" \
    --set workers=1 --set intercept.mode=$intercept --set capture.enabled=false \
    --set "tls.upstream_ca_files=[\"$work/origin-ca.pem\"]" ${FERRYMAN_ARGS:-} 2>/dev/null &
  local pid=$!
  pids+=("$pid")
  wait_for_long "$data/ca/ferryman-ca.pem"
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  python3 "$work/client.py" "$port" "$target" "$mode" "$N" "$signals" "$data/ca/ferryman-ca.pem" &
  local client=$!
  wait_for_long "$signals/warm"
  callgrind_control -i on "$pid" >/dev/null 2>&1
  touch "$signals/go"
  wait_for_long "$signals/done"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  touch "$signals/off"
  wait "$client"
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  awk -v n="$N" '/^totals:/ {printf "%.0f", $2 / n}' "$work/callgrind.$port"
}
# Under valgrind everything takes ~50x longer than wait_for allows.
wait_for_long() { until [ -e "$1" ]; do sleep 0.1; done; }

start_plain_origin
target="127.0.0.1:$origin_port"
# Self-signed CA file for the --set above; unused in this mode.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=unused" -keyout "$work/origin-ca.key" -out "$work/origin-ca.pem" 2>/dev/null
for bin in "$@"; do
  echo "$bin: forward HTTP $(count "$bin" forward) instructions per request"
done
kill "$(cat "$work/nginx.pid")"

start_tls_origin
for bin in "$@"; do
  echo "$bin: intercepted HTTPS $(count "$bin" intercepted) instructions per request"
done

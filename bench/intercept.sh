#!/usr/bin/env bash
# Interception benchmark: nginx serving HTTPS as the origin, ferryman
# intercepting CONNECT tunnels in front of it, ferryman-bench as the client,
# all on loopback. Prints ferryman's figures as ratios to direct TLS in the
# same run, and against mitmproxy when $MITMDUMP (or mitmdump on PATH) exists:
#   python3 -m venv /tmp/mitm && /tmp/mitm/bin/pip install mitmproxy
#   MITMDUMP=/tmp/mitm/bin/mitmdump bench/intercept.sh [seconds per run]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=32
MITMDUMP=${MITMDUMP:-$(command -v mitmdump || true)}

. bench/lib.sh

cargo build --release -q -p ferryman -p ferryman-bench
bench=target/release/ferryman-bench

start_tls_origin

# --- ferryman, intercepting everything, trusting the origin's certificate --
ferry_port=$(free_port)
target/release/ferryman --proxy-listen "127.0.0.1:$ferry_port" --admin-listen 127.0.0.1:0 --data-dir "$work/data" \
  --set "tls.upstream_ca_files=[\"$work/origin-ca.pem\"]" --set upstream.max_idle_per_host=256 \
  --set capture.enabled=false 2>"$work/ferryman.log" &
pids+=($!)
wait_for "$work/data/ca/ferryman-ca.pem"
wait_port "$ferry_port"
ferry_ca="$work/data/ca/ferryman-ca.pem"

echo "== 1 KiB GETs over $CONNS keep-alive HTTPS connections, ${DURATION}s each"
direct=$($bench --target "$target" --ca "$work/origin-ca.pem" rps --connections $CONNS --seconds "$DURATION")
proxied=$($bench --target "$target" --ca "$ferry_ca" --proxy "127.0.0.1:$ferry_port" rps --connections $CONNS --seconds "$DURATION")
echo "direct TLS:           $direct"
echo "ferryman intercepted: $proxied"
mitm_rps=""
if [ -n "$MITMDUMP" ]; then
  mitm_port=$(free_port)
  "$MITMDUMP" -q --listen-host 127.0.0.1 --listen-port "$mitm_port" --set confdir="$work/mitm" \
    --set ssl_verify_upstream_trusted_ca="$work/origin-ca.pem" 2>/dev/null &
  pids+=($!)
  wait_for "$work/mitm/mitmproxy-ca-cert.pem"
  wait_port "$mitm_port"
  mitm=$($bench --target "$target" --ca "$work/mitm/mitmproxy-ca-cert.pem" --proxy "127.0.0.1:$mitm_port" rps --connections $CONNS --seconds "$DURATION")
  echo "mitmproxy:            $mitm"
  mitm_rps=$(echo "$mitm" | field rps)
else
  echo "mitmproxy: not found (set MITMDUMP), skipped"
fi
python3 - "$(echo "$direct" | field rps)" "$(echo "$proxied" | field rps)" "$mitm_rps" <<'PY'
import sys
d, p = float(sys.argv[1]), float(sys.argv[2])
print(f"RATIO intercepted/direct TLS requests/s = {p/d:.2f}   (target >= 0.50)")
if sys.argv[3]:
    m = float(sys.argv[3])
    print(f"RATIO ferryman/mitmproxy requests/s = {p/m:.0f}x   (target >= 30x)")
PY

echo "== new-host handshakes: CONNECT + TLS with a server name not seen before"
$bench --target "$target" --ca "$ferry_ca" --proxy "127.0.0.1:$ferry_port" handshakes --count 300 |
  awk '{print} {split($2, a, "="); printf "p50 = %s ms   (target <= 2 ms)\n", a[2]}'

echo "== 1 GiB download over TLS (best of 3, interleaved)"
: > "$work/d"; : > "$work/p"
for _ in 1 2 3; do
  $bench --target "$target" --ca "$work/origin-ca.pem" bulk | field mib_per_s >> "$work/d"
  $bench --target "$target" --ca "$ferry_ca" --proxy "127.0.0.1:$ferry_port" bulk | field mib_per_s >> "$work/p"
done
d=$(sort -n "$work/d" | tail -1); p=$(sort -n "$work/p" | tail -1)
echo "direct TLS $d MiB/s   intercepted $p MiB/s"
python3 -c "print(f'RATIO intercepted/direct TLS throughput = {$p/$d:.2f}   (target >= 0.6)')"

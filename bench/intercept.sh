#!/usr/bin/env bash
# Interception benchmark: nginx serving HTTPS as the origin, ferryman
# intercepting CONNECT tunnels in front of it, ferryman-bench as the client,
# all on loopback. Prints ferryman's figures as ratios to direct TLS in the
# same run, and against mitmproxy when $MITMDUMP (or mitmdump on PATH) exists:
#   python3 -m venv /tmp/mitm && /tmp/mitm/bin/pip install mitmproxy
#   MITMDUMP=/tmp/mitm/bin/mitmdump bench/intercept.sh [seconds per run]
# The requests/s and bulk figures are each taken in $ROUNDS (default 3)
# interleaved rounds, each with its own direct run, beside nginx as a
# TLS-terminating proxy that re-encrypts to the same origin (a calibration:
# the same work, done by C), and reported as the median round's ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
CONNS=32
MITMDUMP=${MITMDUMP:-$(command -v mitmdump || true)}

. bench/lib.sh

# Prints each round's ratios (lines of "direct ferryman nginx" in $1) and
# the medians; $2 names the figure, $3 is its target.
report_rounds() {
  python3 - "$@" <<'PY'
import statistics, sys
path, what, target = sys.argv[1:4]
rounds = [[float(x) for x in line.split()] for line in open(path)]
ours = [p / d for d, p, _ in rounds]
nginx = [n / d for d, _, n in rounds]
print("rounds, intercepted/direct:", " ".join(f"{r:.2f}" for r in ours),
      "  nginx TLS proxy/direct:", " ".join(f"{r:.2f}" for r in nginx))
print(f"RATIO intercepted/direct TLS {what} = {statistics.median(ours):.2f} (median)   (target >= {target})")
print(f"      nginx TLS proxy/direct TLS = {statistics.median(nginx):.2f} (median, calibration)")
PY
}

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

# --- calibration: nginx terminating TLS and re-encrypting to the origin ----
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$work/proxy.key" -out "$work/proxy.csr" 2>/dev/null
openssl x509 -req -in "$work/proxy.csr" -CA "$work/origin-ca.pem" -CAkey "$work/origin-ca.key" \
  -CAcreateserial -days 2 -extfile "$work/origin.ext" -out "$work/proxy.pem" 2>/dev/null
nginx_port=$(free_port)
mkdir -p "$work/nginx-proxy"
cat > "$work/nginx-proxy.conf" <<NGINX
worker_processes 2;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx-proxy; proxy_temp_path $work/nginx-proxy;
  fastcgi_temp_path $work/nginx-proxy; uwsgi_temp_path $work/nginx-proxy; scgi_temp_path $work/nginx-proxy;
  upstream origin { server $target; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$nginx_port ssl;
    ssl_certificate $work/proxy.pem;
    ssl_certificate_key $work/proxy.key;
    location / {
      proxy_pass https://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $work/origin-ca.pem;
      proxy_ssl_name 127.0.0.1;
      proxy_ssl_session_reuse on;
      # Stream a large answer through memory buffers, never a temp file.
      proxy_max_temp_file_size 0;
    }
  }
}
NGINX
nginx -c "$work/nginx-proxy.conf"
wait_port "$nginx_port"

echo "== 1 KiB GETs over $CONNS keep-alive HTTPS connections, $ROUNDS interleaved rounds of ${DURATION}s"
: > "$work/rounds"
for round in $(seq "$ROUNDS"); do
  direct=$($bench --target "$target" --ca "$work/origin-ca.pem" rps --connections $CONNS --seconds "$DURATION")
  proxied=$($bench --target "$target" --ca "$ferry_ca" --proxy "127.0.0.1:$ferry_port" rps --connections $CONNS --seconds "$DURATION")
  nginx=$($bench --target "127.0.0.1:$nginx_port" --ca "$work/origin-ca.pem" rps --connections $CONNS --seconds "$DURATION")
  echo "round $round"
  echo "  direct TLS:           $direct"
  echo "  ferryman intercepted: $proxied"
  echo "  nginx TLS proxy:      $nginx"
  echo "$(echo "$direct" | field rps) $(echo "$proxied" | field rps) $(echo "$nginx" | field rps)" >> "$work/rounds"
done
proxied=$(sort -k2 -n "$work/rounds" | awk '{print $2}' | sed -n "$(( (ROUNDS + 1) / 2 ))p")
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
report_rounds "$work/rounds" "requests/s" 0.50
if [ -n "$mitm_rps" ]; then
  python3 -c "print(f'RATIO ferryman/mitmproxy requests/s = {$proxied/$mitm_rps:.0f}x (median round\'s ferryman)   (target >= 30x)')"
fi

echo "== new-host handshakes: CONNECT + TLS with a server name not seen before"
$bench --target "$target" --ca "$ferry_ca" --proxy "127.0.0.1:$ferry_port" handshakes --count 300 |
  awk '{print} {split($2, a, "="); printf "p50 = %s ms   (target <= 2 ms)\n", a[2]}'

echo "== 1 GiB download over TLS, $ROUNDS interleaved rounds"
: > "$work/bulk"
# Warm-up: the first read of the origin's 1 GiB file fills the page cache,
# and made the first direct round half as fast as the others.
$bench --target "$target" --ca "$work/origin-ca.pem" bulk > /dev/null
for round in $(seq "$ROUNDS"); do
  direct=$($bench --target "$target" --ca "$work/origin-ca.pem" bulk | field mib_per_s)
  proxied=$($bench --target "$target" --ca "$ferry_ca" --proxy "127.0.0.1:$ferry_port" bulk | field mib_per_s)
  nginx=$($bench --target "127.0.0.1:$nginx_port" --ca "$work/origin-ca.pem" bulk | field mib_per_s)
  echo "round $round: direct TLS $direct MiB/s   ferryman intercepted $proxied MiB/s   nginx TLS proxy $nginx MiB/s"
  echo "$direct $proxied $nginx" >> "$work/bulk"
done
report_rounds "$work/bulk" "throughput" 0.6

#!/usr/bin/env bash
# Soak: mixed traffic through one ferryman for $SECONDS_TOTAL (default 600)
# seconds, capture on: plain HTTP, CONNECT, intercepted HTTPS, HTTP/2,
# WebSocket, clients that leave mid-head, mid-body and mid-response, and
# clients that trickle. Prints RSS, descriptors and live tasks every minute,
# and at the end their growth and the traffic's errors.
#   bench/soak.sh [seconds, default 600]
# SOAK_ARGS adds ferryman arguments (e.g. "--set capture.enabled=false").
# Needs nginx, openssl, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${1:-600}
. bench/lib.sh

cargo build --release -q -p ferryman
bin=target/release/ferryman

# Origins: nginx over TLS with h2 (from lib.sh), nginx in plain HTTP, a
# WebSocket echo.
start_tls_origin
tls_port=$origin_port
head -c 1048576 /dev/urandom > "$work/www/1m"
plain_port=$(free_port)
cat > "$work/nginx-plain.conf" <<NGINX
worker_processes 1;
pid $work/nginx-plain.pid;
error_log $work/nginx-plain-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server {
    listen 127.0.0.1:$plain_port;
    root $work/www;
    # A sink that reads the whole body before it answers (nginx's own
    # request buffering, on its way to itself), as an application would.
    location /sink { client_max_body_size 10m; proxy_pass http://127.0.0.1:$plain_port/sunk; }
    location = /sunk { return 200 "ok"; }
  }
}
NGINX
nginx -c "$work/nginx-plain.conf"
ws_port=$(free_port)
python3 bench/ws_echo.py "$ws_port" & pids+=($!)
wait_port "$ws_port"
# h2 for the TLS origin: lib.sh's listen line takes extra words (nginx
# before 1.25 has no `http2 on;`).
sed -i "s|listen 127.0.0.1:$tls_port ssl;|listen 127.0.0.1:$tls_port ssl http2;|" "$work/nginx.conf"
grep -q "ssl http2;" "$work/nginx.conf" || { echo "soak: could not turn h2 on at the origin" >&2; exit 1; }
kill -HUP "$(cat "$work/nginx.pid")"

proxy_port=$(free_port); admin_port=$(free_port)
token=soak-token-0123456789abcdef
"$bin" --proxy-listen "127.0.0.1:$proxy_port" --admin-listen "127.0.0.1:$admin_port" \
  --data-dir "$work/data" --set "admin.token=$token" \
  --set "tls.upstream_ca_files=[\"$work/origin-ca.pem\"]" \
  --set proxy.request_body_timeout=2s --set proxy.request_body_min_rate=100 \
  --set upstream.idle_timeout=5s ${SOAK_ARGS:-} \
  2> "$work/ferryman.log" & ferry_pid=$!
pids+=("$ferry_pid")
wait_for "$work/data/ca/ferryman-ca.pem"
wait_port "$proxy_port"

echo "== soak: ${SECONDS_TOTAL}s of mixed traffic through ferryman (pid $ferry_pid)"
python3 bench/soak.py "$ferry_pid" "127.0.0.1:$proxy_port" "127.0.0.1:$admin_port" "$token" \
  "127.0.0.1:$plain_port" "127.0.0.1:$tls_port" "127.0.0.1:$ws_port" \
  "$work/data/ca/ferryman-ca.pem" "$SECONDS_TOTAL"
errors=$(grep -c '"level":"ERROR"\| ERROR ' "$work/ferryman.log" || true)
panics=$(grep -c 'panicked' "$work/ferryman.log" || true)
echo "ferryman log: $errors error lines, $panics panics"
kill -INT "$ferry_pid"; wait "$ferry_pid" 2>/dev/null || true

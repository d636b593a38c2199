#!/usr/bin/env bash
# Forward-proxy benchmark: nginx as the origin, ferryman in front, wrk/curl as
# clients, all on loopback. Prints ferryman's figures as ratios to the direct
# path measured in the same run. Needs: nginx, wrk, curl, python3.
#   bench/forward.sh [seconds per wrk run, default 10]
#   ONLY=rules bench/forward.sh   (just the 1,000-rule comparison; ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=32
IDLE_CONNS=10000

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for pidfile in "$work"/nginx*.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release -q -p ferryman
bin=target/release/ferryman

# --- origin: nginx serving a 1 KiB and a 1 GiB file -------------------------
mkdir -p "$work/www"
head -c 1024 /dev/urandom > "$work/www/1k"
truncate -s 1G "$work/www/1g"
# One nginx worker, no logs, temp files in the work dir; $1 names the instance.
nginx_preamble() {
  cat <<NGINX
worker_processes 1;
pid $work/$1.pid;
error_log $work/$1-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $work;
  proxy_temp_path $work;
  fastcgi_temp_path $work;
  uwsgi_temp_path $work;
  scgi_temp_path $work;
NGINX
}
nginx_port=$(free_port)
{ nginx_preamble nginx; cat <<NGINX
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
  }
}
NGINX
} > "$work/nginx.conf"
nginx -c "$work/nginx.conf"

# Calibration: nginx itself as a keep-alive reverse proxy in front of the origin.
nginx_proxy_port=$(free_port)
{ nginx_preamble nginx-proxy; cat <<NGINX
  upstream origin { server 127.0.0.1:$nginx_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_proxy_port;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
} > "$work/nginx-proxy.conf"
nginx -c "$work/nginx-proxy.conf"

start_ferryman() {
  ferry_port=$(free_port)
  "$bin" --proxy-listen "127.0.0.1:$ferry_port" --admin-listen 127.0.0.1:0 --data-dir "$work/data" \
    --set upstream.max_idle_per_host=256 --set intercept.mode=none --set capture.enabled=false "$@" 2>"$work/ferryman.log" &
  ferry_pid=$!
  pids+=("$ferry_pid")
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$ferry_port/" && return
    sleep 0.05
  done
  echo "ferryman did not start"; cat "$work/ferryman.log"; exit 1
}
stop_ferryman() { kill "$ferry_pid"; wait "$ferry_pid" 2>/dev/null || true; }

origin="http://127.0.0.1:$nginx_port"
cat > "$work/absolute.lua" <<LUA
-- wrk speaks no proxy protocol: send absolute-form requests to the proxy port.
request = function() return wrk.format("GET", "$origin/1k") end
LUA

# wrk prints "Requests/sec: N" and, with --latency, a "99%" percentile line.
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99() { awk '$1 == "99%" {print $2}' "$1"; }
to_ms() { python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v); f={'us':0.001,'ms':1,'s':1000}[m.group(2)]; print(float(m.group(1))*f)" "$1"; }

# CPU ticks the whole machine spent busy (user, nice, system, irq, softirq).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
requests() { awk '/requests in/ {print $1}' "$1"; }

# 1,000 rules (domain suffixes and networks, none for the origin) and a
# final catch-all: what a policy decision per request costs under load.
python3 - > "$work/rules.toml" <<'PY'
for i in range(999):
    print("[[rules]]")
    if i % 2 == 0:
        print(f'domain_suffix = ["d{i}.site{i % 97}.test"]')
    else:
        print(f'ip_cidr = ["10.{(i // 256) % 256}.{i % 256}.0/24"]')
    print('outbound = "reject"')
print('[[rules]]\noutbound = "direct"')
PY

if [ "${ONLY:-}" = "" ] || [ "${ONLY:-}" = "rules" ]; then
echo "== 1 KiB GET through ferryman with no rules and with 1,000 (access log off; ${ROUNDS:=3} interleaved rounds of ${DURATION}s)"
: > "$work/rules.rounds"
for round in $(seq "$ROUNDS"); do
  RUST_LOG=warn start_ferryman
  wrk -t2 -c$CONNS -d"${DURATION}s" -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/" > "$work/none.txt"
  stop_ferryman
  RUST_LOG=warn start_ferryman -c "$work/rules.toml"
  wrk -t2 -c$CONNS -d"${DURATION}s" -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/" > "$work/thousand.txt"
  stop_ferryman
  echo "$(rps "$work/none.txt") $(rps "$work/thousand.txt")" >> "$work/rules.rounds"
done
python3 - "$work/rules.rounds" <<'PY'
import statistics, sys
rounds = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
for i, (none, thousand) in enumerate(rounds, 1):
    print(f"round {i}: no rules {none:8.0f} req/s   1,000 rules {thousand:8.0f} req/s   ratio {thousand/none:.3f}")
ratios = [t / n for n, t in rounds]
print(f"RATIO 1,000 rules / no rules, median of {len(rounds)} rounds = {statistics.median(ratios):.3f}   (target: no worse, ~1.00)")
PY
[ "${ONLY:-}" = "rules" ] && exit 0
fi

echo "== 1 KiB GET, keep-alive, $CONNS connections, ${DURATION}s each (wrk -t2)"
busy0=$(busy_ticks)
wrk -t2 -c$CONNS -d"${DURATION}s" --latency "$origin/1k" > "$work/direct.txt"
busy1=$(busy_ticks)
wrk -t2 -c$CONNS -d"${DURATION}s" --latency "http://127.0.0.1:$nginx_proxy_port/1k" > "$work/nginx-proxy.txt"
RUST_LOG=warn start_ferryman
wrk -t2 -c$CONNS -d"${DURATION}s" --latency -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/" > "$work/quiet.txt"
stop_ferryman
start_ferryman
read -r user0 sys0 < <(awk '{print $14, $15}' "/proc/$ferry_pid/stat")
wrk -t2 -c$CONNS -d"${DURATION}s" --latency -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/" > "$work/proxy.txt"
read -r user1 sys1 < <(awk '{print $14, $15}' "/proc/$ferry_pid/stat")
stop_ferryman
python3 - "$((busy1 - busy0))" "$(requests "$work/direct.txt")" "$((user1 - user0))" "$((sys1 - sys0))" "$(requests "$work/proxy.txt")" <<'PY'
import os, sys
busy, direct_n, user, system, proxy_n = map(int, sys.argv[1:])
us = 1e6 / os.sysconf("SC_CLK_TCK")
direct = busy * us / direct_n
u, s = user * us / proxy_n, system * us / proxy_n
print(f"CPU per request: direct path, whole machine {direct:.1f} us; ferryman user {u:.1f} us, kernel {s:.1f} us")
print(f"ceiling for a proxy whose only cost is ferryman's kernel time: ratio {direct / (direct + s):.2f}")
PY
non2xx=$(cat "$work/proxy.txt" "$work/quiet.txt" | grep -c "Non-2xx" || true)
python3 - "$non2xx" "$(rps "$work/direct.txt")" "$(to_ms "$(p99 "$work/direct.txt")")" \
  "$(rps "$work/proxy.txt")" "$(to_ms "$(p99 "$work/proxy.txt")")" \
  "$(rps "$work/quiet.txt")" "$(to_ms "$(p99 "$work/quiet.txt")")" \
  "$(rps "$work/nginx-proxy.txt")" "$(to_ms "$(p99 "$work/nginx-proxy.txt")")" <<'PY'
import sys
bad = sys.argv[1]
d, dl, p, pl, q, ql, n, nl = map(float, sys.argv[2:])
print(f"direct                      {d:8.0f} req/s  p99 {dl:6.2f} ms")
print(f"ferryman (access log on)    {p:8.0f} req/s  p99 {pl:6.2f} ms  ratio {p/d:.2f}")
print(f"ferryman (access log off)   {q:8.0f} req/s  p99 {ql:6.2f} ms  ratio {q/d:.2f}")
print(f"nginx as reverse proxy      {n:8.0f} req/s  p99 {nl:6.2f} ms  ratio {n/d:.2f}  (calibration)")
print(f"RATIO requests/s ferryman/direct = {p/d:.2f}   (target >= 0.70; non-2xx lines: {bad})")
print(f"p99 latency added = {pl-dl:.2f} ms")
PY

start_ferryman
echo "== CONNECT tunnel, 1 GiB download (curl; best of 5, direct and tunnel runs interleaved)"
: > "$work/direct.bps"; : > "$work/tunnel.bps"
for _ in 1 2 3 4 5; do
  curl -s -o /dev/null -w '%{speed_download}\n' "$origin/1g" >> "$work/direct.bps"
  curl -s -p -x "http://127.0.0.1:$ferry_port" -o /dev/null -w '%{speed_download}\n' "$origin/1g" >> "$work/tunnel.bps"
done
direct_bps=$(sort -n "$work/direct.bps" | tail -1)
tunnel_bps=$(sort -n "$work/tunnel.bps" | tail -1)
python3 - "$direct_bps" "$tunnel_bps" <<'PY'
import sys
d, t = float(sys.argv[1]), float(sys.argv[2])
print(f"direct {d/2**20:8.0f} MiB/s   tunnel {t/2**20:8.0f} MiB/s")
print(f"RATIO tunnel/direct throughput = {t/d:.2f}   (target >= 0.85)")
PY
stop_ferryman

echo "== memory: $IDLE_CONNS idle keep-alive client connections"
start_ferryman --set proxy.max_connections=$((IDLE_CONNS + 1000))
python3 bench/idle_conns.py "$ferry_pid" "127.0.0.1:$ferry_port" "$origin/1k" "$IDLE_CONNS"
stop_ferryman

#!/usr/bin/env bash
# Tunnel and SOCKS5 benchmark, all on loopback, in the same run:
# - a TCP port published through a gateway and an agent behind it:
#   ferryman (TLS + WebSocket + h2 on the carrier) against rathole (plain
#   TCP, one data connection per visitor, its fastest transport);
# - SOCKS5: ferryman against microsocks and dante, and ferryman's own
#   CONNECT tunnel;
# each against the direct path: a 1 GiB download (curl) and 1 KiB requests
# over 32 keep-alive connections (wrk, or ferryman-bench where wrk cannot
# speak SOCKS5), $ROUNDS interleaved rounds, medians. Then memory: the
# idle agent, the gateway per idle agent and per open stream, and 10,000
# streams open at once.
#   bench/tunnel.sh [seconds per load run, default 10]
# Needs nginx, wrk, curl, python3, microsocks, dante-server; rathole is
# built with cargo into $TOOLS (default ~/.cache/ferryman-bench) once.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
TOOLS=${TOOLS:-$HOME/.cache/ferryman-bench}
. bench/lib.sh

if [ ! -x "$TOOLS/bin/rathole" ]; then
  echo "building rathole into $TOOLS (once)"
  # Not --locked: its lockfile pins crates today's rustc no longer builds.
  cargo install rathole --no-default-features --features server,client --root "$TOOLS" -q
fi
rathole=$TOOLS/bin/rathole
cargo build --release -q -p ferryman -p ferryman-bench
bin=target/release/ferryman
bench=target/release/ferryman-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The origin: nginx with room for 10,000 connections.
start_plain_origin
truncate -s 1G "$work/www/1g"
sed -i 's/worker_connections 4096;/worker_connections 30000;/' "$work/nginx.conf"
kill -HUP "$(cat "$work/nginx.pid")"
wait_port "$origin_port"
origin="127.0.0.1:$origin_port"

# rathole: server (the gateway) and client (the agent), one service.
rh_control=$(free_port); rh_service=$(free_port)
cat > "$work/rathole-server.toml" <<TOML
[server]
bind_addr = "127.0.0.1:$rh_control"
[server.services.web]
token = "bench-token"
bind_addr = "127.0.0.1:$rh_service"
TOML
cat > "$work/rathole-client.toml" <<TOML
[client]
remote_addr = "127.0.0.1:$rh_control"
[client.services.web]
token = "bench-token"
local_addr = "$origin"
TOML
"$rathole" -s "$work/rathole-server.toml" > "$work/rathole-server.log" 2>&1 & pids+=($!)
wait_port "$rh_control"
"$rathole" -c "$work/rathole-client.toml" > "$work/rathole-client.log" 2>&1 & pids+=($!)
wait_port "$rh_service"

# ferryman: a gateway with the same service published, SOCKS5, CONNECT.
fm_tunnel=$(free_port); fm_service=$(free_port); fm_socks=$(free_port); fm_proxy=$(free_port)
cat > "$work/gateway.toml" <<TOML
[proxy]
listen = "127.0.0.1:$fm_proxy"
[socks5]
listen = "127.0.0.1:$fm_socks"
[intercept]
mode = "none"
[capture]
enabled = false
[tunnel]
listen = "127.0.0.1:$fm_tunnel"
[[tunnel.agents]]
token = "bench-token-0123456789"
groups = ["bench"]
[[tunnel.services]]
listen = "127.0.0.1:$fm_service"
group = "bench"
target = "$origin"
TOML
"$bin" -c "$work/gateway.toml" --admin-listen 127.0.0.1:0 --data-dir "$work/data" \
  --log-format json 2> "$work/gateway.log" & gateway_pid=$!; pids+=("$gateway_pid")
wait_for "$work/data/ca/ferryman-ca.pem"
wait_port "$fm_tunnel"
gateway_idle=$(rss_kib "$gateway_pid")
"$bin" agent --gateway "wss://127.0.0.1:$fm_tunnel" --token bench-token-0123456789 --group bench \
  --id bench --allow 127.0.0.1 --gateway-ca "$work/data/ca/ferryman-ca.pem" --log-format json \
  2> "$work/agent.log" & agent_pid=$!; pids+=("$agent_pid")
for _ in $(seq 200); do grep -q '"carrier connected"' "$work/agent.log" 2>/dev/null && \
  [ "$(grep -c '"carrier connected"' "$work/agent.log")" -ge 2 ] && break; sleep 0.05; done

# SOCKS5 peers.
ms_port=$(free_port)
microsocks -i 127.0.0.1 -p "$ms_port" > /dev/null 2>&1 & pids+=($!)
dante_port=$(free_port)
cat > "$work/danted.conf" <<DANTE
logoutput: $work/danted.log
internal: 127.0.0.1 port = $dante_port
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
DANTE
danted -f "$work/danted.conf" -p "$work/danted.pid" > /dev/null 2>&1 & pids+=($!)
wait_port "$ms_port"; wait_port "$dante_port"; wait_port "$fm_socks"

median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
mib() { awk '{printf "%.0f", $1 / 1048576}'; }
bulk() { curl -s -o /dev/null -w '%{speed_download}\n' "$@" | mib; }
wrk_run() {
  wrk -t2 -c32 -d"${DURATION}s" --latency "$1" | awk '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {p99=$2}
    END {print rps, p99}'
}
bench_rps() { "$bench" --target "$origin" "$@" rps --connections 32 --seconds "$DURATION" |
  awk '{for (i=1;i<=NF;i++) {split($i,kv,"="); f[kv[1]]=kv[2]} print f["rps"], f["p99_ms"] "ms"}'; }

# Warm up: the 1 GiB file into the page cache, every path once.
bulk "http://$origin/1g" > /dev/null
bulk "http://127.0.0.1:$rh_service/1g" > /dev/null
bulk "http://127.0.0.1:$fm_service/1g" > /dev/null

declare -A bulk_res rps_res p99_res
kinds_bulk="direct rathole ferryman_service microsocks dante ferryman_socks5 ferryman_connect"
for round in $(seq "$ROUNDS"); do
  echo "== round $round"
  for kind in $kinds_bulk; do
    case $kind in
      direct) v=$(bulk "http://$origin/1g") ;;
      rathole) v=$(bulk "http://127.0.0.1:$rh_service/1g") ;;
      ferryman_service) v=$(bulk "http://127.0.0.1:$fm_service/1g") ;;
      microsocks) v=$(bulk --socks5 "127.0.0.1:$ms_port" "http://$origin/1g") ;;
      dante) v=$(bulk --socks5 "127.0.0.1:$dante_port" "http://$origin/1g") ;;
      ferryman_socks5) v=$(bulk --socks5 "127.0.0.1:$fm_socks" "http://$origin/1g") ;;
      ferryman_connect) v=$(bulk -p -x "http://127.0.0.1:$fm_proxy" "http://$origin/1g") ;;
    esac
    bulk_res[$kind]+="$v "
    echo "  1 GiB $kind: $v MiB/s"
  done
  for kind in direct rathole ferryman_service; do
    case $kind in
      direct) r=$(wrk_run "http://$origin/1k") ;;
      rathole) r=$(wrk_run "http://127.0.0.1:$rh_service/1k") ;;
      ferryman_service) r=$(wrk_run "http://127.0.0.1:$fm_service/1k") ;;
    esac
    rps_res[$kind]+="${r% *} "; p99_res[$kind]+="${r#* } "
    echo "  1 KiB x32 $kind (wrk): $r"
  done
  for kind in direct_bench microsocks dante ferryman_socks5 ferryman_connect; do
    case $kind in
      direct_bench) r=$(bench_rps) ;;
      microsocks) r=$(bench_rps --socks5 "127.0.0.1:$ms_port") ;;
      dante) r=$(bench_rps --socks5 "127.0.0.1:$dante_port") ;;
      ferryman_socks5) r=$(bench_rps --socks5 "127.0.0.1:$fm_socks") ;;
      ferryman_connect) r=$(bench_rps --proxy "127.0.0.1:$fm_proxy") ;;
    esac
    rps_res[$kind]+="${r% *} "; p99_res[$kind]+="${r#* } "
    echo "  1 KiB x32 $kind (ferryman-bench): $r"
  done
done

med() { echo "$1" | tr ' ' '\n' | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "== medians of $ROUNDS rounds"
for kind in $kinds_bulk; do
  v=$(med "${bulk_res[$kind]}")
  echo "1 GiB $kind: $v MiB/s, $(ratio "$v" "$(med "${bulk_res[direct]}")") of direct"
done
echo "published service, bulk: ferryman / rathole = $(ratio "$(med "${bulk_res[ferryman_service]}")" "$(med "${bulk_res[rathole]}")")"
best_socks=$(printf '%s\n%s\n' "$(med "${bulk_res[microsocks]}")" "$(med "${bulk_res[dante]}")" | sort -n | tail -1)
echo "SOCKS5, bulk: ferryman / best peer = $(ratio "$(med "${bulk_res[ferryman_socks5]}")" "$best_socks"), / ferryman CONNECT = $(ratio "$(med "${bulk_res[ferryman_socks5]}")" "$(med "${bulk_res[ferryman_connect]}")")"
for kind in direct rathole ferryman_service direct_bench microsocks dante ferryman_socks5 ferryman_connect; do
  echo "1 KiB x32 $kind: $(med "${rps_res[$kind]}") req/s, p99 $(echo "${p99_res[$kind]}" | tr ' ' '\n' | grep -v '^$' | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")"
done
echo "published service, requests: ferryman / rathole = $(ratio "$(med "${rps_res[ferryman_service]}")" "$(med "${rps_res[rathole]}")")"
best_socks=$(printf '%s\n%s\n' "$(med "${rps_res[microsocks]}")" "$(med "${rps_res[dante]}")" | sort -n | tail -1)
echo "SOCKS5, requests: ferryman / best peer = $(ratio "$(med "${rps_res[ferryman_socks5]}")" "$best_socks"), / ferryman CONNECT = $(ratio "$(med "${rps_res[ferryman_socks5]}")" "$(med "${rps_res[ferryman_connect]}")")"

echo "== memory"
agent_idle=$(rss_kib "$agent_pid"); gateway_with_agent=$(rss_kib "$gateway_pid")
echo "idle agent (2 carriers): $agent_idle KiB"
echo "gateway: $gateway_idle KiB before the agent connected, $gateway_with_agent KiB after (and after the load above)"
held=10000
"$bench" --target "127.0.0.1:$fm_service" hold --count "$held" --seconds 600 > "$work/hold.out" 2>&1 & hold_pid=$!
pids+=("$hold_pid")
for _ in $(seq 1200); do grep -q held= "$work/hold.out" 2>/dev/null && break; sleep 0.1; done
if grep -q held= "$work/hold.out"; then
  g=$(rss_kib "$gateway_pid"); a=$(rss_kib "$agent_pid")
  echo "$held streams open through the published service: gateway $g KiB, agent $a KiB"
  echo "per open stream: gateway $(( (g - gateway_with_agent) * 1024 / held )) bytes, agent $(( (a - agent_idle) * 1024 / held )) bytes"
else
  echo "could not hold $held streams: $(cat "$work/hold.out")"
fi
kill "$hold_pid" 2>/dev/null || true

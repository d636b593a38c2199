#!/usr/bin/env bash
# Dashboard benchmark: plain HTTP 1 KiB GETs through ferryman (capture and
# access log on, as a dashboard user runs it) with no live subscriber and
# with 3 subscribed to every topic, interleaved, best of three each; then
# ferryman's memory while one of 3 subscribers stops reading.
# Needs: nginx, wrk, python3.
#   bench/admin.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=32
TOKEN=bench-admin-token-0123456789

. bench/lib.sh

cargo build --release -q -p ferryman -p ferryman-bench
subscribers=target/release/subscribers
start_plain_origin

ferry_port=$(free_port)
admin_port=$(free_port)
target/release/ferryman --proxy-listen "127.0.0.1:$ferry_port" --admin-listen "127.0.0.1:$admin_port" \
  --data-dir "$work/data" --set "admin.token=$TOKEN" --set upstream.max_idle_per_host=256 \
  2>"$work/ferryman.log" &
ferry_pid=$!
pids+=($ferry_pid)
wait_port "$ferry_port"
wait_port "$admin_port"

cat > "$work/absolute.lua" <<LUA
request = function() return wrk.format("GET", "http://127.0.0.1:$origin_port/1k") end
LUA
load() { wrk -t2 -c$CONNS -d"${DURATION}s" -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/" | awk '/Requests\/sec/ {print $2}'; }
status() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$admin_port/api/status"; }

echo "== 1 KiB GETs, $CONNS keep-alive connections, ${DURATION}s per run, capture on"
declare -A best=([none]=0 [three]=0)
with_three() {
  $subscribers "127.0.0.1:$admin_port" "$TOKEN" 3 0 $((DURATION + 2)) > "$work/subs.out" &
  sub_pid=$!
  for _ in $(seq 100); do grep -q subscribed "$work/subs.out" && break; sleep 0.05; done
  three=$(load)
  wait "$sub_pid"
}
# The order alternates: capture's index grows through the run and the
# machine is shared, so neither side always goes first.
for round in 1 2 3; do
  if [ $((round % 2)) = 1 ]; then none=$(load); with_three; else with_three; none=$(load); fi
  echo "round $round: none=$none req/s  three=$three req/s  subscribers: $(tail -1 "$work/subs.out")"
  best[none]=$(python3 -c "print(max($none, ${best[none]}))")
  best[three]=$(python3 -c "print(max($three, ${best[three]}))")
done
python3 -c "print(f'RATIO requests/s with 3 subscribers / none = {${best[three]} / ${best[none]}:.3f}   (target >= 0.95)')"

echo "== one subscriber of three stops reading, ${DURATION}s of load"
rss_before=$(rss_kib "$ferry_pid")
$subscribers "127.0.0.1:$admin_port" "$TOKEN" 2 1 $((DURATION + 2)) > "$work/stall.out" &
sub_pid=$!
for _ in $(seq 100); do grep -q subscribed "$work/stall.out" && break; sleep 0.05; done
peak=$rss_before
( wrk -t2 -c$CONNS -d"${DURATION}s" -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/" > "$work/stall-wrk.txt" ) &
wrk_pid=$!
while kill -0 "$wrk_pid" 2>/dev/null; do
  now=$(rss_kib "$ferry_pid"); [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.2
done
left=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["subscribers"])')
wait "$sub_pid"
echo "requests/s $(awk '/Requests\/sec/ {print $2}' "$work/stall-wrk.txt"); subscribers left while the stalled one held its socket: $left of 3"
echo "readers: $(tail -1 "$work/stall.out")"
echo "RSS before ${rss_before} KiB, peak during load $peak KiB, growth $(( (peak - rss_before) / 1024 )) MiB"
grep -c "stopped reading and was dropped\|fell behind and was dropped" "$work/ferryman.log" | sed 's/^/drop events logged: /'

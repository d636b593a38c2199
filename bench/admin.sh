#!/usr/bin/env bash
# Dashboard benchmark: plain HTTP 1 KiB GETs through ferryman (capture and
# access log on, as a dashboard user runs it) with no live subscriber and
# with 3 subscribed to every topic, interleaved, best of five each (and ferryman's CPU per request); then
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

# A fresh ferryman (and data directory) for each run: capture's index and
# store grow with every exchange, and a run must not inherit the last one's.
run=0
start_ferryman() {
  run=$((run + 1))
  ferry_port=$(free_port)
  admin_port=$(free_port)
  target/release/ferryman --proxy-listen "127.0.0.1:$ferry_port" --admin-listen "127.0.0.1:$admin_port" \
    --data-dir "$work/data-$run" --set "admin.token=$TOKEN" --set upstream.max_idle_per_host=256 \
    2>"$work/ferryman.log" &
  ferry_pid=$!
  pids+=($ferry_pid)
  wait_port "$ferry_port"
  wait_port "$admin_port"
}
stop_ferryman() { kill "$ferry_pid"; wait "$ferry_pid" || true; rm -rf "$work/data-$run"; }
status() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$admin_port/api/status"; }

cat > "$work/absolute.lua" <<LUA
request = function() return wrk.format("GET", "http://127.0.0.1:$origin_port/1k") end
LUA
# Prints "requests/s ferryman-CPU-microseconds-per-request" for one wrk run.
wrk_run() {
  local ticks out
  ticks=$(cpu_ticks "$ferry_pid")
  out=$(wrk -t2 -c$CONNS -d"${DURATION}s" -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/")
  ticks=$(( $(cpu_ticks "$ferry_pid") - ticks ))
  python3 - "$ticks" "$out" <<'PY'
import os, re, sys
ticks, out = int(sys.argv[1]), sys.argv[2]
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
requests = int(re.search(r"(\d+) requests in", out).group(1))
print(f"{rps:.0f} {ticks / os.sysconf('SC_CLK_TCK') / requests * 1e6:.1f}")
PY
}
without() { start_ferryman; none=$(wrk_run); stop_ferryman; }

echo "== 1 KiB GETs, $CONNS keep-alive connections, ${DURATION}s per run, capture on"
declare -A best=([none]=0 [three]=0)
: > "$work/cpu.none"; : > "$work/cpu.three"
with_three() {
  start_ferryman
  $subscribers "127.0.0.1:$admin_port" "$TOKEN" 3 0 $((DURATION + 2)) > "$work/subs.out" &
  sub_pid=$!
  for _ in $(seq 100); do grep -q subscribed "$work/subs.out" && break; sleep 0.05; done
  three=$(wrk_run)
  wait "$sub_pid"
  stop_ferryman
}
# The order alternates: capture's index grows through the run and the
# machine is shared, so neither side always goes first.
for round in 1 2 3 4 5; do
  if [ $((round % 2)) = 1 ]; then without; with_three; else with_three; without; fi
  echo "round $round: none: ${none% *} req/s ${none#* } us/request   three: ${three% *} req/s ${three#* } us/request   subscribers: $(tail -1 "$work/subs.out")"
  best[none]=$(python3 -c "print(max(${none% *}, ${best[none]}))")
  best[three]=$(python3 -c "print(max(${three% *}, ${best[three]}))")
  echo "${none#* }" >> "$work/cpu.none"; echo "${three#* }" >> "$work/cpu.three"
done
python3 -c "print(f'RATIO requests/s with 3 subscribers / none = {${best[three]} / ${best[none]}:.3f}   (best of 5 each; target >= 0.95)')"
python3 - "$work/cpu.none" "$work/cpu.three" <<'PY'
import statistics, sys
none, three = ([float(l) for l in open(p)] for p in sys.argv[1:])
n, t = statistics.median(none), statistics.median(three)
print(f"ferryman CPU per request, median of 5: none {n:.1f} us, three {t:.1f} us, ratio {n / t:.3f}")
PY

# Peak RSS growth of a fresh ferryman under load with $1 reading and $2
# stalled subscribers; prints "growth_mib=N dropped=N".
memory_run() {
  start_ferryman
  local before peak now left
  before=$(rss_kib "$ferry_pid")
  $subscribers "127.0.0.1:$admin_port" "$TOKEN" "$1" "$2" $((DURATION + 2)) > "$work/mem.out" &
  sub_pid=$!
  for _ in $(seq 100); do grep -q subscribed "$work/mem.out" && break; sleep 0.05; done
  wrk -t2 -c$CONNS -d"${DURATION}s" -s "$work/absolute.lua" "http://127.0.0.1:$ferry_port/" > "$work/mem-wrk.txt" &
  wrk_pid=$!
  peak=$before
  while kill -0 "$wrk_pid" 2>/dev/null; do
    now=$(rss_kib "$ferry_pid"); [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.2
  done
  left=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["subscribers"])')
  wait "$sub_pid"
  echo "readers=$1 stalled=$2 rps=$(awk '/Requests\/sec/ {print $2}' "$work/mem-wrk.txt") subscribers_left=$left growth_mib=$(( (peak - before) / 1024 )) drops_logged=$(grep -c "subscriber was dropped" "$work/ferryman.log" || true)"
  stop_ferryman
}
echo "== memory: 3 reading subscribers, then 2 reading and 1 that stops reading, ${DURATION}s of load each"
memory_run 3 0
memory_run 2 1

#!/usr/bin/env bash
# Capture benchmark: 1 KiB HTTPS exchanges through intercepted tunnels with
# capture off, to the local directory, and to an S3 server (the testkit's
# s3s server as a process), interleaved, best of three rounds each; then the
# memory a 1 GiB upload costs with capture on. Needs: nginx, curl, openssl,
# python3.
#   bench/capture.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=32

. bench/lib.sh

cargo build --release -q -p ferryman -p ferryman-bench
bench=target/release/ferryman-bench
start_tls_origin

target/release/s3-server > "$work/s3.out" &
pids+=($!)
for _ in $(seq 200); do [ -s "$work/s3.out" ] && break; sleep 0.05; done
s3() { field "$1" < "$work/s3.out"; }
s3_settings=(--set capture.store.kind=s3 --set "capture.store.endpoint=$(s3 endpoint)"
  --set "capture.store.bucket=$(s3 bucket)" --set capture.store.region=us-east-1
  --set capture.store.path_style=true --set capture.store.allow_http=true
  --set "capture.store.access_key_id=$(s3 access_key)"
  --set "capture.store.secret_access_key=$(s3 secret_key)")

# Starts ferryman with data dir $work/$1 and the given settings.
start_ferryman() {
  local name=$1; shift
  ferry_port=$(free_port)
  target/release/ferryman --proxy-listen "127.0.0.1:$ferry_port" --admin-listen 127.0.0.1:0 --data-dir "$work/$name" \
    --set "tls.upstream_ca_files=[\"$work/origin-ca.pem\"]" --set upstream.max_idle_per_host=256 \
    "$@" 2>"$work/$name.log" &
  ferry_pid=$!
  pids+=($ferry_pid)
  wait_port "$ferry_port"
  ferry_ca="$work/$name/ca/ferryman-ca.pem"
}
stop_ferryman() { kill "$ferry_pid"; wait "$ferry_pid" || true; }
records() { find "$1" -name exchange.json 2>/dev/null | wc -l; }

echo "== 1 KiB GETs, $CONNS intercepted keep-alive connections, ${DURATION}s per run"
declare -A best=()
for round in 1 2 3; do
  for mode in off local local-nice0 s3; do
    case $mode in
      off) settings=(--set capture.enabled=false) ;;
      local) settings=() ;;
      local-nice0) settings=(--set capture.nice=0) ;;
      s3) settings=("${s3_settings[@]}") ;;
    esac
    start_ferryman "$mode-$round" "${settings[@]}"
    out=$($bench --target "$target" --ca "$ferry_ca" --proxy "127.0.0.1:$ferry_port" rps --connections $CONNS --seconds "$DURATION")
    ticks=$(cpu_ticks "$ferry_pid")
    stop_ferryman
    rps=$(echo "$out" | field rps)
    requests=$(echo "$out" | field requests)
    # ferryman's own CPU per exchange: steadier than requests/s on a shared box.
    cpu_us=$(python3 -c "import os; print(round($ticks / os.sysconf('SC_CLK_TCK') / $requests * 1e6))")
    kept=""
    # Records kept, of the exchanges plus one CONNECT record per connection.
    [ "${mode#local}" != "$mode" ] && kept="kept=$(python3 -c "print(round($(records "$work/$mode-$round/capture") / ($requests + $CONNS), 2))")"
    echo "round $round capture=$mode: $out ferryman_cpu_us_per_exchange=$cpu_us $kept"
    if [ -z "${best[$mode]:-}" ] || python3 -c "import sys; sys.exit(not $rps > ${best[$mode]})"; then
      best[$mode]=$rps
    fi
  done
done
echo "records in S3 after all rounds: $(find "$(s3 root)" -name exchange.json | wc -l) (each run adds one CONNECT record per connection)"
python3 - "${best[off]}" "${best[local]}" "${best[s3]}" "${best[local-nice0]}" <<'PY'
import sys
off, local, s3, shared = map(float, sys.argv[1:])
print(f"RATIO capture local/off requests/s = {local/off:.2f}   (target >= 0.85)")
print(f"      capture local with capture.nice=0 (CPU shared equally)/off = {shared/off:.2f}")
print(f"RATIO capture S3/off requests/s    = {s3/off:.2f}   (target >= 0.85)")
PY

echo "== RSS during a 1 GiB upload with every byte captured (local directory)"
sink_port=$(free_port)
python3 - "$sink_port" <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        left = int(self.headers.get("content-length", 0))
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
pids+=($!)
wait_port "$sink_port"
start_ferryman upload --set capture.max_body_bytes=2147483648
curl -sS -o /dev/null -x "http://127.0.0.1:$ferry_port" "http://127.0.0.1:$sink_port/warmup" -T /dev/null
idle=$(rss_kib "$ferry_pid")
truncate -s 1G "$work/upload.bin"
( peak=0; while kill -0 "$ferry_pid" 2>/dev/null; do
    r=$(rss_kib "$ferry_pid" 2>/dev/null || echo 0); [ "$r" -gt "$peak" ] && peak=$r && echo "$peak" > "$work/peak"
    sleep 0.05; done ) &
sampler=$!
start=$(date +%s.%N)
curl -sS -o /dev/null -H "Expect:" -x "http://127.0.0.1:$ferry_port" -T "$work/upload.bin" "http://127.0.0.1:$sink_port/upload"
end=$(date +%s.%N)
sleep 1
stop_ferryman
wait "$sampler" 2>/dev/null || true
stored=$(python3 - "$work/upload/index.sqlite" <<'PY'
import json, sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("select record from exchanges where url like '%/upload'")
for (record,) in rows:
    body = json.loads(record)["request"]["body"]
    print(f"{body['capture']} ({body['captured']} of {body['size']} bytes{', ' + body['reason'] if body['reason'] else ''})")
PY
)
python3 - "$idle" "$(cat "$work/peak")" "$start" "$end" "$stored" <<'PY'
import sys
idle, peak = int(sys.argv[1]), int(sys.argv[2])
secs = float(sys.argv[4]) - float(sys.argv[3])
print(f"idle {idle/1024:.1f} MiB, peak {peak/1024:.1f} MiB, upload {1024/secs:.0f} MiB/s, captured body: {sys.argv[5]}")
print(f"RSS growth = {(peak-idle)/1024:.1f} MiB   (target <= 64 MiB)")
PY

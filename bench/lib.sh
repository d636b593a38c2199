# Shared by the bench scripts: a work directory cleaned up on exit, helpers,
# and an HTTPS origin (nginx with a CA of its own). Source it after `cd`.
work=$(mktemp -d ${BENCH_TMP:+-p "$BENCH_TMP"})
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
wait_for() { for _ in $(seq 200); do [ -e "$1" ] && return; sleep 0.05; done; echo "no $1"; exit 1; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing on port $1"; exit 1; }
# The value of key $1 in a line of key=value figures.
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
# CPU time (user + system) process $1 has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Resident memory of process $1, in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Writes and starts one nginx worker on 127.0.0.1:$origin_port serving
# $work/www; $1 is extra text for the listen line, the rest server directives.
start_nginx() {
  local listen_extra=$1; shift
  origin_port=$(free_port)
  cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server {
    listen 127.0.0.1:$origin_port $listen_extra;
    root $work/www;
    $*
  }
}
NGINX
  nginx -c "$work/nginx.conf"
}

# nginx over TLS on 127.0.0.1:$origin_port serving /1k and /1g, with its
# certificate signed by $work/origin-ca.pem.
start_tls_origin() {
  mkdir -p "$work/www"
  head -c 1024 /dev/urandom > "$work/www/1k"
  truncate -s 1G "$work/www/1g"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench origin CA" -keyout "$work/origin-ca.key" -out "$work/origin-ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$work/origin.key" -out "$work/origin.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$work/origin.ext"
  openssl x509 -req -in "$work/origin.csr" -CA "$work/origin-ca.pem" -CAkey "$work/origin-ca.key" \
    -CAcreateserial -days 2 -extfile "$work/origin.ext" -out "$work/origin.pem" 2>/dev/null
  start_nginx ssl "ssl_certificate $work/origin.pem;" "ssl_certificate_key $work/origin.key;"
  target="127.0.0.1:$origin_port"
}

# nginx over plain HTTP on 127.0.0.1:$origin_port serving /1k.
start_plain_origin() {
  mkdir -p "$work/www"
  head -c 1024 /dev/urandom > "$work/www/1k"
  start_nginx ""
}

#!/usr/bin/env bash
# Benchmarks of bluegreen-local's proxy, all measured in the same run on this
# machine:
#   1. throughput and p99 latency (wrk) of one backend (the demo app) called
#      directly, through LocalProxy, and through Debian's nginx as a reverse
#      proxy with upstream keep-alive, at moderate load (4 connections) and
#      at saturation (64 connections);
#   2. rollback latency with a 100 ms analysis interval
#      (crates/bluegreen-local/examples/rollback_latency.rs).
# Usage: benches/local_proxy.sh   (DURATION=10s by default). Installs wrk and
# nginx with apt when missing. Not part of scripts/test.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-10s}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p bluegreen-local --bin bluegreen-demo-app --example proxy_bench --example rollback_latency
BIN=$CARGO_TARGET_DIR/release

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_for_port() {
  local i
  for ((i = 0; i < 100; i++)); do
    if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "local_proxy.sh: nothing listens on port $1" >&2
  return 1
}

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

BACKEND=$(free_port)
PORT=$BACKEND APP_VERSION=bench "$BIN/bluegreen-demo-app" >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
wait_for_port "$BACKEND"

PROXY=$(free_port)
"$BIN/examples/proxy_bench" "$PROXY" "$BACKEND" >"$TMP/proxy.log" 2>&1 &
PIDS+=($!)
wait_for_port "$PROXY"

NGINX_PORT=$(free_port)
cat >"$TMP/nginx.conf" <<CONF
worker_processes 2;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP;
  uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
"$NGINX" -e "$TMP/nginx-error.log" -p "$TMP" -c "$TMP/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_for_port "$NGINX_PORT"

# to_ms VALUE: wrk's 1.23ms / 456.00us / 1.10s in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'
}

declare -A RPS P99
echo "local_proxy.sh: wrk -t2 for $DURATION per run; backend = bluegreen-demo-app (one thread)"
for conns in 4 64; do
  for target in direct proxy nginx; do
    case $target in
      direct) port=$BACKEND ;;
      proxy) port=$PROXY ;;
      nginx) port=$NGINX_PORT ;;
    esac
    out=$(wrk -t2 -c"$conns" -d"$DURATION" --latency "http://127.0.0.1:$port/")
    RPS[$target,$conns]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    P99[$target,$conns]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    printf '  %-6s c=%-3s %10s req/s   p99 %8s ms %s\n' "$target" "$conns" "${RPS[$target,$conns]}" "${P99[$target,$conns]}" "$errors"
  done
done

echo
echo "| connections | target | requests/s | p99 (ms) |"
echo "|---|---|---|---|"
for conns in 4 64; do
  for target in direct proxy nginx; do
    echo "| $conns | $target | ${RPS[$target,$conns]} | ${P99[$target,$conns]} |"
  done
done
echo
for conns in 4 64; do
  awk -v p="${RPS[proxy,$conns]}" -v n="${RPS[nginx,$conns]}" -v d="${RPS[direct,$conns]}" \
      -v pp="${P99[proxy,$conns]}" -v dp="${P99[direct,$conns]}" -v np="${P99[nginx,$conns]}" -v c="$conns" \
    'BEGIN { printf "c=%s: proxy/nginx throughput %.2fx (target >= 0.8x), proxy/direct %.2fx; p99 added by the proxy %.3f ms (nginx: %.3f ms; target <= 1 ms at moderate load)\n", c, p / n, p / d, pp - dp, np - dp }'
done

echo
echo "local_proxy.sh: rollback latency (100 ms analysis interval)"
"$BIN/examples/rollback_latency" | tail -3

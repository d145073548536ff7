#!/usr/bin/env bash
# Benchmarks of bluegreen-local's proxy, all measured in the same run on this
# machine, against the same backend (the demo app, LATENCY_MS=0):
#   direct  the backend itself;
#   proxy   LocalProxy (examples/proxy_bench.rs) in front of it;
#   nginx   Debian's nginx as a reverse proxy in front of it (worker_processes
#           auto, HTTP/1.1 keep-alive upstream connections).
# 1. Max throughput: unpaced wrk, 64 connections, ROUNDS rounds in turn.
# 2. Latency at several loads: for each of RATE_PERCENTS (default
#    "10 20 30 40"), oha paced at that percent of nginx's median max
#    throughput from step 1 (the same absolute rate for all three targets),
#    16 connections, with latency correction (latency counts from when a
#    request was due, so a stall is not hidden). Each run lasts
#    PACED_SECONDS (10) or long enough for MIN_REQUESTS (20000) requests,
#    whichever is longer, so even the lowest rate has 200 requests above its
#    p99. ROUNDS (3) rounds; in each, every rate and every target once, the
#    targets' order rotating from round to round, so that all three see the
#    same machine conditions. Reported: the median of the rounds' p99s, and
#    added p99 = median p99 through a proxy - median p99 direct.
# 3. Rollback latency with a 100 ms analysis interval
#    (examples/rollback_latency.rs).
#
# Targets (issue 6): proxy >= 0.8x nginx's throughput; proxy adds <= 1 ms to
# the direct p99 at moderate load.
#
# Moderate load: MODERATE_PERCENT (default 30) percent of nginx's max
# throughput measured in the same run. On the 2-core machine this runs on
# (load generator, backend and proxy share the cores) nginx's max was about
# 67,000 req/s on a quiet machine, so moderate load is about 20,000 req/s.
# Why 30%: it is the highest of the levels at which nginx itself, the
# reference proxy, adds under 1 ms to the p99 (measured: +0.22 ms at 10%,
# +0.44 at 20%, +0.53 at 30%, +1.18 at 40%). Above it the cores are busy
# enough that run-queue waits, not the proxy's work, make the tail. The script prints the added p99 of both
# proxies at every level, PASS/FAIL for LocalProxy at the moderate level, and
# whether nginx stayed under 1 ms there in this run (if it did not, the
# machine was busier than the definition assumes: check the load average
# printed for each round).
#
# Usage: benches/local_proxy.sh   env: DURATION (10s, max throughput runs),
# ROUNDS (3), RATE_PERCENTS ("10 20 30 40"), MODERATE_PERCENT (30),
# PACED_SECONDS (10), MIN_REQUESTS (20000), MAX_CONNS (64), PACED_CONNS (16).
# Installs wrk and nginx with apt and oha with cargo (into
# target/bench-tools) when missing. Not part of scripts/test.
# The figures are only as quiet as the machine: everything here shares its
# cores, so check the load average (printed) and the spread of the rounds
# before trusting a difference.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
MAX_CONNS=${MAX_CONNS:-64}
PACED_CONNS=${PACED_CONNS:-16}
RATE_PERCENTS=${RATE_PERCENTS:-10 20 30 40}
MODERATE_PERCENT=${MODERATE_PERCENT:-30}
PACED_SECONDS=${PACED_SECONDS:-10}
MIN_REQUESTS=${MIN_REQUESTS:-20000}
# The moderate level is always measured.
case " $RATE_PERCENTS " in *" $MODERATE_PERCENT "*) ;; *) RATE_PERCENTS="$RATE_PERCENTS $MODERATE_PERCENT" ;; esac
RATE_PERCENTS=$(tr ' ' '\n' <<<"$RATE_PERCENTS" | awk 'NF' | sort -g | uniq | tr '\n' ' ')

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TOOLS=$ROOT/target/bench-tools
OHA=$TOOLS/bin/oha
if [ ! -x "$OHA" ]; then
  echo "local_proxy.sh: installing oha into $TOOLS (once)"
  CARGO_TARGET_DIR=$TOOLS/build cargo install -q oha --locked --root "$TOOLS"
fi

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
PORT=$BACKEND APP_VERSION=bench LATENCY_MS=0 "$BIN/bluegreen-demo-app" >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
wait_for_port "$BACKEND"

PROXY=$(free_port)
"$BIN/examples/proxy_bench" "$PROXY" "$BACKEND" >"$TMP/proxy.log" 2>&1 &
PIDS+=($!)
wait_for_port "$PROXY"

NGINX_PORT=$(free_port)
cat >"$TMP/nginx.conf" <<CONF
worker_processes auto;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP;
  uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 256; keepalive_requests 100000; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    keepalive_requests 100000;
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

port_of() {
  case $1 in
    direct) echo "$BACKEND" ;;
    proxy) echo "$PROXY" ;;
    nginx) echo "$NGINX_PORT" ;;
  esac
}

# Every run appends one line to $TMP/results:
#   MODE TARGET ROUND RPS P50_MS P99_MS ERRORS LOAD1
# with MODE "max" or "paced@PERCENT", LOAD1 the 1-minute load average before the run.
RESULTS=$TMP/results
: >"$RESULTS"

# wrk's 1.23ms / 456.00us / 1.10s in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'
}

load1() { cut -d' ' -f1 /proc/loadavg; }

run_max() { # TARGET ROUND
  local out rps p50 p99 errors load
  load=$(load1)
  out=$(wrk -t2 -c"$MAX_CONNS" -d"$DURATION" --latency "http://127.0.0.1:$(port_of "$1")/")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
  echo "max $1 $2 $rps $p50 $p99 $errors $load" >>"$RESULTS"
  printf '  max    %-6s round %s: %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  errors %s  load %s\n' "$1" "$2" "$rps" "$p50" "$p99" "$errors" "$load"
}

run_paced() { # TARGET ROUND PERCENT RATE
  local load secs
  load=$(load1)
  secs=$(awk -v r="$4" -v s="$PACED_SECONDS" -v n="$MIN_REQUESTS" 'BEGIN {t = n / r; if (t < s) t = s; printf "%d", t + 0.999}')
  "$OHA" --no-tui --output-format json -z "${secs}s" -c "$PACED_CONNS" -q "$4" --latency-correction -w \
    "http://127.0.0.1:$(port_of "$1")/" >"$TMP/oha.json"
  python3 - "paced@$3" "$1" "$2" "$load" "$TMP/oha.json" >>"$RESULTS" <<'PY'
import json, sys
mode, target, rnd, load, path = sys.argv[1:]
d = json.load(open(path))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
errors = sum(v for k, v in codes.items() if k != "200") + sum(d.get("errorDistribution", {}).values())
print(f"{mode} {target} {rnd} {s['requestsPerSec']:.1f} {p['p50'] * 1000:.3f} {p['p99'] * 1000:.3f} {errors} {load}")
PY
  tail -1 "$RESULTS" | awk -v s="$secs" '{printf "  %-9s %-6s round %s: %8.0f req/s for %3ss  p50 %7.3f ms  p99 %7.3f ms  errors %s  load %s\n", $1, $2, $3, $4, s, $5, $6, $7, $8}'
}

# median MODE TARGET COLUMN (4 rps, 5 p50, 6 p99): the median over the rounds.
median() {
  awk -v m="$1" -v t="$2" -v c="$3" '$1 == m && $2 == t {print $c}' "$RESULTS" | sort -g |
    awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
spread() { # MODE TARGET COLUMN: min-max over the rounds
  awk -v m="$1" -v t="$2" -v c="$3" '$1 == m && $2 == t {print $c}' "$RESULTS" | sort -g |
    awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}'
}

echo "local_proxy.sh: $ROUNDS rounds, $DURATION per run; backend = bluegreen-demo-app (one thread, LATENCY_MS=0); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="$(load1)" 'BEGIN {exit !(l > 1.0)}'; then
  echo "local_proxy.sh: warning: the 1-minute load average is $(load1) (over 1.0): other work shares the cores, so latencies will be inflated"
fi
echo "1. max throughput: wrk -t2 -c$MAX_CONNS -d$DURATION --latency"
for ((r = 1; r <= ROUNDS; r++)); do
  for target in direct proxy nginx; do run_max "$target" "$r"; done
done
NGINX_MAX=$(median max nginx 4)
rate_of() { awk -v n="$NGINX_MAX" -v p="$1" 'BEGIN {printf "%d", n * p / 100}'; }
echo "2. latency at ${RATE_PERCENTS% } percent of nginx's median max ($NGINX_MAX req/s): oha -c $PACED_CONNS -q RATE --latency-correction -w, >= ${PACED_SECONDS}s and >= $MIN_REQUESTS requests per run"
TARGETS=(direct proxy nginx)
for ((r = 1; r <= ROUNDS; r++)); do
  echo " round $r (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for pct in $RATE_PERCENTS; do
    for ((t = 0; t < 3; t++)); do
      run_paced "${TARGETS[$(((t + r - 1) % 3))]}" "$r" "$pct" "$(rate_of "$pct")"
    done
  done
done

echo
echo "Max throughput, medians over $ROUNDS rounds (min-max in brackets):"
echo
echo "| target | max req/s | p50 at max (ms) | p99 at max (ms) |"
echo "|---|---|---|---|"
for target in direct proxy nginx; do
  echo "| $target | $(median max $target 4) [$(spread max $target 4)] | $(median max $target 5) | $(median max $target 6) [$(spread max $target 6)] |"
done
echo
awk -v p="$(median max proxy 4)" -v n="$NGINX_MAX" -v d="$(median max direct 4)" \
  'BEGIN {printf "throughput: proxy/nginx %.2fx (target >= 0.8x: %s), proxy/direct %.2fx\n", p / n, (p / n >= 0.8 ? "PASS" : "FAIL"), p / d}'

echo
echo "p99 latency at paced rates, median of $ROUNDS rounds (min-max in brackets); added = median p99 through the proxy - median p99 direct; load = 1-minute load average before the runs (min-max):"
echo
echo "| rate (req/s) | % of nginx max | p99 direct (ms) | p99 LocalProxy (ms) | p99 nginx (ms) | added by LocalProxy (ms) | added by nginx (ms) | load |"
echo "|---|---|---|---|---|---|---|---|"
for pct in $RATE_PERCENTS; do
  m=paced@$pct
  d=$(median "$m" direct 6) p=$(median "$m" proxy 6) n=$(median "$m" nginx 6)
  loads=$(awk -v m="$m" '$1 == m {print $8}' "$RESULTS" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}')
  awk -v r="$(rate_of "$pct")" -v pct="$pct" -v d="$d" -v p="$p" -v n="$n" -v sd="$(spread "$m" direct 6)" \
      -v sp="$(spread "$m" proxy 6)" -v sn="$(spread "$m" nginx 6)" -v l="$loads" -v mod="$MODERATE_PERCENT" \
    'BEGIN {printf "| %d | %s%s | %.3f [%s] | %.3f [%s] | %.3f [%s] | %+.3f | %+.3f | %s |\n",
      r, pct, (pct == mod ? " (moderate)" : ""), d, sd, p, sp, n, sn, p - d, n - d, l}'
done
echo
m=paced@$MODERATE_PERCENT
awk -v r="$(rate_of "$MODERATE_PERCENT")" -v pct="$MODERATE_PERCENT" -v d="$(median "$m" direct 6)" \
    -v p="$(median "$m" proxy 6)" -v n="$(median "$m" nginx 6)" \
  'BEGIN {
    printf "moderate load (%d req/s, %s%% of nginx max): LocalProxy adds %.3f ms to the p99 (target <= 1 ms): %s\n", r, pct, p - d, (p - d <= 1 ? "PASS" : "FAIL")
    printf "  reference: nginx adds %.3f ms there%s\n", n - d, (n - d < 1 ? "" : " (over 1 ms: the machine was busier than the definition of moderate load assumes; see the load column)") }'
awk '$7 != 0 {bad = 1; print "local_proxy.sh: errors in run: " $0} END {exit bad}' "$RESULTS" || true

echo
echo "3. rollback latency (100 ms analysis interval)"
"$BIN/examples/rollback_latency" | tail -3

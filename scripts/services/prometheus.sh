# Sourced by scripts/test: installs (when missing) and starts a Prometheus server
# on a free loopback port, scraping a loopback port the tests serve /metrics on.
# Exports:
#   BLUEGREEN_TEST_PROMETHEUS_URL        where Prometheus answers its HTTP API
#   BLUEGREEN_TEST_PROM_SCRAPE_PORT      the port the tests must serve /metrics on
# The Debian package's own systemd service is not used: the binary runs here,
# with its own config and data under $ROOT/target/, and stops when the script ends.

if ! command -v prometheus >/dev/null 2>&1; then
  echo "scripts/test: installing Debian's prometheus package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps node-exporter and friends out; the postinst may
  # try to start the packaged service, which does not matter: we run our own.
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

PROM_DIR="$ROOT/target/prometheus"
mkdir -p "$PROM_DIR/data"
rm -rf "${PROM_DIR:?}/data/"*
PROM_PORT=$(free_port)
BLUEGREEN_TEST_PROM_SCRAPE_PORT=$(free_port)
while [ "$BLUEGREEN_TEST_PROM_SCRAPE_PORT" = "$PROM_PORT" ]; do
  BLUEGREEN_TEST_PROM_SCRAPE_PORT=$(free_port)
done
cat >"$PROM_DIR/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: bluegreen-test
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:${BLUEGREEN_TEST_PROM_SCRAPE_PORT}"]
YAML

prometheus \
  --config.file="$PROM_DIR/prometheus.yml" \
  --storage.tsdb.path="$PROM_DIR/data" \
  --web.listen-address="127.0.0.1:${PROM_PORT}" \
  >"$PROM_DIR/prometheus.log" 2>&1 &
PROM_PID=$!
on_exit "kill $PROM_PID; wait $PROM_PID"
if ! wait_for_port "$PROM_PORT" 60 prometheus; then
  tail -n 20 "$PROM_DIR/prometheus.log" >&2 || true
  exit 1
fi
# Listening is not ready: wait for /-/ready (bounded).
PROM_READY=no
for ((i = 0; i < 300; i++)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PROM_PORT" &&
    printf 'GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
    head -n 1 <&3 | grep -q ' 200') 2>/dev/null; then
    PROM_READY=yes
    break
  fi
  sleep 0.1
done
if [ "$PROM_READY" != yes ]; then
  echo "scripts/test: prometheus on 127.0.0.1:$PROM_PORT was not ready within 30s" >&2
  tail -n 20 "$PROM_DIR/prometheus.log" >&2 || true
  exit 1
fi
export BLUEGREEN_TEST_PROMETHEUS_URL="http://127.0.0.1:${PROM_PORT}"
export BLUEGREEN_TEST_PROM_SCRAPE_PORT
echo "scripts/test: prometheus at $BLUEGREEN_TEST_PROMETHEUS_URL scraping 127.0.0.1:$BLUEGREEN_TEST_PROM_SCRAPE_PORT"

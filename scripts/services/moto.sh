# Sourced by scripts/test: installs (when missing) and starts moto_server, the AWS
# emulator the ECS, ALB and Secrets Manager providers are tested against.
# Exports BLUEGREEN_TEST_MOTO_ENDPOINT (the tests use their own dummy credentials).

MOTO_VERSION="5.2.5"
MOTO_VENV="$ROOT/target/moto-venv"

moto_installed() {
  [ -x "$MOTO_VENV/bin/moto_server" ] &&
    "$MOTO_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$MOTO_VERSION')" 2>/dev/null
}

if ! moto_installed; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "scripts/services/moto.sh: installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
  fi
  echo "scripts/services/moto.sh: installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  mkdir -p "$ROOT/target"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

MOTO_PORT=$(free_port)
MOTO_LOG="$ROOT/target/moto-server.log"
"$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!
on_exit "kill $MOTO_PID"
wait_for_port "$MOTO_PORT" 60 moto_server
# The port opens before the app answers: wait for the first real answer too.
for _ in $(seq 1 100); do
  if "$MOTO_VENV/bin/python" -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/data.json', timeout=2)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done

export BLUEGREEN_TEST_MOTO_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
echo "scripts/services/moto.sh: moto_server $MOTO_VERSION on $BLUEGREEN_TEST_MOTO_ENDPOINT (pid $MOTO_PID)"

# shellcheck shell=bash
# PostgreSQL for the bluegreen-postgres tests: installs Debian's `postgresql`
# when missing, runs a private cluster under $ROOT/target/postgres on a free
# loopback port (TLS on, password auth over TCP), creates a superuser role and
# a database for tests, loads pg_stat_statements (shared_preload_libraries;
# Debian's server package ships it, postgresql-contrib being part of it since
# Debian 10; a test that reads it runs CREATE EXTENSION in its own database),
# and stops the cluster on exit.
#
# Exports:
#   BLUEGREEN_TEST_PG_URL  postgres://bluegreen:...@127.0.0.1:PORT/bluegreen
#                          (superuser: each test creates a database of its own)
#   BLUEGREEN_TEST_PG_CA   the PEM CA certificate that signed the server's (CN=localhost)

pg_bin_dir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

PG_BIN=$(pg_bin_dir || true)
if [ -z "$PG_BIN" ] || ! command -v pg_dump >/dev/null || ! command -v openssl >/dev/null; then
  echo "scripts/services/postgres.sh: installing postgresql"
  # Our own cluster is created below; the package's default one is not wanted.
  mkdir -p /etc/postgresql-common
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql openssl >/dev/null
  PG_BIN=$(pg_bin_dir)
fi

PG_DIR="$ROOT/target/postgres"
PG_DATA="$PG_DIR/data"
PG_RUN="$PG_DIR/run"
PG_TLS="$PG_DIR/tls"
PG_PASSWORD="bluegreen-test-only"
mkdir -p "$PG_DIR" "$PG_RUN" "$PG_TLS"

if [ "$(id -u)" = 0 ]; then
  PG_OS_USER=postgres
  PG_AS="runuser -u postgres --"
  pg_as() { runuser -u postgres -- "$@"; }
  chown postgres: "$PG_DIR" "$PG_RUN" "$PG_TLS"
  if ! runuser -u postgres -- test -w "$PG_DIR"; then
    # The cluster runs as postgres, which must be able to reach its directory.
    d="$PG_DIR"
    while [ "$d" != / ]; do chmod o+x "$d"; d=$(dirname "$d"); done
  fi
else
  PG_OS_USER=$(id -un)
  PG_AS=""
  pg_as() { "$@"; }
fi

# A cluster left running by an earlier run that was killed is stopped first.
if [ -f "$PG_DATA/postmaster.pid" ]; then
  pg_as "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
fi
# A data directory from another PostgreSQL major version is started afresh.
if [ -f "$PG_DATA/PG_VERSION" ] && [ "$(cat "$PG_DATA/PG_VERSION")" != "$("$PG_BIN/postgres" -V | sed -E 's/^[^0-9]*([0-9]+).*/\1/')" ]; then
  rm -rf "$PG_DATA"
fi
if [ ! -f "$PG_DATA/PG_VERSION" ]; then
  rm -rf "$PG_DATA"
  mkdir -p "$PG_DATA"
  if [ "$PG_OS_USER" = postgres ]; then chown postgres: "$PG_DATA"; fi
  pg_as "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 ||
    { cat "$PG_DIR/initdb.log" >&2; return 1; }
fi
if [ ! -f "$PG_TLS/ca.crt" ] || [ ! -f "$PG_TLS/server.crt" ]; then
  # A private CA and a server certificate it signs (CN=localhost, SAN localhost and 127.0.0.1).
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bluegreen test CA" \
    -keyout "$PG_TLS/ca.key" -out "$PG_TLS/ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$PG_TLS/server.key" -out "$PG_TLS/server.csr" >/dev/null 2>&1
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$PG_TLS/server.ext"
  openssl x509 -req -in "$PG_TLS/server.csr" -CA "$PG_TLS/ca.crt" -CAkey "$PG_TLS/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PG_TLS/server.ext" -out "$PG_TLS/server.crt" >/dev/null 2>&1
  if [ "$PG_OS_USER" = postgres ]; then chown postgres: "$PG_TLS/server.key" "$PG_TLS/server.crt"; fi
  chmod 600 "$PG_TLS/server.key"
fi

PG_PORT=$(free_port)
pg_as "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DIR/server.log" -w -t 60 \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_RUN -c max_connections=200 -c shared_preload_libraries=pg_stat_statements -c ssl=on -c ssl_cert_file=$PG_TLS/server.crt -c ssl_key_file=$PG_TLS/server.key -c fsync=off" \
  start >/dev/null || { tail -n 30 "$PG_DIR/server.log" >&2; return 1; }
on_exit "$PG_AS $PG_BIN/pg_ctl -D '$PG_DATA' -m fast stop"
wait_for_port "$PG_PORT" 60 postgres

pg_as "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 -h "$PG_RUN" -p "$PG_PORT" -U postgres -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bluegreen') THEN
    CREATE ROLE bluegreen LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE bluegreen LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE bluegreen OWNER bluegreen'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'bluegreen') \gexec
SQL

export BLUEGREEN_TEST_PG_URL="postgres://bluegreen:$PG_PASSWORD@127.0.0.1:$PG_PORT/bluegreen"
export BLUEGREEN_TEST_PG_CA="$PG_TLS/ca.crt"

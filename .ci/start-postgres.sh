#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the distributed-tuning test.
# Installs the server from Debian's packages if it is missing. Prints the URL on stdout.
# Usage: eval "$(bash .ci/start-postgres.sh)"   -> exports HOTEXPERTS_TEST_PG_URL
set -euo pipefail
PORT="${HOTEXPERTS_PG_PORT:-54329}"
DATA="${HOTEXPERTS_PG_DATA:-/tmp/hotexperts-pg}"
BIN=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && BIN="$d"; done
if [ -z "$BIN" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && BIN="$d"; done
fi
RUN=()
if [ "$(id -u)" = 0 ]; then RUN=(runuser -u postgres --); fi
if ! "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  rm -rf "$DATA"; mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres "$DATA"
  "${RUN[@]}" "$BIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
  "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c max_connections=200" start >/dev/null
fi
"${RUN[@]}" "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1" postgres >/dev/null
echo "export HOTEXPERTS_TEST_PG_URL=postgresql://postgres@127.0.0.1:$PORT/postgres"

#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the multi-worker optimize test.
# Prints the SQLAlchemy URL on success; prints nothing (and exits 0) when no server can be started.
set -u
PORT=${PGTEST_PORT:-54329}
DATA=${PGTEST_DIR:-/tmp/bertcls-pgtest}
log() { echo "postgres.sh: $*" >&2; }

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  log "installing Debian's postgresql package"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2 || { log "install failed"; exit 0; }
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
RUN_AS=()
if [ "$(id -u)" = "0" ]; then RUN_AS=(runuser -u postgres --); fi

if [ -f "$DATA/postmaster.pid" ]; then "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DATA" stop -m immediate >/dev/null 2>&1; fi
rm -rf "$DATA"; mkdir -p "$DATA"
[ "$(id -u)" = "0" ] && chown postgres "$DATA"
"${RUN_AS[@]}" "$BIN/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null 2>&1 || { log "initdb failed"; exit 0; }
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
  -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1" start >/dev/null 2>&1 || { log "server did not start"; exit 0; }
"${RUN_AS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres bertcls_test >/dev/null 2>&1 || { log "createdb failed"; exit 0; }
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/bertcls_test"

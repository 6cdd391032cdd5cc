#!/bin/sh
# The official postgres image's start-up, in short: on an empty $PGDATA, initdb with
# POSTGRES_USER (default postgres) and POSTGRES_PASSWORD, password logins (scram-sha-256) from
# any address unless POSTGRES_HOST_AUTH_METHOD says otherwise, and POSTGRES_DB (default: the
# user's name) created; then the server in the foreground, with the container's arguments.
#
# Unlike the official image: the database is created in single-user mode (no temporary
# server that a client could reach before it is ready), and durability is off (fsync,
# synchronous_commit, full_page_writes), as for scripts/servers.sh's PostgreSQL: these are
# throwaway test servers.
set -eu
bin=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" \
      "(or set POSTGRES_HOST_AUTH_METHOD=trust), as for the official postgres image" >&2
    exit 1
  fi
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --no-locale -N \
      --auth-local=trust --auth-host="$auth"
    rm -f "$pwfile"
  else
    "$bin/initdb" -D "$PGDATA" -U "$user" -E UTF8 --no-locale -N --auth-local=trust --auth-host=trust
  fi
  echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
CONF
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\"" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec "$bin/postgres" -D "$PGDATA" "$@"

#!/usr/bin/env bash
# Where Postgres advisory mode's server time goes: pgbench runs the
# library's grant and release statements (as `advisory.rs` and `store.rs`
# send them, the mutex's, default schema and namespace), the raw pair
# (`pg_try_advisory_lock` + `pg_advisory_unlock`) and variants with one part
# taken out or added alone, against the stand-in postgres:15 on loopback.
# No client library is involved: what is left between "lib" and "raw" is
# the server's work on the statements. Usage: CLIENTS="1 16" SECONDS_EACH=6
# bash benches/scripts/pg_advisory_statements.sh (needs pgbench: postgresql-client).
set -euo pipefail
CLIENTS=${CLIENTS:-"1 16"}
SECONDS_EACH=${SECONDS_EACH:-6}
name=lh-pgstmt-$$
dir=$(mktemp -d)
trap 'docker rm -f $name >/dev/null 2>&1; rm -rf "$dir"' EXIT
docker run -d --rm --name $name -e POSTGRES_PASSWORD=pw -p 127.0.0.1::5432 \
  leasehold-standin/postgres:15 -c max_connections=200 >/dev/null
port=$(docker port $name 5432/tcp | head -1 | sed 's/.*://')
export PGPASSWORD=pw
psql_() { psql -h 127.0.0.1 -p "$port" -U postgres -qtA "$@"; }
for _ in $(seq 100); do psql_ -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
# The tables the statements read, as the backend creates them (the epoch in
# force lives in an unlogged table: a crash empties it).
psql_ <<'SQL'
CREATE TABLE leasehold_fencing (namespace text, key text, counter int8, holder text,
  acquired_at timestamptz, lock_id int8, PRIMARY KEY (namespace, key));
CREATE UNLOGGED TABLE leasehold_fencing_in_force (epoch int8 PRIMARY KEY);
INSERT INTO leasehold_fencing_in_force VALUES (1);
CREATE SEQUENCE leasehold_fencing_token;
INSERT INTO leasehold_fencing
  SELECT 'default', 'k' || i, 1, 'bench', now(), i FROM generate_series(1, 100000) i;
SQL
epoch='(SELECT max(epoch) FROM "public"."leasehold_fencing_in_force")'
next="nextval('\"public\".\"leasehold_fencing_token\"'::regclass)"
label="'lh ' || g.t || ' ' || (extract(epoch FROM clock_timestamp()) * 1000)::int8 || ' ' || 'bench'::text"
holder="(SELECT a.application_name FROM pg_locks l CROSS JOIN LATERAL pg_stat_get_activity(l.pid) a \
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.mode = 'ExclusiveLock' AND l.pid IS NOT NULL \
AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
AND l.classid::int8 = ((:id >> 32) & 4294967295) AND l.objid::int8 = (:id & 4294967295) LIMIT 1)"
grant="SELECT CASE WHEN g.t < (g.e << 40) THEN g.t END, \
CASE WHEN g.e IS NOT NULL AND g.t IS NULL THEN $holder END, \
CASE WHEN g.t IS NULL THEN 0 WHEN g.t >= (g.e << 40) THEN pg_advisory_unlock(:id)::int \
ELSE length(set_config('application_name', $label, false)) + length(set_config('idle_session_timeout', '30000', false)) \
+ length(set_config('synchronous_commit', 'off', true)) END, pg_backend_pid(), \
CASE WHEN g.t IS NULL OR g.t < (g.e << 40) THEN g.e END, \
CASE WHEN g.t IS NOT NULL THEN EXISTS (SELECT 1 FROM \"public\".\"leasehold_fencing\" WHERE namespace = 'default' AND key = 'k' || :id) END \
FROM (SELECT a.e, CASE WHEN a.e IS NULL THEN NULL WHEN pg_try_advisory_lock(:id) THEN $next END AS t \
FROM (SELECT $epoch AS e) a OFFSET 0) g"
release="SELECT pg_advisory_unlock(:id), pg_notify('leasehold_release', 'x' || :id)::text, \
set_config('idle_session_timeout', '0', false), set_config('application_name', '', false), \
set_config('synchronous_commit', 'off', true)"
release_no_notify="SELECT pg_advisory_unlock(:id), set_config('idle_session_timeout', '0', false), \
set_config('application_name', '', false), set_config('synchronous_commit', 'off', true)"
variant() { # name, grant, release
  printf '\\set id random(1, 100000)\n%s;\n%s;\n' "$2" "$3" > "$dir/$1.sql"
}
variant raw "SELECT pg_try_advisory_lock(:id)" "SELECT pg_advisory_unlock(:id)"
variant lib "$grant" "$release"
variant lib_without_notify "$grant" "$release_no_notify"
variant lib_grant_raw_release "$grant" "SELECT pg_advisory_unlock(:id)"
variant raw_grant_lib_release "SELECT pg_try_advisory_lock(:id)" "$release"
variant lock_and_token "SELECT CASE WHEN pg_try_advisory_lock(:id) THEN $next END" "SELECT pg_advisory_unlock(:id)"
variant lock_token_epoch "SELECT g.t FROM (SELECT a.e, CASE WHEN a.e IS NULL THEN NULL WHEN pg_try_advisory_lock(:id) THEN $next END AS t FROM (SELECT $epoch AS e) a OFFSET 0) g" "SELECT pg_advisory_unlock(:id)"
variant lock_and_key_row_check "SELECT CASE WHEN pg_try_advisory_lock(:id) THEN EXISTS (SELECT 1 FROM leasehold_fencing WHERE namespace = 'default' AND key = 'k' || :id) END" "SELECT pg_advisory_unlock(:id)"
tps() {
  pgbench -h 127.0.0.1 -p "$port" -U postgres -n -M prepared -c "$2" -j 2 -T "$SECONDS_EACH" \
    -f "$dir/$1.sql" postgres 2>/dev/null | awk '/^tps/ {printf "%.0f", $3}'
}
for c in $CLIENTS; do
  echo "## $c client(s), transactions (grant + release) per second, ratio to raw in this run"
  base=$(tps raw "$c")
  printf '%-24s %8s %6s\n' raw "$base" 1.00
  for v in lib lib_without_notify lib_grant_raw_release raw_grant_lib_release lock_and_token \
           lock_token_epoch lock_and_key_row_check; do
    t=$(tps "$v" "$c")
    printf '%-24s %8s %6s\n' "$v" "$t" "$(awk -v a="$t" -v b="$base" 'BEGIN {printf "%.2f", a / b}')"
  done
done

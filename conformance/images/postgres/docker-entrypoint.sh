#!/bin/bash
# leasehold stand-in for the official postgres image's entrypoint (Debian's
# postgresql-15). Same conventions:
#   env POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust),
#       POSTGRES_USER (default postgres), POSTGRES_DB (default = user),
#       POSTGRES_HOST_AUTH_METHOD (default: password_encryption, scram-sha-256),
#       POSTGRES_INITDB_ARGS, PGDATA (default /var/lib/postgresql/data)
#   command: postgres [-c key=value ...]; arguments starting with "-" get
#       `postgres` prepended; any other command runs as is.
#   /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz run once after initdb.
#
# Like the official image, a first start initialises $PGDATA with a temporary
# server that listens on the Unix socket only, then stops it and execs the
# real server. So on a first start "database system is ready to accept
# connections" appears TWICE: once on stdout (the temporary server, through
# pg_ctl) and once on stderr (the final server, listening on 0.0.0.0:5432).
# A restart on an initialised $PGDATA prints it once, on stderr.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi
for arg in "${@:2}"; do
    case "$arg" in
    # Informational options: no server, no initdb.
    -'?' | --help | --describe-config | -V | --version) exec "$@" ;;
    esac
done

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chmod 00700 "$PGDATA" || :
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' + 2>/dev/null || :
    chown postgres:postgres /var/run/postgresql
    chmod 03777 /var/run/postgresql || :
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
export POSTGRES_USER POSTGRES_DB

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        cat >&2 <<'EOM'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOM
        exit 1
    fi

    # POSTGRES_INITDB_ARGS is a shell-quoted string, as in the official image.
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        eval 'initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"${POSTGRES_INITDB_ARGS:-}"
    else
        eval 'initdb --username="$POSTGRES_USER" '"${POSTGRES_INITDB_ARGS:-}"
    fi

    # Remote connections: the same rule as the official image.
    shift # "postgres"
    auth=$(postgres -C password_encryption "$@")
    : "${POSTGRES_HOST_AUTH_METHOD:=$auth}"
    {
        printf '\n'
        if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
            printf '# warning trust is enabled for all connections\n'
        fi
        printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
    } >>"$PGDATA/pg_hba.conf"

    # Temporary server on the Unix socket only (its log goes to stdout).
    pg_ctl -D "$PGDATA" \
        -o "$(printf '%q ' "$@" -c listen_addresses='' -p "${PGPORT:-5432}")" \
        -w start

    export PGPASSWORD=${POSTGRES_PASSWORD:-}
    psql_cmd=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [ "$POSTGRES_DB" != postgres ]; then
        printf 'CREATE DATABASE :"db" ;\n' |
            "${psql_cmd[@]}" --dbname postgres --set db="$POSTGRES_DB"
        echo
    fi
    psql_cmd+=(--dbname "$POSTGRES_DB")
    echo
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
        *.sh)
            if [ -x "$f" ]; then
                echo "$0: running $f"
                "$f"
            else
                echo "$0: sourcing $f"
                # shellcheck disable=SC1090
                . "$f"
            fi
            ;;
        *.sql) echo "$0: running $f"; "${psql_cmd[@]}" -f "$f"; echo ;;
        *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql_cmd[@]}"; echo ;;
        *) echo "$0: ignoring $f" ;;
        esac
    done
    unset PGPASSWORD

    pg_ctl -D "$PGDATA" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
    set -- postgres "$@"
else
    echo
    echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
    echo
fi

# The official image stops with SIGINT (fast shutdown: end sessions, stop
# promptly). `docker import` cannot set STOPSIGNAL, so this script stays PID 1
# and turns the SIGTERM of `docker stop` into SIGINT for the server.
"$@" &
child=$!
trap 'kill -INT "$child" 2>/dev/null || :' TERM INT
trap 'kill -HUP "$child" 2>/dev/null || :' HUP
trap 'kill -QUIT "$child" 2>/dev/null || :' QUIT
set +e
while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || exit "$rc"
done

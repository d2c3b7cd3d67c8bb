#!/bin/bash
# leasehold stand-in for the official mariadb image's entrypoint (Debian's
# mariadb-server 10.11). Same conventions:
#   env MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD; required unless
#       MARIADB_ALLOW_EMPTY_ROOT_PASSWORD / MYSQL_ALLOW_EMPTY_PASSWORD is set),
#       MARIADB_DATABASE / MYSQL_DATABASE, MARIADB_USER / MYSQL_USER with
#       MARIADB_PASSWORD / MYSQL_PASSWORD (all privileges on that database).
#   command: mariadbd [--option=value ...]; arguments starting with "-" get
#       `mariadbd` prepended; any other command runs as is.
#   /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz run once after the
#       first initialisation.
#
# Like the official image, a first start initialises /var/lib/mysql with a
# temporary server on the Unix socket only (no TCP: it logs "port: 0"), then
# stops it and execs the real server, which logs "ready for connections"
# with "port: 3306" on stderr. Wait for that line, not the first one.
set -Eeuo pipefail

DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock

if [ "${1:0:1}" = '-' ]; then
    set -- mariadbd "$@"
fi
case "$1" in
mariadbd | mysqld) ;;
*) exec "$@" ;;
esac
for arg in "${@:2}"; do
    case "$arg" in
    # Informational options: no server, no initialisation.
    --help | -'?' | --version | -V) exec "$@" ;;
    esac
done

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$DATADIR" /run/mysqld
    find "$DATADIR" /run/mysqld \! -user mysql -exec chown mysql:mysql '{}' + 2>/dev/null || :
    exec setpriv --reuid=mysql --regid=mysql --init-groups "${BASH_SOURCE[0]}" "$@"
fi

ROOT_PASSWORD=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
ALLOW_EMPTY=${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}
DATABASE=${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}
USER_NAME=${MARIADB_USER:-${MYSQL_USER:-}}
USER_PASSWORD=${MARIADB_PASSWORD:-${MYSQL_PASSWORD:-}}

# SQL string and identifier quoting for values from the environment.
sql_string() { printf "'%s'" "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g")"; }
sql_ident() { printf '`%s`' "$(printf '%s' "$1" | sed -e 's/`/``/g')"; }

if [ ! -d "$DATADIR/mysql" ]; then
    if [ -z "$ROOT_PASSWORD" ] && [ -z "$ALLOW_EMPTY" ]; then
        cat >&2 <<'EOM'
Error: Database is uninitialized and password option is not specified
       You need to specify one of MARIADB_ROOT_PASSWORD,
       MARIADB_ALLOW_EMPTY_ROOT_PASSWORD (or their MYSQL_ names).
EOM
        exit 1
    fi
    echo "leasehold stand-in: initialising $DATADIR"
    mariadb-install-db --datadir="$DATADIR" --skip-test-db --skip-name-resolve \
        --auth-root-authentication-method=normal >/dev/null

    # Temporary server on the socket only.
    "$@" --skip-networking --socket="$SOCKET" --datadir="$DATADIR" &
    temp=$!
    for _ in $(seq 1 120); do
        mariadb-admin --socket="$SOCKET" -uroot ping >/dev/null 2>&1 && break
        kill -0 "$temp" 2>/dev/null || { echo "the temporary server exited" >&2; exit 1; }
        sleep 0.5
    done
    mariadb-admin --socket="$SOCKET" -uroot ping >/dev/null 2>&1 ||
        { echo "the temporary server never answered" >&2; exit 1; }

    pw=$(sql_string "$ROOT_PASSWORD")
    {
        echo "SET @@SESSION.SQL_LOG_BIN=0;"
        # No anonymous accounts (they would shadow '%' users from localhost).
        echo "DELETE FROM mysql.global_priv WHERE User='';"
        echo "FLUSH PRIVILEGES;"
        echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $pw;"
        echo "CREATE USER 'root'@'%' IDENTIFIED BY $pw;"
        echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        if [ -n "$DATABASE" ]; then
            echo "CREATE DATABASE IF NOT EXISTS $(sql_ident "$DATABASE");"
        fi
        if [ -n "$USER_NAME" ] && [ -n "$USER_PASSWORD" ]; then
            echo "CREATE USER $(sql_string "$USER_NAME")@'%' IDENTIFIED BY $(sql_string "$USER_PASSWORD");"
            if [ -n "$DATABASE" ]; then
                echo "GRANT ALL ON $(sql_ident "$DATABASE").* TO $(sql_string "$USER_NAME")@'%';"
            fi
        fi
    } | mariadb --socket="$SOCKET" -uroot

    client=(mariadb --socket="$SOCKET" -uroot)
    [ -z "$ROOT_PASSWORD" ] || client+=("-p$ROOT_PASSWORD")
    [ -z "$DATABASE" ] || client+=("$DATABASE")
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
        *.sh) echo "$0: running $f"; . "$f" ;;
        *.sql) echo "$0: running $f"; "${client[@]}" <"$f" ;;
        *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${client[@]}" ;;
        *) echo "$0: ignoring $f" ;;
        esac
    done

    kill -TERM "$temp"
    wait "$temp" || :
    echo "leasehold stand-in: MariaDB init process done. Ready for start up."
fi

# mariadbd shuts down cleanly on the SIGTERM of `docker stop`.
exec "$@"

#!/bin/bash
# leasehold stand-in for the official redis image's entrypoint (Debian's
# redis-server). Accepts the same commands:
#   (no args)                        -> redis-server
#   redis-server [file.conf] [--opt value ...]
#   --opt value ... / file.conf      -> redis-server prepended
#   anything else                    -> run as is
# redis-server always gets `--protected-mode no` and `--bind 0.0.0.0` unless
# the command line (or the given config file) sets them, so that clients
# outside the container can connect. It runs in the foreground, logs to
# stdout, keeps its files in the working directory /data, and runs as the
# redis user like the official image.
set -euo pipefail

if [ $# -eq 0 ]; then
    set -- redis-server
fi
case "$1" in
-* | *.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    # Own the data dir (it may be a fresh volume or tmpfs), then drop root.
    find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

case "${2:-}" in
-v | --version | -h | --help | --test-memory | --check-system) exec "$@" ;;
esac

if [ "$1" = redis-server ]; then
    shift
    conf=()
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
        conf=("$1") # a config file (or "-" for stdin)
        shift
    fi
    have_bind=0 have_pm=0
    for a in "$@"; do
        case "$a" in
        --bind) have_bind=1 ;;
        --protected-mode) have_pm=1 ;;
        esac
    done
    if [ ${#conf[@]} -gt 0 ] && [ -f "${conf[0]}" ]; then
        grep -qE '^[[:space:]]*bind[[:space:]]' "${conf[0]}" && have_bind=1
        grep -qE '^[[:space:]]*protected-mode[[:space:]]' "${conf[0]}" && have_pm=1
    fi
    defaults=()
    [ "$have_pm" = 1 ] || defaults+=(--protected-mode no)
    [ "$have_bind" = 1 ] || defaults+=(--bind 0.0.0.0)
    # Command-line options are applied after the config file, in order, so the
    # user's own options still win over these defaults.
    set -- redis-server "${conf[@]}" "${defaults[@]}" "$@"
fi

exec "$@"

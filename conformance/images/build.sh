#!/usr/bin/env bash
# Build local stand-in Docker images for the conformance suite's stores,
# without any container registry.
#
#   conformance/images/build.sh [--force] [--smoke] [--rebuild-base] [STORE...]
#
# STORE is any of: redis postgres etcd zookeeper dynamodb mariadb (default: all
# six). Aliases: pg, zk, moto, mysql.
#
# How: debootstrap a minimal Debian bookworm rootfs once (cached as a tarball
# in $LEASEHOLD_IMAGE_CACHE, default ~/.cache/leasehold-images), then per
# store: unpack it into a temporary directory, apt-get install the store's
# Debian package(s) inside a chroot, add an entrypoint that accepts the
# official image's command and env, and `docker import` the tree under its
# own name, `leasehold-standin/<store>:<tag>`: a user's official images are
# never re-tagged, replaced or removed. The fixtures prefer the stand-ins and
# fall back to the official names. The Debian mirror is read from the host's
# own apt sources at run time; none is written here.
#
# An image whose tag already exists with the label leasehold.standin=true and
# was built by this version of the scripts is skipped unless --force is given;
# one built by another version is rebuilt. See README.md beside this file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LEASEHOLD_IMAGE_CACHE:-${HOME:-/root}/.cache/leasehold-images}
# The images must carry Redis 7.0, PostgreSQL 15, etcd 3.4, ZooKeeper 3.8 and
# MariaDB 10.11: those are the versions Debian 12 "bookworm" ships.
SUITE=bookworm
BASE_RECIPE=1 # bump when the base rootfs recipe below changes
MOTO_VERSION=${LEASEHOLD_MOTO_VERSION:-5.2.5}
# moto's "server" extra also brings CloudFormation linting (cfn-lint, sympy,
# networkx: ~160 MB) that the DynamoDB API never loads; the server itself only
# needs flask and flask-cors beside the "dynamodb" extra.
MOTO_EXTRAS=${LEASEHOLD_MOTO_EXTRAS:-dynamodb}
ALL_STORES=(redis postgres etcd zookeeper dynamodb mariadb)

declare -A TAG=(
    [redis]=leasehold-standin/redis:7.0
    [postgres]=leasehold-standin/postgres:15
    [etcd]=leasehold-standin/etcd:v3.4
    [zookeeper]=leasehold-standin/zookeeper:3.8
    [dynamodb]=leasehold-standin/dynamodb-local:latest
    [mariadb]=leasehold-standin/mariadb:10.11
)

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

FORCE=0 SMOKE=0 REBUILD_BASE=0
STORES=()
for arg in "$@"; do
    case "$arg" in
    --force | -f) FORCE=1 ;;
    --smoke) SMOKE=1 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    -h | --help) usage; exit 0 ;;
    pg | postgresql) STORES+=(postgres) ;;
    zk) STORES+=(zookeeper) ;;
    moto | dynamo) STORES+=(dynamodb) ;;
    mysql) STORES+=(mariadb) ;;
    redis | postgres | etcd | zookeeper | dynamodb | mariadb) STORES+=("$arg") ;;
    *) die "unknown argument '$arg' (try --help)" ;;
    esac
done
[ ${#STORES[@]} -gt 0 ] || STORES=("${ALL_STORES[@]}")

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------
# Cleanup: every temporary rootfs lives under $WORK; mounts are recorded and
# always unmounted before anything is removed.
WORK=""
MOUNTS=()
cleanup() {
    local i m
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    MOUNTS=()
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if grep -q " $WORK/" /proc/mounts; then
            log "warning: something is still mounted under $WORK; leaving it in place"
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_proc() { # ROOT
    mount -t proc proc "$1/proc"
    MOUNTS+=("$1/proc")
}
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}"; done
    MOUNTS=()
}

# ---------------------------------------------------------------------------
# The host's apt sources, as lines "URI SUITE COMPONENTS...", deb entries only,
# from deb822 *.sources files and one-line *.list files.
host_apt_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush(   n, m, i, j, U, S) {
                if (enabled && types ~ /(^|[ \t])deb([ \t]|$)/ && uris != "" && suites != "") {
                    n = split(uris, U, /[ \t]+/); m = split(suites, S, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (U[i] != "" && S[j] != "") print U[i], S[j], comps
                }
                types = uris = suites = comps = last = ""; enabled = 1
            }
            BEGIN { enabled = 1 }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { v = $0; sub(/^[ \t]+/, "", v)
                       if (last == "uris") uris = uris " " v
                       else if (last == "suites") suites = suites " " v
                       else if (last == "components") comps = comps " " v
                       next }
            { key = tolower($0); sub(/:.*/, "", key)
              val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
              last = key
              if (key == "types") types = val
              else if (key == "uris") uris = val
              else if (key == "suites") suites = val
              else if (key == "components") comps = val
              else if (key == "enabled" && tolower(val) == "no") enabled = 0 }
            END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -e 's/#.*//' "$f" | awk '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                c = ""; for (k = i + 2; k <= NF; k++) c = c (c == "" ? "" : " ") $k
                if (i + 1 <= NF) print $i, $(i + 1), c
            }'
    done
}

# Sets MIRROR (the host's main Debian archive) and CHROOT_SOURCES (the host's
# Debian entries re-aimed at $SUITE) from the host's apt configuration.
read_host_mirror() {
    local host_codename="" sources uri suite comps
    host_codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}") || true
    sources=$(host_apt_sources)
    [ -n "$sources" ] || die "no deb entries found in the host's apt sources"
    [ -n "$host_codename" ] ||
        host_codename=$(awk '$2 !~ /-/ { print $2; exit }' <<<"$sources")
    MIRROR=${LEASEHOLD_DEBIAN_MIRROR:-}
    CHROOT_SOURCES=""
    while read -r uri suite comps; do
        case "$suite" in
        "$host_codename") [ -n "$MIRROR" ] || MIRROR=$uri ;;
        "$host_codename"-*) ;;
        *) continue ;; # not the host's Debian release: a third-party repository
        esac
        [ -n "$comps" ] || comps=main
        CHROOT_SOURCES+="deb $uri $SUITE${suite#"$host_codename"} $comps"$'\n'
    done <<<"$sources"
    [ -n "$MIRROR" ] || die "could not find the host's main Debian archive in its apt sources"
    [ -n "$CHROOT_SOURCES" ] || CHROOT_SOURCES="deb $MIRROR $SUITE main"$'\n'
    if [ "$host_codename" != "$SUITE" ]; then
        log "host is Debian '$host_codename'; building '$SUITE' images from the same mirror(s)"
    fi
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    log "installing debootstrap on the host"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends debootstrap >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends debootstrap >/dev/null
    }
}

# Runs a command inside the chroot with a clean environment.
in_chroot() { # ROOT CMD...
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

# ---------------------------------------------------------------------------
# The base rootfs: debootstrap --variant=minbase, configured for small images,
# with fresh package lists, cached as a tarball.
ARCH=$(dpkg --print-architecture)
BASE_TAR="$CACHE/base-$SUITE-$ARCH-r$BASE_RECIPE.tar"
DEB_CACHE="$CACHE/debs-$SUITE-$ARCH"

build_base() {
    local t0 root
    t0=$(now)
    ensure_debootstrap
    root="$WORK/base"
    mkdir -p "$root"
    log "debootstrap $SUITE ($ARCH, minbase) from the host's mirror"
    if ! debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$root" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    printf '%s' "$CHROOT_SOURCES" >"$root/etc/apt/sources.list"
    rm -f "$root/etc/apt/sources.list.d/"*
    # No services are started while packages install.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    cat >"$root/etc/apt/apt.conf.d/90leasehold" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Acquire::Retries "3";
EOF
    cat >"$root/etc/dpkg/dpkg.cfg.d/90leasehold-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/linda/*
path-exclude=/usr/share/locale/*
EOF
    rm -rf "$root/usr/share/doc/"* "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/locale/"*
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    in_chroot "$root" apt-get update -q >/dev/null
    in_chroot "$root" apt-get clean
    : >"$root/etc/resolv.conf"
    mkdir -p "$CACHE"
    tar --numeric-owner -C "$root" -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$root"
    log "base rootfs cached: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1)) in $(elapsed "$t0")s"
}

# ---------------------------------------------------------------------------
# Per store: packages, an install hook run before/after apt, and the image's
# docker-import changes. Entrypoint scripts live beside this file.

apt_install() { # ROOT PACKAGE...
    local root=$1
    shift
    # Reuse .debs from earlier builds (hard links where possible).
    mkdir -p "$DEB_CACHE" "$root/var/cache/apt/archives/partial"
    find "$DEB_CACHE" -maxdepth 1 -name '*.deb' -exec cp -l -t "$root/var/cache/apt/archives/" {} + 2>/dev/null ||
        find "$DEB_CACHE" -maxdepth 1 -name '*.deb' -exec cp -t "$root/var/cache/apt/archives/" {} +
    if ! in_chroot "$root" apt-get install -y -q --no-install-recommends "$@" >"$WORK/apt.log" 2>&1; then
        log "apt-get install failed; refreshing package lists and retrying"
        in_chroot "$root" apt-get update -q >>"$WORK/apt.log" 2>&1
        if ! in_chroot "$root" apt-get install -y -q --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1; then
            tail -n 40 "$WORK/apt.log" >&2
            die "apt-get install $* failed"
        fi
    fi
    find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -newer "$BASE_TAR" \
        -exec cp -n -l -t "$DEB_CACHE/" {} + 2>/dev/null || true
    find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' \
        -exec cp -n -t "$DEB_CACHE/" {} + 2>/dev/null || true
    in_chroot "$root" apt-get clean
}

install_entrypoint() { # ROOT SRC [DEST]
    install -D -m 0755 "$2" "$1${3:-/usr/local/bin/docker-entrypoint.sh}"
}

# Each prepare_<store> installs into ROOT and fills CHANGES (docker import
# --change values). All images share the leasehold.standin labels.
prepare_redis() {
    local root=$1
    apt_install "$root" redis-server
    install_entrypoint "$root" "$HERE/redis/docker-entrypoint.sh"
    mkdir -p "$root/data"
    in_chroot "$root" chown redis:redis /data
    CHANGES=(
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["redis-server"]'
        'EXPOSE 6379'
        'WORKDIR /data'
    )
}

prepare_postgres() {
    local root=$1
    # No default "main" cluster: the entrypoint runs initdb into $PGDATA.
    mkdir -p "$root/etc/postgresql-common/createcluster.d"
    echo 'create_main_cluster = false' >"$root/etc/postgresql-common/createcluster.d/90-leasehold.conf"
    apt_install "$root" postgresql-15
    # Like the official image: listen on every interface by default.
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" \
        "$root/usr/share/postgresql/15/postgresql.conf.sample"
    grep -q "^listen_addresses = '\*'" "$root/usr/share/postgresql/15/postgresql.conf.sample" ||
        die "could not set listen_addresses in postgresql.conf.sample"
    install_entrypoint "$root" "$HERE/postgres/docker-entrypoint.sh"
    mkdir -p "$root/var/lib/postgresql/data" "$root/var/run/postgresql" "$root/docker-entrypoint-initdb.d"
    in_chroot "$root" chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
    chmod 0700 "$root/var/lib/postgresql/data"
    chmod 3777 "$root/var/run/postgresql"
    CHANGES=(
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["postgres"]'
        'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
        'ENV PGDATA=/var/lib/postgresql/data'
        'ENV LANG=C.UTF-8'
        'EXPOSE 5432'
    )
}

prepare_etcd() {
    local root=$1
    apt_install "$root" etcd-server etcd-client
    # The official image keeps its binaries in /usr/local/bin.
    ln -sf /usr/bin/etcd "$root/usr/local/bin/etcd"
    ln -sf /usr/bin/etcdctl "$root/usr/local/bin/etcdctl"
    install_entrypoint "$root" "$HERE/etcd/docker-entrypoint.sh"
    mkdir -p "$root/etcd-data"
    chmod 0700 "$root/etcd-data"
    CHANGES=(
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD []'
        'ENV ETCDCTL_API=3'
        'EXPOSE 2379 2380'
    )
    # etcd 3.4 refuses to start on architectures other than amd64 (and ppc64le)
    # unless told to.
    case "$ARCH" in
    amd64 | ppc64el) ;;
    *) CHANGES+=("ENV ETCD_UNSUPPORTED_ARCH=$ARCH") ;;
    esac
}

prepare_zookeeper() {
    local root=$1
    # Debian's `zookeeper` package only adds scripts and a GUI (it pulls a full
    # desktop JRE); the server is libzookeeper-java. A JRE's post-install
    # (ca-certificates-java) runs java, which needs /proc.
    mount_proc "$root"
    apt_install "$root" libzookeeper-java default-jre-headless netcat-openbsd
    unmount_all
    in_chroot "$root" useradd --system --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin zookeeper
    install_entrypoint "$root" "$HERE/zookeeper/docker-entrypoint.sh"
    install_entrypoint "$root" "$HERE/zookeeper/zkServer.sh" /usr/local/bin/zkServer.sh
    install -D -m 0644 "$HERE/zookeeper/log4j.properties" "$root/usr/local/share/zookeeper/log4j.properties"
    mkdir -p "$root/conf" "$root/data" "$root/datalog" "$root/logs"
    in_chroot "$root" chown zookeeper:zookeeper /conf /data /datalog /logs
    CHANGES=(
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["zkServer.sh", "start-foreground"]'
        'ENV ZOO_CONF_DIR=/conf ZOO_DATA_DIR=/data ZOO_DATA_LOG_DIR=/datalog ZOO_LOG_DIR=/logs'
        'ENV ZOO_TICK_TIME=2000 ZOO_INIT_LIMIT=5 ZOO_SYNC_LIMIT=2 ZOO_AUTOPURGE_PURGEINTERVAL=0 ZOO_AUTOPURGE_SNAPRETAINCOUNT=3 ZOO_MAX_CLIENT_CNXNS=60 ZOO_STANDALONE_ENABLED=true ZOO_ADMINSERVER_ENABLED=true'
        'ENV ZOOCFGDIR=/conf'
        'EXPOSE 2181 2888 3888 8080'
    )
}

prepare_dynamodb() {
    local root=$1 pipenv=()
    apt_install "$root" python3 python3-venv
    in_chroot "$root" python3 -m venv /opt/moto
    # pip talks to the package index through whatever TLS setup the host has.
    cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.crt"
    pipenv=(PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
        "PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-120}")
    [ -z "${PIP_INDEX_URL:-}" ] || pipenv+=("PIP_INDEX_URL=$PIP_INDEX_URL")
    [ -z "${PIP_EXTRA_INDEX_URL:-}" ] || pipenv+=("PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
    [ -z "${PIP_TRUSTED_HOST:-}" ] || pipenv+=("PIP_TRUSTED_HOST=$PIP_TRUSTED_HOST")
    if ! in_chroot "$root" "${pipenv[@]}" /opt/moto/bin/pip install -q \
        "moto[$MOTO_EXTRAS]==$MOTO_VERSION" flask flask-cors >"$WORK/pip.log" 2>&1; then
        tail -n 40 "$WORK/pip.log" >&2
        die "pip install moto[$MOTO_EXTRAS]==$MOTO_VERSION failed"
    fi
    in_chroot "$root" /opt/moto/bin/python -m pip uninstall -q -y pip >/dev/null 2>&1 || true
    rm -f "$root/tmp/host-ca.crt"
    install_entrypoint "$root" "$HERE/dynamodb/docker-entrypoint.sh"
    install -D -m 0755 "$HERE/dynamodb/moto_standin.py" "$root/usr/local/bin/moto_standin.py"
    mkdir -p "$root/home/dynamodblocal"
    CHANGES=(
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["-jar", "DynamoDBLocal.jar", "-inMemory"]'
        "ENV MOTO_VERSION=$MOTO_VERSION PYTHONUNBUFFERED=1"
        'WORKDIR /home/dynamodblocal'
        'EXPOSE 8000'
    )
}

prepare_mariadb() {
    local root=$1
    apt_install "$root" mariadb-server
    # Like the official image: listen on every interface, no DNS lookups of
    # clients, errors on stderr (Debian's config binds 127.0.0.1).
    cat >"$root/etc/mysql/mariadb.conf.d/99-leasehold.cnf" <<'CNF'
[mariadbd]
bind-address = 0.0.0.0
skip-name-resolve
skip-host-cache
CNF
    sed -ri 's!^(\s*log_error\s*=.*)!#\1!' "$root/etc/mysql/mariadb.conf.d/"*.cnf
    install_entrypoint "$root" "$HERE/mariadb/docker-entrypoint.sh"
    # No data directory from the package: the entrypoint initialises it.
    rm -rf "$root/var/lib/mysql" "$root/docker-entrypoint-initdb.d"
    mkdir -p "$root/var/lib/mysql" "$root/run/mysqld" "$root/docker-entrypoint-initdb.d"
    in_chroot "$root" chown -R mysql:mysql /var/lib/mysql /run/mysqld
    CHANGES=(
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["mariadbd"]'
        'ENV LANG=C.UTF-8'
        'EXPOSE 3306'
    )
}

# ---------------------------------------------------------------------------
is_built() { # TAG
    [ "$(docker image inspect -f '{{ index .Config.Labels "leasehold.standin" }}' "$1" 2>/dev/null)" = true ]
}

SCRIPT_SUM=$(cat "${BASH_SOURCE[0]}" "$HERE"/*/* | sha256sum | cut -c1-12)

build_image() { # STORE
    local store=$1 tag=${TAG[$1]} root t0 change size old_id
    local -a args
    t0=$(now)
    root="$WORK/$store"
    rm -rf "$root"
    mkdir -p "$root"
    tar --numeric-owner -C "$root" -xf "$BASE_TAR"
    # Some post-install scripts (update-alternatives for java) need these.
    mkdir -p "$root"/usr/share/man/man{1..8}
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    CHANGES=()
    "prepare_$store" "$root"
    # Trim: package lists, caches, logs, the build-time resolver.
    rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/cache/debconf/"*-old \
        "$root/var/log/"*.log "$root/var/log/apt/"* "$root/tmp/"* "$root/root/.cache"
    : >"$root/etc/resolv.conf"
    args=()
    for change in "${CHANGES[@]}" \
        "LABEL leasehold.standin=true leasehold.standin.store=$store leasehold.standin.suite=$SUITE leasehold.standin.script=$SCRIPT_SUM"; do
        args+=(--change "$change")
    done
    old_id=$(docker image inspect -f '{{ .Id }}' "$tag" 2>/dev/null || true)
    tar --numeric-owner -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
        docker import "${args[@]}" --message "leasehold stand-in for $tag" - "$tag" >/dev/null
    rm -rf "$root"
    # Drop the image this one replaces (kept if a container still uses it).
    if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{ .Id }}' "$tag")" ]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
    size=$(docker image inspect -f '{{ .Size }}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')
    log "built $tag ($size) in $(elapsed "$t0")s"
}

main() {
    local t_all store built=0 old_sum
    t_all=$(now)
    # One build at a time per cache (CI and a developer may overlap).
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    if ! flock -n 9; then
        log "another build.sh holds $CACHE/.lock; waiting"
        flock 9
    fi
    local -a todo=()
    for store in "${STORES[@]}"; do
        if [ "$FORCE" = 0 ] && is_built "${TAG[$store]}"; then
            old_sum=$(docker image inspect -f '{{ index .Config.Labels "leasehold.standin.script" }}' "${TAG[$store]}")
            if [ "$old_sum" = "$SCRIPT_SUM" ]; then
                log "${TAG[$store]}: up to date, skipped"
            else
                # The scripts changed (a fix to an entrypoint): rebuild, or tests
                # would run against the old behaviour.
                log "${TAG[$store]}: built by another version of these scripts, rebuilding"
                todo+=("$store")
            fi
        else
            todo+=("$store")
        fi
    done
    if [ ${#todo[@]} -gt 0 ]; then
        WORK=$(mktemp -d "$CACHE/work.XXXXXX")
        read_host_mirror
        if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$BASE_TAR" ]; then
            build_base
        fi
        for store in "${todo[@]}"; do
            log "building ${TAG[$store]} ..."
            build_image "$store"
            built=$((built + 1))
        done
    fi
    log "done: $built built, $((${#STORES[@]} - built)) skipped, total $(elapsed "$t_all")s"
    if [ "$SMOKE" = 1 ]; then
        cleanup
        trap - EXIT
        exec "$HERE/smoke.sh" "${STORES[@]}"
    fi
}

main

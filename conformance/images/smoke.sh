#!/usr/bin/env bash
# Smoke-check the stand-in images built by build.sh: start each one the way
# the conformance fixtures do (the official images' commands and env), wait
# for it to be healthy within a bounded time, check a few things that the
# fixtures rely on, and print PASS or FAIL per image.
#
#   conformance/images/smoke.sh [STORE...]     (default: all six)
#
# Containers carry the label leasehold.test=<pid>-smoke and sit on a private
# --internal network; all of them, and the network, are removed on exit.
# Exit status is non-zero if any image fails. LEASEHOLD_SMOKE_TIMEOUT
# (seconds, default 90) bounds each image's wait.
set -euo pipefail

TIMEOUT=${LEASEHOLD_SMOKE_TIMEOUT:-90}
ALL_STORES=(redis postgres etcd zookeeper dynamodb mariadb)
declare -A TAG=(
    [redis]=leasehold-standin/redis:7.0
    [postgres]=leasehold-standin/postgres:15
    [etcd]=leasehold-standin/etcd:v3.4
    [zookeeper]=leasehold-standin/zookeeper:3.8
    [dynamodb]=leasehold-standin/dynamodb-local:latest
    [mariadb]=leasehold-standin/mariadb:10.11
)
# Container-name prefix per store (for logs on failure).
declare -A PREFIX=([redis]=redis [postgres]=postgres [etcd]=etcd [zookeeper]=zk [dynamodb]=dynamodb [mariadb]=mariadb)

STORES=()
for arg in "$@"; do
    case "$arg" in
    pg | postgresql) STORES+=(postgres) ;;
    zk) STORES+=(zookeeper) ;;
    moto | dynamo) STORES+=(dynamodb) ;;
    mysql) STORES+=(mariadb) ;;
    redis | postgres | etcd | zookeeper | dynamodb | mariadb) STORES+=("$arg") ;;
    -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "smoke: unknown store '$arg'" >&2; exit 2 ;;
    esac
done
[ ${#STORES[@]} -gt 0 ] || STORES=("${ALL_STORES[@]}")

RUN="lh-smoke-$$-$RANDOM"
NET="$RUN-net"

cleanup() {
    local ids
    ids=$(docker ps -aq --filter "label=leasehold.smoke.run=$RUN" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null 2>&1 || true
    docker network rm "$NET" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# start NAME IMAGE [docker-run options...] -- [command...]
start() {
    local name=$1 image=$2
    shift 2
    local -a opts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        opts+=("$1")
        shift
    done
    [ $# -eq 0 ] || shift
    docker run -d --name "$RUN-$name" --hostname "$name" --network "$NET" --network-alias "$name" \
        --label "leasehold.test=$$-smoke" --label "leasehold.smoke.run=$RUN" \
        "${opts[@]}" "$image" "$@" >/dev/null
}
x() { docker exec "$RUN-$1" "${@:2}"; }   # run in container
ip_of() { docker inspect -f "{{ (index .NetworkSettings.Networks \"$NET\").IPAddress }}" "$RUN-$1"; }

# until_ok DEADLINE CMD... : retry CMD every 0.5 s until it succeeds or the
# deadline (epoch seconds) passes.
until_ok() {
    local deadline=$1
    shift
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if awk -v d="$deadline" -v n="$(now)" 'BEGIN { exit !(n > d) }'; then return 1; fi
        sleep 0.5
    done
}

# first_answer CMD... : the first non-empty output of CMD in 5 tries, 0.5 s
# apart. A store that just became ready can still drop a connection on a
# loaded machine; one-shot probes after readiness failed CI twice.
first_answer() {
    local out="" i
    for i in 1 2 3 4 5; do
        out=$("$@" 2>/dev/null) && [ -n "$out" ] && break
        sleep 0.5
    done
    printf '%s\n' "$out"
}

REASON=""
fail() { REASON=$*; return 1; }
expect_eq() { # WHAT GOT WANT
    [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}
expect_has() { # WHAT HAYSTACK NEEDLE
    case "$2" in *"$3"*) ;; *) fail "$1: '$3' not in: $(printf '%s' "$2" | head -c 300)" ;; esac
}

# ---------------------------------------------------------------- redis
start_redis() {
    start redis "${TAG[redis]}" -- redis-server --appendonly yes
    start redis-default "${TAG[redis]}"
}
redis_ping() { [ "$(x "$1" redis-cli ping)" = PONG ]; }
check_redis() {
    local dl=$1 ip v
    until_ok "$dl" redis_ping redis || fail "redis-cli ping never answered PONG" || return
    until_ok "$dl" redis_ping redis-default || fail "redis (default command): no PONG" || return
    for c in redis redis-default; do
        expect_eq "$c protected-mode" "$(first_answer x $c redis-cli --raw config get protected-mode | tail -n 1)" no || return
        expect_eq "$c bind" "$(first_answer x $c redis-cli --raw config get bind | tail -n 1)" 0.0.0.0 || return
    done
    expect_eq "appendonly" "$(first_answer x redis redis-cli --raw config get appendonly | tail -n 1)" yes || return
    expect_eq "dir" "$(first_answer x redis redis-cli --raw config get dir | tail -n 1)" /data || return
    # A client on another address (not loopback) is served: protected mode is off.
    ip=$(ip_of redis)
    expect_eq "SET over $ip" "$(first_answer x redis-default redis-cli -h "$ip" set smoke ok)" OK || return
    expect_eq "GET over $ip" "$(first_answer x redis-default redis-cli -h "$ip" get smoke)" ok || return
    x redis test -d /data/appendonlydir || fail "no /data/appendonlydir: AOF not written" || return
    v=$(first_answer x redis redis-server --version)
    expect_has "redis version" "$v" "v=7.0." || return
    v=${v#*v=}
    DETAIL="Redis ${v%% *}"
}

# ---------------------------------------------------------------- postgres
PG_PASS=smoke-Secret-1
start_postgres() {
    start postgres "${TAG[postgres]}" \
        -e POSTGRES_PASSWORD="$PG_PASS" -e POSTGRES_USER=leasehold -e POSTGRES_DB=leasehold_smoke \
        -- postgres -c max_connections=42
}
pg_ready() {
    x postgres pg_isready -q -h 127.0.0.1 -U leasehold -d leasehold_smoke &&
        docker logs "$RUN-postgres" 2>&1 >/dev/null | grep -q 'database system is ready to accept connections'
}
check_postgres() {
    local dl=$1 ip out n_out n_err
    until_ok "$dl" pg_ready || fail "pg_isready / ready line on stderr never seen" || return
    ip=$(ip_of postgres)
    # Over the container's network address, so pg_hba's password rule applies.
    out=$(first_answer x postgres env PGPASSWORD="$PG_PASS" psql -h "$ip" -U leasehold -d leasehold_smoke -tAc 'select 1')
    expect_eq "select 1" "$out" 1 || return
    out=$(first_answer x postgres env PGPASSWORD="$PG_PASS" psql -h "$ip" -U leasehold -d leasehold_smoke -tAc 'show max_connections')
    expect_eq "postgres -c max_connections" "$out" 42 || return
    if x postgres env PGPASSWORD=wrong psql -h "$ip" -U leasehold -d leasehold_smoke -tAc 'select 1' >/dev/null 2>&1; then
        fail "a wrong password was accepted"
        return
    fi
    out=$(first_answer x postgres env PGPASSWORD="$PG_PASS" psql -h "$ip" -U leasehold -d leasehold_smoke -tAc 'show server_version')
    expect_has "server_version" "$out" "15." || return
    # Same as the official image on a first start: the temporary init server's
    # line on stdout, the final server's on stderr.
    n_out=$(docker logs "$RUN-postgres" 2>/dev/null | grep -c 'database system is ready to accept connections' || true)
    n_err=$(docker logs "$RUN-postgres" 2>&1 >/dev/null | grep -c 'database system is ready to accept connections' || true)
    expect_eq "ready lines on stdout" "$n_out" 1 || return
    expect_eq "ready lines on stderr" "$n_err" 1 || return
    DETAIL="PostgreSQL ${out%% *}"
}

# ---------------------------------------------------------------- etcd
start_etcd() {
    start etcd "${TAG[etcd]}"
    local n
    for n in 1 2 3; do
        start "etcd$n" "${TAG[etcd]}" -- /usr/local/bin/etcd --name "etcd$n" --data-dir /etcd-data \
            --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://etcd$n:2379" \
            --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://etcd$n:2380" \
            --initial-cluster etcd1=http://etcd1:2380,etcd2=http://etcd2:2380,etcd3=http://etcd3:2380 \
            --initial-cluster-state new --initial-cluster-token "$RUN"
    done
}
etcd_healthy() { x "$1" etcdctl --endpoints=http://127.0.0.1:2379 endpoint health; }
check_etcd() {
    local dl=$1 ip out v
    until_ok "$dl" etcd_healthy etcd || fail "etcdctl endpoint health (default command) never healthy" || return
    ip=$(ip_of etcd)
    [ "$(first_answer x etcd etcdctl --endpoints="http://$ip:2379" put smoke ok)" = OK ] || fail "put over $ip failed" || return
    out=$(first_answer x etcd etcdctl --endpoints="http://$ip:2379" get --print-value-only smoke)
    expect_eq "get" "$out" ok || return
    for n in 1 2 3; do
        until_ok "$dl" etcd_healthy "etcd$n" || fail "3-node cluster: etcd$n never healthy" || return
    done
    [ "$(first_answer x etcd1 etcdctl --endpoints=http://etcd1:2379 put smoke cluster)" = OK ] || fail "cluster put failed" || return
    out=$(first_answer x etcd3 etcdctl --endpoints=http://etcd3:2379 get --print-value-only smoke)
    expect_eq "cluster get on etcd3" "$out" cluster || return
    out=$(first_answer x etcd1 etcdctl --endpoints=http://etcd1:2379 member list | wc -l)
    expect_eq "cluster members" "$out" 3 || return
    v=$(first_answer x etcd etcd --version | sed -n 's/^etcd Version: //p')
    expect_has "etcd version" "$v" "3.4." || return
    DETAIL="etcd $v (1 node + 3-node cluster)"
}

# ---------------------------------------------------------------- zookeeper
start_zookeeper() {
    start zk "${TAG[zookeeper]}" -e ZOO_MIN_SESSION_TIMEOUT=4000 -e ZOO_MAX_SESSION_TIMEOUT=60000
    local n servers="server.1=zk1:2888:3888;2181 server.2=zk2:2888:3888;2181 server.3=zk3:2888:3888;2181"
    for n in 1 2 3; do
        start "zk$n" "${TAG[zookeeper]}" -e ZOO_MY_ID=$n -e ZOO_SERVERS="$servers" -e ZK_SERVER_HEAP=256
    done
}
zk_4lw() { x "$1" sh -c "echo $2 | nc -w 2 127.0.0.1 2181"; }
zk_ok() { [ "$(zk_4lw "$1" ruok)" = imok ]; }
zk_serving() { zk_4lw "$1" srvr | grep -q '^Mode: '; }
zk_ensemble_modes() {
    local n
    for n in 1 2 3; do printf '%s ' "$(zk_4lw "zk$n" srvr 2>/dev/null | sed -n 's/^Mode: //p')"; done
}
zk_ensemble_formed() {
    local modes
    modes=$(zk_ensemble_modes)
    [ "$(grep -o leader <<<"$modes" | wc -l)" = 1 ] && [ "$(grep -o follower <<<"$modes" | wc -l)" = 2 ]
}
check_zookeeper() {
    local dl=$1 out ip
    until_ok "$dl" zk_ok zk || fail "echo ruok | nc never answered imok" || return
    until_ok "$dl" zk_serving zk || fail "srvr never showed a Mode" || return
    out=$(first_answer zk_4lw zk srvr)
    expect_has "srvr" "$out" "Mode: standalone" || return
    expect_has "version" "$out" "Zookeeper version: 3.8." || return
    DETAIL="ZooKeeper $(printf '%s\n' "$out" | sed -n 's/^Zookeeper version: \([^-,]*\).*/\1/p')"
    out=$(first_answer zk_4lw zk conf)
    expect_has "conf" "$out" "maxSessionTimeout=60000" || return
    expect_has "conf" "$out" "minSessionTimeout=4000" || return
    expect_has "conf" "$out" "tickTime=2000" || return
    ip=$(ip_of zk)
    out=$(first_answer x zk1 sh -c "echo ruok | nc -w 2 $ip 2181")
    expect_eq "ruok over $ip" "$out" imok || return
    # A node can answer srvr between elections without a Mode line, so the
    # whole ensemble is polled until one snapshot shows a leader and two
    # followers (a one-shot read per node failed CI once).
    until_ok "$dl" zk_ensemble_formed || fail "ensemble never formed; last modes: $(zk_ensemble_modes)" || return
    DETAIL+=" (standalone + 3-node ensemble)"
}

# ---------------------------------------------------------------- dynamodb
start_dynamodb() {
    # What the official image's fixtures pass; the stand-in ignores all but -port.
    start dynamodb "${TAG[dynamodb]}" -- -jar DynamoDBLocal.jar -inMemory -sharedDb
}
# A real DynamoDB JSON call, from inside the container, with the image's python.
DDB_PY='
import json, sys, urllib.request
def call(op, body):
    req = urllib.request.Request("http://127.0.0.1:8000/", data=json.dumps(body).encode(), headers={
        "X-Amz-Target": "DynamoDB_20120810." + op,
        "Content-Type": "application/x-amz-json-1.0",
        "Authorization": "AWS4-HMAC-SHA256 Credential=smoke/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
    })
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)
if sys.argv[1] == "list":
    print(json.dumps(call("ListTables", {})))
else:
    call("CreateTable", {"TableName": "smoke", "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": "k", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "k", "AttributeType": "S"}]})
    call("PutItem", {"TableName": "smoke", "Item": {"k": {"S": "a"}, "v": {"N": "1"}},
        "ConditionExpression": "attribute_not_exists(k)"})
    print(json.dumps(call("GetItem", {"TableName": "smoke", "Key": {"k": {"S": "a"}}, "ConsistentRead": True})))
'
ddb() { x dynamodb /opt/moto/bin/python -c "$DDB_PY" "$1"; }
ddb_list() { ddb list | grep -q TableNames; }
check_dynamodb() {
    local dl=$1 out logs
    until_ok "$dl" ddb_list || fail "ListTables on :8000 never answered" || return
    out=$(ddb put) || fail "CreateTable/PutItem/GetItem failed: $out" || return
    expect_has "GetItem" "$out" '"N": "1"' || return
    out=$(ddb list)
    expect_has "ListTables" "$out" '"smoke"' || return
    logs=$(docker logs "$RUN-dynamodb" 2>&1)
    expect_has "log" "$logs" "Initializing DynamoDB Local with the following configuration" || return
    expect_has "log" "$logs" "DynamoDB API ready on http://0.0.0.0:8000" || return
    DETAIL=$(printf '%s\n' "$logs" | sed -n 's/^leasehold stand-in: \(moto [^ ]*\).*/\1/p')
}

# ---------------------------------------------------------------- mariadb
MARIADB_PASS="smoke-Secret-1'\\"
start_mariadb() {
    start mariadb "${TAG[mariadb]}" \
        -e MARIADB_ROOT_PASSWORD="$MARIADB_PASS" -e MARIADB_DATABASE=leasehold_smoke \
        -e MARIADB_USER=leasehold -e MARIADB_PASSWORD="$MARIADB_PASS" \
        -- mariadbd --max-connections=42
}
mariadb_ready() {
    docker logs "$RUN-mariadb" 2>&1 >/dev/null | grep -q 'port: 3306'
}
mariadb_q() { # USER PASSWORD SQL
    x mariadb mariadb -h "$(ip_of mariadb)" -u"$1" -p"$2" -N -B leasehold_smoke -e "$3"
}
check_mariadb() {
    local dl=$1 out
    until_ok "$dl" mariadb_ready || fail "the final server's ready line (port: 3306) never seen on stderr" || return
    # Over the container's network address: the '%' accounts, as a client sees them.
    out=$(first_answer mariadb_q leasehold "$MARIADB_PASS" 'select 1')
    expect_eq "select 1 as the app user" "$out" 1 || return
    out=$(first_answer mariadb_q root "$MARIADB_PASS" 'select @@max_connections')
    expect_eq "mariadbd --max-connections" "$out" 42 || return
    out=$(first_answer mariadb_q root "$MARIADB_PASS" "select get_lock('smoke', 0), release_lock('smoke')")
    expect_eq "get_lock / release_lock" "$out" "$(printf '1\t1')" || return
    if mariadb_q root wrong 'select 1' >/dev/null 2>&1; then
        fail "a wrong password was accepted"
        return
    fi
    out=$(first_answer mariadb_q root "$MARIADB_PASS" 'select version()')
    expect_has "version" "$out" "10.11." || return
    DETAIL="MariaDB ${out%%-*}"
}

# ---------------------------------------------------------------- main
for s in "${STORES[@]}"; do
    docker image inspect "${TAG[$s]}" >/dev/null 2>&1 ||
        { echo "smoke: image ${TAG[$s]} is missing: run conformance/images/build.sh $s" >&2; exit 1; }
done

docker network create --internal --label "leasehold.test=$$-smoke" "$NET" >/dev/null

# One store at a time, so each time is that image's own start-to-healthy time.
failed=0
for s in "${STORES[@]}"; do
    t0=$(now)
    deadline=$(awk -v a="$t0" -v t="$TIMEOUT" 'BEGIN { printf "%.3f", a + t }')
    REASON="" DETAIL=""
    if "start_$s" && "check_$s" "$deadline"; then
        printf 'PASS  %-30s %-47s %5ss\n' "${TAG[$s]}" "$DETAIL" "$(since "$t0")"
    else
        failed=$((failed + 1))
        printf 'FAIL  %-30s %s (after %ss)\n' "${TAG[$s]}" "${REASON:-check failed}" "$(since "$t0")"
        for c in $(docker ps -a --filter "label=leasehold.smoke.run=$RUN" --format '{{.Names}}'); do
            case "$c" in
            "$RUN-${PREFIX[$s]}"*)
                echo "---- last log lines of $c:"
                docker logs --tail 15 "$c" 2>&1 | sed 's/^/    /'
                ;;
            esac
        done
    fi
    # Free the machine for the next store.
    ids=$(docker ps -aq --filter "label=leasehold.smoke.run=$RUN")
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null 2>&1 || true
done

echo "smoke: $((${#STORES[@]} - failed)) passed, $failed failed"
[ "$failed" = 0 ]

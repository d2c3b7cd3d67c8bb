#!/bin/bash
# A small zkServer.sh for the leasehold ZooKeeper stand-in: runs Debian's
# ZooKeeper 3.8 server (libzookeeper-java) the way upstream's script does.
#   zkServer.sh [--config DIR] start-foreground [CFG]   (the image's command)
#   zkServer.sh [--config DIR] status|print-cmd|version [CFG]
# Env: ZOOCFGDIR / ZOO_CONF_DIR (default /conf), ZOO_LOG_DIR, JVMFLAGS,
#      SERVER_JVMFLAGS, ZK_SERVER_HEAP (MB, default 1000 as upstream).
set -euo pipefail

if [ "${1:-}" = --config ]; then
    ZOOCFGDIR=$2
    shift 2
fi
ZOOCFGDIR=${ZOOCFGDIR:-${ZOO_CONF_DIR:-/conf}}
cmd=${1:-}
ZOOCFG=${2:-$ZOOCFGDIR/zoo.cfg}
case "$ZOOCFG" in */*) ;; *) ZOOCFG=$ZOOCFGDIR/$ZOOCFG ;; esac
ZOO_LOG_DIR=${ZOO_LOG_DIR:-/logs}

# zookeeper.jar's manifest lists most of its dependencies; add the servlet API
# (for the AdminServer), a logging backend, and the Netty parts the manifest
# leaves out (codec, resolver, the epoll transport's unix-common): without
# them NettyServerCnxnFactory binds but fails every connection, which the
# TLS client port (`secureClientPort`, Netty only) needs.
CLASSPATH="$ZOOCFGDIR:/usr/share/java/zookeeper.jar:/usr/share/java/servlet-api.jar"
CLASSPATH+=":/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
CLASSPATH+=":/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar"
CLASSPATH+=":/usr/share/java/netty-transport-native-unix-common.jar"

client_port() {
    local p
    p=$(sed -n 's/^[[:space:]]*clientPort[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$ZOOCFG" | tail -n 1)
    if [ -z "$p" ]; then # from "server.N=host:2888:3888;[addr:]2181"
        local myid
        myid=$(cat "$(sed -n 's/^[[:space:]]*dataDir[[:space:]]*=[[:space:]]*//p' "$ZOOCFG" | tail -n 1)/myid" 2>/dev/null || echo 1)
        p=$(sed -n "s/^[[:space:]]*server\\.${myid}[[:space:]]*=.*;\\(.*:\\)\\{0,1\\}\\([0-9]*\\)[[:space:]]*\$/\\2/p" "$ZOOCFG" | tail -n 1)
    fi
    echo "${p:-2181}"
}

# shellcheck disable=SC2206,SC2054 # JVMFLAGS are words, as in upstream's script
java_cmd=(java -Dzookeeper.log.dir="$ZOO_LOG_DIR" -Dzookeeper.root.logger=INFO,CONSOLE
    -Dlog4j.configuration=file:/usr/local/share/zookeeper/log4j.properties
    -XX:+HeapDumpOnOutOfMemoryError "-XX:OnOutOfMemoryError=kill -9 %p"
    "-Xmx${ZK_SERVER_HEAP:-1000}m" -cp "$CLASSPATH" ${SERVER_JVMFLAGS:-} ${JVMFLAGS:-}
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZOOCFG")

case "$cmd" in
start-foreground)
    echo "ZooKeeper JMX enabled by default" >&2
    echo "Using config: $ZOOCFG" >&2
    exec "${java_cmd[@]}"
    ;;
print-cmd)
    printf '%q ' "${java_cmd[@]}"
    echo
    ;;
status)
    port=$(client_port)
    out=$(echo srvr | nc -w 2 127.0.0.1 "$port" 2>/dev/null || true)
    echo "Client port found: $port. Client address: localhost."
    mode=$(printf '%s\n' "$out" | sed -n 's/^Mode: //p')
    if [ -n "$mode" ]; then
        echo "Mode: $mode"
    else
        echo "Error contacting service. It is probably not running." >&2
        exit 1
    fi
    ;;
version)
    exec java -cp "$CLASSPATH" org.apache.zookeeper.version.VersionInfoMain
    ;;
*)
    echo "Usage: $0 [--config <conf-dir>] {start-foreground|status|print-cmd|version} [cfg]" >&2
    exit 1
    ;;
esac

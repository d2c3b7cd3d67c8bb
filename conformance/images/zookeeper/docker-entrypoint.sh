#!/bin/bash
# leasehold stand-in for the official zookeeper image's entrypoint (Debian's
# libzookeeper-java 3.8 on a headless JRE). Same conventions:
#   ZOO_MY_ID (default 1)        -> $ZOO_DATA_DIR/myid (written once)
#   ZOO_SERVERS                  e.g. "server.1=zk1:2888:3888;2181 server.2=zk2:2888:3888;2181"
#                                (default "server.1=localhost:2888:3888;2181")
#   ZOO_TICK_TIME (2000), ZOO_INIT_LIMIT (5), ZOO_SYNC_LIMIT (2),
#   ZOO_MAX_CLIENT_CNXNS (60), ZOO_STANDALONE_ENABLED (true),
#   ZOO_ADMINSERVER_ENABLED (true), ZOO_AUTOPURGE_PURGEINTERVAL (0),
#   ZOO_AUTOPURGE_SNAPRETAINCOUNT (3), ZOO_CFG_EXTRA ("key=value key=value")
#   ZOO_4LW_COMMANDS_WHITELIST   default here: srvr,ruok,mntr,stat,conf,isro
#   ZOO_MIN_SESSION_TIMEOUT / ZOO_MAX_SESSION_TIMEOUT (ms, optional; this
#                                stand-in's addition, ZOO_CFG_EXTRA also works)
# $ZOO_CONF_DIR/zoo.cfg is generated only if it does not exist (mount your
# own to override). The default command is `zkServer.sh start-foreground`.
set -euo pipefail

: "${ZOO_CONF_DIR:=/conf}" "${ZOO_DATA_DIR:=/data}" "${ZOO_DATA_LOG_DIR:=/datalog}" "${ZOO_LOG_DIR:=/logs}"

if [ ! -f "$ZOO_CONF_DIR/zoo.cfg" ]; then
    mkdir -p "$ZOO_CONF_DIR"
    {
        echo "dataDir=$ZOO_DATA_DIR"
        echo "dataLogDir=$ZOO_DATA_LOG_DIR"
        echo "tickTime=${ZOO_TICK_TIME:-2000}"
        echo "initLimit=${ZOO_INIT_LIMIT:-5}"
        echo "syncLimit=${ZOO_SYNC_LIMIT:-2}"
        echo "autopurge.snapRetainCount=${ZOO_AUTOPURGE_SNAPRETAINCOUNT:-3}"
        echo "autopurge.purgeInterval=${ZOO_AUTOPURGE_PURGEINTERVAL:-0}"
        echo "maxClientCnxns=${ZOO_MAX_CLIENT_CNXNS:-60}"
        echo "standaloneEnabled=${ZOO_STANDALONE_ENABLED:-true}"
        echo "admin.enableServer=${ZOO_ADMINSERVER_ENABLED:-true}"
        [ -z "${ZOO_MIN_SESSION_TIMEOUT:-}" ] || echo "minSessionTimeout=$ZOO_MIN_SESSION_TIMEOUT"
        [ -z "${ZOO_MAX_SESSION_TIMEOUT:-}" ] || echo "maxSessionTimeout=$ZOO_MAX_SESSION_TIMEOUT"
        for server in ${ZOO_SERVERS:-server.1=localhost:2888:3888;2181}; do
            echo "$server"
        done
        echo "4lw.commands.whitelist=${ZOO_4LW_COMMANDS_WHITELIST:-srvr,ruok,mntr,stat,conf,isro}"
        for entry in ${ZOO_CFG_EXTRA:-}; do
            echo "$entry"
        done
    } >"$ZOO_CONF_DIR/zoo.cfg"
fi

if [ ! -f "$ZOO_DATA_DIR/myid" ]; then
    mkdir -p "$ZOO_DATA_DIR"
    echo "${ZOO_MY_ID:-1}" >"$ZOO_DATA_DIR/myid"
fi

# Like the official image: as root, own the dirs and drop to `zookeeper`.
if [ "$1" = zkServer.sh ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$ZOO_DATA_LOG_DIR" "$ZOO_LOG_DIR"
    chown -R zookeeper:zookeeper "$ZOO_DATA_DIR" "$ZOO_DATA_LOG_DIR" "$ZOO_LOG_DIR" 2>/dev/null || :
    chown zookeeper:zookeeper "$ZOO_CONF_DIR" "$ZOO_CONF_DIR/zoo.cfg" 2>/dev/null || : # may be a read-only mount
    exec setpriv --reuid=zookeeper --regid=zookeeper --init-groups "$0" "$@"
fi

exec "$@"

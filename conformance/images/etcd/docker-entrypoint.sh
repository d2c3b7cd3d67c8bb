#!/bin/sh
# leasehold stand-in for quay.io/coreos/etcd (Debian's etcd-server 3.4).
# The official image is run with an explicit command, e.g.
#   etcd --name n1 --listen-client-urls http://0.0.0.0:2379 \
#        --advertise-client-urls http://0.0.0.0:2379 ...
# and that runs as is (`etcd` and /usr/local/bin/etcd are Debian's binary).
# Arguments that start with "-" get `etcd` prepended. With no command at all,
# a single node serves clients on 0.0.0.0:2379 and peers on 0.0.0.0:2380,
# with its data in /etcd-data.
set -e

if [ $# -eq 0 ]; then
    set -- etcd \
        --name default \
        --data-dir /etcd-data \
        --listen-client-urls http://0.0.0.0:2379 \
        --advertise-client-urls http://0.0.0.0:2379 \
        --listen-peer-urls http://0.0.0.0:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380
fi
case "$1" in
-*) set -- etcd "$@" ;;
esac
exec "$@"

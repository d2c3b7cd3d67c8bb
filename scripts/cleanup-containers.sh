#!/usr/bin/env bash
# Removes every container a test run left behind (label leasehold.test).
set -uo pipefail
command -v docker >/dev/null 2>&1 || exit 0
ids=$(docker ps -aq --filter label=leasehold.test 2>/dev/null)
if [ -n "$ids" ]; then
  echo "cleanup: removing $(echo "$ids" | wc -l) leftover test containers"
  docker rm -f $ids >/dev/null
fi
nets=$(docker network ls -q --filter label=leasehold.test 2>/dev/null)
[ -z "$nets" ] || docker network rm $nets >/dev/null 2>&1 || true
exit 0

#!/usr/bin/env bash
# Removes the containers and networks that test runs left behind: those
# labelled `leasehold.test=<pid>-<suffix>` whose process <pid> is gone. A run
# that is still going (another test run, a benchmark) keeps its stores.
# With --all, removes every labelled one, live or not.
set -uo pipefail
command -v docker >/dev/null 2>&1 || exit 0
all=false
[ "${1:-}" = --all ] && all=true

# Prints the ids whose label names no live process.
orphans() {
  local id run pid
  while read -r id run; do
    pid=${run%%-*}
    if ! $all && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    echo "$id"
  done
}

ids=$(docker ps -a --filter label=leasehold.test --format '{{.ID}} {{.Label "leasehold.test"}}' 2>/dev/null | orphans)
if [ -n "$ids" ]; then
  echo "cleanup: removing $(echo "$ids" | wc -l) leftover test containers"
  # shellcheck disable=SC2086
  docker rm -f -v $ids >/dev/null
fi
nets=$(docker network ls --filter label=leasehold.test --format '{{.ID}} {{.Label "leasehold.test"}}' 2>/dev/null | orphans)
# shellcheck disable=SC2086
[ -z "$nets" ] || docker network rm $nets >/dev/null 2>&1 || true
exit 0

#!/usr/bin/env bash
# Measures `leasehold list` over 100,000 held Redis locks: time, peak memory
# of the CLI, and the server's worst latency meanwhile (redis-cli --latency).
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/leasehold}  # build it: cargo build -p leasehold-cli
name=lh-list100k-$$
docker run -d --rm --name $name -p 127.0.0.1::6379 leasehold-standin/redis:7.0 >/dev/null
trap 'docker rm -f $name >/dev/null 2>&1' EXIT
port=$(docker port $name 6379/tcp | head -1 | sed 's/.*://')
for i in $(seq 50); do docker exec $name redis-cli ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
# 100,000 locks in leasehold's layout: {namespace:key}:lock = "<owner> <ms> <holder>", 10 min TTL.
docker exec $name redis-cli EVAL "
for i = 1, 100000 do
  local owner = string.format('%032x', i)
  redis.call('SET', '{leasehold:order:' .. i .. '}:lock', owner .. ' 1764460800000 bench-host pid 1', 'PX', 600000)
  redis.call('SET', '{leasehold:order:' .. i .. '}:fence', 1)
end
return redis.call('DBSIZE')" 0
url="redis://127.0.0.1:$port"
# Worst server latency while listing, sampled by a second client.
docker exec $name sh -c 'timeout 60 redis-cli --latency -i 1 > /tmp/lat.txt 2>&1 &' || true
/usr/bin/time -f "count: %e s wall, %M KB max RSS" "$BIN" --url "$url" list --count
/usr/bin/time -f "table to /dev/null: %e s wall, %M KB max RSS" "$BIN" --url "$url" list > /dev/null
/usr/bin/time -f "json to /dev/null: %e s wall, %M KB max RSS" "$BIN" --url "$url" list --json > /dev/null
/usr/bin/time -f "by-pattern: %e s wall, %M KB max RSS" "$BIN" --url "$url" list --by-pattern
docker exec $name sh -c "tail -c 200 /tmp/lat.txt" || true

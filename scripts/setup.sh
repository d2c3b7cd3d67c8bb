#!/usr/bin/env bash
# Installs what the build and the tests need and is not there yet: Debian
# packages (protoc for etcd-client, debootstrap for the stand-in images,
# prometheus for promtool and the server ops/check.sh runs) and
# the stand-in store images (built locally, no registry needed). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# etcd-client's protos import google/protobuf/descriptor.proto, which protoc
# finds in /usr/include only with libprotobuf-dev (a Recommends, skipped below).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  # No package may start its service (prometheus would listen on
  # 0.0.0.0:9090): the tests start their own servers, on loopback.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy"
    own_policy=1
  fi
  installed=0
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" || installed=$?
  [ "$own_policy" -eq 0 ] || "${sudo_cmd[@]}" rm -f "$policy"
  [ "$installed" -eq 0 ] || exit "$installed"
fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  # Builds only the images that are missing.
  bash conformance/images/build.sh
else
  echo "setup: no Docker engine answers: container suites will need LEASEHOLD_TEST_<STORE>_URL"
fi

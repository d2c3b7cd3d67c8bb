#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what is
# missing, builds the stand-in store images if absent, runs all tests (unit,
# conformance suites in containers, doctests), and removes any container a
# run left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
trap 'bash scripts/cleanup-containers.sh' EXIT
bash scripts/cleanup-containers.sh
if docker info >/dev/null 2>&1; then
  # Each stand-in image starts and passes its store's health check.
  bash conformance/images/smoke.sh
fi

cargo test --workspace --all-features "$@"
bash ops/check.sh # alert rules (promtool) and dashboard queries against a real Prometheus

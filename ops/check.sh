#!/usr/bin/env bash
# Checks the shipped alert rules and dashboard: promtool checks and unit tests
# of the rules, then a real Prometheus (Debian's package, on 127.0.0.1) scrapes
# the example exporter every second during a short load run, with the rules
# loaded, and every PromQL expression of the dashboard and the rules is
# evaluated through the HTTP API (ops/check_queries.py): each must parse and
# return series. About 40 s once the example is built.
#
# --update-preview also redraws ops/grafana/leasehold-preview.png from the
# run's data (installs matplotlib from PyPI if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

preview=""
if [ "${1:-}" = "--update-preview" ]; then
  python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib
  preview=ops/grafana/leasehold-preview.png
fi
for tool in promtool prometheus; do
  command -v "$tool" >/dev/null || { echo "ops/check: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done

promtool check rules ops/prometheus/leasehold-alerts.yml
(cd ops/prometheus && promtool test rules leasehold-alerts.test.yml)

# All features: the test run built them already, so nothing recompiles.
cargo build -q -p leasehold-examples --all-features --example metrics_exporter
exporter_bin="${CARGO_TARGET_DIR:-target}/debug/examples/metrics_exporter"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
exporter_port=$(free_port)
prometheus_port=$(free_port)

"$exporter_bin" 45 "127.0.0.1:$exporter_port" >"$tmp/exporter.log" 2>&1 &
pids+=($!)
cp ops/prometheus/leasehold-alerts.yml "$tmp/"
cat >"$tmp/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - leasehold-alerts.yml
scrape_configs:
  - job_name: leasehold-example
    static_configs:
      - targets: ['127.0.0.1:$exporter_port']
YAML
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)

base="http://127.0.0.1:$prometheus_port"
up=""
for _ in $(seq 1 30); do
  sleep 1
  if python3 - "$base" <<'PY' 2>/dev/null; then up=yes; break; fi
import json, sys, urllib.request
answer = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v1/query?query=up", timeout=2))
sys.exit(0 if any(r["value"][1] == "1" for r in answer["data"]["result"]) else 1)
PY
done
if [ -z "$up" ]; then
  echo "ops/check: Prometheus never scraped the exporter" >&2
  tail -20 "$tmp/prometheus.log" "$tmp/exporter.log" >&2
  exit 1
fi
# Enough load for rates, quantiles, a few evictions and lost leases.
sleep 25
python3 ops/check_queries.py "$base" ops/grafana/leasehold.json $preview

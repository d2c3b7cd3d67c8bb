#!/usr/bin/env python3
"""Evaluates every PromQL expression of the dashboard (ops/grafana/leasehold.json)
and of the alert rules (as loaded by the server, from /api/v1/rules) against a
running Prometheus, and fails unless each parses and returns at least one
series. An alert expression `A > B` is evaluated whole (it may rightly be
empty: the alert is quiet) and each side that is not a number must return
series. Rules must also be healthy as the server evaluates them.

Usage: check_queries.py PROMETHEUS_URL DASHBOARD_JSON [PNG_PATH]
With PNG_PATH (and matplotlib importable) it plots a few of the queries.
"""

import json
import re
import sys
import time
import urllib.parse
import urllib.request

# Expressions over metrics that the example load cannot produce, with why.
EXCEPTIONS = {
    "leasehold_circuit_open": "the example load never opens a circuit breaker (it needs a store that fails)",
    "leasehold_order_inversions_total": "the example load takes key classes in one order (an inversion is a bug the alert is for; promtool's unit tests cover it firing)",
}

# Dashboard variables, as Grafana would fill them for "All" over a short run.
VARIABLES = {
    "$__rate_interval": "15s",
    "$__range": "1m",
    "$backend": ".*",
    "$locker": ".*",
}


def api(base, path, **params):
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        return json.load(error)


def query(base, expr):
    answer = api(base, "query", query=expr)
    if answer.get("status") != "success":
        return None, answer.get("error", "no answer")
    return answer["data"]["result"], None


def top_level_comparison(expr):
    """Splits `A op B` at its top-level comparison, or returns None."""
    depth, quote, i = 0, None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for op in (">=", "<=", "==", "!=", ">", "<"):
                if expr.startswith(op, i):
                    return expr[:i].strip(), op, expr[i + len(op):].strip()
        i += 1
    return None


def is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def dashboard_queries(path):
    with open(path) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
            yield f"dashboard: {panel['title']}", expr


def main():
    base, dashboard = sys.argv[1], sys.argv[2]
    png = sys.argv[3] if len(sys.argv) > 3 else None
    failures, passed, excepted = [], 0, []

    def check(what, expr, need_series=True):
        nonlocal passed
        result, error = query(base, expr)
        exception = next((why for m, why in EXCEPTIONS.items() if m in expr), None)
        if error:
            failures.append(f"{what}: does not evaluate: {error}\n    {expr}")
        elif need_series and not result:
            if exception:
                excepted.append(f"{what}: no series, as expected: {exception}")
            else:
                failures.append(f"{what}: returned no series\n    {expr}")
        else:
            passed += 1
        return result

    for what, expr in dashboard_queries(dashboard):
        check(what, expr)

    rules = api(base, "rules")["data"]["groups"]
    for group in rules:
        for rule in group["rules"]:
            what = f"rule {rule['name']}"
            if rule.get("health") != "ok":
                failures.append(f"{what}: unhealthy on the server: {rule.get('lastError')}")
            expr = rule["query"]
            fired = check(what, expr, need_series=False)
            parts = top_level_comparison(expr)
            sides = [parts[0], parts[2]] if parts else [expr]
            for side in sides:
                if not is_number(side):
                    check(f"{what} (side)", side)
            state = "firing/pending" if fired else "quiet"
            print(f"  {rule['name']}: {state} on the load")

    for line in excepted:
        print(f"  exception: {line}")
    for line in failures:
        print(f"  FAILED {line}")
    # The closing line in the plain "N passed, N failed, N skipped" form;
    # skipped are the listed exceptions.
    print(f"queries: {passed} passed, {len(failures)} failed, {len(excepted)} skipped")

    if png:
        plot(base, png)
    return 1 if failures else 0


def plot(base, png):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: the preview PNG is not drawn")
        return
    end = time.time()
    start = end - 28
    panels = [
        ("Acquisitions/s by outcome", 'sum by (locker, outcome) (rate(leasehold_acquire_total[5s]))', "{locker} {outcome}"),
        ("Acquisition p99 by outcome (s)", 'histogram_quantile(0.99, sum by (outcome, le) (rate(leasehold_acquire_seconds_bucket[5s])))', "{outcome}"),
        ("Held locks and waiters", 'sum by (__name__, locker) ({__name__=~"leasehold_held|leasehold_waiters"})', "{__name__} {locker}"),
        ("Renewal margin p50 and latency p99 (s)", 'label_replace(histogram_quantile(0.5, sum by (le) (rate(leasehold_renewal_margin_seconds_bucket[5s]))), "q", "margin p50", "", "") or label_replace(histogram_quantile(0.99, sum by (le) (rate(leasehold_extend_seconds_bucket[5s]))), "q", "latency p99", "", "")', "{q}"),
        ("Hold time p50, p99 (s)", 'label_replace(histogram_quantile(0.5, sum by (le) (rate(leasehold_hold_seconds_bucket[10s]))), "q", "p50", "", "") or label_replace(histogram_quantile(0.99, sum by (le) (rate(leasehold_hold_seconds_bucket[10s]))), "q", "p99", "", "")', "{q}"),
        ("Lost leases and force releases (total)", 'sum by (__name__) ({__name__=~"leasehold_lost_total|leasehold_force_release_total"})', "{__name__}"),
    ]
    fig, axes = plt.subplots(3, 2, figsize=(12, 10))
    for ax, (title, expr, legend) in zip(axes.flat, panels):
        answer = api(base, "query_range", query=expr, start=start, end=end, step="1s")
        for series in answer.get("data", {}).get("result", []):
            labels = series["metric"]
            t = [float(v[0]) - start for v in series["values"]]
            y = [float(v[1]) for v in series["values"]]
            style = "--" if "force_release" in labels.get("__name__", "") else "-"
            ax.plot(t, y, style, label=re.sub(r"\{(\w+)\}", lambda m: labels.get(m.group(1), ""), legend))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("leasehold dashboard data: example exporter load scraped by Prometheus (ops/check.sh)")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    print(f"preview written to {png}")


if __name__ == "__main__":
    sys.exit(main())

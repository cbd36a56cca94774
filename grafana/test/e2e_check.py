#!/usr/bin/env python3
"""Helpers of grafana/test/e2e.sh (Python standard library only).

Subcommands:
  free-ports N                      print N free 127.0.0.1 TCP ports
  wait-http URL [SECS]              wait until URL answers 200
  fetch URL FILE                    save URL's body to FILE
  prom-config SRC DST TARGET RULES SCRAPE
                                    rewrite grafana/prometheus.yml for the run
  families FILE [--end]             analyse a /metrics scrape (families, histograms)
  wait-scraped PROM METRICS_FILE    wait until Prometheus holds the scrape's call totals
  evaluate ...                      evaluate every dashboard and rule expression (see --help)
"""

import argparse
import glob
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# The families the relay documents (src/obs/metrics.rs); every one should be on /metrics.
EXPECTED = {
    "gauge": ["relay_calls_active", "relay_calls_max", "relay_draining",
              "relay_http_connections_pending", "relay_build_info"],
    "counter": [
        "relay_calls_total", "relay_calls_started_total", "relay_frames_total",
        "relay_audio_bytes_total", "relay_frames_dropped_total", "relay_errors_total",
        "relay_unknown_events_total", "relay_inbound_frames_missing_total",
        "relay_agent_connects_total", "relay_upgrades_total", "relay_marks_total",
        "relay_playout_audio_bytes_total", "relay_barge_ins_total", "relay_dtmf_total",
        "relay_tool_calls_total", "relay_streams_unauthenticated_total",
        "relay_duplicate_streams_total", "relay_stream_tokens_total",
        "relay_outbound_calls_total", "relay_call_status_callbacks_total",
        "relay_stream_status_callbacks_total", "relay_http_connections_rejected_total",
        "relay_drain_notices_total", "relay_call_actions_total", "relay_transfers_total",
        "relay_agent_recoveries_total", "relay_post_call_webhooks_total",
        "relay_recordings_total", "relay_recording_bytes_total",
        "relay_recording_blocks_dropped_total", "relay_recording_uploads_total",
        "relay_amd_total"],
    "histogram": [
        "relay_forward_latency_seconds", "relay_call_forward_latency_p99_seconds",
        "relay_inbound_jitter_seconds", "relay_agent_connect_duration_seconds",
        "relay_call_duration_seconds", "relay_turn_latency_seconds",
        "relay_agent_turn_latency_seconds", "relay_call_turn_latency_p95_seconds",
        "relay_barge_in_latency_seconds", "relay_playout_lag_seconds",
        "relay_agent_ping_rtt_seconds", "relay_goodbye_cut_seconds",
        "relay_agent_recovery_gap_seconds"],
}

# Why a histogram can stay empty in the e2e run: what produces its observations.
HISTOGRAM_SOURCES = {
    "relay_agent_ping_rtt_seconds":
        "only ElevenLabs `ping` events that carry `ping_event.ping_ms` are observed; the "
        "loadtest ElevenLabs mock (loadtest/src/bench_agent.rs) sends one every 250 caller "
        "frames per call, with a null ping_ms on the first; the AssemblyAI/OpenAI dialects "
        "have no RTT field.",
    "relay_agent_turn_latency_seconds":
        "needs an agent end-of-speech signal (AssemblyAI input.speech.stopped, OpenAI "
        "input_audio_buffer.speech_stopped, ElevenLabs user_transcript) followed by a reply; "
        "the loadtest mock sends none (e2e_traffic.py's AssemblyAI mock does).",
    "relay_barge_in_latency_seconds":
        "needs agent `interruption` events during a reply (loadtest --mode conversation "
        "--barge-in).",
    "relay_call_turn_latency_p95_seconds":
        "observed when a call that had turns ends; needs conversation-mode calls that end "
        "inside the window.",
    "relay_call_forward_latency_p99_seconds": "observed when a call that relayed frames ends.",
    "relay_call_duration_seconds": "observed when a call ends.",
    "relay_turn_latency_seconds":
        "needs caller speech (relay VAD) followed by agent reply audio.",
    "relay_playout_lag_seconds": "needs Twilio mark echoes (played).",
    "relay_agent_connect_duration_seconds": "needs successful agent connects.",
    "relay_inbound_jitter_seconds": "needs caller media.",
    "relay_forward_latency_seconds": "needs relayed frames.",
    "relay_goodbye_cut_seconds": "observed when a call action (end_call, transfer) runs.",
    "relay_agent_recovery_gap_seconds":
        "observed when agent audio follows an agent-leg recovery.",
}


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def parse_exposition(text):
    """{sample name: [(labels str, value)]}, {family: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ.strip()
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        samples.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return samples, types


def family_of(sample):
    for suf in ("_bucket", "_sum", "_count"):
        if sample.endswith(suf):
            return sample[: -len(suf)]
    return sample


# --- subcommands -----------------------------------------------------------------------------

def cmd_free_ports(a):
    import socket
    socks, ports = [], []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


def cmd_wait_http(a):
    deadline = time.time() + a.secs
    last = None
    while time.time() < deadline:
        try:
            st, _ = http_get(a.url, 2)
            if st == 200:
                return 0
            last = st
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.2)
    print(f"timed out waiting for {a.url}: {last}", file=sys.stderr)
    return 1


def cmd_fetch(a):
    _, body = http_get(a.url)
    with open(a.file, "wb") as f:
        f.write(body)


def cmd_prom_config(a):
    text = open(a.src, encoding="utf-8").read()
    subs = [
        (r'"127\.0\.0\.1:8080"', f'"{a.target}"', "scrape target"),
        (r"(?m)^(\s*scrape_interval:)\s*\S+", rf"\g<1> {a.scrape}", "scrape_interval"),
        (r"(?m)^(\s*evaluation_interval:)\s*\S+", rf"\g<1> {a.scrape}", "evaluation_interval"),
        (r"(?m)^(\s*scrape_timeout:)\s*\S+", r"\g<1> 1s", "scrape_timeout"),
        (r"(?m)^(\s*-\s*)alerts/media-relay\.rules\.yml\s*$", rf"\g<1>{a.rules}", "rule_files"),
    ]
    for pat, rep, what in subs:
        text, n = re.subn(pat, rep, text)
        if n == 0:
            print(f"prom-config: no {what} found in {a.src}", file=sys.stderr)
            return 1
    with open(a.dst, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


def cmd_families(a):
    samples, types = parse_exposition(open(a.file, encoding="utf-8").read())
    present = {family_of(s) for s in samples}
    missing = {k: [f for f in v if f not in present] for k, v in EXPECTED.items()}
    n_missing = sum(len(v) for v in missing.values())
    total = sum(len(v) for v in EXPECTED.values())
    print(f"  {total - n_missing}/{total} documented relay families present"
          + (f"; process_* families: {len([f for f in present if f.startswith('process_')])}"))
    for k, v in missing.items():
        for f in v:
            print(f"  ABSENT {k} {f}")
    zero_hist = []
    for h in EXPECTED["histogram"]:
        counts = [v for _, v in samples.get(h + "_count", [])]
        if counts and not any(counts):
            zero_hist.append(h)
    if not a.end:
        print(f"  histograms rendered with zero observations: {len(zero_hist)}/"
              f"{len(EXPECTED['histogram'])} (all _bucket/_sum/_count series at 0)")
    else:
        for h in EXPECTED["histogram"]:
            per = samples.get(h + "_count", [])
            total_obs = sum(v for _, v in per)
            detail = ", ".join(f"{l or '{}'}={int(v)}" for l, v in per if v)
            print(f"  {h}: {int(total_obs)} observations" + (f" ({detail})" if detail else
                  f"  <- EMPTY: {HISTOGRAM_SOURCES.get(h, '')}"))
    return 0 if (not a.strict or n_missing == 0) else 1


def prom_query(prom, expr, at):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    try:
        _, body = http_get(url, 30)
        d = json.loads(body)
    except urllib.error.HTTPError as e:
        d = json.loads(e.read() or b"{}")
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"
    if d.get("status") != "success":
        return None, f"{d.get('errorType')}: {d.get('error')}"
    return d["data"], None


def cmd_wait_scraped(a):
    samples, _ = parse_exposition(open(a.metrics, encoding="utf-8").read())
    want = sum(v for _, v in samples.get("relay_calls_total", []))
    deadline = time.time() + a.secs
    got = None
    while time.time() < deadline:
        data, err = prom_query(a.prom, "sum(relay_calls_total)", time.time())
        if data and data["result"]:
            got = float(data["result"][0]["value"][1])
            if got >= want:
                print(f"  Prometheus holds relay_calls_total = {got:g} (scrape: {want:g})")
                return 0
        time.sleep(0.5)
    print(f"  timed out: Prometheus relay_calls_total = {got}, scrape has {want:g}",
          file=sys.stderr)
    return 1


# --- expression handling -----------------------------------------------------------------------

def top_level_split(expr):
    """Splits at top-level and/or/unless; returns operand strings (modifiers stripped)."""
    parts, depth, i, start, quote = [], 0, 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"(and|or|unless)\b", expr[i:])
            if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
                parts.append(expr[start:i])
                i += len(m.group(1))
                rest = expr[i:]
                mm = re.match(r"\s*(on|ignoring)\s*\([^)]*\)", rest)
                if mm:
                    i += mm.end()
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def strip_comparison(expr):
    """The left-hand side of a top-level comparison (the signal an alert thresholds)."""
    depth, quote, i = 0, None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "=!<>":
            two = expr[i:i + 2]
            if two in ("==", "!=", ">=", "<=") or c in "<>":
                return expr[:i].strip()
        i += 1
    return expr.strip()


def dashboard_exprs(ddir):
    out = []
    for path in sorted(glob.glob(os.path.join(ddir, "*.json"))):
        d = json.load(open(path, encoding="utf-8"))
        name = os.path.basename(path).replace("media-relay-", "").replace(".json", "")

        def walk(panels):
            for p in panels:
                for t in p.get("targets", []) or []:
                    if t.get("expr"):
                        out.append((f"{name}: {p.get('title', '?')} [{t.get('refId')}]",
                                    t["expr"], "panel"))
                walk(p.get("panels", []) or [])

        walk(d.get("panels", []))
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") != "query":
                continue
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q or "")
            if not m:
                out.append((f"{name}: variable {v['name']}", q or "", "unsupported-variable"))
                continue
            out.append((f"{name}: variable ${v['name']}",
                        f"count by ({m.group(2)}) ({m.group(1)})", "variable"))
    return out


def substitute(expr, window, interval):
    problems = []
    for var in ("instance", "agent"):
        for m in re.finditer(r"\$\{?" + var + r"\b", expr):
            before = expr[max(0, m.start() - 3):m.start()]
            if before != '=~"':
                problems.append(f"${var} used without =~")
    e = expr
    for pat, rep in [
        (r"\$\{__rate_interval\}|\$__rate_interval", window),
        (r"\$\{__range\}|\$__range", window),
        (r"\$\{__interval\}|\$__interval", interval),
        (r"\$\{instance(:\w+)?\}|\$instance\b", ".*"),
        (r"\$\{agent(:\w+)?\}|\$agent\b", ".*"),
    ]:
        e = re.sub(pat, rep, e)
    if "$" in e:
        problems.append("unknown variable: " + ", ".join(sorted(set(re.findall(r"\$\{?\w+", e)))))
    if re.search(r"\[\d+[smhdwy]\]", expr):
        problems.append("fixed range window (use $__rate_interval or $__range)")
    return e, problems


def classify(data):
    """(series, finite values, non-zero values)."""
    if data is None:
        return 0, 0, 0
    res = data["result"]
    if data["resultType"] == "scalar":
        vals = [float(res[1])]
    elif data["resultType"] == "vector":
        vals = [float(r["value"][1]) for r in res]
    else:
        vals = [float(v[1]) for r in res for v in r.get("values", [])[-1:]]
    fin = [v for v in vals if not math.isnan(v)]
    return len(vals), len(fin), len([v for v in fin if v != 0])


METRIC_RE = re.compile(r"\b((?:relay|process)_[a-z0-9_]+|up)\b(?!\s*\()")


RANK = {"ERR": 0, "EMPTY": 1, "NaN": 2, "zero": 3, "ok": 4}


def best_query(prom, expr, times):
    """Evaluates expr at each instant; returns (data, err, label of the instant) of the
    most informative result (ok > zero > NaN > empty; ties go to the later instant); an
    error anywhere wins."""
    best = None
    for label, at in times:
        data, err = prom_query(prom, expr, at)
        if err:
            return None, err, label
        n, fin, nz = classify(data)
        st = "EMPTY" if n == 0 else ("NaN" if fin == 0 else ("zero" if nz == 0 else "ok"))
        if best is None or RANK[st] >= RANK[best[3]]:  # ties: the later instant
            best = (data, None, label, st)
    return best[0], best[1], best[2]


def cmd_evaluate(a):
    times = [("mid", float(t)) for t in a.also_at] + [("end", time.time())]
    window = a.window
    rows, failures, notes = [], [], []
    samples, _ = parse_exposition(open(a.metrics, encoding="utf-8").read())
    exposed = {family_of(s) for s in samples} | set(samples) | {"up"}

    # Dashboards.
    for src, expr, kind in dashboard_exprs(a.dashboards):
        if kind == "unsupported-variable":
            failures.append(f"{src}: variable query not understood: {expr!r}")
            rows.append((src, expr, "ERR", 0, 0, 0))
            continue
        e, problems = substitute(expr, window, a.interval)
        for p in problems:
            failures.append(f"{src}: {p}")
        for name in set(METRIC_RE.findall(expr)):
            if name not in exposed and name not in ("relay_build_info",):
                failures.append(f"{src}: metric {name} is not exposed by the relay")
        data, err, when = best_query(a.prom, e, times)
        if err:
            failures.append(f"{src}: query error: {err}")
            rows.append((src, e, "ERR", 0, 0, 0))
            continue
        n, fin, nz = classify(data)
        status = "EMPTY" if n == 0 else ("NaN" if fin == 0 else ("zero" if nz == 0 else "ok"))
        if n == 0:
            failures.append(f"{src}: no series")
        rows.append((src, e, status + ("@" + when if len(times) > 1 else ""), n, fin, nz))

    # Rules: what Prometheus loaded from the rules file.
    _, body = http_get(f"{a.prom}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    rules = [(g, r) for g in groups for r in g["rules"]]
    files = {g["file"] for g in groups}
    if not rules:
        failures.append("Prometheus loaded no rules")
    if files != {a.rules}:
        failures.append(f"rules loaded from {files}, expected {a.rules}")
    if a.expect_rules and len(rules) != a.expect_rules:
        failures.append(f"Prometheus loaded {len(rules)} rules, promtool found {a.expect_rules}")
    for g, r in rules:
        name = r.get("name")
        src = f"rule {name}"
        if r.get("health") != "ok":
            failures.append(f"{src}: health {r.get('health')}: {r.get('lastError')}")
        for metric in set(METRIC_RE.findall(r["query"])):
            if metric not in exposed:
                failures.append(f"{src}: metric {metric} is not exposed by the relay")
        data, err = prom_query(a.prom, r["query"], times[-1][1])
        if err:
            failures.append(f"{src}: query error: {err}")
            rows.append((src, r["query"], "ERR", 0, 0, 0))
            continue
        n, _fin, _nz = classify(data)
        state = r.get("state", "?")
        rows.append((src + " (full expr)", r["query"], f"{state}", n, n, n))
        for k, operand in enumerate(top_level_split(r["query"])):
            lhs = strip_comparison(operand)
            data, err, when = best_query(a.prom, lhs, times)
            osrc = f"{src} operand {k + 1} (signal)"
            if err:
                failures.append(f"{osrc}: query error: {err}")
                rows.append((osrc, lhs, "ERR", 0, 0, 0))
                continue
            n, fin, nz = classify(data)
            status = "EMPTY" if n == 0 else ("NaN" if fin == 0 else ("zero" if nz == 0 else "ok"))
            if n == 0:
                failures.append(f"{osrc}: no series")
            rows.append((osrc, lhs, status + ("@" + when if len(times) > 1 else ""), n, fin, nz))

    # Table.
    with open(a.out, "w", encoding="utf-8") as f:
        f.write("source\tstatus\tseries\tnon_nan\tnon_zero\texpression\n")
        for src, e, st, n, fin, nz in rows:
            f.write(f"{src}\t{st}\t{n}\t{fin}\t{nz}\t{e}\n")
    w = min(60, max(len(r[0]) for r in rows))
    print(f"{'source':<{w}}  {'status':<9} {'series':>6} {'!NaN':>5} {'!=0':>5}  expression")
    print("-" * (w + 30 + 60))
    for src, e, st, n, fin, nz in rows:
        one = " ".join(e.split())
        print(f"{src[:w]:<{w}}  {st:<9} {n:>6} {fin:>5} {nz:>5}  {one}")
    panels = [r for r in rows if not r[0].startswith("rule ")]
    ops = [r for r in rows if r[0].startswith("rule ") and "operand" in r[0]]
    full = [r for r in rows if r[0].endswith("(full expr)")]

    def summary(label, rs):
        c = lambda s: sum(1 for r in rs if r[2].split("@")[0] == s)  # noqa: E731
        return (f"{label}: {len(rs)} expressions, {sum(1 for r in rs if r[3] > 0)} returned "
                f"series, {c('ok')} with non-zero data, {c('zero')} all zero, {c('NaN')} "
                f"all NaN, {c('EMPTY')} empty, {c('ERR')} errors")

    print()
    print(summary("dashboards (panels + variables)", panels))
    print(summary("alert rule signals (left-hand sides)", ops))
    print(f"alert rules: {len(full)} valid expressions, firing/pending now: "
          + (", ".join(f"{r[0][5:-12]} ({r[2]})" for r in full if r[3] > 0) or "none"))

    # Diagnosis of expressions without data.
    nodata = [r for r in rows if r[2].split("@")[0] in ("NaN", "zero", "EMPTY")]
    if nodata:
        print("\nexpressions without non-zero data, by metric:")
        by_metric = {}
        for r in nodata:
            for m in sorted(set(METRIC_RE.findall(r[1]))):
                by_metric.setdefault(m, []).append(r)
        for m, rs in sorted(by_metric.items()):
            fam = family_of(m)
            if fam + "_count" in samples:
                tot = sum(v for _, v in samples[fam + "_count"])
                why = (f"histogram with {int(tot)} observations in the final scrape"
                       + ("" if tot else f": {HISTOGRAM_SOURCES.get(fam, '')}"))
            elif m in samples:
                tot = sum(v for _, v in samples[m])
                why = f"{len(samples[m])} series, sum {tot:g} in the final scrape"
            elif m == "up":
                why = "Prometheus' own series"
            else:
                why = "NOT in the final /metrics scrape"
            print(f"  {m}: {why}")
            for r in rs:
                print(f"      [{r[2]}] {r[0]}")
    if failures:
        print("\nFAILURES:")
        for f_ in failures:
            print("  " + f_)
        return 1
    if a.strict:
        nan = [r for r in rows if r[2].split("@")[0] == "NaN"]
        if nan:
            print(f"\nSTRICT: {len(nan)} expressions returned only NaN")
            return 1
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("free-ports")
    p.add_argument("n", type=int)
    p = sub.add_parser("wait-http")
    p.add_argument("url")
    p.add_argument("secs", type=float, nargs="?", default=30)
    p = sub.add_parser("fetch")
    p.add_argument("url")
    p.add_argument("file")
    p = sub.add_parser("prom-config")
    for n in ("src", "dst", "target", "rules", "scrape"):
        p.add_argument(n)
    p = sub.add_parser("families")
    p.add_argument("file")
    p.add_argument("--end", action="store_true")
    p.add_argument("--strict", action="store_true")
    p = sub.add_parser("wait-scraped")
    p.add_argument("prom")
    p.add_argument("metrics")
    p.add_argument("--secs", type=float, default=60)
    p = sub.add_parser("evaluate")
    p.add_argument("--prom", required=True)
    p.add_argument("--dashboards", required=True)
    p.add_argument("--rules", required=True, help="absolute path Prometheus loaded")
    p.add_argument("--expect-rules", type=int, default=0)
    p.add_argument("--metrics", required=True, help="final /metrics scrape")
    p.add_argument("--window", required=True, help="replaces $__rate_interval and $__range")
    p.add_argument("--interval", default="2s", help="replaces $__interval")
    p.add_argument("--out", required=True)
    p.add_argument("--also-at", action="append", default=[],
                   help="also evaluate at this Unix time (e.g. mid-load); best result counts")
    p.add_argument("--strict", action="store_true")
    a = ap.parse_args()
    fn = {"free-ports": cmd_free_ports, "wait-http": cmd_wait_http, "fetch": cmd_fetch,
          "prom-config": cmd_prom_config, "families": cmd_families,
          "wait-scraped": cmd_wait_scraped, "evaluate": cmd_evaluate}[a.cmd]
    sys.exit(fn(a) or 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Agent-failure recovery benchmark (issue 17): agent sockets killed against no faults.

For each agent dialect, runs the load harness on the release relay in alternating pairs
under the same load (--calls echo-mode calls, --window s steady window): one run in which
the mock agent kills --percent % of the live agent sockets per minute (WebSocket Close 1011
by default, or a TCP reset with --kill-mode reset; never the dialect's end signal) and
accepts the relay's reconnects at once, and the same command with 0 % (the baseline). The
order within a pair alternates (faults first, then baseline first, ...). Each fault run has
its own schedule seed (--seed + pair).

Reports per dialect:

- the recovery gap as the caller heard it (last agent-echo frame sent before the kill ->
  first one sent after it, at the caller) and kill -> first agent audio: p50 / p95 / max
  pooled over the fault runs (goal: p95 <= 1.5 s);
- the relay's own figures: relay_agent_recoveries_total{result}, the
  relay_agent_recovery_gap_seconds histogram (increase over each run), and gap_ms of every
  recovery listed by GET /calls/{sid};
- calls lost (closed by the relay before the caller's stop; goal 0), frames lost outside
  the gaps (goal 0), hold audio and replayed frames;
- the latency of the calls no kill hit (caller -> agent, agent -> caller, round trip; p50
  and p99, median over runs) beside the baseline runs' (all calls), and the relay's CPU.

    python3 loadtest/recovery_bench.py                         # 3 dialects, 2 pairs (~30 min)
    python3 loadtest/recovery_bench.py --agents elevenlabs --pairs 1 --window 60   # quicker
    python3 loadtest/recovery_bench.py --kill-mode reset --out loadtest/results/recovery/reset
    python3 loadtest/recovery_bench.py --max-other-load 0.15   # run a pair again when other
                                                              # work on the VM disturbed it

Each run also records how many cores *other* work on the machine kept busy meanwhile (the
machine's busy CPU from /proc/stat minus the harness's and the relay's): on a shared VM the
latency tail follows that more than anything the relay does.

Python 3 standard library only; builds the release binaries first (into $CARGO_TARGET_DIR
if set; --no-build skips it). Everything runs on 127.0.0.1. Writes each run's JSON and text
and summary.{json,md} under --out.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def busy_s():
    """CPU seconds the whole machine spent busy so far (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run(a, agent, setting, i, out, tag=""):
    """One harness run; returns its relay result (with its `faults` report)."""
    name = f"{agent}-{setting}-{i}{tag}"
    report = os.path.join(out, f"{name}.json")
    pct = a.percent if setting == "faults" else 0
    cmd = [os.path.join(TARGET, "release", "loadtest"), "--spawn", "--no-floor",
           "--agent", agent, "--mode", "echo", "--calls", str(a.calls),
           "--ramp-per-sec", "50", "--duration-secs", str(a.window),
           "--kill-agent-sockets-per-min", str(pct), "--kill-mode", a.kill_mode,
           "--kill-seed", str(a.seed + i), "--json", report]
    if a.pin:
        cmd.append("--pin")
    t0, b0, c0 = time.time(), busy_s(), os.times()
    with open(os.path.join(out, f"{name}.txt"), "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    t1, b1, c1 = time.time(), busy_s(), os.times()
    with open(report) as f:
        r = json.load(f)["relay"]
    r["_seconds"] = t1 - t0
    # Other work on the machine meanwhile: busy CPU minus the harness's and the relay's
    # (the relay is the harness's child, reaped by it, so both are in our children's times).
    ours = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    r["_other_cores"] = None if b0 is None else max(0.0, (b1 - b0 - ours) / (t1 - t0))
    return r


def rank(v, q):
    """Nearest-rank quantile of a non-empty list."""
    s = sorted(v)
    return s[min(max(math.ceil(q * len(s)), 1), len(s)) - 1]


def gap_stats(v):
    if not v:
        return None
    return {"count": len(v), "p50_ms": rank(v, 0.5), "p95_ms": rank(v, 0.95),
            "max_ms": max(v), "mean_ms": sum(v) / len(v)}


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def pct(p, key):
    return p[key] if p else None


def latency(runs, key, unaffected=True):
    """Median over runs of p50 and p99 (µs) of one latency series."""
    src = (lambda r: r["faults"][f"unaffected_{key}"]) if unaffected else (lambda r: r[key])
    return {"p50_us": med([pct(src(r), "p50_us") for r in runs]),
            "p99_us": med([pct(src(r), "p99_us") for r in runs]),
            "p999_us": med([pct(src(r), "p999_us") for r in runs])}


def bucket_p95(runs):
    """The relay gap histogram summed over runs: the bucket bound holding the p95."""
    acc = {}
    for r in runs:
        rel = r["faults"].get("relay") or {}
        for le, c in rel.get("gap_histogram", []):
            acc[le] = acc.get(le, 0) + c
    if not acc:
        return None, 0
    pts = sorted(acc.items())
    n = pts[-1][1]
    if n <= 0:
        return None, 0
    for le, c in pts:
        if c >= 0.95 * n:
            return ("+Inf" if le > 1e300 else le), n
    return None, n


def summarize_agent(agent, faults, base):
    heard, kta, reconn, relay_gaps = [], [], [], []
    totals = {}
    outcomes = {}
    s = {"agent": agent, "fault_runs": len(faults), "baseline_runs": len(base)}
    for r in faults:
        f = r["faults"]
        heard += [g["gap_ms"] for g in f["heard_gaps"]]
        kta += [g["kill_to_audio_ms"] for g in f["heard_gaps"]]
        rel = f.get("relay") or {}
        relay_gaps += [x["gap_ms"] for x in rel.get("recoveries", [])
                       if x.get("result") == "recovered" and x.get("gap_ms") is not None]
        for k, v in rel.get("recoveries_total", {}).items():
            totals[k] = totals.get(k, 0) + v
        for k, v in rel.get("call_outcomes", {}).items():
            outcomes[k] = outcomes.get(k, 0) + v
    for key in ("kills_planned", "kills_done", "kills_skipped", "gaps_unrecovered",
                "calls_lost", "replayed_frames", "reconnects", "resumes",
                "contextual_updates", "item_creates", "drained_frames"):
        s[key] = sum(r["faults"][key] for r in faults)
    s["hold_audio_s"] = sum(r["faults"]["hold_audio_ms"] for r in faults) / 1000
    s["loss"] = {k: sum(r["faults"]["loss"][k] for r in faults)
                 for k in faults[0]["faults"]["loss"]} if faults else {}
    s["baseline_calls_lost"] = sum(r["faults"]["calls_lost"] for r in base)
    s["baseline_loss_unexplained"] = sum(
        r["faults"]["loss"]["to_agent_unexplained"] + r["faults"]["loss"]["to_caller_unexplained"]
        for r in base)
    s["heard_gap"] = gap_stats(heard)
    s["kill_to_audio"] = gap_stats(kta)
    s["relay_gap_ms"] = gap_stats(relay_gaps)
    s["relay_recoveries_total"] = totals
    s["relay_call_outcomes"] = outcomes
    le, n = bucket_p95(faults)
    s["relay_gap_histogram_p95_bucket_le_s"] = le
    s["relay_gap_histogram_count"] = n
    s["caller_closed_early"] = sum(r["caller"]["closed_early"] for r in faults)
    s["caller_protocol_errors"] = sum(r["caller"]["protocol_errors"] for r in faults + base)
    s["caller_corrupt_or_cross_talk"] = sum(
        r["caller"]["corrupt"] + r["caller"]["cross_talk"] for r in faults + base)
    s["agent_protocol_errors"] = sum((r.get("agent") or {}).get("protocol_errors", 0)
                                     for r in faults + base)
    s["latency"] = {
        side: {k: latency(runs, k) for k in ("caller_to_agent", "agent_to_caller", "round_trip")}
        for side, runs in (("faults_unaffected_calls", faults), ("baseline_all_calls", base))
    }
    # Within the fault runs: the unaffected calls' frames sent near a kill against the rest.
    s["latency_near_vs_away"] = {
        side: {q: med([(r["faults"].get(key) or {}).get(q) for r in faults])
               for q in ("p50_us", "p99_us", "p999_us")}
        for side, key in (("near_kills", "unaffected_round_trip_near_kills"),
                          ("away_from_kills", "unaffected_round_trip_away_from_kills"))}
    s["latency_all_calls_faults"] = {
        k: latency(faults, k, unaffected=False)
        for k in ("caller_to_agent", "agent_to_caller", "round_trip")}
    s["relay_cpu"] = {
        side: {"cores": med([(r.get("resources") or {}).get("cores") for r in runs]),
               "cpu_us_per_frame": med([(r.get("resources") or {}).get("cpu_us_per_frame")
                                        for r in runs]),
               "harness_cores": med([r.get("harness_cores") for r in runs])}
        for side, runs in (("faults", faults), ("baseline", base))}
    s["other_load_cores"] = {
        side: [r.get("_other_cores") for r in runs]
        for side, runs in (("faults", faults), ("baseline", base))}
    hg = s["heard_gap"]
    rg = s["relay_gap_ms"]
    s["goal_p95_le_1500_ms"] = bool(
        hg and hg["p95_ms"] <= 1500 and (rg is None or rg["p95_ms"] <= 1500))
    s["goal_no_call_lost"] = s["calls_lost"] == 0 and s["caller_closed_early"] == 0
    return s


def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def gap_cell(g):
    if not g:
        return "-"
    return f"{g['p50_ms']:.0f} / {g['p95_ms']:.0f} / {g['max_ms']:.0f} (n {g['count']})"


def markdown(a, summaries):
    lines = [
        f"# Agent-failure recovery: {a.calls} calls, echo mode, {a.window} s windows, "
        f"{a.percent} % of the live agent sockets killed per minute "
        f"({'WebSocket Close 1011' if a.kill_mode == 'close' else 'TCP reset'}), "
        f"{a.pairs} alternating pair(s) per dialect{' (relay pinned)' if a.pin else ''}",
        "",
        "The mock agent accepts reconnects at once. Gaps in ms as p50 / p95 / max, pooled "
        "over the fault runs. *Heard*: at the caller, last agent-echo frame sent before the "
        "kill → first sent after it. *Relay*: `gap_ms` of every recovery in "
        "`GET /calls/{sid}` (last agent audio before the failure → first after it, at the "
        "relay). Goal: p95 ≤ 1500 ms, 0 calls lost.",
        "",
        "| dialect | kills done (planned) | relay recoveries | gap heard | kill → agent audio | "
        "relay gap_ms | relay histogram p95 bucket | calls lost | frames lost in gaps (→agent / →caller) | "
        "lost outside gaps | hold audio s | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        loss = s["loss"]
        le = s["relay_gap_histogram_p95_bucket_le_s"]
        lines.append(
            f"| {s['agent']} | {s['kills_done']} ({s['kills_planned']}) | "
            f"{', '.join(f'{k} {v:.0f}' for k, v in sorted(s['relay_recoveries_total'].items())) or '-'} | "
            f"{gap_cell(s['heard_gap'])} | {gap_cell(s['kill_to_audio'])} | "
            f"{gap_cell(s['relay_gap_ms'])} | ≤ {le if le is not None else '-'} s | "
            f"{s['calls_lost']} | {loss.get('to_agent_in_gaps', 0)} / {loss.get('to_caller_in_gaps', 0)} | "
            f"{loss.get('to_agent_unexplained', 0) + loss.get('to_caller_unexplained', 0)} | "
            f"{s['hold_audio_s']:.1f} | "
            f"{'met' if s['goal_p95_le_1500_ms'] and s['goal_no_call_lost'] else 'NOT met'} |")
    lines += [
        "",
        "## The other calls' latency (µs, median over runs of each run's percentile)",
        "",
        "Fault runs: frames of the calls no kill hit; baseline: every call (same command "
        "with 0 %).",
        "",
        "| dialect | series | p50 faults | p50 baseline | p99 faults | p99 baseline | "
        "p99.9 faults | p99.9 baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lf = s["latency"]["faults_unaffected_calls"]
        lb = s["latency"]["baseline_all_calls"]
        for k, name in (("caller_to_agent", "caller → agent"),
                        ("agent_to_caller", "agent → caller"),
                        ("round_trip", "round trip")):
            lines.append(
                f"| {s['agent']} | {name} | {fmt(lf[k]['p50_us'], 1)} | {fmt(lb[k]['p50_us'], 1)} | "
                f"{fmt(lf[k]['p99_us'], 1)} | {fmt(lb[k]['p99_us'], 1)} | "
                f"{fmt(lf[k]['p999_us'], 1)} | {fmt(lb[k]['p999_us'], 1)} |")
    lines += [
        "",
        "Within the fault runs (the same run, so the same machine noise): round trip of the "
        "unaffected calls' frames sent near a kill (50 ms before to 500 ms after one) against "
        "those sent away from every kill (µs, median over runs):",
        "",
        "| dialect | p50 near | p50 away | p99 near | p99 away | p99.9 near | p99.9 away |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        n = s["latency_near_vs_away"]["near_kills"]
        w = s["latency_near_vs_away"]["away_from_kills"]
        lines.append(f"| {s['agent']} | {fmt(n['p50_us'], 1)} | {fmt(w['p50_us'], 1)} | "
                     f"{fmt(n['p99_us'], 1)} | {fmt(w['p99_us'], 1)} | "
                     f"{fmt(n['p999_us'], 1)} | {fmt(w['p999_us'], 1)} |")
    lines += [
        "",
        "## Relay CPU (median over runs)",
        "",
        "| dialect | cores faults | cores baseline | µs per relayed frame faults | "
        "µs per relayed frame baseline | harness cores faults / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        c = s["relay_cpu"]
        lines.append(
            f"| {s['agent']} | {fmt(c['faults']['cores'], 3)} | {fmt(c['baseline']['cores'], 3)} | "
            f"{fmt(c['faults']['cpu_us_per_frame'], 2)} | {fmt(c['baseline']['cpu_us_per_frame'], 2)} | "
            f"{fmt(c['faults']['harness_cores'], 2)} / {fmt(c['baseline']['harness_cores'], 2)} |")
    lines += ["", "Other work on the machine during each run (busy CPU minus the harness's and "
              "the relay's, cores; the VM has 2):", ""]
    for s in summaries:
        o = s["other_load_cores"]
        lines.append(f"- {s['agent']}: faults {', '.join(fmt(x, 2) for x in o['faults'])}; "
                     f"baseline {', '.join(fmt(x, 2) for x in o['baseline'])}"
                     + (f" ({s['pairs_rejected_for_other_load']} noisier pair(s) run again and "
                        "left out)" if s.get("pairs_rejected_for_other_load") else ""))
    lines += ["", "## Other counters", ""]
    for s in summaries:
        lines.append(
            f"- {s['agent']}: skipped kills {s['kills_skipped']}, gaps never closed "
            f"{s['gaps_unrecovered']}, reconnects seen by the mock {s['reconnects']} "
            f"(session.resume {s['resumes']}, contextual_update {s['contextual_updates']}, "
            f"conversation.item.create {s['item_creates']}), frames drained from killed sockets "
            f"{s['drained_frames']}, replayed gap frames echoed {s['replayed_frames']}, caller "
            f"corrupt/cross-talk {s['caller_corrupt_or_cross_talk']}, protocol errors caller "
            f"{s['caller_protocol_errors']} / agent {s['agent_protocol_errors']}; baseline: calls "
            f"lost {s['baseline_calls_lost']}, frames lost {s['baseline_loss_unexplained']}; "
            f"relay call outcomes (fault runs) {s['relay_call_outcomes']}.")
    return "\n".join(lines) + "\n"


def report_line(agent, setting, i, r, note):
    f = r["faults"]
    hg = f.get("heard_gap") or {}
    u = f.get("unaffected_round_trip") or {}
    print(f"{agent} {setting} #{i}: kills {f['kills_done']}/{f['kills_planned']}, "
          f"gap heard p50/p95/max {fmt(hg.get('p50_ms'))}/{fmt(hg.get('p95_ms'))}/"
          f"{fmt(hg.get('max_ms'))} ms, calls lost {f['calls_lost']}, "
          f"unexplained loss {f['loss']['to_agent_unexplained'] + f['loss']['to_caller_unexplained']}, "
          f"unaffected round trip p50/p99 {fmt(u.get('p50_us'))}/{fmt(u.get('p99_us'))} µs, "
          f"relay {fmt((r.get('resources') or {}).get('cores'), 3)} cores, "
          f"other load on the machine {fmt(r['_other_cores'], 2)} cores "
          f"({r['_seconds']:.0f} s){note}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", default="elevenlabs,assemblyai,openai")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--window", type=int, default=120, help="steady window, s")
    p.add_argument("--percent", type=float, default=10.0,
                   help="share of live agent sockets killed per minute")
    p.add_argument("--pairs", type=int, default=2, help="pairs (faults, baseline) per dialect")
    p.add_argument("--kill-mode", choices=("close", "reset"), default="close")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--pin", action="store_true", help="pin the relay to one CPU")
    p.add_argument("--out", default=os.path.join(ROOT, "loadtest", "results", "recovery"))
    p.add_argument("--max-other-load", type=float, default=None,
                   help="repeat a pair when other work on the machine kept more than this "
                        "many cores busy during either run (the VM is shared)")
    p.add_argument("--retries", type=int, default=2,
                   help="with --max-other-load: repeats per pair before keeping it anyway")
    p.add_argument("--no-build", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "media-relay", "-p", "loadtest"],
                       check=True, cwd=ROOT)
    summaries = []
    for agent in a.agents.split(","):
        rows = {"faults": [], "baseline": []}
        rejected = 0
        for i in range(a.pairs):
            order = ("faults", "baseline") if i % 2 == 0 else ("baseline", "faults")
            for attempt in range(a.retries + 1):
                tag = "" if attempt == 0 else f"-retry{attempt}"
                pair = {setting: run(a, agent, setting, i, a.out, tag) for setting in order}
                other = [r["_other_cores"] or 0.0 for r in pair.values()]
                quiet = a.max_other_load is None or max(other) <= a.max_other_load
                for setting, r in pair.items():
                    report_line(agent, setting, i, r, "" if quiet else " REJECTED (other load)")
                if quiet or attempt == a.retries:
                    break
                rejected += 1
            for setting, r in pair.items():
                rows[setting].append(r)
        s = summarize_agent(agent, rows["faults"], rows["baseline"])
        s["pairs_rejected_for_other_load"] = rejected
        summaries.append(s)

    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({"calls": a.calls, "window_s": a.window, "percent_per_min": a.percent,
                   "kill_mode": a.kill_mode, "pairs": a.pairs, "seed": a.seed, "pinned": a.pin,
                   "max_other_load": a.max_other_load, "dialects": summaries}, f, indent=2)
    text = markdown(a, summaries)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    ok = all(s["goal_p95_le_1500_ms"] and s["goal_no_call_lost"] for s in summaries)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

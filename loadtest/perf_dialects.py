#!/usr/bin/env python3
"""Per-dialect performance of the relay, side by side with the floor.

For each agent dialect (ElevenLabs, AssemblyAI, OpenAI Realtime) and each mode (echo, and
conversation with barge-in), runs the load harness twice:

1. CPU: `loadtest --spawn --pin --side-by-side --repeat N` at --calls calls: the relay and
   the fastwebsockets echo floor under the same caller load in the same window, N pairs, the
   median relay / floor ratio of CPU per relayed frame.
2. Memory at the margin: the relay alone (`--no-floor`) at --low and --high calls; memory per
   call = (RSS at high - RSS at low) / (high - low), so fixed overhead (runtime, buffers sized
   once, allocator arenas) cancels.

Writes every run's JSON and text under --out and a summary table (markdown) to
--out/summary.md, and prints it. Python 3 standard library only; builds the release binaries
first. Everything runs on 127.0.0.1.

    python3 loadtest/perf_dialects.py                       # the committed run (~15 min)
    python3 loadtest/perf_dialects.py --repeat 1 --window 8 # quicker, noisier
    python3 loadtest/perf_dialects.py --summarize-only      # summary from the saved runs
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIALECTS = ["elevenlabs", "assemblyai", "openai"]
MODES = {"echo": [], "conversation": ["--mode", "conversation", "--barge-in"]}


def run(args, out_base):
    """Runs the harness with `args`, saving stdout to out_base.txt and the report to .json."""
    cmd = [os.path.join(ROOT, "target/release/loadtest"), "--spawn", "--pin"] + args + [
        "--json", out_base + ".json"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t = time.time()
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(out_base + ".txt", "w") as f:
        f.write("$ loadtest " + " ".join(cmd[1:]) + "\n" + p.stdout)
    if p.returncode != 0:
        sys.stdout.write(p.stdout[-3000:])
        raise SystemExit(f"loadtest failed ({p.returncode}): see {out_base}.txt")
    print(f"  {time.time() - t:.0f} s", flush=True)
    return load(out_base)


def load(out_base):
    """Reads a run's report (.json) and output (.txt) saved by `run`."""
    with open(out_base + ".json") as f:
        rep = json.load(f)
    with open(out_base + ".txt") as f:
        out = f.read()
    # The harness prints "checks: CLEAN" per run, or PROBLEMS (loss, reorder, duplication,
    # cross-talk, corruption, failed calls, protocol errors).
    rep["_clean"] = "PROBLEMS" not in out and "checks: CLEAN" in out
    return rep


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="calls for the CPU runs")
    ap.add_argument("--low", type=int, default=100, help="calls, low memory point")
    ap.add_argument("--high", type=int, default=400, help="calls, high memory point")
    ap.add_argument("--window", type=int, default=15, help="steady window, seconds")
    ap.add_argument("--repeat", type=int, default=3, help="side-by-side pairs per CPU run")
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtest/results/dialects"))
    ap.add_argument("--dialects", nargs="*", default=DIALECTS)
    ap.add_argument("--modes", nargs="*", default=list(MODES))
    ap.add_argument("--summarize-only", action="store_true",
                    help="rewrite the summary from the runs already saved under --out")
    a = ap.parse_args()
    if a.high <= a.low:
        ap.error("--high must be above --low")
    os.makedirs(a.out, exist_ok=True)
    if not a.summarize_only:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "media-relay", "-p",
                        "loadtest"], cwd=ROOT, check=True)

    rows = []
    for d in a.dialects:
        for m in a.modes:
            common = ["--agent", d] + MODES[m]
            base = os.path.join(a.out, f"{d}-{m}")
            if a.summarize_only:
                cpu = load(base + "-cpu")
                mem = {n: load(f"{base}-mem-{n}") for n in (a.low, a.high)}
            else:
                cpu = run(common + ["--calls", str(a.calls), "--duration-secs", str(a.window),
                                    "--side-by-side", "--repeat", str(a.repeat)], base + "-cpu")
                mem = {n: run(common + ["--calls", str(n), "--duration-secs", str(a.window),
                                        "--no-floor"], f"{base}-mem-{n}")
                       for n in (a.low, a.high)}
            rss = {n: mem[n]["relay"]["resources"]["window_end"]["rss_kib"] for n in mem}
            margin = (rss[a.high] - rss[a.low]) / (a.high - a.low)
            pairs = [p["ratio"] for p in cpu.get("pairs", [])]
            relay_us = [p["relay_cpu_us_per_frame"] for p in cpu.get("pairs", [])]
            lost = sum(r["relay"]["lost_caller_to_agent"] + r["relay"]["lost_to_caller"]
                       for r in [cpu] + list(mem.values()))
            res = cpu["relay"]["resources"]
            rows.append({
                "dialect": d, "mode": m,
                "ratio": cpu["cpu_ratio_relay_over_floor"],
                "pairs": pairs,
                "relay_us": relay_us or [res["cpu_us_per_frame"]],
                "floor_us": [p["floor_cpu_us_per_frame"] for p in cpu.get("pairs", [])],
                "rss_low": rss[a.low], "rss_high": rss[a.high],
                "margin_kib": margin,
                "frames_lost": lost,
                "clean": all(r["_clean"] for r in [cpu] + list(mem.values())),
            })

    lines = [
        f"Per-dialect performance: CPU per relayed frame side by side with the floor "
        f"({a.calls} calls, {a.window} s windows, {a.repeat} pairs, pinned), memory per call "
        f"at the margin between {a.low} and {a.high} calls (relay alone, pinned).",
        "",
        "| dialect | mode | relay ÷ floor (median) | pairs | relay / floor µs per frame (pairs) "
        f"| RSS at {a.low} / {a.high} calls | memory per call at the margin | frames lost | checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pairs = ", ".join(f"{p:.2f}" for p in r["pairs"] if p is not None)
        ratio = "-" if r["ratio"] is None else f"**{r['ratio']:.2f}×**"
        span = lambda v: f"{min(v):.1f}–{max(v):.1f}" if v else "-"
        lines.append(
            f"| {r['dialect']} | {r['mode']} | {ratio} | {pairs} | "
            f"{span(r['relay_us'])} / {span(r['floor_us'])} | "
            f"{r['rss_low'] / 1024:.1f} / {r['rss_high'] / 1024:.1f} MiB | "
            f"**{r['margin_kib']:.1f} KiB** | {r['frames_lost']} | "
            f"{'clean' if r['clean'] else 'PROBLEMS'} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()

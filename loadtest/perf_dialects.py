#!/usr/bin/env python3
"""Per-dialect performance of the relay, side by side with the floor.

Two load shapes (--shapes):

- `harness` (our own shape): per-call pacing (each call on its own 20 ms timer, calls spread
  over the period), the mock agent in the harness process, the relay pinned to one CPU.
- `gateway` (issue 19, an outside tester's shape): lockstep pacing (one 20 ms clock sends
  every call's frame in one burst per tick, as a media gateway batching its calls), the mock
  agent as a process of its own (`loadtest agent-server`, one thread, like a Node `ws`
  server) answering each frame with one audio event and pinging every second, nothing
  pinned, relay and floor measured in alternating runs (relay, floor, relay, floor, ...).
  Echo mode only, CPU only (memory per call does not depend on the pacing).

For the `harness` shape, for each agent dialect (ElevenLabs, AssemblyAI, OpenAI Realtime)
and each mode (echo, and conversation with barge-in), runs the load harness twice:

1. CPU: `loadtest --spawn --pin --side-by-side --repeat N` at --calls calls: the relay and
   the fastwebsockets echo floor under the same caller load in the same window, N pairs, the
   median relay / floor ratio of CPU per relayed frame.
2. Memory at the margin: the relay alone (`--no-floor`) at --low and --high calls; memory per
   call = (RSS at high - RSS at low) / (high - low), so fixed overhead (runtime, buffers sized
   once, allocator arenas) cancels.

For the `gateway` shape, for each dialect: `loadtest --spawn --pacing lockstep
--agent-process separate --agent-ping-ms 1000 --pin none --repeat N` at --gateway-calls calls
(relay ÷ floor per read+write pair, N alternating pairs, their median).

Writes every run's JSON and text under --out and a summary table (markdown) to
--out/summary.md, and prints it. Python 3 standard library only; builds the release binaries
first (into $CARGO_TARGET_DIR if set). Everything runs on 127.0.0.1.

    python3 loadtest/perf_dialects.py                       # both shapes (~25 min)
    python3 loadtest/perf_dialects.py --shapes harness      # the committed run (~15 min)
    python3 loadtest/perf_dialects.py --shapes gateway --dialects elevenlabs --repeat 3 \\
        --gateway-window 20 --relay-bin /work/baseline/media-relay-04e1b09
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
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
DIALECTS = ["elevenlabs", "assemblyai", "openai"]
MODES = {"echo": [], "conversation": ["--mode", "conversation", "--barge-in"]}
SHAPES = ["harness", "gateway"]
# The gateway shape's options (issue 19); the floor runs under the same pacing.
GATEWAY = ["--pacing", "lockstep", "--agent-process", "separate", "--agent-ping-ms", "1000",
           "--pin", "none"]
RELAY_BIN = []


def run(args, out_base, pin=("--pin",)):
    """Runs the harness with `args`, saving stdout to out_base.txt and the report to .json."""
    cmd = [os.path.join(TARGET, "release/loadtest"), "--spawn"] + list(pin) + RELAY_BIN + args + [
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
    ap.add_argument("--shapes", nargs="*", default=SHAPES, choices=SHAPES)
    ap.add_argument("--gateway-calls", type=int, default=150, help="calls, gateway shape")
    ap.add_argument("--gateway-window", type=int, default=20,
                    help="steady window of the gateway shape, seconds")
    ap.add_argument("--relay-bin", help="relay binary (default: the release build)")
    ap.add_argument("--summarize-only", action="store_true",
                    help="rewrite the summary from the runs already saved under --out")
    a = ap.parse_args()
    if a.high <= a.low:
        ap.error("--high must be above --low")
    os.makedirs(a.out, exist_ok=True)
    if a.relay_bin:
        RELAY_BIN[:] = ["--relay-bin", os.path.abspath(a.relay_bin)]
    if not a.summarize_only:
        pkgs = ["-p", "loadtest"] if a.relay_bin else ["-p", "media-relay", "-p", "loadtest"]
        subprocess.run(["cargo", "build", "--release", "-q"] + pkgs, cwd=ROOT, check=True)

    rows = []
    for d in a.dialects if "gateway" in a.shapes else []:
        base = os.path.join(a.out, f"{d}-gateway")
        if a.summarize_only:
            cpu = load(base + "-cpu")
        else:
            cpu = run(["--agent", d, "--calls", str(a.gateway_calls), "--duration-secs",
                       str(a.gateway_window), "--repeat", str(a.repeat)] + GATEWAY,
                      base + "-cpu", pin=())
        rows.append(cpu_row(d, "echo, gateway shape", cpu, [cpu]))
    for d in a.dialects if "harness" in a.shapes else []:
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
            row = cpu_row(d, m, cpu, [cpu] + list(mem.values()))
            row.update({"rss_low": rss[a.low], "rss_high": rss[a.high],
                        "margin_kib": (rss[a.high] - rss[a.low]) / (a.high - a.low)})
            rows.append(row)

    lines = [
        f"Per-dialect performance: CPU per relayed frame beside the floor. Harness shape "
        f"(mode echo / conversation): side by side, {a.calls} calls, {a.window} s windows, "
        f"{a.repeat} pairs, pinned; memory per call at the margin between {a.low} and "
        f"{a.high} calls (relay alone, pinned). Gateway shape (issue 19): lockstep pacing, "
        f"agent in a separate process pinging every second, unpinned, {a.gateway_calls} calls, "
        f"{a.gateway_window} s windows, {a.repeat} alternating relay/floor pairs.",
        "",
        "| dialect | mode | relay ÷ floor (median) | pairs | relay / floor µs per frame (pairs) "
        f"| RSS at {a.low} / {a.high} calls | memory per call at the margin | frames lost | checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pairs = ", ".join(f"{p:.2f}" for p in r["pairs"] if p is not None)
        ratio = "-" if r["ratio"] is None else f"**{r['ratio']:.2f}×**"
        span = lambda v: f"{min(v):.1f}–{max(v):.1f}" if v else "-"
        if "rss_low" in r:
            rss = f"{r['rss_low'] / 1024:.1f} / {r['rss_high'] / 1024:.1f} MiB"
            margin = f"**{r['margin_kib']:.1f} KiB**"
        else:
            rss, margin = "-", "-"
        lines.append(
            f"| {r['dialect']} | {r['mode']} | {ratio} | {pairs} | "
            f"{span(r['relay_us'])} / {span(r['floor_us'])} | {rss} | {margin} | "
            f"{r['frames_lost']} | {'clean' if r['clean'] else 'PROBLEMS'} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)


def cpu_row(dialect, mode, cpu, runs):
    """The summary row of a CPU run `cpu` (`runs`: every run whose loss and checks count)."""
    pairs = [p["ratio"] for p in cpu.get("pairs", [])]
    relay_us = [p["relay_cpu_us_per_frame"] for p in cpu.get("pairs", [])]
    res = cpu["relay"]["resources"]
    return {
        "dialect": dialect, "mode": mode,
        "ratio": cpu["cpu_ratio_relay_over_floor"],
        "pairs": pairs,
        "relay_us": relay_us or [res["cpu_us_per_frame"]],
        "floor_us": [p["floor_cpu_us_per_frame"] for p in cpu.get("pairs", [])],
        "frames_lost": sum(r["relay"]["lost_caller_to_agent"] + r["relay"]["lost_to_caller"]
                           for r in runs),
        "clean": all(r["_clean"] for r in runs),
    }


if __name__ == "__main__":
    main()

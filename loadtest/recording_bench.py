#!/usr/bin/env python3
"""Recording on against off, side by side (issue 18's benchmark).

Runs the load harness on the release relay in alternating pairs (off, on, off, on, ...) under
the same load: --calls calls in conversation mode (scripted speech turns, each call's agent
replying as ElevenLabs would), --repeat pairs. "On" is the relay's own environment
RELAY_RECORD=all with RELAY_RECORDING_DIR set to a fresh directory per run, so the spawned
relay records every call. Reports, per setting, the median of

- CPU per relayed frame (relay utime+stime over the steady window / frames read+written),
- RSS per call (RSS at the window's end minus before the first call, / calls),
- frames lost both ways (the harness checks every frame byte-exact),

the ratio on/off of the CPU medians, and for the "on" runs the recordings found: finished
.wav files (none left as .part), their total size and the seconds of audio they hold.

    python3 loadtest/recording_bench.py                      # 200 calls, 3 pairs (~4 min)
    python3 loadtest/recording_bench.py --calls 100 --repeat 1 --window 10   # quicker

Python 3 standard library only; builds the release binaries first (into $CARGO_TARGET_DIR
if set). Everything runs on 127.0.0.1. Writes each run's JSON and the summary under --out.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def run(a, setting, i, out):
    """One harness run; returns its relay report and, for "on", the recording directory."""
    env = dict(os.environ)
    rec_dir = None
    if setting == "on":
        rec_dir = tempfile.mkdtemp(prefix="relay-rec-bench-")
        env["RELAY_RECORD"] = "all"
        env["RELAY_RECORDING_DIR"] = rec_dir
    else:
        env.pop("RELAY_RECORD", None)
    report = os.path.join(out, f"{setting}-{i}.json")
    cmd = [os.path.join(TARGET, "release", "loadtest"), "--spawn", "--no-floor",
           "--mode", "conversation", "--calls", str(a.calls), "--ramp-per-sec", "50",
           "--duration-secs", str(a.window), "--json", report]
    if a.pin:
        cmd.append("--pin")
    with open(os.path.join(out, f"{setting}-{i}.txt"), "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                       cwd=ROOT)
    with open(report) as f:
        return json.load(f)["relay"], rec_dir


def recordings(d):
    """(finished files, .part files, bytes, seconds of audio) in a recording directory."""
    wav = [f for f in os.listdir(d) if f.endswith(".wav")]
    part = [f for f in os.listdir(d) if f.endswith(".part")]
    size = sum(os.path.getsize(os.path.join(d, f)) for f in wav)
    # 58-byte header, then 2 bytes per sample pair at 8000 Hz.
    secs = sum((os.path.getsize(os.path.join(d, f)) - 58) / 16000 for f in wav)
    return len(wav), len(part), size, secs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3, help="pairs (off, on)")
    p.add_argument("--window", type=int, default=20, help="steady window, s")
    p.add_argument("--pin", action="store_true", help="pin the relay to one CPU")
    p.add_argument("--out", default=os.path.join(ROOT, "loadtest", "results", "recording"))
    p.add_argument("--no-build", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "media-relay", "-p", "loadtest"],
                       check=True, cwd=ROOT)
    rows = {"off": [], "on": []}
    recs = []
    for i in range(a.repeat):
        for setting in ("off", "on"):
            r, rec_dir = run(a, setting, i, a.out)
            res = r["resources"]
            lost = r["lost_caller_to_agent"] + r["lost_to_caller"]
            rows[setting].append((res["cpu_us_per_frame"], res["rss_kib_per_call"], lost,
                                  res["frames"]))
            line = (f"{setting} #{i}: {res['cpu_us_per_frame']:.2f} µs/frame, "
                    f"{res['rss_kib_per_call']:.1f} KiB/call, lost {lost}, "
                    f"frames {res['frames']}")
            if rec_dir:
                n, parts, size, secs = recordings(rec_dir)
                recs.append((n, parts, size, secs))
                line += f"; recordings {n} (.part {parts}), {size / 1e6:.1f} MB, {secs:.0f} s"
                shutil.rmtree(rec_dir, ignore_errors=True)
            print(line, flush=True)
    med = {s: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
               sum(x[2] for x in v)) for s, v in rows.items()}
    ratio = med["on"][0] / med["off"][0]
    lines = [
        f"# Recording on vs off: {a.calls} calls, conversation mode, {a.window} s windows, "
        f"{a.repeat} alternating pairs{' (relay pinned)' if a.pin else ''}",
        "",
        "| setting | CPU µs per relayed frame (median) | RSS KiB per call (median) | frames lost (all runs) |",
        "|---|---|---|---|",
        f"| off | {med['off'][0]:.2f} | {med['off'][1]:.1f} | {med['off'][2]} |",
        f"| on | {med['on'][0]:.2f} | {med['on'][1]:.1f} | {med['on'][2]} |",
        "",
        f"CPU on / off: **{ratio:.3f}** (goal ≤ 1.05).",
        "Recordings per \"on\" run (files, left as .part, MB, seconds of audio): "
        + "; ".join(f"{n}, {parts}, {size / 1e6:.1f}, {secs:.0f}" for n, parts, size, secs in recs),
    ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0 if med["on"][2] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

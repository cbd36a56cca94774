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

the ratio on/off of the CPU medians, and for the "on" runs the recordings found once the
relay was stopped with SIGTERM (its drain waits for the recordings): finished .wav files
(none left as .part), their total size and the seconds of audio they hold. The script starts
the relay itself (`loadtest --target … --mock-agent-listen … --relay-pid …`, the ElevenLabs
dialect), pinned to CPU 1 with --pin (`taskset`).

    python3 loadtest/recording_bench.py                      # 200 calls, 3 pairs (~4 min)
    python3 loadtest/recording_bench.py --calls 100 --repeat 1 --window 10   # quicker

Python 3 standard library only; builds the release binaries first (into $CARGO_TARGET_DIR
if set). Everything runs on 127.0.0.1. Writes each run's JSON and the summary under --out.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(a, setting, i, out):
    """One harness run against a relay this script starts (so that it can end it with
    SIGTERM and let the drain finish every recording). Returns the relay report, and for
    "on" the recording directory and whether the relay exited cleanly within the drain."""
    port, agent_port = free_port(), free_port()
    env = dict(os.environ)
    env.pop("RELAY_RECORD", None)
    env.update({"RUST_LOG": "warn", "RELAY_INSECURE_SKIP_TWILIO_SIGNATURE": "true"})
    env.pop("TWILIO_AUTH_TOKEN", None)
    rec_dir = None
    if setting == "on":
        rec_dir = tempfile.mkdtemp(prefix="relay-rec-bench-")
        env["RELAY_RECORD"] = "all"
        env["RELAY_RECORDING_DIR"] = rec_dir
    relay_cmd = [os.path.join(TARGET, "release", "media-relay"), "serve",
                 "--listen", f"127.0.0.1:{port}", "--agent", "elevenlabs",
                 "--elevenlabs-api-base", f"http://127.0.0.1:{agent_port}",
                 "--elevenlabs-agent-id", "loadtest", "--drain-timeout-secs", "10"]
    if a.pin:
        relay_cmd = ["taskset", "-c", "1"] + relay_cmd
    relay_log = open(os.path.join(out, f"{setting}-{i}.relay.log"), "w")
    relay = subprocess.Popen(relay_cmd, env=env, stdout=relay_log, stderr=subprocess.STDOUT,
                             cwd=ROOT)
    try:
        deadline = time.time() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or relay.poll() is not None:
                    raise RuntimeError(f"the relay did not start (see {relay_log.name})")
                time.sleep(0.05)
        report = os.path.join(out, f"{setting}-{i}.json")
        cmd = [os.path.join(TARGET, "release", "loadtest"),
               "--target", f"ws://127.0.0.1:{port}/media",
               "--mock-agent-listen", f"127.0.0.1:{agent_port}",
               "--relay-pid", str(relay.pid), "--no-floor",
               "--mode", "conversation", "--calls", str(a.calls), "--ramp-per-sec", "50",
               "--duration-secs", str(a.window), "--json", report]
        with open(os.path.join(out, f"{setting}-{i}.txt"), "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            clean = relay.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
            clean = False
        relay_log.close()
    with open(report) as f:
        return json.load(f)["relay"], rec_dir, clean


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
    p.add_argument("--pin", action="store_true", help="pin the relay to CPU 1 (taskset)")
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
            r, rec_dir, clean = run(a, setting, i, a.out)
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
                line += (f"; recordings {n} (.part {parts}), {size / 1e6:.1f} MB, {secs:.0f} s; "
                         f"relay {'drained' if clean else 'did NOT exit cleanly'}")
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

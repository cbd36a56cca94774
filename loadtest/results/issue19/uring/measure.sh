#!/bin/sh
# Issue 19, item 4: the io_uring data plane (`--runtime uring`) beside the epoll layouts, all
# from one binary built with the feature, in one session, one run after another:
#   cargo build --release -p media-relay -p loadtest --features media-relay/uring
#   sh loadtest/results/issue19/uring/measure.sh          # about 50 min on 2 cores
# STEPS picks a subset (gateway gateway500 perfstat harness capacity).
set -eu
OUT=$(dirname "$0")
ROOT=$(cd "$OUT/../../../.." && pwd)
BIN=${BIN:-$ROOT/target/release/media-relay}
LT=${LT:-$ROOT/target/release/loadtest}
LAYOUTS=${LAYOUTS:-multi-thread per-core uring}
GATEWAY="--pacing lockstep --agent-process separate --agent-ping-ms 1000 --pin none"
log() { echo "== $* $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
STEPS=${STEPS:-gateway gateway500 perfstat harness capacity}
for step in $STEPS; do case $step in
gateway)   # 150 calls, 2 workers, ElevenLabs and OpenAI, 3 alternating relay/floor pairs
  for l in $LAYOUTS; do log "gateway-150 $l"
    RELAY_RUNTIME=$l python3 "$ROOT/loadtest/perf_dialects.py" --shapes gateway \
      --dialects elevenlabs openai --relay-bin "$BIN" --out "$OUT/gateway-150-$l"; done ;;
gateway500)
  for l in $LAYOUTS; do log "gateway-500 $l"
    RELAY_RUNTIME=$l python3 "$ROOT/loadtest/perf_dialects.py" --shapes gateway \
      --dialects elevenlabs --gateway-calls 500 --relay-bin "$BIN" --out "$OUT/gateway-500-$l"; done ;;
perfstat)  # system calls and context switches per relayed frame, one pair each
  for l in $LAYOUTS; do log "perfstat $l"
    RELAY_RUNTIME=$l "$LT" --spawn --relay-bin "$BIN" --calls 150 --duration-secs 20 --repeat 1 \
      $GATEWAY --perf-stat --json "$OUT/perfstat-gateway-150-$l.json" \
      > "$OUT/perfstat-gateway-150-$l.txt" 2>&1; done ;;
harness)   # our own shape: per-call pacing, pinned (one worker), echo and conversation
  for l in per-core uring; do log "harness $l"
    RELAY_RUNTIME=$l python3 "$ROOT/loadtest/perf_dialects.py" --shapes harness \
      --dialects elevenlabs openai --relay-bin "$BIN" --out "$OUT/harness-$l"; done ;;
capacity)  # relay pinned to CPU 1, harness on CPU 0, one-way p99 <= 2 ms and no loss
  for l in per-core uring; do log "capacity $l"
    RELAY_RUNTIME=$l "$LT" --spawn --relay-bin "$BIN" --pin --calls 450 --capacity-step 150 \
      --max-calls 1350 --duration-secs 10 --find-capacity --no-floor \
      --json "$OUT/capacity-$l.json" > "$OUT/capacity-$l.txt" 2>&1; done ;;
esac; done
log done

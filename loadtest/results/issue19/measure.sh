#!/bin/sh
# Issue 19, item 1: the outside tester's load shape (lockstep pacing, the agent in a separate
# process pinging every second, unpinned, alternating relay/floor pairs) at 150 calls, for the
# relay at HEAD and the baseline 04e1b09, plus the shape's factors one at a time.
#   LT=/tmp/lt-target/release/loadtest CUR=/tmp/media-relay-<rev> BASE=/work/baseline/media-relay-04e1b09 \
#     sh loadtest/results/issue19/measure.sh
set -eu
OUT=$(dirname "$0")
LT=${LT:-/tmp/lt-target/release/loadtest}
CUR=${CUR:?relay binary under test}
BASE=${BASE:-/work/baseline/media-relay-04e1b09}
REPEAT=${REPEAT:-3}
COMMON="--spawn --calls 150 --duration-secs 20 --repeat $REPEAT"
GATEWAY="--pacing lockstep --agent-process separate --agent-ping-ms 1000"
run() { # name relay-bin args...
  name=$1; bin=$2; shift 2
  echo "== $name $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  { echo "\$ loadtest $COMMON --relay-bin $bin $*"; echo "# load before: $(cat /proc/loadavg)";
    $LT $COMMON --relay-bin "$bin" "$@" --json "$OUT/$name.json" 2>&1 | grep -v '^\s*$';
    echo "# load after: $(cat /proc/loadavg)"; } > "$OUT/$name.txt"
  grep -E "pair|median" "$OUT/$name.txt" || true
}
STEPS=${STEPS:-gateway factors perf gateway2}
for step in $STEPS; do case $step in
gateway)
  run gateway-cur-1 "$CUR" $GATEWAY --pin none
  run gateway-base-1 "$BASE" $GATEWAY --pin none
  run gateway-cur-2 "$CUR" $GATEWAY --pin none
  run gateway-base-2 "$BASE" $GATEWAY --pin none ;;
gateway2)
  run gateway-cur-3 "$CUR" $GATEWAY --pin none
  run gateway-base-3 "$BASE" $GATEWAY --pin none ;;
factors)
  run harness-unpinned-cur "$CUR" --pin none
  run harness-pinned-cur "$CUR" --pin relay
  run lockstep-inprocess-cur "$CUR" --pacing lockstep --pin none
  run percall-separate-cur "$CUR" --agent-process separate --agent-ping-ms 1000 --pin none
  run gateway-pinned-cur "$CUR" $GATEWAY --pin relay ;;
perf)
  REPEAT=1 COMMON="--spawn --calls 150 --duration-secs 20 --repeat 1"
  run perf-gateway-cur "$CUR" $GATEWAY --pin none --perf-stat
  run perf-gateway-base "$BASE" $GATEWAY --pin none --perf-stat
  run perf-harness-pinned-cur "$CUR" --pin relay --perf-stat ;;
esac; done

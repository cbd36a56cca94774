#!/usr/bin/env bash
# End-to-end test of grafana/: dashboards, alert rules and scrape config against a live relay.
#
#   grafana/test/e2e.sh            # from anywhere; needs cargo, python3, apt (for promtool)
#
# 1. installs Prometheus (Debian package `prometheus`) if promtool/prometheus are missing,
#    without starting its service;
# 2. builds the release binaries (cargo build --release -p media-relay -p loadtest;
#    E2E_SKIP_BUILD=1 skips it);
# 3. starts the relay on 127.0.0.1 (free port) pointed at the load harness's mock ElevenLabs
#    agent, plus a mock AssemblyAI agent, a tool webhook and a closed port for OpenAI (all
#    served on 127.0.0.1 by e2e_traffic.py), with --start-timeout-secs 1,
#    --header-read-timeout-ms 3000 and --early-audio-ms 400 (so the extra traffic can end a
#    call by start timeout, time out a request head and overflow the early-audio buffer);
# 4. scrapes /metrics before any traffic (which families exist at start-up);
# 5. starts Prometheus on 127.0.0.1 with grafana/prometheus.yml rewritten to the relay's port,
#    a 2 s scrape/evaluation interval and the absolute path of grafana/alerts/media-relay.rules.yml;
# 6. runs ~55 s of load: loadtest --mode conversation --barge-in (ElevenLabs dialect) and,
#    meanwhile, e2e_traffic.py (start_timeout, bad_request, agent_connect_failed, a
#    duplicate stream, a header timeout, two AssemblyAI calls with turns, a slow session
#    start, tool calls, DTMF, bad input and missing frames, HTTP callbacks);
# 7. waits until Prometheus has scraped the end of the load, runs `promtool check metrics` on
#    a final /metrics scrape, `promtool check rules` / `check config`, and checks that the
#    dashboards are in sync with gen_dashboards.py;
# 8. evaluates EVERY dashboard target expression and variable query ($__rate_interval and
#    $__range replaced by a window covering the whole run, $instance/$agent by .*) and every
#    alert rule (its full expression, and the left-hand side of each operand: the signal it
#    thresholds) through /api/v1/query; fails if one is invalid or returns no series, if a
#    rule is unhealthy, or if an expression names a metric the relay does not expose.
#    Each expression is evaluated twice, mid-load and after the load, and the more informative
#    result counts (gauges are non-zero mid-load, per-call histograms after the calls ended).
#    E2E_STRICT=1 also fails on expressions that return only NaN (histograms without
#    observations) and on documented families absent from /metrics at start-up.
#
# Everything listens on and talks to 127.0.0.1. Artefacts (logs, scrapes, results.tsv) go to
# target/grafana-e2e/. Processes started here are stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
HERE=$ROOT/grafana/test
WORK=${E2E_WORK:-$ROOT/target/grafana-e2e}
LOAD_SECS=${E2E_LOAD_SECS:-50}   # loadtest steady window; ramp + settle add ~3 s
CALLS=${E2E_CALLS:-20}
SCRAPE=2s
STRICT=${E2E_STRICT:-0}
PY=${PYTHON:-python3}
CHECK="$PY $HERE/e2e_check.py"
T0=$(date +%s)
FAILED=0

phase() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { echo "FAIL: $*" >&2; FAILED=1; }

PIDS=()
POLICY_RC_CREATED=0
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$POLICY_RC_CREATED" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

rm -rf "$WORK"
mkdir -p "$WORK"

# --- 1. Prometheus -------------------------------------------------------------------------
phase "tools"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "installing the Debian package prometheus (service not started)"
  # Keep the package's init scripts from starting a system Prometheus: we run our own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends prometheus >"$WORK/apt.log" 2>&1 \
    || { $SUDO apt-get update >>"$WORK/apt.log" 2>&1 \
         && $SUDO apt-get install -y --no-install-recommends prometheus >>"$WORK/apt.log" 2>&1; } \
    || { tail -20 "$WORK/apt.log"; echo "apt-get install prometheus failed" >&2; exit 1; }
fi
prometheus --version 2>&1 | head -1
$PY --version

# --- 2. build ------------------------------------------------------------------------------
if [ "${E2E_SKIP_BUILD:-0}" != 1 ]; then
  phase "cargo build --release -p media-relay -p loadtest"
  cargo build --release -p media-relay -p loadtest
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RELAY_BIN=$TARGET_DIR/release/media-relay
LOADTEST_BIN=$TARGET_DIR/release/loadtest
[ -x "$RELAY_BIN" ] && [ -x "$LOADTEST_BIN" ] || { echo "binaries missing in $TARGET_DIR/release" >&2; exit 1; }

# --- 3. relay --------------------------------------------------------------------------------
phase "relay"
read -r RELAY_PORT AGENT_PORT PROM_PORT AAI_PORT HOOK_PORT CLOSED_PORT < <($CHECK free-ports 6)
RELAY=127.0.0.1:$RELAY_PORT
PROM=http://127.0.0.1:$PROM_PORT
echo "relay $RELAY, loadtest mock agent :$AGENT_PORT, prometheus :$PROM_PORT," \
     "assemblyai mock :$AAI_PORT, tool webhook :$HOOK_PORT, openai (closed) :$CLOSED_PORT"
env -u TWILIO_AUTH_TOKEN -u ELEVENLABS_API_KEY -u RELAY_API_TOKEN -u RELAY_TOOL_WEBHOOK_SECRET \
  RUST_LOG=${E2E_RELAY_LOG:-info} \
  "$RELAY_BIN" serve \
    --listen "$RELAY" \
    --agent elevenlabs --elevenlabs-agent-id loadtest \
    --elevenlabs-api-base "http://127.0.0.1:$AGENT_PORT" \
    --assemblyai-api-key e2e --assemblyai-url "ws://127.0.0.1:$AAI_PORT/v1/ws" \
    --openai-api-key e2e --openai-realtime-url "ws://127.0.0.1:$CLOSED_PORT/v1/realtime?model=e2e" \
    --tool-webhook-url "http://127.0.0.1:$HOOK_PORT/tools" \
    --insecure-skip-twilio-signature \
    --start-timeout-secs 1 \
    --header-read-timeout-ms 3000 \
    --early-audio-ms 400 \
    --max-calls 100 \
    --max-agent-recoveries 0 \
    >"$WORK/relay.log" 2>&1 &
# (--max-agent-recoveries 0: the connect_failed traffic expects the failed call to end at once,
# as before agent-failure continuity; with it on, the caller would hold for the recovery.)
RELAY_PID=$!
PIDS+=("$RELAY_PID")
$CHECK wait-http "http://$RELAY/healthz" 20 || { tail -20 "$WORK/relay.log"; exit 1; }

# --- 4. /metrics at start-up ------------------------------------------------------------------
phase "/metrics before any traffic"
$CHECK fetch "http://$RELAY/metrics" "$WORK/metrics-start.txt"
START_ARGS=()
[ "$STRICT" = 1 ] && START_ARGS+=(--strict)
$CHECK families "$WORK/metrics-start.txt" "${START_ARGS[@]}" || fail "documented families absent at start-up (E2E_STRICT)"

# --- 5. Prometheus -------------------------------------------------------------------------
phase "prometheus"
RULES=$ROOT/grafana/alerts/media-relay.rules.yml
$CHECK prom-config "$ROOT/grafana/prometheus.yml" "$WORK/prometheus.yml" "$RELAY" "$RULES" "$SCRAPE"
promtool check config "$WORK/prometheus.yml" >"$WORK/promtool-config.log" 2>&1 \
  || { cat "$WORK/promtool-config.log"; exit 1; }
prometheus --config.file="$WORK/prometheus.yml" \
  --storage.tsdb.path="$WORK/prom-data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" \
  --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=("$!")
$CHECK wait-http "$PROM/-/ready" 30 || { tail -20 "$WORK/prometheus.log"; exit 1; }
sleep 5   # a few scrapes of the idle relay: every counter has a 0 sample before the load

# --- 6. load -------------------------------------------------------------------------------
phase "load: $CALLS conversation calls with barge-in for ${LOAD_SECS}s + extra traffic"
LOAD_T0=$(date +%s)
"$LOADTEST_BIN" --target "ws://$RELAY/media" --mock-agent-listen "127.0.0.1:$AGENT_PORT" \
  --relay-pid "$RELAY_PID" --calls "$CALLS" --ramp-per-sec 10 --duration-secs "$LOAD_SECS" \
  --mode conversation --barge-in --no-floor --json "$WORK/loadtest.json" \
  >"$WORK/loadtest.out" 2>"$WORK/loadtest.err" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
sleep 5
TRAFFIC_RC=0
$PY "$HERE/e2e_traffic.py" --relay "$RELAY" --assemblyai-port "$AAI_PORT" \
  --webhook-port "$HOOK_PORT" 2>&1 | tee "$WORK/traffic.log" || TRAFFIC_RC=$?
[ "$TRAFFIC_RC" = 0 ] || fail "e2e_traffic.py scenarios failed (see above)"
sleep 4
MID_T=$(date +%s)   # load still running: gauges (active calls, capacity) are non-zero here
LOAD_RC=0
wait "$LOAD_PID" || LOAD_RC=$?
if [ "$LOAD_RC" != 0 ]; then
  tail -20 "$WORK/loadtest.err"
  fail "loadtest exited with $LOAD_RC"
fi
sed -n '1,40p' "$WORK/loadtest.out"

# --- 7. final scrape, promtool ---------------------------------------------------------------
phase "final /metrics scrape, promtool checks"
sleep 1
$CHECK fetch "http://$RELAY/metrics" "$WORK/metrics-end.txt"
$CHECK wait-scraped "$PROM" "$WORK/metrics-end.txt" --secs 30 || fail "Prometheus did not scrape the end of the load"
sleep 3   # one more rule evaluation on the final data
$CHECK families "$WORK/metrics-end.txt" --end || true
if promtool check metrics <"$WORK/metrics-end.txt" >"$WORK/promtool-metrics.log" 2>&1; then
  echo "promtool check metrics: ok ($(wc -l <"$WORK/metrics-end.txt") lines)"
else
  cat "$WORK/promtool-metrics.log"; fail "promtool check metrics"
fi
RULES_OUT=$(promtool check rules "$RULES" 2>&1) || { echo "$RULES_OUT"; fail "promtool check rules"; }
echo "$RULES_OUT"
N_RULES=$(echo "$RULES_OUT" | sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p')
promtool check config "$ROOT/grafana/prometheus.yml" >"$WORK/promtool-repo-config.log" 2>&1 \
  || { cat "$WORK/promtool-repo-config.log"; fail "promtool check config grafana/prometheus.yml"; }
$PY "$ROOT/grafana/gen_dashboards.py" --check || fail "dashboards out of date with gen_dashboards.py"
if $PY -c 'import yaml' 2>/dev/null; then
  $PY - "$ROOT/grafana" <<'EOF' || fail "YAML files do not parse"
import sys, yaml, pathlib
for p in ["docker-compose.yml", "provisioning/datasources/prometheus.yml",
          "provisioning/dashboards/media-relay.yml"]:
    yaml.safe_load(open(pathlib.Path(sys.argv[1]) / p))
print("compose and provisioning YAML parse")
EOF
fi

# --- 8. every expression ---------------------------------------------------------------------
WINDOW=$(( $(date +%s) - LOAD_T0 + 15 ))s
phase "evaluating every expression (window $WINDOW for \$__rate_interval and \$__range)"
EVAL_ARGS=()
[ "$STRICT" = 1 ] && EVAL_ARGS+=(--strict)
$CHECK evaluate --prom "$PROM" --dashboards "$ROOT/grafana/dashboards" --rules "$RULES" \
  --expect-rules "${N_RULES:-0}" --metrics "$WORK/metrics-end.txt" --window "$WINDOW" \
  --interval "$SCRAPE" --also-at "$MID_T" --out "$WORK/results.tsv" "${EVAL_ARGS[@]}" \
  || fail "expression checks"

phase "done in $(( $(date +%s) - T0 ))s; artefacts in ${WORK#"$ROOT"/}"
if [ "$FAILED" != 0 ]; then
  echo "E2E FAILED" >&2
  exit 1
fi
echo "E2E PASSED"

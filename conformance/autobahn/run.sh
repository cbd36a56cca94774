#!/usr/bin/env bash
# Run the Autobahn TestSuite against media-relay's own WebSocket framing
# in both roles and summarize. See README.md next to this file.
#
# Environment (all optional):
#   AUTOBAHN_VENV         wstest venv (default <repo>/target/autobahn-venv)
#   AUTOBAHN_SERVER_PORT  port of our echo server         (default 9001)
#   AUTOBAHN_CLIENT_PORT  port of the wstest fuzzingserver (default 9002)
#   AUTOBAHN_SUMMARY_OUT  Markdown summary path (default conformance/autobahn/summary.md)
#   AUTOBAHN_TIMEOUT      per-mode time limit in seconds (default 1200)
#   AUTOBAHN_SKIP_BUILD=1 don't run cargo; use AUTOBAHN_SERVER_BIN / AUTOBAHN_CLIENT_BIN
#   AUTOBAHN_SERVER_BIN, AUTOBAHN_CLIENT_BIN  binaries under test
#                         (default <target>/release/examples/autobahn_{server,client})
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO"

AGENT="media-relay"
HOST="127.0.0.1"
SERVER_PORT="${AUTOBAHN_SERVER_PORT:-9001}"
CLIENT_PORT="${AUTOBAHN_CLIENT_PORT:-9002}"
VENV="${AUTOBAHN_VENV:-$REPO/target/autobahn-venv}"
export AUTOBAHN_VENV="$VENV"
TIMEOUT="${AUTOBAHN_TIMEOUT:-1200}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
SERVER_BIN="${AUTOBAHN_SERVER_BIN:-$TARGET_DIR/release/examples/autobahn_server}"
CLIENT_BIN="${AUTOBAHN_CLIENT_BIN:-$TARGET_DIR/release/examples/autobahn_client}"
REPORTS="$REPO/target/autobahn-reports"
SUMMARY_OUT="${AUTOBAHN_SUMMARY_OUT:-$HERE/summary.md}"
PY3="$(command -v python3)" || { echo "run.sh: python3 not found" >&2; exit 1; }

log() { echo "[autobahn] $*" >&2; }

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop one background process we started, by pid
stop() {
    local pid="$1"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait until HOST:$1 accepts a TCP connection, while pid $2 is alive
wait_port() {
    local port="$1" pid="$2" what="$3"
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { log "$what exited before listening on $HOST:$port"; return 1; }
        if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "$what did not listen on $HOST:$port within 30 s"
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# write an effective wstest spec: committed spec + this run's port and outdir
render_spec() {
    local src="$1" dst="$2" port="$3" outdir="$4"
    "$PY3" - "$src" "$dst" "$port" "$outdir" "$AGENT" "$HOST" <<'EOF'
import json, sys
src, dst, port, outdir, agent, host = sys.argv[1:]
spec = json.load(open(src))
spec["outdir"] = outdir
url = "ws://%s:%s" % (host, port)
if "servers" in spec:
    for s in spec["servers"]:
        s["url"] = url
        s["agent"] = agent
else:
    spec["url"] = url
json.dump(spec, open(dst, "w"), indent=3)
EOF
}

# run a command under the per-mode time limit; in the background + wait so
# that INT/TERM reach the trap at once instead of after the command ends
run_bounded() {
    local out="$1"; shift
    timeout "$TIMEOUT" "$@" >"$out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"
}

FAIL=0
fail() { log "FAIL: $*"; FAIL=1; }

# (a) wstest
bash "$HERE/install.sh"
WSTEST=("$VENV/bin/python" "$HERE/wstest_loopback.py")

# (b) binaries under test
if [[ "${AUTOBAHN_SKIP_BUILD:-0}" != 1 ]]; then
    log "building examples autobahn_server, autobahn_client"
    cargo build --release --example autobahn_server --example autobahn_client
fi
for b in "$SERVER_BIN" "$CLIENT_BIN"; do
    [[ -x "$b" ]] || { log "missing binary under test: $b"; exit 1; }
done

rm -rf "$REPORTS/server" "$REPORTS/client"
mkdir -p "$REPORTS"
render_spec "$HERE/fuzzingclient.json" "$REPORTS/fuzzingclient.json" "$SERVER_PORT" "$REPORTS/server"
render_spec "$HERE/fuzzingserver.json" "$REPORTS/fuzzingserver.json" "$CLIENT_PORT" "$REPORTS/client"

# (c) server role: wstest fuzzingclient -> our echo server
port_free "$SERVER_PORT" || { log "$HOST:$SERVER_PORT is already in use"; exit 1; }
log "server role: starting $SERVER_BIN $HOST:$SERVER_PORT"
"$SERVER_BIN" "$HOST:$SERVER_PORT" >"$REPORTS/autobahn_server.log" 2>&1 &
SRV=$!; PIDS+=("$SRV")
if wait_port "$SERVER_PORT" "$SRV" "autobahn_server"; then
    t0=$SECONDS
    log "server role: wstest -m fuzzingclient (log: $REPORTS/fuzzingclient.log)"
    if ! run_bounded "$REPORTS/fuzzingclient.log" \
            "${WSTEST[@]}" -m fuzzingclient -s "$REPORTS/fuzzingclient.json"; then
        fail "wstest fuzzingclient exited non-zero or timed out after ${TIMEOUT}s"
        tail -n 20 "$REPORTS/fuzzingclient.log" >&2 || true
    fi
    log "server role: fuzzingclient took $((SECONDS - t0)) s"
    kill -0 "$SRV" 2>/dev/null || fail "autobahn_server died during the run (see $REPORTS/autobahn_server.log)"
else
    fail "autobahn_server did not start"
fi
stop "$SRV"

# (d) client role: our client -> wstest fuzzingserver
port_free "$CLIENT_PORT" || { log "$HOST:$CLIENT_PORT is already in use"; exit 1; }
log "client role: starting wstest -m fuzzingserver on $HOST:$CLIENT_PORT (log: $REPORTS/fuzzingserver.log)"
"${WSTEST[@]}" -m fuzzingserver -s "$REPORTS/fuzzingserver.json" --webport 0 \
    >"$REPORTS/fuzzingserver.log" 2>&1 &
FZS=$!; PIDS+=("$FZS")
if wait_port "$CLIENT_PORT" "$FZS" "wstest fuzzingserver"; then
    t0=$SECONDS
    log "client role: $CLIENT_BIN ws://$HOST:$CLIENT_PORT $AGENT"
    if ! run_bounded "$REPORTS/autobahn_client.log" \
            "$CLIENT_BIN" "ws://$HOST:$CLIENT_PORT" "$AGENT"; then
        fail "autobahn_client exited non-zero or timed out after ${TIMEOUT}s (see $REPORTS/autobahn_client.log)"
        tail -n 20 "$REPORTS/autobahn_client.log" >&2 || true
    fi
    log "client role: took $((SECONDS - t0)) s"
else
    fail "wstest fuzzingserver did not start"
fi
stop "$FZS"

# (e) summary; --expect makes cases that never produced a result count as failures
log "summary -> $SUMMARY_OUT"
if ! "$PY3" "$HERE/summarize.py" --agent "$AGENT" --out "$SUMMARY_OUT" \
        --expect "server=$REPORTS/fuzzingclient.log" --expect "client=$REPORTS/fuzzingserver.log" \
        "server=$REPORTS/server" "client=$REPORTS/client"; then
    fail "summary reports failures"
fi

if [[ $FAIL -ne 0 ]]; then
    log "Autobahn conformance: FAILED (reports and logs in $REPORTS)"
    exit 1
fi
log "Autobahn conformance: passed (HTML reports: $REPORTS/{server,client}/index.html)"

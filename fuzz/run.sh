#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS_PER_TARGET (default 20) on a scratch copy
# of its seed corpus (fuzz/seeds/<target>, never modified). Exits non-zero if any target
# crashed, printing the crashing input (kept under fuzz/artifacts/<target>/, not committed)
# and the command that reproduces it.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Environment: FUZZ_TARGETS (space-separated, default: all), FUZZ_SKIP_KNOWN (checks of known,
# reported bugs to skip, see fuzz/README.md; unset in CI), FUZZ_LOG_DIR (default a temp dir).
# Long runs: see fuzz/README.md ("Long runs").
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.1
SECONDS_PER_TARGET=${1:-20}
shift || true
cd "$(dirname "$0")"
FUZZ_DIR=$(pwd)

if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly Rust toolchain is required (cargo-fuzz needs -Zsanitizer)" >&2
    exit 2
fi
if ! cargo fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
    echo "== installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
    cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked
fi

ALL_TARGETS=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^media-relay-fuzz$')
if [[ $# -gt 0 ]]; then
    TARGETS="$*"
else
    TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
fi

echo "== building fuzz targets (nightly, AddressSanitizer)"
build_start=$(date +%s)
cargo +nightly fuzz build
echo "== built in $(( $(date +%s) - build_start ))s"

BIN_DIR=$FUZZ_DIR/target/x86_64-unknown-linux-gnu/release
LOG_DIR=${FUZZ_LOG_DIR:-$(mktemp -d -t media-relay-fuzz.XXXXXX)}
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d -t media-relay-fuzz-corpus.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

failed=()
summary=()
for t in $TARGETS; do
    [[ -x $BIN_DIR/$t ]] || { echo "unknown target: $t" >&2; exit 2; }
    corpus=$WORK/$t
    mkdir -p "$corpus" "$FUZZ_DIR/artifacts/$t"
    cp "$FUZZ_DIR/seeds/$t/"* "$corpus/" 2>/dev/null || true
    # Inputs that once found a bug (fixed since) start every run too.
    cp "$FUZZ_DIR/regressions/$t/"* "$corpus/" 2>/dev/null || true
    log=$LOG_DIR/$t.log
    echo "== $t: ${SECONDS_PER_TARGET}s (log: $log)"
    set +e
    "$BIN_DIR/$t" "$corpus" \
        -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="$FUZZ_DIR/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    units=$(find "$corpus" -type f | wc -l)
    if [[ $rc -eq 0 ]]; then
        summary+=("$(printf '%-16s ok      %10s execs  %5s corpus files' "$t" "${execs:-?}" "$units")")
        continue
    fi
    failed+=("$t")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    summary+=("$(printf '%-16s CRASHED %10s execs  %s' "$t" "${execs:-?}" "${artifact:-see log}")")
    echo "!! $t crashed (exit $rc):"
    grep -E -A4 "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | head -24 || true
    if [[ -n $artifact ]]; then
        echo "!! crashing input: $artifact"
        echo "!! reproduce:      (cd $FUZZ_DIR && cargo +nightly fuzz run $t $artifact)"
        echo "!! minimise:       (cd $FUZZ_DIR && cargo +nightly fuzz tmin $t $artifact)"
    else
        echo "!! no artifact written; full log: $log"
    fi
done

echo "== summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== FAILED: ${failed[*]}"
    exit 1
fi
echo "== all fuzz targets ran without a crash"

#!/usr/bin/env bash
# Install the Autobahn TestSuite (`wstest`, Python 2.7 only) into a private
# virtualenv.  Idempotent: does nothing if the venv already has a working
# wstest built from the current requirements-py27.txt.
#
#   AUTOBAHN_VENV     venv location (default: <repo>/target/autobahn-venv)
#   AUTOBAHN_PYTHON27 explicit python2.7 interpreter (optional; otherwise
#                     $PYENV_ROOT, then `pyenv root`, then python2.7 on PATH)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${AUTOBAHN_VENV:-$REPO/target/autobahn-venv}"
REQS="$HERE/requirements-py27.txt"
VIRTUALENV_PIN="virtualenv==16.7.12" # last release that runs on and seeds py2.7 without extra deps
WSTEST_VERSION="$(sed -n 's/^autobahntestsuite==//p' "$REQS")"

log() { echo "[autobahn/install] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

reqs_hash() { sha256sum "$REQS" | cut -d' ' -f1; }

venv_ok() {
    [[ -x "$VENV/bin/wstest" && -f "$VENV/.autobahn-reqs.sha256" ]] || return 1
    [[ "$(cat "$VENV/.autobahn-reqs.sha256")" == "$(reqs_hash)" ]] || return 1
    "$VENV/bin/wstest" --autobahnversion 2>/dev/null | grep -qx "AutobahnTestSuite $WSTEST_VERSION"
}

if venv_ok; then
    log "wstest $WSTEST_VERSION already installed in $VENV"
    exit 0
fi

is_py27() {
    [[ -n "$1" && -x "$1" ]] || return 1
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1
}

# newest 2.7.x under a pyenv root
from_pyenv_root() {
    local root="$1" c
    [[ -n "$root" && -d "$root/versions" ]] || return 1
    while read -r c; do
        if is_py27 "$c"; then echo "$c"; return 0; fi
    done < <(ls -d "$root"/versions/2.7*/bin/python2.7 2>/dev/null | sort -rV)
    return 1
}

find_python27() {
    local c
    if [[ -n "${AUTOBAHN_PYTHON27:-}" ]]; then
        is_py27 "$AUTOBAHN_PYTHON27" && { echo "$AUTOBAHN_PYTHON27"; return 0; }
        die "AUTOBAHN_PYTHON27=$AUTOBAHN_PYTHON27 is not a working Python 2.7"
    fi
    if [[ -n "${PYENV_ROOT:-}" ]] && c="$(from_pyenv_root "$PYENV_ROOT")"; then echo "$c"; return 0; fi
    if command -v pyenv >/dev/null 2>&1 && c="$(from_pyenv_root "$(pyenv root 2>/dev/null)")"; then
        echo "$c"; return 0
    fi
    c="$(command -v python2.7 2>/dev/null || true)"
    if is_py27 "$c"; then echo "$c"; return 0; fi
    return 1
}

PY27="$(find_python27)" || die "no Python 2.7 interpreter found.
  Looked in: \$PYENV_ROOT/versions/2.7*/ (PYENV_ROOT=${PYENV_ROOT:-unset}),
             \$(pyenv root)/versions/2.7*/, and python2.7 on PATH.
  The Autobahn TestSuite runs only on Python 2.7. Install one (e.g. 'pyenv install 2.7.18')
  or point AUTOBAHN_PYTHON27 at an interpreter."
log "using Python 2.7 at $PY27"

"$PY27" - <<'EOF' || log "WARNING: Python.h not found for this interpreter; building wsaccel will fail"
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 1)
EOF

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1

BOOT="$(mktemp -d "${TMPDIR:-/tmp}/autobahn-venv-boot.XXXXXX")"
cleanup() { rm -rf "$BOOT"; }
trap cleanup EXIT

# virtualenv goes into a throwaway --target dir so the base interpreter is
# left untouched.
log "bootstrapping $VIRTUALENV_PIN"
if ! boot_out="$("$PY27" -m pip install -q --no-deps --target "$BOOT" "$VIRTUALENV_PIN" 2>&1)"; then
    echo "$boot_out" >&2
    die "could not install $VIRTUALENV_PIN for $PY27"
fi

rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
log "creating virtualenv at $VENV"
PYTHONPATH="$BOOT" "$PY27" -m virtualenv --no-download -p "$PY27" "$VENV" >/dev/null \
    || die "virtualenv creation failed"

log "installing pinned requirements ($REQS)"
if ! "$VENV/bin/python" -m pip install -q --no-deps -r "$REQS"; then
    rm -rf "$VENV"
    die "pip install of the pinned requirements failed"
fi
if ! check_out="$("$VENV/bin/python" -m pip check 2>&1)"; then
    echo "$check_out" >&2
    rm -rf "$VENV"
    die "pip check: pinned set is inconsistent"
fi

reqs_hash > "$VENV/.autobahn-reqs.sha256"
venv_ok || { rm -rf "$VENV"; die "wstest does not run after install"; }
log "installed: $("$VENV/bin/wstest" --autobahnversion | tr '\n' ' ')"

#!/usr/bin/env bash
# Rolling-restart proof: three media-relay instances behind haproxy, replaced one at a time
# under continuous call load, plus the outbound-call check across instances (signed mode).
#   scale/rolling-restart.sh [--small] [--out DIR] [...]     (see scale/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scale/rolling_restart.py "$@"

#!/usr/bin/env bash
# Offline validation of the Kubernetes material in deploy/ (no cluster, no kustomize binary,
# no Docker). Run from anywhere:  bash deploy/validate.sh
#
#   1. venv with pinned tools (deploy/requirements.txt) under ${VENV:-<repo>/target/deploy-venv},
#      created once and reinstalled only when requirements.txt changes;
#   2. yamllint --strict (deploy/.yamllint.yaml) on every YAML file under deploy/kubernetes;
#   3. deploy/gen-prometheusrule.py --check: prometheusrule.yaml matches
#      grafana/alerts/media-relay.rules.yml (fails while the rules file is missing);
#   4. deploy/render.py renders the kustomize base (our own subset renderer, no kustomize);
#   5. deploy/check_resources.py: every rendered built-in resource against kubernetes-validate's
#      schemas for ${K8S_VERSIONS} in strict mode; ServiceMonitor / PrometheusRule against
#      hand-written schemas (kubernetes-validate cannot load CRD schemas; see that script);
#      then consistency rules (drain budget, HPA vs. adapter rule vs. RELAY_MAX_CALLS,
#      selectors, secrets, security context);
#   6. if kustomize or kubectl is installed: render.py's output must equal `kustomize build`.
# Every step runs even after a failure, so one run lists all problems; exit status 1 if any
# step failed.
#
# Environment: VENV, PYTHON (python3), K8S_VERSIONS ("1.30.0 1.37.0": the oldest supported,
# 1.30 for the preStop sleep action, and the newest the pinned kubernetes-validate knows),
# MEDIA_RELAY_RULES (rules file; default grafana/alerts/media-relay.rules.yml).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$ROOT/deploy"
BASE="$DEPLOY/kubernetes/base"
VENV="${VENV:-$ROOT/target/deploy-venv}"
PYTHON="${PYTHON:-python3}"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
RULES="${MEDIA_RELAY_RULES:-$ROOT/grafana/alerts/media-relay.rules.yml}"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- 1. venv ------------------------------------------------------------------------------
stamp="$VENV/.deploy-requirements.sha256"
want="$(sha256sum "$DEPLOY/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "== installing pinned tools (deploy/requirements.txt)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$DEPLOY/requirements.txt"
    echo "$want" > "$stamp"
fi
PY="$VENV/bin/python"

failed=()
step() {  # step NAME COMMAND...: run, report, remember failures, go on
    local name="$1"
    shift
    echo "== $name"
    if "$@" 2>&1; then
        echo "-- $name: ok"
    else
        echo "-- $name: FAILED"
        failed+=("$name")
    fi
}

# --- 2. yamllint --------------------------------------------------------------------------
mapfile -t yaml_files < <(find "$DEPLOY/kubernetes" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
step "yamllint (${#yaml_files[@]} files)" \
    "$VENV/bin/yamllint" --strict -c "$DEPLOY/.yamllint.yaml" "${yaml_files[@]}" "$DEPLOY/.yamllint.yaml"

# --- 3. PrometheusRule up to date ----------------------------------------------------------
rules_missing=""
if [ ! -f "$RULES" ]; then
    rules_missing="${RULES#"$ROOT/"} missing"
fi
step "gen-prometheusrule --check" "$PY" "$DEPLOY/gen-prometheusrule.py" --check --rules "$RULES"

# --- 4. render ----------------------------------------------------------------------------
# Until the rules exist there is no prometheusrule.yaml: render (and validate) everything else,
# the --check failure above already fails the run.
skip=()
if [ ! -f "$BASE/prometheusrule.yaml" ]; then
    skip=(--skip-missing prometheusrule.yaml)
fi
rendered="$TMP/rendered.yaml"
step "render base (deploy/render.py)" "$PY" "$DEPLOY/render.py" "${skip[@]}" -o "$rendered" "$BASE"

# --- 5. schemas + consistency --------------------------------------------------------------
if [ -s "$rendered" ]; then
    k8s_args=()
    for v in $K8S_VERSIONS; do k8s_args+=(--k8s "$v"); done
    step "validate resources (kubernetes-validate strict: $K8S_VERSIONS)" \
        "$PY" "$DEPLOY/check_resources.py" "$rendered" "${k8s_args[@]}" \
        --adapter-rules "$BASE/prometheus-adapter-rules.yaml"
fi

# --- 6. cross-check render.py against real kustomize, when there is one ---------------------
kustomize_cmd=()
if command -v kustomize >/dev/null 2>&1; then
    kustomize_cmd=(kustomize build)
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    kustomize_cmd=(kubectl kustomize)
fi
cross_check() {
    # A copy of the base without resource entries whose files are missing (prometheusrule.yaml
    # until the rules exist), built by both renderers and compared object by object.
    cp -r "$BASE" "$TMP/base"
    "$PY" - "$TMP/base/kustomization.yaml" <<'EOF'
import os, sys, yaml
path = sys.argv[1]
k = yaml.safe_load(open(path))
k["resources"] = [r for r in k.get("resources", [])
                  if os.path.exists(os.path.join(os.path.dirname(path), r))]
yaml.safe_dump(k, open(path, "w"), sort_keys=False)
EOF
    "${kustomize_cmd[@]}" "$TMP/base" > "$TMP/kustomize.yaml" || return 1
    "$PY" "$DEPLOY/render.py" -o "$TMP/render.yaml" "$TMP/base" || return 1
    "$PY" - "$TMP/render.yaml" "$TMP/kustomize.yaml" <<'EOF'
import sys, yaml
def load(p):
    return {(d["apiVersion"], d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(open(p)) if d}
ours, theirs = load(sys.argv[1]), load(sys.argv[2])
bad = 0
for key in sorted(set(ours) | set(theirs)):
    if ours.get(key) != theirs.get(key):
        bad += 1
        print("differs: %s %s %s (render.py: %s, kustomize: %s)"
              % (key + ("present" if key in ours else "absent",
                        "present" if key in theirs else "absent")))
print("%d objects compared, %d differ" % (len(set(ours) | set(theirs)), bad))
sys.exit(1 if bad else 0)
EOF
}
if [ ${#kustomize_cmd[@]} -gt 0 ]; then
    step "render.py == ${kustomize_cmd[*]}" cross_check
else
    echo "== no kustomize/kubectl here: render.py cross-check skipped"
fi

# --- summary ------------------------------------------------------------------------------
echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "validate.sh: all checks passed"
    exit 0
fi
echo "validate.sh: ${#failed[@]} check(s) FAILED:"
for f in "${failed[@]}"; do echo "  - $f"; done
if [ -n "$rules_missing" ]; then
    echo "  ($rules_missing: the PrometheusRule is generated from it. Write the rules, then run"
    echo "   python3 deploy/gen-prometheusrule.py, with PyYAML from $VENV/bin/python)"
fi
exit 1

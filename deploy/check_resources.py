#!/usr/bin/env python3
"""Validate rendered media-relay manifests offline (run by deploy/validate.sh).

  check_resources.py RENDERED.yaml --k8s 1.30.0 [--k8s 1.37.0 ...] --adapter-rules FILE

1. Built-in kinds: kubernetes-validate's bundled JSON schemas for every --k8s version, strict
   (unknown fields are errors). Unlike the kubernetes-validate CLI, which only WARNs and exits 0
   when it has no schema for a kind, a missing schema is an error here.
2. CRD kinds (ServiceMonitor, PrometheusRule): kubernetes-validate has no schemas for them and
   cannot be pointed at extra schemas (it reads only the ones in its package), and the Prometheus
   Operator's CRDs are not fetched by this offline script. So they are checked against the small,
   hand-written JSON schemas below (jsonschema, which kubernetes-validate depends on). They
   follow the monitoring.coreos.com/v1 CRD field names and types for the fields this base uses,
   and reject any other field: an overlay that needs more must extend them.
3. Consistency rules that tie the manifests to each other and to the relay (drain budget,
   HPA metric vs. adapter rule vs. RELAY_MAX_CALLS, selectors, secrets, security context).
Exit status 1 on any problem.
"""

import argparse
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

PROM_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
RELABEL_CONFIG = {"type": "object"}  # not used by the base; any relabeling object is accepted

SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                    "additionalProperties": False,
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": PROM_DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": PROM_DURATION},
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": RELABEL_CONFIG},
                            "metricRelabelings": {"type": "array", "items": RELABEL_CONFIG},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

PROMETHEUSRULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": PROM_DURATION},
                            "query_offset": {"type": "string", "pattern": PROM_DURATION},
                            "limit": {"type": "integer"},
                            "labels": STRING_MAP,
                            "partial_response_strategy": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": {"type": "string", "minLength": 1},
                                        "record": {"type": "string", "minLength": 1},
                                        "expr": {"type": ["string", "integer"], "minLength": 1},
                                        "for": {"type": "string", "pattern": PROM_DURATION},
                                        "keep_firing_for": {"type": "string", "minLength": 1,
                                                            "pattern": PROM_DURATION},
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                    "additionalProperties": False,
                                    # exactly one of alert / record
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICEMONITOR_SCHEMA,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUSRULE_SCHEMA,
}

SECRET_NAME = "media-relay"
REQUIRED_SECRET_KEYS = {"twilio-auth-token", "relay-token-secret"}
SECRET_ENV_WORDS = ("TOKEN", "SECRET", "API_KEY", "PASSWORD")
DRAIN_NOTICE_MAX_SECS = 10  # the relay plays at most 10 s of notice
HARD_STOP_SECS = 3          # the relay's HARD_STOP_TIMEOUT


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, msg):
        self.items.append("%s: %s" % (where, msg))


def ident(res):
    return "%s/%s" % (res.get("kind"), (res.get("metadata") or {}).get("name"))


def selects(selector, labels):
    """A LabelSelector ({matchLabels}) or a Service's plain selector map, against labels."""
    if not selector:
        return False
    if "matchExpressions" in selector:
        return False  # the base uses matchLabels only; extend if an overlay needs more
    match = selector["matchLabels"] if "matchLabels" in selector else selector
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def schema_checks(docs, versions, problems):
    for res in docs:
        where = ident(res)
        key = (res.get("apiVersion"), res.get("kind"))
        if key in CRD_SCHEMAS:
            validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
            for err in sorted(validator.iter_errors(res), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in err.path) or "(root)"
                problems.add(where, "own CRD schema: %s: %s" % (path, err.message))
            print("ok   %-40s own schema for %s %s" % (where, key[0], key[1]))
            continue
        for version in versions:
            try:
                got = kv.validate(res, version, strict=True)
                print("ok   %-40s kubernetes %s strict" % (where, got))
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(root)"
                problems.add(where, "kubernetes %s strict: %s: %s" % (e.version, path, e.message))
            except kv.SchemaNotFoundError as e:
                problems.add(where, e.message)
            except kv.VersionNotSupportedError as e:
                problems.add(where, e.message)
            except kv.InvalidSchemaError as e:
                problems.add(where, e.message)


def consistency_checks(docs, adapter, problems):
    by_kind = {}
    for res in docs:
        by_kind.setdefault(res["kind"], []).append(res)
    configmaps = {r["metadata"]["name"]: r for r in by_kind.get("ConfigMap", [])}
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        problems.add("render", "expected exactly one Deployment, got %d" % len(deployments))
        return
    dep = deployments[0]
    where = ident(dep)
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    if not selects(dep["spec"].get("selector"), pod_labels):
        problems.add(where, "selector does not match the pod template labels")
    if "replicas" in dep["spec"] and by_kind.get("HorizontalPodAutoscaler"):
        problems.add(where, "spec.replicas is set although an HPA owns it")
    containers = pod.get("containers") or []
    if len(containers) != 1:
        problems.add(where, "expected one container")
        return
    c = containers[0]

    # Security context.
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 65532):
        problems.add(where, "pod securityContext must set runAsNonRoot and runAsUser 65532")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault" and \
            (csc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.add(where, "seccompProfile RuntimeDefault missing")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.add(where, "readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.add(where, "allowPrivilegeEscalation must be false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        problems.add(where, "capabilities must drop ALL")
    for vol in pod.get("volumes") or []:
        if "emptyDir" in vol or "hostPath" in vol:
            problems.add(where, "volume %s: the relay needs no writable volume" % vol.get("name"))

    # Environment: ConfigMap + explicit env, secrets only by reference.
    env = {}
    for src in c.get("envFrom") or []:
        ref = src.get("configMapRef")
        if not ref:
            problems.add(where, "envFrom may only reference ConfigMaps")
            continue
        cm = configmaps.get(ref.get("name"))
        if cm is None:
            problems.add(where, "envFrom ConfigMap %s is not in the rendered output"
                         % ref.get("name"))
            continue
        for k, v in (cm.get("data") or {}).items():
            if any(w in k for w in SECRET_ENV_WORDS):
                problems.add(ident(cm), "%s looks secret: put it in the Secret %s"
                             % (k, SECRET_NAME))
            env[k] = v
    secret_keys = {}
    for e in c.get("env") or []:
        name = e["name"]
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            if ref.get("name") != SECRET_NAME:
                problems.add(where, "env %s: secrets come from the Secret %s" % (name, SECRET_NAME))
            secret_keys[ref.get("key")] = bool(ref.get("optional"))
            continue
        if any(w in name for w in SECRET_ENV_WORDS) and "value" in e:
            problems.add(where, "env %s: inline value for a secret; use secretKeyRef" % name)
        if "value" in e:
            env[name] = e["value"]
    for key in sorted(REQUIRED_SECRET_KEYS):
        if key not in secret_keys:
            problems.add(where, "secret key %s is not referenced" % key)
        elif secret_keys[key]:
            problems.add(where, "secret key %s must not be optional" % key)
    for key, optional in sorted(secret_keys.items()):
        if key not in REQUIRED_SECRET_KEYS and not optional:
            problems.add(where, "secret key %s should be optional: true" % key)
    for key in ("RELAY_PUBLIC_HOST", "RELAY_MAX_CALLS", "RELAY_DRAIN_TIMEOUT_SECS"):
        if key not in env:
            problems.add(where, "%s is not set (ConfigMap or env)" % key)

    # Drain budget: grace >= preStop sleep + drain timeout + notice + hard stop.
    try:
        drain = int(env.get("RELAY_DRAIN_TIMEOUT_SECS", "30"))
        sleep = int((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {})
                    .get("seconds", 0))
        grace = int(pod.get("terminationGracePeriodSeconds", 30))
        need = sleep + drain + DRAIN_NOTICE_MAX_SECS + HARD_STOP_SECS
        if grace < need:
            problems.add(where, "terminationGracePeriodSeconds %d < preStop %d + drain %d + "
                         "notice %d + hard stop %d = %d" % (grace, sleep, drain,
                                                            DRAIN_NOTICE_MAX_SECS,
                                                            HARD_STOP_SECS, need))
        else:
            print("ok   drain budget: grace %d s >= preStop %d + drain %d + notice %d + hard "
                  "stop %d = %d s" % (grace, sleep, drain, DRAIN_NOTICE_MAX_SECS,
                                      HARD_STOP_SECS, need))
        if sleep <= 0:
            problems.add(where, "no preStop sleep: endpoints may still route to a draining pod")
    except ValueError as e:
        problems.add(where, "drain budget: %s" % e)

    # Ports and probes.
    port_names = {p.get("name") for p in c.get("ports") or []}
    listen = env.get("RELAY_LISTEN", "0.0.0.0:8080")
    ports = {p.get("containerPort") for p in c.get("ports") or []}
    if listen.rsplit(":", 1)[-1] not in {str(p) for p in ports}:
        problems.add(where, "RELAY_LISTEN %s does not match a containerPort" % listen)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
        if got != path:
            problems.add(where, "%s must GET %s (got %s)" % (probe, path, got))

    # Services, PDB, ServiceMonitor select the pods / services they should.
    services = by_kind.get("Service", [])
    for svc in services:
        if not selects(svc["spec"].get("selector"), pod_labels):
            problems.add(ident(svc), "selector does not match the relay pods")
        for p in svc["spec"].get("ports") or []:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in port_names:
                problems.add(ident(svc), "targetPort %s is not a container port name"
                             % p["targetPort"])
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"].get("selector"), pod_labels):
            problems.add(ident(pdb), "selector does not match the relay pods")
    for sm in by_kind.get("ServiceMonitor", []):
        chosen = [s for s in services if selects(sm["spec"].get("selector"),
                                                 s["metadata"].get("labels") or {})]
        if len(chosen) != 1:
            problems.add(ident(sm), "selects %d Services, expected exactly one (the metrics "
                         "Service)" % len(chosen))
            continue
        svc = chosen[0]
        if not svc["spec"].get("publishNotReadyAddresses"):
            problems.add(ident(sm), "Service %s drops draining pods (publishNotReadyAddresses)"
                         % svc["metadata"]["name"])
        names = {p.get("name") for p in svc["spec"].get("ports") or []}
        for ep in sm["spec"].get("endpoints") or []:
            if ep.get("port") not in names:
                problems.add(ident(sm), "endpoint port %s is not a port of Service %s"
                             % (ep.get("port"), svc["metadata"]["name"]))
            if ep.get("path", "/metrics") != "/metrics":
                problems.add(ident(sm), "the relay serves metrics at /metrics")

    # HPA: right target, metric served by the adapter rule, target below capacity.
    adapter_names = set()
    for rule in (((adapter or {}).get("rules") or {}).get("custom") or []):
        if "relay_calls_active" not in rule.get("seriesQuery", ""):
            continue
        overrides = (rule.get("resources") or {}).get("overrides") or {}
        if (overrides.get("pod") or {}).get("resource") != "pod" or \
                (overrides.get("namespace") or {}).get("resource") != "namespace":
            problems.add("adapter rules", "relay_calls_active rule must map pod and namespace")
        if "<<.Series>>" not in rule.get("metricsQuery", ""):
            problems.add("adapter rules", "metricsQuery must use <<.Series>>")
        adapter_names.add((rule.get("name") or {}).get("as") or "relay_calls_active")
    if not adapter_names:
        problems.add("adapter rules", "no rule for relay_calls_active under rules.custom")
    max_calls = int(env.get("RELAY_MAX_CALLS", "10000"))
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        spec = hpa["spec"]
        ref = spec.get("scaleTargetRef") or {}
        if (ref.get("kind"), ref.get("name")) != ("Deployment", dep["metadata"]["name"]):
            problems.add(ident(hpa), "scaleTargetRef is not the relay Deployment")
        for m in spec.get("metrics") or []:
            if m.get("type") != "Pods":
                continue
            name = m["pods"]["metric"]["name"]
            if name not in adapter_names:
                problems.add(ident(hpa), "metric %s is not served by the adapter rule (%s)"
                             % (name, ", ".join(sorted(adapter_names))))
            target = float(str(m["pods"]["target"].get("averageValue", "0")))
            if not 0 < target < max_calls:
                problems.add(ident(hpa), "target %s calls/pod must be below RELAY_MAX_CALLS %d"
                             % (target, max_calls))
            else:
                print("ok   HPA target %g calls/pod = %.0f %% of RELAY_MAX_CALLS %d"
                      % (target, 100 * target / max_calls, max_calls))
        down = ((spec.get("behavior") or {}).get("scaleDown") or {})
        if down.get("stabilizationWindowSeconds", 300) < 300:
            problems.add(ident(hpa), "scale-down stabilization under 5 min drains pods too eagerly")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rendered")
    parser.add_argument("--k8s", action="append", required=True, help="Kubernetes version")
    parser.add_argument("--adapter-rules", required=True)
    args = parser.parse_args()
    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(args.adapter_rules) as f:
        adapter = yaml.safe_load(f)
    problems = Problems()
    for res in docs:
        if not isinstance(res, dict) or not res.get("kind") or not res.get("apiVersion") or \
                not (res.get("metadata") or {}).get("name"):
            problems.add("render", "a document lacks apiVersion, kind or metadata.name")
    if problems.items:
        docs = []
    schema_checks(docs, args.k8s, problems)
    if docs:
        consistency_checks(docs, adapter, problems)
    for p in problems.items:
        print("FAIL %s" % p)
    print("%d resources, %d problems" % (len(docs), len(problems.items)))
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Render deploy/kubernetes/base without a kustomize binary.

Enough of kustomize for OUR base and nothing more, so that deploy/validate.sh can validate what
`kubectl apply -k` would send on a machine that has no kustomize:

  * `resources:` plain YAML files in the kustomization's directory (single or multi-document);
    directories, other kustomizations and URLs are rejected;
  * `configMapGenerator:` with `literals`, `envs` and `files`, `options` and `generatorOptions`
    (labels, annotations, disableNameSuffixHash, immutable). The name suffix is kustomize's
    content hash (same algorithm as sigs.k8s.io/kustomize/api/hasher), and references to a
    generated ConfigMap inside pod templates (envFrom, env valueFrom, volumes, projected
    volumes) are rewritten to the suffixed name;
  * `namespace:` is set on every resource.

Anything else in kustomization.yaml (patches, images, labels, components, ...) is an error, not
silently ignored: extend this script, or validate that overlay with real kustomize.
validate.sh compares this output with `kubectl kustomize` whenever kubectl is installed.

Usage: render.py [--skip-missing FILE]... [-o OUT] [DIR]   (DIR defaults to deploy/kubernetes/base)
Needs PyYAML.
"""

import argparse
import base64
import copy
import hashlib
import json
import os
import sys

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions",
                  "namespace"}
GENERATOR_KEYS = {"name", "literals", "envs", "env", "files", "options", "behavior"}
OPTION_KEYS = {"labels", "annotations", "disableNameSuffixHash", "immutable"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class RenderError(Exception):
    pass


def go_json(obj):
    """json.Marshal as Go does it: sorted keys, no spaces, HTML-safe escapes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def kustomize_configmap_hash(cm):
    """The 10-character suffix kustomize appends to a generated ConfigMap's name.

    kustomize v5 (api/hasher encodeConfigMap) hashes the Go JSON of {kind, name, data[,
    binaryData]}, where "name" comes from looking up the single key "metadata/name", which never
    exists: it is always "". So the suffix depends on the data only. Checked against
    `kubectl kustomize` (kustomize v5.5.0) by validate.sh.
    """
    encoded = {"kind": "ConfigMap", "name": "", "data": cm.get("data", "")}
    if isinstance(cm.get("binaryData"), dict):
        encoded["binaryData"] = cm["binaryData"]
    digest = hashlib.sha256(go_json(encoded).encode("utf-8")).hexdigest()
    return digest[:10].translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def remove_quotes(value):
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def add_entry(cm, key, value_bytes, source):
    if key in (cm.get("data") or {}) or key in (cm.get("binaryData") or {}):
        raise RenderError("configMapGenerator %s: duplicate key %r (%s)"
                          % (cm["metadata"]["name"], key, source))
    try:
        cm.setdefault("data", {})[key] = value_bytes.decode("utf-8")
    except UnicodeDecodeError:
        cm.setdefault("binaryData", {})[key] = base64.b64encode(value_bytes).decode("ascii")


def generate_configmap(gen, global_options, base_dir):
    unknown = set(gen) - GENERATOR_KEYS
    if unknown:
        raise RenderError("configMapGenerator: unsupported keys %s" % sorted(unknown))
    if gen.get("behavior", "create") != "create":
        raise RenderError("configMapGenerator %s: only behavior create is supported in a base"
                          % gen.get("name"))
    if not gen.get("name"):
        raise RenderError("configMapGenerator entry without a name")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}}
    for literal in gen.get("literals") or []:
        if "=" not in literal:
            raise RenderError("literal %r is not KEY=VALUE" % literal)
        key, value = literal.split("=", 1)
        add_entry(cm, key, remove_quotes(value).encode("utf-8"), "literal")
    envs = list(gen.get("envs") or []) + ([gen["env"]] if gen.get("env") else [])
    for env_file in envs:
        path = os.path.join(base_dir, env_file)
        with open(path, "rb") as f:
            content = f.read()
        if content.startswith(b"\xef\xbb\xbf"):
            content = content[3:]
        for lineno, raw in enumerate(content.decode("utf-8").splitlines(), 1):
            line = raw.lstrip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise RenderError("%s:%d: %r has no '=' (values from the environment are not "
                                  "supported)" % (env_file, lineno, line))
            key, value = line.split("=", 1)
            add_entry(cm, key, value.encode("utf-8"), env_file)
    for file_source in gen.get("files") or []:
        key, _, path = file_source.rpartition("=")
        key = key or os.path.basename(path)
        with open(os.path.join(base_dir, path), "rb") as f:
            add_entry(cm, key, f.read(), path)
    options = dict(global_options)
    for k, v in (gen.get("options") or {}).items():
        if k not in OPTION_KEYS:
            raise RenderError("configMapGenerator %s: unsupported option %s" % (gen["name"], k))
        if isinstance(v, dict):
            options[k] = {**(options.get(k) or {}), **v}
        else:
            options[k] = v
    if options.get("labels"):
        cm["metadata"]["labels"] = dict(options["labels"])
    if options.get("annotations"):
        cm["metadata"]["annotations"] = dict(options["annotations"])
    if options.get("immutable"):
        cm["immutable"] = True
    if not cm.get("data") and not cm.get("binaryData"):
        cm["data"] = {}
    if not options.get("disableNameSuffixHash"):
        cm["metadata"]["name"] = "%s-%s" % (gen["name"], kustomize_configmap_hash(cm))
    return cm


def rewrite_configmap_refs(resource, renames):
    if resource.get("kind") not in POD_TEMPLATE_KINDS and resource.get("kind") != "CronJob":
        return
    spec = resource.get("spec") or {}
    if resource["kind"] == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    pod = ((spec.get("template") or {}).get("spec") or {})

    def rename(ref):
        if isinstance(ref, dict) and ref.get("name") in renames:
            ref["name"] = renames[ref["name"]]

    for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for env_from in container.get("envFrom") or []:
            rename(env_from.get("configMapRef"))
        for env in container.get("env") or []:
            rename((env.get("valueFrom") or {}).get("configMapKeyRef"))
    for volume in pod.get("volumes") or []:
        rename(volume.get("configMap"))
        for source in ((volume.get("projected") or {}).get("sources") or []):
            rename(source.get("configMap"))


def render(base_dir, skip_missing=()):
    kpath = os.path.join(base_dir, "kustomization.yaml")
    with open(kpath) as f:
        kust = yaml.safe_load(f)
    if not isinstance(kust, dict):
        raise RenderError("%s: not a mapping" % kpath)
    unknown = set(kust) - SUPPORTED_KEYS
    if unknown:
        raise RenderError("%s: keys not supported by render.py: %s" % (kpath, sorted(unknown)))
    if kust.get("kind", "Kustomization") != "Kustomization":
        raise RenderError("%s: kind must be Kustomization" % kpath)

    global_options = kust.get("generatorOptions") or {}
    if set(global_options) - OPTION_KEYS:
        raise RenderError("generatorOptions: unsupported %s" % sorted(set(global_options) - OPTION_KEYS))
    generators = kust.get("configMapGenerator") or []
    generated = [generate_configmap(g, global_options, base_dir) for g in generators]
    renames = {g["name"]: cm["metadata"]["name"] for g, cm in zip(generators, generated)}

    resources = []
    for entry in kust.get("resources") or []:
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            raise RenderError("resource %s: remote resources are not supported" % entry)
        path = os.path.join(base_dir, entry)
        if os.path.isdir(path):
            raise RenderError("resource %s: directories/kustomizations are not supported" % entry)
        if not os.path.exists(path):
            if entry in skip_missing:
                print("render.py: skipping missing resource %s" % entry, file=sys.stderr)
                continue
            raise RenderError("resource %s: file not found (%s)" % (entry, path))
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
                raise RenderError("%s: a document is not a Kubernetes object" % entry)
            if doc["kind"].endswith("List"):
                raise RenderError("%s: List kinds are not supported" % entry)
            resources.append(copy.deepcopy(doc))

    out = generated + resources
    seen = set()
    for res in out:
        ident = (res.get("apiVersion"), res["kind"], res["metadata"].get("name"))
        if ident in seen:
            raise RenderError("duplicate resource %s %s" % (ident[1], ident[2]))
        seen.add(ident)
        rewrite_configmap_refs(res, renames)
        if kust.get("namespace"):
            res["metadata"]["namespace"] = kust["namespace"]
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=os.path.join(here, "kubernetes", "base"))
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--skip-missing", action="append", default=[], metavar="FILE",
                        help="leave out this resource entry if its file does not exist")
    args = parser.parse_args()
    try:
        docs = render(args.dir, args.skip_missing)
    except (RenderError, OSError, yaml.YAMLError) as e:
        print("render.py: %s" % e, file=sys.stderr)
        return 1
    text = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=4096)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Summarize Autobahn TestSuite (wstest) reports as Markdown.

Usage:
    summarize.py [--out FILE] [--agent NAME] [--expect ROLE=LOG|N]... ROLE=REPORTDIR...

ROLE is a free label; run.sh uses `server` (wstest fuzzingclient against our
echo server) and `client` (our client against wstest fuzzingserver).
REPORTDIR is a wstest `outdir` holding index.json.

--expect ROLE=LOG reads the `Cases = [...]` line that wstest prints at start-up
so that cases which never produced a result (crash, hang, early stop) count as
failures; --expect ROLE=N only checks the count.

Exit status: 0 if every expected case ran and every behavior/behaviorClose is
allowed; 1 otherwise. Stdlib only.
"""

import argparse
import ast
import json
import os
import re
import sys
from collections import Counter, OrderedDict

ALLOWED = {"OK", "NON-STRICT", "INFORMATIONAL"}
DEFAULT_EXCLUDED_GROUPS = "12,13"

# Top-level case categories, as named by the Autobahn TestSuite.
CATEGORIES = {
    1: "Framing",
    2: "Pings/Pongs",
    3: "Reserved Bits",
    4: "Opcodes",
    5: "Fragmentation",
    6: "UTF-8 Handling",
    7: "Close Handling",
    8: "Misc",
    9: "Limits/Performance",
    10: "Misc",
    11: "Opening Handshake",
    12: "WebSocket Compression (different parameters)",
    13: "WebSocket Compression (different parameters)",
}

ROLE_TITLES = {
    "server": "Server role: wstest `fuzzingclient` against our echo server",
    "client": "Client role: our client against wstest `fuzzingserver`",
}

# Display order for outcome values (anything else sorts after, alphabetically).
VALUE_ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED",
               "WRONG CODE", "FAILED BY CLIENT", "UNCLEAN", "NO_CLOSE", "FAILED", "MISSING"]


def case_key(case_id):
    try:
        return tuple(int(p) for p in case_id.split("."))
    except ValueError:
        return (10 ** 6, case_id)


def group_of(case_id):
    return case_key(case_id)[0]


def fmt_counts(counter):
    def order(v):
        return (VALUE_ORDER.index(v) if v in VALUE_ORDER else len(VALUE_ORDER), v)
    return ", ".join("%s %d" % (v, counter[v]) for v in sorted(counter, key=order)) or "-"


def md_escape(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def parse_role_arg(value, what):
    if "=" not in value:
        raise argparse.ArgumentTypeError("%s must look like ROLE=VALUE, got %r" % (what, value))
    role, _, rest = value.partition("=")
    if not role or not rest:
        raise argparse.ArgumentTypeError("%s must look like ROLE=VALUE, got %r" % (what, value))
    return role, rest


def load_expected(spec):
    """An int count, or the list of case ids from a wstest log."""
    if spec.isdigit():
        return int(spec)
    with open(spec, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"Cases = (\[.*\])\s*$", line)
            if m:
                return [str(c) for c in ast.literal_eval(m.group(1))]
    raise ValueError("no 'Cases = [...]' line in %s" % spec)


def is_allowed(case_id, value, excluded_groups):
    if value in ALLOWED:
        return True
    return value == "UNIMPLEMENTED" and group_of(case_id) in excluded_groups


class RoleResult:
    def __init__(self, role):
        self.role = role
        self.agent = None
        self.cases = OrderedDict()  # id -> index entry
        self.problems = []  # (case id, behavior, behaviorClose, close code, detail)
        self.errors = []  # role-level errors (no report, ...)
        self.missing = []

    @property
    def ok(self):
        return not (self.problems or self.errors or self.missing)


def analyse(role, reportdir, agent, expected, excluded_groups):
    res = RoleResult(role)
    index_path = os.path.join(reportdir, "index.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        res.errors.append("no report: %s does not exist" % index_path)
        return res
    except ValueError as e:
        res.errors.append("unreadable report %s: %s" % (index_path, e))
        return res

    if agent is None:
        if len(index) != 1:
            res.errors.append("report has %d agents (%s); pass --agent" %
                              (len(index), ", ".join(sorted(index)) or "none"))
            return res
        agent = next(iter(index))
    if agent not in index:
        res.errors.append("agent %r not in report (agents: %s)" %
                          (agent, ", ".join(sorted(index)) or "none"))
        return res
    res.agent = agent
    for cid in sorted(index[agent], key=case_key):
        res.cases[cid] = index[agent][cid]

    if isinstance(expected, int):
        if len(res.cases) != expected:
            res.errors.append("expected %d cases, report has %d" % (expected, len(res.cases)))
    elif isinstance(expected, list):
        res.missing = sorted(set(expected) - set(res.cases), key=case_key)
        extra = sorted(set(res.cases) - set(expected), key=case_key)
        if extra:
            res.errors.append("unexpected cases in report: %s" % ", ".join(extra))

    for cid, c in res.cases.items():
        beh, close = c.get("behavior"), c.get("behaviorClose")
        if is_allowed(cid, beh, excluded_groups) and is_allowed(cid, close, excluded_groups):
            continue
        detail = ""
        try:
            with open(os.path.join(reportdir, c.get("reportfile", "")), encoding="utf-8") as f:
                full = json.load(f)
            bits = []
            if beh not in ALLOWED:
                bits.append(full.get("result", ""))
            if close not in ALLOWED:
                bits.append(full.get("resultClose", ""))
            detail = "; ".join(b for b in bits if b)
        except (OSError, ValueError):
            pass
        res.problems.append((cid, beh, close, c.get("remoteCloseCode"), detail))
    return res


def render(results, excluded_groups, expected_given):
    out = []
    w = out.append
    overall = all(r.ok for r in results)
    excl = ", ".join("%d.*" % g for g in sorted(excluded_groups)) or "none"
    w("# Autobahn TestSuite (RFC 6455) conformance summary")
    w("")
    w("Generated by `conformance/autobahn/summarize.py` from the wstest reports "
      "(see `conformance/autobahn/README.md`).")
    w("Excluded case groups: %s (permessage-deflate; compression is not negotiated)." % excl)
    w("Allowed outcomes for `behavior` and `behaviorClose`: %s%s." % (
        ", ".join(sorted(ALLOWED)),
        "; UNIMPLEMENTED only for excluded groups" if excluded_groups else ""))
    w("")
    w("**Overall: %s** (%s)" % ("PASS" if overall else "FAIL", ", ".join(
        "%s: %d cases%s" % (r.role, len(r.cases), "" if r.ok else ", FAIL") for r in results)))
    for r in results:
        w("")
        w("## %s" % ROLE_TITLES.get(r.role, "Role `%s`" % r.role))
        w("")
        if r.agent:
            w("Agent `%s`: %d cases, %s." % (r.agent, len(r.cases), "all allowed" if r.ok else "FAIL"))
            w("")
        for e in r.errors:
            w("- **ERROR:** %s" % md_escape(e))
        if r.errors:
            w("")
        if r.cases:
            groups = OrderedDict()
            for cid in r.cases:
                groups.setdefault(group_of(cid), []).append(cid)
            w("| Group | Category | Cases | behavior | behaviorClose |")
            w("|---|---|---:|---|---|")
            tb, tc = Counter(), Counter()
            for g, ids in groups.items():
                b = Counter(r.cases[c].get("behavior") for c in ids)
                c_ = Counter(r.cases[c].get("behaviorClose") for c in ids)
                tb.update(b)
                tc.update(c_)
                label = "%d.*" % g if isinstance(g, int) else str(g)
                w("| %s | %s | %d | %s | %s |" % (label, CATEGORIES.get(g, ""), len(ids),
                                                   fmt_counts(b), fmt_counts(c_)))
            w("| **Total** | | **%d** | %s | %s |" % (len(r.cases), fmt_counts(tb), fmt_counts(tc)))
            w("")
        if r.missing:
            w("Expected cases with no result (%d): %s" % (len(r.missing), ", ".join(r.missing)))
            w("")
        if r.problems:
            w("Cases outside the allowed set (%d):" % len(r.problems))
            w("")
            w("| Case | behavior | behaviorClose | remote close code | detail |")
            w("|---|---|---|---|---|")
            for cid, beh, close, code, detail in r.problems:
                w("| %s | %s | %s | %s | %s |" % (cid, beh, close, code, md_escape(detail)))
            w("")
        elif r.cases:
            w("Cases outside the allowed set: none.")
            if not expected_given.get(r.role):
                w("")
                w("_(No expected case list was given, so cases that never ran are not detected.)_")
            w("")
    return "\n".join(out).rstrip("\n") + "\n", overall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", metavar="ROLE=REPORTDIR",
                    type=lambda v: parse_role_arg(v, "report"))
    ap.add_argument("--out", help="write the Markdown here (it is always printed to stdout too)")
    ap.add_argument("--agent", help="agent name in index.json (default: the only one)")
    ap.add_argument("--expect", action="append", default=[], metavar="ROLE=LOG|N",
                    type=lambda v: parse_role_arg(v, "--expect"),
                    help="wstest log (for its 'Cases = [...]' line) or case count, per role")
    ap.add_argument("--excluded-groups", default=DEFAULT_EXCLUDED_GROUPS,
                    help="comma-separated top-level groups excluded from the run, where "
                         "UNIMPLEMENTED is tolerated (default: %(default)s)")
    ap.add_argument("--slowest", type=int, default=5,
                    help="print the N slowest cases per role to stderr (default: %(default)s)")
    args = ap.parse_args(argv)

    excluded = {int(g) for g in args.excluded_groups.split(",") if g.strip()}
    expected = {}
    for role, spec in args.expect:
        try:
            expected[role] = load_expected(spec)
        except (OSError, ValueError, SyntaxError) as e:
            print("summarize: --expect %s: %s" % (role, e), file=sys.stderr)
            expected[role] = "unreadable"

    results = []
    for role, reportdir in args.reports:
        exp = expected.get(role)
        r = analyse(role, reportdir, args.agent, exp if exp != "unreadable" else None, excluded)
        if exp == "unreadable":
            r.errors.append("expected case list could not be read")
        results.append(r)

    md, overall = render(results, excluded, {k: v is not None for k, v in expected.items()})
    sys.stdout.write(md)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(md)

    for r in results:
        if args.slowest > 0 and r.cases:
            slow = sorted(r.cases.items(), key=lambda kv: -(kv[1].get("duration") or 0))[:args.slowest]
            total = sum((c.get("duration") or 0) for c in r.cases.values())
            print("summarize: %s: sum of case durations %.1f s; slowest: %s" % (
                r.role, total / 1000.0,
                ", ".join("%s %d ms" % (cid, c.get("duration") or 0) for cid, c in slow)),
                file=sys.stderr)
        if not r.ok:
            print("summarize: %s: FAIL (%d errors, %d missing, %d disallowed outcomes)" % (
                r.role, len(r.errors), len(r.missing), len(r.problems)), file=sys.stderr)
    return 0 if overall else 1


if __name__ == "__main__":
    sys.exit(main())

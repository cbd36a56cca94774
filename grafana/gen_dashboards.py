#!/usr/bin/env python3
"""Generates grafana/dashboards/*.json and the panel reference in grafana/README.md.

The dashboards are data (panel specs below); the JSON files and the README section between
the GENERATED markers are outputs. Edit this file, then run

    python3 grafana/gen_dashboards.py          # rewrite the JSON and the README section
    python3 grafana/gen_dashboards.py --check  # exit 1 if they are out of date (CI, e2e.sh)

Conventions every query follows (grafana/test/e2e.sh evaluates all of them against a live
relay):
- datasource is the `${datasource}` variable (type prometheus);
- every relay selector carries `instance=~"$instance"` (the multi-value `instance` variable,
  All = `.*`); agent-labelled families also carry `agent=~"$agent"` where a dashboard has the
  `agent` variable;
- counter rates and histogram buckets use `[$__rate_interval]`, "over the dashboard range"
  stats use `[$__range]`: no fixed windows;
- process_* metrics are restricted to relay processes with `and on (instance, job)
  relay_build_info`, so the dashboards work whatever the scrape job is called.
Needs only the Python standard library.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
NORMAL_OUTCOMES = "caller_hangup|caller_closed|agent_closed|agent_ended|replaced|shutdown"
# Label matchers used inside f-strings (no backslashes allowed in f-string expressions).
ABNORMAL = 'outcome!~"' + NORMAL_OUTCOMES + '"'
FAILED = 'result="failed"'
FLUSHED = 'result="flushed"'
T2A = 'direction="twilio_to_agent"'
A2T = 'direction="agent_to_twilio"'


def sel(extra="", agent=False):
    """A label selector body restricted to the selected instances (and agents)."""
    parts = ['instance=~"$instance"']
    if agent:
        parts.append('agent=~"$agent"')
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}"


def rate(metric, extra="", agent=False, window=RI):
    return f"rate({metric}{sel(extra, agent)}[{window}])"


def inc(metric, extra="", agent=False, window=RI):
    return f"increase({metric}{sel(extra, agent)}[{window}])"


def relay_only(expr):
    """Restricts a process_* expression to the relay's own targets."""
    return f"{expr} and on (instance, job) relay_build_info"


def hq(q, metric, by="", extra="", agent=False):
    """histogram_quantile over sum by (le[, by]) (rate(metric_bucket[$__rate_interval]))."""
    grp = f"le, {by}" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({grp}) "
        f"({rate(metric + '_bucket', extra, agent)}))"
    )


# ---------------------------------------------------------------------------------------
# Panel constructors. Each returns a dict with an extra "_doc" entry (what/read/act) that
# is stripped from the JSON and used for the README.


def _panel(kind, title, targets, unit, what, act, w, h, **kw):
    return {
        "_kind": kind,
        "_title": title,
        "_targets": targets,
        "_unit": unit,
        "_what": what,
        "_act": act,
        "_w": w,
        "_h": h,
        **{"_" + k: v for k, v in kw.items()},
    }


def ts(title, targets, unit, what, act, w=12, h=8, stack=False, percent_max=None, **kw):
    return _panel("timeseries", title, targets, unit, what, act, w, h, stack=stack,
                  max=percent_max, **kw)


def stat(title, targets, unit, what, act, w=4, h=5, thresholds=None, instant=True, **kw):
    return _panel("stat", title, targets, unit, what, act, w, h, thresholds=thresholds,
                  instant=instant, **kw)


def heatmap(title, expr, what, act, w=12, h=8, unit="s", **kw):
    return _panel("heatmap", title, [(expr, "{{le}}")], unit, what, act, w, h, **kw)


def table(title, targets, what, act, w=12, h=8, unit="short", **kw):
    return _panel("table", title, targets, unit, what, act, w, h, **kw)


def bars(title, expr, what, act, w=12, h=8, unit="short", **kw):
    """Bar gauge of bucket counts (format heatmap): a distribution over the range."""
    return _panel("bargauge", title, [(expr, "{{le}}")], unit, what, act, w, h, **kw)


def row(title):
    return {"_kind": "row", "_title": title}


def thresholds(*steps):
    """steps: (value, colour) with the first value None."""
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": v} for v, c in steps],
    }


GREEN = thresholds((None, "green"))


def build_panel(spec, pid, x, y):
    kind = spec["_kind"]
    title = spec["_title"]
    if kind == "row":
        return {
            "id": pid,
            "type": "row",
            "title": title,
            "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": [],
        }
    desc = spec["_what"] + ("\n\n" + spec["_act"] if spec["_act"] else "")
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": spec["_w"], "h": spec["_h"]},
        "targets": [],
    }
    instant = kind in ("table", "bargauge") or (kind == "stat" and spec.get("_instant"))
    for i, (expr, legend) in enumerate(spec["_targets"]):
        t = {
            "datasource": DS,
            "refId": chr(ord("A") + i),
            "expr": expr,
            "legendFormat": legend,
            "editorMode": "code",
            "range": not instant,
            "instant": instant,
        }
        if kind in ("heatmap", "bargauge"):
            t["format"] = "heatmap"
        if kind == "table":
            t["format"] = "table"
        p["targets"].append(t)
    unit = spec["_unit"]
    if kind == "timeseries":
        custom = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 25 if spec.get("_stack") else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if spec.get("_stack") else "none", "group": "A"},
            "axisSoftMin": 0,
        }
        defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
        if spec.get("_max") is not None:
            defaults["max"] = spec["_max"]
        overrides = []
        for regex, style in spec.get("_dashed", []) or []:
            overrides.append({
                "matcher": {"id": "byRegexp", "options": regex},
                "properties": [
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    {"id": "custom.fillOpacity", "value": 0},
                ] + ([{"id": "color", "value": {"mode": "fixed", "fixedColor": style}}]
                     if style else []),
            })
        p["fieldConfig"] = {"defaults": defaults, "overrides": overrides}
        p["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif kind == "stat":
        p["fieldConfig"] = {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": spec.get("_thresholds") or GREEN,
                "mappings": [],
            },
            "overrides": [],
        }
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none" if spec.get("_instant") else "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    elif kind == "heatmap":
        p["fieldConfig"] = {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}},
                            "overrides": []}
        p["options"] = {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential",
                      "exponent": 0.5, "steps": 64, "reverse": False, "fill": "dark-orange"},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": unit},
            "cellValues": {"unit": "ops"},
        }
        p["maxDataPoints"] = 100
    elif kind == "bargauge":
        p["fieldConfig"] = {
            "defaults": {"unit": unit, "min": 0, "color": {"mode": "palette-classic"},
                         "thresholds": GREEN},
            "overrides": [],
        }
        p["options"] = {
            "displayMode": "gradient",
            "orientation": "vertical",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
        }
    elif kind == "table":
        p["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
        p["options"] = {"showHeader": True, "cellHeight": "sm",
                        "sortBy": [{"displayName": "Value", "desc": True}]}
        p["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ]
    return p


def variables(with_agent):
    v = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
        },
        {
            "name": "instance",
            "label": "Instance",
            "type": "query",
            "datasource": DS,
            "definition": "label_values(relay_calls_active, instance)",
            "query": {
                "query": "label_values(relay_calls_active, instance)",
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            },
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "options": [],
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "hide": 0,
            "skipUrlSync": False,
        },
    ]
    if with_agent:
        v.append({
            "name": "agent",
            "label": "Agent",
            "type": "query",
            "datasource": DS,
            "definition": "label_values(relay_calls_started_total, agent)",
            "query": {
                "query": "label_values(relay_calls_started_total, agent)",
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            },
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "options": [],
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "hide": 0,
            "skipUrlSync": False,
        })
    return v


def dashboard(uid, title, description, specs, with_agent, links):
    panels = []
    x = y = 0
    row_h = 0
    pid = 1
    for s in specs:
        if s["_kind"] == "row":
            if x:
                y += row_h
            x, row_h = 0, 0
            panels.append(build_panel(s, pid, 0, y))
            y += 1
        else:
            if x + s["_w"] > 24:
                y += row_h
                x, row_h = 0, 0
            panels.append(build_panel(s, pid, x, y))
            x += s["_w"]
            row_h = max(row_h, s["_h"])
        pid += 1
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["media-relay"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "links": [
            {"type": "dashboards", "tags": ["media-relay"], "asDropdown": False,
             "includeVars": True, "keepTime": True, "title": "media-relay"}
        ] + links,
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": variables(with_agent)},
        "panels": panels,
    }


# ---------------------------------------------------------------------------------------
# Overview

OVERVIEW = [
    row("Capacity and health"),
    ts("Active calls vs --max-calls",
       [(f"max by (instance) (relay_calls_active{sel()})", "{{instance}} active"),
        (f"max by (instance) (relay_calls_max{sel()})", "{{instance}} max")],
       "short",
       "Calls in progress on each instance (solid) against that instance's admission limit "
       "`--max-calls` (dashed, `relay_calls_max`). The gap between the two lines is the "
       "headroom; upgrades beyond the limit are refused with 503 (see Upgrade results).",
       "If an instance runs near its limit while others are idle, check the load balancer; "
       "if all do, add instances or raise --max-calls (after checking CPU below).",
       w=12, dashed=[("/ max$/", None)]),
    ts("Capacity used per instance",
       [(f"max by (instance) (relay_calls_active{sel()}) / "
         f"max by (instance) (relay_calls_max{sel()})", "{{instance}}")],
       "percentunit",
       "`relay_calls_active / relay_calls_max` per instance: the share of the admission "
       "limit in use. The MediaRelayNearCapacity alert fires above 80 % for 5 m.",
       "Above 80 %: scale out before calls get 503.", w=6),
    stat("Draining instances",
         [(f"sum(max by (instance) (relay_draining{sel()}))", "draining")],
         "short",
         "Instances with `relay_draining` = 1: they got SIGTERM, refuse new calls (503, "
         "`rejected_draining`) and let live calls finish until the drain timeout.",
         "Expected during a deploy. An instance draining for more than a few minutes is stuck "
         "(alert MediaRelayDrainingTooLong): check its logs, then kill it.",
         w=3, h=4, instant=False,
         thresholds=thresholds((None, "green"), (1, "orange"))),
    stat("Targets up",
         [(f"sum(up{sel()} and on (instance, job) relay_build_info)", "up")],
         "short",
         "Relay scrape targets Prometheus currently reaches (`up` = 1). A target that is "
         "down has no relay_* series, so it is counted by the MediaRelayTargetDown alert "
         "rather than here.",
         "", w=3, h=4, instant=False,
         thresholds=thresholds((None, "red"), (1, "green"))),
    ts("Draining per instance",
       [(f"max by (instance) (relay_draining{sel()})", "{{instance}}")],
       "short",
       "`relay_draining` per instance over time (1 while draining after SIGTERM).",
       "", w=6, h=4),
    ts("HTTP connections pending / rejected",
       [(f"max by (instance) (relay_http_connections_pending{sel()})",
         "{{instance}} pending"),
        (f"sum by (instance, reason) ({rate('relay_http_connections_rejected_total')})",
         "{{instance}} rejected {{reason}}/s")],
       "short",
       "Connections accepted but not yet upgraded or answered (`relay_http_connections_"
       "pending`), and connections closed before a request completed, by reason (`limit` = "
       "--max-pending-connections reached, `header_timeout`, `body_timeout`).",
       "A rising pending count with `header_timeout` rejections means slow or idle clients "
       "(a scan or slowloris); `limit` rejections mean the pending cap is too small for the "
       "connection rate.", w=12),
    table("Build versions",
          [(f"count by (version) (relay_build_info{sel()})", "{{version}}")],
          "Instances per relay version (`relay_build_info{version}`), over the selected "
          "instances. More than one row means a rollout is in progress (or stuck).",
          "If two versions stay side by side after a deploy, finish or roll back the "
          "rollout.", w=6, h=6),
    table("Instance versions",
          [(f"max by (instance, version) (relay_build_info{sel()})", "")],
          "Which version each instance runs.", "", w=6, h=6),
    ts("Uptime",
       [(relay_only(f"time() - process_start_time_seconds{sel()}"), "{{instance}}")],
       "s",
       "Seconds since each relay process started (`process_start_time_seconds`). A saw-tooth "
       "means restarts.",
       "Unexpected restarts: check the orchestrator for OOM kills or crashes.", w=12, h=6),

    row("Calls"),
    ts("Calls started by agent",
       [(f"sum by (agent) ({rate('relay_calls_started_total')})", "{{agent}}")],
       "ops",
       "Calls per second that received Twilio's `start` and asked for an agent, by agent "
       "dialect (`relay_calls_started_total`). Stacked: the top line is the fleet's call "
       "start rate.",
       "A drop to zero with traffic expected means Twilio is not reaching the relay (check "
       "Upgrade results and the TwiML webhook).", w=12, stack=True),
    ts("Calls started per instance",
       [(f"sum by (instance) ({rate('relay_calls_started_total')})", "{{instance}}")],
       "ops",
       "The same rate split by instance: shows how the load balancer spreads calls.",
       "", w=12),
    ts("Call outcomes",
       [(f"sum by (outcome) ({rate('relay_calls_total')})", "{{outcome}}")],
       "ops",
       "Calls ended per second, stacked by outcome (`relay_calls_total`). Normal endings: "
       "caller_hangup, caller_closed, agent_closed, agent_ended, replaced, shutdown. "
       "Everything else is a failure: caller_error / caller_idle / caller_stalled (Twilio "
       "leg broke or went quiet), media_format_unsupported, agent_error / agent_stalled / "
       "agent_connect_failed (agent side), audio_format_mismatch, start_timeout (no `start` "
       "after the upgrade), "
       "max_duration, token_rejected (bad stream token).",
       "Look at the largest non-normal band first, then at Errors by kind for its cause.",
       w=12, stack=True),
    ts("Abnormal call endings",
       [(f"sum by (instance) ({rate('relay_calls_total', ABNORMAL)})"
         f" / sum by (instance) ({rate('relay_calls_total')})", "{{instance}}")],
       "percentunit",
       "Share of ended calls whose outcome is not a normal ending, per instance. Empty "
       "(NaN) while no call ends.",
       "Above a few percent: find the outcome in Call outcomes; the alert "
       "MediaRelayAbnormalCallEndings fires above 10 % for 10 m.", w=12),

    row("Audio"),
    ts("Frames per second by direction",
       [(f"sum by (instance, direction) ({rate('relay_frames_total')})",
         "{{instance}} {{direction}}")],
       "ops",
       "Audio frames relayed per second, per instance and direction (`relay_frames_total`): "
       "twilio_to_agent is caller audio (50 frames/s per call), agent_to_twilio is agent "
       "audio sent to Twilio as media messages (chunks of up to --twilio-chunk-ms). Calls "
       "fold their counts in every ~5 s of audio, so short windows look steppy.",
       "", w=12),
    ts("Audio seconds per second",
       [(f"sum by (direction) ({rate('relay_audio_bytes_total')}) / 8000", "{{direction}}")],
       "short",
       "μ-law bytes relayed per second divided by 8000 (`relay_audio_bytes_total`): roughly "
       "the number of streams carrying audio in each direction.",
       "", w=12),
    ts("Drop ratio by direction and reason",
       [(f"sum by (direction, reason) ({rate('relay_frames_dropped_total')}) / on (direction) "
         f"group_left sum by (direction) ({rate('relay_frames_total')})",
         "{{direction}} {{reason}}")],
       "percentunit",
       "Frames dropped per frame relayed (`relay_frames_dropped_total / relay_frames_total`). "
       "Reasons: `early_buffer_full` (caller audio buffered while the agent connected "
       "overflowed --early-audio-ms), `outbox_full` (a socket did not keep up: the oldest "
       "queued audio was dropped), `interrupted` (agent audio of a reply the caller "
       "interrupted: expected with barge-ins), `echo_queue_full` (echo agent).",
       "`interrupted` is normal. Sustained `outbox_full` points at a slow agent or Twilio "
       "connection or an overloaded host; `early_buffer_full` at slow agent connects. The "
       "MediaRelayFrameDropRatioHigh alert (all reasons but `interrupted`) fires above 1 %.",
       w=12),
    ts("Error ratio by leg",
       [(f"sum by (leg) ({rate('relay_errors_total')}) / on () group_left "
         f"sum({rate('relay_frames_total')})", "{{leg}}")],
       "percentunit",
       "Errors per relayed frame, by leg (`relay_errors_total / relay_frames_total`): "
       "`twilio` (bad messages, signatures, stream tokens), `agent` (bad agent messages, "
       "connect failures, agent error events), `internal`. With no frames relayed any "
       "error shows as +Inf.",
       "Find the kind in Errors by kind. The MediaRelayErrorRatioHigh alert fires above "
       "0.1 % for 10 m.", w=12),
    table("Errors by kind (top 10 over the range)",
          [(f"topk(10, sum by (leg, kind) ({inc('relay_errors_total', window='$__range')}))",
            "")],
          "The ten `leg`/`kind` pairs of `relay_errors_total` with the most errors over the "
          "dashboard's time range.",
          "Kinds: message_too_large, websocket_protocol, malformed_json, invalid_base64, "
          "media_before_start… (Twilio); connect, tls, timeout, handshake, "
          "signed_url_status, ready_timeout, agent_error_event… (agent). Connect-type agent "
          "kinds point at the vendor or the network; Twilio message kinds at a client that "
          "is not Twilio.", w=12, h=8),
    ts("Unknown events by agent and leg",
       [(f"sum by (agent, leg) ({rate('relay_unknown_events_total')})", "{{agent}} {{leg}}")],
       "ops",
       "Messages of a type the relay does not know, tolerated and skipped "
       "(`relay_unknown_events_total`), per agent dialect and leg.",
       "A new steady rate after a vendor release means their protocol grew an event: check "
       "whether the relay should handle it.", w=12),

    row("Agents and upgrades"),
    ts("Agent connect failure ratio",
       [(f"sum by (agent) ({rate('relay_agent_connects_total', FAILED)}) / "
         f"sum by (agent) ({rate('relay_agent_connects_total')})", "{{agent}}")],
       "percentunit",
       "Share of agent connection attempts that failed, per agent "
       "(`relay_agent_connects_total{result=\"failed\"}` / all attempts). A failed connect "
       "ends the call as agent_connect_failed. NaN while no call connects.",
       "Check the agent's status page and Errors by kind (connect, tls, timeout, "
       "signed_url_status, handshake). Alerts MediaRelayAgentConnectFailures (5 %) and "
       "MediaRelayAgentConnectsFailing (50 %).", w=12, percent_max=1),
    ts("Agent connects by result",
       [(f"sum by (agent, result) ({rate('relay_agent_connects_total')})",
         "{{agent}} {{result}}")],
       "ops",
       "Agent connection attempts per second by agent and result (ok, failed).",
       "", w=12),
    ts("Upgrade results",
       [(f"sum by (result) ({rate('relay_upgrades_total')})", "{{result}}")],
       "ops",
       "`/media` WebSocket upgrade attempts per second by result (`relay_upgrades_total`): "
       "accepted, rejected_capacity (503, --max-calls reached), rejected_draining (503, "
       "SIGTERM), rejected_signature (403, bad Twilio signature), bad_request (400).",
       "rejected_capacity means callers are being turned away: scale out (alert "
       "MediaRelayRejectingCalls). rejected_signature in bulk means a misconfigured "
       "TWILIO_AUTH_TOKEN / --public-host or someone probing the endpoint.", w=12, stack=True),

    row("Playout and interaction"),
    ts("Agent audio played vs flushed",
       [(f"sum by (result) ({rate('relay_playout_audio_bytes_total')}) / 8000", "{{result}}")],
       "short",
       "Seconds of agent audio per second that Twilio confirmed played (mark echoed) or "
       "that a `clear` flushed after a barge-in (`relay_playout_audio_bytes_total` / 8000).",
       "A large flushed share means callers interrupt a lot: replies may be too long.",
       w=8),
    ts("Marks by result",
       [(f"sum by (agent, result) ({rate('relay_marks_total')})", "{{agent}} {{result}}")],
       "ops",
       "Twilio mark echoes per second by agent and result (played, flushed).", "", w=8),
    ts("Barge-ins, DTMF and tool calls",
       [(f"sum by (agent) ({rate('relay_barge_ins_total')})", "barge-ins {{agent}}"),
        (f"sum by (agent) ({rate('relay_dtmf_total')})", "dtmf {{agent}}"),
        (f"sum by (agent, result) ({rate('relay_tool_calls_total')})",
         "tool {{agent}} {{result}}")],
       "ops",
       "Per agent: interruptions that sent Twilio a `clear` (`relay_barge_ins_total`), "
       "keypad digits received (`relay_dtmf_total`), and tool calls the agent asked the "
       "relay to run by result (`relay_tool_calls_total`: ok, error_status, bad_response, "
       "unreachable, timeout, not_configured, limit_reached, invalid_arguments, discarded).",
       "Tool results other than ok point at the tool webhook (RELAY_TOOL_WEBHOOK_URL).",
       w=8),

    row("Security and call control"),
    ts("Stream authentication",
       [(f"sum by (result) ({rate('relay_stream_tokens_total')})", "token {{result}}"),
        (f"sum({rate('relay_streams_unauthenticated_total')})", "unauthenticated"),
        (f"sum({rate('relay_duplicate_streams_total')})", "duplicate (replaced)")],
       "ops",
       "Stream token checks at `start` by result (`relay_stream_tokens_total`: valid, "
       "token_missing, token_invalid), streams admitted without "
       "signature validation (`relay_streams_unauthenticated_total`, should be 0 in "
       "production), and streams that replaced a live stream of the same call "
       "(`relay_duplicate_streams_total`).",
       "Unauthenticated streams in production mean TWILIO_AUTH_TOKEN is not set. Token "
       "failures in bulk mean a secret mismatch between instances (RELAY_TOKEN_SECRET) or "
       "replayed URLs.", w=8),
    ts("Outbound calls by result",
       [(f"sum by (result) ({rate('relay_outbound_calls_total')})", "{{result}}")],
       "ops",
       "`POST /outbound-call` requests per second by result (`relay_outbound_calls_total`: "
       "placed or the error code; every result exists at 0 from start-up).",
       "unauthorized: a client with a wrong RELAY_API_TOKEN; rate_limited: a client over "
       "--outbound-calls-per-minute; Twilio errors: check the Twilio console.", w=8),
    ts("Twilio status callbacks",
       [(f"sum by (status) ({rate('relay_call_status_callbacks_total')})", "call {{status}}"),
        (f"sum by (event) ({rate('relay_stream_status_callbacks_total')})",
         "stream {{event}}"),
        (f"sum({rate('relay_drain_notices_total')})", "drain notices")],
       "ops",
       "Twilio call status callbacks by CallStatus and stream status callbacks by "
       "StreamEvent (every label value exists at 0 from start-up), plus calls that heard "
       "the drain notice before the drain deadline (`relay_drain_notices_total`).",
       "Many busy / failed / no-answer statuses: outbound calls are not connecting. "
       "stream-error: Twilio could not keep the media stream.", w=8),

    row("Process"),
    ts("CPU per instance",
       [(f"sum by (instance) ({relay_only(rate('process_cpu_seconds_total'))})",
         "{{instance}}")],
       "short",
       "CPU cores used by each relay process (rate of `process_cpu_seconds_total`).",
       "Near the container's CPU limit, relay-added latency rises: scale out or lower "
       "--max-calls.", w=6),
    ts("Resident memory per instance",
       [(relay_only(f"process_resident_memory_bytes{sel()}"), "{{instance}}")],
       "bytes",
       "Resident set size of each relay process. It grows with live calls (buffers per "
       "call) and should fall back when they end.",
       "Growth with a flat call count is a leak: capture /calls and a heap profile.", w=6),
    ts("Open file descriptors",
       [(relay_only(f"process_open_fds{sel()}"), "{{instance}} open"),
        (relay_only(f"process_max_fds{sel()}"), "{{instance}} max")],
       "short",
       "Open file descriptors (about 2 sockets per call plus pending connections) against "
       "the process limit (dashed).",
       "Near the limit new connections fail: raise the fd limit (ulimit -n / container "
       "nofile) or lower --max-calls.", w=6, dashed=[("/ max$/", None)]),
    ts("Threads",
       [(relay_only(f"process_threads{sel()}"), "{{instance}}")],
       "short",
       "Threads of each relay process (the async runtime's workers plus blocking pool).",
       "", w=6),
]

# ---------------------------------------------------------------------------------------
# Latency: per histogram a heatmap and p50/p95/p99.

# (metric, title, group label, what it measures, what to do, per-label heatmaps)
HISTOGRAMS = [
    ("relay_forward_latency_seconds", "Relay-added latency", "direction",
     "Time the relay itself adds to one frame: from the frame being fully read to it "
     "being handed to the other socket's write (network and agent time excluded). Buckets "
     "32 µs … 131 ms.",
     "p99 above a few ms means the relay is CPU-starved or blocked: check CPU per "
     "instance. Alert MediaRelayForwardLatencyP99High (p99 > 5 ms for 10 m).",
     ["twilio_to_agent", "agent_to_twilio"]),
    ("relay_call_forward_latency_p99_seconds", "Per-call p99 relay-added latency",
     "direction",
     "One observation per ended call: that call's own p99 relay-added latency. The "
     "quantiles are across calls (p95 = 95 % of calls had a p99 at or below it).",
     "A long tail here with a normal fleet-wide p99 means a few calls suffer (a hot "
     "instance or a slow socket).", None),
    ("relay_inbound_jitter_seconds", "Inbound jitter", None,
     "How far the inter-arrival time of Twilio media messages deviates from 20 ms.",
     "High jitter is network-side (Twilio → relay); it shows as choppy audio to the agent.",
     None),
    ("relay_agent_connect_duration_seconds", "Agent connect duration", "agent",
     "Successful agent connects: signed-URL fetch, TCP, TLS and the WebSocket upgrade. "
     "Failed connects are not observed (see Agent connect failure ratio).",
     "Slow connects delay the first agent audio; compare with the vendor's status.", None),
    ("relay_call_duration_seconds", "Call duration", None,
     "Call length from upgrade to end, observed when the call ends. Buckets 1 s … 2 h.",
     "A sudden shift to short calls together with abnormal outcomes means calls are being "
     "cut.", None),
    ("relay_turn_latency_seconds", "Turn latency (relay-measured)", "agent",
     "Caller stops speaking (μ-law energy detector on the caller audio) → first agent "
     "audio of the reply written to Twilio. What the caller experiences, measured the same "
     "way for every agent.",
     "High p95 with normal relay-added latency is agent-side (LLM/TTS). Alert "
     "MediaRelayTurnLatencyP95High (p95 > 1.5 s for 10 m).", None),
    ("relay_agent_turn_latency_seconds", "Turn latency (agent end-of-speech)", "agent",
     "From the agent's own end-of-speech signal (speech-stopped event, or the caller's "
     "final transcript for ElevenLabs) to the first reply audio written to Twilio.",
     "Compare with the relay-measured turn latency: the difference is the agent's "
     "end-of-turn detection delay.", None),
    ("relay_call_turn_latency_p95_seconds", "Per-call p95 turn latency", "agent",
     "One observation per ended call that had turns: that call's p95 relay-measured turn "
     "latency. Bucket edge at 1.5 s, so the share of calls above 1.5 s is exact (Call "
     "quality dashboard).",
     "", None),
    ("relay_barge_in_latency_seconds", "Barge-in latency", "agent",
     "The agent's interruption signal read → `clear` written to Twilio.",
     "Should be well under 10 ms; higher means the relay is busy or the Twilio socket is "
     "backed up.", None),
    ("relay_playout_lag_seconds", "Playout lag", "agent",
     "Mark sent to Twilio → mark echoed as played: the agent audio queued at Twilio ahead "
     "of the mark plus the network.",
     "Grows when agents send audio much faster than real time (long queues make barge-in "
     "flush more).", None),
    ("relay_agent_ping_rtt_seconds", "Agent ping RTT", "agent",
     "Round-trip time the agent reports for its keepalive pings (ElevenLabs `ping_ms`; "
     "other dialects report none).",
     "A rise is network or vendor-side.", None),
]


def latency_specs():
    specs = []
    for metric, title, by, what, act, split in HISTOGRAMS:
        agent = by == "agent"
        specs.append(row(title))
        if split:
            for v in split:
                matcher = by + '="' + v + '"'
                specs.append(heatmap(
                    f"{title} heatmap: {v}",
                    f"sum by (le) ({rate(metric + '_bucket', matcher, agent)})",
                    f"Rate of `{metric}` observations per bucket (y: bucket upper bound, "
                    f"colour: observations/s), {by} {v}. " + what,
                    "", w=8))
        else:
            specs.append(heatmap(
                f"{title} heatmap",
                f"sum by (le) ({rate(metric + '_bucket', agent=agent)})",
                f"Rate of `{metric}` observations per bucket (y: bucket upper bound, colour: "
                f"observations/s)" + (", all selected agents" if agent else "") + ". " + what,
                "", w=12))
        legend = "{{" + by + "}}" if by else ""
        targets = [(hq(q, metric, by or "", agent=agent),
                    f"p{int(q * 100)} {legend}".strip()) for q in (0.5, 0.95, 0.99)]
        specs.append(ts(f"{title} p50 / p95 / p99", targets, "s",
                        f"`histogram_quantile` over `{metric}`"
                        + (f" by {by}" if by else "") + ". " + what
                        + " Empty (NaN) while nothing was observed in the window.",
                        act, w=8 if split else 12))
        if metric == "relay_forward_latency_seconds":
            specs[-1]["_w"] = 8
            specs.append(ts(
                f"{title} p99 by instance",
                [(hq(0.99, metric, "instance, direction"), "{{instance}} {{direction}}")],
                "s",
                "p99 relay-added latency per instance and direction: a single hot instance "
                "stands out here.", act, w=12))
            specs.append(ts(
                f"{title} mean",
                [(f"sum by (direction) ({rate(metric + '_sum')}) / "
                  f"sum by (direction) ({rate(metric + '_count')})", "{{direction}}")],
                "s",
                "Mean relay-added latency per direction (`_sum / _count`).", "", w=12))
    return specs


# ---------------------------------------------------------------------------------------
# Call quality: the across-calls histograms and per-call figures.

P95 = "relay_call_turn_latency_p95_seconds"
P99 = "relay_call_forward_latency_p99_seconds"


def share_over(metric, le, by, window, agent=False, extra=""):
    e = (extra + ", " if extra else "") + f'le="{le}"'
    return (f"1 - (sum by ({by}) ({inc(metric + '_bucket', e, agent, window)}) / "
            f"sum by ({by}) ({inc(metric + '_count', extra, agent, window)}))")


QUALITY = [
    row("Turn latency SLO: share of calls whose p95 turn latency exceeded 1.5 s"),
    stat("Calls over 1.5 s p95 (range)",
         [(share_over(P95, "1.5", "agent", "$__range", agent=True), "{{agent}}")],
         "percentunit",
         "Over the dashboard's time range, per agent: the share of ended calls whose own p95 "
         "turn latency was above 1.5 s, `1 − bucket{le=\"1.5\"} / count` of "
         "`relay_call_turn_latency_p95_seconds` (1.5 s is a bucket edge, so this is exact). "
         "Only calls with at least one turn count. NaN for agents with no such call.",
         "Track it against your target (e.g. under 5 %). Rising: look at Turn latency "
         "percentiles by agent to see whether all turns or a tail got slower.",
         w=8, h=6, thresholds=thresholds((None, "green"), (0.05, "orange"), (0.2, "red"))),
    ts("Calls over 1.5 s p95 over time",
       [(share_over(P95, "1.5", "agent", RI, agent=True), "{{agent}}")],
       "percentunit",
       "The same share per `$__rate_interval` window (calls that ended in the window). "
       "Noisy at low call rates: widen the time range so the interval grows.",
       "", w=16, h=6, percent_max=1),
    ts("Calls ending with turns by agent",
       [(f"sum by (agent) ({rate(P95 + '_count', agent=True)})", "{{agent}}")],
       "ops",
       "Calls per second that ended having had at least one turn (the denominator of the "
       "share above).", "", w=8, h=6),
    bars("Per-call p95 turn latency distribution (range)",
         f"sum by (le) ({inc(P95 + '_bucket', agent=True, window='$__range')})",
         "How many ended calls had their p95 turn latency in each bucket over the range: "
         "each bar counts the calls between the previous bound and its own (format heatmap "
         "turns Prometheus' cumulative buckets into per-bucket counts).",
         "", w=16, h=6),

    row("Turn latency by agent"),
    ts("Turn latency p50 / p95 / p99 by agent (relay-measured)",
       [(hq(q, "relay_turn_latency_seconds", "agent", agent=True),
         f"p{int(q * 100)} {{{{agent}}}}") for q in (0.5, 0.95, 0.99)],
       "s",
       "Across all turns (not per call): caller stops speaking → first reply audio to "
       "Twilio, by agent.",
       "p95 above 1.5 s for 10 m fires MediaRelayTurnLatencyP95High.", w=12),
    ts("Turn latency p95: relay vs agent end-of-speech",
       [(hq(0.95, "relay_turn_latency_seconds", "agent", agent=True), "relay {{agent}}"),
        (hq(0.95, "relay_agent_turn_latency_seconds", "agent", agent=True),
         "agent-signal {{agent}}")],
       "s",
       "p95 of the relay-measured turn latency next to the one measured from the agent's "
       "own end-of-speech signal. The gap is how long the agent takes to decide the caller "
       "finished.", "", w=12),

    row("Relay-added latency per call"),
    bars("Per-call p99 relay-added latency: twilio_to_agent (range)",
         f"sum by (le) ({inc(P99 + '_bucket', T2A, window='$__range')})",
         "Distribution of each ended call's p99 relay-added latency for caller audio over "
         "the range: calls per bucket (between the previous bound and the bar's own; bounds "
         "32 µs … 131 ms).",
         "Most calls should sit in the sub-millisecond buckets.", w=12, h=7),
    bars("Per-call p99 relay-added latency: agent_to_twilio (range)",
         f"sum by (le) ({inc(P99 + '_bucket', A2T, window='$__range')})",
         "The same for agent audio.", "", w=12, h=7),
    ts("Calls whose p99 relay-added latency exceeded 4 ms",
       [(share_over(P99, "0.004096", "direction", RI), "{{direction}}")],
       "percentunit",
       "Share of ended calls whose own p99 relay-added latency was above 4.096 ms (a bucket "
       "edge), per direction.",
       "Non-zero: some calls ran on a starved instance; check CPU per instance.", w=12,
       percent_max=1),
    ts("Per-call p99 relay-added latency: median and p95 across calls",
       [(hq(q, P99, "direction"), f"p{int(q * 100)} of calls {{{{direction}}}}")
        for q in (0.5, 0.95)],
       "s",
       "Across the calls that ended in each window: the median call's p99 and the p95 "
       "call's p99.", "", w=12),

    row("Interaction and audio continuity"),
    ts("Barge-ins per call",
       [(f"sum by (agent) ({inc('relay_barge_ins_total', agent=True)}) / "
         f"sum by (agent) ({inc('relay_calls_started_total', agent=True)})", "{{agent}}")],
       "short",
       "Barge-ins (interruptions that sent a `clear`) per call started in the same window, "
       "by agent. Approximate over short windows (barge-ins are counted during calls, calls "
       "when they start).",
       "Many barge-ins per call: replies too long or the agent talks over the caller.",
       w=8),
    stat("Barge-ins per call (range)",
         [(f"sum by (agent) ({inc('relay_barge_ins_total', agent=True, window='$__range')}) / "
           f"sum by (agent) ({inc('relay_calls_started_total', agent=True, window='$__range')})",
           "{{agent}}")],
         "short",
         "Barge-ins per call over the dashboard's range, by agent.", "", w=4, h=8),
    ts("Missing inbound frames per minute",
       [(f"sum by (instance) ({rate('relay_inbound_frames_missing_total')}) * 60",
         "{{instance}}")],
       "short",
       "Twilio media frames missing according to gaps in `media.chunk`, per minute and "
       "instance (`relay_inbound_frames_missing_total`). Twilio numbers every inbound frame; "
       "a gap means audio lost before it reached the relay.",
       "Non-zero: packet loss or stalls between Twilio and the relay (network, load "
       "balancer); correlate with Inbound jitter.", w=12),
    ts("Flushed share of agent audio",
       [(f"sum({rate('relay_playout_audio_bytes_total', FLUSHED)}) / "
         f"sum({rate('relay_playout_audio_bytes_total')})", "flushed")],
       "percentunit",
       "Agent audio discarded by `clear` after barge-ins, as a share of agent audio played "
       "or flushed.", "", w=12),
    ts("Inbound jitter p95 and playout lag p95",
       [(hq(0.95, "relay_inbound_jitter_seconds"), "jitter p95"),
        (hq(0.95, "relay_playout_lag_seconds", "agent", agent=True), "playout lag p95 {{agent}}")],
       "s",
       "Caller-side audio health: p95 deviation of Twilio's frame spacing from 20 ms, and "
       "p95 time from a mark sent to Twilio until Twilio reports it played.", "", w=12),
]


DASHBOARDS = [
    ("media-relay-overview.json", "media-relay-overview", "media-relay: Overview",
     "Fleet health of media-relay: capacity, calls and outcomes, audio flow, errors, agent "
     "connects, upgrades, playout, call control and process resources.",
     OVERVIEW, False),
    ("media-relay-latency.json", "media-relay-latency", "media-relay: Latency",
     "Every latency histogram media-relay exports: a heatmap and p50/p95/p99 each.",
     None, True),
    ("media-relay-call-quality.json", "media-relay-call-quality", "media-relay: Call quality",
     "Per-call quality: share of calls over the 1.5 s turn-latency target, per-call "
     "relay-added latency, turn latency by agent, barge-ins per call, missing frames.",
     QUALITY, True),
]


def strip(obj):
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def readme_section(built):
    out = ["<!-- BEGIN GENERATED PANELS (python3 grafana/gen_dashboards.py) -->", ""]
    for (fname, uid, title, _desc, specs, _agent) in built:
        out.append(f"### {title} (`dashboards/{fname}`, uid `{uid}`)")
        out.append("")
        for s in specs:
            if s["_kind"] == "row":
                if out[-1] != "":
                    out.append("")
                out.append(f"#### {s['_title']}")
                out.append("")
                continue
            out.append(f"- **{s['_title']}** ({s['_kind']}, unit `{s['_unit']}`). "
                       + s["_what"] + (" *What to do:* " + s["_act"] if s["_act"] else ""))
            for expr, _legend in s["_targets"]:
                out.append(f"  - `{expr}`")
        out.append("")
    out.append("<!-- END GENERATED PANELS -->")
    return "\n".join(out)


def main():
    check = "--check" in sys.argv
    stale = []
    built = []
    for fname, uid, title, desc, specs, with_agent in DASHBOARDS:
        if specs is None:
            specs = latency_specs()
        built.append((fname, uid, title, desc, specs, with_agent))
        d = dashboard(uid, title, desc, specs, with_agent, [])
        text = strip(d)
        path = os.path.join(HERE, "dashboards", fname)
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if old != text:
            stale.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    readme = os.path.join(HERE, "README.md")
    if os.path.exists(readme):
        text = open(readme, encoding="utf-8").read()
        new = re.sub(r"<!-- BEGIN GENERATED PANELS.*?<!-- END GENERATED PANELS -->",
                     lambda _m: readme_section(built), text, flags=re.S)
        if new != text:
            stale.append(readme)
            if not check:
                with open(readme, "w", encoding="utf-8") as f:
                    f.write(new)
    if check and stale:
        print("out of date (run python3 grafana/gen_dashboards.py):", *stale, sep="\n  ")
        sys.exit(1)
    if not check:
        for p in stale:
            print("wrote", os.path.relpath(p))


if __name__ == "__main__":
    main()

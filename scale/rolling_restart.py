#!/usr/bin/env python3
"""Rolling-restart proof for media-relay behind haproxy (Python 3 stdlib only).

See scale/README.md. Two parts:

1. Outbound call across instances (signed mode): relay A places an outbound call through a
   mock of Twilio's Calls API; relay B answers Twilio's TwiML fetch of the signed Url and
   admits the media stream bound to that call (A and B share only their configuration).
2. Rolling restart: three relays (release binary, unauthenticated, the loadtest mock agent)
   behind haproxy (HTTP mode, WebSocket tunnels, `option httpchk GET /readyz`); the load
   harness runs short calls through haproxy continuously (churn) while each relay in turn is
   sent SIGTERM, drains, exits and is replaced on the same port. Checked: 0 calls cut, 0
   frames lost, every call byte-exact, no new call refused while at least one instance was
   ready.

Everything listens on 127.0.0.1 only.
"""

import argparse
import base64
import csv
import hashlib
import hmac
import http.server
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_request(port, method, path, body=b"", headers=None, timeout=3.0):
    """Minimal HTTP/1.1 client (Connection: close). Returns (status, headers, body)."""
    headers = dict(headers or {})
    headers.setdefault("Host", f"127.0.0.1:{port}")
    headers["Connection"] = "close"
    if body or method == "POST":
        headers["Content-Length"] = str(len(body))
    req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(req.encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        out, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            out += buf[:n]
            buf = buf[n + 2:]
        rest = out
    return status, hdrs, rest


def metrics(port):
    """Parses GET /metrics into {name: value} (labelled series as name{labels})."""
    status, _, body = http_request(port, "GET", "/metrics", timeout=2.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        try:
            out[key] = float(val)
        except ValueError:
            pass
    return out


def outcome_counts(m):
    r = {}
    for k, v in m.items():
        if k.startswith("relay_calls_total{"):
            o = k.split('outcome="', 1)[1].split('"', 1)[0]
            r[o] = r.get(o, 0) + v
    return r


def readyz(port):
    try:
        return http_request(port, "GET", "/readyz", timeout=1.0)[0]
    except OSError:
        return None


# --- Twilio signatures (https://www.twilio.com/docs/usage/security#validating-requests) ---

def twilio_signature(token, url, params=None):
    data = url
    for k in sorted((params or {}).keys()):
        data += k + params[k]
    mac = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


# --- A minimal WebSocket client (RFC 6455; client frames masked) ---

class WebSocket:
    def __init__(self, port, path, headers):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
        self.sock.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            buf += chunk
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        self.status = int(head.split()[1])
        expect = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if self.status == 101 and expect.encode() not in head:
            raise ConnectionError("bad Sec-WebSocket-Accept")
        self.lock = threading.Lock()
        self.messages = []  # (t, opcode, payload)
        self.closed = None  # close code once the server closed
        self.reader = None

    def _send(self, op, payload):
        mask = os.urandom(4)
        n = len(payload)
        hdr = bytes([0x80 | op])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.lock:
            self.sock.sendall(hdr + mask + masked)

    def send_text(self, text):
        self._send(0x1, text.encode())

    def close(self, code=1000):
        try:
            self._send(0x8, struct.pack(">H", code))
        except OSError:
            pass

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _recv(self):
        data, first_op = b"", None
        while True:
            b0, b1 = self._read(2)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if op == 0x9:
                self._send(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                return op, payload
            if first_op is None:
                first_op = op
            data += payload
            if b0 & 0x80:
                return first_op, data

    def start_reader(self):
        def run():
            self.sock.settimeout(None)
            try:
                while True:
                    op, payload = self._recv()
                    self.messages.append((time.time(), op, payload))
                    if op == 0x8:
                        self.closed = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                        self.close(self.closed)
                        return
            except (EOFError, OSError):
                if self.closed is None:
                    self.closed = 0
        self.reader = threading.Thread(target=run, daemon=True)
        self.reader.start()


# --- processes ---

class Relay:
    def __init__(self, name, binary, port, args, env, logdir):
        self.name, self.binary, self.port, self.args, self.env = name, binary, port, args, env
        self.logdir = logdir
        self.gen = 0
        self.proc = None
        self.log_path = None

    def start(self):
        self.gen += 1
        self.log_path = self.logdir / f"{self.name}-gen{self.gen}.log"
        logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}"] + self.args,
                                     env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log_path}")
            if readyz(self.port) == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within 15 s; log {self.log_path}")

    def stop(self, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def relay_env(extra):
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("RELAY_") or k.startswith("TWILIO_") or k.startswith("ELEVENLABS_")
                   or k.startswith("ASSEMBLYAI_") or k.startswith("OPENAI_"))}
    env.update(extra)
    return env


def call_log_outcomes(path):
    """end_reason of every 'call ended' line of a relay's JSON log."""
    out = {}
    try:
        with open(path, "rb") as f:
            for raw in f:
                if b"call ended" not in raw:
                    continue
                try:
                    v = json.loads(raw)
                except ValueError:
                    continue
                fields = v.get("fields", v)
                if fields.get("message") != "call ended":
                    continue
                r = fields.get("end_reason", "?")
                out[r] = out.get(r, 0) + 1
    except OSError:
        pass
    return out


# --- part 1: outbound call across instances (signed mode) ---

class MockTwilio(http.server.ThreadingHTTPServer):
    daemon_threads = True


def run_outbound_check(binary, workdir):
    log("outbound check: mock Twilio Calls API + two signed relays (A places, B admits)")
    token = "test-token"
    account = "AC" + "0123456789abcdef" * 2
    api_token = "relay-api-token-" + os.urandom(8).hex()
    secret = "shared-token-secret-" + os.urandom(8).hex()
    host = "relay.example.com"
    recorded = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path = self.path
            if path != f"/2010-04-01/Accounts/{account}/Calls.json":
                self.send_response(404)
                self.end_headers()
                return
            sid = "CA" + os.urandom(16).hex()
            recorded.append({"path": path, "authorization": self.headers.get("Authorization"),
                             "form": urllib.parse.parse_qs(body.decode(), keep_blank_values=True), "sid": sid})
            out = json.dumps({"sid": sid, "status": "queued"}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    mock = MockTwilio(("127.0.0.1", 0), Handler)
    threading.Thread(target=mock.serve_forever, daemon=True).start()
    mock_port = mock.server_address[1]
    env = relay_env({
        "RUST_LOG": "info", "TWILIO_AUTH_TOKEN": token, "TWILIO_ACCOUNT_SID": account,
        "RELAY_API_TOKEN": api_token, "RELAY_TOKEN_SECRET": secret,
        "TWILIO_API_BASE": f"http://127.0.0.1:{mock_port}",
    })
    args = ["--public-host", host, "--log-format", "json"]
    a = Relay("signed-A", binary, free_port(), args, env, workdir)
    b = Relay("signed-B", binary, free_port(), args, env, workdir)
    checks = {}
    detail = {}
    try:
        a.start()
        b.start()
        body = json.dumps({"to": "+15551230001", "from": "+15557654321"}).encode()
        st, _, resp = http_request(a.port, "POST", "/outbound-call", body,
                                   {"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"})
        detail["outbound_call_status"] = st
        detail["outbound_call_answer"] = resp.decode(errors="replace")
        checks["A places the call (200 with a call SID)"] = st == 200 and len(recorded) == 1
        if not recorded:
            raise RuntimeError(f"A answered {st} {resp!r}; the mock recorded nothing")
        rec = recorded[0]
        call_sid = json.loads(resp)["call_sid"]
        expect_auth = "Basic " + base64.b64encode(f"{account}:{token}".encode()).decode()
        checks["A authenticated to Twilio with the account SID and auth token"] = rec["authorization"] == expect_auth
        url = rec["form"]["Url"][0]
        detail["Url"] = url
        detail["call_sid"] = call_sid
        checks["the Url points at the public host's /twiml/outbound"] = url.startswith(f"https://{host}/twiml/outbound?")
        path = url[len(f"https://{host}"):]
        form = {"CallSid": call_sid, "AccountSid": account, "From": "+15557654321", "To": "+15551230001",
                "CallStatus": "in-progress", "Direction": "outbound-api"}
        form_body = urllib.parse.urlencode(form).encode()
        sig = twilio_signature(token, url, form)
        hdr = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig}
        # Negative control first: the same fetch with a wrong signature is refused.
        st_bad, _, _ = http_request(b.port, "POST", path, form_body,
                                    dict(hdr, **{"X-Twilio-Signature": twilio_signature("wrong", url, form)}))
        checks["B refuses the TwiML fetch with a wrong signature (403)"] = st_bad == 403
        st, _, twiml = http_request(b.port, "POST", path, form_body, hdr)
        detail["twiml_status"] = st
        detail["twiml"] = twiml.decode(errors="replace")
        checks["B answers Twilio's TwiML fetch of A's Url (200)"] = st == 200
        root = ET.fromstring(twiml)
        stream = root.find(".//Stream")
        params = {p.get("name"): p.get("value") for p in root.iter("Parameter")}
        checks["the TwiML streams to wss://public-host/media with a relay_token"] = (
            stream is not None and stream.get("url") == f"wss://{host}/media" and "relay_token" in params)

        def open_stream(p):
            ws = WebSocket(b.port, "/media", {"X-Twilio-Signature": twilio_signature(token, f"wss://{host}/media")})
            if ws.status != 101:
                return ws
            ws.start_reader()
            stream_sid = "MZ" + os.urandom(16).hex()
            ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            ws.send_text(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
                "accountSid": account, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": p}}))
            payload = base64.b64encode(bytes(range(160))).decode()
            for i in range(75):  # 1.5 s of audio
                if ws.closed is not None:
                    break
                ws.send_text(json.dumps({"event": "media", "sequenceNumber": str(i + 2), "streamSid": stream_sid,
                                         "media": {"track": "inbound", "chunk": str(i + 1),
                                                   "timestamp": str(20 * i), "payload": payload}}))
                time.sleep(0.02)
            time.sleep(0.7)
            ws.stream_sid = stream_sid
            return ws

        # Negative control: a tampered relay_token is closed with 1008.
        bad = dict(params)
        bad["relay_token"] = "x" + bad["relay_token"][1:] if bad["relay_token"][0] != "x" else "y" + bad["relay_token"][1:]
        ws_bad = open_stream(bad)
        checks["B closes a stream with a tampered relay_token (1008)"] = ws_bad.status == 101 and ws_bad.closed == 1008
        detail["tampered_stream_close"] = ws_bad.closed
        ws = open_stream(params)
        detail["stream_upgrade_status"] = ws.status
        media = [m for m in ws.messages if m[1] == 0x1 and b'"event":"media"' in m[2].replace(b" ", b"")]
        detail["media_received_from_B"] = len(media)
        detail["stream_closed_before_stop"] = ws.closed
        checks["B admits the stream (101, echo audio comes back, not closed)"] = (
            ws.status == 101 and len(media) > 0 and ws.closed is None)
        if ws.status == 101:
            ws.send_text(json.dumps({"event": "stop", "sequenceNumber": "99", "streamSid": ws.stream_sid,
                                     "stop": {"accountSid": account, "callSid": call_sid}}))
            deadline = time.time() + 3
            while ws.closed is None and time.time() < deadline:
                time.sleep(0.02)
            detail["stream_close_after_stop"] = ws.closed
            checks["B ends the stream with 1000 after stop"] = ws.closed == 1000
        mb = metrics(b.port)
        valid = sum(v for k, v in mb.items() if k.startswith("relay_stream_tokens_total{") and 'result="valid"' in k)
        detail["B_relay_stream_tokens_valid"] = valid
        checks["B counted exactly one valid stream token"] = valid == 1
        ma = metrics(a.port)
        placed = sum(v for k, v in ma.items() if k.startswith("relay_outbound_calls_total{") and 'result="placed"' in k)
        checks["A counted the call as placed"] = placed == 1
    finally:
        a.stop(10)
        b.stop(10)
        mock.shutdown()
    ok = all(checks.values())
    for k, v in checks.items():
        log(f"  {'PASS' if v else 'FAIL'}  {k}")
    return {"ok": ok, "checks": checks, "detail": detail}


# --- part 2: rolling restart behind haproxy ---

HAPROXY_CFG = """global
    maxconn 4000
    stats socket {sock} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    # WebSocket calls: the tunnel timeout applies after the upgrade (longest silence allowed).
    timeout tunnel 2h
    # A new call that reaches a relay in the instant between its SIGTERM and the health check
    # that takes it out (at most `inter`) is answered 503 by the draining relay; haproxy then
    # retries the upgrade (a GET without a body) on another server. Connection failures
    # (a relay that just exited) likewise.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503

frontend media
    bind 127.0.0.1:{port}
    default_backend relays

backend relays
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 500ms fall 1 rise 2
{servers}
"""


def haproxy_rows(sock_path):
    """The `relays` backend's rows (servers and BACKEND) of haproxy's `show stat`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(str(sock_path))
    s.sendall(b"show stat\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    text = data.decode()
    if text.startswith("# "):
        text = text[2:]
    return [row for row in csv.DictReader(io.StringIO(text)) if row.get("pxname") == "relays"]


def haproxy_stat(sock_path):
    """{server name: status} from haproxy's stats socket."""
    return {r["svname"]: r.get("status", "?") for r in haproxy_rows(sock_path)
            if r.get("svname") not in ("BACKEND", "FRONTEND")}


def haproxy_counters(sock_path):
    """Per server and for the backend: sessions, retries, redispatches, 5xx answers."""
    keys = {"stot": "sessions", "wretr": "retries", "wredis": "redispatches", "hrsp_5xx": "http_5xx",
            "econ": "connection_errors", "eresp": "response_errors"}
    return {r["svname"]: {v: int(r.get(k) or 0) for k, v in keys.items()} for r in haproxy_rows(sock_path)}


def ensure_haproxy():
    hp = shutil.which("haproxy")
    if hp:
        return hp
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("haproxy not found: apt-get install -y haproxy")
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=False,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
        hp = shutil.which("haproxy")
        if not hp:
            subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=False,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
            hp = shutil.which("haproxy")
    if not hp:
        sys.exit("haproxy is required (Debian package haproxy)")
    return hp


def write_svg(path, timeline, events, names, title):
    if not timeline:
        return
    W, H, L, R, T, B = 1000, 420, 60, 20, 40, 50
    t0 = timeline[0]["t"]
    tmax = max(r["t"] for r in timeline) - t0 or 1
    amax = max(max((r["instances"][n].get("active") or 0) for n in names) for r in timeline) or 1
    amax = int(amax * 1.15) + 1
    x = lambda t: L + (t - t0) / tmax * (W - L - R)
    y = lambda v: H - B - v / amax * (H - T - B)
    colors = ["#d62728", "#1f77b4", "#2ca02c"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="16">{title}</text>',
           f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>']
    tick = max(1, int(round(amax / 6)))
    for mag in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500):
        if amax / mag <= 8:
            tick = mag
            break
    for i in range(0, int(amax / tick) + 1):
        v = i * tick
        out.append(f'<text x="{L-8}" y="{y(v)+4:.1f}" text-anchor="end">{v:.0f}</text>')
        out.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{W-R}" y2="{y(v):.1f}" stroke="#eee"/>')
    step = max(5, int(tmax / 10 / 5 + 1) * 5)
    s = 0
    while s <= tmax:
        out.append(f'<text x="{x(t0+s):.1f}" y="{H-B+16}" text-anchor="middle">{s}</text>')
        s += step
    out.append(f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">seconds</text>')
    out.append(f'<text x="16" y="{(T+H-B)/2}" transform="rotate(-90 16 {(T+H-B)/2})" text-anchor="middle">relay_calls_active</text>')
    for e in events:
        ex = x(e["t"])
        col = "#888" if e["what"] == "SIGTERM" else "#bbb"
        dash = "4,3" if e["what"] == "SIGTERM" else "1,3"
        out.append(f'<line x1="{ex:.1f}" y1="{T}" x2="{ex:.1f}" y2="{H-B}" stroke="{col}" stroke-dasharray="{dash}"/>')
        row = {"SIGTERM": 0, "exited": 1, "started": 2, "UP": 3}.get(e["what"], 0)
        out.append(f'<text x="{ex+2:.1f}" y="{T+8+row*11}" font-size="9" fill="#555">{e["instance"]} {e["what"]}</text>')
    for i, n in enumerate(names):
        # Break the line where the instance was down (no sample).
        seg, segs = [], []
        for r in timeline:
            a = r["instances"][n].get("active")
            if a is None:
                if seg:
                    segs.append(seg)
                seg = []
                continue
            seg.append(f"{x(r['t']):.1f},{y(a):.1f}")
        if seg:
            segs.append(seg)
        for sg in segs:
            out.append(f'<polyline fill="none" stroke="{colors[i % 3]}" stroke-width="2" points="{" ".join(sg)}"/>')
        out.append(f'<rect x="{W-R-150}" y="{T+60+i*18}" width="14" height="4" fill="{colors[i % 3]}"/>')
        out.append(f'<text x="{W-R-130}" y="{T+66+i*18}">{n}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CI size: 20 calls of 3 s, about a minute")
    ap.add_argument("--out", help="results directory (default: scale/results, or a temp dir with --small)")
    ap.add_argument("--calls", type=int)
    ap.add_argument("--call-secs", type=float)
    ap.add_argument("--drain-timeout-secs", type=int, default=30)
    ap.add_argument("--no-l7-retry", action="store_true",
                    help="leave out haproxy's retry-on 503 (to show the window it covers)")
    ap.add_argument("--skip-outbound", action="store_true")
    a = ap.parse_args()
    calls = a.calls or (20 if a.small else 200)
    call_secs = a.call_secs or (3.0 if a.small else 5.0)
    warm = 8.0 if a.small else 15.0
    gap = 3.0 if a.small else 5.0
    tail = 6.0 if a.small else 10.0
    out = Path(a.out) if a.out else (Path(f"/tmp/rolling-restart-small-{os.getpid()}") if a.small else ROOT / "scale" / "results")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(f"/tmp/rolling-restart-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    relay_bin = Path(os.environ.get("RELAY_BIN", ROOT / "target" / "release" / "media-relay"))
    loadtest_bin = Path(os.environ.get("LOADTEST_BIN", ROOT / "target" / "release" / "loadtest"))
    if not relay_bin.exists() or not loadtest_bin.exists():
        log("building the release binaries (cargo build --release -p media-relay -p loadtest)")
        subprocess.run(["cargo", "build", "--release", "-p", "media-relay", "-p", "loadtest"], cwd=ROOT, check=True)
    haproxy = ensure_haproxy()
    hp_version = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    log(f"relay {relay_bin}, loadtest {loadtest_bin}, {hp_version}; work dir {work}, results {out}")
    def sha(p):
        return hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
    report = {"size": "small" if a.small else "default",
              "relay_bin": f"{relay_bin} (sha256 {sha(relay_bin)}…)",
              "loadtest_bin": f"{loadtest_bin} (sha256 {sha(loadtest_bin)}…)", "calls_in_flight": calls, "call_secs": call_secs,
              "drain_timeout_secs": a.drain_timeout_secs, "haproxy": hp_version,
              "l7_retry": not a.no_l7_retry, "started_unix": T0}

    # Part 1.
    if not a.skip_outbound:
        report["outbound"] = run_outbound_check(relay_bin, work)
    t_part2 = time.time()

    # Part 2: three relays behind haproxy.
    agent_port = free_port()
    ha_port = free_port()
    names = ["relay-1", "relay-2", "relay-3"]
    env = relay_env({"RUST_LOG": "info", "RELAY_TOKEN_SECRET": "shared-secret-for-all-instances"})
    rargs = ["--agent", "elevenlabs", "--elevenlabs-agent-id", "loadtest",
             "--elevenlabs-api-base", f"http://127.0.0.1:{agent_port}", "--insecure-skip-twilio-signature",
             "--drain-timeout-secs", str(a.drain_timeout_secs), "--log-format", "json"]
    relays = [Relay(n, relay_bin, free_port(), rargs, env, work) for n in names]
    sock = work / "haproxy.sock"
    servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check" for r in relays)
    cfg = HAPROXY_CFG.format(sock=sock, port=ha_port, servers=servers)
    if a.no_l7_retry:
        cfg = cfg.replace("    retry-on conn-failure empty-response 503\n", "    retry-on conn-failure\n")
    (work / "haproxy.cfg").write_text(cfg)
    (out / "haproxy.cfg").write_text(cfg.replace(str(sock), "HAPROXY_SOCK"))
    hp_log = open(work / "haproxy.log", "wb")
    hp = None
    lt = None
    timeline = []
    events = []
    gens = []  # one per relay process: name, gen, pid, port, started, sigterm, exited, counts
    stop_sampler = threading.Event()
    state = {}
    try:
        for r in relays:
            r.start()
            gens.append({"instance": r.name, "generation": r.gen, "pid": r.proc.pid, "port": r.port,
                         "started_t": time.time() - T0, "log": str(r.log_path)})
        hp = subprocess.Popen([haproxy, "-db", "-f", str(work / "haproxy.cfg")], stdout=hp_log, stderr=hp_log)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                st = haproxy_stat(sock)
                if len(st) == 3 and all(v == "UP" for v in st.values()):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"haproxy did not see all relays up; log {work / 'haproxy.log'}")
        log(f"haproxy on 127.0.0.1:{ha_port} sees {', '.join(f'{r.name}@{r.port}' for r in relays)} UP")

        def sampler():
            while not stop_sampler.is_set():
                t = time.time()
                try:
                    hs = haproxy_stat(sock)
                except OSError:
                    hs = {}
                row = {"t": t - T0, "unix_ms": int(t * 1000), "instances": {}}
                for r in relays:
                    d = {"generation": r.gen, "haproxy": hs.get(r.name), "ready": None, "active": None,
                         "calls_total": None}
                    try:
                        m = metrics(r.port)
                        d["active"] = int(m.get("relay_calls_active", 0))
                        d["calls_total"] = int(sum(outcome_counts(m).values()))
                        d["draining"] = int(m.get("relay_draining", 0))
                        d["ready"] = d["draining"] == 0
                    except (OSError, RuntimeError, IndexError, ValueError):
                        pass
                    row["instances"][r.name] = d
                timeline.append(row)
                stop_sampler.wait(max(0.0, 0.5 - (time.time() - t)))

        th = threading.Thread(target=sampler, daemon=True)
        th.start()

        stop_file = work / "stop-load"
        lt_json = out / "rolling-restart-loadtest.json"
        lt_cmd = [str(loadtest_bin), "--target", f"ws://127.0.0.1:{ha_port}/media",
                  "--mock-agent-listen", f"127.0.0.1:{agent_port}", "--churn", "--calls", str(calls),
                  "--call-secs", str(call_secs), "--ramp-per-sec", str(max(10.0, calls / call_secs)),
                  "--duration-secs", "900", "--stop-file", str(stop_file), "--sample-secs", "1",
                  "--after-wait-secs", "3", "--json", str(lt_json)]
        report["loadtest_command"] = " ".join(lt_cmd)
        lt_out = open(work / "loadtest.stdout", "wb")
        lt_err = open(work / "loadtest.stderr", "wb")
        lt = subprocess.Popen(lt_cmd, stdout=lt_out, stderr=lt_err)
        log(f"load: {calls} calls in flight through haproxy, calls of {call_secs} s (churn), warming up {warm} s")
        time.sleep(warm + 2)
        if lt.poll() is not None:
            raise RuntimeError(f"loadtest exited early ({lt.returncode}); see {work / 'loadtest.stderr'}")

        for r in relays:
            g = next(x for x in reversed(gens) if x["instance"] == r.name)
            before = timeline[-1]["instances"][r.name] if timeline else {}
            t_term = time.time()
            r.proc.send_signal(signal.SIGTERM)
            events.append({"t": t_term - T0, "instance": r.name, "what": "SIGTERM"})
            g["sigterm_t"] = t_term - T0
            g["active_at_sigterm"] = before.get("active")
            log(f"{r.name} (pid {r.proc.pid}, ~{before.get('active')} calls) SIGTERM")
            # Scrape while it drains: no call is admitted after the drain starts, so the calls
            # it will have ended in all = calls_total + calls_active of any scrape in the drain.
            last = None
            while r.proc.poll() is None:
                try:
                    m = metrics(r.port)
                    if m.get("relay_draining") == 1:
                        last = m
                except (OSError, RuntimeError, IndexError, ValueError):
                    pass
                if time.time() - t_term > a.drain_timeout_secs + 15:
                    log(f"{r.name} did not exit within the drain timeout + 15 s: killing it")
                    r.proc.kill()
                time.sleep(0.05)
            t_exit = time.time()
            g["exited_t"] = t_exit - T0
            g["exit_code"] = r.proc.returncode
            g["drain_s"] = round(t_exit - t_term, 3)
            if last is not None:
                oc = outcome_counts(last)
                g["relay_calls_total_last_scrape"] = int(sum(oc.values()))
                g["relay_calls_active_last_scrape"] = int(last.get("relay_calls_active", 0))
                g["relay_calls_total_at_exit"] = int(sum(oc.values()) + last.get("relay_calls_active", 0))
                g["outcomes_last_scrape"] = {k: int(v) for k, v in oc.items() if v}
                g["upgrades_rejected_draining"] = int(sum(v for k, v in last.items() if k.startswith("relay_upgrades_total{") and "rejected_draining" in k))
            g["calls_by_log"] = call_log_outcomes(r.log_path)
            events.append({"t": t_exit - T0, "instance": r.name, "what": "exited"})
            log(f"{r.name} drained in {g['drain_s']:.1f} s, exit {g['exit_code']}; calls {g.get('relay_calls_total_at_exit')} "
                f"(log: {g['calls_by_log']})")
            r.start()
            gens.append({"instance": r.name, "generation": r.gen, "pid": r.proc.pid, "port": r.port,
                         "started_t": time.time() - T0, "log": str(r.log_path)})
            t_start = time.time()
            events.append({"t": t_start - T0, "instance": r.name, "what": "started"})
            while True:
                try:
                    if haproxy_stat(sock).get(r.name) == "UP":
                        break
                except OSError:
                    pass
                if time.time() - t_start > 20:
                    raise RuntimeError(f"haproxy did not see the new {r.name} up within 20 s")
                time.sleep(0.05)
            t_up = time.time()
            gens[-1]["haproxy_up_t"] = t_up - T0
            gens[-1]["up_after_start_s"] = round(t_up - t_start, 3)
            events.append({"t": t_up - T0, "instance": r.name, "what": "UP"})
            log(f"{r.name} restarted (pid {r.proc.pid}); haproxy sees it UP after {t_up - t_start:.2f} s")
            time.sleep(gap)

        time.sleep(tail)
        stop_file.write_text("stop\n")
        log("restarts done; stopping the load (calls in progress finish)")
        lt.wait(timeout=call_secs + 60)
        try:
            report["haproxy_counters"] = haproxy_counters(sock)
        except OSError:
            pass
        stop_sampler.set()
        th.join(5)
        # The final instances: counts, then a clean stop.
        for r in relays:
            g = next(x for x in reversed(gens) if x["instance"] == r.name)
            try:
                m = metrics(r.port)
                oc = outcome_counts(m)
                g["relay_calls_total_at_exit"] = int(sum(oc.values()) + m.get("relay_calls_active", 0))
                g["outcomes_last_scrape"] = {k: int(v) for k, v in oc.items() if v}
                g["upgrades_rejected_draining"] = int(sum(v for k, v in m.items() if k.startswith("relay_upgrades_total{") and "rejected_draining" in k))
            except (OSError, RuntimeError):
                pass
            r.stop(a.drain_timeout_secs + 10)
            g["exit_code"] = r.proc.returncode
            g["calls_by_log"] = call_log_outcomes(r.log_path)
    finally:
        stop_sampler.set()
        if lt and lt.poll() is None:
            lt.terminate()
            try:
                lt.wait(10)
            except subprocess.TimeoutExpired:
                lt.kill()
        for r in relays:
            if r.proc and r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        if hp and hp.poll() is None:
            hp.terminate()
            hp.wait(10)

    # Checks.
    lt_report = json.loads(lt_json.read_text()) if lt_json.exists() else {}
    lt_stdout = (work / "loadtest.stdout").read_text() if (work / "loadtest.stdout").exists() else ""
    completed = lt_report.get("calls_completed", 0)
    lost = lt_report.get("lost_caller_to_agent", -1) + lt_report.get("lost_to_caller", -1)
    by_log_total = sum(sum(g.get("calls_by_log", {}).values()) for g in gens)
    shutdown_outcomes = sum(g.get("calls_by_log", {}).get("shutdown", 0) for g in gens)
    failures = lt_report.get("failures", [])

    def ready_at(unix_ms):
        # The timeline row at or just before the failure: instances haproxy had UP.
        prev = None
        for row in timeline:
            if row["unix_ms"] > unix_ms:
                break
            prev = row
        if prev is None:
            return None
        return [n for n, d in prev["instances"].items() if d.get("ready") and d.get("haproxy") == "UP"]

    refused_while_ready = [dict(f, ready_instances=ready_at(f["unix_ms"])) for f in failures]
    refused_while_ready = [f for f in refused_while_ready if f["ready_instances"] is None or f["ready_instances"]]
    checks = {
        "calls completed > 0": completed > 0,
        "0 calls cut (none closed by a relay before the caller's stop; no outcome shutdown)":
            lt_report.get("calls_cut", 1) == 0 and shutdown_outcomes == 0,
        "0 frames lost": lost == 0,
        "every call byte-exact": completed > 0 and lt_report.get("calls_byte_exact") == completed
            and lt_report.get("calls_not_exact", 1) == 0,
        "no new call refused or failed while at least one instance was ready":
            len(refused_while_ready) == 0 and lt_report.get("calls_failed", 1) == 0,
        "each drain ended before the drain timeout (no 1001 closes)":
            all(g.get("drain_s", 0) < a.drain_timeout_secs for g in gens),
        "per-instance call counts add up to the calls completed": by_log_total == completed,
    }
    if "outbound" in report:
        checks["outbound call placed on A, stream admitted on B"] = report["outbound"]["ok"]
    report.update({
        "checks": checks, "ok": all(checks.values()),
        "calls": {k: lt_report.get(k) for k in ("calls_started", "calls_completed", "calls_failed", "calls_refused",
                                                 "calls_byte_exact", "calls_not_exact", "calls_cut", "calls_per_sec",
                                                 "load_s")},
        "frames": {"sent": lt_report.get("frames_sent"), "lost_caller_to_agent": lt_report.get("lost_caller_to_agent"),
                   "lost_to_caller": lt_report.get("lost_to_caller"),
                   "close_codes": lt_report.get("caller", {}).get("close_codes")},
        "instances": gens, "events": events, "failures": failures,
        "refused_while_ready": refused_while_ready,
        "timeline": timeline,
        "rolling_restart_s": round(time.time() - t_part2, 1),
        "total_s": round(time.time() - T0, 1),
    })
    (out / "rolling-restart.json").write_text(json.dumps(report, indent=1))
    write_svg(out / "rolling-restart.svg", timeline, events, names,
              f"media-relay rolling restart behind haproxy: {calls} calls in flight, calls of {call_secs:g} s")

    lines = []
    p = lines.append
    p(f"== media-relay rolling restart ({report['size']} size): 3 relays behind {hp_version.split(' - ')[0]}")
    p(f"   {calls} calls in flight through haproxy, calls of {call_secs:g} s (churn), drain timeout {a.drain_timeout_secs} s, "
      f"health check GET /readyz every 500 ms (fall 1, rise 2), L7 retry on 503: {'yes' if not a.no_l7_retry else 'no'}")
    p(f"   relay {report['relay_bin']}; loadtest {report['loadtest_bin']}")
    if "outbound" in report:
        p("== outbound call across instances (signed mode: A places, B admits)")
        for k, v in report["outbound"]["checks"].items():
            p(f"   {'PASS' if v else 'FAIL'}  {k}")
    c = report["calls"]
    f = report["frames"]
    p("== load through the restarts")
    p(f"   calls started {c['calls_started']}  completed {c['calls_completed']}  failed {c['calls_failed']} "
      f"(refused {c['calls_refused']})  byte-exact {c['calls_byte_exact']}  not exact {c['calls_not_exact']}  cut {c['calls_cut']}")
    p(f"   {c['calls_per_sec']:.1f} calls/s over {c['load_s']:.1f} s; frames sent {f['sent']}, lost caller→agent "
      f"{f['lost_caller_to_agent']}, agent→caller {f['lost_to_caller']}; relay close codes {f['close_codes']}")
    p("== instances (calls each process ended, from its log's 'call ended' lines and from relay_calls_total)")
    for g in gens:
        p(f"   {g['instance']} gen {g['generation']} pid {g['pid']}: calls {sum(g.get('calls_by_log', {}).values()):>5} "
          f"{g.get('calls_by_log')}  relay_calls_total {g.get('relay_calls_total_at_exit')}"
          + (f"  SIGTERM at {g['sigterm_t']:.1f} s with {g.get('active_at_sigterm')} active, drained in {g['drain_s']:.2f} s, "
             f"exit {g.get('exit_code')}, refused {g.get('upgrades_rejected_draining')} upgrades while draining" if "drain_s" in g else "")
          + (f"  UP in haproxy {g['up_after_start_s']:.2f} s after start" if "up_after_start_s" in g else ""))
    p(f"   sum over processes: {by_log_total} calls (loadtest completed {completed})")
    hc = report.get("haproxy_counters", {}).get("BACKEND")
    if hc:
        p(f"   haproxy backend: {hc['sessions']} sessions, {hc['retries']} retries, {hc['redispatches']} redispatches, "
          f"{hc['http_5xx']} 5xx responses counted")
    p("== checks")
    for k, v in checks.items():
        p(f"   {'PASS' if v else 'FAIL'}  {k}")
    p(f"== rolling restart part took {report['rolling_restart_s']:.0f} s; whole script {report['total_s']:.0f} s")
    p(f"== {'ALL CHECKS PASSED' if report['ok'] else 'SOME CHECKS FAILED'}")
    text = "\n".join(lines) + "\n"
    (out / "rolling-restart.txt").write_text(text + "\n-- loadtest summary --\n" + lt_stdout)
    print(text, end="")
    log(f"wrote {out / 'rolling-restart.txt'}, .json, .svg (work dir {work})")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()

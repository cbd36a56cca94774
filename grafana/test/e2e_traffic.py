#!/usr/bin/env python3
"""Extra traffic for grafana/test/e2e.sh, beside the loadtest run (Python stdlib only).

The load harness drives ElevenLabs-dialect calls. This script adds what it does not produce,
so that the dashboards' and alerts' series carry data:

- start_timeout: a raw /media upgrade that never sends `start` (relay: --start-timeout-secs 1)
  -> relay_calls_total{outcome="start_timeout"}.
- bad_request: GET /media without upgrade headers -> relay_upgrades_total{result="bad_request"}.
- connect_failed: a call asking for agent `openai`, whose --openai-realtime-url points at a
  closed 127.0.0.1 port -> relay_agent_connects_total{agent="openai",result="failed"},
  outcome agent_connect_failed, relay_errors_total{leg="agent",kind="connect"}.
- assemblyai: two concurrent calls to a mock AssemblyAI Voice Agent served here
  (--assemblyai-url ws://127.0.0.1:PORT). The mock answers `session.ready` only after 1.2 s,
  so caller audio overflows the relay's early buffer (--early-audio-ms 400:
  relay_frames_dropped_total{reason="early_buffer_full"}). Each call has three caller turns
  (loud μ-law, then silence); the agent replies after a think time of 0.7 s in one call and
  1.9 s in the other (so one call's p95 turn latency is above 1.5 s), sends
  `input.speech.stopped` (agent-side turn latency), one `tool.call` answered by a mock tool
  webhook served here (--tool-webhook-url), and an unknown event. The Twilio side sends DTMF,
  an unknown event, a malformed message, a gap in media.chunk (missing frames), echoes marks as
  played, then `stop`.
- duplicate: two echo-agent streams with the same callSid: the second replaces the first
  (relay_duplicate_streams_total, outcome replaced).
- slow_client: a connection that never finishes its request head (relay:
  --header-read-timeout-ms 2000) -> relay_http_connections_rejected_total{reason="header_timeout"}.
- http: POST /outbound-call (not configured: 404), POST /call-status, POST /stream-status
  (unsigned: the relay runs without TWILIO_AUTH_TOKEN), twice, several scrapes apart: these
  families are created on first use, so the first request only creates the series (rate()
  cannot see it) and the second one shows up as a rate.

Everything talks to 127.0.0.1 only. Prints one line per scenario; exits 1 if one misbehaved.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOUD = bytes([0x00, 0x80]) * 80   # full-scale square wave in μ-law: voiced
QUIET = b"\xff" * 160             # μ-law digital silence
TONE = bytes([0x10, 0x90]) * 800  # 200 ms of agent audio


def log(*a):
    print("[traffic]", *a, flush=True)


# --- minimal WebSocket framing (RFC 6455) -------------------------------------------------

def frame(opcode, payload, mask):
    head = bytearray([0x80 | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head.append(m | n)
    elif n < 65536:
        head.append(m | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(m | 127)
        head += n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


async def read_frame(reader):
    """Returns (opcode, payload); unmasks; no fragmentation support beyond concatenation."""
    data = b""
    while True:
        b0, b1 = await reader.readexactly(2)
        op = b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        key = await reader.readexactly(4) if b1 & 0x80 else None
        p = await reader.readexactly(n)
        if key:
            p = bytes(b ^ key[i % 4] for i, b in enumerate(p))
        if op in (0x8, 0x9, 0xA):
            return op, p
        data += p
        if b0 & 0x80:
            return (op if op else 0x1), data


class WsClient:
    """Client side (the Twilio leg)."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, host, port, path):
        r, w = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        w.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise RuntimeError(f"upgrade refused: {status!r}")
        return cls(r, w)

    async def send(self, obj):
        text = obj if isinstance(obj, str) else json.dumps(obj)
        self.w.write(frame(0x1, text.encode(), mask=True))
        await self.w.drain()

    async def recv(self):
        """Next text message as str, or None once the server closed."""
        while True:
            try:
                op, p = await read_frame(self.r)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if op == 0x8:
                try:
                    self.w.write(frame(0x8, p[:2], mask=True))
                    await self.w.drain()
                except ConnectionError:
                    pass
                self.close_code = int.from_bytes(p[:2], "big") if len(p) >= 2 else None
                return None
            if op == 0x9:
                self.w.write(frame(0xA, p, mask=True))
                await self.w.drain()
                continue
            if op == 0x1:
                return p.decode()

    def close(self):
        try:
            self.w.close()
        except Exception:
            pass


class Twilio:
    """Twilio Media Streams messages with Twilio's numbering."""

    def __init__(self, ws, n):
        self.ws = ws
        self.seq = 0
        self.chunk = 0
        self.bytes = 0
        self.call_sid = f"CA{n:032x}"
        self.stream_sid = f"MZ{n:032x}"

    async def connected(self):
        await self.ws.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def start(self, params):
        self.seq += 1
        await self.ws.send({
            "event": "start", "sequenceNumber": str(self.seq), "streamSid": self.stream_sid,
            "start": {"accountSid": "AC" + "0" * 30 + "e2", "streamSid": self.stream_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"],
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1},
                      "customParameters": params}})

    async def media(self, audio, skip_chunks=0):
        self.seq += 1
        self.chunk += 1 + skip_chunks
        ts = self.bytes // 8
        self.bytes += len(audio) * (1 + skip_chunks)
        await self.ws.send({
            "event": "media", "sequenceNumber": str(self.seq), "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(self.chunk), "timestamp": str(ts),
                      "payload": base64.b64encode(audio).decode()}})

    async def mark(self, name):
        self.seq += 1
        await self.ws.send({"event": "mark", "sequenceNumber": str(self.seq),
                            "streamSid": self.stream_sid, "mark": {"name": name}})

    async def dtmf(self, digit):
        self.seq += 1
        await self.ws.send({"event": "dtmf", "streamSid": self.stream_sid,
                            "sequenceNumber": str(self.seq),
                            "dtmf": {"track": "inbound_track", "digit": digit}})

    async def stop(self):
        self.seq += 1
        await self.ws.send({"event": "stop", "sequenceNumber": str(self.seq),
                            "streamSid": self.stream_sid,
                            "stop": {"accountSid": "AC" + "0" * 30 + "e2",
                                     "callSid": self.call_sid}})


# --- mock AssemblyAI Voice Agent and tool webhook -----------------------------------------

class MockStats:
    def __init__(self):
        self.sessions = 0
        self.audio_in = 0
        self.turns = 0
        self.tool_results = 0
        self.webhook_calls = 0


STATS = MockStats()


async def assemblyai_session(reader, writer):
    """One AssemblyAI-dialect session (server side, unmasked frames)."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = None
    for line in head.decode(errors="replace").split("\r\n"):
        if line.lower().startswith("sec-websocket-key:"):
            key = line.split(":", 1)[1].strip()
    if key is None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    writer.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    await writer.drain()
    STATS.sessions += 1
    think = 0.7 if STATS.sessions % 2 else 1.9  # one fast and one slow agent
    lock = asyncio.Lock()

    async def send(obj):
        async with lock:
            writer.write(frame(0x1, json.dumps(obj).encode(), mask=False))
            await writer.drain()

    speaking = False
    quiet_frames = 0
    reply_task = None
    tool_sent = False

    async def reply(turn):
        await asyncio.sleep(think)  # longer than the relay's 500 ms VAD hangover
        await send({"type": "reply.started"})
        for _ in range(4):
            await send({"type": "reply.audio", "data": base64.b64encode(TONE).decode()})
            await asyncio.sleep(0.05)
        await send({"type": "transcript.agent", "text": f"reply {turn}"})
        await send({"type": "reply.done", "status": "completed"})

    try:
        while True:
            op, p = await read_frame(reader)
            if op == 0x8:
                writer.write(frame(0x8, p[:2], mask=False))
                await writer.drain()
                break
            if op == 0x9:
                async with lock:
                    writer.write(frame(0xA, p, mask=False))
                    await writer.drain()
                continue
            if op != 0x1:
                continue
            msg = json.loads(p)
            t = msg.get("type")
            if t == "session.update":
                await asyncio.sleep(1.2)  # slow session start: the early buffer overflows
                await send({"type": "session.ready", "session_id": "sess_e2e"})
                await send({"type": "e2e.unknown_event"})  # counted as unknown, skipped
            elif t == "input.audio":
                STATS.audio_in += 1
                audio = base64.b64decode(msg.get("audio", ""))
                loud = any(b in (0x00, 0x80) for b in audio[:16])
                if loud:
                    if not speaking:
                        await send({"type": "input.speech.started"})
                    speaking, quiet_frames = True, 0
                elif speaking:
                    quiet_frames += 1
                    if quiet_frames == 10:  # 200 ms of silence: the caller finished
                        speaking = False
                        STATS.turns += 1
                        turn = STATS.turns
                        await send({"type": "input.speech.stopped"})
                        await send({"type": "transcript.user", "text": f"turn {turn}"})
                        if not tool_sent:
                            tool_sent = True
                            await send({"type": "tool.call", "call_id": "call_e2e_1",
                                        "name": "lookup_order",
                                        "arguments": {"order": "42"}})
                        reply_task = asyncio.create_task(reply(turn))
            elif t == "tool.result":
                STATS.tool_results += 1
    except (asyncio.IncompleteReadError, ConnectionError, json.JSONDecodeError):
        pass
    finally:
        if reply_task:
            reply_task.cancel()
        writer.close()


async def webhook(reader, writer):
    """The tool webhook: any POST answers {"result": …}."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        n = 0
        for line in head.decode(errors="replace").split("\r\n"):
            if line.lower().startswith("content-length:"):
                n = int(line.split(":", 1)[1])
        body = await reader.readexactly(n) if n else b""
        req = json.loads(body or b"{}")
        STATS.webhook_calls += 1
        out = json.dumps({"result": {"order": req.get("arguments", {}).get("order"),
                                     "status": "shipped"}}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(out)).encode()
                     + b"\r\n\r\n" + out)
        await writer.drain()
    except Exception as e:  # noqa: BLE001 - report and go on
        log("webhook error:", e)
    finally:
        writer.close()


# --- scenarios ------------------------------------------------------------------------------

async def http(host, port, method, path, body=b"", ctype="application/json", headers=""):
    r, w = await asyncio.open_connection(host, port)
    w.write((f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
             f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n").encode()
            + body)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return int(data.split(b" ", 2)[1])


async def wait_closed(ws, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            m = await asyncio.wait_for(ws.recv(), timeout - (time.monotonic() - t0))
        except asyncio.TimeoutError:
            return None
        if m is None:
            return time.monotonic() - t0
    return None


async def start_timeout(host, port):
    ws = await WsClient.connect(host, port, "/media")
    took = await wait_closed(ws, 8)
    ws.close()
    ok = took is not None
    log(f"start_timeout: relay closed the silent stream after {took}s" if ok
        else "start_timeout: relay did NOT close a stream that never sent start")
    return ok


async def bad_request(host, port):
    code = await http(host, port, "GET", "/media")
    log(f"bad_request: GET /media without upgrade -> {code}")
    return code == 400


async def connect_failed(host, port):
    ws = await WsClient.connect(host, port, "/media")
    tw = Twilio(ws, 0xE2E001)
    await tw.connected()
    await tw.start({"agent": "openai"})
    for _ in range(10):
        await tw.media(QUIET)
    took = await wait_closed(ws, 10)
    ws.close()
    log(f"connect_failed: openai connect to a closed port ended the call after {took}s")
    return took is not None


async def assemblyai_call(host, port, n=0):
    ws = await WsClient.connect(host, port, "/media")
    tw = Twilio(ws, 0xE2E002 + n)
    marks = []

    async def reader():
        got = {"media": 0, "mark": 0, "clear": 0}
        while True:
            m = await ws.recv()
            if m is None:
                return got
            ev = json.loads(m)
            e = ev.get("event")
            got[e] = got.get(e, 0) + 1
            if e == "mark":
                marks.append(ev["mark"]["name"])

    rd = asyncio.create_task(reader())
    await tw.connected()
    await tw.start({"agent": "assemblyai", "e2e": "1"})
    tick = 0.02
    nxt = time.monotonic()

    async def pace():
        nonlocal nxt
        nxt += tick
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    for turn in range(3):
        for i in range(50):             # 1 s of speech
            await tw.media(LOUD, skip_chunks=3 if (turn, i) == (1, 10) else 0)
            await pace()
        for i in range(150):            # 3 s of silence: VAD end, agent reply, marks
            await tw.media(QUIET)
            while marks:
                await tw.mark(marks.pop(0))  # "played" at once
            await pace()
        if turn == 0:
            await tw.dtmf("4")
            await tw.dtmf("2")
            await tw.dtmf("#")
            await ws.send({"event": "e2e_unknown_event", "streamSid": tw.stream_sid})
        if turn == 1:
            await ws.send("{this is not json")
    while marks:
        await tw.mark(marks.pop(0))
    await tw.stop()
    t0 = time.monotonic()
    try:
        got = await asyncio.wait_for(rd, 10)  # the reader ends when the relay closes
        took = time.monotonic() - t0
    except asyncio.TimeoutError:
        got, took = {}, None
    ws.close()
    ok = took is not None and got.get("media", 0) > 0
    log(f"assemblyai call {n}: relay sent {got}; closed {took}s after stop")
    return ok


async def assemblyai_calls(host, port):
    ok = all(await asyncio.gather(assemblyai_call(host, port, 0),
                                  assemblyai_call(host, port, 1)))
    log(f"assemblyai mock: {STATS.sessions} sessions, {STATS.audio_in} audio messages, "
        f"{STATS.turns} turns, {STATS.tool_results} tool results; webhook called "
        f"{STATS.webhook_calls}x")
    return ok and STATS.turns >= 6 and STATS.tool_results >= 2


async def duplicate(host, port):
    a = await WsClient.connect(host, port, "/media")
    ta = Twilio(a, 0xE2E010)
    await ta.connected()
    await ta.start({"agent": "echo"})
    for _ in range(25):
        await ta.media(QUIET)
        await asyncio.sleep(0.02)
    b = await WsClient.connect(host, port, "/media")
    tb = Twilio(b, 0xE2E010)  # same callSid
    await tb.connected()
    await tb.start({"agent": "echo"})
    took = await wait_closed(a, 5)  # the older stream is replaced
    for _ in range(25):
        await tb.media(QUIET)
        await asyncio.sleep(0.02)
    await tb.stop()
    took_b = await wait_closed(b, 5)
    a.close()
    b.close()
    log(f"duplicate: first stream closed {took}s after the second started; second closed "
        f"{took_b}s after stop")
    return took is not None and took_b is not None


async def slow_client(host, port):
    r, w = await asyncio.open_connection(host, port)
    w.write(b"GET /media HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    await w.drain()
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(r.read(), 10)
        took = time.monotonic() - t0
    except asyncio.TimeoutError:
        took = None
    w.close()
    log(f"slow_client: relay closed an unfinished request head after {took}s")
    return took is not None


async def http_calls(host, port):
    a = await http(host, port, "POST", "/outbound-call", b'{"to":"+15005550006"}')
    b = await http(host, port, "POST", "/call-status",
                   b"CallSid=CA00000000000000000000000000e2e002&CallStatus=completed"
                   b"&Direction=inbound&CallDuration=9",
                   "application/x-www-form-urlencoded")
    c = await http(host, port, "POST", "/stream-status",
                   b"CallSid=CA00000000000000000000000000e2e002"
                   b"&StreamSid=MZ00000000000000000000000000e2e002&StreamEvent=stream-stopped",
                   "application/x-www-form-urlencoded")
    log(f"http: POST /outbound-call -> {a} (not configured), /call-status -> {b}, "
        f"/stream-status -> {c}")
    return a == 404 and b == 200 and c == 200


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", required=True, help="127.0.0.1:PORT")
    ap.add_argument("--assemblyai-port", type=int, required=True)
    ap.add_argument("--webhook-port", type=int, required=True)
    a = ap.parse_args()
    host, port = a.relay.rsplit(":", 1)
    port = int(port)
    assert host == "127.0.0.1", "loopback only"
    s1 = await asyncio.start_server(assemblyai_session, "127.0.0.1", a.assemblyai_port)
    s2 = await asyncio.start_server(webhook, "127.0.0.1", a.webhook_port)
    results = {}

    async def run(name, fn):
        try:
            results[name] = await asyncio.wait_for(fn(host, port), 60)
        except Exception as e:  # noqa: BLE001 - a scenario failure is a result
            log(f"{name}: FAILED: {type(e).__name__}: {e}")
            results[name] = False

    await run("http_1", http_calls)
    await asyncio.gather(
        run("bad_request", bad_request), run("start_timeout", start_timeout),
        run("connect_failed", connect_failed), run("slow_client", slow_client),
        run("duplicate", duplicate), run("assemblyai", assemblyai_calls))
    await run("http_2", http_calls)
    s1.close()
    s2.close()
    bad = [k for k, v in results.items() if not v]
    log("scenarios:", ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in results.items()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

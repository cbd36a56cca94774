#!/usr/bin/env python3
"""Regenerates fuzz/seeds/<target>/ from real protocol messages.

Sources:
- Twilio Media Streams messages as documented
  (twilio.com/docs/voice/media-streams/websocket-messages) and as the relay's tests and
  loadtest/src/twilio_sim.rs send them;
- ElevenLabs, AssemblyAI and OpenAI Realtime server events as in their API references and the
  dialect tests (src/agent/*.rs);
- Telnyx media-streaming messages (start, media, dtmf, mark, error, stop, connected) as
  documented (developers.telnyx.com/docs/voice/programmable-voice/media-streaming) and as the
  codec's tests (src/carrier/telnyx/tests.rs) use them, in order, shuffled, with gaps and
  duplicates for the reordering window;
- Twilio webhook form bodies (voice webhook, call and stream status callbacks) and the
  signature test vectors of src/carrier/twilio/signature.rs;
- every raw JSON string literal (r#"{...}"#) in src/, tests/ and loadtest/src/ that parses
  as JSON and names a carrier `event` (Telnyx for files named telnyx, else Twilio) or an
  agent `type` (deduplicated, capped).

Run from anywhere: `python3 fuzz/seeds.py [TARGET...]` (all targets by default). Only the
Python standard library is used. The output is deterministic for a given source tree; the
named targets' files are rewritten, stale ones removed.
"""

import base64
import hashlib
import hmac
import json
import math
import os
import re
import struct
import sys
import urllib.parse

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
OUT = os.path.join(FUZZ, "seeds")

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA5f1b2a7ef0a3d2f6a54c42a8d1c3b7e9"
ACCOUNT = "AC0c3d5e7a9b1c2d3e4f5a6b7c8d9e0f1a"
EXTRACT_CAP = 24  # extracted literals per target


def mulaw(sample):
    """G.711 mu-law encode of a 16-bit sample."""
    BIAS, CLIP = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    s = min(abs(sample), CLIP) + BIAS
    exp = 7
    mask = 0x4000
    while exp > 0 and not s & mask:
        exp -= 1
        mask >>= 1
    mant = (s >> (exp + 3)) & 0x0F
    return ~(sign | (exp << 4) | mant) & 0xFF


def tone(n, freq=440.0, amp=8000, phase=0):
    """n bytes (n/8 ms) of a mu-law sine at 8 kHz, as Twilio sends: 160 bytes = 20 ms."""
    return bytes(
        mulaw(int(amp * math.sin(2 * math.pi * freq * (i + phase) / 8000))) for i in range(n)
    )


def b64(b):
    return base64.b64encode(b).decode()


def j(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# === Twilio Media Streams (docs shapes, realistic SIDs) ===

TW_CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def tw_start(params, seq="1"):
    return {
        "event": "start",
        "sequenceNumber": seq,
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": SID,
            "callSid": CALL,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params,
        },
        "streamSid": SID,
    }


def tw_media(seq, chunk, audio):
    return {
        "event": "media",
        "sequenceNumber": str(seq),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(20 * (chunk - 1)),
            "payload": b64(audio),
        },
        "streamSid": SID,
    }


def tw_mark(seq, name):
    return {"event": "mark", "sequenceNumber": str(seq), "streamSid": SID, "mark": {"name": name}}


def tw_dtmf(seq, digit):
    return {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": str(seq),
        "dtmf": {"track": "inbound_track", "digit": digit},
    }


def tw_stop(seq):
    return {
        "event": "stop",
        "sequenceNumber": str(seq),
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
        "streamSid": SID,
    }


DOC_START_PARAMS = {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
RELAY_START_PARAMS = {
    "From": "+14155550100",
    "To": "+14155550199",
    "CallSid": CALL,
    "prompt": "You are a helpful support agent. Be brief.",
    "first_message": "Hi! How can I help?",
    "agent": "elevenlabs",
    "relay_token": "q7Zr3V0aK9yW1tE5uI8oP2sD4fG6hJ0kL3zX5cV7bN9",
}

TWILIO_MESSAGES = {
    "connected": TW_CONNECTED,
    "start-docs": tw_start(DOC_START_PARAMS),
    "start-relay-params": tw_start(RELAY_START_PARAMS),
    "media-20ms": tw_media(3, 1, tone(160)),
    "media-100ms": tw_media(4, 2, tone(800)),
    "media-silence": tw_media(5, 3, b"\xff" * 160),
    "mark": tw_mark(6, "ms-120"),
    "mark-docs": tw_mark(6, "my label"),
    "dtmf": tw_dtmf(7, "1"),
    "dtmf-hash": tw_dtmf(8, "#"),
    "stop": tw_stop(9),
}

# === Telnyx media streaming (docs shapes, as src/carrier/telnyx/tests.rs) ===

TX_STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TX_CALL = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"

# The documented `start`, verbatim (pretty-printed, v2 call control id).
TX_START_DOCS = """{
 "event": "start",
 "sequence_number": "1",
 "start": {
   "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
   "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
   "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
   "from": "+13122010094",
   "to": "+13122123456",
   "tags": ["TAG1", "TAG2"],
   "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
   "media_format": { "encoding": "PCMU", "sample_rate": 8000, "channels": 1 }
 },
 "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
}"""
TX_CONNECTED = {"event": "connected", "version": "1.0.0"}


def tx_start(seq=1, params=None, fmt=("PCMU", 8000, 1)):
    start = {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": TX_CALL,
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "media_format": {"encoding": fmt[0], "sample_rate": fmt[1], "channels": fmt[2]},
    }
    if params is not None:
        start["custom_parameters"] = params
    return {"event": "start", "sequence_number": str(seq), "start": start, "stream_id": TX_STREAM}


def tx_media(seq, audio):
    """As the codec tests' media(seq, payload): chunk = seq, timestamp = 20 ms per frame."""
    return {
        "event": "media",
        "sequence_number": str(seq),
        "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(seq * 20),
                  "payload": b64(audio)},
        "stream_id": TX_STREAM,
    }


def tx_dtmf(seq, digit):
    return {"event": "dtmf", "stream_id": TX_STREAM, "occurred_at": "2025-06-05T08:54:19.698408Z",
            "sequence_number": str(seq), "dtmf": {"digit": digit}}


def tx_mark(seq, name):
    return {"event": "mark", "stream_id": TX_STREAM, "sequence_number": str(seq),
            "mark": {"name": name}}


def tx_stop(seq):
    return {"event": "stop", "sequence_number": str(seq),
            "stop": {"user_id": "3E6F995F-85F7-4705-9741-53B116D28237", "call_control_id": TX_CALL},
            "stream_id": TX_STREAM}


TX_ERROR = {"event": "error", "payload": {"code": 100003, "title": "malformed_frame",
                                          "detail": "Received frame was not formed correctly"},
            "stream_id": TX_STREAM}
RELAY_TX_PARAMS = {"agent": "echo", "relay_token": "q7Zr3V0aK9yW1tE5uI8oP2sD4fG6hJ0kL3zX5cV7bN9"}

TELNYX_MESSAGES = {
    "connected": TX_CONNECTED,
    "start-pcmu": tx_start(),
    "start-params-object": tx_start(params=RELAY_TX_PARAMS),
    "start-params-list": tx_start(params=[{"name": k, "value": v} for k, v in RELAY_TX_PARAMS.items()]),
    "start-audio-x-mulaw": tx_start(fmt=("audio/x-mulaw", 8000, 1)),
    "start-pcma": tx_start(fmt=("PCMA", 8000, 1)),
    "start-l16": tx_start(fmt=("L16", 16000, 1)),
    "media-20ms": tx_media(2, tone(160)),
    "media-silence": tx_media(3, b"\xff" * 160),
    "dtmf": tx_dtmf(5, "1"),
    "mark": tx_mark(5, "some_mark_name"),
    "error": TX_ERROR,
    "stop": tx_stop(5),
    "unknown-event": {"event": "someday"},
}
# Frames the codec refuses (its tests' errors).
TELNYX_BAD = [
    b"{",
    b'{"x":1}',
    b'{"event":"media","media":{}}',
    b'{"event":"start","start":{},"stream_id":"a\\"b"}',
    b'{"event":"start","start":{"call_control_id":"v3 x"},"stream_id":"s"}',
    b'{"event":"dtmf","dtmf":{"digit":"12"}}',
    b'{"sequence_number" :  7 ,"event":"x"}',
]


# === Agent server events ===

EL_AUDIO = lambda eid, n=160: {  # noqa: E731
    "type": "audio",
    "audio_event": {"audio_base_64": b64(tone(n, 330, phase=eid)), "event_id": eid},
}
ELEVENLABS = {
    "metadata": {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": "conv_01jz8k3m2n4p5q6r7s8t9v0w1x",
            "agent_output_audio_format": "ulaw_8000",
            "user_input_audio_format": "ulaw_8000",
        },
    },
    "metadata-pcm": {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": "conv_1",
            "agent_output_audio_format": "pcm_16000",
            "user_input_audio_format": "pcm_16000",
        },
    },
    "audio": EL_AUDIO(1),
    "audio-legacy": {"type": "audio", "audio": {"chunk": b64(tone(160))}},
    "interruption": {"type": "interruption", "interruption_event": {"event_id": 1}},
    "interruption-reason": {"type": "interruption", "interruption_event": {"reason": "user spoke"}},
    "ping": {"type": "ping", "ping_event": {"event_id": 12345, "ping_ms": 50}},
    "ping-null": {"type": "ping", "ping_event": {"event_id": 3, "ping_ms": None}},
    "client_tool_call": {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": "lookup_order",
            "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
            "parameters": {"order": "42"},
            "event_id": 9,
        },
    },
    "error": {
        "type": "error",
        "error_event": {
            "code": 1008,
            "message": "Override for field 'prompt' is not allowed by config.",
            "error_type": "override_error",
            "reason": None,
        },
    },
    "user_transcript": {
        "type": "user_transcript",
        "user_transcription_event": {"user_transcript": "I need help with my order", "event_id": 6},
    },
    "agent_response": {
        "type": "agent_response",
        "agent_response_event": {"agent_response": "Sure, what's your order number?", "event_id": 7},
    },
    "vad_score": {"type": "vad_score", "vad_score_event": {"vad_score": 0.93}},
}

AAI_AUDIO = lambda n=160: {"type": "reply.audio", "data": b64(tone(n, 220))}  # noqa: E731
ASSEMBLYAI = {
    "session.ready": {"type": "session.ready", "session_id": "sess_abc123"},
    "speech.started": {"type": "input.speech.started"},
    "speech.stopped": {"type": "input.speech.stopped"},
    "transcript.user": {
        "type": "transcript.user",
        "text": "What's the weather in Tokyo?",
        "item_id": "item_abc123",
    },
    "reply.started": {"type": "reply.started", "reply_id": "reply_abc123"},
    "reply.audio": AAI_AUDIO(),
    "transcript.agent": {
        "type": "transcript.agent",
        "text": "It's 22°C and sunny.",
        "reply_id": "reply_abc123",
        "item_id": "item_abc123",
        "interrupted": False,
    },
    "transcript.agent-interrupted": {"type": "transcript.agent", "text": "It's", "interrupted": True},
    "reply.done": {"type": "reply.done", "status": "completed"},
    "reply.done-interrupted": {"type": "reply.done", "status": "interrupted"},
    "tool.call": {
        "type": "tool.call",
        "call_id": "call_abc123",
        "name": "get_weather",
        "arguments": {"location": "Tokyo"},
    },
    "session.error": {"type": "session.error", "code": "invalid_format", "message": "bad audio"},
    "error-untyped": {"code": "UNAUTHORIZED", "message": "Invalid API key"},
    "session.ended": {"type": "session.ended"},
}

OAI_DELTA = lambda item, n=240: {  # noqa: E731
    "type": "response.output_audio.delta",
    "event_id": "event_" + item,
    "response_id": "resp_1",
    "item_id": item,
    "output_index": 0,
    "content_index": 0,
    "delta": b64(tone(n, 260)),
}
OPENAI = {
    "session.updated": {
        "type": "session.updated",
        "event_id": "event_C1",
        "session": {
            "type": "realtime",
            "id": "sess_C9CiUVUzUzYIssh3ELY1d",
            "object": "realtime.session",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy", "speed": 1},
            },
        },
    },
    "session.updated-pcm": {
        "type": "session.updated",
        "session": {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}},
    },
    "response.created": {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
    "audio.delta": OAI_DELTA("item_a"),
    "audio.delta-beta": {"type": "response.audio.delta", "item_id": "item_b", "delta": "AA=="},
    "audio.done": {"type": "response.output_audio.done", "item_id": "item_a"},
    "speech_started": {
        "type": "input_audio_buffer.speech_started",
        "event_id": "event_2",
        "audio_start_ms": 12840,
        "item_id": "item_user_1",
    },
    "speech_stopped": {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 14200},
    "function_call_arguments.done": {
        "type": "response.function_call_arguments.done",
        "event_id": "event_5",
        "response_id": "resp_2",
        "item_id": "item_fc",
        "output_index": 0,
        "call_id": "call_QwErTy12",
        "name": "lookup_order",
        "arguments": "{\"order\":\"42\"}",
    },
    "response.done-cancelled": {"type": "response.done", "response": {"status": "cancelled"}},
    "transcript.done": {
        "type": "response.output_audio_transcript.done",
        "item_id": "item_a",
        "transcript": "Hello! How can I help?",
    },
    "input_transcription": {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "item_user_1",
        "transcript": "Where is my order?",
    },
    "error": {
        "type": "error",
        "event_id": "event_9",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "Invalid value for 'audio.output.format'.",
            "param": None,
            "event_id": None,
        },
    },
    "rate_limits.updated": {"type": "rate_limits.updated", "rate_limits": []},
}
DIALECTS = {0: ELEVENLABS, 1: ASSEMBLYAI, 2: OPENAI}
DIALECT_NAME = {0: "elevenlabs", 1: "assemblyai", 2: "openai"}

PARAMS_FULL = (
    "prompt=You+are+a+helpful+support+agent.%0ABe+brief.&first_message=Hi%21+How+can+I+help%3F"
    "&language=en&voice_id=ivy&customer=Jane+Doe&relay_token=abc&agent=openai"
    "&tools=%5B%7B%22name%22%3A%22lookup_order%22%2C%22description%22%3A%22d%22%2C"
    "%22parameters%22%3A%7B%22type%22%3A%22object%22%7D%7D%5D"
)

# === Twilio webhooks (form bodies) ===

VOICE_WEBHOOK = (
    "AccountSid=" + ACCOUNT + "&ApiVersion=2010-04-01&CallSid=" + CALL + "&CallStatus=ringing"
    "&Called=%2B14155550199&CalledCity=SAN+FRANCISCO&CalledCountry=US&CalledState=CA"
    "&CalledZip=94105&Caller=%2B14155550100&CallerCity=&CallerCountry=US&CallerState=CA"
    "&CallerZip=&Direction=inbound&From=%2B14155550100&FromCity=&FromCountry=US&FromState=CA"
    "&FromZip=&To=%2B14155550199&ToCity=SAN+FRANCISCO&ToCountry=US&ToState=CA&ToZip=94105"
)
CALL_STATUS = (
    "AccountSid=" + ACCOUNT + "&ApiVersion=2010-04-01&CallDuration=42&CallSid=" + CALL +
    "&CallStatus=completed&Direction=outbound-api&Duration=1&From=%2B14155550100"
    "&SequenceNumber=3&Timestamp=Mon%2C+16+Jun+2025+12%3A00%3A00+%2B0000&To=%2B14155550199"
)
STREAM_STATUS = (
    "AccountSid=" + ACCOUNT + "&CallSid=" + CALL + "&StreamSid=" + SID +
    "&StreamName=" + SID + "&StreamEvent=stream-started&Timestamp=2025-06-16T12%3A00%3A00.000Z"
)
DOC_FORM = (
    "CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234&From=%2B14158675310"
    "&To=%2B18005551212"
)

# === WebSocket frames ===


def frame(op, payload, fin=True, mask=None, rsv=0, force_len=None):
    b0 = (0x80 if fin else 0) | rsv | op
    n = len(payload) if force_len is None else force_len
    m = 0x80 if mask is not None else 0
    if n < 126:
        hdr = bytes([b0, m | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask is not None:
        hdr += mask
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return hdr + payload


MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frames_for(role_client):
    """Frames a peer sends to a reader in this role: a server reads masked frames."""
    mask = None if role_client else MASK
    f = lambda *a, **k: frame(*a, mask=mask, **k)  # noqa: E731
    start = j(tw_start(RELAY_START_PARAMS))
    media = j(tw_media(3, 1, tone(160)))
    out = {
        "text-media": f(1, media),
        "text-start-16bit-len": f(1, start),
        "fragmented-text": f(1, media[:50], fin=False) + f(0, media[50:120], fin=False)
        + f(0, media[120:]),
        "fragmented-with-ping": f(1, b'{"event":', fin=False) + f(9, b"keepalive")
        + f(0, b'"stop"}'),
        "ping-pong-text": f(9, b"hi") + f(0xA, b"hi") + f(1, j(TW_CONNECTED)),
        "close-1000": f(1, j(tw_stop(9))) + f(8, struct.pack(">H", 1000) + b"bye"),
        "close-empty": f(8, b""),
        "close-bad-code": f(8, struct.pack(">H", 1005)),
        "binary": f(2, bytes(range(40))),
        "utf8-split-fragments": f(1, "héllo ✓".encode()[:2], fin=False)
        + f(0, "héllo ✓".encode()[2:]),
        "too-large-then-ok": f(1, b"x" * 300) + f(1, j(TW_CONNECTED)),
        "len64-truncated": f(2, b"abc", force_len=70000),
        "wrong-masking": frame(1, b"{}", mask=None if mask else MASK),
        "rsv-bit": f(1, b"{}", rsv=0x40),
    }
    return out


# === helpers ===


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(data)
    return name


RAW_JSON = re.compile(r'r#"(\{.*?\})"#', re.S)


def extract_literals():
    """Raw JSON string literals in the repository's Rust sources (format strings skipped)."""
    found = []
    for top in ("src", "tests", os.path.join("loadtest", "src")):
        for dirpath, _, files in sorted(os.walk(os.path.join(ROOT, top))):
            for fn in sorted(files):
                if not fn.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, fn)
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                for m in RAW_JSON.finditer(text):
                    lit = m.group(1)
                    if "{{" in lit:
                        continue
                    try:
                        v = json.loads(lit)
                    except ValueError:
                        continue
                    if isinstance(v, dict):
                        found.append((os.path.relpath(path, ROOT), lit, v))
    return found


def dialect_of(path, v):
    """Which dialect a literal belongs to: by file, else by its `type`."""
    for d, name in DIALECT_NAME.items():
        if name in path:
            return d
    t = v.get("type")
    for d, events in DIALECTS.items():
        if t in {e["type"] for e in events.values() if "type" in e}:
            return d
    return None


def outbound_query(secret, query, exp):
    """A query signed as StreamTokens::sign_query does (sig = relay token of the query)."""
    signed = f"{query}&exp={exp}" if query else f"exp={exp}"
    mac = hmac.new(secret.encode(), b"relay-token:v1:outbound-url:" + signed.encode(), hashlib.sha256)
    return signed + "&sig=" + base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def twilio_sig(token, url, body=""):
    """X-Twilio-Signature: base64(HMAC-SHA1(token, url + sorted name+value pairs))."""
    pairs = sorted(urllib.parse.parse_qsl(body, keep_blank_values=True))
    data = url + "".join(k + v for k, v in pairs)
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def main():
    only = set(sys.argv[1:])
    if os.path.isdir(OUT):
        for dirpath, _, files in os.walk(OUT):
            if only and os.path.basename(dirpath) not in only:
                continue
            for fn in files:
                os.remove(os.path.join(dirpath, fn))
    counts = {}

    def put(target, name, data):
        if only and target not in only:
            return
        write(target, name, data)
        counts[target] = counts.get(target, 0) + 1

    # twilio_codec: one frame per file.
    for name, msg in TWILIO_MESSAGES.items():
        put("twilio_codec", name + ".json", j(msg))
    put("twilio_codec", "start-docs-pretty.json", json.dumps(tw_start(DOC_START_PARAMS), indent=2).encode())
    put("twilio_codec", "mark-escaped.json", br'{"event":"mark","mark":{"name":"a\"b\u00e9"}}')
    put("twilio_codec", "unknown-event.json", b'{"event":"someday","x":{"y":[1,2]}}')

    # agent_dialects: [dialect][params]\0frame\0frame...
    for d, events in DIALECTS.items():
        frames = [j(v) for v in events.values()]
        put("agent_dialects", DIALECT_NAME[d] + "-all-events",
            bytes([d]) + b"\0" + b"\0".join(frames))
        put("agent_dialects", DIALECT_NAME[d] + "-params",
            bytes([d | 8]) + PARAMS_FULL.encode() + b"\0" + b"\0".join(frames[:4]))
    put("agent_dialects", "assemblyai-speech-barge-in",
        bytes([1 | 4]) + b"\0" + b"\0".join(j(ASSEMBLYAI[k]) for k in
                                        ["session.ready", "reply.started", "reply.audio",
                                         "speech.started", "reply.done-interrupted"]))

    # call_machine: [cfg]\0op...; one realistic call per agent kind.
    def script(kind, agent_frames, cfg=b"", extra_params=None, drain=False):
        params = dict(RELAY_START_PARAMS)
        params["agent"] = kind
        if extra_params:
            params.update(extra_params)
        # No NUL in the configuration record: kind + 4 (same kind mod 4), bit 7 is unused.
        cfg = (cfg + b"\x00\x00")[:2]
        steps = [bytes([["elevenlabs", "assemblyai", "openai", "echo"].index(kind) + 4,
                        cfg[0] | 0x80, cfg[1] | 0x80])]
        steps.append(b"T" + j(TW_CONNECTED))
        steps.append(b"T" + j(tw_start(params)))
        steps.append(b"C")
        seq, chunk = 3, 1
        for i, a in enumerate(agent_frames):
            steps.append(b"T" + j(tw_media(seq, chunk, tone(160, phase=160 * chunk))))
            seq, chunk = seq + 1, chunk + 1
            steps.append(b"t20")
            if a is not None:
                steps.append(b"A" + a)
            steps.append(b"y")
            steps.append(b"x")
            if i == 2:
                steps.append(b"T" + j(tw_mark(seq, "ms-20")))
                seq += 1
        steps.append(b"T" + j(tw_dtmf(seq, "4")))
        steps.append(b"T" + j(tw_dtmf(seq + 1, "#")))
        steps.append(b"t1600")
        steps.append(b"r01{\"status\":\"shipped\"}")  # tool call 0 answered Ok
        steps.append(b"y")
        if drain:
            steps += [b"D", b"x", b"t100", b"T" + j(tw_mark(seq + 2, "ms-300")), b"t3000"]
        steps.append(b"T" + j(tw_stop(seq + 2)))
        return b"\0".join(steps)

    el = [j(ELEVENLABS[k]) for k in ["metadata", "ping", "audio", "client_tool_call",
                                     "user_transcript", "interruption", "agent_response"]]
    el.insert(3, j(EL_AUDIO(2, 800)))
    put("call_machine", "elevenlabs-call", script("elevenlabs", el))
    aai = [j(ASSEMBLYAI[k]) for k in ["session.ready", "speech.stopped", "reply.started",
                                      "reply.audio", "tool.call", "speech.started",
                                      "transcript.agent-interrupted", "reply.done-interrupted"]]
    put("call_machine", "assemblyai-call", script("assemblyai", aai))
    put("call_machine", "assemblyai-call-speech-trigger", script("assemblyai", aai, cfg=b"\x00\x01"))
    oai = [j(OPENAI[k]) for k in ["session.updated", "response.created", "audio.delta",
                                  "function_call_arguments.done", "speech_started",
                                  "response.done-cancelled", "audio.done"]]
    oai.insert(3, j(OAI_DELTA("item_a", 40)))
    put("call_machine", "openai-call", script("openai", oai,
                                             extra_params={"first_message": "Hello there"}))
    put("call_machine", "openai-call-tiny-caps", script("openai", oai, cfg=b"\xff\x08"))
    put("call_machine", "echo-call", script("echo", [None] * 6) + b"\0t600\0x")
    put("call_machine", "elevenlabs-drain-notice", script("elevenlabs", el, cfg=b"\x00\x10", drain=True))
    put("call_machine", "echo-drain-no-notice", script("echo", [None] * 3, drain=True))
    put("call_machine", "elevenlabs-blocked", script("elevenlabs", el[:4]).replace(
        b"\0y\0x", b"\0b0\0t3000\0y\0t3000\0d0\0x", 1))

    # ws_reader: [cfg][n][plan][stream] for both roles and both limits.
    plans = [b"", b"\x00", b"\x06\x85\x0f", b"\x80\x01\x82\x7f"]
    for role_client in (False, True):
        for name, data in frames_for(role_client).items():
            for limit_bits in (0, 1):
                cfg = (1 if role_client else 0) | (limit_bits << 1)
                plan = plans[(len(name) + limit_bits) % len(plans)]
                role = "client" if role_client else "server"
                lim = ["256", "64k"][limit_bits]
                if limit_bits == 1 and name not in ("text-start-16bit-len", "too-large-then-ok",
                                                     "fragmented-text", "len64-truncated"):
                    continue
                put("ws_reader", f"{role}-{lim}-{name}", bytes([cfg, len(plan)]) + plan + data)

    # ws_roundtrip: [cfg][n][plan] then ops [kind][len lo][len hi][bytes].
    def op(kind, data, length=None):
        n = len(data) if length is None else length
        return bytes([kind]) + struct.pack("<H", n) + data

    media = j(tw_media(3, 1, tone(160)))
    for cfg in (0, 1, 2, 3):
        ops = (op(0, media) + op(2, b"ping") + op(1, tone(40)) + op(4, b"ab", 36000)
               + op(0, "héllo ✓".encode()) + op(3, "normal closure ✓".encode(), 0))
        put("ws_roundtrip", f"mixed-cfg{cfg}", bytes([cfg, 2, 0x05, 0x83]) + ops)
    put("ws_roundtrip", "close-long-reason",
        bytes([1, 0]) + op(3, ("é" * 80).encode(), 1) + op(0, b"after close"))

    # signature: token\0host\0path\0body\0header.
    sig_cases = {
        "doc-vector-form": ["12345", "example.com", "/myapp.php?foo=1&bar=2", DOC_FORM,
                            "L/OH5YylLD5NRKLltdqwSvS0BnU="],
        "voice-webhook": ["auth-token-0123456789abcdef", "relay.example.com", "/twiml",
                          VOICE_WEBHOOK, twilio_sig("auth-token-0123456789abcdef",
                                                        "https://relay.example.com/twiml", VOICE_WEBHOOK)],
        "call-status": ["auth-token-0123456789abcdef", "relay.example.com:8443",
                        "/call-status?relay_nonce=abc", CALL_STATUS,
                        twilio_sig("auth-token-0123456789abcdef",
                                   "https://relay.example.com:8443/call-status?relay_nonce=abc", CALL_STATUS)],
        "stream-status": ["auth-token-0123456789abcdef", "[2001:db8::1]:443", "/stream-status",
                          STREAM_STATUS, "   "],
        "json-webhook": ["12345", "example.com",
                         "/myapp?bodySHA256=5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9",
                         '{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}',
                         "0LhNuRnIpGQFhNTSnXwdBJvbVnI="],
        "wss-upgrade": ["12345", "relay.example.com/", "/media", "", "MVVXQK8WMm1ywK7bu7blrI+Pdd8="],
        "outbound-url": ["auth-token-0123456789abcdef", "relay.example.com", "/outbound-twiml",
                         outbound_query("auth-token-0123456789abcdef",
                                        "agent=openai&to=%2B14155550199", 1750000900), ""],
        "malformed-header": ["k", " host ", "/p?x=%zz&y", "a=%F0%9F%98%80&b=+&=&&c", "not base64!!"],
    }
    for name, rec in sig_cases.items():
        put("signature", name, "\0".join(rec).encode())

    # twiml: host\0form body\0extra params.
    twiml_cases = {
        "voice-webhook": ["relay.example.com", VOICE_WEBHOOK,
                          "prompt=You+are+a+helpful+agent.&agent=openai&relay_token=abc"],
        "escapes": ["relay.example.com:8443", "From=%2B1555&To=%3Csip%3Aa%40b%3E&CallSid=CA1",
                    "prompt=Say+%22hi%22+%26+%3Cb%3E+it%27s&first_message=%C3%A9%E2%9C%93"],
        "control-chars": ["relay.example.com", "From=a%01b&CallSid=CA1",
                          "prompt=tab%09here%0Aline%0D%0Aend%07&voice_id=x%7Fy%EF%BF%BF"],
        "too-long": ["h", "CallSid=CA1", "prompt=" + "x" * 494],
        "client-caller": ["relay.example.com", "From=client%3AJane&To=%2B1555&CallSid=CA2", ""],
    }
    for name, rec in twiml_cases.items():
        put("twiml", name, "\0".join(rec).encode())

    # telnyx_codec: [n][plan: n bytes]frame\0frame...; an empty plan feeds the frames as
    # they are, plan byte b feeds frame (b & 0x3f), twice with bit 6, after release_all with bit 7.
    def tx(frames, plan=b""):
        return bytes([len(plan)]) + plan + b"\0".join(frames)

    for name, msg in TELNYX_MESSAGES.items():
        put("telnyx_codec", name, tx([j(msg)]))
    put("telnyx_codec", "start-docs-pretty", tx([TX_START_DOCS.encode()]))
    put("telnyx_codec", "refused-frames", tx(TELNYX_BAD))
    media = [j(tx_media(i, tone(160, phase=160 * i))) for i in range(2, 12)]
    call = [j(TX_CONNECTED), j(tx_start(params=RELAY_TX_PARAMS))] + media
    call += [j(tx_dtmf(12, "4")), j(tx_mark(13, "ms-200")), j(tx_stop(14))]
    put("telnyx_codec", "call-in-order", tx(call))
    # The codec tests' arrival order 2 3 5 4 6 9 7 8 10 11: a few swapped, one three apart.
    order = [0, 1, 3, 2, 4, 7, 5, 6, 8, 9]
    put("telnyx_codec", "call-shuffled", tx(call[:2] + [media[i] for i in order] + call[12:]))
    put("telnyx_codec", "call-shuffled-plan", tx(call, bytes([0, 1] + [2 + i for i in order])))
    # Frame 3 missing until after the window gave up on it: skipped, then late.
    gap = [j(tx_media(i, tone(160, phase=160 * i))) for i in range(1, 11)]
    put("telnyx_codec", "gap-longer-than-window", tx(gap[:2] + gap[3:] + gap[2:3]))
    # Frames still held when the stream ends.
    put("telnyx_codec", "held-at-end", tx([j(tx_media(1, b"a")), j(tx_media(3, b"c")), j(tx_media(4, b"d"))]))
    # Duplicates (bit 6), a late duplicate, and release_all mid-stream (bit 7) then more frames.
    put("telnyx_codec", "duplicates-and-release",
        tx(gap, bytes([0, 0x40 | 2, 3, 1, 0x40 | 5, 4, 0x80 | 7, 6, 9, 8, 7])))

    # Literals from the repository's own tests and simulators.
    literals = extract_literals()
    seen = {}
    for path, lit, v in literals:
        if "event" in v and isinstance(v["event"], str) and "telnyx" in path:
            target, data = "telnyx_codec", b"\0" + lit.encode()
        elif "event" in v and isinstance(v["event"], str):
            target, data = "twilio_codec", lit.encode()
        elif "type" in v or "code" in v or "error" in v:
            d = dialect_of(path, v)
            if d is None:
                continue
            target, data = "agent_dialects", bytes([d]) + b"\0" + lit.encode()
        else:
            continue
        if seen.get(target, 0) >= EXTRACT_CAP:
            continue
        h = hashlib.sha1(data).hexdigest()[:12]
        name = "repo-" + h
        if os.path.exists(os.path.join(OUT, target, name)):
            continue
        seen[target] = seen.get(target, 0) + 1
        put(target, name, data)

    for t in sorted(counts):
        print(f"{t}: {counts[t]} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()

//! Per-message codec cost: media-relay's codecs (simd-json in place + base64-simd into reused
//! buffers + hand-built output) against the "usual" way (serde_json into owned structs +
//! the `base64` crate + `serde_json::to_vec(&json!(..))`), each pair in one group so the
//! ratio shows in a single run.
//!
//! simd-json parses in place, so every decode iteration first restores the message bytes
//! with `copy_from_slice` into a preallocated buffer; the baselines do the same copy so the
//! comparison stays fair (the copy is a few hundred bytes, a few ns).
//!
//! Run with `cargo bench --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use media_relay::agent::{elevenlabs, AgentEvent};
use media_relay::carrier::twilio::codec as twilio;
use media_relay::carrier::CallerEvent as TwilioEvent;
use serde::Deserialize;
use serde_json::json;

const OURS: &str = "media_relay";
const BASELINE: &str = "serde_json+base64";

/// A realistic stream SID: `MZ` + 32 hex digits.
const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

/// 20 ms of 8 kHz μ-law (one Twilio media chunk).
const CHUNK_20MS: usize = 160;
/// 100 ms of 8 kHz μ-law (a typical ElevenLabs audio event).
const CHUNK_100MS: usize = 800;

// === fixtures ===

/// Deterministic pseudo-random "audio" (xorshift64*), so base64 sees realistic entropy.
fn audio(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// An inbound Twilio `media` message exactly as Twilio sends it (field order included).
fn twilio_media_msg(audio: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"event":"media","sequenceNumber":"12345","media":{{"track":"inbound","chunk":"12344","timestamp":"246880","payload":"{}"}},"streamSid":"{}"}}"#,
        STANDARD.encode(audio),
        STREAM_SID
    )
    .into_bytes()
}

/// An ElevenLabs `audio` event.
fn elevenlabs_audio_msg(audio: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"type":"audio","audio_event":{{"audio_base_64":"{}","event_id":7}}}}"#,
        STANDARD.encode(audio)
    )
    .into_bytes()
}

// === baseline: owned serde_json structs ===

#[derive(Deserialize)]
struct BaseTwilio {
    event: String,
    #[serde(default, rename = "sequenceNumber")]
    sequence_number: Option<String>,
    #[serde(default)]
    media: Option<BaseTwilioMedia>,
    #[serde(default, rename = "streamSid")]
    stream_sid: Option<String>,
}

#[derive(Deserialize)]
struct BaseTwilioMedia {
    #[serde(default)]
    track: Option<String>,
    #[serde(default)]
    chunk: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    payload: String,
}

#[derive(Deserialize)]
struct BaseAgent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    audio_event: Option<BaseAgentAudio>,
}

#[derive(Deserialize)]
struct BaseAgentAudio {
    audio_base_64: String,
    #[serde(default)]
    event_id: Option<u64>,
}

/// Baseline Twilio decode: owned parse, same semantic checks as ours (event is `media`,
/// numeric strings parsed), base64 into a fresh Vec.
#[inline(always)]
fn base_twilio_decode(frame: &[u8]) -> Vec<u8> {
    let msg: BaseTwilio = serde_json::from_slice(frame).expect("valid twilio json");
    assert_eq!(msg.event, "media");
    black_box((&msg.sequence_number, &msg.stream_sid));
    let m = msg.media.expect("media");
    let chunk = m.chunk.as_deref().and_then(|c| c.parse::<u64>().ok());
    let ts = m.timestamp.as_deref().and_then(|t| t.parse::<u64>().ok());
    black_box((&m.track, chunk, ts));
    STANDARD.decode(m.payload).expect("valid base64")
}

/// Baseline ElevenLabs decode: owned parse + base64 into a fresh Vec.
#[inline(always)]
fn base_agent_decode(frame: &[u8]) -> Vec<u8> {
    let msg: BaseAgent = serde_json::from_slice(frame).expect("valid agent json");
    assert_eq!(msg.kind, "audio");
    let a = msg.audio_event.expect("audio_event");
    black_box(a.event_id);
    STANDARD.decode(a.audio_base_64).expect("valid base64")
}

#[inline(always)]
fn base_twilio_encode(audio: &[u8]) -> Vec<u8> {
    let payload = STANDARD.encode(audio);
    serde_json::to_vec(&json!({
        "event": "media",
        "streamSid": STREAM_SID,
        "media": { "payload": payload },
    }))
    .expect("serializable")
}

#[inline(always)]
fn base_agent_encode(audio: &[u8]) -> Vec<u8> {
    let chunk = STANDARD.encode(audio);
    serde_json::to_vec(&json!({ "user_audio_chunk": chunk })).expect("serializable")
}

// === ours ===

#[inline(always)]
fn ours_twilio_decode(frame: &mut [u8], scratch: &mut simd_json::Buffers, out: &mut Vec<u8>) {
    match twilio::decode(frame, scratch).expect("valid twilio json") {
        TwilioEvent::Media(m) => {
            black_box((m.track, m.chunk, m.timestamp_ms));
            media_relay::wire::b64::decode(m.payload, out).expect("valid base64");
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[inline(always)]
fn ours_agent_decode(
    session: &mut elevenlabs::Session,
    frame: &mut [u8],
    scratch: &mut simd_json::Buffers,
    out: &mut Vec<u8>,
) {
    match session.decode(frame, scratch).expect("valid agent json") {
        AgentEvent::Audio { payload_b64, reply } => {
            black_box(reply);
            media_relay::wire::b64::decode(payload_b64, out).expect("valid base64");
        }
        e => panic!("unexpected {e:?}"),
    }
}

// === groups ===

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g
}

fn same_json(a: &[u8], b: &[u8]) {
    let a: serde_json::Value = serde_json::from_slice(a).expect("ours is JSON");
    let b: serde_json::Value = serde_json::from_slice(b).expect("baseline is JSON");
    assert_eq!(a, b, "ours and baseline must produce the same message");
}

fn bench_twilio_decode(c: &mut Criterion) {
    let pcm = audio(CHUNK_20MS, 1);
    let msg = twilio_media_msg(&pcm);
    let mut buf = msg.clone();
    let mut scratch = simd_json::Buffers::default();
    let mut out = Vec::with_capacity(CHUNK_100MS);

    // Sanity: both sides decode the same audio.
    ours_twilio_decode(&mut buf, &mut scratch, &mut out);
    assert_eq!(out, pcm);
    assert_eq!(base_twilio_decode(&msg), pcm);

    let mut g = group(c, "twilio_decode");
    g.bench_function(OURS, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            ours_twilio_decode(&mut buf, &mut scratch, &mut out);
            black_box(&out);
        })
    });
    g.bench_function(BASELINE, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            black_box(base_twilio_decode(&buf))
        })
    });
    g.finish();
}

fn bench_twilio_encode(c: &mut Criterion) {
    let pcm = audio(CHUNK_20MS, 2);
    let mut out = Vec::with_capacity(512);

    twilio::encode_media(STREAM_SID, &pcm, &mut out);
    same_json(&out, &base_twilio_encode(&pcm));

    let mut g = group(c, "twilio_encode");
    g.bench_function(OURS, |b| {
        b.iter(|| {
            twilio::encode_media(black_box(STREAM_SID), black_box(&pcm), &mut out);
            black_box(&out);
        })
    });
    g.bench_function(BASELINE, |b| {
        b.iter(|| black_box(base_twilio_encode(black_box(&pcm))))
    });
    g.finish();
}

fn bench_elevenlabs_decode(c: &mut Criterion) {
    let pcm = audio(CHUNK_100MS, 3);
    let msg = elevenlabs_audio_msg(&pcm);
    let mut buf = msg.clone();
    let mut scratch = simd_json::Buffers::default();
    let mut out = Vec::with_capacity(CHUNK_100MS);
    let mut session = elevenlabs::Session::new(Default::default());

    ours_agent_decode(&mut session, &mut buf, &mut scratch, &mut out);
    assert_eq!(out, pcm);
    assert_eq!(base_agent_decode(&msg), pcm);

    let mut g = group(c, "elevenlabs_decode");
    g.bench_function(OURS, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            ours_agent_decode(&mut session, &mut buf, &mut scratch, &mut out);
            black_box(&out);
        })
    });
    g.bench_function(BASELINE, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            black_box(base_agent_decode(&buf))
        })
    });
    g.finish();
}

fn bench_elevenlabs_encode(c: &mut Criterion) {
    let pcm = audio(CHUNK_20MS, 4);
    let mut out = Vec::with_capacity(512);

    elevenlabs::encode_user_audio(&pcm, &mut out);
    same_json(&out, &base_agent_encode(&pcm));

    let mut g = group(c, "elevenlabs_encode");
    g.bench_function(OURS, |b| {
        b.iter(|| {
            elevenlabs::encode_user_audio(black_box(&pcm), &mut out);
            black_box(&out);
        })
    });
    g.bench_function(BASELINE, |b| {
        b.iter(|| black_box(base_agent_encode(black_box(&pcm))))
    });
    g.finish();
}

/// Caller → agent, one 20 ms frame: Twilio `media` in, ElevenLabs `user_audio_chunk` out.
fn bench_translate_twilio_to_agent(c: &mut Criterion) {
    let pcm = audio(CHUNK_20MS, 5);
    let msg = twilio_media_msg(&pcm);
    let mut buf = msg.clone();
    let mut scratch = simd_json::Buffers::default();
    let mut audio_buf = Vec::with_capacity(CHUNK_100MS);
    let mut out = Vec::with_capacity(512);

    ours_twilio_decode(&mut buf, &mut scratch, &mut audio_buf);
    elevenlabs::encode_user_audio(&audio_buf, &mut out);
    same_json(&out, &base_agent_encode(&base_twilio_decode(&msg)));

    let mut g = group(c, "translate_twilio_to_agent");
    g.bench_function(OURS, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            ours_twilio_decode(&mut buf, &mut scratch, &mut audio_buf);
            elevenlabs::encode_user_audio(&audio_buf, &mut out);
            black_box(&out);
        })
    });
    g.bench_function(BASELINE, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            let pcm = base_twilio_decode(&buf);
            black_box(base_agent_encode(&pcm))
        })
    });
    g.finish();
}

/// Agent → caller, one 20 ms ElevenLabs audio event in, one Twilio `media` message out.
fn bench_translate_agent_to_twilio(c: &mut Criterion) {
    let pcm = audio(CHUNK_20MS, 6);
    let msg = elevenlabs_audio_msg(&pcm);
    let mut buf = msg.clone();
    let mut scratch = simd_json::Buffers::default();
    let mut audio_buf = Vec::with_capacity(CHUNK_100MS);
    let mut out = Vec::with_capacity(512);
    let mut session = elevenlabs::Session::new(Default::default());

    ours_agent_decode(&mut session, &mut buf, &mut scratch, &mut audio_buf);
    twilio::encode_media(STREAM_SID, &audio_buf, &mut out);
    same_json(&out, &base_twilio_encode(&base_agent_decode(&msg)));

    let mut g = group(c, "translate_agent_to_twilio");
    g.bench_function(OURS, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            ours_agent_decode(&mut session, &mut buf, &mut scratch, &mut audio_buf);
            twilio::encode_media(STREAM_SID, &audio_buf, &mut out);
            black_box(&out);
        })
    });
    g.bench_function(BASELINE, |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            let pcm = base_agent_decode(&buf);
            black_box(base_twilio_encode(&pcm))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_twilio_decode,
    bench_twilio_encode,
    bench_elevenlabs_decode,
    bench_elevenlabs_encode,
    bench_translate_twilio_to_agent,
    bench_translate_agent_to_twilio,
);
criterion_main!(benches);

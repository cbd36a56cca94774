//! Per-frame cost of metrics on the caller-audio path (the hot-path budget).
//!
//! Three measurements of one inbound Twilio `media` message of 20 ms, each one group so the
//! ratios show in a single run:
//! - `codecs`: what any relay must do per frame: decode the Twilio JSON in place, decode the
//!   base64 payload, encode the agent's input-audio message;
//! - `codecs+metrics`: the same plus exactly the per-frame observability work the call
//!   machine does: frame and byte counters, the inbound-jitter and relay-added-latency
//!   histograms (local, folded into the shared Prometheus families every 250 frames), and
//!   the speech-end detector behind the turn latency (G.711 decode + energy of the frame);
//! - `machine`: the real `CallMachine` doing the whole step (`handle_caller` → `poll_transmit`
//!   → `handle_write_done`), metrics included.
//!
//! Run with `cargo bench --bench frame_path`; the README states the measured ratio.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use media_relay::agent::{elevenlabs, AgentKind};
use media_relay::audio::vad::SpeechDetector;
use media_relay::call::machine::{CallEvent, CallMachine};
use media_relay::carrier::twilio::codec as twilio;
use media_relay::carrier::{CallerEvent, CarrierKind};
use media_relay::obs::call_metrics::CallMetrics;
use media_relay::obs::labels::{Direction, Leg};
use media_relay::obs::latency::LatencyHistogram;
use media_relay::obs::metrics::{MetricLabels, Metrics};

const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

fn speech_like(len: usize) -> Vec<u8> {
    // μ-law codes of a mid-level signal (not silence, so the detector does real work).
    (0..len)
        .map(|i| [0x90u8, 0x10, 0xa0, 0x20][i % 4])
        .collect()
}

fn media_msg(audio: &[u8], chunk: u64) -> Vec<u8> {
    format!(
        r#"{{"event":"media","sequenceNumber":"{chunk}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{}"}},"streamSid":"{STREAM_SID}"}}"#,
        chunk * 20,
        base64_simd::STANDARD.encode_to_string(audio)
    )
    .into_bytes()
}

/// The codec work of one caller frame: returns the encoded agent message length.
#[inline(always)]
fn codecs(
    buf: &mut [u8],
    scratch: &mut simd_json::Buffers,
    audio: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> usize {
    let CallerEvent::Media(m) = twilio::decode(buf, scratch).expect("valid media") else {
        unreachable!()
    };
    audio.clear();
    media_relay::wire::b64::decode_append(m.payload, audio).expect("valid base64");
    elevenlabs::encode_user_audio(audio, out);
    out.len()
}

fn bench(c: &mut Criterion) {
    let pcm = speech_like(160);
    let msg = media_msg(&pcm, 1234);
    let mut g = c.benchmark_group("frame_path");
    g.throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(60);

    let mut buf = msg.clone();
    let mut scratch = simd_json::Buffers::default();
    let (mut audio, mut out) = (Vec::with_capacity(256), Vec::with_capacity(512));
    g.bench_function("codecs", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            black_box(codecs(&mut buf, &mut scratch, &mut audio, &mut out));
        })
    });

    let metrics = Metrics::new(MetricLabels {
        agents: AgentKind::NAMES.to_vec(),
        carriers: CarrierKind::NAMES.to_vec(),
    });
    let mut cm = CallMetrics::default();
    let mut jitter = LatencyHistogram::default();
    let mut speech = SpeechDetector::default();
    let mut last = Instant::now();
    g.bench_function("codecs+metrics", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            let n = codecs(&mut buf, &mut scratch, &mut audio, &mut out);
            let now = Instant::now();
            jitter.record(
                now.saturating_duration_since(last)
                    .abs_diff(Duration::from_millis(20)),
            );
            last = now;
            black_box(speech.push(&audio, now));
            cm.frame(Direction::ToAgent, n);
            cm.latency[Direction::ToAgent.index()].record(Instant::now() - now);
            if cm.fold_due(Duration::ZERO) {
                cm.fold(&metrics);
                jitter.fold_into(&metrics.jitter);
            }
        })
    });

    let settings = media_relay::config::ServeArgs::parse_from(&[
        "--agent",
        "elevenlabs",
        "--elevenlabs-agent-id",
        "bench",
        "--insecure-skip-twilio-signature",
    ])
    .settings()
    .expect("bench settings")
    .call;
    let t0 = Instant::now();
    let mut m = CallMachine::new(Arc::new(settings), CarrierKind::Twilio, t0);
    let start = format!(
        r#"{{"event":"start","start":{{"streamSid":"{STREAM_SID}","callSid":"CA1","mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}},"streamSid":"{STREAM_SID}"}}"#
    );
    let mut sb = start.into_bytes();
    let ev = twilio::decode(&mut sb, &mut scratch).expect("valid start");
    m.handle_caller(ev, t0);
    while let Some(ev) = m.poll_event() {
        if let CallEvent::Admit { .. } = ev {
            m.handle_admission(None, false, t0);
        }
    }
    m.handle_agent_connected();
    let mut ready = br#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"user_input_audio_format":"ulaw_8000","agent_output_audio_format":"ulaw_8000"}}"#.to_vec();
    let ev = m
        .dialect_mut()
        .expect("elevenlabs")
        .decode(&mut ready, &mut scratch)
        .expect("valid metadata");
    m.handle_agent(ev, t0);
    while m.poll_transmit(Leg::Agent, &mut out, t0) {}
    g.bench_function("machine", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&msg));
            let now = Instant::now();
            let ev = twilio::decode(&mut buf, &mut scratch).expect("valid media");
            m.handle_caller(ev, now);
            while m.poll_transmit(Leg::Agent, &mut out, now) {
                black_box(out.len());
            }
            m.handle_write_done(Leg::Agent, now);
            if m.metrics().fold_due(Duration::ZERO) {
                m.metrics_mut().fold(&metrics);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

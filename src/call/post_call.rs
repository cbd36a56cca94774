//! Post-call webhooks: when a call ends, a `post_call_transcription` record goes to
//! `--post-call-webhook-url`, in the envelope of ElevenLabs' post-call webhooks
//! (`{"type", "event_timestamp", "data": {…}}`, <https://elevenlabs.io/docs/agents-platform/workflows/post-call-webhooks>)
//! and signed the same way (`Relay-Signature: t=<unix>,v0=<hex HMAC-SHA256 of "{t}.{body}">`),
//! so receivers written for those work.
//!
//! Delivery never blocks a call: the call hands its record to a bounded process-wide queue
//! ([`QUEUE_CAPACITY`]; a full queue drops the record, counted); a worker posts each record
//! with up to [`MAX_ATTEMPTS`] attempts, backoff from [`BACKOFF_START`] (×2, ±20 % jitter), at
//! most [`MAX_IN_FLIGHT`] records at once. Every outcome is counted in
//! `relay_post_call_webhooks_total{type,result}`. The drain waits for the queue (and the
//! records being delivered) within its deadline ([`PostCallQueue::wait_idle`]); what is
//! still undelivered when the process exits is lost.

use crate::agent::history::History;
use crate::auth::Secret;
use crate::obs::calls::CallSummary;
use crate::obs::labels::{PostCallResult, PostCallType};
use crate::obs::metrics::Metrics;
use crate::wire::http_client::HttpClient;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Uri};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

/// Records waiting for delivery; beyond it a record is dropped (`result="dropped"`).
pub const QUEUE_CAPACITY: usize = 1024;

/// Attempts per record.
pub const MAX_ATTEMPTS: u32 = 5;

/// The first retry's delay.
pub const BACKOFF_START: Duration = Duration::from_secs(1);

/// Records being delivered at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// One attempt's time limit.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest receiver answer read, bytes.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Where post-call records go.
#[derive(Debug, Clone)]
pub struct PostCallSettings {
    /// The receiver (http or https).
    pub url: Uri,
    /// The HMAC key of `Relay-Signature` (unsigned without one).
    pub secret: Option<Secret>,
}

/// A record ready to send.
#[derive(Debug)]
struct Record {
    kind: PostCallType,
    body: Vec<u8>,
}

/// The process-wide delivery queue.
#[derive(Debug, Clone)]
pub struct PostCallQueue {
    tx: mpsc::Sender<Record>,
    metrics: Arc<Metrics>,
    /// Records queued or being delivered.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

impl PostCallQueue {
    /// Starts the delivery worker (on the current tokio runtime).
    pub fn start(settings: PostCallSettings, http: HttpClient, metrics: Arc<Metrics>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Record>(QUEUE_CAPACITY);
        let m = metrics.clone();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let idle = Arc::new(tokio::sync::Notify::new());
        let (p, n) = (pending.clone(), idle.clone());
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let settings = Arc::new(settings);
            while let Some(r) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (settings, http, m) = (settings.clone(), http.clone(), m.clone());
                let (p, n) = (p.clone(), n.clone());
                tokio::spawn(async move {
                    deliver(&settings, &http, &m, r).await;
                    drop(slot);
                    if p.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        n.notify_waiters();
                    }
                });
            }
        });
        PostCallQueue {
            tx,
            metrics,
            pending,
            idle,
        }
    }

    /// Waits until every record queued so far was delivered or given up on, or `timeout`
    /// passes; returns how many were still pending.
    pub async fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut notified = std::pin::pin!(self.idle.notified());
            // Registered before the check, so a notification in between is not missed.
            notified.as_mut().enable();
            let n = self.pending.load(std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.pending.load(std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// Queues a record of `kind` (never waits; a full queue drops it, counted).
    pub fn send(&self, kind: PostCallType, body: Vec<u8>) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.tx.try_send(Record { kind, body }).is_err() {
            self.pending
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            warn!(
                kind = kind.as_str(),
                "post-call webhook queue full: record dropped"
            );
            self.metrics
                .post_call_webhook(kind, PostCallResult::Dropped);
        }
    }
}

/// `t=<unix>,v0=<hex HMAC-SHA256(secret, "{t}.{body}")>`.
pub fn signature_header(secret: &[u8], t: u64, body: &[u8]) -> String {
    let hex = super::tool_webhook::signature(secret, t, body);
    format!("t={t},v0={}", hex.trim_start_matches("sha256="))
}

async fn deliver(settings: &PostCallSettings, http: &HttpClient, m: &Metrics, r: Record) {
    let mut delay = BACKOFF_START;
    let mut jitter: u64 = r.body.len() as u64 ^ 0x9E37_79B9;
    for attempt in 1..=MAX_ATTEMPTS {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(settings.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("media-relay/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(s) = &settings.secret {
            b = b.header(
                "relay-signature",
                signature_header(s.expose().as_bytes(), t, &r.body),
            );
        }
        let Ok(req) = b.body(Full::new(Bytes::from(r.body.clone()))) else {
            m.post_call_webhook(r.kind, PostCallResult::Failed);
            return;
        };
        let outcome = http.request(req, MAX_ANSWER_BYTES, ATTEMPT_TIMEOUT).await;
        match outcome {
            Ok((status, _)) if status.is_success() => {
                debug!(
                    kind = r.kind.as_str(),
                    attempt, "post-call webhook delivered"
                );
                m.post_call_webhook(r.kind, PostCallResult::Delivered);
                return;
            }
            Ok((status, _)) => {
                warn!(
                    kind = r.kind.as_str(),
                    attempt,
                    status = status.as_u16(),
                    "post-call webhook refused"
                )
            }
            Err(e) => {
                warn!(kind = r.kind.as_str(), attempt, error = %e.kind(), "post-call webhook unreachable")
            }
        }
        if attempt == MAX_ATTEMPTS {
            m.post_call_webhook(r.kind, PostCallResult::Failed);
            return;
        }
        m.post_call_webhook(r.kind, PostCallResult::Retried);
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        let f = 0.8 + 0.4 * ((jitter % 1000) as f64 / 1000.0);
        tokio::time::sleep(delay.mul_f64(f)).await;
        delay *= 2;
    }
}

/// The `post_call_transcription` record of a finished call: the transcript (`role` `agent` |
/// `user`, `message`, `time_in_call_secs` since the stream's `start`), `metadata` as the
/// seed's webhooks carry it, and the relay's own figures beside it.
pub fn transcription(
    summary: &CallSummary,
    history: &History,
    params: &[(String, String)],
    now_unix: u64,
) -> Vec<u8> {
    use serde_json::json;
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let transcript: Vec<serde_json::Value> = history
        .turns()
        .map(|t| match &t.tool {
            Some(tool) => json!({
                "role": "agent",
                "message": serde_json::Value::Null,
                "tool_calls": [{ "tool_name": tool.name, "params_as_json": tool.arguments }],
                "tool_results": [{ "tool_name": tool.name, "result_value": tool.output }],
                "time_in_call_secs": t.at_ms / 1000,
            }),
            None => json!({
                "role": t.role.as_str(),
                "message": t.text,
                "time_in_call_secs": t.at_ms / 1000,
            }),
        })
        .collect();
    let body = json!({
        "type": PostCallType::PostCallTranscription.as_str(),
        "event_timestamp": now_unix,
        "data": {
            "call_sid": summary.call_sid,
            "transcript": transcript,
            "transcript_truncated": history.dropped > 0,
            "metadata": {
                "start_time_unix_secs": summary.started_unix_ms / 1000,
                "call_duration_secs": summary.duration_ms / 1000,
                "phone_call": {
                    "direction": param("direction").unwrap_or_else(|| "inbound".into()),
                    "from_number": param("From"),
                    "to_number": param("To"),
                    "call_sid": summary.call_sid,
                },
                "termination_reason": summary.outcome,
            },
            "relay": summary,
        },
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The `post_call_audio` record of a finished recording: where the WAV file is and what it
/// holds (the seed's webhook of that name carries the audio inline; the relay points to the
/// file, which a call of an hour makes 57.6 MB).
pub fn audio(
    note: &crate::call::recording::writer::FinishNote,
    rec: &crate::call::recording::writer::Finished,
    now_unix: u64,
) -> Vec<u8> {
    use serde_json::json;
    let body = json!({
        "type": PostCallType::PostCallAudio.as_str(),
        "event_timestamp": now_unix,
        "data": {
            "call_sid": note.call_sid,
            "stream_sid": note.stream_sid,
            "agent": note.agent,
            "recording": {
                "location": rec.location,
                "format": "wav",
                "encoding": "mulaw",
                "sample_rate": crate::call::recording::wav::SAMPLE_RATE,
                "channels": ["caller", "agent"],
                "duration_secs": rec.duration_secs,
                "bytes": rec.bytes,
                "degraded": rec.degraded,
                "pauses_secs": rec.pauses,
            },
        },
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The `call_initiation_failure` record of an outbound call that never started, in the
/// seed's shape (`failure_reason`, `metadata {type, body}` with the carrier's callback
/// fields), plus what the relay placed it with (`to`, `from`, `agent`).
pub fn initiation_failure(
    carrier: &str,
    status: &str,
    call: &[(String, String)],
    fields: &[(String, String)],
    now_unix: u64,
) -> Vec<u8> {
    use serde_json::json;
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let placed = |k: &str| call.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let body: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let record = json!({
        "type": PostCallType::CallInitiationFailure.as_str(),
        "event_timestamp": now_unix,
        "data": {
            "call_sid": get("CallSid"),
            "agent": placed("agent"),
            "failure_reason": status,
            "to_number": placed("to"),
            "from_number": placed("from"),
            "metadata": { "type": carrier, "body": body },
        },
    });
    serde_json::to_vec(&record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::history::Role;

    #[test]
    fn the_signature_header_is_t_and_v0_over_t_dot_body() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature_header(b"secret", 1_700_000_000, br#"{"a":1}"#),
            format!(
                "t=1700000000,v0={}",
                super::super::tool_webhook::signature(b"secret", 1_700_000_000, br#"{"a":1}"#)
                    .trim_start_matches("sha256=")
            )
        );
    }

    #[test]
    fn the_transcription_record_has_the_seeds_shape() {
        let mut h = History::default();
        h.said(Role::Caller, "Hi", 1_500);
        h.said(Role::Agent, "Hello!", 2_900);
        let s = CallSummary {
            call_sid: "CA1".into(),
            started_unix_ms: 1_700_000_000_000,
            duration_ms: 65_000,
            outcome: Some("caller_hangup"),
            ..CallSummary::default()
        };
        let params = vec![("From".to_owned(), "+15550001111".to_owned())];
        let v: serde_json::Value =
            serde_json::from_slice(&transcription(&s, &h, &params, 1_700_000_065)).unwrap();
        assert_eq!(v["type"], "post_call_transcription");
        assert_eq!(v["event_timestamp"], 1_700_000_065);
        assert_eq!(
            v["data"]["transcript"],
            serde_json::json!([
                {"role":"user","message":"Hi","time_in_call_secs":1},
                {"role":"agent","message":"Hello!","time_in_call_secs":2}
            ])
        );
        let m = &v["data"]["metadata"];
        assert_eq!(m["start_time_unix_secs"], 1_700_000_000);
        assert_eq!(m["call_duration_secs"], 65);
        assert_eq!(m["phone_call"]["from_number"], "+15550001111");
        assert_eq!(m["termination_reason"], "caller_hangup");
        assert_eq!(v["data"]["relay"]["call_sid"], "CA1");
    }
}

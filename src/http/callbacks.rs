//! Carrier status callbacks: call progress (`CallStatus`, Twilio Call resource status
//! callbacks, <https://www.twilio.com/docs/voice/api/call-resource>; Telnyx TeXML call
//! callbacks) and stream events (`StreamEvent`, Twilio `<Stream>` statusCallback,
//! <https://www.twilio.com/docs/voice/twiml/stream>; Telnyx adds `stream-failed`).
//!
//! Form-encoded, at most [`MAX_CALLBACK_BODY_BYTES`], signed as the carrier signs (403
//! otherwise, counted in `relay_errors_total{leg=<carrier>,kind}`). Counted in
//! `relay_call_status_callbacks_total{status}` / `relay_stream_status_callbacks_total{event}`
//! (closed label sets, anything else is `other`) and logged in a `call` span carrying
//! `call_sid` (and `stream_sid`), like the call's own log lines. Answer: 200, empty body.

use super::server::State;
use super::signed_form::{read_signed_form, SignedForm};
use super::Resp;
use crate::carrier::CarrierKind;
use crate::obs::families;
use crate::obs::labels::{bounded, CallStatus, StreamEvent};
use crate::obs::metrics::{LabeledCounters, Metrics};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::sync::Arc;
use tracing::{info, warn};

/// Largest status-callback body accepted, in bytes (more: 413).
pub const MAX_CALLBACK_BODY_BYTES: usize = 64 * 1024;

/// Longest callback field value put in a log line (longer values are cut).
pub const MAX_LOGGED_FIELD_CHARS: usize = 256;

/// The callbacks' counters, registered once.
#[derive(Debug, Clone)]
pub struct CallbackMetrics {
    call_status: LabeledCounters,
    stream_events: LabeledCounters,
}

impl CallbackMetrics {
    /// Registers `relay_call_status_callbacks_total` and
    /// `relay_stream_status_callbacks_total` with every label value at 0.
    pub fn new(m: &Metrics) -> CallbackMetrics {
        CallbackMetrics {
            call_status: m.counters(
                families::CALL_STATUS_CALLBACKS,
                "status",
                CallStatus::ALL.iter().map(|s| s.as_str()),
            ),
            stream_events: m.counters(
                families::STREAM_STATUS_CALLBACKS,
                "event",
                StreamEvent::ALL.iter().map(|s| s.as_str()),
            ),
        }
    }
}

/// Which callback.
#[derive(Debug, Clone, Copy)]
pub enum CallbackKind {
    /// Call progress.
    Call,
    /// Stream events.
    Stream,
}

/// Answers one status callback of `carrier`.
pub async fn status(
    req: Request<Incoming>,
    carrier: CarrierKind,
    kind: CallbackKind,
    state: &Arc<State>,
) -> Resp {
    let form = match read_signed_form(
        req,
        carrier,
        &state.ctx.carriers,
        MAX_CALLBACK_BODY_BYTES,
        state.http.limits.body_read_timeout,
        &state.ctx.metrics,
    )
    .await
    {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let get = |k: &str| clip(form.get(k).unwrap_or(""));
    match kind {
        CallbackKind::Call => {
            let status = log_call_status(&form, carrier, &state.callback_metrics, get);
            initiation_failure(&form, carrier, status, state);
        }
        CallbackKind::Stream => {
            let event = bounded(
                StreamEvent::ALL,
                StreamEvent::as_str,
                get("StreamEvent"),
                StreamEvent::Other,
            );
            state.callback_metrics.stream_events.add(event.index(), 1);
            let span = tracing::info_span!(
                "call",
                carrier = carrier.as_str(),
                call_sid = get("CallSid"),
                stream_sid = get("StreamSid")
            );
            span.in_scope(|| {
                if matches!(event, StreamEvent::Error | StreamEvent::Failed) {
                    warn!(
                        event = get("StreamEvent"),
                        stream_name = get("StreamName"),
                        error = get("StreamError"),
                        "stream status callback: stream error"
                    );
                } else {
                    info!(
                        event = get("StreamEvent"),
                        stream_name = get("StreamName"),
                        error = get("StreamError"),
                        "stream status callback"
                    );
                }
            });
        }
    }
    Response::new(Full::new(Bytes::new()))
}

/// An outbound call that never started (`busy`, `no-answer`, `failed`, `canceled`) whose
/// status callback URL carries the relay's signed query (placed by `/outbound-call`): its
/// `call_initiation_failure` post-call record, from whichever instance Twilio reached.
fn initiation_failure(form: &SignedForm, carrier: CarrierKind, status: CallStatus, state: &State) {
    if !matches!(
        status,
        CallStatus::Busy | CallStatus::NoAnswer | CallStatus::Failed | CallStatus::Canceled
    ) {
        return;
    }
    let (Some(q), Some(tokens)) = (&state.ctx.post_call, &state.tokens) else {
        return;
    };
    let signed = match tokens.verify_query_for(
        crate::auth::tokens::UrlPurpose::CallStatus,
        &form.query,
        super::unix_now(),
    ) {
        Ok(s) => s,
        Err(e) => {
            // Not an outbound call of ours (or its query expired): no record.
            tracing::debug!(reason = %e, "status callback without a valid relay query");
            return;
        }
    };
    let call: Vec<(String, String)> = form_urlencoded::parse(signed.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "exp")
        .collect();
    q.send(
        crate::obs::labels::PostCallType::CallInitiationFailure,
        crate::call::post_call::initiation_failure(
            carrier.as_str(),
            status.as_str(),
            &call,
            &form.fields,
            super::unix_now(),
        ),
    );
}

fn log_call_status<'a>(
    form: &'a SignedForm,
    carrier: CarrierKind,
    m: &CallbackMetrics,
    get: impl Fn(&str) -> &'a str,
) -> CallStatus {
    let status = bounded(
        CallStatus::ALL,
        CallStatus::as_str,
        get("CallStatus"),
        CallStatus::Other,
    );
    m.call_status.add(status.index(), 1);
    let _ = form;
    let span = tracing::info_span!(
        "call",
        carrier = carrier.as_str(),
        call_sid = get("CallSid")
    );
    span.in_scope(|| {
        info!(
            status = get("CallStatus"),
            direction = get("Direction"),
            sequence = get("SequenceNumber"),
            duration_secs = get("CallDuration"),
            sip_response_code = get("SipResponseCode"),
            answered_by = get("AnsweredBy"),
            "call status callback"
        );
    });
    status
}

/// At most [`MAX_LOGGED_FIELD_CHARS`] characters of `s`.
pub fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_LOGGED_FIELD_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(300);
        assert_eq!(clip(&s).chars().count(), MAX_LOGGED_FIELD_CHARS);
        assert_eq!(clip("short"), "short");
    }
}

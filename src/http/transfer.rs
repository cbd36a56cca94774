//! A transfer's two callbacks, answered statelessly by any instance (everything they need is
//! in their relay-signed query, see `call::transfer`):
//!
//! - **Dial result** (`POST {carrier}/…/dial-result`): the carrier posts `DialCallStatus`
//!   when the transfer's `<Dial>` ends. `completed` (the person answered and the call is
//!   over) → `<Hangup/>`; `busy`, `no-answer`, `failed`, `canceled` → back to the call's
//!   agent with a new `<Connect><Stream>` whose parameters add `transfer_failed=<status>`
//!   (or `<Hangup/>` with `--transfer-fallback hangup`). Counted in
//!   `relay_transfers_total{result}`.
//! - **Whisper** (`POST {carrier}/…/whisper`): `<Say>` of the agent's summary to the person
//!   who answers, before the caller is joined.
//!
//! Both check the carrier's signature (when the carrier is authenticated) and the relay's
//! (always): 403 when either fails, 404 when the relay signs no URLs.

use super::server::State;
use super::signed_form::{read_signed_form, SignedForm};
use super::{error_json, text, unix_now, xml_response, Resp};
use crate::auth::tokens::UrlPurpose;
use crate::call::settings::TransferFallback;
use crate::call::transfer::{parse_dial_result, parse_whisper};
use crate::carrier::{dial, CarrierKind, StreamMarkup};
use crate::obs::labels::{ErrorKind, TransferResult};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use std::sync::Arc;
use tracing::{info, warn};

/// Largest callback body accepted, in bytes.
const MAX_CALLBACK_BODY_BYTES: usize = 64 * 1024;

/// Reads a callback whose query the relay signed for `purpose`; returns the form and the
/// signed part of the query.
async fn read(
    req: Request<Incoming>,
    carrier: CarrierKind,
    purpose: UrlPurpose,
    state: &Arc<State>,
) -> Result<(SignedForm, String), Resp> {
    let Some(tokens) = &state.tokens else {
        return Err(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    let form = read_signed_form(
        req,
        carrier,
        &state.ctx.carriers,
        MAX_CALLBACK_BODY_BYTES,
        state.http.limits.body_read_timeout,
        &state.ctx.metrics,
    )
    .await?;
    match tokens.verify_query_for(purpose, &form.query, unix_now()) {
        Ok(signed) => {
            let signed = signed.to_owned();
            Ok((form, signed))
        }
        Err(e) => {
            state.ctx.metrics.caller_error(carrier.index(), e.kind());
            warn!(reason = %e, ?purpose, "refused a transfer callback: bad relay signature");
            Err(error_json(
                StatusCode::FORBIDDEN,
                "invalid_url",
                &e.to_string(),
            ))
        }
    }
}

/// Answers a transfer's dial result.
pub async fn dial_result(req: Request<Incoming>, carrier: CarrierKind, state: &Arc<State>) -> Resp {
    let (form, signed) = match read(req, carrier, UrlPurpose::DialResult, state).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let q = parse_dial_result(&signed);
    let metrics = &state.ctx.metrics;
    if form.get("CallSid") != Some(q.call_sid.as_str()) {
        metrics.caller_error(carrier.index(), ErrorKind::TransferUrlWrongCall);
        warn!(
            signed_for = %q.call_sid,
            posted = form.get("CallSid").unwrap_or(""),
            "refused a dial result: the URL was signed for another call"
        );
        return error_json(
            StatusCode::FORBIDDEN,
            "invalid_url",
            "the URL was signed for another call",
        );
    }
    let status = form.get("DialCallStatus").unwrap_or("failed");
    let result = TransferResult::from_dial_status(status);
    metrics.transfer(result);
    state
        .ctx
        .calls
        .set_transfer_result(&q.call_sid, result.as_str());
    let back = result != TransferResult::Completed
        && state.ctx.settings.control.fallback == TransferFallback::Agent;
    info!(
        call_sid = %q.call_sid,
        carrier = carrier.as_str(),
        dial_call_status = status,
        result = result.as_str(),
        back_to_agent = back,
        "transfer dial result"
    );
    if !back {
        return xml_response(dial::hangup());
    }
    back_to_agent(&form, &q, status, carrier, state)
}

/// The `<Connect><Stream>` that returns a call from a failed transfer to its agent.
fn back_to_agent(
    form: &SignedForm,
    q: &crate::call::transfer::DialResultQuery,
    status: &str,
    carrier: CarrierKind,
    state: &Arc<State>,
) -> Resp {
    let (Some(tokens), Some(host)) = (&state.tokens, &state.control.public_host) else {
        return xml_response(dial::hangup());
    };
    // The carrier's own value when it is a plain word (`no-answer`), else `failed`.
    let status = if !status.is_empty()
        && status.len() <= 32
        && status.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
    {
        status
    } else {
        "failed"
    };
    let token = tokens.token_for_call(&q.call_sid);
    let mut params: Vec<(&str, &str)> = Vec::new();
    for k in ["From", "To", "CallSid"] {
        if let Some(v) = form.get(k) {
            params.push((k, v));
        }
    }
    // The configured agent settings, then the call's own parameters over them.
    for (k, v) in &state.control.agent_params {
        if !q.params.iter().any(|(n, _)| n == k) {
            params.push((k, v.as_str()));
        }
    }
    for (k, v) in &q.params {
        params.push((k.as_str(), v.as_str()));
    }
    if let Some(a) = q.agent {
        if !params.iter().any(|(k, _)| *k == "agent") {
            params.push(("agent", a.as_str()));
        }
    }
    params.push(("transfer_failed", status));
    params.push(("relay_token", &token));
    match carrier.control().connect_markup(StreamMarkup {
        host,
        params: &params,
        token: Some(&token),
    }) {
        Ok(xml) => xml_response(xml),
        Err(e) => {
            warn!(error = %e, "a failed transfer cannot return to the agent; hanging up");
            xml_response(dial::hangup())
        }
    }
}

/// Answers a transfer's whisper: `<Say>` of the summary.
pub async fn whisper(req: Request<Incoming>, carrier: CarrierKind, state: &Arc<State>) -> Resp {
    let (_, signed) = match read(req, carrier, UrlPurpose::Whisper, state).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let summary = parse_whisper(&signed).unwrap_or_default();
    let summary: String = summary
        .chars()
        .take(crate::call::machine::actions::MAX_SUMMARY_CHARS)
        .collect();
    info!(
        carrier = carrier.as_str(),
        chars = summary.chars().count(),
        "transfer whisper"
    );
    xml_response(dial::say(&summary))
}

//! The incoming-call webhook of each carrier (Twilio `POST /twiml`, Telnyx
//! `POST /telnyx/texml`): checks the carrier's signature, and answers markup that connects
//! the call to the relay's media stream with the call's parameters (`From`, `To`, `CallSid`,
//! the configured agent settings, the `agent` chosen by the webhook URL's `?agent=` query,
//! `relay_record=1` for `?record=1`, and, for authenticated carriers, the per-call
//! `relay_token`), then `<Hangup/>`.

use super::server::State;
use super::signed_form::read_signed_form;
use super::{error_json, text, xml_response, Resp};
use crate::agent::AgentKind;
use crate::carrier::{CarrierKind, StreamMarkup};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use std::sync::Arc;
use tracing::{info, warn};

/// Largest webhook body accepted, in bytes.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 64 * 1024;

/// Answers `carrier`'s incoming-call webhook.
pub async fn answer(req: Request<Incoming>, carrier: CarrierKind, state: &Arc<State>) -> Resp {
    let host = state.control.public_host.clone().or_else(|| {
        req.headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let query = req.uri().query().map(str::to_owned);
    let agent = match agent_from_query(req.uri().query(), state) {
        Ok(a) => a,
        Err(msg) => return error_json(StatusCode::BAD_REQUEST, "invalid_agent", &msg),
    };
    let form = match read_signed_form(
        req,
        carrier,
        &state.ctx.carriers,
        MAX_WEBHOOK_BODY_BYTES,
        state.http.limits.body_read_timeout,
        &state.ctx.metrics,
    )
    .await
    {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let Some(host) = host else {
        return text(
            StatusCode::BAD_REQUEST,
            "no public host configured and no Host header\n",
        );
    };
    let mut params: Vec<(&str, &str)> = Vec::new();
    for k in ["From", "To", "CallSid"] {
        if let Some(v) = form.get(k) {
            params.push((k, v));
        }
    }
    for (k, v) in &state.control.agent_params {
        params.push((k, v.as_str()));
    }
    if let Some(a) = agent {
        params.push(("agent", a.as_str()));
    }
    if record_from_query(query.as_deref()) {
        params.push((crate::call::recording::RECORD_PARAMETER, "1"));
    }
    let mut token = None;
    if let (Some(tokens), true) = (
        &state.tokens,
        state.ctx.carriers.status(carrier).authenticated,
    ) {
        let Some(call_sid) = form.get("CallSid").filter(|s| !s.is_empty()) else {
            return text(StatusCode::BAD_REQUEST, "CallSid is required\n");
        };
        token = Some(tokens.token_for_call(call_sid));
    }
    if let Some(t) = token.as_deref() {
        params.push(("relay_token", t));
    }
    match carrier.control().connect_markup(StreamMarkup {
        host: &host,
        params: &params,
        token: token.as_deref(),
    }) {
        Ok(xml) => {
            info!(
                carrier = carrier.as_str(),
                call_sid = form.get("CallSid").unwrap_or(""),
                "answered incoming call with markup"
            );
            xml_response(xml)
        }
        Err(e) => {
            warn!(error = %e, "refused to emit markup");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a stream parameter is too long\n",
            )
        }
    }
}

/// Whether the webhook URL asks for this call to be recorded (`?record=1`, `true` or `yes`;
/// with `--record on-demand`). The carrier's signature covers the query.
fn record_from_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "record" && crate::call::recording::is_yes(&v))
    })
}

/// The `agent` query parameter of the webhook URL (an operator points each number's webhook
/// at `…?agent=NAME`; the carrier's signature covers the query). `None` without one.
///
/// # Errors
/// A message for an unknown or unconfigured agent (answered 400 at markup time, so the call
/// never reaches a stream).
fn agent_from_query(query: Option<&str>, state: &State) -> Result<Option<AgentKind>, String> {
    let Some(name) = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "agent")
            .map(|(_, v)| v.into_owned())
    }) else {
        return Ok(None);
    };
    let kind = AgentKind::from_name(&name).ok_or_else(|| {
        format!(
            "unknown agent {name:?}: use one of {}",
            AgentKind::NAMES.join(", ")
        )
    })?;
    if !state.ctx.settings.agents.is_configured(kind) {
        return Err(format!("agent {name} is not configured on this relay"));
    }
    Ok(Some(kind))
}

//! The tool webhook: when an agent asks the relay to run a tool, the driver POSTs it here
//! and the machine hands the result back to the agent in the dialect's own shape.
//!
//! Request: `POST RELAY_TOOL_WEBHOOK_URL` with JSON
//! `{"call_sid","stream_sid","agent","tool_call_id","name","arguments"}` (`arguments` a JSON
//! object) and headers `X-Relay-Timestamp: <Unix seconds>` and
//! `X-Relay-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}" keyed with
//! RELAY_TOOL_WEBHOOK_SECRET>` (the header is left out when no secret is set). A receiver
//! checks the signature over the raw body and refuses stale timestamps.
//!
//! Answer: a 2xx JSON body `{"result": <any JSON>}` is the tool's result. It may also carry a
//! call action the business backend decides on: `"action": {"type": "end_call", "reason"?}`
//! or `"action": {"type": "transfer", "target": "sales", "reason"?, "summary"?}` (then
//! `result` may be left out). A non-2xx status, another body, an unreachable webhook or no
//! answer within `--tool-timeout-ms` give the agent an error result instead (the timeout is
//! the machine's). Owns the request and the answer's parsing; not when to call (the machine)
//! or how the agent hears it (the dialects).

use super::machine::actions::CallAction;
use super::recording::RecordingAction;
use crate::agent::ToolOutput;
use crate::auth::Secret;
use crate::obs::labels::ToolResult;
use crate::wire::http_client::HttpClient;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::{Method, Request, Uri};
use std::time::Duration;

/// Largest webhook answer read, in bytes.
pub const MAX_TOOL_RESPONSE_BYTES: usize = 256 * 1024;

/// Tool webhook settings.
#[derive(Debug, Clone)]
pub struct ToolSettings {
    /// `RELAY_TOOL_WEBHOOK_URL`; without it every tool call gets "no tools are configured".
    pub webhook_url: Option<Uri>,
    /// `RELAY_TOOL_WEBHOOK_SECRET`: the HMAC key of `X-Relay-Signature`.
    pub secret: Option<Secret>,
    /// How long the webhook may take (`--tool-timeout-ms`, default 8000).
    pub timeout: Duration,
    /// Most tool calls one call may make (`--max-tool-calls-per-call`).
    pub max_per_call: u32,
}

impl Default for ToolSettings {
    fn default() -> Self {
        ToolSettings {
            webhook_url: None,
            secret: None,
            timeout: Duration::from_millis(8000),
            max_per_call: 32,
        }
    }
}

/// One tool call to POST.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolRequest {
    /// Twilio call SID.
    pub call_sid: String,
    /// Twilio stream SID.
    pub stream_sid: String,
    /// The dialect (`elevenlabs`, `assemblyai`, `openai`).
    pub agent: &'static str,
    /// The agent's id for this call, echoed back to it with the result.
    pub tool_call_id: String,
    /// Tool name.
    pub name: String,
    /// Arguments (a JSON object).
    pub arguments: serde_json::Value,
}

/// `sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// What the webhook answered: the result label, the output for the agent, and a call action.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAnswer {
    /// `relay_tool_calls_total{result}`.
    pub result: ToolResult,
    /// What the agent hears.
    pub output: ToolOutput,
    /// A call action the backend asked for.
    pub action: Option<CallAction>,
    /// A recording pause or resume the backend asked for (`"action": {"type":
    /// "pause_recording" | "resume_recording"}`).
    pub recording: Option<RecordingAction>,
}

impl From<(ToolResult, ToolOutput)> for WebhookAnswer {
    fn from((result, output): (ToolResult, ToolOutput)) -> Self {
        WebhookAnswer {
            result,
            output,
            action: None,
            recording: None,
        }
    }
}

/// Reads a 2xx answer body: `{"result": …}` and/or `{"action": {…}}`.
pub fn parse_answer(body: &[u8]) -> WebhookAnswer {
    let bad = || {
        WebhookAnswer::from((
            ToolResult::BadResponse,
            Err("the tool webhook's answer is not {\"result\": …} JSON".into()),
        ))
    };
    let Ok(serde_json::Value::Object(mut o)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return bad();
    };
    let raw_action = o.remove("action");
    let action = raw_action.as_ref().and_then(parse_action);
    let recording = raw_action
        .as_ref()
        .and_then(|a| a.get("type")?.as_str())
        .and_then(RecordingAction::from_label);
    match o.remove("result") {
        Some(result) => WebhookAnswer {
            result: ToolResult::Ok,
            output: Ok(result),
            action,
            recording,
        },
        None if action.is_some() || recording.is_some() => WebhookAnswer {
            result: ToolResult::Ok,
            output: Ok(serde_json::json!({ "status": "ok" })),
            action,
            recording,
        },
        None => bad(),
    }
}

/// A webhook's `action` object (unknown types and a transfer without a target are ignored).
fn parse_action(a: &serde_json::Value) -> Option<CallAction> {
    let text = |k: &str| a.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    match a.get("type")?.as_str()? {
        "end_call" => Some(CallAction::EndCall {
            reason: text("reason"),
        }),
        "transfer" => Some(CallAction::Transfer {
            target: text("target")?,
            reason: text("reason"),
            summary: text("summary"),
        }),
        _ => None,
    }
}

/// POSTs `req` to the webhook and turns the answer into a result for the agent. Never
/// waits longer than `settings.timeout` plus a second (the machine times out first).
pub async fn call_webhook(
    http: &HttpClient,
    settings: &ToolSettings,
    req: ToolRequest,
) -> WebhookAnswer {
    let Some(url) = &settings.webhook_url else {
        return (
            ToolResult::NotConfigured,
            Err("no tools are configured on this relay".into()),
        )
            .into();
    };
    let body = match serde_json::to_vec(&req) {
        Ok(b) => b,
        Err(e) => {
            return (
                ToolResult::BadResponse,
                Err(format!("cannot encode the call: {e}")),
            )
                .into()
        }
    };
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("media-relay/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-relay-timestamp", ts.to_string());
    if let Some(secret) = &settings.secret {
        builder = builder.header(
            "x-relay-signature",
            signature(secret.expose().as_bytes(), ts, &body),
        );
    }
    let Ok(request) = builder.body(Full::new(Bytes::from(body))) else {
        return (
            ToolResult::Unreachable,
            Err("invalid tool webhook URL".into()),
        )
            .into();
    };
    let timeout = settings.timeout + Duration::from_secs(1);
    match http
        .request(request, MAX_TOOL_RESPONSE_BYTES, timeout)
        .await
    {
        Err(crate::wire::net::NetError::Timeout) => (
            ToolResult::Timeout,
            Err("the tool webhook timed out".into()),
        )
            .into(),
        Err(e) => (
            ToolResult::Unreachable,
            Err(format!("the tool webhook is unreachable ({})", e.kind())),
        )
            .into(),
        Ok((status, _)) if !status.is_success() => (
            ToolResult::ErrorStatus,
            Err(format!(
                "the tool webhook answered HTTP {}",
                status.as_u16()
            )),
        )
            .into(),
        Ok((_, body)) => parse_answer(&body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_may_carry_a_call_action() {
        let a = parse_answer(br#"{"result":{"order":"shipped"},"action":{"type":"end_call"}}"#);
        assert_eq!(a.output, Ok(serde_json::json!({"order":"shipped"})));
        assert_eq!(a.action, Some(CallAction::EndCall { reason: None }));
        let a = parse_answer(br#"{"action":{"type":"transfer","target":"sales","summary":"VIP"}}"#);
        assert_eq!(a.result, ToolResult::Ok);
        assert_eq!(
            a.action,
            Some(CallAction::Transfer {
                target: "sales".into(),
                reason: None,
                summary: Some("VIP".into())
            })
        );
        // Unknown action types and transfers without a target are ignored.
        assert_eq!(
            parse_answer(br#"{"result":1,"action":{"type":"dance"}}"#).action,
            None
        );
        assert_eq!(
            parse_answer(br#"{"action":{"type":"transfer"}}"#).result,
            ToolResult::BadResponse
        );
        assert_eq!(parse_answer(b"[1]").result, ToolResult::BadResponse);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}

//! Call control endpoints: `POST /outbound-call` places a call through Twilio's REST API
//! (Calls resource, <https://www.twilio.com/docs/voice/api/call-resource>) with a signed `Url`
//! back to the relay, `POST /twiml/outbound` answers Twilio's fetch of that URL with
//! `<Connect><Stream>` TwiML, and the signed Twilio status callbacks `POST /call-status` and
//! `POST /stream-status` update metrics and log one line per callback.
//!
//! Owns: bearer authentication of the outbound API (constant time), the per-client rate limit
//! (`governor`, keyed by client IP, pruned by [`Control::upkeep`]), request validation (body
//! size, JSON shape, E.164 numbers, agent id, dynamic-variable names), building the TwiML
//! parameters and the Twilio form, and JSON error bodies with stable `error` codes
//! ([`OutboundResult::as_str`]). Does not own routing (`server`), TwiML escaping (`twiml`),
//! signature maths (`auth::signature`) or stream tokens (`auth::tokens`).
//!
//! ## `POST /outbound-call`
//! `Authorization: Bearer <RELAY_API_TOKEN>`, JSON body (at most
//! [`MAX_OUTBOUND_BODY_BYTES`]) `{to, from?, prompt?, first_message?, dynamic_variables?,
//! agent?, agent_id?}` (`agent`: the dialect, `elevenlabs|assemblyai|openai|echo`, configured
//! on this relay; `agent_id`: a per-call ElevenLabs agent id); unknown fields are refused. Answers `200 {"call_sid":"CA…"}`, or an error
//! `{"error":"<code>","message":"…"}` (`application/json`) with the status of
//! [`OutboundResult::status`]. Every request is counted in
//! `relay_outbound_calls_total{result}`.
//!
//! Stream parameters, in order: the configured agent settings (`prompt`, `first_message`,
//! `language`, `voice_id`) with `prompt`/`first_message` replaced by the request's (an empty
//! string counts as absent), then each dynamic variable (sorted by name; numbers and booleans
//! as their JSON text), then `agent` and `relay_agent_id` when given.
//!
//! The call is created with `Url=https://{public host}/twiml/outbound?{parameters}&exp=…&sig=…`
//! (`Method=POST`): the parameters travel in the query, signed by the relay (`sig`, HMAC with
//! the token secret, expiring after 15 minutes). When the callee answers, Twilio POSTs there
//! with the `CallSid`; any instance that shares the token secret and the auth token checks
//! Twilio's signature and ours, and answers TwiML whose `relay_token` is bound to that
//! `CallSid` (see `auth::tokens`). No instance keeps state about the call.
//!
//! The rate limit key is the TCP peer's IP address (IPv6 masked to its /64). Behind a reverse
//! proxy every client shares the proxy's key; `X-Forwarded-For` is deliberately not trusted.
//!
//! ## Status callbacks
//! Form-encoded, at most [`MAX_CALLBACK_BODY_BYTES`]. With `TWILIO_AUTH_TOKEN` set the
//! `X-Twilio-Signature` must match `https://{public host}{path?query}` (403 otherwise, counted
//! in `relay_errors_total{leg="twilio",kind}`). Counted in
//! `relay_call_status_callbacks_total{status}` / `relay_stream_status_callbacks_total{event}`
//! (closed label sets, anything else is `other`) and logged in a `call` span carrying
//! `call_sid` (and `stream_sid`), like the call's own log lines. Answer: 200, empty body.

use super::{bearer_token, body_error, error_json, json_response, read_body, BodyError};
use crate::agent::AgentKind;
use crate::auth::signature::SignatureValidator;
use crate::auth::tokens::StreamTokens;
use crate::config::{Secret, ServeArgs, MAX_PARAMETER_CHARS};
use crate::obs::metrics::{Leg, Metrics};
use crate::wire::http_client::HttpClient;
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::{debug, error, info, warn};

/// Largest `POST /outbound-call` body accepted, in bytes (more: 413 `payload_too_large`).
pub const MAX_OUTBOUND_BODY_BYTES: usize = 16 * 1024;

/// Largest status-callback body accepted, in bytes (more: 413).
pub const MAX_CALLBACK_BODY_BYTES: usize = 64 * 1024;

/// Largest Twilio REST response body read, in bytes.
pub const MAX_TWILIO_RESPONSE_BYTES: usize = 64 * 1024;

/// Time allowed for the whole Twilio REST exchange (connect, TLS, request, response).
pub const TWILIO_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Most clients the rate limiter tracks at once (bounded memory); idle clients are pruned by
/// [`Control::upkeep`], and inline when the table is full.
pub const MAX_RATE_LIMIT_KEYS: usize = 100_000;

/// The call progress events requested from Twilio (`StatusCallbackEvent`, Twilio Call resource status callbacks).
pub const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// Longest `agent_id` accepted (`[A-Za-z0-9_-]{1,64}`).
pub const MAX_AGENT_ID_CHARS: usize = 64;

/// Longest signed TwiML URL put in a Calls request (a generous bound for URLs Twilio
/// fetches; the parameters are each under 500 characters).
pub const MAX_TWIML_URL_CHARS: usize = 8000;

/// Stream parameter names a dynamic variable may not use: the agent overrides the relay
/// builds itself (names starting with `relay_` are refused as well).
const OVERRIDE_PARAMETERS: [&str; 4] = ["prompt", "first_message", "language", "voice_id"];

/// `CallStatus` values (Twilio Call resource status callbacks, <https://www.twilio.com/docs/voice/api/call-resource>), the label values of
/// `relay_call_status_callbacks_total{status}` (plus `other`).
const CALL_STATUSES: [&str; 9] = [
    "queued",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "failed",
    "no-answer",
    "canceled",
];

/// `StreamEvent` values (Twilio `<Stream>` statusCallback, <https://www.twilio.com/docs/voice/twiml/stream>), the label values of
/// `relay_stream_status_callbacks_total{event}` (plus `other`).
const STREAM_EVENTS: [&str; 3] = ["stream-started", "stream-stopped", "stream-error"];

/// Longest callback field value put in a log line (longer values are cut).
const MAX_LOGGED_FIELD_CHARS: usize = 256;

use super::Resp;
type KeyedLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// The result of one `POST /outbound-call`: the `result` label of
/// `relay_outbound_calls_total` and, for failures, the stable `error` code of the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundResult {
    /// 200: Twilio created the call.
    Placed,
    /// 404: `RELAY_API_TOKEN` (or the Twilio account settings) not configured.
    NotConfigured,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 429: the client exceeded `--outbound-calls-per-minute`.
    RateLimited,
    /// 413: body over [`MAX_OUTBOUND_BODY_BYTES`].
    PayloadTooLarge,
    /// 400: body unreadable, not JSON, unknown field or wrong type.
    InvalidJson,
    /// 400: `to` missing or not E.164.
    InvalidTo,
    /// 400: `from` (or `TWILIO_PHONE_NUMBER`) not E.164.
    InvalidFrom,
    /// 400: no `from` and no `TWILIO_PHONE_NUMBER`.
    MissingFrom,
    /// 400: `agent` is not a dialect configured on this relay.
    InvalidAgent,
    /// 400: `agent_id` not `[A-Za-z0-9_-]{1,64}`.
    InvalidAgentId,
    /// 400: a dynamic variable name is empty, has control characters, starts with `relay_`
    /// or is one of the agent override names.
    InvalidDynamicVariable,
    /// 400: a stream parameter's name + value is 500 characters or more.
    ParameterTooLong,
    /// 502: Twilio answered with an error (or a success without a call SID).
    TwilioError,
    /// 502: Twilio could not be reached (connect, TLS, HTTP failure or timeout).
    TwilioUnreachable,
}

impl OutboundResult {
    /// Every result (the label set of `relay_outbound_calls_total`).
    pub const ALL: [OutboundResult; 15] = [
        OutboundResult::Placed,
        OutboundResult::NotConfigured,
        OutboundResult::Unauthorized,
        OutboundResult::RateLimited,
        OutboundResult::PayloadTooLarge,
        OutboundResult::InvalidJson,
        OutboundResult::InvalidTo,
        OutboundResult::InvalidFrom,
        OutboundResult::MissingFrom,
        OutboundResult::InvalidAgent,
        OutboundResult::InvalidAgentId,
        OutboundResult::InvalidDynamicVariable,
        OutboundResult::ParameterTooLong,
        OutboundResult::TwilioError,
        OutboundResult::TwilioUnreachable,
    ];

    /// Stable snake_case name: the metric label and the JSON `error` code.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundResult::Placed => "placed",
            OutboundResult::NotConfigured => "not_configured",
            OutboundResult::Unauthorized => "unauthorized",
            OutboundResult::RateLimited => "rate_limited",
            OutboundResult::PayloadTooLarge => "payload_too_large",
            OutboundResult::InvalidJson => "invalid_json",
            OutboundResult::InvalidTo => "invalid_to",
            OutboundResult::InvalidFrom => "invalid_from",
            OutboundResult::MissingFrom => "missing_from",
            OutboundResult::InvalidAgent => "invalid_agent",
            OutboundResult::InvalidAgentId => "invalid_agent_id",
            OutboundResult::InvalidDynamicVariable => "invalid_dynamic_variable",
            OutboundResult::ParameterTooLong => "parameter_too_long",
            OutboundResult::TwilioError => "twilio_error",
            OutboundResult::TwilioUnreachable => "twilio_unreachable",
        }
    }

    /// The HTTP status answered for this result.
    pub fn status(self) -> StatusCode {
        match self {
            OutboundResult::Placed => StatusCode::OK,
            OutboundResult::NotConfigured => StatusCode::NOT_FOUND,
            OutboundResult::Unauthorized => StatusCode::UNAUTHORIZED,
            OutboundResult::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            OutboundResult::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            OutboundResult::InvalidJson
            | OutboundResult::InvalidTo
            | OutboundResult::InvalidFrom
            | OutboundResult::MissingFrom
            | OutboundResult::InvalidAgent
            | OutboundResult::InvalidAgentId
            | OutboundResult::InvalidDynamicVariable
            | OutboundResult::ParameterTooLong => StatusCode::BAD_REQUEST,
            OutboundResult::TwilioError | OutboundResult::TwilioUnreachable => {
                StatusCode::BAD_GATEWAY
            }
        }
    }
}

/// A failed outbound request, rendered as the JSON error body.
#[derive(Debug)]
struct ApiError {
    result: OutboundResult,
    message: String,
    /// `Retry-After` seconds (429).
    retry_after_secs: Option<u64>,
    /// Twilio's HTTP status and error code (`twilio_error`).
    twilio_status: Option<u16>,
    twilio_code: Option<i64>,
}

impl ApiError {
    fn new(result: OutboundResult, message: impl Into<String>) -> Self {
        Self {
            result,
            message: message.into(),
            retry_after_secs: None,
            twilio_status: None,
            twilio_code: None,
        }
    }

    fn response(&self) -> Resp {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.result.as_str().into());
        body.insert("message".into(), self.message.as_str().into());
        if let Some(s) = self.twilio_status {
            body.insert("status".into(), s.into());
        }
        if let Some(c) = self.twilio_code {
            body.insert("twilio_code".into(), c.into());
        }
        let mut r = json_response(self.result.status(), &serde_json::Value::Object(body));
        if let Some(secs) = self.retry_after_secs {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.result == OutboundResult::Unauthorized {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The `/outbound-call` settings, present only when fully configured.
struct Outbound {
    /// SHA-256 of `RELAY_API_TOKEN`: compared in constant time with the presented token's
    /// hash, so neither the value nor its length leaks through timing.
    api_token_hash: [u8; 32],
    /// `{TWILIO_API_BASE}/2010-04-01/Accounts/{sid}/Calls.json`.
    calls_url: Uri,
    /// `Basic base64(sid:auth token)`, marked sensitive.
    basic_auth: HeaderValue,
    public_host: String,
    status_callback: String,
    default_from: Option<String>,
    agent_params: Vec<(&'static str, String)>,
    http: HttpClient,
    tokens: Arc<StreamTokens>,
    limiter: KeyedLimiter,
    /// Dialects configured on this relay (the `agent` field must name one).
    agents: Vec<AgentKind>,
    body_timeout: Duration,
}

/// Call control: the outbound-call API and the Twilio status callbacks. Built once per relay
/// by [`Control::new`]; the routes call its methods.
pub struct Control {
    outbound: Option<Outbound>,
    metrics: Arc<Metrics>,
    signatures: Option<SignatureValidator>,
    tokens: Option<Arc<StreamTokens>>,
    public_host: Option<String>,
    body_timeout: Duration,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("outbound_configured", &self.outbound.is_some())
            .field("signatures", &self.signatures.is_some())
            .finish_non_exhaustive()
    }
}

/// The JSON body of `POST /outbound-call`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundRequest {
    to: Option<String>,
    from: Option<String>,
    prompt: Option<String>,
    first_message: Option<String>,
    dynamic_variables: Option<BTreeMap<String, DynamicValue>>,
    agent: Option<String>,
    agent_id: Option<String>,
}

/// A dynamic variable value: string, number or boolean (stringified as a parameter).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DynamicValue {
    Str(String),
    Num(serde_json::Number),
    Bool(bool),
}

impl DynamicValue {
    fn into_string(self) -> String {
        match self {
            DynamicValue::Str(s) => s,
            DynamicValue::Num(n) => n.to_string(),
            DynamicValue::Bool(b) => b.to_string(),
        }
    }
}

/// Twilio's JSON answer (success: `sid`; error: `code`, `message`).
#[derive(Debug, Default, Deserialize)]
struct TwilioAnswer {
    sid: Option<String>,
    code: Option<i64>,
    message: Option<String>,
}

impl Control {
    /// None-safe construction: always returns a `Control`. `/outbound-call` answers 404
    /// `not_configured` unless `RELAY_API_TOKEN`, `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`
    /// and `--public-host` are all set (non-empty) and the Twilio URL is valid. Status callbacks
    /// are always served; they are signature-checked when `signatures` is `Some`.
    pub fn new(
        args: &ServeArgs,
        http: HttpClient,
        metrics: Arc<Metrics>,
        signatures: Option<SignatureValidator>,
        tokens: Option<Arc<StreamTokens>>,
    ) -> Control {
        let outbound = Self::outbound_settings(args, http, tokens.clone());
        Control {
            outbound,
            metrics,
            signatures,
            tokens,
            public_host: args.public_host.clone(),
            body_timeout: args.http_limits().body_read_timeout,
        }
    }

    fn outbound_settings(
        args: &ServeArgs,
        http: HttpClient,
        tokens: Option<Arc<StreamTokens>>,
    ) -> Option<Outbound> {
        let non_empty = |s: &Option<Secret>| s.clone().filter(|s| !s.expose().is_empty());
        let api_token = non_empty(&args.relay_api_token)?;
        let (Some(auth_token), Some(sid), Some(public_host)) = (
            non_empty(&args.twilio_auth_token),
            args.twilio_account_sid.as_deref().filter(|s| !s.is_empty()),
            args.public_host.as_deref().filter(|s| !s.is_empty()),
        ) else {
            error!("RELAY_API_TOKEN is set but TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN or --public-host is missing: /outbound-call is disabled");
            return None;
        };
        if !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            error!("TWILIO_ACCOUNT_SID is not alphanumeric: /outbound-call is disabled");
            return None;
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{sid}/Calls.json",
            args.twilio_api_base.trim_end_matches('/')
        );
        let calls_url = match url.parse::<Uri>() {
            Ok(u) if crate::wire::net::scheme_is_tls(&u).is_ok() && u.host().is_some() => u,
            _ => {
                error!(api_base = %args.twilio_api_base, "TWILIO_API_BASE is not an http(s) origin: /outbound-call is disabled");
                return None;
            }
        };
        let credentials =
            base64_simd::STANDARD.encode_to_string(format!("{sid}:{}", auth_token.expose()));
        let Ok(mut basic_auth) = HeaderValue::from_str(&format!("Basic {credentials}")) else {
            // Base64 output is always a valid header value.
            return None;
        };
        basic_auth.set_sensitive(true);
        let public_host = public_host.trim().trim_end_matches('/').to_owned();
        let per_minute = NonZeroU32::new(args.outbound_calls_per_minute).unwrap_or(NonZeroU32::MIN);
        let Some(tokens) = tokens else {
            error!("stream tokens are not configured: /outbound-call is disabled");
            return None;
        };
        let agents = match args.agent_settings() {
            Ok(a) => AgentKind::ALL
                .into_iter()
                .filter(|k| a.is_configured(*k))
                .collect(),
            Err(_) => vec![AgentKind::Echo],
        };
        Some(Outbound {
            api_token_hash: Sha256::digest(api_token.expose().as_bytes()).into(),
            calls_url,
            basic_auth,
            status_callback: format!("https://{public_host}/call-status"),
            public_host,
            default_from: args
                .twilio_phone_number
                .clone()
                .filter(|s| !s.trim().is_empty()),
            agent_params: args.agent_parameters(),
            http,
            tokens,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            agents,
            body_timeout: args.http_limits().body_read_timeout,
        })
    }

    /// Creates every series of this module's label sets at 0 (outbound results, call statuses,
    /// stream events), so the first event of each is seen by `rate()`.
    pub fn register_metrics(metrics: &Metrics) {
        for r in OutboundResult::ALL {
            metrics.count("relay_outbound_calls_total", &[("result", r.as_str())], 0);
        }
        for s in CALL_STATUSES.iter().copied().chain(["other"]) {
            metrics.count("relay_call_status_callbacks_total", &[("status", s)], 0);
        }
        for e in STREAM_EVENTS.iter().copied().chain(["other"]) {
            metrics.count("relay_stream_status_callbacks_total", &[("event", e)], 0);
        }
    }

    /// `POST /outbound-call`: authenticates, rate-limits, validates, places the call with
    /// Twilio and answers `200 {"call_sid": "CA…"}` or a JSON error (see the module docs).
    pub async fn outbound_call(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let result = match &self.outbound {
            Some(o) => o.place(req, peer).await,
            None => Err(ApiError::new(
                OutboundResult::NotConfigured,
                "outbound calls are not configured on this relay",
            )),
        };
        let label = match &result {
            Ok(_) => OutboundResult::Placed,
            Err(e) => e.result,
        };
        self.metrics.count(
            "relay_outbound_calls_total",
            &[("result", label.as_str())],
            1,
        );
        match result {
            Ok(call_sid) => {
                json_response(StatusCode::OK, &serde_json::json!({ "call_sid": call_sid }))
            }
            Err(e) => {
                debug!(%peer, result = e.result.as_str(), "outbound call refused");
                e.response()
            }
        }
    }

    /// `POST /twiml/outbound?…&exp=…&sig=…`: Twilio fetching an outbound call's TwiML. Both
    /// signatures must hold (Twilio's over the URL and form, ours over the query, unexpired);
    /// the answer is `<Connect><Stream>` with the query's parameters and the `relay_token` of
    /// the form's `CallSid`. Refusals: 404 outside the authenticated mode, 403 for a bad
    /// signature or an expired URL, 400 without a `CallSid` — each counted in
    /// `relay_errors_total{leg="twilio",kind}`.
    pub async fn outbound_twiml(&self, req: Request<Incoming>) -> Resp {
        let (Some(v), Some(tokens), Some(host)) =
            (&self.signatures, &self.tokens, &self.public_host)
        else {
            return super::text(StatusCode::NOT_FOUND, "not found\n");
        };
        let signature = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/twiml/outbound".to_owned(), |p| p.as_str().to_owned());
        let query = req.uri().query().unwrap_or("").to_owned();
        let body =
            match read_body(req.into_body(), MAX_CALLBACK_BODY_BYTES, self.body_timeout).await {
                Ok(b) => b,
                Err(e) => return body_error(e),
            };
        if let Err(e) = v.validate_form(&path_and_query, &body, &signature) {
            self.metrics.error(Leg::Twilio, e.kind());
            warn!(
                kind = e.kind(),
                "refused /twiml/outbound: bad Twilio signature"
            );
            return error_json(
                StatusCode::FORBIDDEN,
                "invalid_signature",
                "invalid Twilio signature",
            );
        }
        let signed = match tokens.verify_query(&query, unix_now()) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.error(Leg::Twilio, e.kind());
                warn!(reason = %e, "refused /twiml/outbound");
                return error_json(StatusCode::FORBIDDEN, "invalid_url", &e.to_string());
            }
        };
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let Some(call_sid) = form
            .iter()
            .find(|(k, _)| k == "CallSid")
            .map(|(_, v)| v.as_str())
            .filter(|s| is_call_sid(s))
        else {
            return error_json(
                StatusCode::BAD_REQUEST,
                "missing_call_sid",
                "CallSid is required",
            );
        };
        let mut params: Vec<(String, String)> = form_urlencoded::parse(signed.as_bytes())
            .into_owned()
            .filter(|(k, _)| k != "exp")
            .collect();
        params.push(("relay_token".into(), tokens.token_for_call(call_sid)));
        let refs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match crate::http::twiml::connect_stream(host, &refs) {
            Ok(xml) => {
                info!(call_sid, "answered an outbound call's TwiML fetch");
                let mut r = Response::new(Full::new(Bytes::from(xml)));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
                r
            }
            Err(e) => error_json(
                StatusCode::BAD_REQUEST,
                "parameter_too_long",
                &e.to_string(),
            ),
        }
    }

    /// `POST /call-status`: Twilio call progress callbacks (Twilio Call resource status callbacks, <https://www.twilio.com/docs/voice/api/call-resource>).
    pub async fn call_status(&self, req: Request<Incoming>) -> Resp {
        self.status_callback(req, CallbackKind::Call).await
    }

    /// `POST /stream-status`: Twilio Media Streams status callbacks (Twilio `<Stream>` statusCallback, <https://www.twilio.com/docs/voice/twiml/stream>).
    pub async fn stream_status(&self, req: Request<Incoming>) -> Resp {
        self.status_callback(req, CallbackKind::Stream).await
    }

    /// Periodic housekeeping: drops rate-limiter state of clients that are idle again (their
    /// state equals a fresh one) and releases the memory. Cheap; call every few seconds.
    pub fn upkeep(&self) {
        if let Some(o) = &self.outbound {
            o.limiter.retain_recent();
            o.limiter.shrink_to_fit();
        }
    }

    async fn status_callback(&self, req: Request<Incoming>, kind: CallbackKind) -> Resp {
        let signature = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or_else(|| kind.path().to_owned(), |p| p.as_str().to_owned());
        let body =
            match read_body(req.into_body(), MAX_CALLBACK_BODY_BYTES, self.body_timeout).await {
                Ok(b) => b,
                Err(e) => return body_error(e),
            };
        if let Some(v) = &self.signatures {
            if let Err(e) = v.validate_form(&path_and_query, &body, &signature) {
                self.metrics.error(Leg::Twilio, e.kind());
                warn!(
                    kind = e.kind(),
                    path = kind.path(),
                    "refused a status callback: bad Twilio signature"
                );
                return error_json(
                    StatusCode::FORBIDDEN,
                    "invalid_signature",
                    "invalid Twilio signature",
                );
            }
        }
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| {
            form.iter()
                .find(|(n, _)| n == k)
                .map_or("", |(_, v)| clip(v))
        };
        match kind {
            CallbackKind::Call => {
                let status = bounded(get("CallStatus"), &CALL_STATUSES);
                self.metrics.count(
                    "relay_call_status_callbacks_total",
                    &[("status", status)],
                    1,
                );
                let span = tracing::info_span!("call", call_sid = get("CallSid"));
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
            }
            CallbackKind::Stream => {
                let event = bounded(get("StreamEvent"), &STREAM_EVENTS);
                self.metrics.count(
                    "relay_stream_status_callbacks_total",
                    &[("event", event)],
                    1,
                );
                let span = tracing::info_span!(
                    "call",
                    call_sid = get("CallSid"),
                    stream_sid = get("StreamSid")
                );
                span.in_scope(|| {
                    if event == "stream-error" {
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
}

impl Outbound {
    async fn place(&self, req: Request<Incoming>, peer: SocketAddr) -> Result<String, ApiError> {
        self.authenticate(&req)?;
        self.rate_limit(peer)?;
        if req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_OUTBOUND_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let body =
            match read_body(req.into_body(), MAX_OUTBOUND_BODY_BYTES, self.body_timeout).await {
                Ok(b) => b,
                Err(BodyError::TooLarge) => return Err(too_large()),
                Err(BodyError::Timeout) => {
                    return Err(ApiError::new(
                        OutboundResult::InvalidJson,
                        "the request body did not arrive in time",
                    ))
                }
                Err(BodyError::Read) => {
                    return Err(ApiError::new(
                        OutboundResult::InvalidJson,
                        "could not read the request body",
                    ))
                }
            };
        let request: OutboundRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                OutboundResult::InvalidJson,
                format!("invalid request body: {e}"),
            )
        })?;
        let call = self.validate(request)?;
        let url = self.twiml_url(&call.params)?;
        let sid = self.create_call(&call.to, &call.from, &url).await?;
        info!(
            call_sid = %sid,
            %peer,
            agent = call.agent.as_deref().unwrap_or(""),
            "placed an outbound call"
        );
        Ok(sid)
    }

    fn authenticate(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let ok = presented.is_some_and(|t| {
            let hash: [u8; 32] = Sha256::digest(t.as_bytes()).into();
            bool::from(hash.ct_eq(&self.api_token_hash))
        });
        if ok {
            Ok(())
        } else {
            Err(ApiError::new(
                OutboundResult::Unauthorized,
                "missing or invalid bearer token",
            ))
        }
    }

    fn rate_limit(&self, peer: SocketAddr) -> Result<(), ApiError> {
        let key = client_key(peer.ip());
        if self.limiter.len() >= MAX_RATE_LIMIT_KEYS {
            self.limiter.retain_recent();
        }
        let limited = |secs: u64| {
            let mut e = ApiError::new(
                OutboundResult::RateLimited,
                format!("too many outbound calls from this client; retry in {secs} s"),
            );
            e.retry_after_secs = Some(secs);
            e
        };
        if self.limiter.len() >= MAX_RATE_LIMIT_KEYS {
            warn!("outbound rate limiter is full: refusing new clients");
            return Err(limited(60));
        }
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                warn!(client = %key, "outbound call rate limited");
                Err(limited(secs.max(1)))
            }
        }
    }

    fn validate(&self, r: OutboundRequest) -> Result<ValidCall, ApiError> {
        let to = r.to.unwrap_or_default();
        if !is_e164(&to) {
            return Err(ApiError::new(
                OutboundResult::InvalidTo,
                "to must be an E.164 number (+ then 2 to 15 digits, no leading 0)",
            ));
        }
        let from = match r.from {
            Some(f) => {
                if !is_e164(&f) {
                    return Err(ApiError::new(
                        OutboundResult::InvalidFrom,
                        "from must be an E.164 number (+ then 2 to 15 digits, no leading 0)",
                    ));
                }
                f
            }
            None => match &self.default_from {
                Some(f) if is_e164(f.trim()) => f.trim().to_owned(),
                Some(_) => {
                    return Err(ApiError::new(
                        OutboundResult::InvalidFrom,
                        "the configured TWILIO_PHONE_NUMBER is not an E.164 number",
                    ))
                }
                None => {
                    return Err(ApiError::new(
                        OutboundResult::MissingFrom,
                        "from is required (no TWILIO_PHONE_NUMBER is configured)",
                    ))
                }
            },
        };
        if let Some(a) = &r.agent {
            if !AgentKind::from_name(a).is_some_and(|k| self.agents.contains(&k)) {
                return Err(ApiError::new(
                    OutboundResult::InvalidAgent,
                    format!(
                        "agent must be one of the agents configured on this relay: {}",
                        self.agents
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        if let Some(a) = &r.agent_id {
            if !is_agent_id(a) {
                return Err(ApiError::new(
                    OutboundResult::InvalidAgentId,
                    "agent_id must be 1 to 64 characters of A-Z a-z 0-9 _ -",
                ));
            }
        }
        let prompt = r.prompt.filter(|s| !s.is_empty());
        let first_message = r.first_message.filter(|s| !s.is_empty());
        let mut params: Vec<(String, String)> = Vec::new();
        let (mut prompt_used, mut first_used) = (false, false);
        for (name, value) in &self.agent_params {
            let value = match *name {
                "prompt" if prompt.is_some() => {
                    prompt_used = true;
                    prompt.clone().unwrap_or_default()
                }
                "first_message" if first_message.is_some() => {
                    first_used = true;
                    first_message.clone().unwrap_or_default()
                }
                _ => value.clone(),
            };
            params.push(((*name).to_owned(), value));
        }
        if let (Some(p), false) = (prompt, prompt_used) {
            params.push(("prompt".into(), p));
        }
        if let (Some(m), false) = (first_message, first_used) {
            params.push(("first_message".into(), m));
        }
        for (name, value) in r.dynamic_variables.unwrap_or_default() {
            if name.is_empty()
                || name.starts_with("relay_")
                || name == "agent"
                || OVERRIDE_PARAMETERS.contains(&name.as_str())
                || name.chars().any(char::is_control)
            {
                return Err(ApiError::new(
                    OutboundResult::InvalidDynamicVariable,
                    format!(
                        "dynamic variable name {:?} is reserved or invalid (names starting with relay_ and {} are reserved)",
                        clip(&name),
                        OVERRIDE_PARAMETERS.join(", ")
                    ),
                ));
            }
            params.push((name, value.into_string()));
        }
        if let Some(a) = &r.agent {
            params.push(("agent".into(), a.clone()));
        }
        if let Some(a) = &r.agent_id {
            params.push(("relay_agent_id".into(), a.clone()));
        }
        for (name, value) in &params {
            if name.chars().count() + value.chars().count() >= MAX_PARAMETER_CHARS {
                return Err(parameter_too_long(name));
            }
        }
        Ok(ValidCall {
            to,
            from,
            agent: r.agent,
            params,
        })
    }

    /// The signed TwiML URL carrying the call's parameters (see the module docs).
    fn twiml_url(&self, params: &[(String, String)]) -> Result<String, ApiError> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let signed = self.tokens.sign_query(&query, unix_now());
        let url = format!("https://{}/twiml/outbound?{signed}", self.public_host);
        if url.len() > MAX_TWIML_URL_CHARS {
            return Err(ApiError::new(
                OutboundResult::ParameterTooLong,
                format!(
                    "the call's parameters make a TwiML URL over {MAX_TWIML_URL_CHARS} characters"
                ),
            ));
        }
        Ok(url)
    }

    /// The Calls create form. Kept out of the async fn: the serializer is not `Send`.
    fn create_call_form(&self, to: &str, from: &str, url: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("To", to)
            .append_pair("From", from)
            .append_pair("Url", url)
            .append_pair("Method", "POST")
            .append_pair("StatusCallback", &self.status_callback)
            .append_pair("StatusCallbackMethod", "POST");
        for event in STATUS_CALLBACK_EVENTS {
            form.append_pair("StatusCallbackEvent", event);
        }
        form.finish()
    }

    async fn create_call(&self, to: &str, from: &str, url: &str) -> Result<String, ApiError> {
        let body = self.create_call_form(to, from, url);
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.calls_url.clone();
        let h = req.headers_mut();
        h.insert(header::AUTHORIZATION, self.basic_auth.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("media-relay/", env!("CARGO_PKG_VERSION"))),
        );
        let unreachable = |detail: String| {
            warn!(error = %detail, "Twilio REST API unreachable");
            ApiError::new(
                OutboundResult::TwilioUnreachable,
                "could not reach the Twilio REST API",
            )
        };
        let (status, body) = match self
            .http
            .request(req, MAX_TWILIO_RESPONSE_BYTES, TWILIO_REQUEST_TIMEOUT)
            .await
        {
            Err(e) => return Err(unreachable(format!("{} ({e})", e.kind()))),
            Ok(x) => x,
        };
        let answer: TwilioAnswer = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_success() {
            if let Some(sid) = answer.sid.filter(|s| is_call_sid(s)) {
                return Ok(sid);
            }
            warn!(
                status = status.as_u16(),
                "Twilio accepted the call but its answer has no call SID"
            );
            return Err(ApiError {
                twilio_status: Some(status.as_u16()),
                ..ApiError::new(
                    OutboundResult::TwilioError,
                    "Twilio's answer has no call SID",
                )
            });
        }
        warn!(
            status = status.as_u16(),
            twilio_code = answer.code,
            "Twilio refused the outbound call"
        );
        Err(ApiError {
            twilio_status: Some(status.as_u16()),
            twilio_code: answer.code,
            ..ApiError::new(
                OutboundResult::TwilioError,
                answer
                    .message
                    .unwrap_or_else(|| format!("Twilio answered HTTP {}", status.as_u16())),
            )
        })
    }
}

/// A validated outbound request.
struct ValidCall {
    to: String,
    from: String,
    agent: Option<String>,
    /// Stream parameters before the token pair.
    params: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
enum CallbackKind {
    Call,
    Stream,
}

impl CallbackKind {
    fn path(self) -> &'static str {
        match self {
            CallbackKind::Call => "/call-status",
            CallbackKind::Stream => "/stream-status",
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        OutboundResult::PayloadTooLarge,
        format!("request body is larger than {MAX_OUTBOUND_BODY_BYTES} bytes"),
    )
}

fn parameter_too_long(name: &str) -> ApiError {
    ApiError::new(
        OutboundResult::ParameterTooLong,
        format!(
            "stream parameter {:?} is too long: name + value must be under {MAX_PARAMETER_CHARS} characters",
            clip(name)
        ),
    )
}

/// Unix time in seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `^\+[1-9][0-9]{1,14}$`.
fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// `^[A-Za-z0-9_-]{1,64}$`.
fn is_agent_id(s: &str) -> bool {
    (1..=MAX_AGENT_ID_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A plausible call SID from Twilio: non-empty, at most 64 ASCII alphanumerics.
fn is_call_sid(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The rate-limit key of a client: its IP, IPv4-mapped addresses as IPv4, IPv6 masked to the
/// /64 (one subscriber's usual allocation, so rotating addresses does not escape the limit).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// `value` if it is in `allowed`, else `"other"` (closed label sets).
fn bounded(value: &str, allowed: &[&'static str]) -> &'static str {
    allowed
        .iter()
        .find(|a| **a == value)
        .copied()
        .unwrap_or("other")
}

/// At most [`MAX_LOGGED_FIELD_CHARS`] characters of `s`.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_LOGGED_FIELD_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        for ok in ["+15551234567", "+44", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "",
            "+",
            "+1",
            "15551234567",
            "+05551234567",
            "+1234567890123456",
            "+1555 123",
            "+1555-1234",
            "+١٢٣",
            "sip:a@b",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn agent_ids() {
        assert!(is_agent_id("agent_1-A"));
        assert!(is_agent_id(&"a".repeat(64)));
        assert!(!is_agent_id(&"a".repeat(65)));
        assert!(!is_agent_id(""));
        assert!(!is_agent_id("a b"));
        assert!(!is_agent_id("a/b"));
        assert!(!is_agent_id("é"));
    }

    #[test]
    fn bearer() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn client_keys_group_ipv6_by_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), v4);
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(bounded("ringing", &CALL_STATUSES), "ringing");
        assert_eq!(bounded("RINGING", &CALL_STATUSES), "other");
        assert_eq!(bounded("", &STREAM_EVENTS), "other");
        assert_eq!(bounded("stream-error", &STREAM_EVENTS), "stream-error");
    }

    #[test]
    fn dynamic_values_stringify() {
        let m: BTreeMap<String, DynamicValue> =
            serde_json::from_str(r#"{"a":"x","b":42,"c":1.5,"d":true}"#).unwrap();
        let v: Vec<String> = m.into_values().map(DynamicValue::into_string).collect();
        assert_eq!(v, ["x", "42", "1.5", "true"]);
        assert!(serde_json::from_str::<BTreeMap<String, DynamicValue>>(r#"{"a":null}"#).is_err());
        assert!(serde_json::from_str::<BTreeMap<String, DynamicValue>>(r#"{"a":[1]}"#).is_err());
    }

    #[test]
    fn error_bodies_are_stable_json() {
        let mut e = ApiError::new(OutboundResult::RateLimited, "slow down");
        e.retry_after_secs = Some(30);
        let r = e.response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(300);
        assert_eq!(clip(&s).chars().count(), MAX_LOGGED_FIELD_CHARS);
        assert_eq!(clip("short"), "short");
    }
}

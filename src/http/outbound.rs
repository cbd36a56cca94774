//! Outbound calls: `POST /outbound-call` places a call through a carrier's REST API
//! (Twilio Calls resource, <https://www.twilio.com/docs/voice/api/call-resource>; Telnyx TeXML
//! Calls) with a signed markup URL back to the relay, and the carrier's fetch of that URL
//! (`POST /twiml/outbound`, `POST /telnyx/texml/outbound`) is answered with
//! `<Connect><Stream>` markup. The route contract (body fields, answers, error codes) is in
//! the README's "Outbound calls" section.
//!
//! Owns: bearer authentication of the outbound API, the per-client rate limit (`governor`,
//! keyed by client IP, pruned by [`Outbound::upkeep`]), request validation, the signed markup
//! URL, and JSON error bodies with stable `error` codes ([`OutboundResult::as_str`]). Does not
//! own routing (`server`), markup (`carrier`), signature maths (each carrier) or stream tokens
//! (`auth::tokens`).
//!
//! The call's parameters travel in the markup URL's query, signed by the relay (`sig`, HMAC
//! with the token secret, expiring after 15 minutes). When the callee answers, the carrier
//! POSTs there with the `CallSid`; any instance that shares the token secret checks the
//! carrier's signature and ours, and answers markup whose `relay_token` is bound to that
//! `CallSid`. No instance keeps state about the call. The rate limit key is the TCP peer's IP
//! address (IPv6 masked to its /64); `X-Forwarded-For` is deliberately not trusted.

use super::server::State;
use super::signed_form::read_signed_form;
use super::{error_json, json_response, read_body, unix_now, xml_response, BodyError, Resp};
use crate::agent::{is_agent_id, is_variable_name, AgentKind};
use crate::auth::tokens::{StreamTokens, UrlPurpose};
use crate::auth::BearerToken;
use crate::call::settings::is_e164;
use crate::carrier::{
    parameter_fits, CarrierKind, NewCall, RestError, StreamMarkup, MAX_PARAMETER_CHARS,
};
use crate::http::callbacks::clip;
use crate::obs::families;
use crate::obs::metrics::{LabeledCounters, Metrics};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Largest `POST /outbound-call` body accepted, in bytes (more: 413 `payload_too_large`).
pub const MAX_OUTBOUND_BODY_BYTES: usize = 16 * 1024;

/// Largest markup-fetch body accepted, in bytes.
pub const MAX_FETCH_BODY_BYTES: usize = 64 * 1024;

/// Most clients the rate limiter tracks at once (bounded memory); idle clients are pruned by
/// [`Outbound::upkeep`], and inline when the table is full.
pub const MAX_RATE_LIMIT_KEYS: usize = 100_000;

/// Longest signed markup URL put in a create-call request (a generous bound for URLs a
/// carrier fetches; the parameters are each under 500 characters).
pub const MAX_MARKUP_URL_CHARS: usize = 8000;

type KeyedLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// The result of one `POST /outbound-call`: the `result` label of
/// `relay_outbound_calls_total` and, for failures, the stable `error` code of the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundResult {
    /// 200: Twilio created the call.
    Placed,
    /// 404: `RELAY_API_TOKEN` (or a carrier's REST settings) not configured.
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
    /// 400: `carrier` is not a carrier this relay places calls through.
    InvalidCarrier,
    /// 400: `agent_id` not `[A-Za-z0-9_-]{1,64}`.
    InvalidAgentId,
    /// 400: a dynamic variable name is empty, has control characters, starts with `relay_`
    /// or is one of the agent override names.
    InvalidDynamicVariable,
    /// 400: a stream parameter's name + value is 500 characters or more.
    ParameterTooLong,
    /// 400: `machine_detection` is not `Enable` or `DetectMessageEnd`, or its timeout is
    /// outside 3..=59 s.
    InvalidMachineDetection,
    /// 502: the carrier answered with an error.
    CarrierError,
    /// 502: the carrier could not be reached (connect, TLS, HTTP failure or timeout).
    CarrierUnreachable,
}

impl OutboundResult {
    /// Every result (the label set of `relay_outbound_calls_total`).
    pub const ALL: [OutboundResult; 17] = [
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
        OutboundResult::InvalidCarrier,
        OutboundResult::InvalidAgentId,
        OutboundResult::InvalidDynamicVariable,
        OutboundResult::ParameterTooLong,
        OutboundResult::InvalidMachineDetection,
        OutboundResult::CarrierError,
        OutboundResult::CarrierUnreachable,
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
            OutboundResult::InvalidCarrier => "invalid_carrier",
            OutboundResult::InvalidAgentId => "invalid_agent_id",
            OutboundResult::InvalidDynamicVariable => "invalid_dynamic_variable",
            OutboundResult::ParameterTooLong => "parameter_too_long",
            OutboundResult::InvalidMachineDetection => "invalid_machine_detection",
            OutboundResult::CarrierError => "carrier_error",
            OutboundResult::CarrierUnreachable => "carrier_unreachable",
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
            | OutboundResult::InvalidCarrier
            | OutboundResult::InvalidAgentId
            | OutboundResult::InvalidDynamicVariable
            | OutboundResult::ParameterTooLong
            | OutboundResult::InvalidMachineDetection => StatusCode::BAD_REQUEST,
            OutboundResult::CarrierError | OutboundResult::CarrierUnreachable => {
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
    /// The carrier's HTTP status and error code (`carrier_error`).
    carrier_status: Option<u16>,
    carrier_code: Option<i64>,
}

impl ApiError {
    fn new(result: OutboundResult, message: impl Into<String>) -> Self {
        Self {
            result,
            message: message.into(),
            retry_after_secs: None,
            carrier_status: None,
            carrier_code: None,
        }
    }

    fn response(&self) -> Resp {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.result.as_str().into());
        body.insert("message".into(), self.message.as_str().into());
        if let Some(s) = self.carrier_status {
            body.insert("status".into(), s.into());
        }
        if let Some(c) = self.carrier_code {
            body.insert("carrier_code".into(), c.into());
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

/// The outbound-call API of one relay: configured when `RELAY_API_TOKEN`, `--public-host`
/// and the stream-token secret are set; each carrier then places calls when its REST API is
/// configured too. Built once by [`Outbound::new`]; the routes call its methods.
pub struct Outbound {
    api_token: Option<BearerToken>,
    public_host: Option<String>,
    tokens: Option<Arc<StreamTokens>>,
    limiter: KeyedLimiter,
    default_carrier: CarrierKind,
    results: LabeledCounters,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("configured", &self.api_token.is_some())
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
    carrier: Option<String>,
    /// Record this call (with `--record on-demand`; `all` records every call anyway).
    record: Option<bool>,
    /// Answering-machine detection: `Enable` or `DetectMessageEnd` (synchronous: the
    /// carrier fetches the markup once it has decided).
    machine_detection: Option<String>,
    /// Seconds the detection may take (Twilio: 3 to 59).
    machine_detection_timeout: Option<u32>,
    /// What the agent says when the call reached voicemail (its `first_message` then).
    voicemail_message: Option<String>,
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

/// A validated outbound request.
struct ValidCall {
    to: String,
    from: String,
    carrier: CarrierKind,
    agent: Option<String>,
    /// Stream parameters before the token pair.
    params: Vec<(String, String)>,
    /// `MachineDetection` mode and timeout (s).
    machine_detection: Option<(&'static str, Option<u32>)>,
}

impl Outbound {
    /// Builds the API from its settings; counters of every result created at 0.
    pub fn new(
        api_token: Option<BearerToken>,
        public_host: Option<String>,
        tokens: Option<Arc<StreamTokens>>,
        per_minute: u32,
        default_carrier: CarrierKind,
        metrics: &Metrics,
    ) -> Outbound {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Outbound {
            api_token,
            public_host: public_host.map(|h| h.trim().trim_end_matches('/').to_owned()),
            tokens,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            default_carrier,
            results: metrics.counters(
                families::OUTBOUND_CALLS,
                "result",
                OutboundResult::ALL.iter().map(|r| r.as_str()),
            ),
        }
    }

    /// `POST /outbound-call`: authenticates, rate-limits, validates, places the call with
    /// the carrier and answers `200 {"call_sid": "…"}` (`null` when the carrier's answer
    /// names none) or a JSON error.
    pub async fn outbound_call(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        state: &State,
    ) -> Resp {
        let result = self.place(req, peer, state).await;
        let label = match &result {
            Ok(_) => OutboundResult::Placed,
            Err(e) => e.result,
        };
        self.results.add(label as usize, 1);
        match result {
            Ok((call_sid, _)) => {
                json_response(StatusCode::OK, &serde_json::json!({ "call_sid": call_sid }))
            }
            Err(e) => {
                debug!(%peer, result = e.result.as_str(), "outbound call refused");
                e.response()
            }
        }
    }

    /// The markup fetch of an outbound call (`POST {carrier}/…/outbound?…&exp=…&sig=…`). Both
    /// signatures must hold (the carrier's over the request, ours over the query, unexpired);
    /// the answer is `<Connect><Stream>` with the query's parameters and the `relay_token` of
    /// the form's `CallSid`. Refusals: 404 outside the authenticated mode, 403 for a bad
    /// signature or an expired URL, 400 without a `CallSid`, each counted in
    /// `relay_errors_total{leg=<carrier>,kind}`.
    pub async fn markup(
        &self,
        req: Request<Incoming>,
        carrier: CarrierKind,
        state: &State,
    ) -> Resp {
        let (Some(tokens), Some(host), true) = (
            &self.tokens,
            &self.public_host,
            state.ctx.carriers.status(carrier).authenticated,
        ) else {
            return super::text(StatusCode::NOT_FOUND, "not found\n");
        };
        let form = match read_signed_form(
            req,
            carrier,
            &state.ctx.carriers,
            MAX_FETCH_BODY_BYTES,
            state.http.limits.body_read_timeout,
            &state.ctx.metrics,
        )
        .await
        {
            Ok(f) => f,
            Err(resp) => return resp,
        };
        let signed = match tokens.verify_query(&form.query, unix_now()) {
            Ok(s) => s,
            Err(e) => {
                state.ctx.metrics.caller_error(carrier.index(), e.kind());
                warn!(reason = %e, "refused an outbound call's markup fetch");
                return error_json(StatusCode::FORBIDDEN, "invalid_url", &e.to_string());
            }
        };
        let Some(call_sid) = form
            .get("CallSid")
            .filter(|s| crate::carrier::is_plain_id(s) || crate::carrier::telnyx::is_call_id(s))
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
        if let Some(answered) = form.get("AnsweredBy") {
            // Synchronous detection: the verdict comes with this fetch, so the stream (on
            // whichever instance) carries it as a parameter.
            let verdict = crate::obs::labels::bounded(
                crate::obs::labels::AnsweredBy::ALL,
                crate::obs::labels::AnsweredBy::as_str,
                answered,
                crate::obs::labels::AnsweredBy::Other,
            );
            state.ctx.metrics.amd(verdict);
            use crate::obs::labels::AnsweredBy as A;
            let hang_up = verdict == A::Fax
                || (verdict == A::MachineStart && state.control.amd_hangup_on_machine_start);
            if hang_up {
                info!(
                    call_sid,
                    answered_by = verdict.as_str(),
                    "outbound call answered by a machine: hanging up"
                );
                return xml_response(crate::carrier::dial::hangup());
            }
            params.push(("relay_answered_by".into(), verdict.as_str().to_owned()));
        }
        let token = tokens.token_for_call(call_sid);
        params.push(("relay_token".into(), token.clone()));
        let refs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match carrier.control().connect_markup(StreamMarkup {
            host,
            params: &refs,
            token: Some(&token),
        }) {
            Ok(xml) => {
                info!(
                    call_sid,
                    carrier = carrier.as_str(),
                    "answered an outbound call's markup fetch"
                );
                xml_response(xml)
            }
            Err(e) => error_json(
                StatusCode::BAD_REQUEST,
                "parameter_too_long",
                &e.to_string(),
            ),
        }
    }

    /// Periodic housekeeping: drops rate-limiter state of clients that are idle again (their
    /// state equals a fresh one) and releases the memory. Cheap; call every few seconds.
    pub fn upkeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    async fn place(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        state: &State,
    ) -> Result<(Option<String>, CarrierKind), ApiError> {
        let (Some(api_token), Some(host), Some(_)) =
            (&self.api_token, &self.public_host, &self.tokens)
        else {
            return Err(ApiError::new(
                OutboundResult::NotConfigured,
                "outbound calls are not configured on this relay",
            ));
        };
        if !api_token.matches(&req) {
            return Err(ApiError::new(
                OutboundResult::Unauthorized,
                "missing or invalid bearer token",
            ));
        }
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
        let body = match read_body(
            req.into_body(),
            MAX_OUTBOUND_BODY_BYTES,
            state.http.limits.body_read_timeout,
        )
        .await
        {
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
        let call = self.validate(request, state)?;
        let url = self.markup_url(host, call.carrier, &call.params)?;
        let routes = call.carrier.routes();
        let status_callback = self.status_callback_url(host, routes, &call)?;
        let sid = call
            .carrier
            .control()
            .create_call(
                &state.ctx.http,
                &state.ctx.carriers,
                NewCall {
                    to: &call.to,
                    from: &call.from,
                    markup_url: &url,
                    status_callback: &status_callback,
                    machine_detection: call.machine_detection,
                },
            )
            .await
            .map_err(|e| rest_error(call.carrier, e))?;
        info!(
            call_sid = sid.as_deref().unwrap_or(""),
            carrier = call.carrier.as_str(),
            %peer,
            agent = call.agent.as_deref().unwrap_or(""),
            "placed an outbound call"
        );
        Ok((sid, call.carrier))
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

    fn validate(&self, r: OutboundRequest, state: &State) -> Result<ValidCall, ApiError> {
        let carrier = match r.carrier.as_deref() {
            None => self.default_carrier,
            Some(name) => CarrierKind::ALL
                .iter()
                .copied()
                .find(|c| c.as_str() == name)
                .ok_or_else(|| {
                    ApiError::new(
                        OutboundResult::InvalidCarrier,
                        format!("carrier must be one of {}", CarrierKind::NAMES.join(", ")),
                    )
                })?,
        };
        let status = state.ctx.carriers.status(carrier);
        if !(status.rest && status.authenticated) {
            return Err(ApiError::new(
                OutboundResult::NotConfigured,
                format!(
                    "outbound calls through {} are not configured on this relay",
                    carrier.as_str()
                ),
            ));
        }
        let to = r.to.unwrap_or_default();
        if !is_e164(&to) {
            return Err(ApiError::new(
                OutboundResult::InvalidTo,
                "to must be an E.164 number (+ then 2 to 15 digits, no leading 0)",
            ));
        }
        let default_from = match carrier {
            CarrierKind::Twilio => state.ctx.carriers.twilio.phone_number.clone(),
            CarrierKind::Telnyx => state.ctx.carriers.telnyx.phone_number.clone(),
        };
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
            None => match default_from {
                Some(f) if is_e164(&f) => f,
                Some(_) => {
                    return Err(ApiError::new(
                        OutboundResult::InvalidFrom,
                        "the configured caller ID is not an E.164 number",
                    ))
                }
                None => {
                    return Err(ApiError::new(
                        OutboundResult::MissingFrom,
                        "from is required (no caller ID is configured for this carrier)",
                    ))
                }
            },
        };
        if let Some(a) = &r.agent {
            let agents = &state.ctx.settings.agents;
            if !AgentKind::from_name(a).is_some_and(|k| agents.is_configured(k)) {
                return Err(ApiError::new(
                    OutboundResult::InvalidAgent,
                    format!(
                        "agent must be one of the agents configured on this relay: {}",
                        AgentKind::ALL
                            .iter()
                            .filter(|k| agents.is_configured(**k))
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
        for (name, value) in &state.control.agent_params {
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
            if !is_variable_name(&name) {
                return Err(ApiError::new(
                    OutboundResult::InvalidDynamicVariable,
                    format!(
                        "dynamic variable name {:?} is reserved or invalid (names starting with relay_, agent, and {} are reserved)",
                        clip(&name),
                        crate::agent::SETTING_PARAMETERS.join(", ")
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
        let machine_detection = match r.machine_detection.as_deref() {
            None => None,
            Some(m) => {
                let mode = match m {
                    "Enable" => "Enable",
                    "DetectMessageEnd" => "DetectMessageEnd",
                    _ => {
                        return Err(ApiError::new(
                            OutboundResult::InvalidMachineDetection,
                            "machine_detection must be \"Enable\" or \"DetectMessageEnd\"",
                        ))
                    }
                };
                if r.machine_detection_timeout
                    .is_some_and(|t| !(3..=59).contains(&t))
                {
                    return Err(ApiError::new(
                        OutboundResult::InvalidMachineDetection,
                        "machine_detection_timeout must be 3 to 59 seconds",
                    ));
                }
                Some((mode, r.machine_detection_timeout))
            }
        };
        if let Some(m) = r.voicemail_message.filter(|m| !m.trim().is_empty()) {
            params.push(("relay_voicemail_message".into(), m));
        }
        if r.record == Some(true) {
            params.push((crate::call::recording::RECORD_PARAMETER.into(), "1".into()));
        }
        for (name, value) in &params {
            if !parameter_fits(name, value) {
                return Err(parameter_too_long(name));
            }
        }
        Ok(ValidCall {
            to,
            from,
            carrier,
            agent: r.agent,
            params,
            machine_detection,
        })
    }

    /// The status callback URL: the carrier's call-status route with the call's `to`,
    /// `from` and `agent` in a query the relay signs ([`UrlPurpose::CallStatus`]), so that
    /// any instance can send the call's `call_initiation_failure` record.
    fn status_callback_url(
        &self,
        host: &str,
        routes: &crate::carrier::Routes,
        call: &ValidCall,
    ) -> Result<String, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Err(ApiError::new(
                OutboundResult::NotConfigured,
                "stream tokens are not configured",
            ));
        };
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("to", &call.to)
            .append_pair("from", &call.from);
        if let Some(a) = &call.agent {
            q.append_pair("agent", a);
        }
        let signed = tokens.sign_query_for(UrlPurpose::CallStatus, &q.finish(), unix_now());
        Ok(format!("https://{host}{}?{signed}", routes.call_status))
    }

    /// The signed markup URL carrying the call's parameters (see the module docs).
    fn markup_url(
        &self,
        host: &str,
        carrier: CarrierKind,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Err(ApiError::new(
                OutboundResult::NotConfigured,
                "stream tokens are not configured",
            ));
        };
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let signed = tokens.sign_query(&query, unix_now());
        let url = format!(
            "https://{host}{}?{signed}",
            carrier.routes().outbound_markup
        );
        if url.len() > MAX_MARKUP_URL_CHARS {
            return Err(ApiError::new(
                OutboundResult::ParameterTooLong,
                format!(
                    "the call's parameters make a markup URL over {MAX_MARKUP_URL_CHARS} characters"
                ),
            ));
        }
        Ok(url)
    }
}

/// A carrier's REST failure as the API's answer.
fn rest_error(carrier: CarrierKind, e: RestError) -> ApiError {
    match e {
        RestError::NotConfigured => ApiError::new(
            OutboundResult::NotConfigured,
            format!(
                "outbound calls through {} are not configured",
                carrier.as_str()
            ),
        ),
        RestError::Unreachable(detail) => {
            warn!(carrier = carrier.as_str(), error = %detail, "carrier REST API unreachable");
            ApiError::new(
                OutboundResult::CarrierUnreachable,
                "could not reach the carrier's REST API",
            )
        }
        RestError::Refused {
            status,
            code,
            message,
        } => {
            warn!(
                carrier = carrier.as_str(),
                status,
                carrier_code = code,
                "the carrier refused the outbound call"
            );
            ApiError {
                carrier_status: Some(status),
                carrier_code: code,
                ..ApiError::new(OutboundResult::CarrierError, message)
            }
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
}

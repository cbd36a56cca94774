//! Telnyx as a carrier: its media streaming WebSocket ("Stream call media over WebSocket",
//! <https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming>), TeXML
//! (`<Stream>`, <https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/stream>),
//! Ed25519-signed webhooks
//! (<https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks#webhook-signing>)
//! and the TeXML REST API (create and update calls,
//! <https://developers.telnyx.com/api-reference/texml-rest-commands/update-call>).
//!
//! The media protocol is Twilio's nearest relative, with four differences the codec owns:
//! the stream id is `stream_id` at the top level; the encoding is named `PCMU` (some doc
//! versions write `audio/x-mulaw`: both are accepted, anything else refused); outbound
//! `media`/`mark`/`clear` carry no stream id; and **frame order is not guaranteed**, so frames
//! are put back in `sequence_number` order within a window of [`REORDER_WINDOW`] frames (a
//! gap still open when the window is full is skipped and counted, as is a frame that arrives
//! after its place).
//!
//! Bidirectional audio needs `bidirectionalMode="rtp"` and `bidirectionalCodec="PCMU"` on
//! `<Stream>`; without them the stream is one-way and the caller hears nothing (the default
//! mode is MP3 at one message per second). The media WebSocket upgrade is not signed by
//! Telnyx, so the per-call stream token travels in the stream URL (`?relay_token=`) as well as
//! in a `<Parameter>`, and is checked against `start.call_control_id` (the call's TeXML
//! `CallSid`) when `start` arrives.

use super::{
    bearer_auth, is_valid_dtmf_digit, BoxFuture, CallUpdate, CallerEvent, Carrier,
    CarrierCodec, CarrierControl, CarrierKind, CarrierSettings, CarrierStatus, DecodeError,
    Decoded, Media, NewCall, ParameterTooLong, RestError, Routes, SettingsError,
    SharedSettings, SignedRequest, Start, StreamMarkup, StreamParams, USER_AGENT,
};
use crate::auth::{Secret, SignatureError};
use crate::wire::http_client::HttpClient;
use crate::wire::json::LenientU64;
use crate::wire::xml::escape_into;
use bytes::Bytes;
use ed25519_dalek::{Signature, VerifyingKey};
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use serde::Deserialize;
use std::time::Duration;

/// Media frames held back waiting for a missing `sequence_number` (4 × 20 ms of audio); with
/// more held, gaps are skipped (oldest first) until no more are held. Mark echoes and keypad
/// events numbered among them are held too but do not count (at most 4× this many messages
/// are held in all).
pub const REORDER_WINDOW: usize = 4;

/// Bytes held in the reordering window beyond which gaps are skipped at once (a frame is a
/// few hundred bytes): at most this plus one frame (itself under the caller's message size
/// limit) is ever held, and no more than this once the releases are taken.
pub const REORDER_WINDOW_BYTES: usize = 16 * 1024;

/// Largest Telnyx REST response body read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Time allowed for one Telnyx REST exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The Telnyx carrier.
#[derive(Debug, Clone, Copy)]
pub struct Telnyx;

/// Telnyx flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "telnyx_flags")]
pub struct Args {
    /// Telnyx public key for webhook signatures, as the portal shows it (base64 of the raw
    /// 32-byte Ed25519 key): when set, `telnyx-signature-ed25519` is required on every
    /// Telnyx webhook and stream tokens on every Telnyx stream.
    #[arg(long, env = "TELNYX_PUBLIC_KEY")]
    pub telnyx_public_key: Option<String>,

    /// How far a signed webhook's `telnyx-timestamp` may be from now, in seconds.
    #[arg(long, env = "TELNYX_SIGNATURE_TOLERANCE_SECS", default_value_t = 300)]
    pub telnyx_signature_tolerance_secs: u64,

    /// Serve the Telnyx routes without signature checks (anyone who finds the URL can open a
    /// media stream to your agent).
    #[arg(
        long,
        env = "RELAY_INSECURE_SKIP_TELNYX_SIGNATURE",
        default_value_t = false
    )]
    pub insecure_skip_telnyx_signature: bool,

    /// Telnyx API key (`Authorization: Bearer`), for the TeXML REST API.
    #[arg(long, env = "TELNYX_API_KEY", hide_env_values = true)]
    pub telnyx_api_key: Option<Secret>,

    /// Telnyx TeXML account SID (the `{account_sid}` of the TeXML REST paths).
    #[arg(long, env = "TELNYX_ACCOUNT_SID")]
    pub telnyx_account_sid: Option<String>,

    /// Telnyx TeXML application id (`ApplicationSid`) outbound calls are placed with.
    #[arg(long, env = "TELNYX_APPLICATION_SID")]
    pub telnyx_application_sid: Option<String>,

    /// Default caller ID (E.164) for outbound calls placed through Telnyx.
    #[arg(long, env = "TELNYX_PHONE_NUMBER")]
    pub telnyx_phone_number: Option<String>,

    /// Telnyx REST origin (tests point it at a local mock).
    #[arg(
        long,
        env = "TELNYX_API_BASE",
        default_value = "https://api.telnyx.com"
    )]
    pub telnyx_api_base: String,
}

impl Default for Args {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// Telnyx TeXML REST access.
#[derive(Debug, Clone)]
pub struct Rest {
    /// `{TELNYX_API_BASE}/v2/texml/Accounts/{account_sid}`.
    pub account_url: String,
    /// `Bearer …`, sensitive.
    pub auth: HeaderValue,
    /// `ApplicationSid` for outbound calls.
    pub application_sid: Option<String>,
}

/// Validated Telnyx settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The webhook signing key, when configured.
    pub public_key: Option<VerifyingKey>,
    /// Signature timestamp tolerance.
    pub tolerance: Duration,
    /// REST access, when the API key and account are set.
    pub rest: Option<Rest>,
    /// `TELNYX_API_KEY` (a fallback secret for stream tokens).
    pub api_key: Option<Secret>,
    /// `TELNYX_PHONE_NUMBER`.
    pub phone_number: Option<String>,
    /// Whether the routes are served: with a public key, with the insecure flag, or in demo
    /// mode (built-in agents only).
    pub served: bool,
    /// `--insecure-skip-telnyx-signature`.
    pub insecure: bool,
}

/// Parses a public key as the Telnyx portal shows it: base64 of the raw 32 bytes.
///
/// # Errors
/// A message when it is not 32 bytes of base64 or not a valid curve point.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let raw = base64_simd::STANDARD
        .decode_to_vec(b64.trim().as_bytes())
        .map_err(|_| "TELNYX_PUBLIC_KEY is not base64".to_owned())?;
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| "TELNYX_PUBLIC_KEY must be the base64 of 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "TELNYX_PUBLIC_KEY is not an Ed25519 key".into())
}

/// Checks a Telnyx webhook signature: `telnyx-signature-ed25519` (base64 of 64 bytes) over
/// `"{telnyx-timestamp}|{raw body}"`, the timestamp within `tolerance` of `now_unix` either
/// way (the Telnyx SDKs use 300 s).
///
/// # Errors
/// [`SignatureError::Missing`], [`SignatureError::Malformed`], [`SignatureError::Stale`],
/// [`SignatureError::Mismatch`].
pub fn verify_signature(
    key: &VerifyingKey,
    signature_b64: &str,
    timestamp: &str,
    body: &[u8],
    now_unix: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let (sig, ts) = (signature_b64.trim(), timestamp.trim());
    if sig.is_empty() || ts.is_empty() {
        return Err(SignatureError::Missing);
    }
    let raw = base64_simd::STANDARD
        .decode_to_vec(sig.as_bytes())
        .map_err(|_| SignatureError::Malformed)?;
    let sig = Signature::from_slice(&raw).map_err(|_| SignatureError::Malformed)?;
    let at: u64 = ts.parse().map_err(|_| SignatureError::Malformed)?;
    if now_unix.abs_diff(at) > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    let mut msg = Vec::with_capacity(ts.len() + 1 + body.len());
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'|');
    msg.extend_from_slice(body);
    key.verify_strict(&msg, &sig)
        .map_err(|_| SignatureError::Mismatch)
}

impl Carrier for Telnyx {
    type Args = Args;
    type Settings = Settings;
    type Session = Session;
    const ROUTES: Routes = Routes {
        media: "/telnyx/media",
        inbound: "/telnyx/texml",
        outbound_markup: "/telnyx/texml/outbound",
        call_status: "/telnyx/call-status",
        stream_status: "/telnyx/stream-status",
        dial_result: "/telnyx/texml/dial-result",
        whisper: "/telnyx/texml/whisper",
    };

    fn settings(a: &Args, shared: &SharedSettings) -> Result<Settings, SettingsError> {
        let public_key = match a.telnyx_public_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(k) => Some(parse_public_key(k).map_err(SettingsError)?),
        };
        if public_key.is_some() && shared.public_host.is_none() {
            return Err(SettingsError(
                "TELNYX_PUBLIC_KEY needs --public-host (the TeXML stream URL is built from it)"
                    .into(),
            ));
        }
        if a.telnyx_signature_tolerance_secs == 0 || a.telnyx_signature_tolerance_secs > 3600 {
            return Err(SettingsError(
                "--telnyx-signature-tolerance-secs must be 1..=3600".into(),
            ));
        }
        let api_key = a
            .telnyx_api_key
            .clone()
            .filter(|k| !k.expose().trim().is_empty());
        let base = a.telnyx_api_base.trim_end_matches('/');
        let rest = match (
            &api_key,
            a.telnyx_account_sid.as_deref().filter(|s| !s.is_empty()),
        ) {
            (Some(key), Some(account)) => {
                if !super::is_plain_id(account) {
                    return Err(SettingsError(
                        "TELNYX_ACCOUNT_SID must be letters, digits and -".into(),
                    ));
                }
                let uri: hyper::Uri = base
                    .parse()
                    .map_err(|e| SettingsError(format!("TELNYX_API_BASE is not a URL: {e}")))?;
                if crate::wire::net::scheme_is_tls(&uri).is_err() || uri.host().is_none() {
                    return Err(SettingsError(
                        "TELNYX_API_BASE must be an http(s) origin".into(),
                    ));
                }
                Some(Rest {
                    account_url: format!("{base}/v2/texml/Accounts/{account}"),
                    auth: bearer_auth(key)
                        .ok_or_else(|| SettingsError("TELNYX_API_KEY is not header-safe".into()))?,
                    application_sid: a
                        .telnyx_application_sid
                        .clone()
                        .filter(|s| !s.trim().is_empty()),
                })
            }
            _ => None,
        };
        Ok(Settings {
            served: public_key.is_some() || a.insecure_skip_telnyx_signature || shared.demo_mode,
            insecure: a.insecure_skip_telnyx_signature,
            public_key,
            tolerance: Duration::from_secs(a.telnyx_signature_tolerance_secs),
            rest,
            api_key,
            phone_number: a
                .telnyx_phone_number
                .clone()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty()),
        })
    }

    fn status(s: &Settings) -> CarrierStatus {
        CarrierStatus {
            served: s.served,
            authenticated: s.public_key.is_some(),
            rest: s.rest.is_some(),
            insecure: s.insecure,
        }
    }
}

impl CarrierControl for Telnyx {
    /// TeXML `<Dial timeout>` is 5–120 s.
    fn max_dial_timeout_secs(&self) -> u32 {
        120
    }

    fn kind(&self) -> CarrierKind {
        CarrierKind::Telnyx
    }

    fn verify_webhook(
        &self,
        settings: &CarrierSettings,
        req: SignedRequest<'_>,
    ) -> Result<(), SignatureError> {
        let s = &settings.telnyx;
        let Some(key) = &s.public_key else {
            return Ok(());
        };
        let h = |n: &str| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        verify_signature(
            key,
            h("telnyx-signature-ed25519"),
            h("telnyx-timestamp"),
            req.body,
            req.now_unix,
            s.tolerance,
        )
    }

    fn verify_upgrade(
        &self,
        _settings: &CarrierSettings,
        path_and_query: &str,
        _headers: &HeaderMap,
    ) -> Result<Option<String>, SignatureError> {
        // Telnyx does not sign the upgrade: the token in the URL is checked at `start`.
        let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
        Ok(form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "relay_token")
            .map(|(_, v)| v.into_owned()))
    }

    fn connect_markup(&self, m: StreamMarkup<'_>) -> Result<String, ParameterTooLong> {
        let mut out = String::with_capacity(320);
        out.push_str(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://",
        );
        escape_into(&mut out, m.host);
        escape_into(&mut out, Self::ROUTES.media);
        if let Some(t) = m.token {
            out.push_str("?relay_token=");
            let q: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
            escape_into(&mut out, &q);
        }
        out.push_str(
            "\" bidirectionalMode=\"rtp\" bidirectionalCodec=\"PCMU\" bidirectionalSamplingRate=\"8000\" statusCallback=\"https://",
        );
        escape_into(&mut out, m.host);
        escape_into(&mut out, Self::ROUTES.stream_status);
        out.push_str("\" statusCallbackMethod=\"POST\">");
        super::twilio::markup::push_parameters(&mut out, m.params)?;
        out.push_str("</Stream></Connect><Hangup/></Response>");
        Ok(out)
    }

    fn create_call<'a>(
        &'a self,
        http: &'a HttpClient,
        settings: &'a CarrierSettings,
        call: NewCall<'a>,
    ) -> BoxFuture<'a, Result<Option<String>, RestError>> {
        Box::pin(async move {
            let rest = settings
                .telnyx
                .rest
                .as_ref()
                .ok_or(RestError::NotConfigured)?;
            let app = rest.application_sid.as_deref().ok_or(RestError::NotConfigured)?;
            let body = create_call_body(app, &call);
            let answer = send(
                http,
                rest,
                &format!("{}/Calls", rest.account_url),
                "application/json",
                body,
            )
            .await?;
            Ok(call_id_of(&answer))
        })
    }

    fn update_call<'a>(
        &'a self,
        http: &'a HttpClient,
        settings: &'a CarrierSettings,
        call_sid: &'a str,
        update: CallUpdate,
    ) -> BoxFuture<'a, Result<(), RestError>> {
        Box::pin(async move {
            let rest = settings
                .telnyx
                .rest
                .as_ref()
                .ok_or(RestError::NotConfigured)?;
            if !is_call_id(call_sid) {
                return Err(RestError::Refused {
                    status: 400,
                    code: None,
                    message: "not a Telnyx call id".into(),
                });
            }
            let body = update_form(&update);
            let id: String = form_urlencoded::byte_serialize(call_sid.as_bytes()).collect();
            let url = format!("{}/Calls/{id}", rest.account_url);
            send(http, rest, &url, "application/x-www-form-urlencoded", body)
                .await
                .map(|_| ())
        })
    }
}

/// The TeXML create-call JSON body (keys in CamelCase, as the TeXML API wants them).
pub fn create_call_body(application_sid: &str, call: &NewCall<'_>) -> String {
    let mut v = serde_json::json!({
        "ApplicationSid": application_sid,
        "To": call.to,
        "From": call.from,
        "Url": call.markup_url,
        "UrlMethod": "POST",
        "StatusCallback": call.status_callback,
        "StatusCallbackMethod": "POST",
        "StatusCallbackEvent": "initiated ringing answered completed",
    });
    if let Some((mode, timeout)) = call.machine_detection {
        v["MachineDetection"] = mode.into();
        if let Some(t) = timeout {
            // TeXML's timeout is in milliseconds.
            v["MachineDetectionTimeout"] = (u64::from(t) * 1000).into();
        }
    }
    v.to_string()
}

/// The call-update form: `Texml=<markup>` (redirect) or `Status=completed` (hang up). Kept
/// out of the async fn: the serializer is not `Send`.
pub fn update_form(update: &CallUpdate) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match update {
        CallUpdate::Markup(markup) => form.append_pair("Texml", markup),
        CallUpdate::Hangup => form.append_pair("Status", "completed"),
    };
    form.finish()
}

/// The call id in a create-call answer: `sid`, `call_sid`, or `data.call_control_id`
/// (the documented answer shape does not settle which).
fn call_id_of(v: &serde_json::Value) -> Option<String> {
    [
        v.get("sid"),
        v.get("call_sid"),
        v.pointer("/data/call_control_id"),
        v.pointer("/data/sid"),
    ]
    .into_iter()
    .flatten()
    .filter_map(|x| x.as_str())
    .find(|s| is_call_id(s))
    .map(str::to_owned)
}

async fn send(
    http: &HttpClient,
    rest: &Rest,
    url: &str,
    content_type: &'static str,
    body: String,
) -> Result<serde_json::Value, RestError> {
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = url
        .parse()
        .map_err(|e| RestError::Unreachable(format!("bad URL: {e}")))?;
    let h = req.headers_mut();
    h.insert(header::AUTHORIZATION, rest.auth.clone());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let (status, body) = http
        .request(req, MAX_RESPONSE_BYTES, REQUEST_TIMEOUT)
        .await
        .map_err(|e| RestError::Unreachable(format!("{} ({e})", e.kind())))?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() {
        return Ok(answer);
    }
    // Telnyx errors: {"errors":[{"code":"…","title":"…","detail":"…"}]}.
    let first = answer.pointer("/errors/0");
    Err(RestError::Refused {
        status: status.as_u16(),
        code: first
            .and_then(|e| e.get("code"))
            .and_then(|c| c.as_str().and_then(|s| s.parse().ok()).or(c.as_i64())),
        message: first
            .and_then(|e| e.get("detail").or(e.get("title")))
            .and_then(|d| d.as_str())
            .map_or_else(|| format!("Telnyx answered HTTP {}", status.as_u16()), str::to_owned),
    })
}

/// A Telnyx call id the relay accepts: 1 to 128 ASCII letters, digits, `-`, `_`, `:`, `.`
/// (`v3:…` call control ids are longer than Twilio SIDs).
pub fn is_call_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
}

/// Whether a Telnyx media format is G.711 μ-law 8000 Hz mono: `PCMU` (or `audio/x-mulaw`,
/// as some versions of the docs write it), 8000 Hz, one channel; absent fields accepted.
pub fn is_mulaw_8k_mono(encoding: Option<&str>, rate: Option<u64>, channels: Option<u64>) -> bool {
    encoding.is_none_or(|e| e.eq_ignore_ascii_case("PCMU") || e.eq_ignore_ascii_case("audio/x-mulaw"))
        && rate.is_none_or(|r| r == 8000)
        && channels.is_none_or(|c| c == 1)
}

// === the media codec ===

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    event: Option<&'a str>,
    #[serde(borrow, default)]
    stream_id: Option<&'a str>,
    #[serde(borrow, default)]
    version: Option<&'a str>,
    #[serde(borrow, default)]
    protocol: Option<&'a str>,
    #[serde(borrow, default)]
    start: Option<WireStart<'a>>,
    #[serde(borrow, default)]
    media: Option<WireMedia<'a>>,
    #[serde(borrow, default)]
    dtmf: Option<WireName<'a>>,
    #[serde(borrow, default)]
    mark: Option<WireName<'a>>,
    #[serde(borrow, default)]
    payload: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireStart<'a> {
    #[serde(borrow, default)]
    call_control_id: Option<&'a str>,
    #[serde(borrow, default)]
    custom_parameters: StreamParams<'a>,
    #[serde(borrow, default)]
    media_format: Option<WireFormat<'a>>,
}

#[derive(Deserialize)]
struct WireFormat<'a> {
    #[serde(borrow, default)]
    encoding: Option<&'a str>,
    #[serde(default)]
    sample_rate: LenientU64,
    #[serde(default)]
    channels: LenientU64,
}

#[derive(Deserialize)]
struct WireMedia<'a> {
    #[serde(borrow, default)]
    track: Option<&'a str>,
    #[serde(default)]
    chunk: LenientU64,
    #[serde(default)]
    timestamp: LenientU64,
    #[serde(borrow, default)]
    payload: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireName<'a> {
    #[serde(borrow, default)]
    digit: Option<&'a str>,
    #[serde(borrow, default)]
    name: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(default)]
    code: LenientU64,
    #[serde(borrow, default)]
    title: Option<&'a str>,
    #[serde(borrow, default)]
    detail: Option<&'a str>,
}

/// Decodes one Telnyx frame in place, ignoring order.
///
/// # Errors
/// [`DecodeError`] for invalid JSON, a missing `event`, or a known event without the fields
/// the relay needs; unknown events are [`CallerEvent::Other`].
pub fn decode<'a>(
    frame: &'a mut [u8],
    scratch: &mut simd_json::Buffers,
) -> Result<CallerEvent<'a>, DecodeError> {
    let w: Wire<'a> = simd_json::serde::from_slice_with_buffers(frame, scratch)
        .map_err(DecodeError::MalformedJson)?;
    let event = w.event.ok_or(DecodeError::MissingEvent)?;
    let missing = |event: &'static str, field: &'static str| DecodeError::MissingField { event, field };
    Ok(match event {
        "media" => {
            let m = w.media.ok_or(missing("media", "media"))?;
            CallerEvent::Media(Media {
                track: m.track,
                chunk: m.chunk.0,
                timestamp_ms: m.timestamp.0,
                payload: m.payload.ok_or(missing("media", "media.payload"))?,
            })
        }
        "start" => {
            let s = w.start.ok_or(missing("start", "start"))?;
            let stream_sid = w.stream_id.ok_or(missing("start", "stream_id"))?;
            if !super::is_plain_id(stream_sid) {
                return Err(DecodeError::InvalidStreamSid);
            }
            let call_sid = s.call_control_id.unwrap_or("");
            if !call_sid.is_empty() && !is_call_id(call_sid) {
                return Err(DecodeError::InvalidCallSid);
            }
            let (encoding, sample_rate, channels) = match s.media_format {
                Some(f) => (f.encoding, f.sample_rate.0, f.channels.0),
                None => (None, None, None),
            };
            CallerEvent::Start(Start {
                stream_sid,
                call_sid,
                account_sid: "",
                custom_parameters: s.custom_parameters.0,
                encoding,
                sample_rate,
                channels,
                mulaw_8k_mono: is_mulaw_8k_mono(encoding, sample_rate, channels),
            })
        }
        "mark" => CallerEvent::Mark {
            name: w.mark.and_then(|m| m.name).ok_or(missing("mark", "mark.name"))?,
        },
        "dtmf" => {
            let digit = w.dtmf.and_then(|d| d.digit).ok_or(missing("dtmf", "dtmf.digit"))?;
            if !is_valid_dtmf_digit(digit) {
                return Err(DecodeError::InvalidDtmf);
            }
            CallerEvent::Dtmf { digit }
        }
        "stop" => CallerEvent::Stop,
        "connected" => CallerEvent::Connected {
            protocol: w.protocol,
            version: w.version,
        },
        "error" => {
            let p = w.payload;
            CallerEvent::Error {
                code: p.as_ref().and_then(|p| p.code.0),
                title: p.as_ref().and_then(|p| p.title),
                detail: p.as_ref().and_then(|p| p.detail),
            }
        }
        other => CallerEvent::Other { event: other },
    })
}

/// The `sequence_number` of a raw frame, found without parsing it (the frame is parsed in
/// place, which rewrites it, so a frame that must wait cannot be parsed first): the digits
/// after `"sequence_number":` with or without quotes. `None` when absent.
pub fn peek_sequence_number(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence_number\"";
    let at = memchr::memmem::find(frame, KEY)? + KEY.len();
    let mut rest = frame.get(at..)?;
    let skip_ws = |r: &mut &[u8]| {
        while let [b' ' | b'\t' | b'\n' | b'\r', tail @ ..] = *r {
            *r = tail;
        }
    };
    skip_ws(&mut rest);
    rest = rest.strip_prefix(b":")?;
    skip_ws(&mut rest);
    if let Some(r) = rest.strip_prefix(b"\"") {
        rest = r;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Whether the reordering window counts `frame` as audio: it has a `"payload"` key, as only
/// `media` messages do (a cheap scan, no parse: another message that mentions `"payload"` in
/// a string counts too, which only makes the window smaller for it).
pub fn is_media(frame: &[u8]) -> bool {
    memchr::memmem::find(frame, b"\"payload\"").is_some()
}

/// One Telnyx stream's codec state: the reordering window.
#[derive(Debug, Default)]
pub struct Session {
    /// The next `sequence_number` to deliver (set by the first numbered frame).
    expected: Option<u64>,
    /// Frames that arrived ahead of order, sorted by sequence number.
    held: Vec<(u64, Vec<u8>)>,
    held_bytes: usize,
    /// How many of the held frames are media (the window counts audio, not the mark echoes
    /// and keypad events numbered between them).
    held_media: usize,
    /// Frames given up on since last asked: skipped gaps and late arrivals.
    out_of_order: u64,
    /// The stream is ending: held frames are released across gaps.
    draining: bool,
}

impl Session {
    fn hold(&mut self, seq: u64, frame: &[u8]) {
        let at = self.held.partition_point(|(s, _)| *s < seq);
        if self.held.get(at).is_some_and(|(s, _)| *s == seq) {
            self.out_of_order += 1; // a duplicate of a held frame
            return;
        }
        self.held_bytes += frame.len();
        self.held_media += usize::from(is_media(frame));
        self.held.insert(at, (seq, frame.to_vec()));
    }

    /// More is held than the window allows: the gap before the oldest held frame is not
    /// coming back in time, and releases go on across gaps until the window fits again.
    fn overflowing(&self) -> bool {
        self.held_media > REORDER_WINDOW
            || self.held.len() > 4 * REORDER_WINDOW
            || self.held_bytes > REORDER_WINDOW_BYTES
    }
}

impl CarrierCodec for Session {
    fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<Decoded<'a>, DecodeError> {
        if let Some(seq) = peek_sequence_number(frame) {
            let expected = *self.expected.get_or_insert(seq);
            if seq < expected {
                self.out_of_order += 1;
                return Ok(Decoded::Late);
            }
            if seq > expected {
                self.hold(seq, frame);
                return Ok(Decoded::Held);
            }
            if self.held.first().is_some_and(|(s, _)| *s == seq) {
                // The held frame `seq` is next (its release not yet taken): this is its
                // duplicate, and the held copy goes out on release.
                self.out_of_order += 1;
                return Ok(Decoded::Late);
            }
            self.expected = Some(seq + 1);
        }
        decode(frame, scratch).map(Decoded::Event)
    }

    fn take_released(&mut self, buf: &mut Vec<u8>) -> bool {
        let Some(&(first, _)) = self.held.first() else {
            return false;
        };
        let expected = self.expected.unwrap_or(first);
        if first != expected {
            if !self.draining && !self.overflowing() {
                return false;
            }
            self.out_of_order += first.saturating_sub(expected);
        }
        let (_, frame) = self.held.remove(0);
        self.held_bytes -= frame.len();
        self.held_media -= usize::from(is_media(&frame));
        self.expected = Some(first + 1);
        *buf = frame;
        true
    }

    fn decode_released<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<CallerEvent<'a>, DecodeError> {
        decode(frame, scratch)
    }

    fn release_all(&mut self) {
        // The stream is ending: gaps are no longer waited for.
        self.draining = true;
    }

    fn take_out_of_order(&mut self) -> u64 {
        std::mem::take(&mut self.out_of_order)
    }

    #[inline]
    fn encode_media(&self, _stream: &str, audio: &[u8], out: &mut Vec<u8>) {
        crate::wire::b64::message(b"{\"event\":\"media\",\"media\":{\"payload\":\"", audio, b"\"}}", out);
    }

    fn encode_mark(&self, _stream: &str, name: &str, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"{\"event\":\"mark\",\"mark\":{\"name\":");
        crate::wire::json::write_str(out, name);
        out.extend_from_slice(b"}}");
    }

    fn encode_clear(&self, _stream: &str, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"{\"event\":\"clear\"}");
    }
}

#[cfg(test)]
mod tests;

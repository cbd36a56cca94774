//! Twilio Programmable Voice as a carrier: the Media Streams codec ([`codec`]), request
//! signatures ([`signature`]), TwiML ([`markup`]), and the REST calls (Calls resource,
//! <https://www.twilio.com/docs/voice/api/call-resource>): create an outbound call, update a
//! live one (redirect to new TwiML, or hang up).
//!
//! REST credentials: the account SID with the auth token, or an API key
//! (`TWILIO_API_KEY_SID` `SK…` and `TWILIO_API_KEY_SECRET`, what Twilio recommends for
//! production, <https://www.twilio.com/docs/iam/api-keys>); the account SID stays in the path
//! either way.

pub mod codec;
pub mod markup;
pub mod signature;

use super::{
    basic_auth, BoxFuture, CallUpdate, Carrier, CarrierControl, CarrierKind, CarrierSettings,
    CarrierStatus, NewCall, ParameterTooLong, RestError, Routes, SettingsError, SharedSettings,
    SignedRequest, StreamMarkup, USER_AGENT,
};
use crate::auth::{Secret, SignatureError};
use crate::wire::http_client::HttpClient;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use signature::SignatureValidator;
use std::time::Duration;

/// Largest Twilio REST response body read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Time allowed for one whole Twilio REST exchange (connect, TLS, request, response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The call progress events requested from Twilio (`StatusCallbackEvent`).
pub const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// The Twilio carrier.
#[derive(Debug, Clone, Copy)]
pub struct Twilio;

/// Twilio flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "twilio_flags")]
pub struct Args {
    /// Twilio account auth token: when set, `X-Twilio-Signature` is required and checked on
    /// `/twiml` and on the `/media` upgrade against `--public-host` (Twilio webhook security,
    /// <https://www.twilio.com/docs/usage/security>).
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<Secret>,

    /// Run a vendor agent without Twilio signature checks (anyone who finds the URL can open a
    /// media stream to your agent). Without a token the built-in agents run regardless.
    #[arg(
        long,
        env = "RELAY_INSECURE_SKIP_TWILIO_SIGNATURE",
        default_value_t = false
    )]
    pub insecure_skip_twilio_signature: bool,

    /// Twilio account SID (`AC…`), for the REST API (outbound calls, transfers).
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio API key SID (`SK…`): REST calls authenticate with it and its secret instead of
    /// the auth token.
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub twilio_api_key_sid: Option<String>,

    /// Twilio API key secret (with `TWILIO_API_KEY_SID`).
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub twilio_api_key_secret: Option<Secret>,

    /// Default caller ID (E.164) for outbound calls placed through Twilio.
    #[arg(long, env = "TWILIO_PHONE_NUMBER")]
    pub twilio_phone_number: Option<String>,

    /// Twilio REST origin (tests point it at a local mock).
    #[arg(
        long,
        env = "TWILIO_API_BASE",
        default_value = "https://api.twilio.com"
    )]
    pub twilio_api_base: String,
}

impl Default for Args {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// Twilio REST access.
#[derive(Debug, Clone)]
pub struct Rest {
    /// `{TWILIO_API_BASE}/2010-04-01/Accounts/{AccountSid}`.
    pub account_url: String,
    /// `Basic …` (account SID + auth token, or API key + secret), sensitive.
    pub auth: HeaderValue,
}

/// Validated Twilio settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Signature checks, when the auth token is set.
    pub signatures: Option<SignatureValidator>,
    /// The auth token (a fallback secret for stream tokens).
    pub auth_token: Option<Secret>,
    /// `--insecure-skip-twilio-signature`.
    pub insecure: bool,
    /// REST access, when the account SID and credentials are set.
    pub rest: Option<Rest>,
    /// `TWILIO_PHONE_NUMBER`.
    pub phone_number: Option<String>,
    /// Whether the routes are served.
    pub served: bool,
}

fn nonempty(s: &Option<Secret>) -> Option<Secret> {
    s.clone().filter(|k| !k.expose().trim().is_empty())
}

impl Carrier for Twilio {
    type Args = Args;
    type Settings = Settings;
    type Session = codec::Session;
    const ROUTES: Routes = Routes {
        media: "/media",
        inbound: "/twiml",
        outbound_markup: "/twiml/outbound",
        call_status: "/call-status",
        stream_status: "/stream-status",
        dial_result: "/twiml/dial-result",
        whisper: "/twiml/whisper",
    };

    fn settings(a: &Args, shared: &SharedSettings) -> Result<Settings, SettingsError> {
        let auth_token = nonempty(&a.twilio_auth_token);
        let signatures = match (&auth_token, &shared.public_host) {
            (Some(t), Some(host)) => Some(SignatureValidator::new(t.expose(), host)),
            (Some(_), None) => {
                return Err(SettingsError(
                    "TWILIO_AUTH_TOKEN needs --public-host (signatures are checked against the public origin, never the Host header)".into(),
                ))
            }
            (None, _) => None,
        };
        let sid = a.twilio_account_sid.as_deref().filter(|s| !s.is_empty());
        if let Some(sid) = sid {
            if !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(SettingsError(
                    "TWILIO_ACCOUNT_SID must be ASCII letters and digits".into(),
                ));
            }
        }
        let api_key = match (
            a.twilio_api_key_sid.as_deref().filter(|s| !s.is_empty()),
            nonempty(&a.twilio_api_key_secret),
        ) {
            (Some(k), Some(s)) => Some((k.to_owned(), s)),
            (None, None) => None,
            _ => {
                return Err(SettingsError(
                    "TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET go together".into(),
                ))
            }
        };
        let base = a.twilio_api_base.trim_end_matches('/');
        let rest = match (sid, api_key, &auth_token) {
            (Some(sid), key, token) if key.is_some() || token.is_some() => {
                let uri: hyper::Uri = base.parse().map_err(|e| {
                    SettingsError(format!("TWILIO_API_BASE is not a URL: {e}"))
                })?;
                if crate::wire::net::scheme_is_tls(&uri).is_err() || uri.host().is_none() {
                    return Err(SettingsError(
                        "TWILIO_API_BASE must be an http(s) origin".into(),
                    ));
                }
                let auth = match (key, token) {
                    (Some((k, s)), _) => basic_auth(&k, &s),
                    (None, Some(t)) => basic_auth(sid, t),
                    (None, None) => None,
                }
                .ok_or_else(|| SettingsError("Twilio credentials are not header-safe".into()))?;
                Some(Rest {
                    account_url: format!("{base}/2010-04-01/Accounts/{sid}"),
                    auth,
                })
            }
            _ => None,
        };
        Ok(Settings {
            served: true,
            signatures,
            auth_token,
            insecure: a.insecure_skip_twilio_signature,
            rest,
            phone_number: a
                .twilio_phone_number
                .clone()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty()),
        })
    }

    fn status(s: &Settings) -> CarrierStatus {
        CarrierStatus {
            served: s.served,
            authenticated: s.signatures.is_some(),
            rest: s.rest.is_some(),
            insecure: s.insecure,
        }
    }
}

impl CarrierControl for Twilio {
    fn kind(&self) -> CarrierKind {
        CarrierKind::Twilio
    }

    fn verify_webhook(
        &self,
        settings: &CarrierSettings,
        req: SignedRequest<'_>,
    ) -> Result<(), SignatureError> {
        let Some(v) = &settings.twilio.signatures else {
            return Ok(());
        };
        let sig = header_str(req.headers, "x-twilio-signature");
        v.validate_form(req.path_and_query, req.body, sig)
    }

    fn verify_upgrade(
        &self,
        settings: &CarrierSettings,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Option<String>, SignatureError> {
        if let Some(v) = &settings.twilio.signatures {
            let path = path_and_query.split('?').next().unwrap_or(path_and_query);
            v.validate_upgrade(path, header_str(headers, "x-twilio-signature"))?;
        }
        Ok(None)
    }

    fn connect_markup(&self, m: StreamMarkup<'_>) -> Result<String, ParameterTooLong> {
        markup::connect_stream(m, Self::ROUTES.media, Self::ROUTES.stream_status)
    }

    fn create_call<'a>(
        &'a self,
        http: &'a HttpClient,
        settings: &'a CarrierSettings,
        call: NewCall<'a>,
    ) -> BoxFuture<'a, Result<Option<String>, RestError>> {
        Box::pin(async move {
            let rest = settings
                .twilio
                .rest
                .as_ref()
                .ok_or(RestError::NotConfigured)?;
            let body = create_call_form(&call);
            let (status, answer) =
                send(http, rest, &format!("{}/Calls.json", rest.account_url), body).await?;
            match answer.sid.filter(|s| codec::is_valid_call_sid(s)) {
                Some(sid) => Ok(Some(sid)),
                None => Err(RestError::Refused {
                    status,
                    code: None,
                    message: "Twilio's answer has no call SID".into(),
                }),
            }
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
                .twilio
                .rest
                .as_ref()
                .ok_or(RestError::NotConfigured)?;
            if !codec::is_valid_call_sid(call_sid) {
                return Err(RestError::Refused {
                    status: 400,
                    code: None,
                    message: "not a Twilio call SID".into(),
                });
            }
            let body = update_form(&update);
            let url = format!("{}/Calls/{call_sid}.json", rest.account_url);
            send(http, rest, &url, body).await.map(|_| ())
        })
    }
}

/// The Calls create form: `To`, `From`, `Url` (POST), status callbacks for every progress
/// event, and synchronous answering machine detection when asked (`MachineDetection`; Twilio
/// then fetches `Url` once it has decided, with `AnsweredBy`,
/// <https://www.twilio.com/docs/voice/answering-machine-detection>). Kept out of the async
/// fn: the serializer is not `Send`.
pub fn create_call_form(call: &NewCall<'_>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("To", call.to)
        .append_pair("From", call.from)
        .append_pair("Url", call.markup_url)
        .append_pair("Method", "POST")
        .append_pair("StatusCallback", call.status_callback)
        .append_pair("StatusCallbackMethod", "POST");
    for event in STATUS_CALLBACK_EVENTS {
        form.append_pair("StatusCallbackEvent", event);
    }
    if let Some((mode, timeout)) = call.machine_detection {
        form.append_pair("MachineDetection", mode);
        if let Some(t) = timeout {
            form.append_pair("MachineDetectionTimeout", &t.to_string());
        }
    }
    form.finish()
}

/// The call-update form: `Twiml=<markup>` (redirect) or `Status=completed` (hang up). Kept
/// out of the async fn: the serializer is not `Send`.
pub fn update_form(update: &CallUpdate) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match update {
        CallUpdate::Markup(markup) => form.append_pair("Twiml", markup),
        CallUpdate::Hangup => form.append_pair("Status", "completed"),
    };
    form.finish()
}

/// Twilio's JSON answer (success: `sid`; error: `code`, `message`).
#[derive(Debug, Default, serde::Deserialize)]
struct Answer {
    sid: Option<String>,
    code: Option<i64>,
    message: Option<String>,
}

async fn send(
    http: &HttpClient,
    rest: &Rest,
    url: &str,
    body: String,
) -> Result<(u16, Answer), RestError> {
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = url
        .parse()
        .map_err(|e| RestError::Unreachable(format!("bad URL: {e}")))?;
    let h = req.headers_mut();
    h.insert(header::AUTHORIZATION, rest.auth.clone());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let (status, body) = http
        .request(req, MAX_RESPONSE_BYTES, REQUEST_TIMEOUT)
        .await
        .map_err(|e| RestError::Unreachable(format!("{} ({e})", e.kind())))?;
    let answer: Answer = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() {
        return Ok((status.as_u16(), answer));
    }
    Err(RestError::Refused {
        status: status.as_u16(),
        code: answer.code,
        message: answer
            .message
            .unwrap_or_else(|| format!("Twilio answered HTTP {}", status.as_u16())),
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut Args)) -> Args {
        let mut a = Args {
            twilio_api_base: "https://api.twilio.com".into(),
            ..Args::default()
        };
        f(&mut a);
        a
    }

    fn shared() -> SharedSettings {
        SharedSettings {
            public_host: Some("relay.example.com".into()),
            demo_mode: false,
        }
    }

    #[test]
    fn rest_needs_an_account_and_credentials() {
        let s = Twilio::settings(&args(|_| {}), &shared()).unwrap();
        assert!(s.rest.is_none() && s.signatures.is_none());
        let s = Twilio::settings(
            &args(|a| {
                a.twilio_account_sid = Some("AC1".into());
                a.twilio_auth_token = Some(Secret::new("tok"));
            }),
            &shared(),
        )
        .unwrap();
        let rest = s.rest.unwrap();
        assert_eq!(
            rest.account_url,
            "https://api.twilio.com/2010-04-01/Accounts/AC1"
        );
        // Basic base64("AC1:tok").
        assert_eq!(rest.auth, "Basic QUMxOnRvaw==");
        assert!(rest.auth.is_sensitive());
        // An API key replaces the auth token for REST.
        let s = Twilio::settings(
            &args(|a| {
                a.twilio_account_sid = Some("AC1".into());
                a.twilio_api_key_sid = Some("SK9".into());
                a.twilio_api_key_secret = Some(Secret::new("sec"));
            }),
            &shared(),
        )
        .unwrap();
        assert_eq!(s.rest.unwrap().auth, "Basic U0s5OnNlYw==");
        assert!(Twilio::settings(
            &args(|a| a.twilio_api_key_sid = Some("SK9".into())),
            &shared()
        )
        .is_err());
        assert!(Twilio::settings(
            &args(|a| a.twilio_auth_token = Some(Secret::new("t"))),
            &SharedSettings::default()
        )
        .is_err());
    }

    #[test]
    fn the_create_form_asks_for_every_progress_event_and_amd() {
        let f = create_call_form(&NewCall {
            to: "+15551230001",
            from: "+15557654321",
            markup_url: "https://h/twiml/outbound?a=1",
            status_callback: "https://h/call-status",
            machine_detection: Some(("DetectMessageEnd", Some(20))),
        });
        let pairs: Vec<(String, String)> = form_urlencoded::parse(f.as_bytes()).into_owned().collect();
        let get = |k: &str| pairs.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("To"), ["+15551230001"]);
        assert_eq!(get("StatusCallbackEvent"), STATUS_CALLBACK_EVENTS);
        assert_eq!(get("MachineDetection"), ["DetectMessageEnd"]);
        assert_eq!(get("MachineDetectionTimeout"), ["20"]);
    }
}

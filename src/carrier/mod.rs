//! The caller's side: one module per telephone carrier, behind one vocabulary.
//!
//! A carrier streams each call's audio over a WebSocket of its own dialect and is driven over
//! HTTP (webhooks it signs, markup it fetches, a REST API it serves). What the call machine
//! sees is carrier-neutral: [`CallerEvent`] in, [`CarrierSession::encode_media`] /
//! [`encode_mark`](CarrierSession::encode_mark) / [`encode_clear`](CarrierSession::encode_clear)
//! out. What the control plane sees is the [`Carrier`] trait: its routes, how it signs
//! webhooks, its markup, its REST calls.
//!
//! # Adding a carrier
//! One module here (`foo.rs`, implementing [`Carrier`] and [`CarrierCodec`]) and one line in
//! the [`carriers!`] list below: that line declares the module and generates
//! [`CarrierKind`] (names, metric labels), [`CarrierSession`] (static dispatch of the codec on
//! the per-frame path), [`CarrierArgs`] (its flags, flattened into `media-relay serve`) and
//! [`CarrierSettings`].

pub mod dial;
pub use dial::{is_e164, TransferDest};

use crate::auth::Secret;
use crate::auth::SignatureError;
use crate::obs::labels::ErrorKind;
use crate::wire::http_client::HttpClient;
use hyper::HeaderMap;
use std::future::Future;
use std::pin::Pin;

/// Declares the carriers: `Variant => module`, one line each.
macro_rules! carriers {
    ( $( $(#[$meta:meta])* $variant:ident => $module:ident ),+ $(,)? ) => {
        $( $(#[$meta])* pub mod $module; )+

        /// Which carrier a call came through.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
        pub enum CarrierKind {
            $( $(#[$meta])* $variant ),+
        }

        impl CarrierKind {
            /// Every carrier, in label order.
            pub const ALL: &'static [CarrierKind] = &[$(CarrierKind::$variant),+];
            /// The carriers' names (`leg` label and `direction` prefix), in label order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($module)),+];

            /// The carrier's name: `twilio`, `telnyx`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(CarrierKind::$variant => stringify!($module)),+
                }
            }

            /// Its index in [`CarrierKind::ALL`] (metric series are indexed by it).
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The carrier's routes.
            pub const fn routes(self) -> &'static Routes {
                match self {
                    $(CarrierKind::$variant => &<$module::$variant as Carrier>::ROUTES),+
                }
            }

            /// The control-plane half of the carrier.
            pub fn control(self) -> &'static dyn CarrierControl {
                match self {
                    $(CarrierKind::$variant => &$module::$variant),+
                }
            }

            /// The carrier whose media path is `path`.
            pub fn by_media_path(path: &str) -> Option<CarrierKind> {
                Self::ALL.iter().copied().find(|c| c.routes().media == path)
            }
        }

        /// One stream's codec state, per carrier: static dispatch on the per-frame path.
        #[derive(Debug)]
        pub enum CarrierSession {
            $( $(#[$meta])* $variant(<$module::$variant as Carrier>::Session) ),+
        }

        macro_rules! each_session {
            ($s:expr, $x:ident => $body:expr) => {
                match $s { $(CarrierSession::$variant($x) => $body),+ }
            };
        }

        impl CarrierSession {
            /// A fresh codec for a stream of `kind`.
            pub fn new(kind: CarrierKind) -> CarrierSession {
                match kind {
                    $(CarrierKind::$variant => CarrierSession::$variant(Default::default())),+
                }
            }

            /// Which carrier.
            pub fn kind(&self) -> CarrierKind {
                match self {
                    $(CarrierSession::$variant(_) => CarrierKind::$variant),+
                }
            }
        }

        /// Every carrier's flags (flattened into `media-relay serve`).
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct CarrierArgs {
            $( #[command(flatten)] #[allow(missing_docs)] pub $module: <$module::$variant as Carrier>::Args, )+
        }

        /// Every carrier's validated settings.
        #[derive(Debug, Clone)]
        pub struct CarrierSettings {
            $( #[allow(missing_docs)] pub $module: <$module::$variant as Carrier>::Settings, )+
        }

        impl CarrierSettings {
            /// Validates every carrier's flags.
            ///
            /// # Errors
            /// [`SettingsError`] naming the flag.
            pub fn from_args(args: &CarrierArgs, shared: &SharedSettings) -> Result<CarrierSettings, SettingsError> {
                Ok(CarrierSettings {
                    $( $module: <$module::$variant as Carrier>::settings(&args.$module, shared)?, )+
                })
            }

            /// `kind`'s common view: is it served, is it authenticated, can it place calls.
            pub fn status(&self, kind: CarrierKind) -> CarrierStatus {
                match kind {
                    $(CarrierKind::$variant => <$module::$variant as Carrier>::status(&self.$module)),+
                }
            }
        }
    };
}

carriers! {
    /// Twilio Programmable Voice: Media Streams, TwiML, `X-Twilio-Signature`, the REST API.
    Twilio => twilio,
    /// Telnyx: media streaming over WebSocket, TeXML, Ed25519-signed webhooks, TeXML REST.
    Telnyx => telnyx,
}

impl CarrierSession {
    /// Decodes one text frame in place (simd-json; `scratch` is reused parser state). A
    /// carrier that reorders frames may hold this one back ([`Decoded::Held`]); then, after
    /// every frame, [`CarrierSession::take_released`] yields the frames now in order.
    ///
    /// # Errors
    /// [`DecodeError`] for frames that are not the carrier's JSON; unknown events are
    /// [`CallerEvent::Other`], not errors.
    #[inline]
    pub fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<Decoded<'a>, DecodeError> {
        each_session!(self, s => s.decode(frame, scratch))
    }

    /// Moves the next frame the reordering window released into `buf` (replacing its
    /// contents); `false` when none is waiting. Decode it with
    /// [`CarrierSession::decode_released`].
    #[inline]
    pub fn take_released(&mut self, buf: &mut Vec<u8>) -> bool {
        each_session!(self, s => s.take_released(buf))
    }

    /// Decodes a frame [`CarrierSession::take_released`] gave (its order is settled).
    ///
    /// # Errors
    /// As [`CarrierSession::decode`].
    pub fn decode_released<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<CallerEvent<'a>, DecodeError> {
        each_session!(self, s => s.decode_released(frame, scratch))
    }

    /// The stream is ending: every frame still held is released in order, gaps skipped.
    pub fn release_all(&mut self) {
        each_session!(self, s => s.release_all())
    }

    /// Writes outbound audio (raw μ-law, base64-encoded here) for stream `stream` into `out`.
    #[inline]
    pub fn encode_media(&self, stream: &str, audio: &[u8], out: &mut Vec<u8>) {
        each_session!(self, s => s.encode_media(stream, audio, out))
    }

    /// Writes a mark named `name` into `out`.
    #[inline]
    pub fn encode_mark(&self, stream: &str, name: &str, out: &mut Vec<u8>) {
        each_session!(self, s => s.encode_mark(stream, name, out))
    }

    /// Writes a `clear` (flush queued playback) into `out`.
    #[inline]
    pub fn encode_clear(&self, stream: &str, out: &mut Vec<u8>) {
        each_session!(self, s => s.encode_clear(stream, out))
    }

    /// Frames the reordering window gave up on (skipped gaps or late duplicates) since the
    /// last call.
    pub fn take_out_of_order(&mut self) -> u64 {
        each_session!(self, s => s.take_out_of_order())
    }
}

/// The routes a carrier is served on (paths on the relay's public host).
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    /// The media WebSocket (`GET`, upgraded).
    pub media: &'static str,
    /// The incoming-call webhook, answered with markup (`POST`).
    pub inbound: &'static str,
    /// The markup fetch of an outbound call the relay placed (`POST`, relay-signed query).
    pub outbound_markup: &'static str,
    /// Call status callbacks (`POST`).
    pub call_status: &'static str,
    /// Stream status callbacks (`POST`).
    pub stream_status: &'static str,
    /// A transfer's dial result (`POST`, relay-signed query): back to the agent or hang up.
    pub dial_result: &'static str,
    /// A transfer's whisper to the person who answers (`POST`, relay-signed query).
    pub whisper: &'static str,
}

/// What the control plane needs to know about a carrier at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarrierStatus {
    /// Its routes answer (otherwise 404).
    pub served: bool,
    /// Its webhooks and streams are authenticated (signatures checked, stream tokens
    /// required).
    pub authenticated: bool,
    /// Its REST API is configured (outbound calls, call updates).
    pub rest: bool,
    /// Its operator explicitly allowed it to run without signature checks.
    pub insecure: bool,
}

/// Settings every carrier may read: the relay's public host and stream-token secret.
#[derive(Debug, Clone, Default)]
pub struct SharedSettings {
    /// `--public-host`.
    pub public_host: Option<String>,
    /// Whether only the built-in agents (no vendor) are configured: then an unauthenticated
    /// carrier is still served, as the Twilio demo mode always was.
    pub demo_mode: bool,
}

/// A configuration error in a carrier's flags.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// The codec half of a carrier (sans-IO, per stream).
pub trait CarrierCodec: Default + std::fmt::Debug + Send {
    /// See [`CarrierSession::decode`].
    ///
    /// # Errors
    /// [`DecodeError`].
    fn decode<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<Decoded<'a>, DecodeError>;

    /// See [`CarrierSession::take_released`]; carriers that never hold frames keep the
    /// default.
    fn take_released(&mut self, _buf: &mut Vec<u8>) -> bool {
        false
    }

    /// See [`CarrierSession::decode_released`].
    ///
    /// # Errors
    /// [`DecodeError`].
    fn decode_released<'a>(
        &mut self,
        frame: &'a mut [u8],
        scratch: &mut simd_json::Buffers,
    ) -> Result<CallerEvent<'a>, DecodeError> {
        match self.decode(frame, scratch)? {
            Decoded::Event(e) => Ok(e),
            Decoded::Held | Decoded::Late => Ok(CallerEvent::Other { event: "reordered" }),
        }
    }

    /// See [`CarrierSession::release_all`].
    fn release_all(&mut self) {}

    /// See [`CarrierSession::take_out_of_order`].
    fn take_out_of_order(&mut self) -> u64 {
        0
    }

    /// See [`CarrierSession::encode_media`].
    fn encode_media(&self, stream: &str, audio: &[u8], out: &mut Vec<u8>);

    /// See [`CarrierSession::encode_mark`].
    fn encode_mark(&self, stream: &str, name: &str, out: &mut Vec<u8>);

    /// See [`CarrierSession::encode_clear`].
    fn encode_clear(&self, stream: &str, out: &mut Vec<u8>);
}

/// A carrier: its flags, settings, routes and codec. The control-plane operations are in
/// [`CarrierControl`] (object-safe: they are off the per-frame path).
pub trait Carrier: CarrierControl {
    /// Its flags (a clap `Args` group, flattened into `media-relay serve`).
    type Args: clap::Args + Clone + std::fmt::Debug + Default;
    /// Its validated settings.
    type Settings: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// Its per-stream codec.
    type Session: CarrierCodec;
    /// Its routes.
    const ROUTES: Routes;

    /// Validates the flags.
    ///
    /// # Errors
    /// [`SettingsError`] naming the offending flag.
    fn settings(
        args: &Self::Args,
        shared: &SharedSettings,
    ) -> Result<Self::Settings, SettingsError>;

    /// Served / authenticated / REST configured.
    fn status(settings: &Self::Settings) -> CarrierStatus;
}

/// A boxed future of the control plane.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The webhook request a carrier signed, as the relay received it.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// Path and query as requested (`/twiml?agent=echo`).
    pub path_and_query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The raw body.
    pub body: &'a [u8],
    /// Unix time now, seconds (for timestamped signatures).
    pub now_unix: u64,
}

/// What markup a stream needs: where it connects and what it carries.
#[derive(Debug, Clone, Copy)]
pub struct StreamMarkup<'a> {
    /// The relay's public host (`relay.example.com[:port]`).
    pub host: &'a str,
    /// Stream parameters, in order (each name + value under 500 characters).
    pub params: &'a [(&'a str, &'a str)],
    /// The per-call stream token, for carriers that carry it in the stream URL.
    pub token: Option<&'a str>,
}

/// A change to a live call, through the carrier's REST API.
#[derive(Debug, Clone)]
pub enum CallUpdate {
    /// Replace the call's instructions with this markup (transfer, return to the agent).
    Markup(String),
    /// Hang up.
    Hangup,
}

/// An outbound call to place through the carrier's REST API.
#[derive(Debug, Clone)]
pub struct NewCall<'a> {
    /// Callee (E.164).
    pub to: &'a str,
    /// Caller id (E.164).
    pub from: &'a str,
    /// The relay URL the carrier fetches the call's markup from when it is answered.
    pub markup_url: &'a str,
    /// Call status callback URL.
    pub status_callback: &'a str,
    /// Answering machine detection (`Enable`, `DetectMessageEnd`) and its timeout, seconds.
    pub machine_detection: Option<(&'a str, Option<u32>)>,
}

/// Why a REST call to the carrier failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// This carrier has no REST credentials configured.
    #[error("the carrier's REST API is not configured")]
    NotConfigured,
    /// The request never got an answer (connect, TLS, timeout).
    #[error("carrier unreachable: {0}")]
    Unreachable(String),
    /// The carrier answered with an error.
    #[error("carrier answered HTTP {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The carrier's error code, if it gave one.
        code: Option<i64>,
        /// The carrier's message.
        message: String,
    },
}

/// The control-plane half of a carrier: signatures, markup, REST. Object-safe, so the
/// routes hold `&'static dyn CarrierControl`; each carrier reads its own field of the
/// [`CarrierSettings`] it is handed.
pub trait CarrierControl: Sync {
    /// Which carrier.
    fn kind(&self) -> CarrierKind;

    /// Checks a webhook's signature (when the carrier is authenticated).
    ///
    /// # Errors
    /// [`SignatureError`].
    fn verify_webhook(
        &self,
        settings: &CarrierSettings,
        req: SignedRequest<'_>,
    ) -> Result<(), SignatureError>;

    /// Checks a media upgrade request (path with query, headers) and returns the stream
    /// token it carries in its URL, if the carrier puts one there.
    ///
    /// # Errors
    /// [`SignatureError`].
    fn verify_upgrade(
        &self,
        settings: &CarrierSettings,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Option<String>, SignatureError>;

    /// The markup that connects a call to the relay's media stream and hangs up when the
    /// stream ends (`<Connect><Stream>…</Stream></Connect><Hangup/>`).
    ///
    /// # Errors
    /// [`ParameterTooLong`] for a parameter of 500 characters or more.
    fn connect_markup(&self, m: StreamMarkup<'_>) -> Result<String, ParameterTooLong>;

    /// Places an outbound call; returns its call id when the carrier's answer carries one.
    fn create_call<'a>(
        &'a self,
        http: &'a HttpClient,
        settings: &'a CarrierSettings,
        call: NewCall<'a>,
    ) -> BoxFuture<'a, Result<Option<String>, RestError>>;

    /// The markup a live call is redirected to for a transfer (see [`dial::dial`]).
    fn transfer_markup(&self, m: dial::DialMarkup<'_>) -> String {
        dial::dial(m)
    }

    /// The longest ring time its `<Dial timeout>` takes, seconds (Twilio 600; Telnyx 120).
    fn max_dial_timeout_secs(&self) -> u32 {
        600
    }

    /// Updates a live call (redirect to new markup, or hang up).
    fn update_call<'a>(
        &'a self,
        http: &'a HttpClient,
        settings: &'a CarrierSettings,
        call_sid: &'a str,
        update: CallUpdate,
    ) -> BoxFuture<'a, Result<(), RestError>>;
}

/// One message from a carrier's media WebSocket in carrier-neutral terms, borrowing from
/// the frame buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum CallerEvent<'a> {
    /// The first message; carries no stream id.
    Connected {
        /// `protocol`, when the carrier says.
        protocol: Option<&'a str>,
        /// `version`, when the carrier says.
        version: Option<&'a str>,
    },
    /// The stream started: names the stream and call and carries the stream parameters.
    Start(Start<'a>),
    /// One chunk of inbound caller audio.
    Media(Media<'a>),
    /// The carrier echoing a mark we sent, once the audio before it played or was cleared.
    Mark {
        /// The name we chose when sending it.
        name: &'a str,
    },
    /// A key press detected on the inbound track.
    Dtmf {
        /// One keypad character.
        digit: &'a str,
    },
    /// The stream stopped (the call ended, or it was redirected).
    Stop,
    /// The carrier reported an error on the stream (Telnyx `error`).
    Error {
        /// The carrier's numeric code.
        code: Option<u64>,
        /// Its short title.
        title: Option<&'a str>,
        /// Its detail.
        detail: Option<&'a str>,
    },
    /// Any other event: tolerated so new carrier events do not break calls.
    Other {
        /// The unknown event name.
        event: &'a str,
    },
}

/// Fields of a stream's start.
#[derive(Debug, PartialEq, Eq)]
pub struct Start<'a> {
    /// The stream's id (Twilio `streamSid`, Telnyx `stream_id`): ASCII letters, digits and
    /// `-`, at most 64 bytes, so it can be copied into JSON unescaped.
    pub stream_sid: &'a str,
    /// The call's id at the carrier (Twilio `callSid`, Telnyx `call_control_id`, which is
    /// also its TeXML `CallSid`); empty when absent.
    pub call_sid: &'a str,
    /// The carrier account, when given; empty when absent.
    pub account_sid: &'a str,
    /// Stream parameters (TwiML/TeXML `<Parameter>`s), in the order received.
    pub custom_parameters: Vec<(&'a str, &'a str)>,
    /// The media encoding as the carrier named it, if present.
    pub encoding: Option<&'a str>,
    /// Sample rate, if present.
    pub sample_rate: Option<u64>,
    /// Channels, if present.
    pub channels: Option<u64>,
    /// Whether the format is G.711 μ-law 8000 Hz mono in this carrier's naming (absent
    /// fields accepted; present ones must match).
    pub mulaw_8k_mono: bool,
}

/// Fields of an inbound audio message.
#[derive(Debug, PartialEq, Eq)]
pub struct Media<'a> {
    /// `track` (`inbound`).
    pub track: Option<&'a str>,
    /// The carrier's chunk counter; `None` if absent or not a number.
    pub chunk: Option<u64>,
    /// Milliseconds since the stream started; `None` if absent or bad.
    pub timestamp_ms: Option<u64>,
    /// Base64 of raw μ-law bytes, not yet validated.
    pub payload: &'a str,
}

/// What decoding one frame gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// An event, in order.
    Event(CallerEvent<'a>),
    /// The frame arrived ahead of order and waits in the reordering window.
    Held,
    /// The frame arrived after its place had passed (a late duplicate): skipped, counted.
    Late,
}

/// Why a carrier frame could not be decoded; [`DecodeError::kind`] is the metric label.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The frame is not valid JSON (or not UTF-8).
    #[error("malformed JSON: {0}")]
    MalformedJson(simd_json::Error),
    /// The JSON object has no string `event` field.
    #[error("message has no \"event\" field")]
    MissingEvent,
    /// A known event lacks a field the relay needs.
    #[error("{event} message is missing {field}")]
    MissingField {
        /// The event name (`start`, `media`, ...).
        event: &'static str,
        /// The dotted field path.
        field: &'static str,
    },
    /// The stream id is not an identifier the relay accepts.
    #[error("invalid stream id")]
    InvalidStreamSid,
    /// The call id is not an identifier the relay accepts.
    #[error("invalid call id")]
    InvalidCallSid,
    /// A DTMF digit that is not one keypad character (`0`–`9`, `*`, `#`, `A`–`D`).
    #[error("invalid dtmf.digit")]
    InvalidDtmf,
}

impl DecodeError {
    /// The `kind` label of `relay_errors_total{leg=<carrier>}`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::MalformedJson(_) => ErrorKind::MalformedJson,
            DecodeError::MissingEvent => ErrorKind::MissingEvent,
            DecodeError::MissingField { .. } => ErrorKind::MissingField,
            DecodeError::InvalidStreamSid => ErrorKind::InvalidStreamSid,
            DecodeError::InvalidCallSid => ErrorKind::InvalidCallSid,
            DecodeError::InvalidDtmf => ErrorKind::InvalidDtmf,
        }
    }
}

/// A stream parameter that cannot be emitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stream parameter {name} is too long: name + value must be under {MAX_PARAMETER_CHARS} characters")]
pub struct ParameterTooLong {
    /// The parameter name.
    pub name: String,
}

/// Longest `<Parameter>` name + value accepted, exclusive (under 500 characters: Twilio
/// TwiML `<Stream>` docs, <https://www.twilio.com/docs/voice/twiml/stream>; the relay holds
/// TeXML parameters to the same rule).
pub const MAX_PARAMETER_CHARS: usize = 500;

/// The one home of the parameter-length rule.
pub fn parameter_fits(name: &str, value: &str) -> bool {
    name.chars().count() + value.chars().count() < MAX_PARAMETER_CHARS
}

/// Whether `digit` is one DTMF keypad character (`0`–`9`, `*`, `#`, and the DTMF
/// standard's `A`–`D`).
pub fn is_valid_dtmf_digit(digit: &str) -> bool {
    matches!(digit.as_bytes(), [b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D'])
}

/// Whether `id` is an identifier the relay copies into outbound JSON, logs and webhooks
/// unescaped: 1 to 64 ASCII letters, digits, `-`, `_`, `:` or `.` (Twilio SIDs, Telnyx UUIDs
/// and `v3:…` call control ids).
pub fn is_plain_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
}

/// Stream parameters as a carrier sends them in its start message: an object of strings
/// (`{"tenant":"acme"}`, Twilio `customParameters`) or a list of `{"name","value"}` objects
/// (Telnyx `custom_parameters` on Call Control streams); kept in received order, entries
/// whose value is not a string skipped, `null` read as none.
#[derive(Default)]
pub(crate) struct StreamParams<'a>(pub(crate) Vec<(&'a str, &'a str)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for StreamParams<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::wire::json::MaybeStr;
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        #[derive(serde::Deserialize)]
        struct Entry<'a> {
            #[serde(borrow, default)]
            name: MaybeStr<'a>,
            #[serde(borrow, default)]
            value: MaybeStr<'a>,
        }
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StreamParams<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of string parameters or a list of {name, value}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<StreamParams<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<&'de str>()? {
                    if let MaybeStr(Some(v)) = m.next_value::<MaybeStr<'de>>()? {
                        out.push((k, v));
                    }
                }
                Ok(StreamParams(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<StreamParams<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = s.next_element::<Entry<'de>>()? {
                    if let (Some(k), Some(v)) = (e.name.0, e.value.0) {
                        out.push((k, v));
                    }
                }
                Ok(StreamParams(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<StreamParams<'a>, E> {
                Ok(StreamParams(Vec::new()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Basic auth for a carrier REST API, as a sensitive header value.
pub fn basic_auth(user: &str, password: &Secret) -> Option<hyper::header::HeaderValue> {
    let credentials =
        base64_simd::STANDARD.encode_to_string(format!("{user}:{}", password.expose()));
    let mut v = hyper::header::HeaderValue::from_str(&format!("Basic {credentials}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Bearer auth for a carrier REST API, as a sensitive header value.
pub fn bearer_auth(token: &Secret) -> Option<hyper::header::HeaderValue> {
    let mut v = hyper::header::HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The relay's User-Agent on REST calls.
pub const USER_AGENT: &str = concat!("media-relay/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_routes_are_distinct() {
        let mut paths = std::collections::HashSet::new();
        for c in CarrierKind::ALL {
            assert_eq!(CarrierKind::NAMES[c.index()], c.as_str());
            assert_eq!(c.control().kind(), *c);
            let r = c.routes();
            for p in [
                r.media,
                r.inbound,
                r.outbound_markup,
                r.call_status,
                r.stream_status,
                r.dial_result,
                r.whisper,
            ] {
                assert!(p.starts_with('/'), "{p}");
                assert!(paths.insert(p), "{p} twice");
            }
            assert_eq!(CarrierKind::by_media_path(r.media), Some(*c));
        }
    }

    #[test]
    fn plain_ids_and_digits() {
        assert!(is_plain_id("MZ0123456789abcdef0123456789abcdef"));
        assert!(is_plain_id(
            "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
        ));
        assert!(is_plain_id("32DE0DEA-53CB-4B21-89A4-9E1819C043BC"));
        for bad in ["", "a b", "a\"b", "a\\b", &"x".repeat(65)] {
            assert!(!is_plain_id(bad), "{bad}");
        }
        for good in ["0", "9", "*", "#", "A", "D"] {
            assert!(is_valid_dtmf_digit(good));
        }
        for bad in ["", "12", "x", "E"] {
            assert!(!is_valid_dtmf_digit(bad));
        }
        assert!(parameter_fits("a", &"x".repeat(498)));
        assert!(!parameter_fits("a", &"x".repeat(499)));
    }
}

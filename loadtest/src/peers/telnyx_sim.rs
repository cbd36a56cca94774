//! Simulated Telnyx media-streaming caller (the WebSocket **client** on the Telnyx leg): the
//! [`Telnyx`] wire of the shared caller in [`crate::peers::carrier`], written from Telnyx's
//! media-streaming documentation (the "Media Streaming over WebSockets" guide and the "Stream
//! call media over WebSocket" AsyncAPI reference).
//!
//! Outbound (simulated Telnyx → relay) messages use Telnyx's shapes: `connected` (`version`
//! only), `start` with the stream id **at the top level only** (`stream_id`) and
//! `start.call_control_id`, `start.media_format {encoding:"PCMU", sample_rate:8000,
//! channels:1}` and `start.custom_parameters` either as an object `{k: v}` or as a list
//! `[{"name","value"}]` ([`CustomParametersShape`]); `media {track, chunk, timestamp, payload}`;
//! `dtmf` (with `occurred_at`); `mark` echoes; `error {payload:{code,title,detail}}`
//! ([`TelnyxSender::send_error`]); `stop`. `sequence_number`, `media.chunk` and
//! `media.timestamp` are JSON strings holding decimal integers, numbered as described in
//! [`crate::peers::carrier`]; `connected` has no sequence number.
//!
//! Telnyx documents that media frame order is not guaranteed; [`CallScript::frame_order`]
//! ([`FrameOrder`]) sends some frames out of order while keeping each one's numbers, so a relay
//! that reorders by `sequence_number` must still deliver [`CallScript::audio`] byte-exact. The
//! relay URL may carry a per-call token (see [`url_with_relay_token`]).
//!
//! Inbound (relay → simulated Telnyx) messages are validated strictly: only
//! `{"event":"media","media":{"payload":B64}}`, `{"event":"mark","mark":{"name":N}}` and
//! `{"event":"clear"}`; exactly those fields, so **no** stream id (`stream_id`, `streamSid`);
//! non-empty valid base64; nothing before the `start` was sent. Any violation is an error of
//! type [`TelnyxProtocolError`]. Binary frames are violations too. Playback is emulated as
//! Telnyx describes it: a mark comes back when the media before it has played (at once if
//! nothing is queued), and `clear` stops playback and sends every queued mark back at once.
//!
//! ```no_run
//! # async fn demo(audio: std::sync::Arc<Vec<u8>>) -> anyhow::Result<()> {
//! use loadtest::telnyx_sim::{
//!     run_call, url_with_relay_token, CallScript, CustomParametersShape, FrameOrder, StartParams,
//! };
//! let mut start = StartParams::for_call(7);
//! start.custom_parameters = vec![("tenant".into(), "acme".into())];
//! start.custom_parameters_shape = CustomParametersShape::List;
//! let url = url_with_relay_token("ws://127.0.0.1:8080/telnyx", "tok-7");
//! let mut script = CallScript::new(url, start, audio.clone());
//! script.frame_order = FrameOrder::Shuffle { seed: 7, window: 3 };
//! let report = run_call(script).await?;
//! assert!(report.protocol_errors.is_empty(), "{:?}", report.protocol_errors);
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::peers::carrier::{
    self, js, CarrierClient, CarrierReceiver, CarrierSender, CarrierWire, InboundView,
    MediaNumbers, PlaybackMessage, PlaybackRules,
};

pub use crate::peers::carrier::{CallReport, FrameOrder};

/// How `start.custom_parameters` is written (Telnyx does not document the shape for TeXML
/// `<Parameter>`; Call Control's `custom_parameters` is a list of `{name, value}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CustomParametersShape {
    /// `{"k1":"v1","k2":"v2"}`, keys in the order given.
    #[default]
    Object,
    /// `[{"name":"k1","value":"v1"},{"name":"k2","value":"v2"}]`.
    List,
}

/// `start.media_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFormat {
    /// Codec name: `"PCMU"` (G.711 μ-law, what this crate streams), or `"PCMA"`, `"L16"`, …
    pub encoding: String,
    /// Samples per second (a JSON number).
    pub sample_rate: u32,
    /// Channel count (a JSON number).
    pub channels: u32,
}

impl MediaFormat {
    /// `{encoding:"PCMU", sample_rate:8000, channels:1}`.
    pub fn pcmu() -> Self {
        MediaFormat {
            encoding: "PCMU".to_owned(),
            sample_rate: 8000,
            channels: 1,
        }
    }
}

/// Parameters of the Telnyx `start` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartParams {
    /// The top-level `stream_id` of every message (a UUID). The relay must **not** send it
    /// back.
    pub stream_id: String,
    /// `start.call_control_id` (also the TeXML `CallSid`).
    pub call_control_id: String,
    /// `start.call_session_id`.
    pub call_session_id: String,
    /// `start.user_id`.
    pub user_id: String,
    /// `start.from` (E.164).
    pub from: String,
    /// `start.to` (E.164).
    pub to: String,
    /// `start.tags`; omitted when empty.
    pub tags: Vec<String>,
    /// `start.client_state` (base64 set by a Call Control command); omitted when `None`.
    pub client_state: Option<String>,
    /// `start.media_format`.
    pub media_format: MediaFormat,
    /// `start.custom_parameters` (name, value), in this order; omitted when empty.
    pub custom_parameters: Vec<(String, String)>,
    /// Whether [`custom_parameters`](Self::custom_parameters) is sent as an object or a list.
    pub custom_parameters_shape: CustomParametersShape,
    /// `media.track` of every media message sent (`"inbound"`; the docs leave open whether it
    /// may also be `"inbound_track"`).
    pub media_track: String,
}

impl StartParams {
    /// Well-formed, distinct ids for simulated call number `n` (an uppercase UUID `stream_id`,
    /// a `v3:` `call_control_id`, a lowercase UUID `call_session_id`), fixed numbers, PCMU
    /// 8 kHz mono, `media_track: "inbound"`, no tags, no client state and no custom parameters
    /// (shape [`CustomParametersShape::Object`]).
    pub fn for_call(n: u64) -> Self {
        StartParams {
            stream_id: format!("5E1AF0C0-0000-4000-8000-{:012X}", n & 0xFFFF_FFFF_FFFF),
            call_control_id: format!("v3:loadtest-{n:020}"),
            call_session_id: format!("ca11ce55-0000-4000-8000-{:012x}", n & 0xFFFF_FFFF_FFFF),
            user_id: "3E6F995F-0000-4000-8000-00000000000A".to_owned(),
            from: "+13125550100".to_owned(),
            to: "+13125550199".to_owned(),
            tags: Vec::new(),
            client_state: None,
            media_format: MediaFormat::pcmu(),
            custom_parameters: Vec::new(),
            custom_parameters_shape: CustomParametersShape::Object,
            media_track: "inbound".to_owned(),
        }
    }
}

/// One message from the relay, after strict validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelnyxInbound {
    /// `{"event":"media","media":{"payload":B64}}`; `payload` is decoded audio.
    Media {
        /// Decoded audio bytes (μ-law, 8 bytes per ms).
        payload: Vec<u8>,
    },
    /// `{"event":"mark","mark":{"name":N}}`.
    Mark {
        /// `mark.name`.
        name: String,
    },
    /// `{"event":"clear"}`.
    Clear,
    /// The relay sent a WebSocket Close frame (already answered). `code` is `None` when the
    /// Close frame had no payload. After this, `recv` returns `Ok(None)`.
    Close {
        /// Close status code, e.g. 1000.
        code: Option<u16>,
        /// Close reason text (lossy UTF-8).
        reason: String,
    },
}

/// A relay → Telnyx message that Telnyx would not accept. Returned (inside `anyhow::Error`, so
/// use `err.downcast_ref::<TelnyxProtocolError>()`) by [`TelnyxReceiver::recv`] and
/// [`parse_server_message`]. After such an error the connection is still usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelnyxProtocolError {
    /// What was wrong, followed by (a prefix of) the offending message.
    pub message: String,
}

impl fmt::Display for TelnyxProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Telnyx protocol violation: {}", self.message)
    }
}

impl std::error::Error for TelnyxProtocolError {}

/// Validates one text message the relay sent to Telnyx and decodes it.
///
/// `started` says whether the `start` was sent on this connection (before it, any message is
/// a violation).
///
/// Checks: valid JSON object; `event` is one of `media`/`mark`/`clear`; exactly the documented
/// keys at every level (no missing, no extra; in particular no `stream_id`/`streamSid`: Telnyx
/// messages back carry no stream id); all values are strings; `media.payload` is non-empty
/// standard base64 (with padding); `mark.name` is non-empty.
pub fn parse_server_message(
    text: &str,
    started: bool,
) -> Result<TelnyxInbound, TelnyxProtocolError> {
    let rules = PlaybackRules {
        carrier: Telnyx::NAME,
        envelope: &[],
        forbidden: (
            &["stream_id", "streamSid"],
            "messages to Telnyx have no stream id",
        ),
    };
    let msg = carrier::parse_playback_message(text, &rules, |event, _| {
        if started {
            Ok(())
        } else {
            Err(format!("{event} sent before the stream's start"))
        }
    })
    .map_err(|message| TelnyxProtocolError { message })?;
    Ok(match msg {
        PlaybackMessage::Media(payload) => TelnyxInbound::Media { payload },
        PlaybackMessage::Mark(name) => TelnyxInbound::Mark { name },
        PlaybackMessage::Clear => TelnyxInbound::Clear,
    })
}

/// The Telnyx media-streaming wire (see the [module docs](self)); the type parameter of the
/// shared caller's types behind [`TelnyxClient`], [`CallScript`] and the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Telnyx;

impl CarrierWire for Telnyx {
    const NAME: &'static str = "Telnyx";
    type Start = StartParams;
    type Inbound = TelnyxInbound;
    type ProtocolError = TelnyxProtocolError;

    /// `{"event":"connected","version":"1.0.0"}`.
    fn connected() -> String {
        r#"{"event":"connected","version":"1.0.0"}"#.to_owned()
    }

    /// `start` with `stream_id` at the top level only, fields in the documented order.
    fn start(sequence: u64, p: &StartParams) -> String {
        let mut start = format!(
            r#"{{"user_id":{},"call_control_id":{},"call_session_id":{},"from":{},"to":{}"#,
            js(&p.user_id),
            js(&p.call_control_id),
            js(&p.call_session_id),
            js(&p.from),
            js(&p.to),
        );
        if !p.tags.is_empty() {
            let tags: Vec<String> = p.tags.iter().map(|t| js(t)).collect();
            start.push_str(&format!(r#","tags":[{}]"#, tags.join(",")));
        }
        if let Some(state) = &p.client_state {
            start.push_str(&format!(r#","client_state":{}"#, js(state)));
        }
        start.push_str(&format!(
            r#","media_format":{{"encoding":{},"sample_rate":{},"channels":{}}}"#,
            js(&p.media_format.encoding),
            p.media_format.sample_rate,
            p.media_format.channels
        ));
        if !p.custom_parameters.is_empty() {
            start.push_str(r#","custom_parameters":"#);
            start.push_str(&custom_parameters_json(
                &p.custom_parameters,
                p.custom_parameters_shape,
            ));
        }
        start.push('}');
        format!(
            r#"{{"event":"start","sequence_number":"{}","start":{},"stream_id":{}}}"#,
            sequence,
            start,
            js(&p.stream_id)
        )
    }

    /// `media` with `track` from [`StartParams::media_track`].
    fn media(n: MediaNumbers, payload_b64: &str, start: Option<&StartParams>) -> String {
        format!(
            concat!(
                r#"{{"event":"media","sequence_number":"{}","media":{{"track":{},"#,
                r#""chunk":"{}","timestamp":"{}","payload":"{}"}},"stream_id":{}}}"#
            ),
            n.sequence,
            js(start.map_or("inbound", |s| s.media_track.as_str())),
            n.chunk,
            n.timestamp_ms,
            payload_b64,
            js(stream_id(start))
        )
    }

    fn mark(sequence: u64, name: &str, start: Option<&StartParams>) -> String {
        format!(
            r#"{{"event":"mark","stream_id":{},"sequence_number":"{}","mark":{{"name":{}}}}}"#,
            js(stream_id(start)),
            sequence,
            js(name)
        )
    }

    /// `dtmf` with `occurred_at` = now (RFC 3339, UTC, microseconds).
    fn dtmf(sequence: u64, digit: &str, start: Option<&StartParams>) -> String {
        format!(
            concat!(
                r#"{{"event":"dtmf","stream_id":{},"occurred_at":"{}","#,
                r#""sequence_number":"{}","dtmf":{{"digit":{}}}}}"#
            ),
            js(stream_id(start)),
            rfc3339_micros(SystemTime::now()),
            sequence,
            js(digit)
        )
    }

    /// `stop` with `user_id`/`call_control_id` from `start` (empty strings without one).
    fn stop(sequence: u64, start: Option<&StartParams>) -> String {
        let (user, call) = match start {
            Some(s) => (s.user_id.as_str(), s.call_control_id.as_str()),
            None => ("", ""),
        };
        format!(
            concat!(
                r#"{{"event":"stop","sequence_number":"{}","stop":{{"user_id":{},"#,
                r#""call_control_id":{}}},"stream_id":{}}}"#
            ),
            sequence,
            js(user),
            js(call),
            js(stream_id(start))
        )
    }

    fn parse(
        text: &str,
        start: Option<&StartParams>,
    ) -> Result<TelnyxInbound, TelnyxProtocolError> {
        parse_server_message(text, start.is_some())
    }

    fn binary_frame(len: usize) -> TelnyxProtocolError {
        TelnyxProtocolError {
            message: format!("binary frame ({len} bytes); Telnyx accepts only JSON text frames"),
        }
    }

    fn close(code: Option<u16>, reason: String) -> TelnyxInbound {
        TelnyxInbound::Close { code, reason }
    }

    fn view(msg: &TelnyxInbound) -> InboundView<'_> {
        match msg {
            TelnyxInbound::Media { payload } => InboundView::Media(payload),
            TelnyxInbound::Mark { name } => InboundView::Mark(name),
            TelnyxInbound::Clear => InboundView::Clear,
            TelnyxInbound::Close { code, .. } => InboundView::Close(*code),
        }
    }
}

/// The `stream_id` of `start`, or `""` before it.
fn stream_id(start: Option<&StartParams>) -> &str {
    start.map_or("", |s| s.stream_id.as_str())
}

/// `params` as a JSON object (in order; duplicates kept) or list of `{name, value}`.
fn custom_parameters_json(params: &[(String, String)], shape: CustomParametersShape) -> String {
    let items: Vec<String> = params
        .iter()
        .map(|(k, v)| match shape {
            CustomParametersShape::Object => format!("{}:{}", js(k), js(v)),
            CustomParametersShape::List => format!(r#"{{"name":{},"value":{}}}"#, js(k), js(v)),
        })
        .collect();
    match shape {
        CustomParametersShape::Object => format!("{{{}}}", items.join(",")),
        CustomParametersShape::List => format!("[{}]", items.join(",")),
    }
}

/// The `error` message: `{"event":"error","sequence_number":S,"payload":{"code":C,
/// "title":T,"detail":D},"stream_id":ID}` (the body under `payload`, `code` a number).
pub fn error_message(
    sequence: u64,
    code: i64,
    title: &str,
    detail: &str,
    start: Option<&StartParams>,
) -> String {
    format!(
        concat!(
            r#"{{"event":"error","sequence_number":"{}","payload":{{"code":{},"title":{},"#,
            r#""detail":{}}},"stream_id":{}}}"#
        ),
        sequence,
        code,
        js(title),
        js(detail),
        js(stream_id(start))
    )
}

impl CarrierSender<Telnyx> {
    /// Sends an `error` message ([`error_message`]) with the next sequence number. Documented
    /// codes: 100002 `unknown_error`, 100003 `malformed_frame`, 100004 `invalid_media`, 100005
    /// `rate_limit_reached`.
    pub async fn send_error(&self, code: i64, title: &str, detail: &str) -> anyhow::Result<()> {
        self.send_numbered(|seq, start| error_message(seq, code, title, detail, start))
            .await
    }
}

impl CarrierClient<Telnyx> {
    /// See [`TelnyxSender::send_error`].
    pub async fn send_error(&self, code: i64, title: &str, detail: &str) -> anyhow::Result<()> {
        self.sender().send_error(code, title, detail).await
    }
}

/// `url` with the query parameter `relay_token=<token>` appended (`?` or `&` as needed, the
/// token percent-encoded): the per-call token a TeXML `<Stream url>` can carry, since Telnyx
/// signs no media WebSocket upgrade.
pub fn url_with_relay_token(url: &str, token: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}relay_token={}",
        crate::peers::mock_server::encode_query_value(token)
    )
}

/// `t` as RFC 3339 UTC with microseconds, e.g. `2025-06-05T08:54:19.698408Z`.
fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Sending half of a simulated Telnyx connection ([`CarrierSender`] on the [`Telnyx`] wire;
/// see there for the numbering), plus [`send_error`](CarrierSender::send_error).
pub type TelnyxSender = CarrierSender<Telnyx>;

/// Receiving half of a simulated Telnyx connection ([`CarrierReceiver`] on the [`Telnyx`]
/// wire). `recv` validates with [`parse_server_message`]; it is not cancel-safe.
pub type TelnyxReceiver = CarrierReceiver<Telnyx>;

/// A connected simulated Telnyx caller ([`CarrierClient`] on the [`Telnyx`] wire):
/// `TelnyxClient::connect(&url_with_relay_token(url, tok), &[])`, then `send_connected`,
/// `send_start`, `send_media`, ….
pub type TelnyxClient = CarrierClient<Telnyx>;

/// A whole simulated Telnyx call for [`run_call`] ([`carrier::CallScript`] on the [`Telnyx`]
/// wire): `CallScript::new(url, StartParams::for_call(n), audio)`, then set `frame_order` to
/// reorder frames.
pub type CallScript = carrier::CallScript<Telnyx>;

/// Runs one simulated Telnyx call against the relay and reports what happened: see
/// [`carrier::run_call`] (connect, `connected`/`start`, paced media in
/// [`CallScript::frame_order`], Telnyx's playback and mark echoes, `stop`, close).
pub async fn run_call(script: CallScript) -> anyhow::Result<CallReport> {
    carrier::run_call(script).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn err(text: &str) -> String {
        parse_server_message(text, true).unwrap_err().message
    }

    #[test]
    fn accepts_documented_shapes() {
        assert_eq!(
            parse_server_message(r#"{"event":"media","media":{"payload":"/38="}}"#, true).unwrap(),
            TelnyxInbound::Media {
                payload: vec![0xFF, 0x7F]
            }
        );
        assert_eq!(
            parse_server_message(r#"{"event":"mark","mark":{"name":"r1:c2"}}"#, true).unwrap(),
            TelnyxInbound::Mark {
                name: "r1:c2".into()
            }
        );
        assert_eq!(
            parse_server_message(r#"{"event":"clear"}"#, true).unwrap(),
            TelnyxInbound::Clear
        );
    }

    #[test]
    fn rejects_violations() {
        assert!(err("not json").contains("invalid JSON"));
        assert!(err("[1]").contains("not a JSON object"));
        assert!(err(r#"{"media":{}}"#).contains("missing `event`"));
        assert!(err(r#"{"event":7}"#).contains("`event` is not a string"));
        assert!(err(r#"{"event":"stop"}"#).contains("unknown event"));
        // Twilio's shape (a streamSid) and a Telnyx stream id are both refused.
        let twilio = err(r#"{"event":"clear","streamSid":"MZ1"}"#);
        assert!(twilio.contains("carries `streamSid`"), "{twilio}");
        assert!(
            err(r#"{"event":"media","stream_id":"X","media":{"payload":"AAAA"}}"#)
                .contains("carries `stream_id`")
        );
        assert!(
            err(r#"{"event":"media","media":{"payload":"AAAA","track":"outbound"}}"#)
                .contains("extra field(s) [\"track\"]")
        );
        assert!(
            err(r#"{"event":"media","sequence_number":"1","media":{"payload":"AAAA"}}"#)
                .contains("extra field(s) [\"sequence_number\"]")
        );
        assert!(err(r#"{"event":"media"}"#).contains("missing field(s) [\"media\"]"));
        assert!(err(r#"{"event":"media","media":"AAAA"}"#).contains("not an object"));
        assert!(err(r#"{"event":"media","media":{"payload":"!!!"}}"#).contains("not valid base64"));
        assert!(err(r#"{"event":"media","media":{"payload":"AAA"}}"#).contains("not valid base64"));
        assert!(err(r#"{"event":"media","media":{"payload":""}}"#).contains("empty"));
        assert!(err(r#"{"event":"media","media":{"payload":7}}"#).contains("not a string"));
        assert!(err(r#"{"event":"mark","mark":{}}"#).contains("missing field(s) [\"name\"]"));
        assert!(err(r#"{"event":"mark","mark":{"name":""}}"#).contains("mark.name is empty"));
        assert!(err(r#"{"event":"clear","extra":1}"#).contains("extra field(s) [\"extra\"]"));
        let before = parse_server_message(r#"{"event":"clear"}"#, false).unwrap_err();
        assert!(before.message.contains("before the stream's start"));
        assert!(before
            .to_string()
            .starts_with("Telnyx protocol violation: "));
        let long = format!(r#"{{"event":"nope","pad":"{}"}}"#, "x".repeat(1000));
        assert!(err(&long).contains("bytes)"));
        assert!(Telnyx::binary_frame(3)
            .message
            .contains("binary frame (3 bytes)"));
    }

    #[test]
    fn start_message_shapes() {
        let mut p = StartParams::for_call(42);
        let v: Value = serde_json::from_str(&Telnyx::start(1, &p)).unwrap();
        assert_eq!(
            v,
            json!({
                "event": "start",
                "sequence_number": "1",
                "start": {
                    "user_id": p.user_id,
                    "call_control_id": "v3:loadtest-00000000000000000042",
                    "call_session_id": "ca11ce55-0000-4000-8000-00000000002a",
                    "from": "+13125550100",
                    "to": "+13125550199",
                    "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
                },
                "stream_id": "5E1AF0C0-0000-4000-8000-00000000002A"
            })
        );
        assert_ne!(
            StartParams::for_call(1).stream_id,
            StartParams::for_call(2).stream_id
        );

        p.custom_parameters = vec![
            ("tenant".into(), "acme".into()),
            ("agent".into(), "sa\"les".into()),
        ];
        p.tags = vec!["T1".into()];
        p.client_state = Some("aGk=".into());
        let text = Telnyx::start(1, &p);
        // Object shape keeps the given order.
        assert!(
            text.contains(r#""custom_parameters":{"tenant":"acme","agent":"sa\"les"}}"#),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["start"]["tags"], json!(["T1"]));
        assert_eq!(v["start"]["client_state"], "aGk=");
        assert!(v.get("streamSid").is_none() && v["start"].get("stream_id").is_none());

        p.custom_parameters_shape = CustomParametersShape::List;
        let v: Value = serde_json::from_str(&Telnyx::start(1, &p)).unwrap();
        assert_eq!(
            v["start"]["custom_parameters"],
            json!([{"name": "tenant", "value": "acme"}, {"name": "agent", "value": "sa\"les"}])
        );
    }

    #[test]
    fn numbered_messages() {
        let p = StartParams::for_call(1);
        let id = p.stream_id.clone();
        let n = MediaNumbers {
            sequence: 4,
            chunk: 2,
            timestamp_ms: 20,
        };
        assert_eq!(
            Telnyx::media(n, "/38=", Some(&p)),
            format!(
                r#"{{"event":"media","sequence_number":"4","media":{{"track":"inbound","chunk":"2","timestamp":"20","payload":"/38="}},"stream_id":"{id}"}}"#
            )
        );
        assert_eq!(
            Telnyx::mark(5, "m1", Some(&p)),
            format!(
                r#"{{"event":"mark","stream_id":"{id}","sequence_number":"5","mark":{{"name":"m1"}}}}"#
            )
        );
        let v: Value = serde_json::from_str(&Telnyx::dtmf(6, "#", Some(&p))).unwrap();
        assert_eq!(v["sequence_number"], "6");
        assert_eq!(v["dtmf"], json!({"digit": "#"}));
        assert_eq!(v["stream_id"], id.as_str());
        let at = v["occurred_at"].as_str().unwrap();
        assert!(
            at.len() == 27 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
            "{at}"
        );
        let v: Value = serde_json::from_str(&Telnyx::stop(7, Some(&p))).unwrap();
        assert_eq!(
            v,
            json!({"event": "stop", "sequence_number": "7",
                "stop": {"user_id": p.user_id, "call_control_id": p.call_control_id},
                "stream_id": id})
        );
        let v: Value = serde_json::from_str(&error_message(
            8,
            100003,
            "malformed_frame",
            "bad",
            Some(&p),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"event": "error", "sequence_number": "8",
                "payload": {"code": 100003, "title": "malformed_frame", "detail": "bad"},
                "stream_id": id})
        );
        assert_eq!(
            Telnyx::connected(),
            r#"{"event":"connected","version":"1.0.0"}"#
        );
    }

    #[test]
    fn relay_token_urls() {
        assert_eq!(
            url_with_relay_token("ws://127.0.0.1:1/telnyx", "a b+c/é"),
            "ws://127.0.0.1:1/telnyx?relay_token=a%20b%2Bc%2F%C3%A9"
        );
        assert_eq!(
            url_with_relay_token("ws://127.0.0.1:1/telnyx?x=1", "t"),
            "ws://127.0.0.1:1/telnyx?x=1&relay_token=t"
        );
    }

    #[test]
    fn rfc3339_dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_749_113_659_698_408);
        assert_eq!(rfc3339_micros(t), "2025-06-05T08:54:19.698408Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_micros(leap), "2000-02-29T00:00:00.000000Z");
    }
}

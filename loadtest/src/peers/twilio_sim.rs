//! Simulated Twilio Media Streams caller (the WebSocket **client** on the Twilio leg): the
//! [`Twilio`] wire of the shared caller in [`crate::peers::carrier`].
//!
//! Outbound (simulated Twilio → relay) messages use Twilio's exact shapes: `connected`, `start`,
//! `media`, `mark`, `dtmf` and `stop`, with `sequenceNumber`, `media.chunk` and
//! `media.timestamp` as JSON strings holding decimal integers. Client frames are masked.
//!
//! Inbound (relay → simulated Twilio) messages are validated as strictly as Twilio does: only
//! `media`, `mark` and `clear`; exactly the documented fields and no others; valid base64; the
//! `streamSid` given in `start`. Any violation is returned as an error of type
//! [`TwilioProtocolError`] whose message says what was wrong. Binary frames are violations too.
//!
//! Low level: [`TwilioClient`] (or its halves [`TwilioSender`] / [`TwilioReceiver`]).
//! High level: [`run_call`] plays a whole call from a [`CallScript`] and emulates Twilio's
//! playback queue (real-time drain, mark echoes, `clear`), returning a [`CallReport`].

use std::fmt;

use serde_json::Value;

use crate::peers::carrier::{
    self, js, string_field, CarrierClient, CarrierReceiver, CarrierSender, CarrierWire,
    InboundView, MediaNumbers, PlaybackMessage, PlaybackRules,
};

pub use crate::peers::carrier::{CallReport, FrameOrder};

/// Parameters of the Twilio `start` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartParams {
    /// `start.accountSid` (Twilio: `AC` + 32 hex digits).
    pub account_sid: String,
    /// `start.callSid` (Twilio: `CA` + 32 hex digits).
    pub call_sid: String,
    /// `start.streamSid` and the top-level `streamSid` (Twilio: `MZ` + 32 hex digits). The
    /// relay must put this exact value in every message it sends back.
    pub stream_sid: String,
    /// `start.customParameters`, the `<Parameter name value>` pairs, in this order.
    pub custom_parameters: Vec<(String, String)>,
}

impl StartParams {
    /// Well-formed, distinct sids for simulated call number `n` (`AC…`, `CA…`, `MZ…`, each
    /// followed by 32 lowercase hex digits) and no custom parameters.
    pub fn for_call(n: u64) -> Self {
        StartParams {
            account_sid: format!("AC{:032x}", 0xacu64),
            call_sid: format!("CA{n:032x}"),
            stream_sid: format!("MZ{n:032x}"),
            custom_parameters: Vec::new(),
        }
    }
}

/// One message from the relay, after strict validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioInbound {
    /// `{"event":"media","streamSid":S,"media":{"payload":B64}}`; `payload` is decoded μ-law.
    Media {
        /// The message's `streamSid`.
        stream_sid: String,
        /// Decoded audio bytes (μ-law, 8 bytes per ms).
        payload: Vec<u8>,
    },
    /// `{"event":"mark","streamSid":S,"mark":{"name":N}}`.
    Mark {
        /// The message's `streamSid`.
        stream_sid: String,
        /// `mark.name`.
        name: String,
    },
    /// `{"event":"clear","streamSid":S}`.
    Clear {
        /// The message's `streamSid`.
        stream_sid: String,
    },
    /// The relay sent a WebSocket Close frame (already answered). `code` is `None` when the
    /// Close frame had no payload. After this, `recv` returns `Ok(None)`.
    Close {
        /// Close status code, e.g. 1000.
        code: Option<u16>,
        /// Close reason text (lossy UTF-8).
        reason: String,
    },
}

/// A relay → Twilio message that Twilio would reject (warning 31950/31951). Returned (inside
/// `anyhow::Error`, so use `err.downcast_ref::<TwilioProtocolError>()`) by
/// [`TwilioReceiver::recv`] and [`parse_server_message`]. After such an error the connection is
/// still usable and `recv` can be called again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioProtocolError {
    /// What was wrong, followed by (a prefix of) the offending message.
    pub message: String,
}

impl fmt::Display for TwilioProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Twilio protocol violation: {}", self.message)
    }
}

impl std::error::Error for TwilioProtocolError {}

/// Validates one text message the relay sent to Twilio, exactly as Twilio's rules in
/// Twilio Media Streams messages describe, and decodes it.
///
/// `expected_stream_sid` is the `streamSid` of the `start` that was sent, or `None` if no
/// `start` was sent yet (then any message is a violation: Twilio cannot route it).
///
/// Checks: valid JSON object; `event` is one of `media`/`mark`/`clear`; exactly the documented
/// keys at every level (no missing, no extra); all values are strings; `streamSid` matches;
/// `media.payload` is non-empty standard base64 (with padding); `mark.name` is non-empty.
pub fn parse_server_message(
    text: &str,
    expected_stream_sid: Option<&str>,
) -> Result<TwilioInbound, TwilioProtocolError> {
    let rules = PlaybackRules {
        carrier: Twilio::NAME,
        envelope: &["streamSid"],
        forbidden: (&[], ""),
    };
    let msg = carrier::parse_playback_message(text, &rules, |event, obj| {
        let stream_sid = string_field(obj, "streamSid", event)?;
        match expected_stream_sid {
            None => Err(format!("{event} sent before the stream's start")),
            Some(exp) if exp != stream_sid => Err(format!(
                "streamSid {stream_sid:?} does not match the stream's {exp:?}"
            )),
            Some(_) => Ok(()),
        }
    })
    .map_err(|message| TwilioProtocolError { message })?;
    // Only reached when the message's streamSid is the expected one.
    let stream_sid = expected_stream_sid.unwrap_or_default().to_owned();
    Ok(match msg {
        PlaybackMessage::Media(payload) => TwilioInbound::Media {
            stream_sid,
            payload,
        },
        PlaybackMessage::Mark(name) => TwilioInbound::Mark { stream_sid, name },
        PlaybackMessage::Clear => TwilioInbound::Clear { stream_sid },
    })
}

/// The Twilio Media Streams wire (see the [module docs](self)); the type parameter of the
/// shared caller's types behind [`TwilioClient`], [`CallScript`] and the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Twilio;

impl CarrierWire for Twilio {
    const NAME: &'static str = "Twilio";
    type Start = StartParams;
    type Inbound = TwilioInbound;
    type ProtocolError = TwilioProtocolError;

    /// `{"event":"connected","protocol":"Call","version":"1.0.0"}`.
    fn connected() -> String {
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_owned()
    }

    /// `start` with `tracks: ["inbound"]` and `mediaFormat {encoding:"audio/x-mulaw",
    /// sampleRate:8000, channels:1}`, `streamSid` inside `start` and at the top level.
    fn start(sequence: u64, params: &StartParams) -> String {
        let mut custom = serde_json::Map::new();
        for (k, v) in &params.custom_parameters {
            custom.insert(k.clone(), Value::String(v.clone()));
        }
        format!(
            concat!(
                r#"{{"event":"start","sequenceNumber":"{}","start":{{"accountSid":{},"#,
                r#""streamSid":{},"callSid":{},"tracks":["inbound"],"#,
                r#""mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"#,
                r#""customParameters":{}}},"streamSid":{}}}"#
            ),
            sequence,
            js(&params.account_sid),
            js(&params.stream_sid),
            js(&params.call_sid),
            Value::Object(custom),
            js(&params.stream_sid),
        )
    }

    /// Inbound `media` with `track:"inbound"`.
    fn media(n: MediaNumbers, payload_b64: &str, start: Option<&StartParams>) -> String {
        format!(
            concat!(
                r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","#,
                r#""chunk":"{}","timestamp":"{}","payload":"{}"}},"streamSid":{}}}"#
            ),
            n.sequence,
            n.chunk,
            n.timestamp_ms,
            payload_b64,
            js(stream_sid(start))
        )
    }

    fn mark(sequence: u64, name: &str, start: Option<&StartParams>) -> String {
        format!(
            r#"{{"event":"mark","sequenceNumber":"{}","streamSid":{},"mark":{{"name":{}}}}}"#,
            sequence,
            js(stream_sid(start)),
            js(name)
        )
    }

    /// `dtmf` with `track:"inbound_track"`.
    fn dtmf(sequence: u64, digit: &str, start: Option<&StartParams>) -> String {
        format!(
            concat!(
                r#"{{"event":"dtmf","streamSid":{},"sequenceNumber":"{}","#,
                r#""dtmf":{{"track":"inbound_track","digit":{}}}}}"#
            ),
            js(stream_sid(start)),
            sequence,
            js(digit)
        )
    }

    /// `stop` with the `accountSid`/`callSid` from `start` (empty strings without one).
    fn stop(sequence: u64, start: Option<&StartParams>) -> String {
        let (account, call) = match start {
            Some(s) => (s.account_sid.as_str(), s.call_sid.as_str()),
            None => ("", ""),
        };
        format!(
            concat!(
                r#"{{"event":"stop","sequenceNumber":"{}","stop":{{"accountSid":{},"#,
                r#""callSid":{}}},"streamSid":{}}}"#
            ),
            sequence,
            js(account),
            js(call),
            js(stream_sid(start))
        )
    }

    fn parse(
        text: &str,
        start: Option<&StartParams>,
    ) -> Result<TwilioInbound, TwilioProtocolError> {
        parse_server_message(text, start.map(|s| s.stream_sid.as_str()))
    }

    fn binary_frame(len: usize) -> TwilioProtocolError {
        TwilioProtocolError {
            message: format!(
                "binary frame ({len} bytes); Twilio accepts only text frames (warning 31950)"
            ),
        }
    }

    fn close(code: Option<u16>, reason: String) -> TwilioInbound {
        TwilioInbound::Close { code, reason }
    }

    fn view(msg: &TwilioInbound) -> InboundView<'_> {
        match msg {
            TwilioInbound::Media { payload, .. } => InboundView::Media(payload),
            TwilioInbound::Mark { name, .. } => InboundView::Mark(name),
            TwilioInbound::Clear { .. } => InboundView::Clear,
            TwilioInbound::Close { code, .. } => InboundView::Close(*code),
        }
    }
}

/// The `streamSid` of `start`, or `""` before it.
fn stream_sid(start: Option<&StartParams>) -> &str {
    start.map_or("", |s| s.stream_sid.as_str())
}

/// Sending half of a simulated Twilio connection ([`CarrierSender`] on the [`Twilio`] wire;
/// see there for the numbering). Cheap to clone, usable from several tasks.
pub type TwilioSender = CarrierSender<Twilio>;

/// Receiving half of a simulated Twilio connection ([`CarrierReceiver`] on the [`Twilio`]
/// wire). `recv` validates with [`parse_server_message`]; it is not cancel-safe.
pub type TwilioReceiver = CarrierReceiver<Twilio>;

/// A connected simulated Twilio caller ([`CarrierClient`] on the [`Twilio`] wire):
/// `TwilioClient::connect(url, headers)`, then `send_connected`, `send_start`, `send_media`, ….
pub type TwilioClient = CarrierClient<Twilio>;

/// A whole simulated Twilio call for [`run_call`] ([`carrier::CallScript`] on the [`Twilio`]
/// wire): `CallScript::new(url, StartParams::for_call(n), audio)`.
pub type CallScript = carrier::CallScript<Twilio>;

/// Runs one simulated Twilio call against the relay and reports what happened: see
/// [`carrier::run_call`] (connect, `connected`/`start`, paced media, Twilio's playback and
/// mark echoes, `stop`, close).
pub async fn run_call(script: CallScript) -> anyhow::Result<CallReport> {
    carrier::run_call(script).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "MZ00000000000000000000000000000001";

    fn err(text: &str) -> String {
        parse_server_message(text, Some(SID)).unwrap_err().message
    }

    #[test]
    fn accepts_documented_shapes() {
        let m = parse_server_message(
            &format!(r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"/38="}}}}"#),
            Some(SID),
        )
        .unwrap();
        assert_eq!(
            m,
            TwilioInbound::Media {
                stream_sid: SID.into(),
                payload: vec![0xFF, 0x7F]
            }
        );
        let m = parse_server_message(
            &format!(r#"{{"event":"mark","streamSid":"{SID}","mark":{{"name":"r1:c2"}}}}"#),
            Some(SID),
        )
        .unwrap();
        assert!(matches!(m, TwilioInbound::Mark { name, .. } if name == "r1:c2"));
        let m = parse_server_message(
            &format!(r#"{{"event":"clear","streamSid":"{SID}"}}"#),
            Some(SID),
        )
        .unwrap();
        assert!(matches!(m, TwilioInbound::Clear { .. }));
    }

    #[test]
    fn rejects_violations() {
        assert!(err("not json").contains("invalid JSON"));
        assert!(err("[1]").contains("not a JSON object"));
        assert!(err(r#"{"streamSid":"x"}"#).contains("missing `event`"));
        assert!(
            err(&format!(r#"{{"event":"stop","streamSid":"{SID}"}}"#)).contains("unknown event")
        );
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"AAAA","track":"outbound"}}}}"#
        ))
        .contains("extra field(s) [\"track\"]"));
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","sequenceNumber":"1","media":{{"payload":"AAAA"}}}}"#
        ))
        .contains("extra field(s) [\"sequenceNumber\"]"));
        assert!(err(&format!(r#"{{"event":"media","streamSid":"{SID}"}}"#))
            .contains("missing field(s) [\"media\"]"));
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"!!!"}}}}"#
        ))
        .contains("not valid base64"));
        assert!(err(&format!(
            r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":""}}}}"#
        ))
        .contains("empty"));
        assert!(err(r#"{"event":"clear","streamSid":"MZother"}"#).contains("does not match"));
        assert!(err(&format!(
            r#"{{"event":"mark","streamSid":"{SID}","mark":{{}}}}"#
        ))
        .contains("missing field(s) [\"name\"]"));
        assert!(err(&format!(
            r#"{{"event":"mark","streamSid":"{SID}","mark":{{"name":7}}}}"#
        ))
        .contains("not a string"));
        let before_start =
            parse_server_message(r#"{"event":"clear","streamSid":"MZ1"}"#, None).unwrap_err();
        assert!(before_start.message.contains("before the stream's start"));
    }

    /// The exact bytes of every message the simulated Twilio sends (unchanged by the move onto
    /// the shared caller).
    #[test]
    fn wire_strings_are_exact() {
        let mut p = StartParams::for_call(1);
        p.custom_parameters = vec![("b".into(), "2".into()), ("a".into(), "\"1\"".into())];
        let start = Some(&p);
        assert_eq!(
            Twilio::connected(),
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#
        );
        assert_eq!(
            Twilio::start(1, &p),
            format!(
                concat!(
                    r#"{{"event":"start","sequenceNumber":"1","start":{{"accountSid":"AC{:032x}","#,
                    r#""streamSid":"{sid}","callSid":"CA{:032x}","tracks":["inbound"],"#,
                    r#""mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"#,
                    r#""customParameters":{{"a":"\"1\"","b":"2"}}}},"streamSid":"{sid}"}}"#
                ),
                0xac,
                1,
                sid = SID
            )
        );
        let n = MediaNumbers {
            sequence: 3,
            chunk: 2,
            timestamp_ms: 20,
        };
        assert_eq!(
            Twilio::media(n, "/38=", start),
            format!(
                r#"{{"event":"media","sequenceNumber":"3","media":{{"track":"inbound","chunk":"2","timestamp":"20","payload":"/38="}},"streamSid":"{SID}"}}"#
            )
        );
        assert_eq!(
            Twilio::mark(4, "m\"1", start),
            format!(
                r#"{{"event":"mark","sequenceNumber":"4","streamSid":"{SID}","mark":{{"name":"m\"1"}}}}"#
            )
        );
        assert_eq!(
            Twilio::dtmf(5, "#", start),
            format!(
                r##"{{"event":"dtmf","streamSid":"{SID}","sequenceNumber":"5","dtmf":{{"track":"inbound_track","digit":"#"}}}}"##
            )
        );
        assert_eq!(
            Twilio::stop(6, start),
            format!(
                r#"{{"event":"stop","sequenceNumber":"6","stop":{{"accountSid":"AC{:032x}","callSid":"CA{:032x}"}},"streamSid":"{SID}"}}"#,
                0xac, 1
            )
        );
        assert_eq!(
            Twilio::stop(1, None),
            r#"{"event":"stop","sequenceNumber":"1","stop":{"accountSid":"","callSid":""},"streamSid":""}"#
        );
    }
}

//! TwiML the relay writes (Twilio `<Stream>` TwiML docs,
//! <https://www.twilio.com/docs/voice/twiml/stream>; `<Connect>`,
//! <https://www.twilio.com/docs/voice/twiml/connect>): `<Connect><Stream>` to the relay's media
//! WebSocket with `<Parameter>`s, then `<Hangup/>`, so that when the relay closes the stream
//! the call ends instead of leaving the caller on a silent line. No HTTP here.

use crate::carrier::{parameter_fits, ParameterTooLong, StreamMarkup};
use crate::wire::xml::escape_into;

/// The TwiML document connecting the call to `wss://{host}{media_path}` with the given
/// parameters (in order), stream status callbacks to `https://{host}{status_path}`, and
/// `<Hangup/>` after the stream. Twilio forbids query strings on the stream URL, so all call
/// data travels as parameters and arrives in `start.customParameters`.
///
/// # Errors
/// [`ParameterTooLong`] if any name + value is 500 characters or more.
pub fn connect_stream(
    m: StreamMarkup<'_>,
    media_path: &str,
    status_path: &str,
) -> Result<String, ParameterTooLong> {
    let mut out = String::with_capacity(256);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://",
    );
    escape_into(&mut out, m.host);
    escape_into(&mut out, media_path);
    out.push_str("\" statusCallback=\"https://");
    escape_into(&mut out, m.host);
    escape_into(&mut out, status_path);
    out.push_str("\" statusCallbackMethod=\"POST\">");
    push_parameters(&mut out, m.params)?;
    out.push_str("</Stream></Connect><Hangup/></Response>");
    Ok(out)
}

/// Appends one `<Parameter name value/>` per pair.
///
/// # Errors
/// [`ParameterTooLong`] if any name + value is 500 characters or more.
pub fn push_parameters(out: &mut String, params: &[(&str, &str)]) -> Result<(), ParameterTooLong> {
    for &(name, value) in params {
        if !parameter_fits(name, value) {
            return Err(ParameterTooLong {
                name: name.to_owned(),
            });
        }
        out.push_str("<Parameter name=\"");
        escape_into(out, name);
        out.push_str("\" value=\"");
        escape_into(out, value);
        out.push_str("\"/>");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn markup<'a>(host: &'a str, params: &'a [(&'a str, &'a str)]) -> StreamMarkup<'a> {
        StreamMarkup {
            host,
            params,
            token: None,
        }
    }

    #[test]
    fn builds_connect_stream_with_escaped_parameters_then_hangs_up() {
        let x = connect_stream(
            markup(
                "relay.example.com",
                &[("From", "+1555"), ("prompt", "Say \"hi\" & <b>")],
            ),
            "/media",
            "/stream-status",
        )
        .unwrap();
        assert_eq!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://relay.example.com/media\" statusCallback=\"https://relay.example.com/stream-status\" statusCallbackMethod=\"POST\"><Parameter name=\"From\" value=\"+1555\"/><Parameter name=\"prompt\" value=\"Say &quot;hi&quot; &amp; &lt;b&gt;\"/></Stream></Connect><Hangup/></Response>"
        );
    }

    /// A prompt with line breaks and tabs reaches the agent as written: an XML processor
    /// would turn literal ones in an attribute into spaces. Characters XML 1.0 forbids are
    /// dropped, so the document stays well-formed.
    #[test]
    fn keeps_whitespace_and_drops_non_xml_characters() {
        let x = connect_stream(
            markup(
                "h",
                &[(
                    "prompt",
                    "line 1\nline 2\r\n\tindented\u{1}\u{FFFE}\u{FFFF}\u{FFFD}end",
                )],
            ),
            "/media",
            "/stream-status",
        )
        .unwrap();
        assert!(
            x.contains("value=\"line 1&#10;line 2&#13;&#10;&#9;indented\u{FFFD}end\""),
            "{x}"
        );
    }

    #[test]
    fn refuses_long_parameters() {
        let v = "x".repeat(493);
        assert!(connect_stream(markup("h", &[("prompt", &v)]), "/media", "/s").is_ok());
        let v = "x".repeat(494);
        assert_eq!(
            connect_stream(markup("h", &[("prompt", &v)]), "/media", "/s"),
            Err(ParameterTooLong {
                name: "prompt".into()
            })
        );
    }
}

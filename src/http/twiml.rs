//! TwiML for Twilio's incoming-call webhook: `<Connect><Stream>` pointing at the relay's
//! `/media` WebSocket with `<Parameter>`s (Twilio `<Stream>` TwiML docs, <https://www.twilio.com/docs/voice/twiml/stream>). Owns XML escaping and the
//! parameter length rule; no HTTP here.

use crate::config::MAX_PARAMETER_CHARS;

/// A `<Parameter>` that cannot be emitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stream parameter {name} is too long: name + value must be under {MAX_PARAMETER_CHARS} characters")]
pub struct ParameterTooLong {
    /// The parameter name.
    pub name: String,
}

/// Builds the TwiML document connecting the call to `wss://{public_host}/media` with the
/// given parameters (in order), with stream status callbacks to
/// `https://{public_host}/stream-status`. Twilio forbids query strings on the stream URL, so all call
/// data travels as parameters and arrives in `start.customParameters`.
///
/// # Errors
/// [`ParameterTooLong`] if any name + value is 500 characters or more.
pub fn connect_stream(
    public_host: &str,
    params: &[(&str, &str)],
) -> Result<String, ParameterTooLong> {
    let mut out = String::with_capacity(256);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://",
    );
    escape_into(&mut out, public_host);
    out.push_str("/media\" statusCallback=\"https://");
    escape_into(&mut out, public_host);
    out.push_str("/stream-status\" statusCallbackMethod=\"POST\">");
    for &(name, value) in params {
        if name.chars().count() + value.chars().count() >= MAX_PARAMETER_CHARS {
            return Err(ParameterTooLong {
                name: name.to_owned(),
            });
        }
        out.push_str("<Parameter name=\"");
        escape_into(&mut out, name);
        out.push_str("\" value=\"");
        escape_into(&mut out, value);
        out.push_str("\"/>");
    }
    out.push_str("</Stream></Connect></Response>");
    Ok(out)
}

/// Escapes `s` for an XML attribute value. Tab, LF and CR become character references, so
/// they survive attribute-value normalisation (an XML processor reads a literal one as a
/// space; XML 1.0 §3.3.3); characters XML 1.0 does not allow at all (§2.2: other C0
/// controls, U+FFFE, U+FFFF) are dropped.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_connect_stream_with_escaped_parameters() {
        let x = connect_stream(
            "relay.example.com",
            &[("From", "+1555"), ("prompt", "Say \"hi\" & <b>")],
        )
        .unwrap();
        assert_eq!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://relay.example.com/media\" statusCallback=\"https://relay.example.com/stream-status\" statusCallbackMethod=\"POST\"><Parameter name=\"From\" value=\"+1555\"/><Parameter name=\"prompt\" value=\"Say &quot;hi&quot; &amp; &lt;b&gt;\"/></Stream></Connect></Response>"
        );
    }

    /// A prompt with line breaks and tabs reaches the agent as written: an XML processor
    /// would turn literal ones in an attribute into spaces. Characters XML 1.0 forbids are
    /// dropped, so the document stays well-formed.
    #[test]
    fn keeps_whitespace_and_drops_non_xml_characters() {
        let x = connect_stream(
            "h",
            &[(
                "prompt",
                "line 1\nline 2\r\n\tindented\u{1}\u{FFFE}\u{FFFF}\u{FFFD}end",
            )],
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
        assert!(connect_stream("h", &[("prompt", &v)]).is_ok());
        let v = "x".repeat(494);
        assert_eq!(
            connect_stream("h", &[("prompt", &v)]),
            Err(ParameterTooLong {
                name: "prompt".into()
            })
        );
    }
}

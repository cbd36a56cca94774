//! Transfer markup: the `<Dial>` a live call is redirected to, the whisper the person who
//! answers hears, and `<Hangup/>`. TwiML and TeXML share these verbs (Twilio `<Dial>`,
//! <https://www.twilio.com/docs/voice/twiml/dial>; `<Number url>` whisper,
//! <https://www.twilio.com/docs/voice/twiml/number>; `<Sip>`,
//! <https://www.twilio.com/docs/voice/twiml/sip>; Telnyx TeXML `<Dial>`,
//! <https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/dial>). No HTTP here.

use crate::wire::xml::escape_into;

/// Longest markup a live call may be updated with inline (Twilio error 32018: "Twiml size
/// exceeded maximum allowed value of 4000 characters").
pub const MAX_UPDATE_MARKUP_CHARS: usize = 4000;

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferDest {
    /// A phone number (E.164), dialled with `<Number>`.
    Number(String),
    /// A SIP URI (`sip:queue@pbx.example.com`), dialled with `<Sip>`.
    Sip(String),
}

impl TransferDest {
    /// Parses `+15551230001` or `sip:…` / `sips:…` with an `@` (at most 256 characters, no
    /// spaces or control characters); `None` for anything else.
    pub fn parse(s: &str) -> Option<TransferDest> {
        let s = s.trim();
        if is_e164(s) {
            Some(TransferDest::Number(s.to_owned()))
        } else if (s.starts_with("sip:") || s.starts_with("sips:"))
            && s.len() <= 256
            && s.contains('@')
            && !s.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            Some(TransferDest::Sip(s.to_owned()))
        } else {
            None
        }
    }

    /// The number or URI.
    pub fn as_str(&self) -> &str {
        match self {
            TransferDest::Number(n) | TransferDest::Sip(n) => n,
        }
    }
}

/// `^\+[1-9][0-9]{1,14}$`: an E.164 number. The one home of that rule.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A transfer's `<Dial>`.
#[derive(Debug, Clone, Copy)]
pub struct DialMarkup<'a> {
    /// Who to dial.
    pub dest: &'a TransferDest,
    /// The `action` URL the carrier posts `DialCallStatus` to when the dial ends.
    pub action_url: &'a str,
    /// The whisper URL run on the answering party's leg before the caller is joined.
    pub whisper_url: Option<&'a str>,
    /// Ring time, seconds.
    pub timeout_secs: u32,
    /// `answerOnBridge="true"`: the caller hears ringing, not silence, until the person is
    /// joined (Twilio).
    pub answer_on_bridge: bool,
}

/// `<Response><Dial action timeout [answerOnBridge]><Number|Sip [url]>dest</…></Dial></Response>`.
pub fn dial(m: DialMarkup<'_>) -> String {
    let mut out = String::with_capacity(256 + m.action_url.len());
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial action=\"");
    escape_into(&mut out, m.action_url);
    out.push_str("\" method=\"POST\" timeout=\"");
    out.push_str(&m.timeout_secs.to_string());
    out.push('"');
    if m.answer_on_bridge {
        out.push_str(" answerOnBridge=\"true\"");
    }
    out.push('>');
    let noun = match m.dest {
        TransferDest::Number(_) => "Number",
        TransferDest::Sip(_) => "Sip",
    };
    out.push('<');
    out.push_str(noun);
    if let Some(url) = m.whisper_url {
        out.push_str(" url=\"");
        escape_into(&mut out, url);
        out.push_str("\" method=\"POST\"");
    }
    out.push('>');
    escape_into(&mut out, m.dest.as_str());
    out.push_str("</");
    out.push_str(noun);
    out.push_str("></Dial></Response>");
    out
}

/// `<Response><Say>text</Say></Response>`: the whisper (the text escaped).
pub fn say(text: &str) -> String {
    let mut out = String::with_capacity(96 + text.len());
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>");
    escape_into(&mut out, text);
    out.push_str("</Say></Response>");
    out
}

/// `<Response><Hangup/></Response>`.
pub fn hangup() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Hangup/></Response>".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_numbers_or_sip_uris() {
        assert_eq!(
            TransferDest::parse(" +15551230001 "),
            Some(TransferDest::Number("+15551230001".into()))
        );
        assert_eq!(
            TransferDest::parse("sip:queue@pbx.example.com"),
            Some(TransferDest::Sip("sip:queue@pbx.example.com".into()))
        );
        for bad in [
            "15551230001",
            "+0555",
            "sip:nohost",
            "sip:a b@c",
            "tel:+1555",
            "",
        ] {
            assert_eq!(TransferDest::parse(bad), None, "{bad}");
        }
        assert!(is_e164("+15551230001"));
        assert!(!is_e164("+1"));
        assert!(!is_e164("+1234567890123456"));
    }

    #[test]
    fn dial_markup_escapes_urls_and_names_the_noun() {
        let dest = TransferDest::Number("+15551230001".into());
        let x = dial(DialMarkup {
            dest: &dest,
            action_url: "https://r.example/twiml/dial-result?call=CA1&sig=x",
            whisper_url: Some("https://r.example/twiml/whisper?s=a&sig=y"),
            timeout_secs: 25,
            answer_on_bridge: true,
        });
        assert_eq!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial action=\"https://r.example/twiml/dial-result?call=CA1&amp;sig=x\" method=\"POST\" timeout=\"25\" answerOnBridge=\"true\"><Number url=\"https://r.example/twiml/whisper?s=a&amp;sig=y\" method=\"POST\">+15551230001</Number></Dial></Response>"
        );
        let sip = TransferDest::Sip("sip:desk@pbx.example.com".into());
        let x = dial(DialMarkup {
            dest: &sip,
            action_url: "https://r/a",
            whisper_url: None,
            timeout_secs: 30,
            answer_on_bridge: false,
        });
        assert!(
            x.contains("timeout=\"30\"><Sip>sip:desk@pbx.example.com</Sip></Dial>"),
            "{x}"
        );
    }

    #[test]
    fn the_whisper_escapes_xml_metacharacters() {
        assert_eq!(
            say("VIP <caller> & \"urgent\""),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>VIP &lt;caller&gt; &amp; &quot;urgent&quot;</Say></Response>"
        );
        assert!(hangup().ends_with("<Response><Hangup/></Response>"));
    }
}

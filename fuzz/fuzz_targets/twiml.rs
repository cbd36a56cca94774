//! `http::twiml::connect_stream` on the parameters `/twiml` puts in it: `From`, `To`,
//! `CallSid` from the webhook's form body (decoded with `form_urlencoded` as the server
//! does), then arbitrary named parameters (the configured agent settings), and an arbitrary
//! public host.
//!
//! Input: `[public host]\0[webhook form body]\0[extra parameters, form-encoded]`.
//!
//! Checks, besides "never panics":
//! - `ParameterTooLong` exactly when some name + value has 500 or more characters, naming
//!   the first such parameter;
//! - otherwise the output is well-formed XML 1.0 (quick-xml parses it; every character is an
//!   XML `Char`; attribute values hold no raw `<` and only valid references), with the
//!   `Response/Connect/Stream` structure and one `Parameter` per parameter, in order;
//! - every parameter name and value reads back, as an XML processor reports it (attribute
//!   value normalisation, XML 1.0 §3.3.3, included: that is what Twilio's parser sees), as
//!   exactly the input less the characters the relay documents dropping (those XML 1.0
//!   does not allow: U+0000–U+001F other than tab, LF, CR, and U+FFFE, U+FFFF);
//! - the stream URL and status callback carry the host the same way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use media_relay::config::MAX_PARAMETER_CHARS;
use media_relay::http::twiml::connect_stream;
use media_relay_fuzz::records;
use quick_xml::events::Event;
use quick_xml::Reader;

/// XML 1.0 §2.2 `Char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// What the relay promises to carry: the text less the characters XML 1.0 does not allow
/// (C0 controls other than tab, LF, CR; U+FFFE, U+FFFF), which it drops.
fn expected(s: &str) -> String {
    s.chars().filter(|&c| is_xml_char(c)).collect()
}

/// The value an XML processor reports for a raw (still escaped) attribute value: line ends
/// normalised (§2.11), then literal white space → space and references expanded (§3.3.3).
fn attribute_value(raw: &[u8]) -> String {
    let raw = std::str::from_utf8(raw).expect("attribute value is UTF-8");
    assert!(!raw.contains('<'), "raw '<' in an attribute value: {raw:?}");
    let lines = raw.replace("\r\n", "\n").replace('\r', "\n");
    let spaced: String = lines
        .chars()
        .map(|c| if matches!(c, '\t' | '\n') { ' ' } else { c })
        .collect();
    quick_xml::escape::unescape(&spaced)
        .unwrap_or_else(|e| panic!("bad reference in attribute value {raw:?}: {e}"))
        .into_owned()
}

fn attrs(e: &quick_xml::events::BytesStart<'_>) -> Vec<(String, String)> {
    e.attributes()
        .map(|a| {
            let a = a.expect("well-formed attribute");
            (
                String::from_utf8(a.key.as_ref().to_vec()).expect("UTF-8 name"),
                attribute_value(&a.value),
            )
        })
        .collect()
}

fn name_of(e: &quick_xml::events::BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.name().as_ref()).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let mut r = records(data);
    let host = String::from_utf8_lossy(r.next().unwrap_or_default()).into_owned();
    let body = r.next().unwrap_or_default();
    let extra = r.next().unwrap_or_default();

    // As `/twiml` does: From, To, CallSid from the form body, then the agent parameters.
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let extra: Vec<(String, String)> = form_urlencoded::parse(extra).into_owned().collect();
    let mut params: Vec<(&str, &str)> = Vec::new();
    for k in ["From", "To", "CallSid"] {
        if let Some(v) = get(k) {
            params.push((k, v));
        }
    }
    for (k, v) in &extra {
        params.push((k, v));
    }

    let too_long = params
        .iter()
        .find(|(n, v)| n.chars().count() + v.chars().count() >= MAX_PARAMETER_CHARS);
    let xml = match connect_stream(&host, &params) {
        Ok(xml) => {
            assert!(
                too_long.is_none(),
                "accepted a too-long parameter {too_long:?}"
            );
            xml
        }
        Err(e) => {
            let (name, _) = too_long.expect("refused parameters that are not too long");
            assert_eq!(e.name, *name, "named another parameter");
            let _ = e.to_string();
            return;
        }
    };

    if let Some(c) = xml.chars().find(|&c| !is_xml_char(c)) {
        panic!(
            "TwiML holds U+{:04X}, not an XML 1.0 character: {xml:?}",
            c as u32
        );
    }

    let mut reader = Reader::from_str(&xml);
    reader.config_mut().check_end_names = true;
    let mut path: Vec<String> = Vec::new();
    let mut got: Vec<(String, String)> = Vec::new();
    let mut stream_attrs = None;
    loop {
        let ev = reader
            .read_event()
            .unwrap_or_else(|e| panic!("TwiML is not well-formed ({e}): {xml:?}"));
        match ev {
            Event::Decl(_) => assert!(path.is_empty()),
            Event::Start(e) => {
                let n = name_of(&e);
                let want = ["Response", "Connect", "Stream"].get(path.len()).copied();
                assert_eq!(Some(n.as_str()), want, "unexpected <{n}> in {xml:?}");
                if n == "Stream" {
                    stream_attrs = Some(attrs(&e));
                }
                path.push(n);
            }
            Event::Empty(e) => {
                assert_eq!(name_of(&e), "Parameter", "unexpected element in {xml:?}");
                assert_eq!(path.len(), 3, "<Parameter> outside <Stream>: {xml:?}");
                let a = attrs(&e);
                assert_eq!(a.len(), 2, "Parameter attributes {a:?}");
                assert_eq!((a[0].0.as_str(), a[1].0.as_str()), ("name", "value"));
                got.push((a[0].1.clone(), a[1].1.clone()));
            }
            Event::End(e) => {
                let n = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                assert_eq!(path.pop().as_deref(), Some(n.as_str()));
            }
            Event::Text(t) => panic!("text {t:?} in {xml:?}"),
            Event::Eof => break,
            other => panic!("unexpected {other:?} in {xml:?}"),
        }
    }
    assert!(path.is_empty(), "unclosed {path:?}");

    let host_seen = expected(&host);
    let stream = stream_attrs.expect("a <Stream>");
    assert_eq!(
        stream,
        vec![
            ("url".to_owned(), format!("wss://{host_seen}/media")),
            (
                "statusCallback".to_owned(),
                format!("https://{host_seen}/stream-status")
            ),
            ("statusCallbackMethod".to_owned(), "POST".to_owned()),
        ],
        "Stream attributes"
    );
    let want: Vec<(String, String)> = params
        .iter()
        .map(|(n, v)| (expected(n), expected(v)))
        .collect();
    assert_eq!(got, want, "parameters did not round-trip through the TwiML");
});

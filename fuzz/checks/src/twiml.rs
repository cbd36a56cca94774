use crate::records;
use media_relay::carrier::twilio::markup::connect_stream;
use media_relay::carrier::{parameter_fits, CarrierKind, StreamMarkup, MAX_PARAMETER_CHARS};
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

/// The `<Stream>` attributes and the `<Parameter>` (name, value) pairs of a document.
type Parsed = (Vec<(String, String)>, Vec<(String, String)>);

/// Parses `xml` as an XML processor would, checking it is well-formed XML 1.0 with exactly
/// the shape `<Response><Connect><Stream …><Parameter …/>…</Stream></Connect><Hangup/>
/// </Response>`; returns the values an XML processor reports.
fn parse(xml: &str) -> Parsed {
    if let Some(c) = xml.chars().find(|&c| !is_xml_char(c)) {
        panic!(
            "markup holds U+{:04X}, not an XML 1.0 character: {xml:?}",
            c as u32
        );
    }
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut shape: Vec<String> = Vec::new();
    let mut got: Vec<(String, String)> = Vec::new();
    let mut stream_attrs = None;
    let mut decl = false;
    loop {
        let ev = reader
            .read_event()
            .unwrap_or_else(|e| panic!("markup is not well-formed ({e}): {xml:?}"));
        match ev {
            Event::Decl(_) => {
                assert!(
                    shape.is_empty() && !decl,
                    "misplaced declaration in {xml:?}"
                );
                decl = true;
            }
            Event::Start(e) => {
                let n = name_of(&e);
                if n == "Stream" {
                    stream_attrs = Some(attrs(&e));
                } else {
                    assert!(attrs(&e).is_empty(), "<{n}> has attributes in {xml:?}");
                }
                shape.push(format!("<{n}>"));
            }
            Event::Empty(e) => {
                let n = name_of(&e);
                let a = attrs(&e);
                if n == "Parameter" {
                    assert_eq!(a.len(), 2, "Parameter attributes {a:?}");
                    assert_eq!((a[0].0.as_str(), a[1].0.as_str()), ("name", "value"));
                    got.push((a[0].1.clone(), a[1].1.clone()));
                } else {
                    assert!(a.is_empty(), "<{n}/> has attributes in {xml:?}");
                }
                shape.push(format!("<{n}/>"));
            }
            Event::End(e) => {
                let n = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                shape.push(format!("</{n}>"));
            }
            Event::Text(t) => panic!("text {t:?} in {xml:?}"),
            Event::Eof => break,
            other => panic!("unexpected {other:?} in {xml:?}"),
        }
    }
    let mut want: Vec<String> = ["<Response>", "<Connect>", "<Stream>"]
        .map(String::from)
        .to_vec();
    want.extend(std::iter::repeat_n("<Parameter/>".to_owned(), got.len()));
    want.extend(["</Stream>", "</Connect>", "<Hangup/>", "</Response>"].map(String::from));
    assert!(decl, "no XML declaration in {xml:?}");
    assert_eq!(shape, want, "unexpected document structure: {xml:?}");
    (stream_attrs.expect("a <Stream>"), got)
}

/// Markup for the stream: `connect_stream` (Twilio `/twiml`), or the Telnyx TeXML; what the
/// relay would answer, and how the document must read back.
fn check_markup(
    carrier: CarrierKind,
    host: &str,
    params: &[(&str, &str)],
    token: Option<&str>,
    too_long: Option<&(&str, &str)>,
) {
    let m = StreamMarkup {
        host,
        params,
        token,
    };
    let res = match carrier {
        CarrierKind::Twilio => {
            let r = connect_stream(m, "/media", "/stream-status");
            assert_eq!(
                r,
                carrier.control().connect_markup(m),
                "the Twilio carrier writes other TwiML than connect_stream"
            );
            r
        }
        other => other.control().connect_markup(m),
    };
    let xml = match res {
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

    let (stream, got) = parse(&xml);
    let host_seen = expected(host);
    let routes = carrier.routes();
    let want_stream: Vec<(String, String)> = match carrier {
        CarrierKind::Twilio => vec![
            ("url".to_owned(), format!("wss://{host_seen}/media")),
            (
                "statusCallback".to_owned(),
                format!("https://{host_seen}/stream-status"),
            ),
            ("statusCallbackMethod".to_owned(), "POST".to_owned()),
        ],
        CarrierKind::Telnyx => {
            let query = token.map_or(String::new(), |t| {
                let t: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
                format!("?relay_token={t}")
            });
            vec![
                (
                    "url".to_owned(),
                    format!("wss://{host_seen}{}{query}", routes.media),
                ),
                ("bidirectionalMode".to_owned(), "rtp".to_owned()),
                ("bidirectionalCodec".to_owned(), "PCMU".to_owned()),
                ("bidirectionalSamplingRate".to_owned(), "8000".to_owned()),
                (
                    "statusCallback".to_owned(),
                    format!("https://{host_seen}{}", routes.stream_status),
                ),
                ("statusCallbackMethod".to_owned(), "POST".to_owned()),
            ]
        }
    };
    assert_eq!(stream, want_stream, "{carrier:?} Stream attributes");
    let want: Vec<(String, String)> = params
        .iter()
        .map(|(n, v)| (expected(n), expected(v)))
        .collect();
    assert_eq!(
        got, want,
        "parameters did not round-trip through the {carrier:?} markup"
    );
}

/// `carrier::twilio::markup::connect_stream` on the parameters `/twiml` puts in it: `From`,
/// `To`, `CallSid` from the webhook's form body (decoded with `form_urlencoded` as the server
/// does), then arbitrary named parameters (the configured agent settings), and an arbitrary
/// public host; the same parameters through the Telnyx TeXML (`connect_markup`, with the
/// `relay_token` parameter, if any, as the stream URL's token).
///
/// Input: `[public host]\0[webhook form body]\0[extra parameters, form-encoded]`.
///
/// Checks, besides "never panics":
/// - `ParameterTooLong` exactly when some name + value has 500 or more characters, naming
///   the first such parameter (and `parameter_fits` says the same);
/// - otherwise the output is well-formed XML 1.0 (quick-xml parses it; every character is an
///   XML `Char`; attribute values hold no raw `<` and only valid references), with exactly
///   the `Response/Connect/Stream` structure, one `Parameter` per parameter, in order, and
///   `<Hangup/>` after `</Connect>`;
/// - every parameter name and value reads back, as an XML processor reports it (attribute
///   value normalisation, XML 1.0 §3.3.3, included: that is what Twilio's parser sees), as
///   exactly the input less the characters the relay documents dropping (those XML 1.0
///   does not allow: U+0000–U+001F other than tab, LF, CR, and U+FFFE, U+FFFF);
/// - the stream URL and status callback carry the host the same way (TeXML: the token
///   form-encoded in the URL, bidirectional RTP PCMU at 8000 Hz);
/// - the Twilio carrier's `connect_markup` is `connect_stream` on its routes.
pub fn twiml(data: &[u8]) {
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
    for (n, v) in &params {
        assert_eq!(
            parameter_fits(n, v),
            n.chars().count() + v.chars().count() < MAX_PARAMETER_CHARS,
            "parameter_fits({n:?}, {v:?})"
        );
    }
    let token = params
        .iter()
        .find(|(n, _)| *n == "relay_token")
        .map(|(_, v)| *v);
    check_markup(CarrierKind::Twilio, &host, &params, None, too_long);
    check_markup(CarrierKind::Telnyx, &host, &params, token, too_long);
}

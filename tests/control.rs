//! `POST /outbound-call` against a local mock Twilio REST server, the signed TwiML fetch
//! `POST /twiml/outbound` that binds an outbound call's stream to its call SID on any
//! instance, and the signed status callbacks `POST /call-status` / `POST /stream-status`.
//! Everything over loopback with the real relay.

mod common;
#[path = "common/twilio_rest.rs"]
mod twilio_rest;

use common::*;
use media_relay::auth::Secret;
use media_relay::carrier::twilio::signature::compute_signature;
use media_relay::config::ServeArgs;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twilio_rest::MockTwilio;

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "token";
const API_TOKEN: &str = "api-secret";
const BEARER: &str = "Bearer api-secret";

fn control_args(twilio_api_base: &str) -> ServeArgs {
    let mut a = args();
    a.carriers.twilio.twilio_auth_token = Some(Secret::new(AUTH_TOKEN));
    a.http.public_host = Some("relay.example.com".into());
    a.carriers.twilio.twilio_account_sid = Some(ACCOUNT_SID.into());
    a.http.relay_api_token = Some(Secret::new(API_TOKEN));
    a.carriers.twilio.twilio_api_base = twilio_api_base.into();
    a
}

/// A raw HTTP/1.1 response.
struct Answer {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts a JSON error with `code` and a non-empty message.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let j = self.json();
        assert_eq!(j["error"], code, "{j}");
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
    }
}

/// One request with `Connection: close` and the given extra headers.
async fn send(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The relay may answer 413 before reading a large body: ignore a failed write.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn outbound(addr: SocketAddr, auth: Option<&str>, body: &str) -> Answer {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    send(
        addr,
        "/outbound-call",
        &headers,
        "application/json",
        body.as_bytes(),
    )
    .await
}

/// A signed (or not) form-encoded status callback.
async fn callback(
    addr: SocketAddr,
    path: &str,
    params: &[(&str, &str)],
    signature: Option<&str>,
) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let headers: Vec<(&str, &str)> = signature
        .map(|s| ("X-Twilio-Signature", s))
        .into_iter()
        .collect();
    send(
        addr,
        path,
        &headers,
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    )
    .await
}

fn sign(path: &str, params: &[(&str, &str)]) -> String {
    compute_signature(
        AUTH_TOKEN.as_bytes(),
        &format!("https://relay.example.com{path}"),
        params,
    )
}

/// The query of the signed TwiML URL of Twilio request `i`, decoded into pairs.
fn url_params(twilio: &MockTwilio, i: usize) -> Vec<(String, String)> {
    let url = twilio.requests()[i].form_values("Url")[0].clone();
    let query = url.split_once('?').expect("a query").1.to_owned();
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// What Twilio does when the callee answers: POST the call's `Url` with the call's form
/// (`CallSid` among the usual voice parameters), signed over the URL and the form.
async fn fetch_twiml(addr: SocketAddr, url: &str, call_sid: &str) -> Answer {
    fetch_twiml_with(addr, url, call_sid, &[]).await
}

/// [`fetch_twiml`] with more form fields (e.g. `AnsweredBy` after machine detection).
async fn fetch_twiml_with(
    addr: SocketAddr,
    url: &str,
    call_sid: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let path_and_query = url
        .strip_prefix("https://relay.example.com")
        .expect("the relay's public origin");
    let mut params = vec![
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", call_sid),
        ("CallStatus", "in-progress"),
        ("Direction", "outbound-api"),
        ("From", "+15557654321"),
        ("To", "+15551230001"),
    ];
    params.extend_from_slice(extra);
    let sig = sign(path_and_query, &params);
    callback(addr, path_and_query, &params, Some(&sig)).await
}

/// The value of `<Parameter name="{name}" value="…"/>` in TwiML, if present.
fn twiml_parameter(twiml: &str, name: &str) -> Option<String> {
    let marker = format!("<Parameter name=\"{name}\" value=\"");
    let rest = twiml.split(&marker).nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_sends_the_exact_twilio_request() {
    let twilio = MockTwilio::start().await;
    let mut a = control_args(&twilio.origin());
    a.call.agent_prompt = Some("configured prompt".into());
    a.call.agent_language = Some("en".into());
    let relay = start_relay(a).await;

    let body = serde_json::json!({
        "to": "+15551230001",
        "from": "+15557654321",
        "prompt": "You are calling about order 42.",
        "first_message": "Hi, this is Acme & Co.",
        "dynamic_variables": {"customer_name": "Ada", "order_total": 42.5, "vip": true},
        "agent": "echo",
        "agent_id": "sales_agent-1"
    });
    let r = outbound(relay.addr, Some(BEARER), &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"call_sid": twilio_rest::call_sid(0)})
    );

    let reqs = twilio.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json")
    );
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"));
    assert_eq!(
        req.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );

    let form = req.form();
    let names: Vec<&str> = form.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "To",
            "From",
            "Url",
            "Method",
            "StatusCallback",
            "StatusCallbackMethod",
            "StatusCallbackEvent",
            "StatusCallbackEvent",
            "StatusCallbackEvent",
            "StatusCallbackEvent"
        ],
        "exactly these form fields"
    );
    assert_eq!(req.form_values("To"), ["+15551230001"]);
    assert_eq!(req.form_values("Method"), ["POST"]);
    assert_eq!(req.form_values("From"), ["+15557654321"]);
    // The status callback carries the call's to/from/agent, signed by the relay (for its
    // call_initiation_failure record).
    let status_url = req.form_values("StatusCallback")[0].clone();
    let status_query = status_url
        .strip_prefix("https://relay.example.com/call-status?")
        .unwrap_or_else(|| panic!("{status_url}"));
    let sq: Vec<(String, String)> = form_urlencoded::parse(status_query.as_bytes())
        .into_owned()
        .collect();
    let names: Vec<&str> = sq.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["to", "from", "agent", "exp", "sig"], "{status_url}");
    assert_eq!(sq[0].1, "+15551230001");
    assert_eq!(sq[2].1, "echo");
    assert_eq!(req.form_values("StatusCallbackMethod"), ["POST"]);
    assert_eq!(
        req.form_values("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    // The raw body encodes `+` (a literal `+` would decode to a space at Twilio).
    let raw = String::from_utf8(req.body.clone()).unwrap();
    assert!(raw.contains("To=%2B15551230001"), "{raw}");

    let url = req.form_values("Url")[0].clone();
    assert!(
        url.starts_with("https://relay.example.com/twiml/outbound?"),
        "{url}"
    );
    let params = url_params(&twilio, 0);
    let p = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    // Request values override the configured prompt; other settings stay.
    assert_eq!(
        p("prompt").as_deref(),
        Some("You are calling about order 42.")
    );
    assert_eq!(
        p("first_message").as_deref(),
        Some("Hi, this is Acme & Co.")
    );
    assert_eq!(p("language").as_deref(), Some("en"));
    assert_eq!(p("customer_name").as_deref(), Some("Ada"));
    assert_eq!(p("order_total").as_deref(), Some("42.5"));
    assert_eq!(p("vip").as_deref(), Some("true"));
    assert_eq!(p("agent").as_deref(), Some("echo"));
    assert_eq!(p("relay_agent_id").as_deref(), Some("sales_agent-1"));
    assert!(p("exp").is_some() && p("sig").is_some());
    assert!(
        p("relay_token").is_none(),
        "the token is bound when Twilio fetches the URL"
    );
    let twiml = url.clone();
    // Secrets never travel in the TwiML (the auth token is literally "token" here).
    assert!(!twiml.contains(API_TOKEN), "{twiml}");
    assert!(!twiml.contains(&format!("\"{AUTH_TOKEN}\"")), "{twiml}");

    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(&m, r#"relay_outbound_calls_total{result="placed"}"#),
        1.0,
        "{m}"
    );

    // A second call without a prompt gets the configured one.
    let r = outbound(
        relay.addr,
        Some(BEARER),
        r#"{"to":"+15551230002","from":"+15557654321"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let params2 = url_params(&twilio, 1);
    assert!(params2.contains(&("prompt".into(), "configured prompt".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_defaults_to_the_configured_number() {
    let twilio = MockTwilio::start().await;
    let mut a = control_args(&twilio.origin());
    a.carriers.twilio.twilio_phone_number = Some("+15550001111".into());
    let relay = start_relay(a).await;
    let r = outbound(relay.addr, Some(BEARER), r#"{"to":"+15551230001"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(twilio.requests()[0].form_values("From"), ["+15550001111"]);

    // Without TWILIO_PHONE_NUMBER, `from` is required.
    let relay2 = start_relay(control_args(&twilio.origin())).await;
    outbound(relay2.addr, Some(BEARER), r#"{"to":"+15551230001"}"#)
        .await
        .assert_error(400, "missing_from");
    assert_eq!(twilio.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_requires_the_bearer_token() {
    let twilio = MockTwilio::start().await;
    let relay = start_relay(control_args(&twilio.origin())).await;
    let body = r#"{"to":"+15551230001","from":"+15557654321"}"#;
    for auth in [
        None,
        Some("Bearer wrong-secret"),
        Some("Bearer api-secre"),
        Some("Bearer api-secret-and-more"),
        Some("Basic YXBpLXNlY3JldA=="),
        Some("api-secret"),
        Some("Bearer "),
    ] {
        let r = outbound(relay.addr, auth, body).await;
        r.assert_error(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{auth:?}");
    }
    assert!(twilio.requests().is_empty(), "nothing reached Twilio");
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(&m, r#"relay_outbound_calls_total{result="unauthorized"}"#),
        7.0,
        "{m}"
    );
    // The scheme is case-insensitive.
    let r = outbound(relay.addr, Some("bearer api-secret"), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_validates_the_request() {
    let twilio = MockTwilio::start().await;
    let relay = start_relay(control_args(&twilio.origin())).await;
    let cases: &[(&str, u16, &str)] = &[
        // Not JSON / wrong shape.
        ("", 400, "invalid_json"),
        ("{", 400, "invalid_json"),
        ("[]", 400, "invalid_json"),
        (r#"{"to":15551230001}"#, 400, "invalid_json"),
        (
            r#"{"to":"+15551230001","from":"+15557654321","prompt":7}"#,
            400,
            "invalid_json",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","unknown":1}"#,
            400,
            "invalid_json",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","dynamic_variables":{"a":null}}"#,
            400,
            "invalid_json",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","dynamic_variables":{"a":{"b":1}}}"#,
            400,
            "invalid_json",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","dynamic_variables":["a"]}"#,
            400,
            "invalid_json",
        ),
        // E.164.
        (r#"{"from":"+15557654321"}"#, 400, "invalid_to"),
        (
            r#"{"to":"15551230001","from":"+15557654321"}"#,
            400,
            "invalid_to",
        ),
        (
            r#"{"to":"+05551230001","from":"+15557654321"}"#,
            400,
            "invalid_to",
        ),
        (r#"{"to":"+1","from":"+15557654321"}"#, 400, "invalid_to"),
        (
            r#"{"to":"+1234567890123456","from":"+15557654321"}"#,
            400,
            "invalid_to",
        ),
        (
            r#"{"to":"+1 555 123 0001","from":"+15557654321"}"#,
            400,
            "invalid_to",
        ),
        (
            r#"{"to":"sip:alice@example.com","from":"+15557654321"}"#,
            400,
            "invalid_to",
        ),
        (
            r#"{"to":"+15551230001","from":"Acme"}"#,
            400,
            "invalid_from",
        ),
        (
            r#"{"to":"+15551230001","from":"+1555765432x"}"#,
            400,
            "invalid_from",
        ),
        // Agent id.
        (
            r#"{"to":"+15551230001","from":"+15557654321","agent_id":""}"#,
            400,
            "invalid_agent_id",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","agent_id":"a b"}"#,
            400,
            "invalid_agent_id",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","agent":"openai"}"#,
            400,
            "invalid_agent",
        ),
        // Reserved dynamic variable names.
        (
            r#"{"to":"+15551230001","from":"+15557654321","dynamic_variables":{"relay_token":"x"}}"#,
            400,
            "invalid_dynamic_variable",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","dynamic_variables":{"relay_nonce":"x"}}"#,
            400,
            "invalid_dynamic_variable",
        ),
        (
            r#"{"to":"+15551230001","from":"+15557654321","dynamic_variables":{"":"x"}}"#,
            400,
            "invalid_dynamic_variable",
        ),
    ];
    for (body, status, code) in cases {
        let r = outbound(relay.addr, Some(BEARER), body).await;
        assert_eq!(r.status, *status, "{body}: {}", r.body);
        r.assert_error(*status, code);
    }
    let agent65 = format!(
        r#"{{"to":"+15551230001","from":"+15557654321","agent_id":"{}"}}"#,
        "a".repeat(65)
    );
    outbound(relay.addr, Some(BEARER), &agent65)
        .await
        .assert_error(400, "invalid_agent_id");

    // A parameter Twilio would refuse (name + value ≥ 500 characters).
    let long = serde_json::json!({
        "to": "+15551230001", "from": "+15557654321", "prompt": "p".repeat(600)
    });
    outbound(relay.addr, Some(BEARER), &long.to_string())
        .await
        .assert_error(400, "parameter_too_long");
    let long_var = serde_json::json!({
        "to": "+15551230001", "from": "+15557654321",
        "dynamic_variables": {"notes": "n".repeat(495)}
    });
    outbound(relay.addr, Some(BEARER), &long_var.to_string())
        .await
        .assert_error(400, "parameter_too_long");

    // Body over 16 KiB.
    let big = serde_json::json!({
        "to": "+15551230001", "from": "+15557654321", "prompt": "x".repeat(17 * 1024)
    });
    outbound(relay.addr, Some(BEARER), &big.to_string())
        .await
        .assert_error(413, "payload_too_large");

    assert!(twilio.requests().is_empty(), "nothing reached Twilio");
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(&m, r#"relay_outbound_calls_total{result="invalid_to"}"#),
        7.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"relay_outbound_calls_total{result="payload_too_large"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_are_rate_limited_per_client() {
    let twilio = MockTwilio::start().await;
    let mut a = control_args(&twilio.origin());
    a.http.outbound_calls_per_minute = 2;
    let relay = start_relay(a).await;
    let body = r#"{"to":"+15551230001","from":"+15557654321"}"#;
    for _ in 0..2 {
        let r = outbound(relay.addr, Some(BEARER), body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = outbound(relay.addr, Some(BEARER), body).await;
    r.assert_error(429, "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        twilio.requests().len(),
        2,
        "the refused call never reached Twilio"
    );
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(&m, r#"relay_outbound_calls_total{result="rate_limited"}"#),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_errors_become_502() {
    let twilio = MockTwilio::start().await;
    twilio.fail_with(
        400,
        r#"{"code":21211,"message":"The 'To' number +15551230001 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
    );
    let relay = start_relay(control_args(&twilio.origin())).await;
    let r = outbound(
        relay.addr,
        Some(BEARER),
        r#"{"to":"+15551230001","from":"+15557654321"}"#,
    )
    .await;
    r.assert_error(502, "carrier_error");
    let j = r.json();
    assert_eq!(j["status"], 400, "{j}");
    assert_eq!(
        j["message"], "The 'To' number +15551230001 is not a valid phone number.",
        "{j}"
    );
    assert_eq!(twilio.requests().len(), 1);

    // A non-JSON error answer still maps to carrier_error with Twilio's status.
    twilio.fail_with(500, "<html>oops</html>");
    let r = outbound(
        relay.addr,
        Some(BEARER),
        r#"{"to":"+15551230001","from":"+15557654321"}"#,
    )
    .await;
    r.assert_error(502, "carrier_error");
    assert_eq!(r.json()["status"], 500);

    // 2xx without a call SID is not a placed call.
    twilio.fail_with(201, "{}");
    let r = outbound(
        relay.addr,
        Some(BEARER),
        r#"{"to":"+15551230001","from":"+15557654321"}"#,
    )
    .await;
    r.assert_error(502, "carrier_error");

    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(&m, r#"relay_outbound_calls_total{result="carrier_error"}"#),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_twilio_is_a_502() {
    // Bind and drop a listener: nothing accepts on that loopback port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let relay = start_relay(control_args(&format!("http://127.0.0.1:{port}"))).await;
    outbound(
        relay.addr,
        Some(BEARER),
        r#"{"to":"+15551230001","from":"+15557654321"}"#,
    )
    .await
    .assert_error(502, "carrier_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_is_404_when_not_configured() {
    let relay = start_relay(args()).await;
    outbound(
        relay.addr,
        Some(BEARER),
        r#"{"to":"+15551230001","from":"+15557654321"}"#,
    )
    .await
    .assert_error(404, "not_configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_status_callbacks_are_signed_and_counted() {
    let twilio = MockTwilio::start().await;
    let relay = start_relay(control_args(&twilio.origin())).await;
    let params = [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", "CA11111111111111111111111111111111"),
        ("CallStatus", "ringing"),
        ("CallbackSource", "call-progress-events"),
        ("Direction", "outbound-api"),
        ("From", "+15557654321"),
        ("SequenceNumber", "1"),
        ("StatusCallbackEvent", "ringing"),
        ("Timestamp", "Sun, 25 Mar 2018 09:53:19 +0000"),
        ("To", "+15551230001"),
    ];
    let sig = sign("/call-status", &params);
    let r = callback(relay.addr, "/call-status", &params, Some(&sig)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.is_empty(), "{}", r.body);
    let m = wait_metric(
        relay.addr,
        r#"relay_call_status_callbacks_total{status="ringing"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, r#"relay_call_status_callbacks_total{status="ringing"}"#),
        1.0,
        "{m}"
    );

    // Forged: a changed parameter, a signature for another path, another token, none.
    let mut tampered = params;
    tampered[2] = ("CallStatus", "completed");
    let forged = [
        callback(relay.addr, "/call-status", &tampered, Some(&sig)).await,
        callback(
            relay.addr,
            "/call-status",
            &params,
            Some(&sign("/stream-status", &params)),
        )
        .await,
        callback(
            relay.addr,
            "/call-status",
            &params,
            Some(&compute_signature(
                b"other-token",
                "https://relay.example.com/call-status",
                &params,
            )),
        )
        .await,
        callback(relay.addr, "/call-status", &params, None).await,
    ];
    for r in &forged {
        assert_eq!(r.status, 403, "{}", r.body);
    }
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            r#"relay_errors_total{leg="twilio",kind="signature_mismatch"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"relay_errors_total{leg="twilio",kind="signature_missing"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"relay_call_status_callbacks_total{status="completed"}"#
        ),
        0.0,
        "{m}"
    );

    // The `answered` event arrives as in-progress; unknown statuses are bounded to `other`.
    for status in ["in-progress", "completed", "something-new"] {
        let mut p = params;
        p[2] = ("CallStatus", status);
        let r = callback(
            relay.addr,
            "/call-status",
            &p,
            Some(&sign("/call-status", &p)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let m = metrics(relay.addr).await;
    for (series, want) in [
        (
            r#"relay_call_status_callbacks_total{status="in-progress"}"#,
            1.0,
        ),
        (
            r#"relay_call_status_callbacks_total{status="completed"}"#,
            1.0,
        ),
        (r#"relay_call_status_callbacks_total{status="other"}"#, 1.0),
    ] {
        assert_eq!(metric(&m, series), want, "{series}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_status_callbacks_are_signed_and_counted() {
    let twilio = MockTwilio::start().await;
    let relay = start_relay(control_args(&twilio.origin())).await;
    let started = [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", "CA22222222222222222222222222222222"),
        ("StreamSid", "MZ22222222222222222222222222222222"),
        ("StreamName", "MZ22222222222222222222222222222222"),
        ("StreamEvent", "stream-started"),
        ("Timestamp", "2026-01-15T10:30:00Z"),
    ];
    let r = callback(
        relay.addr,
        "/stream-status",
        &started,
        Some(&sign("/stream-status", &started)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let errored = [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", "CA22222222222222222222222222222222"),
        ("StreamSid", "MZ22222222222222222222222222222222"),
        ("StreamName", "MZ22222222222222222222222222222222"),
        ("StreamEvent", "stream-error"),
        ("StreamError", "Stream - WebSocket - Connection Broken Pipe"),
        ("Timestamp", "2026-01-15T10:31:00Z"),
    ];
    let r = callback(
        relay.addr,
        "/stream-status",
        &errored,
        Some(&sign("/stream-status", &errored)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Forged: signed for /call-status, or tampered.
    let r = callback(
        relay.addr,
        "/stream-status",
        &started,
        Some(&sign("/call-status", &started)),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let mut tampered = started;
    tampered[4] = ("StreamEvent", "stream-stopped");
    let r = callback(
        relay.addr,
        "/stream-status",
        &tampered,
        Some(&sign("/stream-status", &started)),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    let m = metrics(relay.addr).await;
    for (series, want) in [
        (
            r#"relay_stream_status_callbacks_total{event="stream-started"}"#,
            1.0,
        ),
        (
            r#"relay_stream_status_callbacks_total{event="stream-error"}"#,
            1.0,
        ),
        (
            r#"relay_stream_status_callbacks_total{event="stream-stopped"}"#,
            0.0,
        ),
        (
            r#"relay_errors_total{leg="twilio",kind="signature_mismatch"}"#,
            2.0,
        ),
    ] {
        assert_eq!(metric(&m, series), want, "{series}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callback_bodies_are_limited() {
    let twilio = MockTwilio::start().await;
    let relay = start_relay(control_args(&twilio.origin())).await;
    let big = format!("CallSid=CA1&Junk={}", "x".repeat(70 * 1024));
    let r = send(
        relay.addr,
        "/call-status",
        &[("X-Twilio-Signature", "MVVXQK8WMm1ywK7bu7blrI+Pdd8=")],
        "application/x-www-form-urlencoded",
        big.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
}

/// The whole outbound path across two instances: `/outbound-call` on instance A creates the
/// call with a signed `Url`; (mock) Twilio fetches it from instance B, which shares only the
/// auth token (and so the derived token secret) and the public host; instance B answers TwiML
/// whose `relay_token` binds the stream to the call SID, and admits the stream. A stream for
/// another call SID with that token, a tampered URL and an unsigned fetch are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_placed_on_one_instance_streams_through_another() {
    use loadtest::twilio_sim::{StartParams, TwilioClient, TwilioInbound};
    let twilio = MockTwilio::start().await;
    let mut a = control_args(&twilio.origin());
    a.carriers.twilio.twilio_phone_number = Some("+15557654321".into());
    a.agents.echo.echo_delay_ms = 20;
    let instance_a = start_relay(a.clone()).await;
    let instance_b = start_relay(a).await;
    let placed = outbound(
        instance_a.addr,
        Some(BEARER),
        r#"{"to":"+15551230001","first_message":"Hello from Acme"}"#,
    )
    .await;
    assert_eq!(placed.status, 200, "{}", placed.body);
    let call_sid = placed.json()["call_sid"].as_str().unwrap().to_owned();
    let url = twilio.requests()[0].form_values("Url")[0].clone();

    // Twilio fetches the TwiML from instance B.
    let fetched = fetch_twiml(instance_b.addr, &url, &call_sid).await;
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(fetched.header("content-type"), Some("text/xml"));
    let twiml = fetched.body.clone();
    assert!(
        twiml.contains("<Connect><Stream url=\"wss://relay.example.com/media\""),
        "{twiml}"
    );
    let params: Vec<(String, String)> = ["first_message", "relay_token"]
        .iter()
        .map(|n| (n.to_string(), twiml_parameter(&twiml, n).unwrap()))
        .collect();
    assert_eq!(params[0].1, "Hello from Acme");

    // What Twilio would send next: the signed upgrade, then start with the TwiML's parameters.
    let sig = compute_signature(AUTH_TOKEN.as_bytes(), "wss://relay.example.com/media", &[]);
    let headers = vec![("X-Twilio-Signature".to_string(), sig)];
    let mut start = StartParams::for_call(9);
    start.call_sid = call_sid.clone();
    start.custom_parameters = params.clone();
    let mut stream = TwilioClient::connect(&instance_b.media_url(), &headers)
        .await
        .unwrap();
    stream.send_connected().await.unwrap();
    stream.send_start(&start).await.unwrap();
    stream.send_media(&[0x33; 160]).await.unwrap();
    assert_eq!(next_media(&mut stream).await, vec![0x33; 160]);
    stream.send_stop().await.unwrap();

    // The token does not open a stream for another call.
    let mut other = start.clone();
    other.call_sid = "CA00000000000000000000000000000bad".into();
    let mut replay = TwilioClient::connect(&instance_a.media_url(), &headers)
        .await
        .unwrap();
    replay.send_connected().await.unwrap();
    replay.send_start(&other).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), replay.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Some(TwilioInbound::Close { code, .. }) => {
                assert_eq!(code, Some(1008));
                break;
            }
            Some(TwilioInbound::Media { .. }) => panic!("a foreign call's token got audio"),
            Some(_) => continue,
            None => panic!("closed without a close frame"),
        }
    }
    let m = wait_metric(
        instance_a.addr,
        "relay_stream_tokens_total{result=\"token_invalid\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"token_invalid\"}"),
        1.0
    );
    let m = metrics(instance_b.addr).await;
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"valid\"}"),
        1.0
    );

    // A tampered query, and a fetch without Twilio's signature, are refused.
    let tampered = url.replace("Hello", "Bye");
    fetch_twiml(instance_b.addr, &tampered, &call_sid)
        .await
        .assert_error(403, "invalid_url");
    let path = url.strip_prefix("https://relay.example.com").unwrap();
    callback(
        instance_b.addr,
        path,
        &[("CallSid", call_sid.as_str())],
        None,
    )
    .await
    .assert_error(403, "invalid_signature");
    let m = metrics(instance_b.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"twilio\",kind=\"outbound_url_signature\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_call_that_never_starts_sends_a_signed_call_initiation_failure() {
    use common::post_call_receiver::{receiver, verify, SECRET};
    let (hook, seen) = receiver(0).await;
    let twilio = MockTwilio::start().await;
    let mut a = control_args(&twilio.origin());
    a.call.post_call_webhook_url = Some(format!("http://{hook}/post-call"));
    a.call.post_call_webhook_secret = Some(Secret::new(SECRET));
    let relay = start_relay(a).await;
    let r = outbound(
        relay.addr,
        Some(BEARER),
        r#"{"to":"+15551230001","from":"+15557654321","agent":"echo"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = twilio.requests()[0].form_values("StatusCallback")[0].clone();
    let path = url
        .strip_prefix("https://relay.example.com")
        .unwrap()
        .to_owned();
    let call_sid = twilio_rest::call_sid(0);
    let form = |status: &'static str| {
        [
            ("AccountSid", ACCOUNT_SID),
            ("CallSid", call_sid.as_str()),
            ("CallStatus", status),
            ("Direction", "outbound-api"),
            ("SipResponseCode", "486"),
        ]
    };
    // Ringing first: no record; then busy: the record. A busy callback to the plain route
    // (no relay query, e.g. an inbound call's) makes none either.
    for status in ["ringing", "busy"] {
        let params = form(status);
        let r = callback(relay.addr, &path, &params, Some(&sign(&path, &params))).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let plain = form("busy");
    let r = callback(
        relay.addr,
        "/call-status",
        &plain,
        Some(&sign("/call-status", &plain)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_metric(
        relay.addr,
        r#"relay_post_call_webhooks_total{type="call_initiation_failure",result="delivered"}"#,
        1.0,
    )
    .await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one record");
    let (_, sig, body) = &got[0];
    assert!(verify(sig.as_deref().unwrap(), body), "signed");
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["type"], "call_initiation_failure");
    let d = &v["data"];
    assert_eq!(d["call_sid"], call_sid.as_str());
    assert_eq!(d["failure_reason"], "busy");
    assert_eq!(d["agent"], "echo");
    assert_eq!(d["to_number"], "+15551230001");
    assert_eq!(d["from_number"], "+15557654321");
    assert_eq!(d["metadata"]["type"], "twilio");
    assert_eq!(d["metadata"]["body"]["SipResponseCode"], "486");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_machine_detection_is_asked_for_and_every_verdict_is_answered() {
    let twilio = MockTwilio::start().await;
    let mut a = control_args(&twilio.origin());
    a.carriers.twilio.twilio_phone_number = Some("+15557654321".into());
    let relay = start_relay(a.clone()).await;
    let body = r#"{"to":"+15551230001","machine_detection":"DetectMessageEnd","machine_detection_timeout":30,"voicemail_message":"Hi, this is Acme about your order. Please call us back."}"#;
    let r = outbound(relay.addr, Some(BEARER), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let req = &twilio.requests()[0];
    assert_eq!(req.form_values("MachineDetection"), ["DetectMessageEnd"]);
    assert_eq!(req.form_values("MachineDetectionTimeout"), ["30"]);
    let url = req.form_values("Url")[0].clone();
    let sid = twilio_rest::call_sid(0);
    for (answered_by, param) in [
        ("human", Some("human")),
        ("machine_start", Some("machine_start")),
        ("machine_end_beep", Some("machine_end_beep")),
        ("machine_end_silence", Some("machine_end_silence")),
        ("machine_end_other", Some("machine_end_other")),
        ("unknown", Some("unknown")),
        ("something-new", Some("other")),
        ("fax", None),
    ] {
        let t = fetch_twiml_with(relay.addr, &url, &sid, &[("AnsweredBy", answered_by)]).await;
        assert_eq!(t.status, 200, "{answered_by}: {}", t.body);
        match param {
            Some(p) => {
                assert!(
                    t.body.contains("<Connect><Stream"),
                    "{answered_by}: {}",
                    t.body
                );
                assert_eq!(
                    twiml_parameter(&t.body, "relay_answered_by").as_deref(),
                    Some(p),
                    "{answered_by}"
                );
                assert_eq!(
                    twiml_parameter(&t.body, "relay_voicemail_message").as_deref(),
                    Some("Hi, this is Acme about your order. Please call us back.")
                );
            }
            None => assert!(
                !t.body.contains("<Stream") && t.body.ends_with("<Response><Hangup/></Response>"),
                "{answered_by}: {}",
                t.body
            ),
        }
    }
    // Without detection the fetch carries no verdict.
    let t = fetch_twiml(relay.addr, &url, &sid).await;
    assert_eq!(twiml_parameter(&t.body, "relay_answered_by"), None);
    let m = metrics(relay.addr).await;
    for v in ["human", "machine_start", "machine_end_beep", "fax", "other"] {
        assert_eq!(
            metric(&m, &format!("relay_amd_total{{answered_by=\"{v}\"}}")),
            1.0,
            "{v}"
        );
    }
    // --amd-hangup-on-machine-start: machine_start hangs up too.
    a.call.amd_hangup_on_machine_start = true;
    let relay2 = start_relay(a).await;
    let t = fetch_twiml_with(relay2.addr, &url, &sid, &[("AnsweredBy", "machine_start")]).await;
    assert!(
        t.body.ends_with("<Response><Hangup/></Response>"),
        "{}",
        t.body
    );
    // A bad mode or timeout is refused.
    for bad in [
        r#"{"to":"+15551230001","machine_detection":"Yes"}"#,
        r#"{"to":"+15551230001","machine_detection":"Enable","machine_detection_timeout":120}"#,
    ] {
        outbound(relay.addr, Some(BEARER), bad)
            .await
            .assert_error(400, "invalid_machine_detection");
    }
}

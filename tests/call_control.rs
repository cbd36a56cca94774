//! Call control end to end (issue 16): `end_call` and transfers from every source, against
//! the real relay in this process and simulated peers on loopback, in Twilio's
//! authenticated mode (signed upgrades and webhooks, stream tokens, REST credentials and a
//! public host: what transfers need).
//!
//! The caller ([`call_peers::PlayingCaller`]) plays what it receives at 8 bytes per ms and
//! echoes a mark only once the audio before it has played (or never), so "played" below is
//! the caller's own playback clock. The mock agents speak the public wire formats
//! (loadtest), the Twilio REST API and the tool webhook are local mocks
//! ([`call_peers::RestMock`], [`call_peers::RawWebhook`]).
//!
//! Covered: the goodbye gate for each dialect (every byte played before the close; the cap
//! when no echo comes), a transfer from each source (built-in tool, ElevenLabs system tool,
//! the webhook's action, the operator key) with the exact REST update, the dial-result and
//! whisper callbacks (answers, signatures, the way back to the agent), and refusals (an
//! unknown target, a failed REST update, a second action while one is in progress), and
//! `--builtin-call-tools false`.

#[path = "common/call_peers.rs"]
mod call_peers;
mod common;

use call_peers::{post_form, PlayingCaller, RawWebhook, RestMock, RestRequest};
use common::*;
use loadtest::agent_sim::{self, ConversationHandle, MockAgentConfig};
use loadtest::assemblyai_sim::{self, AssemblyAiConfig, AssemblyAiSession};
use loadtest::fixtures;
use loadtest::mock_server::script::{Action, Behavior, ReplyScript, Step, Wait};
use loadtest::openai_sim::{self, MockRealtime, RealtimeConfig, RealtimeSession};
use loadtest::twilio_sim::StartParams;
use media_relay::agent::AgentKind;
use media_relay::auth::Secret;
use media_relay::call::settings::TransferFallback;
use media_relay::carrier::twilio::signature::compute_signature;
use media_relay::config::ServeArgs;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(10);
const AUTH_TOKEN: &str = "call-control-auth-token";
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const HOST: &str = "relay.example.com";
const TARGETS: &str = "sales=+15551230001,support=sip:queue@pbx.example.com";
const SALES: &str = "+15551230001";
const SUPPORT: &str = "sip:queue@pbx.example.com";
const CALLER_NUMBER: &str = "+15557654321";
const OUR_NUMBER: &str = "+15550001111";
const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
/// Agent audio per message from the mocks (200 ms) and their pace (5× real time, as TTS).
const CHUNK: usize = 1600;
const PACE: Duration = Duration::from_millis(40);
/// Scheduling slack allowed around the relay's own timers.
const SLACK: Duration = Duration::from_millis(750);

// ---- audio --------------------------------------------------------------------------------

/// 3.5 s of real speech: the goodbye.
fn goodbye() -> Arc<Vec<u8>> {
    Arc::new(fixtures::agent_reply().unwrap()[..28_000].to_vec())
}

/// 2 s of real speech: a transfer's announcement.
fn announcement() -> Arc<Vec<u8>> {
    Arc::new(fixtures::agent_reply().unwrap()[28_000..44_000].to_vec())
}

fn duration_of(bytes: usize) -> Duration {
    call_peers::audio_duration(bytes)
}

// ---- the relay --------------------------------------------------------------------------------

/// Where each dialect's mock is (unreachable by default).
struct Agents {
    openai: String,
    assemblyai: String,
    elevenlabs: String,
}

impl Default for Agents {
    fn default() -> Self {
        Agents {
            openai: "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime".into(),
            assemblyai: "ws://127.0.0.1:9/v1/ws".into(),
            elevenlabs: "http://127.0.0.1:9".into(),
        }
    }
}

/// Twilio's authenticated mode (auth token, account SID, public host, REST at `rest`), the
/// three vendor dialects at `agents`, and the transfer targets `sales` and `support`.
fn relay_args(default: AgentKind, agents: &Agents, rest: &RestMock) -> ServeArgs {
    let mut a = args();
    a.carriers.twilio.twilio_auth_token = Some(Secret::new(AUTH_TOKEN));
    a.carriers.twilio.twilio_account_sid = Some(ACCOUNT_SID.into());
    a.carriers.twilio.twilio_api_base = rest.origin();
    a.http.public_host = Some(HOST.into());
    a.call.agent = Some(default);
    a.agents.openai.openai_api_key = Some(Secret::new("test-key"));
    a.agents.openai.openai_realtime_url = agents.openai.clone();
    a.agents.assemblyai.assemblyai_api_key = Some(Secret::new("test-key"));
    a.agents.assemblyai.assemblyai_url = agents.assemblyai.clone();
    a.agents.elevenlabs.elevenlabs_agent_id = Some("agent_cc".into());
    a.agents.elevenlabs.elevenlabs_api_base = agents.elevenlabs.clone();
    a.call.transfer_targets = TARGETS.into();
    a.call.dtmf_interdigit_ms = 200;
    a.call.tool_timeout_ms = 2000;
    a
}

// ---- markup -------------------------------------------------------------------------------

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Every `<Parameter name value/>` of a `<Stream>`, unescaped, in order.
fn stream_parameters(twiml: &str) -> Vec<(String, String)> {
    twiml
        .split("<Parameter name=\"")
        .skip(1)
        .map(|p| {
            let (name, rest) = p.split_once('"').unwrap();
            let value = rest
                .strip_prefix(" value=\"")
                .and_then(|v| v.split_once('"'))
                .unwrap()
                .0;
            (xml_unescape(name), xml_unescape(value))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The text (as written, escaped) between `element_and_attr` (e.g. `<Dial action="`) and
/// the next `"`.
fn attr<'a>(xml: &'a str, element_and_attr: &str) -> &'a str {
    let start = xml
        .find(element_and_attr)
        .unwrap_or_else(|| panic!("no {element_and_attr} in {xml}"))
        + element_and_attr.len();
    &xml[start..start + xml[start..].find('"').unwrap()]
}

/// The query of `url` decoded into pairs, in order.
fn query_pairs(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').expect("a query").1;
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    compute_signature(AUTH_TOKEN.as_bytes(), url, params)
}

/// POSTs `params` to the relay-signed `url` (`https://relay.example.com/…`) as Twilio would:
/// signed over the full URL and the form with the auth token.
async fn twilio_posts(addr: SocketAddr, url: &str, params: &[(&str, &str)]) -> call_peers::Answer {
    let path = url
        .strip_prefix(&format!("https://{HOST}"))
        .expect("the relay's public origin");
    post_form(addr, path, params, Some(&twilio_signature(url, params))).await
}

// ---- calls --------------------------------------------------------------------------------

/// The stream parameters the relay's signed `POST /twiml` answers for `call_sid` (From, To,
/// CallSid, configured agent settings, `relay_token`).
async fn twiml_parameters(addr: SocketAddr, call_sid: &str) -> Vec<(String, String)> {
    let form = [
        ("CallSid", call_sid),
        ("From", CALLER_NUMBER),
        ("To", OUR_NUMBER),
    ];
    let sig = twilio_signature(&format!("https://{HOST}/twiml"), &form);
    let r = post_form(addr, "/twiml", &form, Some(&sig)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let params = stream_parameters(&r.body);
    assert!(param(&params, "relay_token").is_some(), "{}", r.body);
    params
}

/// The signed media upgrade (`wss://relay.example.com/media`, no parameters).
fn media_headers() -> Vec<(String, String)> {
    vec![(
        "X-Twilio-Signature".into(),
        twilio_signature(&format!("wss://{HOST}/media"), &[]),
    )]
}

/// Call `n` as Twilio would place it: the TwiML fetch, then the signed stream with the
/// TwiML's parameters in `start`; the caller echoes marks once played when `echo_marks`.
async fn call(relay: &TestRelay, n: u64, echo_marks: bool) -> (PlayingCaller, StartParams) {
    let mut start = StartParams::for_call(n);
    start.custom_parameters = twiml_parameters(relay.addr, &start.call_sid).await;
    let caller =
        PlayingCaller::connect(&relay.media_url(), &media_headers(), &start, echo_marks).await;
    (caller, start)
}

// ---- agent scripts --------------------------------------------------------------------------

fn text(v: Value) -> Action {
    Action::Text(v.to_string())
}

fn tool_call(id: &str, name: &str, arguments: Value) -> Action {
    Action::ToolCall {
        call_id: id.into(),
        name: name.into(),
        arguments,
    }
}

/// Paced audio steps: the first at once, then one chunk per [`PACE`]; each of `calls` is
/// sent after its number of chunks.
fn audio_steps(audio: &[u8], calls: &[(usize, Action)]) -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, chunk) in audio.chunks(CHUNK).enumerate() {
        for (after, action) in calls {
            if *after == i {
                steps.push(Step::new(Wait::Now, action.clone()));
            }
        }
        let wait = if i == 0 { Wait::Now } else { Wait::For(PACE) };
        steps.push(Step::new(wait, Action::Audio(chunk.to_vec())));
    }
    steps
}

/// One OpenAI response, after `wait`: `response.created`, the audio (with the function
/// `calls`, each after its number of chunks), `response.output_audio.done`, `response.done`.
fn openai_response(wait: Wait, audio: &[u8], calls: &[(usize, Action)]) -> Vec<Step> {
    let mut steps = vec![Step::new(
        wait,
        text(
            json!({"type": "response.created", "response": {"id": "resp_0",
            "object": "realtime.response", "status": "in_progress", "output": []}}),
        ),
    )];
    steps.extend(audio_steps(audio, calls));
    steps.push(Step::new(
        Wait::Now,
        text(
            json!({"type": "response.output_audio.done", "response_id": "resp_0",
            "item_id": "item_1", "output_index": 0, "content_index": 0}),
        ),
    ));
    steps.push(Step::new(
        Wait::Now,
        text(json!({"type": "response.done", "response": {"id": "resp_0",
            "object": "realtime.response", "status": "completed"}})),
    ));
    steps
}

/// One AssemblyAI reply, after `wait`: `reply.started`, the audio, `reply.done`.
fn assemblyai_reply(wait: Wait, audio: &[u8]) -> Vec<Step> {
    let mut steps = vec![Step::new(
        wait,
        text(json!({"type": "reply.started", "reply_id": "reply_1"})),
    )];
    steps.extend(audio_steps(audio, &[]));
    steps.push(Step::new(
        Wait::Now,
        text(
            json!({"type": "transcript.agent", "text": "…", "reply_id": "reply_1",
            "interrupted": false}),
        ),
    ));
    steps.push(Step::new(
        Wait::Now,
        text(json!({"type": "reply.done", "status": "completed"})),
    ));
    steps
}

/// ElevenLabs speaks `audio` (paced `audio` events with ids from `first_id`).
async fn elevenlabs_speaks(conv: &ConversationHandle, audio: &[u8], first_id: i64) {
    let mut tick = tokio::time::interval(PACE);
    for (i, chunk) in audio.chunks(CHUNK).enumerate() {
        tick.tick().await;
        conv.send_audio(chunk, first_id + i as i64).await;
    }
}

fn elevenlabs_system_tool(name: &str) -> String {
    json!({"type": "agent_tool_response", "agent_tool_response": {
        "tool_name": name, "tool_call_id": "toolu_sys_1", "tool_type": "system", "is_error": false}})
    .to_string()
}

/// The tools a session declared, by name.
fn declared_tools(init: &Value) -> Vec<Value> {
    init["session"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Asserts the session declared the built-in `end_call` and `transfer_call` (targets as an
/// enum).
fn assert_builtin_tools_declared(init: &Value) {
    let tools = declared_tools(init);
    let find = |n: &str| tools.iter().find(|t| t["name"] == n).cloned();
    let end = find("end_call").unwrap_or_else(|| panic!("end_call not declared: {init}"));
    assert_eq!(end["type"], "function", "{end}");
    let transfer =
        find("transfer_call").unwrap_or_else(|| panic!("transfer_call not declared: {init}"));
    assert_eq!(
        transfer["parameters"]["properties"]["target"]["enum"],
        json!(["sales", "support"]),
        "{transfer}"
    );
    assert_eq!(transfer["parameters"]["required"], json!(["target"]));
    for p in ["reason", "summary"] {
        assert!(
            transfer["parameters"]["properties"][p].is_object(),
            "{transfer}"
        );
    }
}

// ---- metrics ------------------------------------------------------------------------------

fn action_series(action: &str, source: &str, result: &str) -> String {
    format!(
        "relay_call_actions_total{{action=\"{action}\",source=\"{source}\",result=\"{result}\"}}"
    )
}

/// (count, sum, the le="0" bucket) of `relay_goodbye_cut_seconds{agent}`.
fn goodbye_cut(m: &str, agent: &str) -> (f64, f64, f64) {
    let name = "relay_goodbye_cut_seconds";
    (
        metric(m, &format!("{name}_count{{agent=\"{agent}\"}}")),
        metric(m, &format!("{name}_sum{{agent=\"{agent}\"}}")),
        metric(m, &format!("{name}_bucket{{agent=\"{agent}\",le=\"0\"}}")),
    )
}

async fn wait_outcome(relay: &TestRelay, outcome: &str) -> String {
    let series = format!("relay_calls_total{{outcome=\"{outcome}\"}}");
    let m = wait_metric(relay.addr, &series, 1.0).await;
    assert_eq!(metric(&m, &series), 1.0, "{series}\n{m}");
    m
}

// ---- the goodbye runs -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Openai,
    Assemblyai,
    Elevenlabs,
}

impl Dialect {
    fn label(self) -> &'static str {
        match self {
            Dialect::Openai => "openai",
            Dialect::Assemblyai => "assemblyai",
            Dialect::Elevenlabs => "elevenlabs",
        }
    }

    fn kind(self) -> AgentKind {
        match self {
            Dialect::Openai => AgentKind::Openai,
            Dialect::Assemblyai => AgentKind::Assemblyai,
            Dialect::Elevenlabs => AgentKind::Elevenlabs,
        }
    }

    /// The `source` label of the way this dialect ends the call here.
    fn source(self) -> &'static str {
        match self {
            Dialect::Elevenlabs => "system_tool",
            _ => "builtin_tool",
        }
    }
}

/// The agent's side of a run, for dialect-specific checks.
enum AgentSide {
    Openai(RealtimeSession),
    Assemblyai(AssemblyAiSession),
    Elevenlabs(ConversationHandle),
}

struct GoodbyeRun {
    relay: TestRelay,
    caller: PlayingCaller,
    close: (Option<u16>, Instant),
    goodbye: Arc<Vec<u8>>,
    hook: RawWebhook,
    rest: RestMock,
    agent: AgentSide,
    /// The mock server (it stops accepting when dropped).
    _mock: Box<dyn std::any::Any>,
}

/// A call whose agent says a 3.5 s goodbye and ends the call its dialect's way:
/// - OpenAI: a response with the goodbye and, half-way through its audio, the built-in
///   `end_call` function call;
/// - AssemblyAI: the built-in `end_call` tool call, then (once answered) the goodbye as its
///   reply to the answer;
/// - ElevenLabs: the goodbye, `agent_tool_response` `end_call` (system), then close 1000.
///
/// Runs until the relay closes the caller's stream.
async fn run_goodbye(d: Dialect, echo_marks: bool) -> GoodbyeRun {
    let goodbye = goodbye();
    let hook = RawWebhook::start(&[]).await;
    let rest = RestMock::start().await;
    let end_call = tool_call(
        "call_end_1",
        "end_call",
        json!({"reason": "the caller said goodbye"}),
    );
    let mut agents = Agents::default();
    let (oai, aai, el) = match d {
        Dialect::Openai => {
            let half = goodbye.len() / CHUNK / 2;
            let steps = openai_response(Wait::UserBytes(800), &goodbye, &[(half, end_call)]);
            let m = openai_sim::start(RealtimeConfig::new().with_steps(steps))
                .await
                .unwrap();
            agents.openai = m.ws_url();
            (Some(m), None, None)
        }
        Dialect::Assemblyai => {
            let mut steps = vec![Step::new(Wait::UserBytes(800), end_call)];
            steps.extend(assemblyai_reply(
                Wait::ClientMessages {
                    kind: "tool.result".into(),
                    count: 1,
                },
                &goodbye,
            ));
            let m = assemblyai_sim::start(AssemblyAiConfig::new().with_steps(steps))
                .await
                .unwrap();
            agents.assemblyai = m.ws_url();
            (None, Some(m), None)
        }
        Dialect::Elevenlabs => {
            let m = agent_sim::start(MockAgentConfig::new("agent_cc"))
                .await
                .unwrap();
            agents.elevenlabs = m.api_base();
            (None, None, Some(m))
        }
    };
    let mut a = relay_args(d.kind(), &agents, &rest);
    a.call.tool_webhook_url = Some(hook.url());
    let relay = start_relay(a).await;
    let (caller, _) = call(&relay, 100 + d as u64, echo_marks).await;
    let (agent, mock): (AgentSide, Box<dyn std::any::Any>) = match (oai, aai, el) {
        (Some(m), _, _) => (
            AgentSide::Openai(m.next_session(T).await.unwrap()),
            Box::new(m),
        ),
        (_, Some(m), _) => (
            AgentSide::Assemblyai(m.next_session(T).await.unwrap()),
            Box::new(m),
        ),
        (_, _, Some(m)) => {
            let conv = m.next_conversation(T).await.unwrap();
            conv.init_data(T).await.unwrap();
            elevenlabs_speaks(&conv, &goodbye, 1).await;
            conv.send_text(elevenlabs_system_tool("end_call")).await;
            conv.close(1000, "").await;
            (AgentSide::Elevenlabs(conv), Box::new(m))
        }
        _ => unreachable!(),
    };
    let close = caller.wait_closed(Duration::from_secs(20)).await;
    GoodbyeRun {
        relay,
        caller,
        close,
        goodbye,
        hook,
        rest,
        agent,
        _mock: mock,
    }
}

/// What every end_call run asserts, echoes or not: close 1000, every goodbye byte reached
/// the caller, the outcome and the action counted, no REST request, the agent socket closed
/// with 1000. Returns the metrics.
async fn assert_ended_by_agent(r: &GoodbyeRun, d: Dialect) -> String {
    assert_eq!(r.close.0, Some(1000), "the stream closes normally");
    r.caller.heard(|h| {
        assert!(h.errors.is_empty(), "{:?}", h.errors);
        assert_eq!(h.audio.len(), r.goodbye.len(), "{h:?}");
        assert!(h.audio == *r.goodbye, "the goodbye arrived byte-exact");
        assert_eq!(h.clears, 0, "nothing was cleared");
    });
    let m = wait_outcome(&r.relay, "agent_end_call").await;
    assert_eq!(
        metric(&m, &action_series("end_call", d.source(), "accepted")),
        1.0,
        "{m}"
    );
    assert!(
        r.rest.requests().is_empty(),
        "end_call needs no REST request"
    );
    let closed = match &r.agent {
        AgentSide::Openai(s) => s.wait_closed(T).await,
        AgentSide::Assemblyai(s) => s.wait_closed(T).await,
        AgentSide::Elevenlabs(s) => s.wait_closed(T).await,
    };
    assert_eq!(
        closed.unwrap(),
        Some(1000),
        "the agent socket closes with 1000"
    );
    m
}

/// With echoes: the close came no earlier than the caller's playback of the last goodbye
/// byte, after the echo of a mark that followed that byte; nothing was cut.
fn assert_close_after_the_last_byte_played(r: &GoodbyeRun, m: &str, agent: &str) {
    let closed_at = r.close.1;
    r.caller.heard(|h| {
        let play_end = h.play_end.expect("audio played");
        assert!(
            closed_at >= play_end,
            "closed {:?} before the last goodbye byte played",
            play_end - closed_at
        );
        let last_media = h.last_media_at().unwrap();
        let (name, at, due) = h.marks.last().expect("a mark").clone();
        assert!(at >= last_media, "the last mark follows the last byte");
        assert_eq!(due, play_end, "the last mark falls at the end of the audio");
        let echoed = h
            .echoed
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("mark {name} never echoed: {h:?}"));
        assert!(
            echoed.1 <= closed_at,
            "the close followed the final mark's echo"
        );
    });
    let (count, sum, zero) = goodbye_cut(m, agent);
    assert_eq!(
        (count, sum, zero),
        (1.0, 0.0, 1.0),
        "one goodbye, nothing cut\n{m}"
    );
}

/// Without echoes: the call still ended, at the cap (the unplayed audio + 2 s after the
/// goodbye went out), and the cut is the whole unconfirmed goodbye.
fn assert_ended_at_the_cap(r: &GoodbyeRun, m: &str, agent: &str) {
    let closed_at = r.close.1;
    let total = duration_of(r.goodbye.len());
    r.caller.heard(|h| {
        assert!(h.echoed.is_empty());
        let last_media = h.last_media_at().unwrap();
        let cap = last_media + total + Duration::from_secs(2);
        assert!(
            closed_at + Duration::from_millis(200) >= cap,
            "closed {:?} before the cap",
            cap - closed_at
        );
        assert!(
            closed_at <= cap + SLACK,
            "closed {:?} after the cap",
            closed_at - cap
        );
        assert!(closed_at >= h.play_end.unwrap());
    });
    let (count, sum, zero) = goodbye_cut(m, agent);
    assert_eq!((count, zero), (1.0, 0.0), "one goodbye, cut\n{m}");
    assert!(
        (sum - total.as_secs_f64()).abs() < 0.002,
        "the whole unconfirmed goodbye ({total:?}) is the cut: {sum}\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_end_call_hangs_up_only_after_the_caller_played_the_last_goodbye_byte() {
    let r = run_goodbye(Dialect::Openai, true).await;
    let m = assert_ended_by_agent(&r, Dialect::Openai).await;
    assert_close_after_the_last_byte_played(&r, &m, "openai");
    let AgentSide::Openai(s) = &r.agent else {
        unreachable!()
    };
    assert_builtin_tools_declared(&s.init_message(T).await.unwrap());
    let results = s.tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].call_id, "call_end_1");
    let out: Value = serde_json::from_str(&results[0].output).unwrap();
    assert_eq!(out["status"], "ending", "{out}");
    assert!(
        s.messages_of_type("response.create").is_empty(),
        "an end_call answer asks for no new response"
    );
    assert!(
        r.hook.received().is_empty(),
        "the built-in tool never reached the webhook"
    );
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_end_call_hangs_up_only_after_the_caller_played_the_goodbye_it_spoke_to_the_answer(
) {
    let r = run_goodbye(Dialect::Assemblyai, true).await;
    let m = assert_ended_by_agent(&r, Dialect::Assemblyai).await;
    assert_close_after_the_last_byte_played(&r, &m, "assemblyai");
    let AgentSide::Assemblyai(s) = &r.agent else {
        unreachable!()
    };
    assert_builtin_tools_declared(&s.init_message(T).await.unwrap());
    let results = s.tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].call_id, "call_end_1");
    assert!(results[0].output.contains("ending"), "{:?}", results[0]);
    // The goodbye came after the answer: the gate waited for that reply, not the answer.
    let first_media = r.caller.heard(|h| h.media[0].0);
    assert!(first_media.into_std() > results[0].at);
    assert!(r.hook.received().is_empty());
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_end_call_system_tool_then_close_1000_hangs_up_only_after_the_goodbye_played() {
    let r = run_goodbye(Dialect::Elevenlabs, true).await;
    let m = assert_ended_by_agent(&r, Dialect::Elevenlabs).await;
    assert_close_after_the_last_byte_played(&r, &m, "elevenlabs");
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"agent_closed\"}"),
        0.0,
        "close 1000 after end_call is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mark_echoes_end_call_still_ends_at_the_cap_for_every_dialect_and_counts_the_cut() {
    let (o, a, e) = tokio::join!(
        run_goodbye(Dialect::Openai, false),
        run_goodbye(Dialect::Assemblyai, false),
        run_goodbye(Dialect::Elevenlabs, false),
    );
    for (r, d) in [
        (&o, Dialect::Openai),
        (&a, Dialect::Assemblyai),
        (&e, Dialect::Elevenlabs),
    ] {
        let m = assert_ended_by_agent(r, d).await;
        assert_ended_at_the_cap(r, &m, d.label());
    }
}

// ---- transfers ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Dest<'a> {
    Number(&'a str),
    Sip(&'a str),
}

/// A checked REST update.
struct Redirect {
    at: Instant,
    /// The dial-result URL, unescaped.
    action_url: String,
    /// The whisper URL, unescaped.
    whisper_url: Option<String>,
}

/// Checks that `req` is the REST update of `call_sid` to a `<Dial>` of `dest` (with a
/// whisper of `summary` when given) with the relay's dial-result URL for `agent`.
fn check_redirect(
    req: &RestRequest,
    start: &StartParams,
    dest: Dest<'_>,
    summary: Option<&str>,
    agent: &str,
) -> Redirect {
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!(
            "/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{}.json",
            start.call_sid
        )
    );
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"));
    assert_eq!(
        req.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    let form = req.form();
    assert_eq!(
        form.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["Twiml"],
        "only Twiml= is sent"
    );
    let twiml = form[0].1.clone();
    let body = twiml.strip_prefix(XML_DECL).unwrap_or(&twiml);
    let action = attr(body, "<Dial action=\"");
    assert!(
        !action.replace("&amp;", "").contains('&'),
        "the URL is XML-escaped: {action}"
    );
    let noun = match dest {
        Dest::Number(n) => ("Number", n),
        Dest::Sip(s) => ("Sip", s),
    };
    let whisper = summary.map(|_| attr(body, &format!("<{} url=\"", noun.0)).to_owned());
    let inner = match &whisper {
        Some(w) => format!("<{0} url=\"{w}\" method=\"POST\">{1}</{0}>", noun.0, noun.1),
        None => format!("<{0}>{1}</{0}>", noun.0, noun.1),
    };
    assert_eq!(
        body,
        format!(
            "<Response><Dial action=\"{action}\" method=\"POST\" timeout=\"30\" answerOnBridge=\"true\">{inner}</Dial></Response>"
        ),
        "the update's TwiML"
    );
    let action_url = xml_unescape(action);
    assert!(
        action_url.starts_with(&format!("https://{HOST}/twiml/dial-result?call=")),
        "{action_url}"
    );
    let q = query_pairs(&action_url);
    let keys: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(&keys[..2], ["call", "agent"], "{action_url}");
    assert_eq!(&keys[keys.len() - 2..], ["exp", "sig"], "{action_url}");
    assert_eq!(q[0].1, start.call_sid);
    assert_eq!(q[1].1, agent);
    // The call's own parameters travel as p.<name>, but never its token or identity.
    for (k, _) in &q[2..q.len() - 2] {
        assert!(k.starts_with("p."), "{action_url}");
        assert!(
            !["p.relay_token", "p.From", "p.To", "p.CallSid"].contains(&k.as_str()),
            "{action_url}"
        );
    }
    let whisper_url = whisper.map(|w| {
        let w = xml_unescape(&w);
        assert!(
            w.starts_with(&format!("https://{HOST}/twiml/whisper?summary=")),
            "{w}"
        );
        let q = query_pairs(&w);
        assert_eq!(
            q.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["summary", "exp", "sig"]
        );
        assert_eq!(Some(q[0].1.as_str()), summary);
        w
    });
    Redirect {
        at: req.at,
        action_url,
        whisper_url,
    }
}

/// The caller heard all of `announcement` and the REST update came no earlier than its
/// playback end on the caller's clock.
fn assert_redirect_after_the_announcement(
    caller: &PlayingCaller,
    announcement: &[u8],
    redirect: &Redirect,
) {
    caller.heard(|h| {
        assert!(
            h.audio == announcement,
            "the announcement arrived byte-exact"
        );
        let play_end = h.play_end.unwrap();
        assert!(
            redirect.at >= play_end,
            "the REST update came {:?} before the announcement had played",
            play_end - redirect.at
        );
    });
}

/// After the redirect: the caller's `stop` ends the stream as `transferred`, with one REST
/// request in all and the action counted as accepted from `source`.
async fn assert_transferred(
    relay: &TestRelay,
    caller: &PlayingCaller,
    rest: &RestMock,
    source: &str,
) -> String {
    caller.stop().await;
    let m = wait_outcome(relay, "transferred").await;
    assert_eq!(
        metric(&m, &action_series("transfer", source, "accepted")),
        1.0,
        "{m}"
    );
    assert_eq!(rest.requests().len(), 1, "exactly one REST update");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_builtin_transfer_call_redirects_once_after_the_announcement_played() {
    const SUMMARY: &str = "Ada <VIP> asks about order 42 & a \"refund\"";
    let ann = announcement();
    let rest = RestMock::start().await;
    let hook = RawWebhook::start(&[]).await;
    let steps = openai_response(
        Wait::UserBytes(800),
        &ann,
        &[(
            3,
            tool_call(
                "call_tr_1",
                "transfer_call",
                json!({"target": "sales", "reason": "wants a person", "summary": SUMMARY}),
            ),
        )],
    );
    let mock = openai_sim::start(RealtimeConfig::new().with_steps(steps))
        .await
        .unwrap();
    let agents = Agents {
        openai: mock.ws_url(),
        ..Agents::default()
    };
    let mut a = relay_args(AgentKind::Openai, &agents, &rest);
    a.call.tool_webhook_url = Some(hook.url());
    let relay = start_relay(a).await;
    let (caller, start) = call(&relay, 201, true).await;
    let s = mock.next_session(T).await.unwrap();
    assert_builtin_tools_declared(&s.init_message(T).await.unwrap());

    let reqs = rest.wait_requests(1, T).await;
    let redirect = check_redirect(
        &reqs[0],
        &start,
        Dest::Number(SALES),
        Some(SUMMARY),
        "openai",
    );
    assert!(redirect.whisper_url.is_some());
    assert_redirect_after_the_announcement(&caller, &ann, &redirect);
    // Once the carrier accepted, the tool call is answered (no new response asked for).
    let results = s.wait_tool_results(1, T).await.unwrap();
    assert_eq!(results[0].call_id, "call_tr_1");
    assert!(
        results[0].output.contains("transferring"),
        "{:?}",
        results[0]
    );
    assert!(results[0].at >= redirect.at.into_std());

    assert_transferred(&relay, &caller, &rest, "builtin_tool").await;
    assert_eq!(s.wait_closed(T).await.unwrap(), Some(1000));
    assert!(s.messages_of_type("response.create").is_empty());
    assert!(hook.received().is_empty(), "never sent to the webhook");
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_transfer_to_number_redirects_to_the_operator_target_after_the_announcement() {
    const OPERATOR: &str = "+15557770000";
    let ann = announcement();
    let rest = RestMock::start().await;
    let mock = agent_sim::start(MockAgentConfig::new("agent_cc"))
        .await
        .unwrap();
    let agents = Agents {
        elevenlabs: mock.api_base(),
        ..Agents::default()
    };
    let mut a = relay_args(AgentKind::Elevenlabs, &agents, &rest);
    a.call.operator_target = Some(OPERATOR.into());
    let relay = start_relay(a).await;
    let (caller, start) = call(&relay, 202, true).await;
    let conv = mock.next_conversation(T).await.unwrap();
    conv.init_data(T).await.unwrap();
    elevenlabs_speaks(&conv, &ann, 1).await;
    conv.send_text(elevenlabs_system_tool("transfer_to_number"))
        .await;

    let reqs = rest.wait_requests(1, T).await;
    let redirect = check_redirect(&reqs[0], &start, Dest::Number(OPERATOR), None, "elevenlabs");
    assert_redirect_after_the_announcement(&caller, &ann, &redirect);
    assert_transferred(&relay, &caller, &rest, "system_tool").await;
    assert_eq!(conv.wait_closed(T).await.unwrap(), Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_transfer_action_redirects_after_the_agent_announced_it() {
    let ann = announcement();
    let rest = RestMock::start().await;
    let hook = RawWebhook::start(&[(
        "lookup_account",
        r#"{"result":{"status":"vip"},"action":{"type":"transfer","target":"sales","summary":"VIP caller, account 42"}}"#,
    )])
    .await;
    let mut steps = vec![Step::new(
        Wait::UserBytes(800),
        tool_call("call_lk_1", "lookup_account", json!({"account": "42"})),
    )];
    steps.extend(assemblyai_reply(
        Wait::ClientMessages {
            kind: "tool.result".into(),
            count: 1,
        },
        &ann,
    ));
    let mock = assemblyai_sim::start(AssemblyAiConfig::new().with_steps(steps))
        .await
        .unwrap();
    let agents = Agents {
        assemblyai: mock.ws_url(),
        ..Agents::default()
    };
    let mut a = relay_args(AgentKind::Assemblyai, &agents, &rest);
    a.call.tool_webhook_url = Some(hook.url());
    let relay = start_relay(a).await;
    let (caller, start) = call(&relay, 203, true).await;
    let s = mock.next_session(T).await.unwrap();

    let reqs = rest.wait_requests(1, T).await;
    let redirect = check_redirect(
        &reqs[0],
        &start,
        Dest::Number(SALES),
        Some("VIP caller, account 42"),
        "assemblyai",
    );
    assert_redirect_after_the_announcement(&caller, &ann, &redirect);
    // The agent heard the webhook's result first (and spoke to it).
    let results = s.tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].call_id, "call_lk_1");
    assert_eq!(
        serde_json::from_str::<Value>(&results[0].output).unwrap(),
        json!({"status": "vip"})
    );
    let received = hook.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["name"], "lookup_account");
    assert_eq!(received[0]["call_sid"], start.call_sid.as_str());

    assert_transferred(&relay, &caller, &rest, "webhook").await;
    assert_eq!(s.wait_closed(T).await.unwrap(), Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_digit_transfers_after_the_current_reply_played_and_never_reaches_the_agent() {
    let ann = announcement();
    let rest = RestMock::start().await;
    let script = ReplyScript {
        after_user_bytes: 800,
        think_time: Duration::from_millis(50),
        chunk_bytes: CHUNK,
        chunk_interval: PACE,
        ..ReplyScript::new(ann.clone())
    };
    let mock =
        assemblyai_sim::start(AssemblyAiConfig::new().with_behavior(Behavior::Reply(script)))
            .await
            .unwrap();
    let agents = Agents {
        assemblyai: mock.ws_url(),
        ..Agents::default()
    };
    let mut a = relay_args(AgentKind::Assemblyai, &agents, &rest);
    a.call.operator_digit = Some("0".into());
    a.call.operator_target = Some("support".into());
    let relay = start_relay(a).await;
    let (caller, start) = call(&relay, 204, true).await;
    let s = mock.next_session(T).await.unwrap();
    // The caller presses 0 while the agent is speaking.
    caller
        .wait("the agent's first audio", T, |h| {
            (!h.media.is_empty()).then_some(())
        })
        .await;
    caller.tx.send_dtmf("0").await.unwrap();

    let reqs = rest.wait_requests(1, T).await;
    let redirect = check_redirect(&reqs[0], &start, Dest::Sip(SUPPORT), None, "assemblyai");
    assert_redirect_after_the_announcement(&caller, &ann, &redirect);
    let m = assert_transferred(&relay, &caller, &rest, "dtmf").await;
    assert_eq!(s.wait_closed(T).await.unwrap(), Some(1000));
    // The key never reached the agent (the socket is closed: nothing more can come).
    assert!(s.text_inputs().is_empty(), "{:?}", s.text_inputs());
    assert!(s.messages_of_type("reply.create").is_empty());
    assert_eq!(
        metric(&m, "relay_dtmf_total{agent=\"assemblyai\"}"),
        1.0,
        "the key was received (and counted), not forwarded\n{m}"
    );
}

// ---- the transfer's callbacks ---------------------------------------------------------------

/// A quick OpenAI call transferred to `sales` by its built-in tool (summary `summary`, no
/// announcement), `stop`ped once redirected; the relay's prompt is "Be brief.".
struct Transferred {
    relay: TestRelay,
    rest: RestMock,
    mock: MockRealtime,
    start: StartParams,
    redirect: Redirect,
}

async fn transferred_openai_call(summary: &str) -> Transferred {
    let rest = RestMock::start().await;
    let steps = vec![Step::new(
        Wait::UserBytes(800),
        tool_call(
            "call_tr_9",
            "transfer_call",
            json!({"target": "sales", "summary": summary}),
        ),
    )];
    let mock = openai_sim::start(RealtimeConfig::new().with_steps(steps))
        .await
        .unwrap();
    let agents = Agents {
        openai: mock.ws_url(),
        ..Agents::default()
    };
    let mut a = relay_args(AgentKind::Openai, &agents, &rest);
    a.call.agent_prompt = Some("Be brief.".into());
    let relay = start_relay(a).await;
    let (caller, start) = call(&relay, 300, true).await;
    let reqs = rest.wait_requests(1, T).await;
    let redirect = check_redirect(
        &reqs[0],
        &start,
        Dest::Number(SALES),
        Some(summary),
        "openai",
    );
    assert_transferred(&relay, &caller, &rest, "builtin_tool").await;
    Transferred {
        relay,
        rest,
        mock,
        start,
        redirect,
    }
}

fn dial_form<'a>(call_sid: &'a str, status: &'a str) -> [(&'a str, &'a str); 6] {
    [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", call_sid),
        ("DialCallStatus", status),
        ("DialCallSid", "CA99999999999999999999999999999999"),
        ("From", CALLER_NUMBER),
        ("To", OUR_NUMBER),
    ]
}

fn hangup_markup() -> String {
    format!("{XML_DECL}<Response><Hangup/></Response>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_results_hang_up_when_completed_and_return_failed_dials_to_the_agent() {
    let t = transferred_openai_call("Ada wants sales").await;
    let url = t.redirect.action_url.clone();
    let sid = t.start.call_sid.as_str();

    let done = twilio_posts(t.relay.addr, &url, &dial_form(sid, "completed")).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.header("content-type"), Some("text/xml"));
    assert_eq!(done.body, hangup_markup());

    let mut busy_markup = String::new();
    for status in ["busy", "no-answer", "failed", "canceled"] {
        let r = twilio_posts(t.relay.addr, &url, &dial_form(sid, status)).await;
        assert_eq!(r.status, 200, "{status}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("text/xml"));
        let body = r.body.strip_prefix(XML_DECL).unwrap_or(&r.body);
        assert!(
            body.starts_with(&format!(
                "<Response><Connect><Stream url=\"wss://{HOST}/media\""
            )),
            "{status}: {body}"
        );
        let p = stream_parameters(body);
        assert_eq!(param(&p, "transfer_failed"), Some(status), "{body}");
        assert_eq!(param(&p, "From"), Some(CALLER_NUMBER), "{body}");
        assert_eq!(param(&p, "To"), Some(OUR_NUMBER), "{body}");
        assert_eq!(param(&p, "CallSid"), Some(sid), "{body}");
        assert_eq!(param(&p, "prompt"), Some("Be brief."), "{body}");
        assert_eq!(param(&p, "agent"), Some("openai"), "{body}");
        let token = param(&p, "relay_token").expect("a new relay_token");
        assert!(!token.is_empty());
        assert_eq!(
            p.iter().filter(|(k, _)| k == "relay_token").count(),
            1,
            "{body}"
        );
        if status == "busy" {
            busy_markup = body.to_owned();
        }
    }
    let m = metrics(t.relay.addr).await;
    for result in ["completed", "busy", "no_answer", "failed", "canceled"] {
        assert_eq!(
            metric(&m, &format!("relay_transfers_total{{result=\"{result}\"}}")),
            1.0,
            "{result}\n{m}"
        );
    }

    // The returned stream really connects, and the agent is told the transfer failed.
    let mut start = t.start.clone();
    start.stream_sid = "MZ00000000000000000000000000000bac".into();
    start.custom_parameters = stream_parameters(&busy_markup);
    let back = PlayingCaller::connect(&t.relay.media_url(), &media_headers(), &start, true).await;
    let s2 = {
        let first = t.mock.next_session(T).await.unwrap();
        first.wait_closed(T).await.unwrap();
        t.mock.next_session(T).await.unwrap()
    };
    let init = s2.init_message(T).await.unwrap();
    let instructions = init["session"]["instructions"].as_str().unwrap_or_default();
    assert!(
        instructions.starts_with("Be brief.")
            && instructions.contains("transfer did not go through"),
        "{instructions}"
    );
    assert!(instructions.contains("busy"), "{instructions}");
    back.stop().await;
    let m = wait_metric(
        t.relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_stream_tokens_total{result=\"valid\"}"),
        2.0,
        "{m}"
    );

    // Another instance (same auth token, so the same signing key) with --transfer-fallback
    // hangup answers the same URL with <Hangup/> for a failed dial.
    let mut b = relay_args(AgentKind::Openai, &Agents::default(), &t.rest);
    b.call.transfer_fallback = TransferFallback::Hangup;
    let other = start_relay(b).await;
    for status in ["busy", "no-answer"] {
        let r = twilio_posts(other.addr, &url, &dial_form(sid, status)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, hangup_markup(), "{status}");
    }
    let m = metrics(other.addr).await;
    assert_eq!(metric(&m, "relay_transfers_total{result=\"busy\"}"), 1.0);
    assert_eq!(
        metric(&m, "relay_transfers_total{result=\"no_answer\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whisper_says_the_summary_xml_escaped() {
    const SUMMARY: &str = "Ada <VIP> & \"order 42\"";
    let t = transferred_openai_call(SUMMARY).await;
    let url = t.redirect.whisper_url.clone().unwrap();
    let form = [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", "CA99999999999999999999999999999999"),
        ("CallStatus", "in-progress"),
        ("Direction", "outbound-dial"),
    ];
    let r = twilio_posts(t.relay.addr, &url, &form).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/xml"));
    assert_eq!(
        r.body,
        format!(
            "{XML_DECL}<Response><Say>Ada &lt;VIP&gt; &amp; &quot;order 42&quot;</Say></Response>"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_callbacks_need_both_signatures_and_the_dial_result_its_call() {
    let t = transferred_openai_call("Ada wants sales").await;
    let addr = t.relay.addr;
    let sid = t.start.call_sid.as_str();
    let dial = t.redirect.action_url.clone();
    let whisper = t.redirect.whisper_url.clone().unwrap();
    let form = dial_form(sid, "busy");
    let path = |url: &str| {
        url.strip_prefix(&format!("https://{HOST}"))
            .unwrap()
            .to_owned()
    };
    let forged = compute_signature(b"another-token", &dial, &form);
    let forged_whisper = compute_signature(b"another-token", &whisper, &form);

    // Twilio's signature: missing or wrong.
    for (url, sig) in [
        (&dial, None),
        (&dial, Some(forged.as_str())),
        (&dial, Some("garbage")),
        (&whisper, None),
        (&whisper, Some(forged_whisper.as_str())),
    ] {
        let r = post_form(addr, &path(url), &form, sig).await;
        assert_eq!(r.status, 403, "{url} {sig:?}: {}", r.body);
        assert!(r.body.contains("invalid_signature"), "{}", r.body);
    }

    // The relay's signature: a tampered query (Twilio's signature over it is fine).
    let tampered_value = dial.replace("agent=openai", "agent=echo");
    assert_ne!(tampered_value, dial);
    let sig_pos = dial.rfind("sig=").unwrap() + 4;
    let mut bad_sig = dial.clone();
    let c = if &dial[sig_pos..sig_pos + 1] == "A" {
        "B"
    } else {
        "A"
    };
    bad_sig.replace_range(sig_pos..sig_pos + 1, c);
    let no_sig = dial[..dial.rfind("&sig=").unwrap()].to_owned();
    let tampered_whisper = whisper.replace("summary=Ada", "summary=Bob");
    assert_ne!(tampered_whisper, whisper);
    for url in [&tampered_value, &bad_sig, &no_sig, &tampered_whisper] {
        let r = twilio_posts(addr, url, &form).await;
        assert_eq!(r.status, 403, "{url}: {}", r.body);
        assert!(r.body.contains("invalid_url"), "{}", r.body);
    }

    // A dial result for another call, though signed by Twilio.
    let other = dial_form("CA00000000000000000000000000000bad", "busy");
    let r = twilio_posts(addr, &dial, &other).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("invalid_url"), "{}", r.body);

    // None of the refusals counted a dial result; the genuine one still works.
    let m = metrics(addr).await;
    assert_eq!(
        metric(&m, "relay_transfers_total{result=\"busy\"}"),
        0.0,
        "{m}"
    );
    let r = twilio_posts(addr, &dial, &form).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = twilio_posts(addr, &whisper, &form).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = metrics(addr).await;
    assert_eq!(
        metric(&m, "relay_transfers_total{result=\"busy\"}"),
        1.0,
        "{m}"
    );
}

// ---- refusals ---------------------------------------------------------------------------------

/// After a refused transfer, the agent answers (its response.create) with this audio.
fn afterwards() -> Arc<Vec<u8>> {
    Arc::new(fixtures::agent_reply().unwrap()[44_000..48_000].to_vec())
}

/// An OpenAI call whose agent asks `transfer_call {target}` at once, then speaks
/// [`afterwards`] once the relay asks it for a response; runs until the caller heard that.
async fn refused_transfer(
    target: &str,
    rest: &RestMock,
) -> (TestRelay, PlayingCaller, RealtimeSession, MockRealtime) {
    let after = afterwards();
    let mut steps = vec![Step::new(
        Wait::UserBytes(800),
        tool_call("call_tr_x", "transfer_call", json!({"target": target})),
    )];
    steps.extend(openai_response(
        Wait::ClientMessages {
            kind: "response.create".into(),
            count: 1,
        },
        &after,
        &[],
    ));
    let mock = openai_sim::start(RealtimeConfig::new().with_steps(steps))
        .await
        .unwrap();
    let agents = Agents {
        openai: mock.ws_url(),
        ..Agents::default()
    };
    let relay = start_relay(relay_args(AgentKind::Openai, &agents, rest)).await;
    let (caller, _) = call(&relay, 400, true).await;
    let s = mock.next_session(T).await.unwrap();
    let len = after.len();
    caller
        .wait("the agent's audio after the refusal", T, |h| {
            (h.audio.len() >= len).then_some(())
        })
        .await;
    caller.heard(|h| assert!(h.audio == *after, "the agent is still heard"));
    (relay, caller, s, mock)
}

/// The tool call got an error result, followed by `response.create`.
fn assert_error_result_then_response(s: &RealtimeSession, contains: &str) {
    let results = s.tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].call_id, "call_tr_x");
    assert!(
        results[0].output.contains(contains),
        "{contains:?} not in {:?}",
        results[0].output
    );
    let msgs = s.messages();
    let result_at = msgs
        .iter()
        .position(|m| m.kind() == Some("conversation.item.create"))
        .unwrap();
    let create_at = msgs
        .iter()
        .position(|m| m.kind() == Some("response.create"))
        .unwrap();
    assert!(create_at > result_at, "response.create follows the result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_an_unknown_target_is_refused_to_the_agent_and_the_call_goes_on() {
    let rest = RestMock::start().await;
    let (relay, caller, s, _mock) = refused_transfer("nowhere", &rest).await;
    assert_error_result_then_response(&s, "unknown transfer target");
    caller.stop().await;
    let m = wait_outcome(&relay, "caller_hangup").await;
    assert!(rest.requests().is_empty(), "no REST request");
    assert_eq!(
        metric(
            &m,
            &action_series("transfer", "builtin_tool", "unknown_target")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, &action_series("transfer", "builtin_tool", "accepted")),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"transferred\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rest_update_is_reported_to_the_agent_and_the_caller_stays_with_it() {
    let rest = RestMock::start().await;
    rest.fail_with(
        500,
        r#"{"code":20500,"message":"Internal Server Error","status":500}"#,
    );
    let (relay, caller, s, _mock) = refused_transfer("sales", &rest).await;
    assert_eq!(rest.requests().len(), 1, "the update was tried once");
    assert_error_result_then_response(&s, "the transfer could not be placed");
    caller.stop().await;
    let m = wait_outcome(&relay, "caller_hangup").await;
    for (series, want) in [
        (action_series("transfer", "builtin_tool", "accepted"), 1.0),
        (
            action_series("transfer", "builtin_tool", "update_failed"),
            1.0,
        ),
        (
            "relay_transfers_total{result=\"update_failed\"}".into(),
            1.0,
        ),
        ("relay_calls_total{outcome=\"transferred\"}".into(), 0.0),
        ("relay_calls_total{outcome=\"transfer_failed\"}".into(), 0.0),
    ] {
        assert_eq!(metric(&m, &series), want, "{series}\n{m}");
    }
    assert_eq!(rest.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_call_during_a_transfer_is_refused_as_in_progress_and_the_transfer_goes_on() {
    let ann = announcement();
    let rest = RestMock::start().await;
    let steps = openai_response(
        Wait::UserBytes(800),
        &ann,
        &[
            (
                2,
                tool_call("call_tr_2", "transfer_call", json!({"target": "support"})),
            ),
            (5, tool_call("call_end_2", "end_call", json!({}))),
        ],
    );
    let mock = openai_sim::start(RealtimeConfig::new().with_steps(steps))
        .await
        .unwrap();
    let agents = Agents {
        openai: mock.ws_url(),
        ..Agents::default()
    };
    let relay = start_relay(relay_args(AgentKind::Openai, &agents, &rest)).await;
    let (caller, start) = call(&relay, 205, true).await;
    let s = mock.next_session(T).await.unwrap();

    let reqs = rest.wait_requests(1, T).await;
    let redirect = check_redirect(&reqs[0], &start, Dest::Sip(SUPPORT), None, "openai");
    assert_redirect_after_the_announcement(&caller, &ann, &redirect);
    let results = s.wait_tool_results(2, T).await.unwrap();
    assert_eq!(results[0].call_id, "call_end_2", "{results:?}");
    assert!(
        results[0].output.contains("already in progress"),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].call_id, "call_tr_2");
    assert!(
        results[1].output.contains("transferring"),
        "{:?}",
        results[1]
    );
    let m = assert_transferred(&relay, &caller, &rest, "builtin_tool").await;
    assert_eq!(
        metric(
            &m,
            &action_series("end_call", "builtin_tool", "in_progress")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, &action_series("end_call", "builtin_tool", "accepted")),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_builtin_call_tools_off_end_call_is_an_ordinary_webhook_tool() {
    let rest = RestMock::start().await;
    let hook = RawWebhook::start(&[("end_call", r#"{"result":"noted"}"#)]).await;
    let steps = vec![Step::new(
        Wait::UserBytes(800),
        tool_call("call_own_1", "end_call", json!({"reason": "done"})),
    )];
    let mock = openai_sim::start(RealtimeConfig::new().with_steps(steps))
        .await
        .unwrap();
    let agents = Agents {
        openai: mock.ws_url(),
        ..Agents::default()
    };
    let mut a = relay_args(AgentKind::Openai, &agents, &rest);
    a.call.builtin_call_tools = false;
    a.call.tool_webhook_url = Some(hook.url());
    let relay = start_relay(a).await;
    let (caller, _) = call(&relay, 206, true).await;
    let s = mock.next_session(T).await.unwrap();
    let init = s.init_message(T).await.unwrap();
    let names: Vec<Value> = declared_tools(&init)
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert!(
        !names.contains(&json!("end_call")) && !names.contains(&json!("transfer_call")),
        "{init}"
    );
    let results = s.wait_tool_results(1, T).await.unwrap();
    assert_eq!(results[0].output, "noted", "the webhook's result");
    assert_eq!(hook.received().len(), 1);
    assert_eq!(hook.received()[0]["name"], "end_call");
    s.wait_messages_of_type("response.create", 1, T)
        .await
        .unwrap();
    // The call goes on until the caller hangs up.
    assert!(caller.heard(|h| h.closed.is_none()));
    caller.stop().await;
    let m = wait_outcome(&relay, "caller_hangup").await;
    assert_eq!(
        metric(&m, &action_series("end_call", "builtin_tool", "accepted")),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"agent_end_call\"}"),
        0.0
    );
}

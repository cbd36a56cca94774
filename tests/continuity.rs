//! Agent-failure continuity over loopback with the real relay: an agent socket that drops
//! mid-call costs the caller a short hold sound, not the call; the replacement session is
//! re-seeded without a second greeting; recovery that cannot succeed ends in the apology.
//!
//! Per dialect, against the mock agents (loadtest's peers) with faults injected by the tests:
//! ElevenLabs (a dropped conversation, an unreachable API, a failing signed-URL endpoint, a
//! silent agent, a reconnect storm of 20 calls beside an untouched one), AssemblyAI (resume
//! with the caller's last second, a refused resume re-seeded, a reset resume socket, a vendor
//! that never becomes ready, a fatal error event) and OpenAI (a dropped socket replayed into
//! a new session, a proactive rollover the caller does not hear).

mod common;

use common::*;
use futures_util::future::join_all;
use loadtest::agent_sim::{self, MockAgentConfig};
use loadtest::assemblyai_sim::{self, AssemblyAiConfig, AssemblyAiSession, ResumeAnswer};
use loadtest::mock_server::{Dialect, SessionHandle};
use loadtest::openai_sim::{self, RealtimeConfig};
use loadtest::twilio_sim::{StartParams, TwilioClient, TwilioInbound};
use media_relay::agent::AgentKind;
use media_relay::auth::Secret;
use media_relay::config::ServeArgs;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// What the caller receives until `done` says so (or `T` passes): media bytes, events.
async fn until(
    client: &mut TwilioClient,
    mut done: impl FnMut(&[u8], &[String]) -> bool,
) -> (Vec<u8>, Vec<String>) {
    let (mut audio, mut events) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + T;
    while !done(&audio, &events) {
        let msg = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("the caller waited too long")
            .expect("caller socket error");
        match msg {
            Some(TwilioInbound::Media { payload, .. }) => audio.extend(payload),
            Some(TwilioInbound::Clear { .. }) => events.push(format!("clear@{}", audio.len())),
            Some(TwilioInbound::Close { code, .. }) => {
                events.push(format!("close:{code:?}"));
                break;
            }
            Some(_) => {}
            None => {
                events.push("eof".into());
                break;
            }
        }
    }
    (audio, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_socket_that_drops_costs_the_caller_hold_audio_and_a_reseeded_session_takes_over()
{
    let mock = agent_sim::start(MockAgentConfig::new("agent_cont"))
        .await
        .unwrap();
    let mut a = elevenlabs_args(&mock.api_base(), "agent_cont", None);
    a.call.max_agent_recoveries = 3;
    let relay = start_relay(a).await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client
        .send_start(&start_params(5, &[("first_message", "Hello from Acme.")]))
        .await
        .unwrap();
    let conv = mock.next_conversation(T).await.unwrap();
    let init = conv.init_data(T).await.unwrap();
    assert_eq!(
        init["conversation_config_override"]["agent"]["first_message"],
        "Hello from Acme."
    );
    // A turn each, then 500 ms of agent audio the caller hears.
    conv.send_text(
        r#"{"type":"user_transcript","user_transcription_event":{"user_transcript":"Where is my order?"}}"#
            .into(),
    )
    .await;
    conv.send_text(
        r#"{"type":"agent_response","agent_response_event":{"agent_response":"Let me check."}}"#
            .into(),
    )
    .await;
    conv.send_audio(&[0x33; 4000], 1).await;
    let (audio, _) = until(&mut client, |a, _| a.len() >= 4000).await;
    assert!(audio.iter().all(|&b| b == 0x33));

    // The agent's socket drops without an end signal.
    let fault = Instant::now();
    conv.close(1011, "internal error").await;
    let (hold, events) = until(&mut client, |a, _| a.len() >= 800).await;
    let hold_after = fault.elapsed();
    assert!(
        hold_after < Duration::from_millis(200) + Duration::from_millis(300),
        "hold audio {hold_after:?} after the fault"
    );
    assert!(
        events.iter().all(|e| !e.starts_with("close")),
        "the caller's stream stays open: {events:?}"
    );
    assert!(
        hold.iter().any(|&b| b != 0x33),
        "hold audio, not the agent's"
    );

    // A new conversation: the call's settings, no second greeting, the conversation so far.
    let conv2 = mock.next_conversation(T).await.unwrap();
    let init2 = conv2.init_data(T).await.unwrap();
    assert_eq!(
        init2["conversation_config_override"]["agent"]["first_message"],
        ""
    );
    let ctx = conv2
        .wait_messages_of_type("contextual_update", 1, T)
        .await
        .unwrap();
    let text = ctx[0].message["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        text.contains("Caller: Where is my order?") && text.contains("Agent: Let me check."),
        "{text}"
    );
    // The agent is back: hold stops with a clear and the agent is heard again.
    conv2.send_audio(&[0x44; 1600], 1).await;
    let (audio, events) = until(&mut client, |a, _| a.ends_with(&[0x44; 1600])).await;
    assert!(
        events.iter().any(|e| e.starts_with("clear")),
        "hold audio stops with a clear: {events:?}"
    );
    assert!(audio.ends_with(&[0x44; 1600]));
    client.send_stop().await.unwrap();
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"caller_hangup\"}",
            1.0
        )
        .await,
        1.0
    );
    let m = metrics(relay.addr).await;
    assert_eq!(
        metric(
            &m,
            "relay_agent_recoveries_total{agent=\"elevenlabs\",result=\"recovered\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_agent_recovery_gap_seconds_count{agent=\"elevenlabs\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_be_reached_ends_in_the_apology_and_a_clean_hang_up() {
    // Nothing listens on port 9: every connect is refused.
    let mut a = elevenlabs_args("http://127.0.0.1:9", "agent_gone", None);
    a.call.max_agent_recoveries = 1;
    a.call.agent_recovery_deadline_secs = 1;
    let relay = start_relay(a).await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(6)).await.unwrap();
    let started = Instant::now();
    let (audio, events) = until(&mut client, |_, e| e.iter().any(|e| e.starts_with("close"))).await;
    // Hold audio, a clear, the whole 3.84 s apology, then the stream closes (the TwiML's
    // <Hangup/> ends the call).
    let cleared_at: usize = events
        .iter()
        .find_map(|e| e.strip_prefix("clear@"))
        .and_then(|n| n.parse().ok())
        .expect("hold audio stops with a clear");
    assert!(cleared_at > 0, "hold audio played first");
    assert!(
        audio.len() - cleared_at >= 30_728,
        "the whole apology was sent: {} bytes",
        audio.len() - cleared_at
    );
    assert!(events.last().unwrap().starts_with("close"), "{events:?}");
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_agent_recoveries_total{agent=\"elevenlabs\",result=\"exhausted\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"agent_connect_failed\"}",
            1.0
        )
        .await,
        1.0
    );
}

// ---------------------------------------------------------------------------------------
// Helpers of the dialect tests below
// ---------------------------------------------------------------------------------------

const ADMIN: &str = "admin-continuity";

/// Hold audio reaches the caller within this of the fault, as in the ElevenLabs test above
/// (200 ms plus 300 ms of slack): the machine holds the caller in the driver turn that sees
/// the failure and tops the hold audio up at once; the rest is room for a loaded 2-core
/// machine (measured: a few ms).
const HOLD_WITHIN: Duration = Duration::from_millis(500);

/// The built-in apology is 3.84 s of μ-law (as the test above asserts).
const APOLOGY_BYTES: usize = 30_728;

/// Caller frames the relay dropped from its early buffer (the cap during a recovery is the
/// resumed caller audio, 1000 ms by default: older gap frames are dropped as new ones come).
const DROPPED_EARLY: &str =
    "relay_frames_dropped_total{direction=\"twilio_to_agent\",reason=\"early_buffer_full\"}";

/// What one caller heard, in order.
#[derive(Default)]
struct Heard {
    /// Every media byte.
    audio: Vec<u8>,
    /// `clear@<audio bytes before it>`, `close:<code>`, `eof`.
    events: Vec<String>,
    /// The newest mark echoed.
    last_mark: Option<String>,
    ended: bool,
}

impl Heard {
    /// Where each clear came, in audio bytes heard before it, at or after byte `from`.
    fn clears_since(&self, from: usize) -> Vec<usize> {
        self.events
            .iter()
            .filter_map(|e| e.strip_prefix("clear@")?.parse().ok())
            .filter(|&at| at >= from)
            .collect()
    }

    fn closed(&self) -> bool {
        self.events.iter().any(|e| e.starts_with("close"))
    }

    /// The newest mark echoed names the end of the audio heard (all of it played; a mark's
    /// name ends in its offset, ms of audio sent).
    fn all_marked(&self) -> bool {
        let ms = (self.audio.len() / 8).to_string();
        self.last_mark
            .as_deref()
            .is_some_and(|m| m.trim_start_matches(|c: char| !c.is_ascii_digit()) == ms)
    }
}

/// A simulated Twilio caller that records what it hears and echoes every mark at once (as
/// Twilio does once the audio before it played; nothing is buffered here).
struct Caller {
    client: TwilioClient,
    h: Heard,
}

impl Caller {
    /// Connects and starts call `n` (call SID `CA<n>`) with these parameters.
    async fn start(relay: &TestRelay, n: u64, params: &[(&str, &str)]) -> Caller {
        let client = TwilioClient::connect(&relay.media_url(), &[])
            .await
            .unwrap();
        client.send_connected().await.unwrap();
        client.send_start(&start_params(n, params)).await.unwrap();
        Caller {
            client,
            h: Heard::default(),
        }
    }

    /// Reads until `done` holds for what was heard so far; panics if the stream ends first or
    /// `T` passes.
    async fn until(&mut self, mut done: impl FnMut(&Heard) -> bool) {
        let deadline = tokio::time::Instant::now() + T;
        while !done(&self.h) {
            assert!(
                !self.h.ended,
                "the stream ended first: {:?} after {} bytes",
                self.h.events,
                self.h.audio.len()
            );
            let msg = match tokio::time::timeout_at(deadline, self.client.recv()).await {
                Ok(m) => m.expect("caller socket error"),
                Err(_) => panic!(
                    "the caller waited too long: {:?} after {} bytes",
                    self.h.events,
                    self.h.audio.len()
                ),
            };
            match msg {
                Some(TwilioInbound::Media { payload, .. }) => self.h.audio.extend(payload),
                Some(TwilioInbound::Mark { name, .. }) => {
                    let _ = self.client.sender().send_mark(&name).await;
                    self.h.last_mark = Some(name);
                }
                Some(TwilioInbound::Clear { .. }) => {
                    let at = self.h.audio.len();
                    self.h.events.push(format!("clear@{at}"));
                }
                Some(TwilioInbound::Close { code, .. }) => {
                    self.h.events.push(format!("close:{code:?}"));
                    self.h.ended = true;
                }
                None => {
                    self.h.events.push("eof".into());
                    self.h.ended = true;
                }
            }
        }
    }

    /// Bytes heard so far.
    fn heard(&self) -> usize {
        self.h.audio.len()
    }

    /// Sends `audio` as 20 ms frames, at once (through a clone of the sender: the future
    /// does not borrow the caller, which is not `Sync`, so it can run in a spawned task).
    fn say(&self, audio: &[u8]) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.client.sender().clone();
        let audio = audio.to_vec();
        async move {
            for frame in audio.chunks(160) {
                tx.send_media(frame).await.unwrap();
            }
        }
    }

    /// Waits for hold audio after a fault at `fault` (the agent's audio was all heard, and
    /// its bytes are `agent_byte`): 100 ms of it within [`HOLD_WITHIN`], the stream open.
    async fn hold_audio(&mut self, fault: Instant, agent_byte: u8) -> Duration {
        let from = self.heard();
        self.until(|h| h.audio.len() >= from + 800).await;
        let after = fault.elapsed();
        eprintln!("hold audio {after:?} after the fault");
        assert!(after < HOLD_WITHIN, "hold audio {after:?} after the fault");
        assert!(
            !self.h.closed(),
            "the stream stays open: {:?}",
            self.h.events
        );
        assert!(
            self.h.audio[from..].iter().any(|&b| b != agent_byte),
            "hold audio, not the agent's"
        );
        after
    }

    /// Waits until the agent's `audio` is heard after the hold audio: it ends what was heard,
    /// and comes right after the one clear that stopped the hold audio (byte-exact, nothing
    /// of the hold audio after the clear).
    async fn agent_back(&mut self, since: usize, audio: &[u8]) {
        self.until(|h| h.audio.ends_with(audio)).await;
        let clears = self.h.clears_since(since);
        assert_eq!(
            clears.len(),
            1,
            "one clear stops the hold audio: {:?}",
            self.h.events
        );
        assert!(clears[0] > since, "hold audio played before the clear");
        assert!(
            self.h.audio[clears[0]..] == *audio,
            "after the clear, only the agent's audio ({} bytes heard after it)",
            self.h.audio.len() - clears[0]
        );
    }

    async fn hang_up(&self) {
        self.client.sender().send_stop().await.unwrap();
    }
}

/// `a` with continuity on (3 recoveries), the admin routes open to [`ADMIN`] and
/// Twilio signatures off (these tests are about the media path).
fn continuity_on(mut a: ServeArgs) -> ServeArgs {
    a.call.max_agent_recoveries = 3;
    a.carriers.twilio.insecure_skip_twilio_signature = true;
    a.http.admin_token = Some(Secret::new(ADMIN));
    a
}

fn assemblyai_args(url: &str) -> ServeArgs {
    let mut a = args();
    a.call.agent = Some(AgentKind::Assemblyai);
    a.agents.assemblyai.assemblyai_api_key = Some(Secret::new("test-key"));
    a.agents.assemblyai.assemblyai_url = url.into();
    continuity_on(a)
}

fn openai_args(url: &str) -> ServeArgs {
    let mut a = args();
    a.call.agent = Some(AgentKind::Openai);
    a.agents.openai.openai_api_key = Some(Secret::new("test-key"));
    a.agents.openai.openai_realtime_url = url.into();
    continuity_on(a)
}

/// Distinct caller audio: `count` frames of a ramp, tagged `(call, seq)` (see `tagged_audio`).
fn voice(call: u8, count: usize) -> Vec<u8> {
    let ramp: Vec<u8> = (0..1600u32).map(|i| (i * 7 % 251) as u8).collect();
    tagged_audio(call, count, &ramp)
}

/// A turn each as AssemblyAI transcribes it.
async fn assemblyai_turns(s: &AssemblyAiSession) {
    s.send_text(json!({"type": "transcript.user", "text": "Where is my order?"}).to_string())
        .await;
    s.send_text(
        json!({"type": "transcript.agent", "text": "Let me check.", "interrupted": false})
            .to_string(),
    )
    .await;
}

/// Hangs up and returns a scrape taken once the relay counted the call (with everything it
/// folded at the call's end).
async fn hang_up(relay: &TestRelay, caller: &Caller) -> String {
    caller.hang_up().await;
    let series = "relay_calls_total{outcome=\"caller_hangup\"}";
    let m = wait_metric(relay.addr, series, 1.0).await;
    assert_eq!(metric(&m, series), 1.0);
    m
}

fn recoveries_metric(m: &str, agent: &str, result: &str) -> f64 {
    metric(
        m,
        &format!("relay_agent_recoveries_total{{agent=\"{agent}\",result=\"{result}\"}}"),
    )
}

/// The recoveries in call `n`'s summary (`GET /calls/{call_sid}`).
async fn summary_recoveries(relay: &TestRelay, n: u64) -> Vec<Value> {
    let sid = StartParams::for_call(n).call_sid;
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = http_with(
        relay.addr,
        "GET",
        &format!("/calls/{sid}"),
        &[("Authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["recoveries"].as_array().cloned().unwrap_or_default()
}

/// Returns once the relay is ready on session `s` (the relay sends caller audio only to a
/// ready session, and the mock answers the session's opening message in its own time: a test
/// message sent before that answer would overtake it). Says one frame of silence.
async fn ready<D: Dialect>(caller: &Caller, s: &SessionHandle<D>) {
    let have = s.user_audio_len();
    caller.say(&[0xFF; 160]).await;
    s.wait_user_audio_bytes(have + 160, T).await.unwrap();
}

fn resume_of(s: &AssemblyAiSession) -> Value {
    json!({"type": "session.resume", "session_id": s.id()})
}

// ---------------------------------------------------------------------------------------
// AssemblyAI
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_socket_lost_mid_call_is_resumed_with_the_callers_last_second() {
    let mut cfg = AssemblyAiConfig::new();
    // The test answers the resume itself, once the caller's gap audio is in.
    cfg.resume_answer = ResumeAnswer::Ignore;
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let relay = start_relay(assemblyai_args(&mock.ws_url())).await;
    let mut caller = Caller::start(&relay, 1, &[("first_message", "Hi, Acme here.")]).await;
    let s1 = mock.next_session(T).await.unwrap();
    assert_eq!(s1.init_message(T).await.unwrap()["type"], "session.update");
    // The caller speaks (the agent hears it), a turn each is transcribed, the agent speaks.
    let said = voice(1, 20);
    caller.say(&said).await;
    s1.wait_user_audio_bytes(said.len(), T).await.unwrap();
    assert!(s1.user_audio() == said);
    assert!(
        s1.protocol_errors().is_empty(),
        "{:?}",
        s1.protocol_errors()
    );
    assemblyai_turns(&s1).await;
    s1.send_agent_audio(&[0x33; 4000]).await;
    caller.until(|h| h.audio.len() >= 4000).await;
    assert!(caller.h.audio.iter().all(|&b| b == 0x33));

    // The socket closes without `session.ended`.
    let fault = Instant::now();
    s1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    // 2 s of caller audio in the gap, sent at once: the relay keeps the newest 1000 ms.
    let gap = voice(2, 100);
    caller.say(&gap).await;
    let s2 = mock.next_session(T).await.unwrap();
    assert_eq!(
        s2.init_message(T).await.unwrap(),
        resume_of(&s1),
        "the new socket's first message resumes the old session"
    );
    assert_eq!(s2.messages()[0].message, resume_of(&s1));
    // Every gap frame was read: the oldest 50 of the 100 were dropped as they came.
    let m = wait_metric(relay.addr, DROPPED_EARLY, 50.0).await;
    assert_eq!(metric(&m, DROPPED_EARLY), 50.0);

    // The vendor resumes it: the hold audio stops with a clear, the session gets the last
    // 8000 bytes of the gap, in order, and no audio before `session.ready`.
    let before_ready = caller.heard();
    s2.send_session_ready().await;
    s2.wait_user_audio_bytes(8000, T).await.unwrap();
    assert!(
        s2.user_audio() == gap[gap.len() - 8000..],
        "the newest 1000 ms of the gap"
    );
    assert!(
        s2.protocol_errors().is_empty(),
        "{:?}",
        s2.protocol_errors()
    );
    s2.send_agent_audio(&[0x44; 1600]).await;
    caller.agent_back(before_ready, &[0x44; 1600]).await;
    // The conversation goes on over the resumed session.
    let more = voice(3, 10);
    caller.say(&more).await;
    s2.wait_user_audio_bytes(8000 + more.len(), T)
        .await
        .unwrap();
    assert!(s2.user_audio()[8000..] == more);

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "assemblyai", "recovered"), 1.0);
    assert_eq!(recoveries_metric(&m, "assemblyai", "exhausted"), 0.0);
    assert_eq!(
        metric(
            &m,
            "relay_agent_recovery_gap_seconds_count{agent=\"assemblyai\"}"
        ),
        1.0
    );
    let r = summary_recoveries(&relay, 1).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (&r[0]["cause"], &r[0]["result"], &r[0]["attempts"]),
        (&json!("closed"), &json!("recovered"), &json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_refused_resume_is_replaced_by_a_fresh_session_seeded_with_the_transcript() {
    let mut cfg = AssemblyAiConfig::new();
    cfg.resume_answer = ResumeAnswer::Error {
        code: "session_not_found".into(),
        message: "Session not found.".into(),
    };
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let relay = start_relay(assemblyai_args(&mock.ws_url())).await;
    let params = [("prompt", "Be brief."), ("first_message", "Hi, Acme here.")];
    let mut caller = Caller::start(&relay, 2, &params).await;
    let s1 = mock.next_session(T).await.unwrap();
    let init1 = s1.init_message(T).await.unwrap();
    assert_eq!(init1["session"]["greeting"], "Hi, Acme here.");
    ready(&caller, &s1).await;
    assemblyai_turns(&s1).await;
    s1.send_agent_audio(&[0x33; 1600]).await;
    caller.until(|h| h.audio.len() >= 1600).await;

    let fault = Instant::now();
    s1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let before = caller.heard();
    // The resume is refused …
    let s2 = mock.next_session(T).await.unwrap();
    assert_eq!(s2.init_message(T).await.unwrap(), resume_of(&s1));
    // … so a fresh session follows at once, seeded through its prompt, with no greeting.
    let s3 = mock.next_session(T).await.unwrap();
    let init3 = s3.init_message(T).await.unwrap();
    assert_eq!(init3["type"], "session.update");
    let session = &init3["session"];
    assert!(session.get("greeting").is_none(), "no greeting: {session}");
    let prompt = session["system_prompt"].as_str().unwrap_or_default();
    assert!(prompt.starts_with("Be brief.\n\n"), "{prompt}");
    assert!(prompt.contains("Do not greet the caller again"), "{prompt}");
    assert!(
        prompt.contains("Caller: Where is my order?\nAgent: Let me check.\n"),
        "{prompt}"
    );
    assert_eq!(session["input"], init1["session"]["input"]);
    assert_eq!(session["output"], init1["session"]["output"]);
    // The refused socket is closed by the relay.
    s2.wait_closed(T).await.unwrap();
    assert!(!s2.session_ready_sent());

    // The call goes on with the fresh session, both ways.
    ready(&caller, &s3).await;
    s3.send_agent_audio(&[0x44; 1600]).await;
    caller.agent_back(before, &[0x44; 1600]).await;
    let more = voice(2, 10);
    caller.say(&more).await;
    s3.wait_user_audio_bytes(160 + more.len(), T).await.unwrap();
    assert!(s3.user_audio()[160..] == more);
    assert!(
        s3.protocol_errors().is_empty(),
        "{:?}",
        s3.protocol_errors()
    );

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "assemblyai", "recovered"), 1.0);
    let r = summary_recoveries(&relay, 2).await;
    assert_eq!(
        (&r[0]["cause"], &r[0]["result"], &r[0]["attempts"]),
        (&json!("closed"), &json!("recovered"), &json!(2)),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_resume_socket_reset_is_retried_and_the_next_attempt_resumes() {
    let mut cfg = AssemblyAiConfig::new();
    cfg.resume_answer = ResumeAnswer::Ignore;
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let mut a = assemblyai_args(&mock.ws_url());
    // A failed attempt is part of the same recovery: one recovery allowed is enough.
    a.call.max_agent_recoveries = 1;
    let relay = start_relay(a).await;
    let mut caller = Caller::start(&relay, 3, &[]).await;
    let s1 = mock.next_session(T).await.unwrap();
    s1.init_message(T).await.unwrap();
    ready(&caller, &s1).await;
    s1.send_agent_audio(&[0x33; 1600]).await;
    caller.until(|h| h.audio.len() >= 1600).await;

    let fault = Instant::now();
    s1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let before = caller.heard();
    // The resume socket is reset (TCP RST) while the relay waits for `session.ready`.
    let s2 = mock.next_session(T).await.unwrap();
    assert_eq!(s2.init_message(T).await.unwrap(), resume_of(&s1));
    let reset = Instant::now();
    s2.reset().await;
    // After the backoff the relay resumes the same session again, and that attempt works.
    let s3 = mock.next_session(T).await.unwrap();
    assert_eq!(s3.init_message(T).await.unwrap(), resume_of(&s1));
    let retry_after = reset.elapsed();
    assert!(
        retry_after >= Duration::from_millis(80),
        "the retry waits the first backoff (100 ms ± 20 %): {retry_after:?}"
    );
    s3.send_session_ready().await;
    s3.send_agent_audio(&[0x44; 1600]).await;
    caller.agent_back(before, &[0x44; 1600]).await;
    assert!(!caller.h.closed());

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "assemblyai", "recovered"), 1.0);
    assert_eq!(recoveries_metric(&m, "assemblyai", "exhausted"), 0.0);
    let r = summary_recoveries(&relay, 3).await;
    assert_eq!(
        (&r[0]["cause"], &r[0]["result"], &r[0]["attempts"]),
        (&json!("closed"), &json!("recovered"), &json!(2)),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_never_becomes_ready_times_out_each_attempt_then_apologises_and_hangs_up() {
    let mut cfg = AssemblyAiConfig::new();
    // No session gets ready by itself: the first is made ready by hand, the resumed ones
    // never are.
    cfg.ready_delay = None;
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let mut a = assemblyai_args(&mock.ws_url());
    a.call.max_agent_recoveries = 1;
    a.call.agent_recovery_deadline_secs = 2;
    a.call.agent_connect_timeout_secs = 1;
    let relay = start_relay(a).await;
    let mut caller = Caller::start(&relay, 4, &[]).await;
    let s1 = mock.next_session(T).await.unwrap();
    s1.init_message(T).await.unwrap();
    s1.send_session_ready().await;
    s1.send_agent_audio(&[0x33; 1600]).await;
    caller.until(|h| h.audio.len() >= 1600).await;

    let fault = Instant::now();
    s1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let before = caller.heard();
    caller.until(|h| h.closed()).await;
    let ended_after = fault.elapsed();
    // Hold audio, a clear, the whole apology, then the stream closes.
    let clears = caller.h.clears_since(before);
    assert_eq!(clears.len(), 1, "{:?}", caller.h.events);
    assert!(
        caller.heard() - clears[0] >= APOLOGY_BYTES,
        "the whole apology was sent: {} bytes",
        caller.heard() - clears[0]
    );
    assert!(caller.h.events.last().unwrap().starts_with("close"));
    // Each attempt connected, asked to resume, was never answered, and was given up.
    let sessions = mock.sessions_started();
    assert!(sessions >= 3, "two attempts at least: {sessions} sessions");
    for i in 1..sessions {
        let s = mock.session(i).unwrap();
        assert_eq!(s.init_message(T).await.unwrap(), resume_of(&s1));
        assert!(!s.session_ready_sent());
        s.wait_closed(T).await.unwrap();
    }
    assert!(
        ended_after >= Duration::from_secs(2),
        "recovery gave up at its deadline: {ended_after:?}"
    );
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"agent_closed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"agent_closed\"}"),
        1.0
    );
    assert_eq!(recoveries_metric(&m, "assemblyai", "exhausted"), 1.0);
    assert_eq!(recoveries_metric(&m, "assemblyai", "recovered"), 0.0);
    let r = summary_recoveries(&relay, 4).await;
    assert_eq!(r[0]["result"], "exhausted", "{r:?}");
    assert!(r[0]["attempts"].as_u64().unwrap_or(0) >= 2, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_fatal_error_event_starts_a_recovery_and_a_non_fatal_one_does_not() {
    let mock = assemblyai_sim::start(AssemblyAiConfig::new())
        .await
        .unwrap();
    let relay = start_relay(assemblyai_args(&mock.ws_url())).await;
    let mut caller = Caller::start(&relay, 6, &[]).await;
    let s1 = mock.next_session(T).await.unwrap();
    s1.init_message(T).await.unwrap();
    ready(&caller, &s1).await;
    // Not fatal (`invalid_value`): the session goes on, no hold audio, no clear.
    s1.send_error("invalid_value", "bad value").await;
    s1.send_agent_audio(&[0x33; 1600]).await;
    caller.until(|h| h.audio.len() >= 1600).await;
    assert!(caller.h.audio == [0x33; 1600] && caller.h.events.is_empty());

    // Fatal (`INTERNAL_ERROR`, in the dialect's list): the relay holds the caller, drops the
    // session and resumes it on a new socket.
    let fault = Instant::now();
    s1.send_error("INTERNAL_ERROR", "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let before = caller.heard();
    s1.wait_closed(T).await.unwrap();
    let s2 = mock.next_session(T).await.unwrap();
    assert_eq!(s2.init_message(T).await.unwrap(), resume_of(&s1));
    ready(&caller, &s2).await;
    s2.send_agent_audio(&[0x44; 1600]).await;
    caller.agent_back(before, &[0x44; 1600]).await;

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "assemblyai", "recovered"), 1.0);
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"agent_error_event\"}"
        ),
        2.0
    );
    let r = summary_recoveries(&relay, 6).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["cause"], "fatal_error");
    assert_eq!(r[0]["result"], "recovered");
}

// ---------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------

/// A turn each as OpenAI transcribes it (caller transcription, agent audio transcript).
async fn openai_turns(s: &loadtest::openai_sim::RealtimeSession) {
    s.send_text(
        json!({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_u1", "content_index": 0, "transcript": "Where is my order?",
        })
        .to_string(),
    )
    .await;
    s.send_text(
        json!({
            "type": "response.output_audio_transcript.done", "response_id": "resp_1",
            "item_id": "item_a1", "output_index": 0, "content_index": 0,
            "transcript": "Let me check.",
        })
        .to_string(),
    )
    .await;
}

/// The replayed conversation: the finished turns as text items, then the system note.
fn assert_replayed(items: &[loadtest::mock_server::ClientMessage]) {
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(
        items[0].message["item"],
        json!({"type": "message", "role": "user",
               "content": [{"type": "input_text", "text": "Where is my order?"}]})
    );
    assert_eq!(
        items[1].message["item"],
        json!({"type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": "Let me check."}]})
    );
    let note = &items[2].message["item"];
    assert_eq!(
        (&note["type"], &note["role"]),
        (&json!("message"), &json!("system"))
    );
    assert!(
        note["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("Do not greet the caller again"),
        "{note}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_socket_dropped_mid_call_is_replayed_into_a_new_session_without_a_greeting() {
    let mock = openai_sim::start(RealtimeConfig::new()).await.unwrap();
    let relay = start_relay(openai_args(&mock.ws_url())).await;
    let params = [("prompt", "Be brief."), ("first_message", "Hi, Acme here.")];
    let mut caller = Caller::start(&relay, 5, &params).await;
    let s1 = mock.next_session(T).await.unwrap();
    let init1 = s1.init_message(T).await.unwrap();
    s1.wait_messages_of_type("response.create", 1, T)
        .await
        .unwrap();
    let said = voice(1, 20);
    caller.say(&said).await;
    s1.wait_user_audio_bytes(said.len(), T).await.unwrap();
    openai_turns(&s1).await;
    s1.send_agent_audio(&[0x33; 4000]).await;
    caller.until(|h| h.audio.len() >= 4000).await;
    assert!(caller.h.audio.iter().all(|&b| b == 0x33));

    let fault = Instant::now();
    s1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let before = caller.heard();
    let s2 = mock.next_session(T).await.unwrap();
    let init2 = s2.init_message(T).await.unwrap();
    assert_eq!(
        init2["session"], init1["session"],
        "the new session is set up exactly as the first"
    );
    let items = s2
        .wait_messages_of_type("conversation.item.create", 3, T)
        .await
        .unwrap();
    assert_replayed(&items);
    // The mock's `session.updated` makes it ready: the hold audio stops with a clear.
    caller.until(|h| !h.clears_since(before).is_empty()).await;
    // Caller audio after the session's opening messages proves they are all in: no
    // `response.create` among them (no greeting, no unprompted reply).
    let more = voice(2, 10);
    caller.say(&more).await;
    s2.wait_user_audio_bytes(more.len(), T).await.unwrap();
    assert!(s2.user_audio() == more);
    let kinds: Vec<String> = s2
        .messages()
        .iter()
        .filter_map(|m| m.kind().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds,
        [
            "session.update",
            "conversation.item.create",
            "conversation.item.create",
            "conversation.item.create"
        ]
    );
    s2.send_agent_audio(&[0x44; 1600]).await;
    caller.agent_back(before, &[0x44; 1600]).await;
    assert!(
        s2.protocol_errors().is_empty(),
        "{:?}",
        s2.protocol_errors()
    );

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "openai", "recovered"), 1.0);
    assert_eq!(
        metric(
            &m,
            "relay_agent_recovery_gap_seconds_count{agent=\"openai\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_rollover_opens_a_new_session_at_a_quiet_moment_the_caller_does_not_hear() {
    let mock = openai_sim::start(RealtimeConfig::new()).await.unwrap();
    let mut a = openai_args(&mock.ws_url());
    // Seconds, any positive value (0 is off). A second rollover would come 2 s after the
    // first: the call ends well before.
    a.agents.openai.openai_rollover_secs = 2;
    let relay = start_relay(a).await;
    let mut caller = Caller::start(&relay, 10, &[("first_message", "Hi, Acme here.")]).await;
    let s1 = mock.next_session(T).await.unwrap();
    let init1 = s1.init_message(T).await.unwrap();
    ready(&caller, &s1).await;
    let opened = Instant::now();
    openai_turns(&s1).await;
    s1.send_agent_audio(&[0x33; 1600]).await;
    // Heard and played (its marks echoed): the call is quiet.
    caller
        .until(|h| h.audio.len() >= 1600 && h.all_marked())
        .await;

    let s2 = mock.next_session(T).await.unwrap();
    let rolled_after = opened.elapsed();
    assert!(
        rolled_after >= Duration::from_millis(1900),
        "the rollover comes after --openai-rollover-secs: {rolled_after:?}"
    );
    let init2 = s2.init_message(T).await.unwrap();
    assert_eq!(init2["session"], init1["session"]);
    let items = s2
        .wait_messages_of_type("conversation.item.create", 3, T)
        .await
        .unwrap();
    assert_replayed(&items);
    s1.wait_closed(T).await.unwrap();
    // The agent on the new session is heard right after the old one: no hold audio, no clear.
    ready(&caller, &s2).await;
    s2.send_agent_audio(&[0x44; 1600]).await;
    caller.until(|h| h.audio.len() >= 3200).await;
    let mut want = vec![0x33; 1600];
    want.extend([0x44; 1600]);
    assert!(caller.h.audio == want, "only the agent's audio");
    assert!(caller.h.events.is_empty(), "{:?}", caller.h.events);
    assert!(
        s2.messages_of_type("response.create").is_empty(),
        "no greeting"
    );

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "openai", "rollover"), 1.0);
    assert_eq!(recoveries_metric(&m, "openai", "recovered"), 0.0);
    assert_eq!(mock.sessions_started(), 2);
    let r = summary_recoveries(&relay, 10).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (&r[0]["cause"], &r[0]["result"]),
        (&json!("rollover"), &json!("rollover"))
    );
}

// ---------------------------------------------------------------------------------------
// ElevenLabs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_recovers_every_call_and_spares_the_call_whose_agent_is_fine() {
    const STORM: usize = 20;
    /// The bystander's agent speaks 160 bytes every 20 ms, this many times (3 s).
    const FEED: usize = 150;
    let mock = agent_sim::start(MockAgentConfig::new("agent_storm"))
        .await
        .unwrap();
    let relay = start_relay(continuity_on(elevenlabs_args(
        &mock.api_base(),
        "agent_storm",
        None,
    )))
    .await;
    // The bystander first: its conversation is the first accepted.
    let bystander = Caller::start(&relay, 100, &[]).await;
    let quiet = mock.next_conversation(T).await.unwrap();
    quiet.init_data(T).await.unwrap();
    // The storm's calls, one after the other (so each conversation is known to be its
    // caller's), each ready.
    let (mut callers, mut convs) = (Vec::new(), Vec::new());
    for i in 0..STORM {
        let caller = Caller::start(&relay, i as u64 + 1, &[]).await;
        let c = mock.next_conversation(T).await.unwrap();
        c.init_data(T).await.unwrap();
        ready(&caller, &c).await;
        callers.push(caller);
        convs.push(c);
    }

    // The bystander's agent talks in real time; its caller notes when each message came.
    let (flowing_tx, flowing) = tokio::sync::oneshot::channel();
    let feeder = tokio::spawn(async move {
        let mut flowing_tx = Some(flowing_tx);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..FEED {
            tick.tick().await;
            quiet.send_audio(&[0x55; 160], i as i64 + 1).await;
            if i == 25 {
                if let Some(tx) = flowing_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    let listener = tokio::spawn(async move {
        let mut b = bystander;
        let mut arrivals = Vec::new();
        while b.heard() < FEED * 160 {
            let n = b.heard();
            b.until(|h| h.audio.len() > n).await;
            arrivals.push(Instant::now());
        }
        (b, arrivals)
    });
    flowing.await.unwrap();

    // Every other call's agent socket drops at once.
    let storm = Instant::now();
    join_all(convs.iter().map(|c| c.close(1011, "internal error"))).await;
    let waits: Vec<_> = callers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.until(|h| h.audio.len() >= 800).await;
                let held = c.heard();
                // Said during the gap: it reaches the new conversation once that is ready.
                c.say(&[0xFF; 160]).await;
                c.agent_back(held, &[0x66; 1600]).await;
                c
            })
        })
        .collect();
    let mut fresh = Vec::new();
    for _ in 0..STORM {
        let c = mock.next_conversation(T).await.unwrap();
        let init = c.init_data(T).await.unwrap();
        assert_eq!(
            init["conversation_config_override"]["agent"]["first_message"],
            ""
        );
        fresh.push(c);
    }
    // Each speaks once its call is ready (its caller's gap frame came through).
    for c in &fresh {
        c.wait_user_audio_bytes(160, T).await.unwrap();
        c.send_audio(&[0x66; 1600], 1).await;
    }
    let mut callers = Vec::new();
    for w in waits {
        callers.push(w.await.expect("every call hears its agent again"));
    }
    eprintln!(
        "{STORM} calls recovered {:?} after the storm",
        storm.elapsed()
    );
    assert!(callers.iter().all(|c| !c.h.closed()), "no call lost");

    // The bystander heard its agent throughout: every byte, nothing else, no long gap.
    feeder.await.unwrap();
    let (bystander, arrivals) = listener.await.unwrap();
    assert!(bystander.h.audio == vec![0x55; FEED * 160]);
    assert!(bystander.h.events.is_empty(), "{:?}", bystander.h.events);
    let gap = arrivals
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    eprintln!("bystander: largest gap between agent messages {gap:?}");
    // Its agent sends every 20 ms and the relay forwards at once; 500 ms (25 frames) would
    // mean the storm's 20 reconnects stalled another call's loop, far beyond a loaded
    // machine's scheduling noise.
    assert!(gap < Duration::from_millis(500), "largest gap {gap:?}");

    for c in &callers {
        c.hang_up().await;
    }
    bystander.hang_up().await;
    let series = "relay_calls_total{outcome=\"caller_hangup\"}";
    let m = wait_metric(relay.addr, series, (STORM + 1) as f64).await;
    assert_eq!(metric(&m, series), (STORM + 1) as f64);
    assert_eq!(
        recoveries_metric(&m, "elevenlabs", "recovered"),
        STORM as f64
    );
    assert_eq!(recoveries_metric(&m, "elevenlabs", "exhausted"), 0.0);
    assert_eq!(mock.conversations_started(), 1 + 2 * STORM);
}

/// An ElevenLabs call over a private agent (signed URLs) whose first conversation is up and
/// has spoken; returns the mock, relay, caller and conversation.
async fn private_agent_call(
    n: u64,
    tune: impl FnOnce(&mut ServeArgs),
) -> (
    loadtest::agent_sim::MockAgent,
    TestRelay,
    Caller,
    loadtest::agent_sim::ConversationHandle,
) {
    let mut cfg = MockAgentConfig::new("agent_private");
    cfg.api_key = Some("xi-test".into());
    let mock = agent_sim::start(cfg).await.unwrap();
    let mut a = continuity_on(elevenlabs_args(
        &mock.api_base(),
        "agent_private",
        Some("xi-test"),
    ));
    tune(&mut a);
    let relay = start_relay(a).await;
    let mut caller = Caller::start(&relay, n, &[("first_message", "Hello from Acme.")]).await;
    let c1 = mock.next_conversation(T).await.unwrap();
    c1.init_data(T).await.unwrap();
    ready(&caller, &c1).await;
    assert_eq!(mock.signed_url_requests().len(), 1);
    c1.send_audio(&[0x33; 1600], 1).await;
    caller.until(|h| h.audio.len() >= 1600).await;
    (mock, relay, caller, c1)
}

/// Backoff between reconnect attempts: the k-th wait (k from 0) is 100 ms × 2^k ± 20 %, so
/// it is never shorter than 80 ms × 2^k (the time between two signed-URL requests only adds
/// to it).
fn assert_backoff(attempts: &[Instant]) {
    for (k, w) in attempts.windows(2).enumerate() {
        let waited = w[1].duration_since(w[0]);
        let least = Duration::from_millis(80) * 2u32.pow(k as u32);
        assert!(
            waited >= least,
            "wait {k} after a failed attempt: {waited:?} (at least {least:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_signed_url_failing_during_recovery_is_retried_with_backoff_until_it_works() {
    let (mock, relay, mut caller, c1) = private_agent_call(81, |_| {}).await;
    // The REST API fails the next two signed-URL requests (HTTP 500).
    mock.fail_signed_urls(2);
    let fault = Instant::now();
    c1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let before = caller.heard();
    let c2 = mock.next_conversation(T).await.unwrap();
    let init = c2.init_data(T).await.unwrap();
    assert_eq!(
        init["conversation_config_override"]["agent"]["first_message"],
        ""
    );
    let requests = mock.signed_url_requests();
    assert_eq!(
        requests.len(),
        4,
        "two failed attempts, then one that worked"
    );
    assert_backoff(&requests[1..]);
    ready(&caller, &c2).await;
    c2.send_audio(&[0x44; 1600], 1).await;
    caller.agent_back(before, &[0x44; 1600]).await;

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "elevenlabs", "recovered"), 1.0);
    assert_eq!(
        metric(
            &m,
            "relay_agent_connects_total{agent=\"elevenlabs\",result=\"failed\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_agent_connects_total{agent=\"elevenlabs\",result=\"ok\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"signed_url_status\"}"
        ),
        2.0
    );
    let r = summary_recoveries(&relay, 81).await;
    assert_eq!(
        (&r[0]["cause"], &r[0]["result"], &r[0]["attempts"]),
        (&json!("closed"), &json!("recovered"), &json!(3)),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_signed_url_failing_until_the_deadline_ends_in_the_apology_and_a_hang_up() {
    let (mock, relay, mut caller, c1) = private_agent_call(82, |a| {
        a.call.max_agent_recoveries = 1;
        a.call.agent_recovery_deadline_secs = 1;
    })
    .await;
    mock.fail_signed_urls(usize::MAX);
    let fault = Instant::now();
    c1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let before = caller.heard();
    caller.until(|h| h.closed()).await;
    let clears = caller.h.clears_since(before);
    assert_eq!(clears.len(), 1, "{:?}", caller.h.events);
    assert!(
        caller.heard() - clears[0] >= APOLOGY_BYTES,
        "the whole apology was sent: {} bytes",
        caller.heard() - clears[0]
    );
    assert!(caller.h.events.last().unwrap().starts_with("close"));
    // Attempts at 0, ~0.1, ~0.3 and ~0.7 s; the next would be past the 1 s deadline.
    let requests = mock.signed_url_requests();
    let failed = requests.len() - 1;
    assert!((3..=4).contains(&failed), "{failed} failed attempts");
    assert_backoff(&requests[1..]);
    assert_eq!(mock.conversations_started(), 1);

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"agent_closed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"agent_closed\"}"),
        1.0
    );
    assert_eq!(recoveries_metric(&m, "elevenlabs", "exhausted"), 1.0);
    assert_eq!(recoveries_metric(&m, "elevenlabs", "recovered"), 0.0);
    assert_eq!(
        metric(
            &m,
            "relay_agent_connects_total{agent=\"elevenlabs\",result=\"failed\"}"
        ),
        failed as f64
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"signed_url_status\"}"
        ),
        failed as f64
    );
    let r = summary_recoveries(&relay, 82).await;
    assert_eq!(
        (&r[0]["cause"], &r[0]["result"], &r[0]["attempts"]),
        (&json!("closed"), &json!("exhausted"), &json!(failed)),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_after_the_caller_spoke_is_replaced_after_the_response_timeout() {
    let mock = agent_sim::start(MockAgentConfig::new("agent_silent"))
        .await
        .unwrap();
    let mut a = continuity_on(elevenlabs_args(&mock.api_base(), "agent_silent", None));
    a.call.agent_response_timeout_ms = 1500;
    let relay = start_relay(a).await;
    let mut caller = Caller::start(&relay, 9, &[]).await;
    let c1 = mock.next_conversation(T).await.unwrap();
    c1.init_data(T).await.unwrap();
    ready(&caller, &c1).await;
    // The agent says something, then nothing.
    c1.send_audio(&[0x33; 800], 1).await;
    caller.until(|h| h.audio.len() >= 800).await;

    // The caller speaks 200 ms, then real-time silence: the relay's detector ends the turn
    // (500 ms hangover) and the agent's silence is timed from the last voiced frame.
    let spoke = Instant::now();
    caller.say(&[0x20; 1600]).await;
    let sender = caller.client.sender().clone();
    let silence = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..400 {
            tick.tick().await;
            if sender.send_media(&[0xFF; 160]).await.is_err() {
                return;
            }
        }
    });
    let heard = caller.heard();
    caller.until(|h| h.audio.len() >= heard + 800).await;
    let after = spoke.elapsed();
    eprintln!("silent agent: hold audio {after:?} after the caller spoke");
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_millis(3000),
        "hold audio once --agent-response-timeout-ms passed: {after:?}"
    );
    assert!(caller.h.audio[heard..].iter().any(|&b| b != 0x33));
    // The silent conversation is dropped, a new one opens (no second greeting).
    c1.wait_closed(T).await.unwrap();
    let c2 = mock.next_conversation(T).await.unwrap();
    let init = c2.init_data(T).await.unwrap();
    assert_eq!(
        init["conversation_config_override"]["agent"]["first_message"],
        ""
    );
    c2.wait_messages_of_type("contextual_update", 1, T)
        .await
        .unwrap();
    // The caller's silence reaches the new conversation once it is ready.
    c2.wait_user_audio_bytes(160, T).await.unwrap();
    c2.send_audio(&[0x44; 1600], 1).await;
    caller.agent_back(heard, &[0x44; 1600]).await;
    silence.abort();

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "elevenlabs", "recovered"), 1.0);
    let r = summary_recoveries(&relay, 9).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (&r[0]["cause"], &r[0]["result"]),
        (&json!("silent"), &json!("recovered"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_rollover_whose_resume_is_refused_goes_on_with_a_fresh_session_at_once() {
    let mut cfg = AssemblyAiConfig::new();
    cfg.resume_answer = ResumeAnswer::Error {
        code: "session_not_found".into(),
        message: "Session not found.".into(),
    };
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let mut a = assemblyai_args(&mock.ws_url());
    a.agents.assemblyai.assemblyai_rollover_secs = 2;
    let relay = start_relay(a).await;
    let params = [("prompt", "Be brief."), ("first_message", "Hi, Acme here.")];
    let mut caller = Caller::start(&relay, 12, &params).await;
    let s1 = mock.next_session(T).await.unwrap();
    s1.init_message(T).await.unwrap();
    ready(&caller, &s1).await;
    assemblyai_turns(&s1).await;
    s1.send_agent_audio(&[0x33; 1600]).await;
    caller
        .until(|h| h.audio.len() >= 1600 && h.all_marked())
        .await;

    // The rollover resumes the session on a new socket; the vendor refuses.
    let s2 = mock.next_session(T).await.unwrap();
    assert_eq!(s2.init_message(T).await.unwrap(), resume_of(&s1));
    let refused = Instant::now();
    // A fresh session, seeded with the conversation, follows at once (not after the connect
    // timeout, with the caller in silence meanwhile).
    let s3 = mock.next_session(T).await.unwrap();
    let fresh_after = refused.elapsed();
    assert!(
        fresh_after < Duration::from_secs(1),
        "fresh session {fresh_after:?} after the refusal"
    );
    let init3 = s3.init_message(T).await.unwrap();
    let prompt = init3["session"]["system_prompt"]
        .as_str()
        .unwrap_or_default();
    assert!(
        prompt.contains("Caller: Where is my order?\nAgent: Let me check.\n"),
        "{prompt}"
    );
    assert!(init3["session"].get("greeting").is_none());
    ready(&caller, &s3).await;
    s3.send_agent_audio(&[0x44; 1600]).await;
    caller.until(|h| h.audio.len() >= 3200).await;
    let mut want = vec![0x33; 1600];
    want.extend([0x44; 1600]);
    assert!(caller.h.audio == want, "no hold audio");
    assert!(caller.h.events.is_empty(), "{:?}", caller.h.events);

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "assemblyai", "rollover"), 1.0);
    assert_eq!(recoveries_metric(&m, "assemblyai", "recovered"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyai_after_a_refused_resume_the_next_failure_resumes_the_fresh_session() {
    let mut cfg = AssemblyAiConfig::new();
    cfg.resume_answer = ResumeAnswer::Error {
        code: "session_not_found".into(),
        message: "Session not found.".into(),
    };
    let mock = assemblyai_sim::start(cfg).await.unwrap();
    let relay = start_relay(assemblyai_args(&mock.ws_url())).await;
    let mut caller = Caller::start(&relay, 13, &[]).await;
    let s1 = mock.next_session(T).await.unwrap();
    s1.init_message(T).await.unwrap();
    ready(&caller, &s1).await;
    // First failure: the resume is refused, a fresh session takes over.
    let fault = Instant::now();
    s1.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x33).await;
    let s2 = mock.next_session(T).await.unwrap();
    assert_eq!(s2.init_message(T).await.unwrap(), resume_of(&s1));
    let s3 = mock.next_session(T).await.unwrap();
    assert_eq!(s3.init_message(T).await.unwrap()["type"], "session.update");
    ready(&caller, &s3).await;
    s3.send_agent_audio(&[0x44; 1600]).await;
    caller.until(|h| h.audio.ends_with(&[0x44; 1600])).await;

    // Second failure: the fresh session is the one to resume (the refusal was about s1).
    let fault = Instant::now();
    s3.close(1011, "internal error").await;
    caller.hold_audio(fault, 0x44).await;
    let s4 = mock.next_session(T).await.unwrap();
    assert_eq!(s4.init_message(T).await.unwrap(), resume_of(&s3));
    // (Refused too, by this mock: a fresh one again.)
    let s5 = mock.next_session(T).await.unwrap();
    assert_eq!(s5.init_message(T).await.unwrap()["type"], "session.update");
    ready(&caller, &s5).await;

    let m = hang_up(&relay, &caller).await;
    assert_eq!(recoveries_metric(&m, "assemblyai", "recovered"), 2.0);
}

//! End-to-end tests of the relay core over real loopback sockets: loadtest's simulated Twilio
//! caller (20 ms pacing, real speech fixtures) against the relay and loadtest's mock
//! ElevenLabs server (signed-URL endpoint + conversation WebSocket).

mod common;

use common::*;
use loadtest::agent_sim::{self, AgentBehavior, MockAgentConfig, STALE_AUDIO_BYTE};
use loadtest::fixtures;
use loadtest::twilio_sim::{run_call, CallScript, StartParams, TwilioClient};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_call_end_to_end_on_real_speech() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    let mut cfg = MockAgentConfig::new("agent_e2e");
    cfg.api_key = Some("xi-test-key".into());
    cfg.ping_interval = Some(Duration::from_millis(400));
    cfg.behavior = AgentBehavior::Reply {
        reply_audio: reply.clone(),
        after_user_bytes: caller.len() / 2,
        think_time: Duration::from_millis(100),
        chunk_bytes: 2000,
        chunk_interval: Duration::from_millis(40),
        interrupt_after_chunks: None,
    };
    let mock = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(elevenlabs_args(
        &mock.api_base(),
        "agent_e2e",
        Some("xi-test-key"),
    ))
    .await;

    let params = [
        ("prompt", "You are Acme's phone agent."),
        ("first_message", "Hi, Acme here."),
        ("language", "en"),
        ("voice_id", "voice_1"),
        ("customer_name", "Jane"),
        ("From", "+15551230000"),
        ("relay_token", "never-forwarded"),
    ];
    let mut script = CallScript::new(relay.media_url(), start_params(1, &params), caller.clone());
    script.linger = Duration::from_millis(2500);
    let report = run_call(script).await.unwrap();

    let conv = mock.next_conversation(T).await.unwrap();
    // `stop` closes the agent socket, with a normal close.
    assert_eq!(conv.wait_closed(T).await.unwrap(), Some(1000));

    // Init data first, with overrides and dynamic variables.
    assert!(
        conv.protocol_errors().is_empty(),
        "{:?}",
        conv.protocol_errors()
    );
    let init = conv.init_data(T).await.unwrap();
    assert_eq!(init["type"], "conversation_initiation_client_data");
    let o = &init["conversation_config_override"];
    assert_eq!(
        o["agent"]["prompt"]["prompt"],
        "You are Acme's phone agent."
    );
    assert_eq!(o["agent"]["first_message"], "Hi, Acme here.");
    assert_eq!(o["agent"]["language"], "en");
    assert_eq!(o["tts"]["voice_id"], "voice_1");
    let vars = init["dynamic_variables"].as_object().unwrap();
    assert_eq!(vars["customer_name"], "Jane");
    assert_eq!(vars["From"], "+15551230000");
    assert!(!vars.contains_key("relay_token"));
    assert!(!vars.contains_key("prompt"));

    // Every caller frame reached the agent, byte-exact and in order.
    assert_eq!(conv.user_audio().len(), caller.len());
    assert!(
        conv.user_audio() == *caller,
        "caller audio altered or reordered"
    );

    // Agent audio reached the caller byte-exact, with exactly Twilio's fields.
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert_eq!(report.received_audio.len(), reply.len());
    assert!(report.received_audio == *reply, "agent audio altered");
    // 250 ms agent chunks are split into ≤100 ms Twilio media messages.
    assert!(report.media_messages >= reply.len() / 800);

    // Marks carry the cumulative ms sent; the simulated Twilio echoed them after playback.
    assert!(!report.marks_received.is_empty());
    let last: u64 = report.marks_received.last().unwrap()[3..].parse().unwrap();
    let reply_ms = reply.len() as u64 / 8;
    assert!(
        last <= reply_ms && last + media_relay::call::machine::playout::MARK_INTERVAL_MS > reply_ms
    );
    assert!(!report.marks_echoed.is_empty());

    // Pings answered with the same event_id.
    assert!(!conv.pongs().is_empty(), "no pong received");

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"caller_hangup\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "relay_frames_total{direction=\"twilio_to_agent\"}"),
        (caller.len() / 160) as f64
    );
    assert_eq!(
        metric(&m, "relay_audio_bytes_total{direction=\"agent_to_twilio\"}"),
        reply.len() as f64
    );
    assert!(
        metric(
            &m,
            "relay_marks_total{agent=\"elevenlabs\",result=\"played\"}"
        ) >= 1.0
    );
    // Frames held in the early buffer while the agent connected are not relay-added latency.
    assert!(
        metric(
            &m,
            "relay_forward_latency_seconds_count{direction=\"twilio_to_agent\"}"
        ) >= (caller.len() / 160) as f64 * 0.9
    );
    assert_eq!(
        metric(
            &m,
            "relay_agent_connect_duration_seconds_count{agent=\"elevenlabs\"}"
        ),
        1.0
    );
    assert_eq!(
        wait_metric_eq(relay.addr, "relay_calls_active", 0.0).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_sends_clear_and_drops_stale_audio() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let reply = Arc::new(fixtures::agent_reply().unwrap());
    let mut cfg = MockAgentConfig::new("agent_barge");
    cfg.behavior = AgentBehavior::Reply {
        reply_audio: reply.clone(),
        after_user_bytes: 160 * 25,
        think_time: Duration::from_millis(50),
        chunk_bytes: 2000,
        chunk_interval: Duration::from_millis(40),
        interrupt_after_chunks: Some(2),
    };
    let mock = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_barge", None)).await;
    let mut script = CallScript::new(relay.media_url(), start_params(2, &[]), caller.clone());
    script.linger = Duration::from_millis(1500);
    let report = run_call(script).await.unwrap();

    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert_eq!(
        report.clears, 1,
        "interruption must become exactly one clear"
    );
    // The two stale chunks (event_id <= the interruption's) never reach the caller.
    assert!(
        !report
            .received_audio
            .windows(2000)
            .any(|w| w.iter().all(|&b| b == STALE_AUDIO_BYTE)),
        "stale audio leaked"
    );
    assert!(report.received_audio == *reply);

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "relay_frames_dropped_total{direction=\"agent_to_twilio\",reason=\"interrupted\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "relay_barge_ins_total{agent=\"elevenlabs\"}"),
        1.0
    );
    // Marks pending at the clear come back at once and count as flushed, not played.
    assert!(
        metric(
            &m,
            "relay_marks_total{agent=\"elevenlabs\",result=\"flushed\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_audio_is_kept_and_sent_in_order() {
    let caller = fixtures::caller_utterance().unwrap();
    let mock = agent_sim::start(MockAgentConfig::new("agent_early"))
        .await
        .unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_early", None)).await;
    let audio = tagged_audio(7, 100, &caller);
    let client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(7)).await.unwrap();
    // A burst straight after `start`: it arrives before the agent session is ready.
    for frame in audio.chunks(160) {
        client.send_media(frame).await.unwrap();
    }
    let conv = mock.next_conversation(T).await.unwrap();
    conv.wait_user_audio_bytes(audio.len(), T).await.unwrap();
    assert!(conv.user_audio() == audio, "early audio lost or reordered");
    client.send_stop().await.unwrap();
    assert_eq!(conv.wait_closed(T).await.unwrap(), Some(1000));
}

/// ElevenLabs closes with 1000 when its agent ended the conversation: the call hangs up
/// (nothing was left to play); any other close ends the call as `agent_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_close_closes_the_twilio_socket() {
    let mock = agent_sim::start(MockAgentConfig::new("agent_close"))
        .await
        .unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_close", None)).await;
    for (i, (code, outcome)) in [(1000u16, "agent_end_call"), (1011, "agent_closed")]
        .into_iter()
        .enumerate()
    {
        let mut client = TwilioClient::connect(&relay.media_url(), &[])
            .await
            .unwrap();
        client.send_connected().await.unwrap();
        client
            .send_start(&StartParams::for_call(3 + i as u64))
            .await
            .unwrap();
        let conv = mock.next_conversation(T).await.unwrap();
        conv.init_data(T).await.unwrap();
        conv.close(code, "conversation over").await;
        assert_eq!(wait_twilio_close(&mut client).await, Some(1000));
        // RFC 6455 §5.5.1: the relay answers the agent's close with a close (echoing it).
        assert_eq!(conv.wait_closed(T).await.unwrap(), Some(code));
        assert_eq!(
            wait_metric_eq(
                relay.addr,
                &format!("relay_calls_total{{outcome=\"{outcome}\"}}"),
                1.0
            )
            .await,
            1.0,
            "close {code}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_have_no_cross_talk() {
    let caller = fixtures::caller_utterance().unwrap();
    let mut cfg = MockAgentConfig::new("agent_echo");
    cfg.behavior = AgentBehavior::Echo;
    let mock = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_echo", None)).await;
    let mut calls = Vec::new();
    for i in 0..50u8 {
        let audio = Arc::new(tagged_audio(i, 50, &caller));
        let idx = i.to_string();
        let mut script = CallScript::new(
            relay.media_url(),
            start_params(100 + i as u64, &[("call_index", idx.as_str())]),
            audio.clone(),
        );
        script.linger = Duration::from_millis(600);
        calls.push(tokio::spawn(async move { (audio, run_call(script).await) }));
    }
    for c in calls {
        let (audio, report) = c.await.unwrap();
        let report = report.unwrap();
        assert!(
            report.protocol_errors.is_empty(),
            "{:?}",
            report.protocol_errors
        );
        assert!(
            report.received_audio == *audio,
            "call {} got back audio that is not its own (len {} vs {})",
            audio[0],
            report.received_audio.len(),
            audio.len()
        );
    }
    assert_eq!(mock.conversations_started(), 50);
    for i in 0..50 {
        let conv = mock.conversation(i).unwrap();
        let init = conv.init_data(T).await.unwrap();
        let idx: u8 = init["dynamic_variables"]["call_index"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            conv.user_audio() == tagged_audio(idx, 50, &caller),
            "agent {i} cross-talk"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_twilio_input_is_skipped_and_counted_while_a_healthy_call_goes_on() {
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let mut cfg = MockAgentConfig::new("agent_bad");
    cfg.behavior = AgentBehavior::Echo;
    let mock = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_bad", None)).await;

    let mut script = CallScript::new(
        relay.media_url(),
        start_params(10, &[("who", "healthy")]),
        caller.clone(),
    );
    script.linger = Duration::from_millis(500);
    let healthy = tokio::spawn(run_call(script));

    let mut bad = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    bad.send_connected().await.unwrap();
    // media before start: skipped (nothing to address yet).
    bad.send_text_raw(r#"{"event":"media","media":{"payload":"//////"}}"#.into())
        .await
        .unwrap();
    bad.send_start(&start_params(11, &[("who", "bad")]))
        .await
        .unwrap();
    bad.send_text_raw("{this is not json".into()).await.unwrap();
    bad.send_binary_raw(vec![1, 2, 3, 4]).await.unwrap();
    bad.send_text_raw(
        r#"{"event":"media","streamSid":"MZ1","media":{"payload":"not*base64!"}}"#.into(),
    )
    .await
    .unwrap();
    bad.send_text_raw(r#"{"event":"someday","streamSid":"MZ1"}"#.into())
        .await
        .unwrap();
    bad.send_text_raw(r#"{"no_event":true}"#.into())
        .await
        .unwrap();
    // A valid frame after all that still goes through.
    let good = [0x55u8; 160];
    bad.send_media(&good).await.unwrap();

    let report = healthy.await.unwrap().unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert!(
        report.received_audio == *caller,
        "healthy call was disturbed"
    );

    // Find the bad call's conversation and check its one valid frame arrived.
    let mut bad_conv = None;
    for i in 0..2 {
        let c = mock.next_conversation(T).await.unwrap();
        if c.init_data(T).await.unwrap()["dynamic_variables"]["who"] == "bad" {
            bad_conv = Some(c);
        } else {
            let _ = i;
        }
    }
    let bad_conv = bad_conv.expect("bad call reached the agent");
    bad_conv.wait_user_audio_bytes(160, T).await.unwrap();
    assert_eq!(bad_conv.user_audio(), good.to_vec());

    // An oversized frame ends that call with 1009; nothing else is affected.
    bad.send_text_raw("x".repeat(70 * 1024)).await.unwrap();
    assert_eq!(wait_twilio_close(&mut bad).await, Some(1009));

    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_error\"}",
        1.0,
    )
    .await;
    for kind in [
        "media_before_start",
        "malformed_json",
        "binary_frame",
        "invalid_base64",
        "missing_event",
        "message_too_large",
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("relay_errors_total{{leg=\"twilio\",kind=\"{kind}\"}}")
            ),
            1.0,
            "kind {kind}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "relay_unknown_events_total{agent=\"elevenlabs\",leg=\"twilio\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"caller_hangup\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "relay_calls_total{outcome=\"caller_error\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_garbage_is_skipped_and_counted() {
    let mut cfg = MockAgentConfig::new("agent_garbage");
    cfg.behavior = AgentBehavior::Garbage;
    let mock = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_garbage", None)).await;
    let caller = Arc::new(fixtures::caller_utterance().unwrap()[..160 * 25].to_vec());
    let mut script = CallScript::new(relay.media_url(), start_params(20, &[]), caller);
    script.linger = Duration::from_millis(500);
    let report = run_call(script).await.unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    // The valid audio event after the garbage still reaches the caller.
    assert_eq!(
        report.received_audio,
        vec![0xFF; agent_sim::GARBAGE_FOLLOWUP_AUDIO_BYTES]
    );
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"malformed_json\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"binary_frame\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ulaw_agent_ends_the_call_with_a_reason() {
    let mut cfg = MockAgentConfig::new("agent_pcm");
    cfg.audio_format = "pcm_16000".into();
    let mock = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(elevenlabs_args(&mock.api_base(), "agent_pcm", None)).await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(30)).await.unwrap();
    assert_eq!(wait_twilio_close(&mut client).await, Some(1011));
    let conv = mock.next_conversation(T).await.unwrap();
    assert_eq!(conv.wait_closed(T).await.unwrap(), Some(1000));
    assert_eq!(
        wait_metric_eq(
            relay.addr,
            "relay_calls_total{outcome=\"audio_format_mismatch\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_fails_the_agent_connect_cleanly() {
    let mut cfg = MockAgentConfig::new("agent_key");
    cfg.api_key = Some("right".into());
    let mock = agent_sim::start(cfg).await.unwrap();
    let relay = start_relay(elevenlabs_args(
        &mock.api_base(),
        "agent_key",
        Some("wrong"),
    ))
    .await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(31)).await.unwrap();
    assert_eq!(wait_twilio_close(&mut client).await, Some(1011));
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"agent_connect_failed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "relay_errors_total{leg=\"agent\",kind=\"signed_url_status\"}"
        ),
        1.0
    );
    assert_eq!(mock.conversations_started(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_agent_plays_the_caller_back_and_endpoints_answer() {
    let mut a = args();
    a.agents.echo.echo_delay_ms = 100;
    a.http.max_calls = 1;
    a.http.public_host = Some("relay.example.com".into());
    a.call.agent_prompt = Some("Be brief.".into());
    let relay = start_relay(a).await;

    let caller = Arc::new(fixtures::caller_utterance().unwrap()[..160 * 50].to_vec());
    let mut script = CallScript::new(relay.media_url(), start_params(40, &[]), caller.clone());
    script.linger = Duration::from_millis(800);
    // While this call runs, a second upgrade is refused: --max-calls 1.
    let call = tokio::spawn(run_call(script));
    assert_eq!(
        wait_metric_eq(relay.addr, "relay_calls_active", 1.0).await,
        1.0,
        "the first call is admitted"
    );
    match TwilioClient::try_connect(&relay.media_url(), &[])
        .await
        .unwrap()
    {
        Err(status) => assert_eq!(status, 503),
        Ok(_) => panic!("second call admitted beyond --max-calls"),
    }
    let report = call.await.unwrap().unwrap();
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );
    assert!(report.received_audio == *caller, "echo is not byte-exact");

    let (status, body) = http(relay.addr, "GET", "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http(relay.addr, "GET", "/readyz", "").await.0, 200);
    assert_eq!(http(relay.addr, "GET", "/nope", "").await.0, 404);
    let (status, xml) = http(
        relay.addr,
        "POST",
        "/twiml",
        "CallSid=CA123&From=%2B15551230000&To=%2B15557654321",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        xml,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://relay.example.com/media\" statusCallback=\"https://relay.example.com/stream-status\" statusCallbackMethod=\"POST\"><Parameter name=\"From\" value=\"+15551230000\"/><Parameter name=\"To\" value=\"+15557654321\"/><Parameter name=\"CallSid\" value=\"CA123\"/><Parameter name=\"prompt\" value=\"Be brief.\"/></Stream></Connect><Hangup/></Response>"
    );
    let m = wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "relay_upgrades_total{result=\"rejected_capacity\"}"),
        1.0
    );
    assert_eq!(metric(&m, "relay_upgrades_total{result=\"accepted\"}"), 1.0);
    assert!(m.contains(
        "relay_forward_latency_seconds_bucket{direction=\"agent_to_twilio\",le=\"0.001024\"}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_calls_finish_then_closes_with_1001() {
    let mut a = args();
    a.http.drain_timeout_secs = 1;
    let mut relay = start_relay(a).await;
    let mut client = TwilioClient::connect(&relay.media_url(), &[])
        .await
        .unwrap();
    client.send_connected().await.unwrap();
    client.send_start(&StartParams::for_call(50)).await.unwrap();
    client.send_media(&[0x11; 160]).await.unwrap();
    relay.shutdown();
    // Draining: not ready, new calls refused, existing call still served.
    let deadline = tokio::time::Instant::now() + T;
    while http(relay.addr, "GET", "/readyz", "").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never went 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match TwilioClient::try_connect(&relay.media_url(), &[])
        .await
        .unwrap()
    {
        Err(status) => assert_eq!(status, 503),
        Ok(_) => panic!("new call admitted while draining"),
    }
    client.send_media(&[0x22; 160]).await.unwrap();
    // After the 1 s drain timeout the call is closed with 1001 (going away).
    assert_eq!(wait_twilio_close(&mut client).await, Some(1001));
    tokio::time::timeout(T, &mut relay.done)
        .await
        .expect("relay stops after draining")
        .unwrap();
}

//! Configuration: defaults, validation, secrets kept out of `Debug`.

use super::*;

fn args(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
    ServeArgs::try_parse_from(extra)
}

#[test]
fn secrets_never_print() {
    let a = args(&[
        "--elevenlabs-api-key",
        "sk_live_123",
        "--elevenlabs-agent-id",
        "a",
        "--twilio-auth-token",
        "twilio_secret_456",
        "--public-host",
        "relay.example.com",
    ])
    .unwrap();
    let dbg = format!("{a:?} {:?}", a.settings().unwrap());
    assert!(!dbg.contains("sk_live_123"), "{dbg}");
    assert!(!dbg.contains("twilio_secret_456"), "{dbg}");
    assert!(dbg.contains("[redacted]"));
}

#[test]
fn agent_defaults_and_validation() {
    assert_eq!(
        args(&[]).unwrap().settings().unwrap().call.default_agent,
        AgentKind::Echo
    );
    let s = args(&[
        "--elevenlabs-agent-id",
        "x",
        "--insecure-skip-twilio-signature",
    ])
    .unwrap()
    .settings()
    .unwrap();
    assert_eq!(s.call.default_agent, AgentKind::Elevenlabs);
    // A vendor agent without signature checks must be asked for explicitly.
    assert!(args(&["--elevenlabs-agent-id", "x"])
        .unwrap()
        .settings()
        .is_err());
    let signed = [
        "--elevenlabs-agent-id",
        "x",
        "--twilio-auth-token",
        "tok",
        "--public-host",
        "relay.example.com",
    ];
    assert!(args(&signed).unwrap().settings().is_ok());
    assert!(args(&signed[..4]).unwrap().settings().is_err());
    assert!(args(&["--agent", "elevenlabs"])
        .unwrap()
        .settings()
        .is_err());
    assert!(args(&["--max-calls", "0"]).unwrap().settings().is_err());
    assert!(args(&["--public-host", "https://x"])
        .unwrap()
        .settings()
        .is_err());
    let long = "p".repeat(495);
    assert!(args(&["--agent-prompt", &long])
        .unwrap()
        .settings()
        .is_err());
    assert!(args(&["--listen", "nope"]).is_err());
    // A default agent must be configured; per-dialect settings are validated.
    assert!(args(&["--agent", "openai"]).unwrap().settings().is_err());
    let openai = args(&[
        "--agent",
        "openai",
        "--openai-api-key",
        "sk",
        "--openai-model",
        "gpt-realtime-2",
        "--insecure-skip-twilio-signature",
    ])
    .unwrap()
    .settings()
    .unwrap();
    assert_eq!(
        openai.call.agents.openai.unwrap().url,
        "wss://api.openai.com/v1/realtime?model=gpt-realtime-2"
    );
    assert!(
        args(&["--assemblyai-api-key", "k", "--assemblyai-url", "https://x"])
            .unwrap()
            .settings()
            .is_err()
    );
    assert!(args(&["--tool-webhook-url", "ftp://x"])
        .unwrap()
        .settings()
        .is_err());
    assert!(args(&["--agent-outbox-bytes", "0"])
        .unwrap()
        .settings()
        .is_err());
    assert!(args(&[
        "--elevenlabs-agent-id",
        "x",
        "--elevenlabs-api-base",
        "ftp://x"
    ])
    .unwrap()
    .settings()
    .is_err());
}

//! Command line and environment configuration (clap derive; every flag also reads an env
//! var), validation before binding, and the [`Secret`] type that keeps keys out of logs.

use crate::agent::connect::ElevenLabsSettings;
use crate::agent::AgentKind;
pub use crate::auth::Secret;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

/// `media-relay`: Twilio Media Streams ⇄ voice-agent relay.
#[derive(Debug, Parser)]
#[command(name = "media-relay", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay server.
    Serve(ServeArgs),
}

/// `media-relay serve` flags. Durations carry their unit in the flag name.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (HTTP: /media WebSocket, /twiml, /metrics, /healthz, /readyz).
    #[arg(long, env = "RELAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Public host name (and port if not 443) Twilio uses to reach the relay, e.g.
    /// `relay.example.com`; the TwiML stream URL becomes `wss://{host}/media`. Without it,
    /// `/twiml` uses the request's Host header.
    #[arg(long, env = "RELAY_PUBLIC_HOST")]
    pub public_host: Option<String>,

    /// Which agent calls talk to. Default: `elevenlabs` when ELEVENLABS_AGENT_ID is set,
    /// otherwise the built-in `echo` agent.
    #[arg(long, env = "RELAY_AGENT", value_enum)]
    pub agent: Option<AgentKind>,

    /// ElevenLabs API key: when set, each call fetches a signed URL (private agents).
    #[arg(long, env = "ELEVENLABS_API_KEY", hide_env_values = true)]
    pub elevenlabs_api_key: Option<Secret>,

    /// ElevenLabs agent id.
    #[arg(long, env = "ELEVENLABS_AGENT_ID")]
    pub elevenlabs_agent_id: Option<String>,

    /// ElevenLabs REST origin; the WebSocket origin follows from it (https → wss).
    #[arg(
        long,
        env = "ELEVENLABS_API_BASE",
        default_value = "https://api.elevenlabs.io"
    )]
    pub elevenlabs_api_base: String,

    /// Maximum concurrent calls; further `/media` upgrades get 503.
    #[arg(long, env = "RELAY_MAX_CALLS", default_value_t = 10_000)]
    pub max_calls: usize,

    /// On SIGTERM/SIGINT, how long calls may continue before they are closed with 1001.
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Echo agent: delay before the caller's audio is played back, in ms.
    #[arg(long, env = "RELAY_ECHO_DELAY_MS", default_value_t = 500)]
    pub echo_delay_ms: u64,

    /// Caller audio kept while the agent connects, in ms (20 ms frames); overflow drops the
    /// oldest frames and counts them.
    #[arg(long, env = "RELAY_EARLY_AUDIO_MS", default_value_t = 5000)]
    pub early_audio_ms: u64,

    /// Time allowed for the agent to connect and report its session ready, in seconds.
    #[arg(long, env = "RELAY_AGENT_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub agent_connect_timeout_secs: u64,

    /// Time allowed between the WebSocket upgrade and Twilio's `start` message, in seconds.
    #[arg(long, env = "RELAY_START_TIMEOUT_SECS", default_value_t = 10)]
    pub start_timeout_secs: u64,

    /// Hard limit on a call's length, in seconds.
    #[arg(long, env = "RELAY_MAX_CALL_DURATION_SECS", default_value_t = 4 * 3600)]
    pub max_call_duration_secs: u64,

    /// Largest agent audio chunk sent to Twilio as one `media` message, in ms; larger agent
    /// events are split (protocols.md §1.4/§5.3 recommend 20–100 ms chunks).
    #[arg(long, env = "RELAY_TWILIO_CHUNK_MS", default_value_t = 100)]
    pub twilio_chunk_ms: u64,

    /// Twilio account auth token: when set, `X-Twilio-Signature` is required and checked on
    /// `/twiml` and on the `/media` upgrade against `--public-host` (protocols.md §1.6).
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<Secret>,

    /// Run a vendor agent without Twilio signature checks (anyone who finds the URL can open a
    /// media stream to your agent). Without a token the built-in echo agent runs regardless.
    #[arg(
        long,
        env = "RELAY_INSECURE_SKIP_TWILIO_SIGNATURE",
        default_value_t = false
    )]
    pub insecure_skip_twilio_signature: bool,

    /// Secret for per-call stream tokens (`relay_token` parameter). Default: derived from
    /// TWILIO_AUTH_TOKEN. Set the same value on every relay behind one load balancer.
    #[arg(long, env = "RELAY_TOKEN_SECRET", hide_env_values = true)]
    pub relay_token_secret: Option<Secret>,

    /// Twilio account SID (`AC…`), for placing outbound calls.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// Default caller ID (E.164) for outbound calls.
    #[arg(long, env = "TWILIO_PHONE_NUMBER")]
    pub twilio_phone_number: Option<String>,

    /// Twilio REST origin (tests point it at a local mock).
    #[arg(
        long,
        env = "TWILIO_API_BASE",
        default_value = "https://api.twilio.com"
    )]
    pub twilio_api_base: String,

    /// Bearer token required on `POST /outbound-call`; without it that route answers 404.
    #[arg(long, env = "RELAY_API_TOKEN", hide_env_values = true)]
    pub relay_api_token: Option<Secret>,

    /// Outbound calls each client (IP address) may place per minute; more get 429.
    #[arg(long, env = "RELAY_OUTBOUND_CALLS_PER_MINUTE", default_value_t = 30)]
    pub outbound_calls_per_minute: u32,

    /// Agent system prompt sent as a `prompt` stream parameter by `/twiml`.
    #[arg(long, env = "RELAY_AGENT_PROMPT")]
    pub agent_prompt: Option<String>,

    /// Agent first message sent as a `first_message` stream parameter by `/twiml`.
    #[arg(long, env = "RELAY_AGENT_FIRST_MESSAGE")]
    pub agent_first_message: Option<String>,

    /// Agent language (ISO code) sent as a `language` stream parameter by `/twiml`.
    #[arg(long, env = "RELAY_AGENT_LANGUAGE")]
    pub agent_language: Option<String>,

    /// Agent voice id sent as a `voice_id` stream parameter by `/twiml`.
    #[arg(long, env = "RELAY_AGENT_VOICE_ID")]
    pub agent_voice_id: Option<String>,
}

/// Per-call settings derived from [`ServeArgs`].
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Which agent.
    pub agent: AgentKind,
    /// ElevenLabs settings when `agent` is ElevenLabs.
    pub elevenlabs: Option<ElevenLabsSettings>,
    /// Echo agent delay.
    pub echo_delay: Duration,
    /// Early-audio buffer capacity in 20 ms frames.
    pub early_audio_frames: usize,
    /// Agent connect + ready timeout.
    pub agent_connect_timeout: Duration,
    /// Upgrade → `start` timeout.
    pub start_timeout: Duration,
    /// Maximum call length.
    pub max_call_duration: Duration,
    /// Maximum bytes of agent audio per Twilio `media` message.
    pub twilio_chunk_bytes: usize,
}

/// A configuration error, reported before binding (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Longest `<Parameter>` name + value Twilio accepts, exclusive (protocols.md §1.1: under 500).
pub const MAX_PARAMETER_CHARS: usize = 500;

impl ServeArgs {
    /// Validates the flags and derives the per-call settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending flag.
    pub fn call_settings(&self) -> Result<CallSettings, ConfigError> {
        let token = self
            .twilio_auth_token
            .as_ref()
            .filter(|t| !t.expose().is_empty());
        let agent = self.agent.unwrap_or(if self.elevenlabs_agent_id.is_some() {
            AgentKind::Elevenlabs
        } else {
            AgentKind::Echo
        });
        let elevenlabs = match agent {
            AgentKind::Elevenlabs => {
                let agent_id = self
                    .elevenlabs_agent_id
                    .clone()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| {
                        ConfigError("--agent elevenlabs needs ELEVENLABS_AGENT_ID".into())
                    })?;
                crate::agent::connect::public_conversation_url(
                    &self.elevenlabs_api_base,
                    &agent_id,
                )
                .map_err(|e| ConfigError(e.to_string()))?;
                Some(ElevenLabsSettings {
                    api_key: self
                        .elevenlabs_api_key
                        .clone()
                        .filter(|k| !k.expose().is_empty()),
                    agent_id,
                    api_base: self.elevenlabs_api_base.clone(),
                })
            }
            AgentKind::Echo => None,
        };
        if self.outbound_calls_per_minute == 0 {
            return Err(ConfigError(
                "--outbound-calls-per-minute must be at least 1".into(),
            ));
        }
        if self.relay_api_token.is_some()
            && (self.twilio_account_sid.is_none() || token.is_none() || self.public_host.is_none())
        {
            return Err(ConfigError(
                "RELAY_API_TOKEN (outbound calls) needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and --public-host".into(),
            ));
        }
        if self.max_calls == 0 {
            return Err(ConfigError("--max-calls must be at least 1".into()));
        }
        if !(20..=60_000).contains(&self.twilio_chunk_ms) {
            return Err(ConfigError("--twilio-chunk-ms must be 20..=60000".into()));
        }
        if self.echo_delay_ms > 60_000 {
            return Err(ConfigError("--echo-delay-ms must be at most 60000".into()));
        }
        if self.early_audio_ms > 60_000 {
            return Err(ConfigError("--early-audio-ms must be at most 60000".into()));
        }
        for (secs, flag) in [
            (
                self.agent_connect_timeout_secs,
                "--agent-connect-timeout-secs",
            ),
            (self.start_timeout_secs, "--start-timeout-secs"),
            (self.max_call_duration_secs, "--max-call-duration-secs"),
        ] {
            if secs == 0 {
                return Err(ConfigError(format!("{flag} must be at least 1")));
            }
        }
        if let Some(h) = &self.public_host {
            if h.is_empty() || h.contains('/') || h.contains("://") {
                return Err(ConfigError(
                    "--public-host is a host name (and optional port), not a URL".into(),
                ));
            }
        }
        if token.is_some() && self.public_host.is_none() {
            return Err(ConfigError(
                "TWILIO_AUTH_TOKEN needs --public-host (signatures are checked against the public origin, never the Host header)".into(),
            ));
        }
        if token.is_none() && agent != AgentKind::Echo && !self.insecure_skip_twilio_signature {
            return Err(ConfigError(
                "a vendor agent needs TWILIO_AUTH_TOKEN (Twilio signature checks), or --insecure-skip-twilio-signature to run without them".into(),
            ));
        }
        for (name, value) in self.agent_parameters() {
            if name.chars().count() + value.chars().count() >= MAX_PARAMETER_CHARS {
                return Err(ConfigError(format!(
                    "agent setting {name} is too long for a Twilio <Parameter> (name + value must be under {MAX_PARAMETER_CHARS} characters)"
                )));
            }
        }
        Ok(CallSettings {
            agent,
            elevenlabs,
            echo_delay: Duration::from_millis(self.echo_delay_ms),
            early_audio_frames: (self.early_audio_ms / 20) as usize,
            agent_connect_timeout: Duration::from_secs(self.agent_connect_timeout_secs),
            start_timeout: Duration::from_secs(self.start_timeout_secs),
            max_call_duration: Duration::from_secs(self.max_call_duration_secs),
            twilio_chunk_bytes: (self.twilio_chunk_ms * crate::audio::MULAW_BYTES_PER_MS) as usize,
        })
    }

    /// The configured agent settings as stream parameters (name, value), for `/twiml`.
    pub fn agent_parameters(&self) -> Vec<(&'static str, String)> {
        [
            ("prompt", &self.agent_prompt),
            ("first_message", &self.agent_first_message),
            ("language", &self.agent_language),
            ("voice_id", &self.agent_voice_id),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.clone().map(|v| (n, v)))
        .collect()
    }

    /// Defaults as if `media-relay serve` ran with no flags and no environment (for tests).
    pub fn defaults() -> Self {
        // Parsing a fixed argument list with only defaults cannot fail.
        let cli = Cli::try_parse_from(["media-relay", "serve"]).expect("defaults parse");
        match cli.command {
            Command::Serve(a) => a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut v = vec!["media-relay", "serve"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Serve(a) => a,
        })
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
        let dbg = format!("{a:?} {:?}", a.call_settings().unwrap());
        assert!(!dbg.contains("sk_live_123"), "{dbg}");
        assert!(!dbg.contains("twilio_secret_456"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
    }

    #[test]
    fn agent_defaults_and_validation() {
        assert_eq!(
            args(&[]).unwrap().call_settings().unwrap().agent,
            AgentKind::Echo
        );
        let s = args(&[
            "--elevenlabs-agent-id",
            "x",
            "--insecure-skip-twilio-signature",
        ])
        .unwrap()
        .call_settings()
        .unwrap();
        assert_eq!(s.agent, AgentKind::Elevenlabs);
        // A vendor agent without signature checks must be asked for explicitly.
        assert!(args(&["--elevenlabs-agent-id", "x"])
            .unwrap()
            .call_settings()
            .is_err());
        let signed = [
            "--elevenlabs-agent-id",
            "x",
            "--twilio-auth-token",
            "tok",
            "--public-host",
            "relay.example.com",
        ];
        assert!(args(&signed).unwrap().call_settings().is_ok());
        assert!(args(&signed[..4]).unwrap().call_settings().is_err());
        assert!(args(&["--agent", "elevenlabs"])
            .unwrap()
            .call_settings()
            .is_err());
        assert!(args(&["--max-calls", "0"])
            .unwrap()
            .call_settings()
            .is_err());
        assert!(args(&["--public-host", "https://x"])
            .unwrap()
            .call_settings()
            .is_err());
        let long = "p".repeat(495);
        assert!(args(&["--agent-prompt", &long])
            .unwrap()
            .call_settings()
            .is_err());
        assert!(args(&["--listen", "nope"]).is_err());
        assert!(args(&[
            "--elevenlabs-agent-id",
            "x",
            "--elevenlabs-api-base",
            "ftp://x"
        ])
        .unwrap()
        .call_settings()
        .is_err());
    }
}

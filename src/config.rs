//! Command line and environment configuration (clap derive; every flag also reads an env
//! var), validation before binding, and the settings structs handed down to the layers
//! below (`call::CallSettings`, `agent::AgentSettings`, `http::server::HttpLimits`). Imports
//! settings types from below; nothing below imports this module.

use crate::agent::connect::ElevenLabsSettings;
use crate::agent::{AgentKind, AgentSettings, AssemblyAiSettings, BargeInTrigger, OpenAiSettings};
pub use crate::auth::Secret;
use crate::call::tools::ToolSettings;
use crate::call::CallSettings;
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

    /// Which agent calls talk to unless their `agent` parameter names another. Default:
    /// `elevenlabs` when ELEVENLABS_AGENT_ID is set, otherwise the built-in `echo` agent.
    #[arg(long, env = "RELAY_AGENT", value_enum)]
    pub agent: Option<AgentKind>,

    /// AssemblyAI Voice Agent API key (`Authorization: Bearer`).
    #[arg(long, env = "ASSEMBLYAI_API_KEY", hide_env_values = true)]
    pub assemblyai_api_key: Option<Secret>,

    /// AssemblyAI Voice Agent WebSocket URL.
    #[arg(
        long,
        env = "ASSEMBLYAI_URL",
        default_value = "wss://agents.assemblyai.com/v1/ws"
    )]
    pub assemblyai_url: String,

    /// AssemblyAI voice when the call's `voice_id` parameter sets none (service default:
    /// `ivy`).
    #[arg(long, env = "ASSEMBLYAI_VOICE")]
    pub assemblyai_voice: Option<String>,

    /// Which AssemblyAI signal clears Twilio's playback: `reply-interrupted` (the agent's
    /// verdict; back-channels do not cut) or `speech-started` (faster, may cut on "uh-huh").
    #[arg(
        long,
        env = "ASSEMBLYAI_BARGE_IN",
        value_enum,
        default_value = "reply-interrupted"
    )]
    pub assemblyai_barge_in: BargeInTrigger,

    /// OpenAI API key (`Authorization: Bearer`).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,

    /// OpenAI Realtime WebSocket URL (the model is its `model` query parameter).
    #[arg(
        long,
        env = "OPENAI_REALTIME_URL",
        default_value = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )]
    pub openai_realtime_url: String,

    /// OpenAI Realtime model; replaces the URL's `model` parameter when set.
    #[arg(long, env = "OPENAI_REALTIME_MODEL")]
    pub openai_model: Option<String>,

    /// OpenAI voice when the call's `voice_id` parameter sets none.
    #[arg(long, env = "OPENAI_VOICE", default_value = "alloy")]
    pub openai_voice: String,

    /// Tool webhook: agents' tool calls are POSTed here (see the README's Tools section).
    #[arg(long, env = "RELAY_TOOL_WEBHOOK_URL")]
    pub tool_webhook_url: Option<String>,

    /// Key of the tool webhook's `X-Relay-Signature` (HMAC-SHA256).
    #[arg(long, env = "RELAY_TOOL_WEBHOOK_SECRET", hide_env_values = true)]
    pub tool_webhook_secret: Option<Secret>,

    /// How long the tool webhook may take, in ms; the agent then gets an error result.
    #[arg(long, env = "RELAY_TOOL_TIMEOUT_MS", default_value_t = 8000)]
    pub tool_timeout_ms: u64,

    /// Most tool calls one call may make; later ones get an error result.
    #[arg(long, env = "RELAY_MAX_TOOL_CALLS_PER_CALL", default_value_t = 32)]
    pub max_tool_calls_per_call: u32,

    /// JSON file with the tool definitions offered to AssemblyAI and OpenAI agents: an array
    /// of `{"name","description","parameters"}` (a call's `tools` parameter replaces them).
    #[arg(long, env = "RELAY_AGENT_TOOLS_FILE")]
    pub agent_tools_file: Option<std::path::PathBuf>,

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

    /// On SIGTERM/SIGINT, how long calls in progress may continue (new calls are refused
    /// with 503 and /readyz answers 503 at once); calls still running then hear the drain
    /// notice (if any) and are closed with 1001.
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// μ-law audio played to callers still on the line at the drain deadline, before their
    /// call closes: a WAV file of G.711 μ-law 8000 Hz mono, or headerless μ-law bytes; at
    /// most 10 s.
    #[arg(long, env = "RELAY_DRAIN_NOTICE_FILE")]
    pub drain_notice_file: Option<std::path::PathBuf>,

    /// Echo agent: delay before the caller's audio is played back, in ms.
    #[arg(long, env = "RELAY_ECHO_DELAY_MS", default_value_t = 500)]
    pub echo_delay_ms: u64,

    /// Caller audio kept while the agent connects, in ms of audio (8 bytes per ms, however
    /// the caller frames it); overflow drops the oldest and counts it.
    #[arg(long, env = "RELAY_EARLY_AUDIO_MS", default_value_t = 5000)]
    pub early_audio_ms: u64,

    /// Caller audio waiting for a slow agent socket, in bytes of μ-law (8000 = 1 s); beyond
    /// it the oldest is dropped and counted (`outbox_full`).
    #[arg(long, env = "RELAY_AGENT_OUTBOX_BYTES", default_value_t = 16_000)]
    pub agent_outbox_bytes: usize,

    /// Agent audio waiting for a slow Twilio socket, in bytes of μ-law; beyond it the oldest
    /// is dropped and counted (`outbox_full`).
    #[arg(long, env = "RELAY_TWILIO_OUTBOX_BYTES", default_value_t = 262_144)]
    pub twilio_outbox_bytes: usize,

    /// A leg whose socket accepts nothing for this long ends the call, in ms.
    #[arg(long, env = "RELAY_WRITE_STALL_TIMEOUT_MS", default_value_t = 5000)]
    pub write_stall_timeout_ms: u64,

    /// After `start`, a Twilio leg that sends nothing for this long ends the call, in seconds
    /// (Twilio sends media every 20 ms, silence included).
    #[arg(long, env = "RELAY_TWILIO_IDLE_TIMEOUT_SECS", default_value_t = 10)]
    pub twilio_idle_timeout_secs: u64,

    /// Keypad digits go to the agent once no new digit came for this long (or on `#`), in ms.
    #[arg(long, env = "RELAY_DTMF_INTERDIGIT_MS", default_value_t = 1500)]
    pub dtmf_interdigit_ms: u64,

    /// Before the upgrade: time allowed for a request's headers, in ms.
    #[arg(long, env = "RELAY_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Before the upgrade: time allowed to read a webhook body, in ms.
    #[arg(long, env = "RELAY_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// Before the upgrade: most concurrent HTTP connections that have not upgraded; more are
    /// closed at once (counted).
    #[arg(long, env = "RELAY_MAX_PENDING_CONNECTIONS", default_value_t = 1024)]
    pub max_pending_connections: usize,

    /// Listen backlog: connections the kernel completes and queues before the relay accepts
    /// them (`listen(2)`); the kernel caps it at `net.core.somaxconn`. Without this, tokio
    /// (mio) asks for 128, too few for the calls of a lost instance arriving at once.
    #[arg(long, env = "RELAY_LISTEN_BACKLOG", default_value_t = 1024)]
    pub listen_backlog: u32,

    /// Before the upgrade: largest request head (request line + headers), in bytes; at least
    /// 8192 (hyper's smallest read buffer).
    #[arg(long, env = "RELAY_MAX_HEADER_BYTES", default_value_t = 16_384)]
    pub max_header_bytes: usize,

    /// Bearer token for `GET /calls` and `GET /calls/{call_sid}`; without it they answer 404.
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Log line format on stderr: `text` (no colours unless stderr is a terminal) or `json`
    /// (one object per line, for log pipelines).
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

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
    /// events are split (Twilio Media Streams messages, <https://www.twilio.com/docs/voice/media-streams/websocket-messages>).
    #[arg(long, env = "RELAY_TWILIO_CHUNK_MS", default_value_t = 100)]
    pub twilio_chunk_ms: u64,

    /// Twilio account auth token: when set, `X-Twilio-Signature` is required and checked on
    /// `/twiml` and on the `/media` upgrade against `--public-host` (Twilio webhook security, <https://www.twilio.com/docs/usage/security>).
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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration error, reported before binding (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Longest drain notice, in μ-law bytes (10 s).
pub const MAX_DRAIN_NOTICE_BYTES: usize = 80_000;

/// Longest `<Parameter>` name + value Twilio accepts, exclusive (under 500 characters: Twilio
/// TwiML `<Stream>` docs, <https://www.twilio.com/docs/voice/twiml/stream>).
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
        let nonempty = |s: &Option<Secret>| s.clone().filter(|k| !k.expose().trim().is_empty());
        let agents = self.agent_settings()?;
        let default_agent = self.agent.unwrap_or(if agents.elevenlabs.is_some() {
            AgentKind::Elevenlabs
        } else {
            AgentKind::Echo
        });
        if !agents.is_configured(default_agent) {
            return Err(ConfigError(format!(
                "--agent {} is not configured: {}",
                default_agent.as_str(),
                match default_agent {
                    AgentKind::Elevenlabs => "set ELEVENLABS_AGENT_ID",
                    AgentKind::Assemblyai => "set ASSEMBLYAI_API_KEY",
                    AgentKind::Openai => "set OPENAI_API_KEY",
                    AgentKind::Echo => "",
                }
            )));
        }
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
        for (v, flag) in [
            (self.agent_outbox_bytes, "--agent-outbox-bytes"),
            (self.twilio_outbox_bytes, "--twilio-outbox-bytes"),
            (self.max_pending_connections, "--max-pending-connections"),
            (self.listen_backlog as usize, "--listen-backlog"),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("{flag} must be at least 1")));
            }
        }
        if self.max_header_bytes < 8192 {
            return Err(ConfigError(
                "--max-header-bytes must be at least 8192 (hyper's smallest read buffer)".into(),
            ));
        }
        // Time limits: at least 1, and at most 30 days (far beyond any use, and small enough
        // that `Instant + limit` can never overflow).
        const MAX_SECS: u64 = 30 * 86_400;
        for (v, flag, max) in [
            (
                self.agent_connect_timeout_secs,
                "--agent-connect-timeout-secs",
                MAX_SECS,
            ),
            (self.start_timeout_secs, "--start-timeout-secs", MAX_SECS),
            (
                self.max_call_duration_secs,
                "--max-call-duration-secs",
                MAX_SECS,
            ),
            (
                self.twilio_idle_timeout_secs,
                "--twilio-idle-timeout-secs",
                MAX_SECS,
            ),
            (self.tool_timeout_ms, "--tool-timeout-ms", MAX_SECS * 1000),
            (
                self.write_stall_timeout_ms,
                "--write-stall-timeout-ms",
                MAX_SECS * 1000,
            ),
            (
                self.dtmf_interdigit_ms,
                "--dtmf-interdigit-ms",
                MAX_SECS * 1000,
            ),
            (
                self.header_read_timeout_ms,
                "--header-read-timeout-ms",
                MAX_SECS * 1000,
            ),
            (
                self.body_read_timeout_ms,
                "--body-read-timeout-ms",
                MAX_SECS * 1000,
            ),
        ] {
            if v == 0 || v > max {
                return Err(ConfigError(format!("{flag} must be 1..={max}")));
            }
        }
        if self.drain_timeout_secs > MAX_SECS {
            return Err(ConfigError(format!(
                "--drain-timeout-secs must be at most {MAX_SECS}"
            )));
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
        let vendor_configured =
            agents.elevenlabs.is_some() || agents.assemblyai.is_some() || agents.openai.is_some();
        if token.is_none() && vendor_configured && !self.insecure_skip_twilio_signature {
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
        let webhook_url = match &self.tool_webhook_url {
            None => None,
            Some(u) if u.trim().is_empty() => None,
            Some(u) => {
                let uri: hyper::Uri = u.parse().map_err(|e| {
                    ConfigError(format!("RELAY_TOOL_WEBHOOK_URL is not a URL: {e}"))
                })?;
                if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none()
                {
                    return Err(ConfigError(
                        "RELAY_TOOL_WEBHOOK_URL must be an http:// or https:// URL".into(),
                    ));
                }
                Some(uri)
            }
        };
        let drain_notice = match &self.drain_notice_file {
            None => None,
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| {
                    ConfigError(format!(
                        "cannot read --drain-notice-file {}: {e}",
                        p.display()
                    ))
                })?;
                let audio = crate::audio::mulaw_from_file_bytes(&bytes).map_err(|e| {
                    ConfigError(format!("--drain-notice-file {}: {e}", p.display()))
                })?;
                if audio.is_empty() || audio.len() > MAX_DRAIN_NOTICE_BYTES {
                    return Err(ConfigError(format!(
                        "--drain-notice-file must hold 1 byte to 10 s ({MAX_DRAIN_NOTICE_BYTES} bytes) of μ-law audio"
                    )));
                }
                Some(std::sync::Arc::from(audio))
            }
        };
        Ok(CallSettings {
            drain_notice,
            default_agent,
            agents,
            echo_delay: Duration::from_millis(self.echo_delay_ms),
            early_audio_bytes: crate::audio::ms_to_bytes(self.early_audio_ms) as usize,
            agent_connect_timeout: Duration::from_secs(self.agent_connect_timeout_secs),
            start_timeout: Duration::from_secs(self.start_timeout_secs),
            twilio_idle_timeout: Duration::from_secs(self.twilio_idle_timeout_secs),
            max_call_duration: Duration::from_secs(self.max_call_duration_secs),
            twilio_chunk_bytes: crate::audio::ms_to_bytes(self.twilio_chunk_ms) as usize,
            agent_outbox_bytes: self.agent_outbox_bytes,
            twilio_outbox_bytes: self.twilio_outbox_bytes,
            write_stall_timeout: Duration::from_millis(self.write_stall_timeout_ms),
            dtmf_interdigit: Duration::from_millis(self.dtmf_interdigit_ms),
            tools: ToolSettings {
                webhook_url,
                secret: nonempty(&self.tool_webhook_secret),
                timeout: Duration::from_millis(self.tool_timeout_ms),
                max_per_call: self.max_tool_calls_per_call,
            },
        })
    }

    /// The dialects this relay can use, from their flags.
    ///
    /// # Errors
    /// [`ConfigError`] for a bad URL or tools file.
    pub fn agent_settings(&self) -> Result<AgentSettings, ConfigError> {
        let nonempty = |s: &Option<Secret>| s.clone().filter(|k| !k.expose().trim().is_empty());
        let elevenlabs = match self
            .elevenlabs_agent_id
            .clone()
            .filter(|s| !s.trim().is_empty())
        {
            Some(agent_id) => {
                crate::agent::connect::public_conversation_url(
                    &self.elevenlabs_api_base,
                    &agent_id,
                )
                .map_err(|e| ConfigError(e.to_string()))?;
                Some(ElevenLabsSettings {
                    api_key: nonempty(&self.elevenlabs_api_key),
                    agent_id,
                    api_base: self.elevenlabs_api_base.clone(),
                })
            }
            None => None,
        };
        let ws_url = |url: &str, var: &str| -> Result<String, ConfigError> {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| ConfigError(format!("{var} is not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("ws") | Some("wss")) || uri.host().is_none() {
                return Err(ConfigError(format!("{var} must be a ws:// or wss:// URL")));
            }
            Ok(url.to_owned())
        };
        let assemblyai = match nonempty(&self.assemblyai_api_key) {
            Some(api_key) => Some(AssemblyAiSettings {
                api_key,
                url: ws_url(&self.assemblyai_url, "ASSEMBLYAI_URL")?,
                voice: self.assemblyai_voice.clone().filter(|v| !v.is_empty()),
                barge_in: self.assemblyai_barge_in,
            }),
            None => None,
        };
        let openai = match nonempty(&self.openai_api_key) {
            Some(api_key) => {
                let mut url = ws_url(&self.openai_realtime_url, "OPENAI_REALTIME_URL")?;
                if let Some(model) = self.openai_model.as_deref().filter(|m| !m.is_empty()) {
                    url = with_query_param(&url, "model", model);
                }
                Some(OpenAiSettings {
                    api_key,
                    url,
                    voice: self.openai_voice.clone(),
                })
            }
            None => None,
        };
        let tools = match &self.agent_tools_file {
            None => serde_json::Value::Array(Vec::new()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "cannot read --agent-tools-file {}: {e}",
                        path.display()
                    ))
                })?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| ConfigError(format!("--agent-tools-file is not JSON: {e}")))?;
                let ok = v.as_array().is_some_and(|a| {
                    a.iter()
                        .all(|t| t.get("name").is_some_and(serde_json::Value::is_string))
                });
                if !ok {
                    return Err(ConfigError(
                        "--agent-tools-file must hold a JSON array of objects with a \"name\""
                            .into(),
                    ));
                }
                v
            }
        };
        Ok(AgentSettings {
            elevenlabs,
            assemblyai,
            openai,
            tools,
        })
    }

    /// The limits that protect the HTTP server before the upgrade.
    pub fn http_limits(&self) -> crate::http::server::HttpLimits {
        crate::http::server::HttpLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            max_pending_connections: self.max_pending_connections,
            max_header_bytes: self.max_header_bytes,
        }
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

/// `url` with query parameter `name` set to `value` (replaced if present).
fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    pairs.push((name.to_owned(), value.to_owned()));
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{base}?{q}")
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
            args(&[]).unwrap().call_settings().unwrap().default_agent,
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
        assert_eq!(s.default_agent, AgentKind::Elevenlabs);
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
        // A default agent must be configured; per-dialect settings are validated.
        assert!(args(&["--agent", "openai"])
            .unwrap()
            .call_settings()
            .is_err());
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
        .call_settings()
        .unwrap();
        assert_eq!(
            openai.agents.openai.unwrap().url,
            "wss://api.openai.com/v1/realtime?model=gpt-realtime-2"
        );
        assert!(
            args(&["--assemblyai-api-key", "k", "--assemblyai-url", "https://x"])
                .unwrap()
                .call_settings()
                .is_err()
        );
        assert!(args(&["--tool-webhook-url", "ftp://x"])
            .unwrap()
            .call_settings()
            .is_err());
        assert!(args(&["--agent-outbox-bytes", "0"])
            .unwrap()
            .call_settings()
            .is_err());
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

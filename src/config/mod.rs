//! Command line and environment configuration (clap derive; every flag also reads an env
//! var), validated before binding and turned into the plain settings structs the layers
//! below own ([`crate::http::settings::RelaySettings`] and what it holds). The top of the
//! crate: only `main` (and tests building a relay) use this module, and nothing below
//! imports it.
//!
//! Flags are grouped by the layer they feed: [`HttpArgs`] (the server and its routes),
//! [`CallArgs`] (every call), and the groups each dialect and each carrier defines for itself
//! (`agent::AgentArgs`, `carrier::CarrierArgs`, flattened in).

use crate::agent::{AgentArgs, AgentKind, AgentSettings};
use crate::auth::tokens::StreamTokens;
use crate::auth::{BearerToken, Secret};
use crate::call::settings::{CallControl, TransferDest};
use crate::call::tool_webhook::ToolSettings;
use crate::call::CallSettings;
use crate::carrier::{
    parameter_fits, CarrierArgs, CarrierKind, CarrierSettings, SharedSettings, MAX_PARAMETER_CHARS,
};
use crate::http::settings::{
    ControlSettings, HttpLimits, HttpSettings, RelaySettings, RuntimeLayout,
};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

/// `media-relay`: carrier media streams ⇄ voice-agent relay.
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
    Serve(Box<ServeArgs>),
    /// Print the README's dialect table (generated from the registered dialects).
    Dialects,
}

/// `media-relay serve` flags. Durations carry their unit in the flag name.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The server and its routes.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Every call.
    #[command(flatten)]
    pub call: CallArgs,
    /// The agent dialects.
    #[command(flatten)]
    pub agents: AgentArgs,
    /// The carriers.
    #[command(flatten)]
    pub carriers: CarrierArgs,
}

/// The server's flags.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on (HTTP: the carriers' media WebSockets and webhooks, /metrics,
    /// /healthz, /readyz).
    #[arg(long, env = "RELAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Thread layout: `per-core` (one single-thread runtime per worker thread, each with its
    /// own `SO_REUSEPORT` listener; a call and both of its sockets stay on the thread that
    /// accepted it), `multi-thread` (one work-stealing tokio runtime, one listener) or
    /// `uring` (per-core with the call sockets on io_uring; needs the `uring` build feature).
    #[arg(long, env = "RELAY_RUNTIME", value_enum, default_value = "per-core")]
    pub runtime: RuntimeLayout,

    /// Worker threads; 0 = one per CPU the process may run on (its affinity mask).
    #[arg(long, env = "RELAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Public host name (and port if not 443) carriers use to reach the relay, e.g.
    /// `relay.example.com`; the markup's stream URL becomes `wss://{host}/media`. Without it,
    /// the incoming-call webhook uses the request's Host header.
    #[arg(long, env = "RELAY_PUBLIC_HOST")]
    pub public_host: Option<String>,

    /// Maximum concurrent calls; further media upgrades get 503.
    #[arg(long, env = "RELAY_MAX_CALLS", default_value_t = 10_000)]
    pub max_calls: usize,

    /// On SIGTERM/SIGINT, how long calls in progress may continue (new calls are refused
    /// with 503 and /readyz answers 503 at once); calls still running then hear the drain
    /// notice (if any) and are closed with 1001.
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

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

    /// Secret for per-call stream tokens (`relay_token` parameter) and relay-signed URLs.
    /// Default: derived from TWILIO_AUTH_TOKEN (or TELNYX_API_KEY). Set the same value on
    /// every relay behind one load balancer.
    #[arg(long, env = "RELAY_TOKEN_SECRET", hide_env_values = true)]
    pub relay_token_secret: Option<Secret>,

    /// Bearer token required on `POST /outbound-call`; without it that route answers 404.
    #[arg(long, env = "RELAY_API_TOKEN", hide_env_values = true)]
    pub relay_api_token: Option<Secret>,

    /// Outbound calls each client (IP address) may place per minute; more get 429.
    #[arg(long, env = "RELAY_OUTBOUND_CALLS_PER_MINUTE", default_value_t = 30)]
    pub outbound_calls_per_minute: u32,

    /// The carrier `POST /outbound-call` uses when the request names none.
    #[arg(
        long,
        env = "RELAY_OUTBOUND_CARRIER",
        value_enum,
        default_value = "twilio"
    )]
    pub outbound_carrier: CarrierKind,
}

/// Every call's flags.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Which agent calls talk to unless their `agent` parameter names another. Default:
    /// `elevenlabs` when ELEVENLABS_AGENT_ID is set, otherwise the built-in `echo` agent.
    #[arg(long, env = "RELAY_AGENT", value_enum)]
    pub agent: Option<AgentKind>,

    /// Tool webhook: agents' tool calls are POSTed here (see the README's Tools section).
    #[arg(long, env = "RELAY_TOOL_WEBHOOK_URL")]
    pub tool_webhook_url: Option<String>,

    /// Key of the tool webhook's `X-Relay-Signature` (HMAC-SHA256).
    #[arg(long, env = "RELAY_TOOL_WEBHOOK_SECRET", hide_env_values = true)]
    pub tool_webhook_secret: Option<Secret>,

    /// Post-call webhook: each call's `post_call_transcription` record is POSTed here when it
    /// ends (see the README's Call records section).
    #[arg(long, env = "RELAY_POST_CALL_WEBHOOK_URL")]
    pub post_call_webhook_url: Option<String>,

    /// Key of the post-call webhook's `Relay-Signature` (HMAC-SHA256, `t=…,v0=…`).
    #[arg(long, env = "RELAY_POST_CALL_WEBHOOK_SECRET", hide_env_values = true)]
    pub post_call_webhook_secret: Option<Secret>,

    /// Which calls are recorded: `off`, `all`, or `on-demand` (calls whose stream carries
    /// `relay_record=1`: `/twiml?record=1`, `/outbound-call` with `"record": true`). One
    /// stereo G.711 μ-law WAV per call (see the README's Call records section).
    #[arg(long, env = "RELAY_RECORD", default_value = "off", value_parser = parse_record_mode)]
    pub record: crate::call::recording::RecordMode,

    /// Where recordings are written (`<call SID>_<stream SID>.wav`, as `.part` until
    /// complete); created if missing.
    #[arg(long, env = "RELAY_RECORDING_DIR", default_value = "recordings")]
    pub recording_dir: std::path::PathBuf,

    /// Upload finished recordings to S3-compatible storage, `s3://bucket/prefix` (the
    /// recording directory is then the spool); credentials and region from the AWS
    /// environment variables.
    #[arg(long, env = "RELAY_RECORDING_URL")]
    pub recording_url: Option<String>,

    /// The S3 endpoint (MinIO, moto, …), path-style; default AWS (or `AWS_ENDPOINT_URL`).
    #[arg(long, env = "RELAY_RECORDING_S3_ENDPOINT")]
    pub recording_s3_endpoint: Option<String>,

    /// Half-second blocks (8 KB each) the recording writer's queue holds; beyond it a
    /// recording loses blocks (degraded, written as silence), the call never waits.
    #[arg(long, env = "RELAY_RECORDING_QUEUE_BLOCKS", default_value_t = 4096)]
    pub recording_queue_blocks: usize,

    /// A keypad key that pauses the recording (both channels silent, PCI) and resumes it
    /// pressed again; it is not sent to the agent, and keys pressed while paused are not
    /// logged. Off when unset.
    #[arg(long, env = "RELAY_RECORDING_PAUSE_DIGIT")]
    pub recording_pause_digit: Option<char>,

    /// How long the tool webhook may take, in ms; the agent then gets an error result.
    #[arg(long, env = "RELAY_TOOL_TIMEOUT_MS", default_value_t = 8000)]
    pub tool_timeout_ms: u64,

    /// Most tool calls one call may make; later ones get an error result.
    #[arg(long, env = "RELAY_MAX_TOOL_CALLS_PER_CALL", default_value_t = 32)]
    pub max_tool_calls_per_call: u32,

    /// μ-law audio played to callers still on the line at the drain deadline, before their
    /// call closes: a WAV file of G.711 μ-law 8000 Hz mono, or headerless μ-law bytes; at
    /// most 10 s.
    #[arg(long, env = "RELAY_DRAIN_NOTICE_FILE")]
    pub drain_notice_file: Option<std::path::PathBuf>,

    /// The message the relay plays to an outbound call that reached voicemail (answering
    /// machine detection, `/outbound-call`'s `machine_detection`), then hangs up once it was
    /// heard: a WAV of G.711 μ-law 8000 Hz mono or headerless μ-law, at most 30 s. Unset:
    /// the agent leaves the message (its `voicemail_message`, or its own words).
    #[arg(long, env = "RELAY_VOICEMAIL_AUDIO_FILE")]
    pub voicemail_audio_file: Option<std::path::PathBuf>,

    /// Hang up at once when answering-machine detection says `machine_start` (a machine
    /// answered, its greeting still playing; with `machine_detection: "Enable"`), instead
    /// of streaming the call to the agent. `fax` always hangs up.
    #[arg(
        long,
        env = "RELAY_AMD_HANGUP_ON_MACHINE_START",
        default_value_t = false
    )]
    pub amd_hangup_on_machine_start: bool,

    /// Caller audio kept while the agent connects, in ms of audio (8 bytes per ms, however
    /// the caller frames it); overflow drops the oldest and counts it.
    #[arg(long, env = "RELAY_EARLY_AUDIO_MS", default_value_t = 5000)]
    pub early_audio_ms: u64,

    /// Caller audio waiting for a slow agent socket, in bytes of μ-law (8000 = 1 s); beyond
    /// it the oldest is dropped and counted (`outbox_full`).
    #[arg(long, env = "RELAY_AGENT_OUTBOX_BYTES", default_value_t = 16_000)]
    pub agent_outbox_bytes: usize,

    /// Agent audio waiting for a slow carrier socket, in bytes of μ-law; beyond it the
    /// oldest is dropped and counted (`outbox_full`).
    #[arg(long, env = "RELAY_TWILIO_OUTBOX_BYTES", default_value_t = 262_144)]
    pub twilio_outbox_bytes: usize,

    /// A leg whose socket accepts nothing for this long ends the call, in ms.
    #[arg(long, env = "RELAY_WRITE_STALL_TIMEOUT_MS", default_value_t = 5000)]
    pub write_stall_timeout_ms: u64,

    /// After `start`, a caller leg that sends nothing for this long ends the call, in
    /// seconds (carriers send media every 20 ms, silence included).
    #[arg(long, env = "RELAY_TWILIO_IDLE_TIMEOUT_SECS", default_value_t = 10)]
    pub twilio_idle_timeout_secs: u64,

    /// Keypad digits go to the agent once no new digit came for this long (or on `#`), in ms.
    #[arg(long, env = "RELAY_DTMF_INTERDIGIT_MS", default_value_t = 1500)]
    pub dtmf_interdigit_ms: u64,

    /// Time allowed for the agent to connect and report its session ready, in seconds.
    #[arg(long, env = "RELAY_AGENT_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub agent_connect_timeout_secs: u64,

    /// Time allowed between the WebSocket upgrade and the carrier's `start`, in seconds.
    #[arg(long, env = "RELAY_START_TIMEOUT_SECS", default_value_t = 10)]
    pub start_timeout_secs: u64,

    /// Hard limit on a call's length, in seconds.
    #[arg(long, env = "RELAY_MAX_CALL_DURATION_SECS", default_value_t = 4 * 3600)]
    pub max_call_duration_secs: u64,

    /// Largest agent audio chunk sent to the carrier as one `media` message, in ms; larger
    /// agent events are split (Twilio Media Streams messages,
    /// <https://www.twilio.com/docs/voice/media-streams/websocket-messages>).
    #[arg(long, env = "RELAY_TWILIO_CHUNK_MS", default_value_t = 100)]
    pub twilio_chunk_ms: u64,

    /// How often a live call republishes its figures for `GET /calls`, in ms.
    #[arg(long, env = "RELAY_CALL_SUMMARY_INTERVAL_MS", default_value_t = 5000)]
    pub call_summary_interval_ms: u64,

    /// Transfer targets a call action may name: `name=destination` pairs separated by commas,
    /// a destination an E.164 number or a SIP URI
    /// (`sales=+15551230001,support=sip:queue@pbx.example.com`).
    #[arg(long, env = "RELAY_TRANSFER_TARGETS", default_value = "")]
    pub transfer_targets: String,

    /// Let a transfer name any E.164 number, not only the configured targets.
    #[arg(long, env = "RELAY_TRANSFER_ALLOW_ANY_NUMBER", default_value_t = false)]
    pub transfer_allow_any_number: bool,

    /// Ring time of a transfer's dial, in seconds (5..=600).
    #[arg(long, env = "RELAY_TRANSFER_DIAL_TIMEOUT_SECS", default_value_t = 30)]
    pub transfer_dial_timeout_secs: u32,

    /// What a transfer whose dial fails (busy, no answer, failed) does: `agent` (back to the
    /// agent, with a `transfer_failed=<status>` stream parameter) or `hangup`.
    #[arg(
        long,
        env = "RELAY_TRANSFER_FALLBACK",
        value_enum,
        default_value = "agent"
    )]
    pub transfer_fallback: crate::call::settings::TransferFallback,

    /// The keypad key that transfers the caller to `--operator-target` (off by default); the
    /// key is not sent to the agent.
    #[arg(long, env = "RELAY_OPERATOR_DIGIT")]
    pub operator_digit: Option<String>,

    /// Where the operator key transfers to (and where an ElevenLabs `transfer_to_number`
    /// system tool goes: its arguments are not on the wire): a target name, an E.164
    /// number or a SIP URI.
    #[arg(long, env = "RELAY_OPERATOR_TARGET")]
    pub operator_target: Option<String>,

    /// Let caller speech during an agent's goodbye cancel its `end_call` (by default the
    /// goodbye plays out and the call ends).
    #[arg(long, env = "RELAY_END_CALL_CANCEL_ON_SPEECH", default_value_t = false)]
    pub end_call_cancel_on_speech: bool,

    /// Declare the relay's built-in `end_call` and `transfer_call` tools to AssemblyAI and
    /// OpenAI agents (`--builtin-call-tools false` turns them off).
    #[arg(
        long,
        env = "RELAY_BUILTIN_CALL_TOOLS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub builtin_call_tools: bool,

    /// Agent-leg recoveries allowed per call (0: an agent failure ends the call, as before
    /// continuity).
    #[arg(long, env = "RELAY_MAX_AGENT_RECOVERIES", default_value_t = 3)]
    pub max_agent_recoveries: u32,

    /// How long one agent failure may take to recover, in seconds.
    #[arg(long, env = "RELAY_AGENT_RECOVERY_DEADLINE_SECS", default_value_t = 20)]
    pub agent_recovery_deadline_secs: u64,

    /// Of the caller's audio during an agent gap, the last this many ms go to the new
    /// session (so what the caller just said is heard).
    #[arg(long, env = "RELAY_RESUME_CALLER_AUDIO_MS", default_value_t = 1000)]
    pub resume_caller_audio_ms: u64,

    /// A connected agent that sends nothing this long after the caller stopped speaking has
    /// failed (0: off).
    #[arg(
        long,
        env = "RELAY_AGENT_RESPONSE_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub agent_response_timeout_ms: u64,

    /// Agents to fall back to, in order, once the call's agent cannot be recovered
    /// (`openai,echo`).
    #[arg(long, env = "RELAY_AGENT_FALLBACK", default_value = "")]
    pub agent_fallback: String,

    /// Hold audio looped while the agent reconnects (μ-law 8 kHz mono WAV; a built-in soft
    /// chime by default).
    #[arg(long, env = "RELAY_HOLD_AUDIO_FILE")]
    pub hold_audio_file: Option<std::path::PathBuf>,

    /// Played when the agent cannot be recovered, before the transfer or hang-up (μ-law
    /// 8 kHz mono WAV; a built-in short apology by default).
    #[arg(long, env = "RELAY_AGENT_FAILURE_AUDIO_FILE")]
    pub agent_failure_audio_file: Option<std::path::PathBuf>,

    /// Agent system prompt sent as a `prompt` stream parameter by the incoming-call markup.
    #[arg(long, env = "RELAY_AGENT_PROMPT")]
    pub agent_prompt: Option<String>,

    /// Agent first message sent as a `first_message` stream parameter.
    #[arg(long, env = "RELAY_AGENT_FIRST_MESSAGE")]
    pub agent_first_message: Option<String>,

    /// Agent language (ISO code) sent as a `language` stream parameter.
    #[arg(long, env = "RELAY_AGENT_LANGUAGE")]
    pub agent_language: Option<String>,

    /// Agent voice id sent as a `voice_id` stream parameter.
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

/// Time limits: at least 1, and at most 30 days (far beyond any use, and small enough that
/// `Instant + limit` can never overflow).
const MAX_SECS: u64 = 30 * 86_400;

/// Most worker threads `--worker-threads` accepts.
const MAX_WORKER_THREADS: usize = 1024;

fn parse_record_mode(s: &str) -> Result<crate::call::recording::RecordMode, String> {
    use crate::call::recording::RecordMode;
    RecordMode::from_label(s).ok_or_else(|| {
        let names: Vec<&str> = RecordMode::ALL.iter().map(|m| m.as_str()).collect();
        format!("one of {}", names.join(", "))
    })
}

fn nonempty(s: &Option<Secret>) -> Option<Secret> {
    s.clone().filter(|k| !k.expose().trim().is_empty())
}

impl ServeArgs {
    /// Validates every flag and builds the settings of every layer.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending flag.
    pub fn settings(&self) -> Result<RelaySettings, ConfigError> {
        let h = &self.http;
        let mut agents = AgentSettings::from_args(&self.agents).map_err(|e| ConfigError(e.0))?;
        let control = self.call_control()?;
        if control.builtin_tools {
            let names: Vec<String> = control.targets.iter().map(|(n, _)| n.clone()).collect();
            agents.shared.call_tools =
                crate::agent::call_tool_definitions(&names, control.allow_any_number);
            if self.call.record != crate::call::recording::RecordMode::Off {
                agents
                    .shared
                    .call_tools
                    .extend(crate::agent::recording_tool_definitions());
            }
        }
        if let Some(host) = &h.public_host {
            if host.is_empty() || host.contains('/') || host.contains("://") {
                return Err(ConfigError(
                    "--public-host is a host name (and optional port), not a URL".into(),
                ));
            }
        }
        let vendor_configured = AgentKind::ALL
            .iter()
            .any(|k| !k.is_local() && agents.is_configured(*k));
        let carriers = CarrierSettings::from_args(
            &self.carriers,
            &SharedSettings {
                public_host: h.public_host.clone(),
                demo_mode: !vendor_configured,
            },
        )
        .map_err(|e| ConfigError(e.0))?;
        for c in CarrierKind::ALL {
            let s = carriers.status(*c);
            if vendor_configured && s.served && !s.authenticated && !s.insecure {
                return Err(ConfigError(match c {
                    CarrierKind::Twilio => "a vendor agent needs TWILIO_AUTH_TOKEN (Twilio signature checks), or --insecure-skip-twilio-signature to run without them".into(),
                    other => format!("a vendor agent needs {}'s signature checks, or its --insecure-skip flag", other.as_str()),
                }));
            }
        }
        let call = self.call_settings(agents, control)?;
        if h.outbound_calls_per_minute == 0 {
            return Err(ConfigError(
                "--outbound-calls-per-minute must be at least 1".into(),
            ));
        }
        let api_token = nonempty(&h.relay_api_token);
        let outbound_ready = CarrierKind::ALL.iter().any(|c| {
            let s = carriers.status(*c);
            s.rest && s.authenticated
        });
        if api_token.is_some() && (h.public_host.is_none() || !outbound_ready) {
            return Err(ConfigError(
                "RELAY_API_TOKEN (outbound calls) needs --public-host and an authenticated carrier with REST credentials (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or TELNYX_PUBLIC_KEY, TELNYX_API_KEY and TELNYX_ACCOUNT_SID)".into(),
            ));
        }
        if h.max_calls == 0 {
            return Err(ConfigError("--max-calls must be at least 1".into()));
        }
        for (v, flag) in [
            (h.max_pending_connections, "--max-pending-connections"),
            (h.listen_backlog as usize, "--listen-backlog"),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("{flag} must be at least 1")));
            }
        }
        if h.max_header_bytes < 8192 {
            return Err(ConfigError(
                "--max-header-bytes must be at least 8192 (hyper's smallest read buffer)".into(),
            ));
        }
        for (v, flag) in [
            (h.header_read_timeout_ms, "--header-read-timeout-ms"),
            (h.body_read_timeout_ms, "--body-read-timeout-ms"),
        ] {
            if v == 0 || v > MAX_SECS * 1000 {
                return Err(ConfigError(format!(
                    "{flag} must be 1..={}",
                    MAX_SECS * 1000
                )));
            }
        }
        if h.runtime == RuntimeLayout::Uring && !cfg!(feature = "uring") {
            return Err(ConfigError(
                "--runtime uring needs a binary built with `--features uring`".into(),
            ));
        }
        if h.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError(format!(
                "--worker-threads must be at most {MAX_WORKER_THREADS} (0 = one per CPU)"
            )));
        }
        if h.drain_timeout_secs > MAX_SECS {
            return Err(ConfigError(format!(
                "--drain-timeout-secs must be at most {MAX_SECS}"
            )));
        }
        let any_authenticated = CarrierKind::ALL
            .iter()
            .any(|c| carriers.status(*c).authenticated);
        let tokens = match (nonempty(&h.relay_token_secret), any_authenticated) {
            (_, false) => None,
            (Some(s), true) => Some(StreamTokens::new(s.expose().as_bytes())),
            (None, true) => {
                let credential = carriers
                    .twilio
                    .auth_token
                    .as_ref()
                    .or(carriers.telnyx.api_key.as_ref())
                    .ok_or_else(|| {
                        ConfigError(
                            "stream tokens need RELAY_TOKEN_SECRET (or TWILIO_AUTH_TOKEN / TELNYX_API_KEY to derive it from)".into(),
                        )
                    })?;
                Some(StreamTokens::new(&StreamTokens::derive_secret(credential.expose())))
            }
        }
        .map(std::sync::Arc::new);
        Ok(RelaySettings {
            http: HttpSettings {
                listen: h.listen,
                runtime: h.runtime,
                worker_threads: match h.worker_threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                },
                listen_backlog: h.listen_backlog,
                max_calls: h.max_calls,
                drain_timeout: Duration::from_secs(h.drain_timeout_secs),
                limits: HttpLimits {
                    header_read_timeout: Duration::from_millis(h.header_read_timeout_ms),
                    body_read_timeout: Duration::from_millis(h.body_read_timeout_ms),
                    max_pending_connections: h.max_pending_connections,
                    max_header_bytes: h.max_header_bytes,
                },
                admin_token: nonempty(&h.admin_token).map(|t| BearerToken::new(t.expose())),
            },
            control: ControlSettings {
                public_host: h
                    .public_host
                    .as_ref()
                    .map(|p| p.trim().trim_end_matches('/').to_owned()),
                agent_params: self.agent_parameters(),
                tokens,
                api_token: api_token.map(|t| BearerToken::new(t.expose())),
                outbound_calls_per_minute: h.outbound_calls_per_minute,
                default_carrier: h.outbound_carrier,
                amd_hangup_on_machine_start: self.call.amd_hangup_on_machine_start,
            },
            call,
            carriers,
        })
    }

    /// The per-call settings.
    fn call_settings(
        &self,
        agents: AgentSettings,
        control: CallControl,
    ) -> Result<CallSettings, ConfigError> {
        let c = &self.call;
        let default_agent = c.agent.unwrap_or(if agents.elevenlabs.is_some() {
            AgentKind::Elevenlabs
        } else {
            AgentKind::Echo
        });
        if !agents.is_configured(default_agent) {
            return Err(ConfigError(format!(
                "--agent {} is not configured: {}",
                default_agent.as_str(),
                default_agent.info().setup
            )));
        }
        if !(20..=60_000).contains(&c.twilio_chunk_ms) {
            return Err(ConfigError("--twilio-chunk-ms must be 20..=60000".into()));
        }
        if c.early_audio_ms > 60_000 {
            return Err(ConfigError("--early-audio-ms must be at most 60000".into()));
        }
        for (v, flag) in [
            (c.agent_outbox_bytes, "--agent-outbox-bytes"),
            (c.twilio_outbox_bytes, "--twilio-outbox-bytes"),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("{flag} must be at least 1")));
            }
        }
        for (v, flag, max) in [
            (
                c.agent_connect_timeout_secs,
                "--agent-connect-timeout-secs",
                MAX_SECS,
            ),
            (c.start_timeout_secs, "--start-timeout-secs", MAX_SECS),
            (
                c.max_call_duration_secs,
                "--max-call-duration-secs",
                MAX_SECS,
            ),
            (
                c.twilio_idle_timeout_secs,
                "--twilio-idle-timeout-secs",
                MAX_SECS,
            ),
            (c.tool_timeout_ms, "--tool-timeout-ms", MAX_SECS * 1000),
            (
                c.write_stall_timeout_ms,
                "--write-stall-timeout-ms",
                MAX_SECS * 1000,
            ),
            (
                c.dtmf_interdigit_ms,
                "--dtmf-interdigit-ms",
                MAX_SECS * 1000,
            ),
            (
                c.call_summary_interval_ms,
                "--call-summary-interval-ms",
                MAX_SECS * 1000,
            ),
        ] {
            if v == 0 || v > max {
                return Err(ConfigError(format!("{flag} must be 1..={max}")));
            }
        }
        for (name, value) in self.agent_parameters() {
            if !parameter_fits(name, &value) {
                return Err(ConfigError(format!(
                    "agent setting {name} is too long for a <Parameter> (name + value must be under {MAX_PARAMETER_CHARS} characters)"
                )));
            }
        }
        let webhook_url = match &c.tool_webhook_url {
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
        let drain_notice = match &c.drain_notice_file {
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
        let continuity = self.continuity()?;
        let post_call = match c.post_call_webhook_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => {
                let url: hyper::Uri = u.parse().map_err(|e| {
                    ConfigError(format!("RELAY_POST_CALL_WEBHOOK_URL is not a URL: {e}"))
                })?;
                if !matches!(url.scheme_str(), Some("http") | Some("https")) || url.host().is_none()
                {
                    return Err(ConfigError(
                        "RELAY_POST_CALL_WEBHOOK_URL must be an http:// or https:// URL".into(),
                    ));
                }
                Some(crate::call::post_call::PostCallSettings {
                    url,
                    secret: nonempty(&c.post_call_webhook_secret),
                })
            }
        };
        let recording = match c.record {
            crate::call::recording::RecordMode::Off => None,
            mode => {
                if let Some(d) = c.recording_pause_digit {
                    if !crate::carrier::is_valid_dtmf_digit(&d.to_string()) {
                        return Err(ConfigError(
                            "--recording-pause-digit must be a keypad key: 0-9, *, # or A-D".into(),
                        ));
                    }
                    if control.operator_digit == Some(d) {
                        return Err(ConfigError(
                            "--recording-pause-digit and --operator-digit must differ".into(),
                        ));
                    }
                }
                if !(1..=1_000_000).contains(&c.recording_queue_blocks) {
                    return Err(ConfigError(
                        "--recording-queue-blocks must be 1..=1000000".into(),
                    ));
                }
                let upload = match c.recording_url.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(u) => Some(
                        crate::call::recording::upload::S3Target::parse(
                            u,
                            c.recording_s3_endpoint.as_deref(),
                        )
                        .map_err(|e| ConfigError(format!("--recording-url: {e}")))?,
                    ),
                };
                Some(crate::call::recording::RecordingSettings {
                    mode,
                    upload,
                    dir: c.recording_dir.clone(),
                    queue_blocks: c.recording_queue_blocks,
                    pause_digit: c.recording_pause_digit,
                })
            }
        };
        let voicemail_audio = match &c.voicemail_audio_file {
            None => None,
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| {
                    ConfigError(format!(
                        "cannot read --voicemail-audio-file {}: {e}",
                        p.display()
                    ))
                })?;
                let audio = crate::audio::mulaw_from_file_bytes(&bytes).map_err(|e| {
                    ConfigError(format!("--voicemail-audio-file {}: {e}", p.display()))
                })?;
                if audio.is_empty() || audio.len() > MAX_DRAIN_NOTICE_BYTES * 3 {
                    return Err(ConfigError(
                        "--voicemail-audio-file must hold 1 byte to 30 s of μ-law audio".into(),
                    ));
                }
                Some(std::sync::Arc::from(audio))
            }
        };
        Ok(CallSettings {
            voicemail_audio,
            recording,
            post_call,
            control,
            continuity,
            drain_notice,
            default_agent,
            agents,
            early_audio_bytes: crate::audio::ms_to_bytes(c.early_audio_ms) as usize,
            agent_connect_timeout: Duration::from_secs(c.agent_connect_timeout_secs),
            start_timeout: Duration::from_secs(c.start_timeout_secs),
            caller_idle_timeout: Duration::from_secs(c.twilio_idle_timeout_secs),
            max_call_duration: Duration::from_secs(c.max_call_duration_secs),
            caller_chunk_bytes: crate::audio::ms_to_bytes(c.twilio_chunk_ms) as usize,
            agent_outbox_bytes: c.agent_outbox_bytes,
            caller_outbox_bytes: c.twilio_outbox_bytes,
            write_stall_timeout: Duration::from_millis(c.write_stall_timeout_ms),
            dtmf_interdigit: Duration::from_millis(c.dtmf_interdigit_ms),
            summary_interval: Duration::from_millis(c.call_summary_interval_ms),
            tools: ToolSettings {
                webhook_url,
                secret: nonempty(&c.tool_webhook_secret),
                timeout: Duration::from_millis(c.tool_timeout_ms),
                max_per_call: c.max_tool_calls_per_call,
            },
        })
    }

    /// The continuity settings.
    fn continuity(&self) -> Result<crate::call::settings::Continuity, ConfigError> {
        let c = &self.call;
        let mut k = crate::call::settings::Continuity::defaults();
        k.max_recoveries = c.max_agent_recoveries;
        if !(1..=600).contains(&c.agent_recovery_deadline_secs) {
            return Err(ConfigError(
                "--agent-recovery-deadline-secs must be 1..=600".into(),
            ));
        }
        k.deadline = Duration::from_secs(c.agent_recovery_deadline_secs);
        k.resume_caller_audio_bytes =
            crate::audio::ms_to_bytes(c.resume_caller_audio_ms.min(10_000)) as usize;
        k.response_timeout = (c.agent_response_timeout_ms > 0)
            .then(|| Duration::from_millis(c.agent_response_timeout_ms));
        for name in c
            .agent_fallback
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let kind = AgentKind::from_name(name).ok_or_else(|| {
                ConfigError(format!(
                    "--agent-fallback: unknown agent {name:?} (one of {})",
                    AgentKind::NAMES.join(", ")
                ))
            })?;
            k.fallback.push(kind);
        }
        let read = |flag: &str, p: &std::path::Path| -> Result<std::sync::Arc<[u8]>, ConfigError> {
            let bytes = std::fs::read(p)
                .map_err(|e| ConfigError(format!("cannot read {flag} {}: {e}", p.display())))?;
            let audio = crate::audio::mulaw_from_file_bytes(&bytes)
                .map_err(|e| ConfigError(format!("{flag} {}: {e}", p.display())))?;
            if audio.is_empty() || audio.len() > MAX_DRAIN_NOTICE_BYTES * 3 {
                return Err(ConfigError(format!(
                    "{flag} must hold 1 byte to 30 s of μ-law audio"
                )));
            }
            Ok(std::sync::Arc::from(audio))
        };
        if let Some(p) = c
            .hold_audio_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            k.hold_audio = read("--hold-audio-file", p)?;
        }
        if let Some(p) = c
            .agent_failure_audio_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            k.failure_audio = read("--agent-failure-audio-file", p)?;
        }
        Ok(k)
    }

    /// The call-action settings.
    fn call_control(&self) -> Result<CallControl, ConfigError> {
        let c = &self.call;
        let mut targets = Vec::new();
        for pair in c
            .transfer_targets
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let Some((name, dest)) = pair.split_once('=') else {
                return Err(ConfigError(format!(
                    "--transfer-targets: {pair:?} is not name=destination"
                )));
            };
            let name = name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ConfigError(format!(
                    "--transfer-targets: target name {name:?} must be 1 to 64 of A-Z a-z 0-9 _ -"
                )));
            }
            let Some(dest) = TransferDest::parse(dest) else {
                return Err(ConfigError(format!(
                    "--transfer-targets: {name}'s destination must be an E.164 number or a sip: URI"
                )));
            };
            if targets
                .iter()
                .any(|(n, _): &(String, TransferDest)| n == name)
            {
                return Err(ConfigError(format!("--transfer-targets: {name} twice")));
            }
            targets.push((name.to_owned(), dest));
        }
        let operator_digit = match c.operator_digit.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(d) if crate::carrier::is_valid_dtmf_digit(d) => d.chars().next(),
            Some(d) => {
                return Err(ConfigError(format!(
                    "--operator-digit {d:?} must be one keypad key (0-9, *, #, A-D)"
                )))
            }
        };
        let operator_target = c
            .operator_target
            .clone()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let control = CallControl {
            targets,
            allow_any_number: c.transfer_allow_any_number,
            operator_digit,
            operator_target,
            end_call_cancel_on_speech: c.end_call_cancel_on_speech,
            builtin_tools: c.builtin_call_tools,
            dial_timeout_secs: c.transfer_dial_timeout_secs,
            fallback: c.transfer_fallback,
        };
        if let Some(t) = &control.operator_target {
            if control.resolve(t).is_none() && TransferDest::parse(t).is_none() {
                return Err(ConfigError(format!(
                    "--operator-target {t:?} is neither a --transfer-targets name nor an E.164 number or sip: URI"
                )));
            }
        }
        if control.operator_digit.is_some() && control.operator_target.is_none() {
            return Err(ConfigError(
                "--operator-digit needs --operator-target".into(),
            ));
        }
        if !(5..=600).contains(&control.dial_timeout_secs) {
            return Err(ConfigError(
                "--transfer-dial-timeout-secs must be 5..=600".into(),
            ));
        }
        Ok(control)
    }

    /// The configured agent settings as stream parameters (name, value), for the markup.
    pub fn agent_parameters(&self) -> Vec<(&'static str, String)> {
        let c = &self.call;
        [
            ("prompt", &c.agent_prompt),
            ("first_message", &c.agent_first_message),
            ("language", &c.agent_language),
            ("voice_id", &c.agent_voice_id),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.clone().map(|v| (n, v)))
        .collect()
    }

    /// Defaults as if `media-relay serve` ran with no flags and no environment (for tests).
    pub fn defaults() -> Self {
        Self::parse_from(&[] as &[&str])
    }

    /// Parses `media-relay serve` with these flags (for tests and tools).
    ///
    /// # Panics
    /// On flags clap refuses (a programming error in the caller).
    pub fn parse_from(flags: &[&str]) -> Self {
        Self::try_parse_from(flags).expect("valid serve flags")
    }

    /// Parses `media-relay serve` with these flags.
    ///
    /// # Errors
    /// clap's error for unknown or malformed flags.
    pub fn try_parse_from(flags: &[&str]) -> Result<Self, clap::Error> {
        let mut v = vec!["media-relay", "serve"];
        v.extend_from_slice(flags);
        let cli = Cli::try_parse_from(v)?;
        match cli.command {
            Command::Serve(a) => Ok(*a),
            Command::Dialects => unreachable!("parsed as serve"),
        }
    }
}

#[cfg(test)]
mod tests;

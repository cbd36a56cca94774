//! What a call is configured with ([`CallSettings`], plain values built once from
//! configuration) and what every call shares ([`CallContext`]).

use super::tool_webhook::ToolSettings;
use crate::agent::{AgentKind, AgentSettings};
use crate::auth::tokens::{LiveStreams, StreamTokens};
use crate::carrier::CarrierSettings;
use crate::obs::calls::CallRegistry;
use crate::obs::metrics::Metrics;
use crate::wire::http_client::HttpClient;
use std::sync::Arc;
use std::time::Duration;

/// Largest caller-leg message accepted, in bytes (carrier media messages are ~400 bytes). A
/// larger one is skipped unbuffered and ends the call (close 1009).
pub const MAX_CALLER_MESSAGE_BYTES: usize = 64 * 1024;

/// How long closing each socket may take at the end of a call.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// After the drain notice's audio, how long the carrier may take to confirm it played (its
/// mark echo) before the call closes anyway.
pub const DRAIN_NOTICE_GRACE: Duration = Duration::from_secs(2);

/// Per-call settings, derived from configuration once.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// The agent calls use unless their `agent` parameter names another.
    pub default_agent: AgentKind,
    /// Dialect settings.
    pub agents: AgentSettings,
    /// Caller audio kept while the agent connects, in μ-law bytes (8 per ms); the oldest is
    /// dropped beyond it (`early_buffer_full`).
    pub early_audio_bytes: usize,
    /// Agent connect + session-ready limit.
    pub agent_connect_timeout: Duration,
    /// Upgrade → `start` limit.
    pub start_timeout: Duration,
    /// After `start`, a caller leg silent this long ends the call (`caller_idle`); carriers
    /// send media every 20 ms, silence included.
    pub caller_idle_timeout: Duration,
    /// Maximum call length.
    pub max_call_duration: Duration,
    /// Maximum bytes of agent audio per carrier `media` message.
    pub caller_chunk_bytes: usize,
    /// Caller audio waiting for the agent socket, in μ-law bytes; the oldest is dropped
    /// beyond it (`outbox_full`).
    pub agent_outbox_bytes: usize,
    /// Agent audio waiting for the carrier socket, in μ-law bytes; the oldest is dropped
    /// beyond it (`outbox_full`).
    pub caller_outbox_bytes: usize,
    /// A leg whose socket accepts nothing for this long ends the call
    /// (`caller_stalled` / `agent_stalled`).
    pub write_stall_timeout: Duration,
    /// Keypad digits are sent to the agent once no new digit came for this long (or on `#`).
    pub dtmf_interdigit: Duration,
    /// Tool webhook.
    pub tools: ToolSettings,
    /// What callers still on the line at the drain deadline hear before the call closes
    /// (`--drain-notice-file`, μ-law 8 kHz); `None` closes at once.
    pub drain_notice: Option<Arc<[u8]>>,
    /// How often a live call republishes its figures for `GET /calls`.
    pub summary_interval: Duration,
    /// Call actions: hang-up and transfer.
    pub control: CallControl,
    /// Agent-failure continuity: hold audio, recovery, the apology.
    pub continuity: Continuity,
    /// Where post-call records go (`None`: nowhere).
    pub post_call: Option<super::post_call::PostCallSettings>,
    /// Call recording (`None`: `--record off`).
    pub recording: Option<super::recording::RecordingSettings>,
    /// What the relay plays to an outbound call that reached voicemail
    /// (`--voicemail-audio-file`, μ-law 8 kHz); `None`: the agent leaves the message.
    pub voicemail_audio: Option<Arc<[u8]>>,
}

pub use super::machine::recovery::Continuity;

/// The built-in hold audio: a soft two-note chime every 3.5 s (μ-law WAV, made with
/// `sox -n -r 8000 -c 1 -e u-law -b 8 hold.wav synth 0.5 sine 523.25 fade q 0.05 0.5 0.2 vol 0.12
/// pad 0 0.3 : synth 0.5 sine 659.25 fade q 0.05 0.5 0.2 vol 0.10 pad 0 2.2`).
pub const HOLD_AUDIO_WAV: &[u8] = include_bytes!("assets/hold.wav");

/// The built-in apology when the agent cannot be recovered (μ-law WAV, made with
/// `espeak-ng -v en-us -s 150 -w f.wav "We're sorry. The assistant is not available right now."`
/// then `sox f.wav -r 8000 -c 1 -e u-law -b 8 agent_unavailable.wav vol 0.8`).
pub const FAILURE_AUDIO_WAV: &[u8] = include_bytes!("assets/agent_unavailable.wav");

impl Continuity {
    /// The defaults: 3 recoveries per call, 20 s each, the last 1 s of caller audio sent to
    /// the new session, a 15 s response timeout, the built-in audio.
    pub fn defaults() -> Continuity {
        let audio = |wav: &[u8]| -> Arc<[u8]> {
            Arc::from(crate::audio::mulaw_from_file_bytes(wav).unwrap_or_default())
        };
        Continuity {
            max_recoveries: 3,
            deadline: Duration::from_secs(20),
            resume_caller_audio_bytes: 8000,
            response_timeout: Some(Duration::from_secs(15)),
            fallback: Vec::new(),
            hold_audio: audio(HOLD_AUDIO_WAV),
            failure_audio: audio(FAILURE_AUDIO_WAV),
        }
    }
}

pub use crate::carrier::dial::{is_e164, TransferDest};

/// What a failed transfer's dial result does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TransferFallback {
    /// Back to the agent, with a `transfer_failed=<status>` stream parameter.
    #[default]
    Agent,
    /// Hang up.
    Hangup,
}

/// Call-action settings (`end_call`, `transfer`).
#[derive(Debug, Clone, Default)]
pub struct CallControl {
    /// Transfer targets by name (`--transfer-targets sales=+1555…,support=sip:…`).
    pub targets: Vec<(String, TransferDest)>,
    /// Whether an E.164 number not in the targets may be dialled.
    pub allow_any_number: bool,
    /// The keypad key that transfers to [`CallControl::operator_target`].
    pub operator_digit: Option<char>,
    /// Where the operator key (and the ElevenLabs `transfer_to_number` system tool, whose
    /// arguments are not on the wire) transfers to: a target name or a number.
    pub operator_target: Option<String>,
    /// Whether caller speech during an agent's goodbye cancels its `end_call`.
    pub end_call_cancel_on_speech: bool,
    /// Whether the relay declares its `end_call` / `transfer_call` tools to AssemblyAI and
    /// OpenAI agents.
    pub builtin_tools: bool,
    /// Ring time of a transfer's dial, seconds.
    pub dial_timeout_secs: u32,
    /// What a failed dial does.
    pub fallback: TransferFallback,
}

impl CallControl {
    /// Resolves a transfer target: a configured name, or (when allowed) an E.164 number.
    pub fn resolve(&self, target: &str) -> Option<TransferDest> {
        if let Some((_, d)) = self.targets.iter().find(|(n, _)| n == target) {
            return Some(d.clone());
        }
        (self.allow_any_number && is_e164(target)).then(|| TransferDest::Number(target.to_owned()))
    }
}

impl CallSettings {
    /// Settings for tests and tools: defaults as the flags give them, built-in agents only.
    pub fn defaults() -> CallSettings {
        CallSettings {
            default_agent: AgentKind::Echo,
            agents: AgentSettings {
                echo: Some(crate::agent::echo::Settings {
                    delay: Duration::from_millis(500),
                }),
                ..AgentSettings::default()
            },
            early_audio_bytes: 40_000,
            agent_connect_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(10),
            caller_idle_timeout: Duration::from_secs(10),
            max_call_duration: Duration::from_secs(4 * 3600),
            caller_chunk_bytes: 800,
            agent_outbox_bytes: 16_000,
            caller_outbox_bytes: 262_144,
            write_stall_timeout: Duration::from_secs(5),
            dtmf_interdigit: Duration::from_millis(1500),
            tools: ToolSettings::default(),
            drain_notice: None,
            summary_interval: Duration::from_secs(5),
            control: CallControl {
                builtin_tools: true,
                dial_timeout_secs: 30,
                ..CallControl::default()
            },
            continuity: Continuity::defaults(),
            post_call: None,
            recording: None,
            voicemail_audio: None,
        }
    }
}

/// What every call shares: settings, metrics, TLS and HTTP clients, authentication state.
#[derive(Debug)]
pub struct CallContext {
    /// Per-call settings from configuration.
    pub settings: Arc<CallSettings>,
    /// The carriers' settings (codec choice, stream-token policy, REST for call actions).
    pub carriers: Arc<CarrierSettings>,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
    /// The shared TLS client configuration for agent connections.
    pub tls: Arc<rustls::ClientConfig>,
    /// The pooled HTTP client (signed URLs, tool webhooks, carrier REST).
    pub http: HttpClient,
    /// Stream token checks (required on the streams of authenticated carriers).
    pub tokens: Option<Arc<StreamTokens>>,
    /// Live streams by call SID (duplicate policy: the newest stream replaces the older).
    pub live: Arc<LiveStreams>,
    /// Live and recently ended calls' figures (`GET /calls`).
    pub calls: Arc<CallRegistry>,
    /// The relay's public host, for the URLs a transfer's markup carries (transfers need it).
    pub public_host: Option<String>,
    /// Post-call records go here (`--post-call-webhook-url`).
    pub post_call: Option<super::post_call::PostCallQueue>,
    /// The recording writer (`--record` other than `off`).
    pub recordings: Option<Arc<super::recording::Recordings>>,
}

//! The control plane's settings, as plain values (built from configuration by `config`;
//! nothing here reads flags).

use crate::auth::BearerToken;
use crate::call::CallSettings;
use crate::carrier::{CarrierKind, CarrierSettings};
use std::net::SocketAddr;
use std::time::Duration;

/// Limits that protect the server before a connection upgrades (or while it serves plain
/// HTTP). Defaults are far above anything a carrier webhook needs.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time allowed for a request's head (hyper's header read timeout). Default 10 s.
    pub header_read_timeout: Duration,
    /// Time allowed to read a webhook body. Default 10 s.
    pub body_read_timeout: Duration,
    /// Most concurrent connections that have not upgraded; more are closed at once. Default
    /// 1024.
    pub max_pending_connections: usize,
    /// Largest request head in bytes (hyper's read buffer limit, at least 8 KiB). Default
    /// 16 KiB.
    pub max_header_bytes: usize,
}

/// How the relay lays out its threads (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeLayout {
    /// One tokio multi-thread runtime with `--worker-threads` workers and one listener: a
    /// call's task runs on whichever worker is free when it wakes, and work is stolen
    /// between workers.
    MultiThread,
    /// Thread-per-core: `--worker-threads` single-thread runtimes, each on its own thread
    /// with its own `SO_REUSEPORT` listener on the same address (the kernel spreads new
    /// connections over them by a hash of the 4-tuple). A call's task, its carrier socket
    /// and its agent socket (connected from that thread) stay on the thread that accepted
    /// the call for its whole life: no wake-up crosses threads on the data path.
    PerCore,
    /// The per-core layout on io_uring (cargo feature `uring`, an experiment): each worker
    /// thread runs a tokio-uring runtime, and a call's carrier and agent sockets move to
    /// io_uring after their handshakes (`wire::uring`). Without the feature, choosing it is a
    /// configuration error.
    Uring,
}

impl RuntimeLayout {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeLayout::MultiThread => "multi-thread",
            RuntimeLayout::PerCore => "per-core",
            RuntimeLayout::Uring => "uring",
        }
    }
}

/// The server's own settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The thread layout.
    pub runtime: RuntimeLayout,
    /// Worker threads (at least 1; `--worker-threads 0` is resolved to the CPUs the process
    /// may run on before this is built).
    pub worker_threads: usize,
    /// `listen(2)` backlog.
    pub listen_backlog: u32,
    /// Most concurrent calls; further upgrades get 503.
    pub max_calls: usize,
    /// How long calls may continue after SIGTERM.
    pub drain_timeout: Duration,
    /// Limits before the upgrade.
    pub limits: HttpLimits,
    /// `GET /calls` bearer token; without it the route answers 404.
    pub admin_token: Option<BearerToken>,
}

/// The settings of the routes that drive calls (inbound markup, outbound calls, callbacks).
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// The public host carriers reach the relay at (`relay.example.com[:port]`); without it
    /// the inbound webhook uses the request's `Host` header.
    pub public_host: Option<String>,
    /// The configured agent settings as stream parameters (`prompt`, `first_message`,
    /// `language`, `voice_id`).
    pub agent_params: Vec<(&'static str, String)>,
    /// Stream tokens and relay-signed URLs, when any carrier is authenticated.
    pub tokens: Option<std::sync::Arc<crate::auth::tokens::StreamTokens>>,
    /// `POST /outbound-call` bearer token; without it the route answers 404.
    pub api_token: Option<BearerToken>,
    /// Outbound calls one client may place per minute.
    pub outbound_calls_per_minute: u32,
    /// The carrier `/outbound-call` uses when the request names none.
    pub default_carrier: CarrierKind,
    /// Answer `machine_start` with `<Hangup/>` (`--amd-hangup-on-machine-start`).
    pub amd_hangup_on_machine_start: bool,
}

/// Everything [`crate::Relay::bind`] needs.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The server.
    pub http: HttpSettings,
    /// The call-control routes.
    pub control: ControlSettings,
    /// Every call.
    pub call: CallSettings,
    /// The carriers.
    pub carriers: CarrierSettings,
}

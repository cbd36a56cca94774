//! `loadtest`: the media-relay load harness (issue 3).
//!
//! ```text
//! loadtest --spawn [--agent elevenlabs|assemblyai|openai] [--calls 200] [--ramp-per-sec 50] [--duration-secs 20] [--mode echo|conversation]
//!          [--barge-in] [--no-floor] [--side-by-side] [--repeat N] [--find-capacity [--capacity-step N]] [--pin] [--json FILE] [--svg FILE]
//! loadtest --target ws://HOST:PORT/media [--mock-agent-listen ADDR] [--relay-pid PID] ...
//! loadtest --soak  --calls 200 --duration-secs 1800 [--call-secs 120] [--sample-secs 10] (--spawn [--pin] | --target …)
//! loadtest --churn --calls 200 --total-calls 100000 [--call-secs 1] (--spawn [--pin] | --target …)
//! loadtest --spawn --no-floor --duration-secs 120 --kill-agent-sockets-per-min 10 [--kill-mode close|reset] [--kill-seed 17]
//! loadtest floor-server --listen ADDR
//! loadtest agent-server --dialect elevenlabs|assemblyai|openai --listen ADDR
//! ```
//!
//! Load shape options: `--pacing per-call|lockstep` (each call on its own timer, or every
//! call's frame in one burst per 20 ms tick of one clock), `--agent-process
//! in-process|separate` (the mock agent on the harness's runtime, or as its own
//! single-threaded `agent-server` process), `--agent-ping-ms N` (ElevenLabs pings on a 1 s
//! timer per conversation instead of every 250 frames) and `--pin none|relay`. The shape of
//! issue 19 (an outside tester's media gateway):
//!
//! ```text
//! loadtest --spawn --calls 150 --pacing lockstep --agent-process separate --agent-ping-ms 1000 \
//!          --pin none --repeat 3 --duration-secs 20
//! ```
//!
//! Soak and churn runs are described in `loadtest::soak`; the recovery benchmark (agent
//! sockets killed during the run, `--kill-agent-sockets-per-min`) in `loadtest::faults`, and
//! `loadtest/recovery_bench.py` runs it against runs without faults.
//!
//! See the crate docs of `loadtest::harness` for what is measured and how.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use loadtest::bench::agent_process::{self, AgentProcess};
use loadtest::bench_agent::{BenchAgent, BenchDialect, PingSchedule};
use loadtest::faults::{FaultConfig, KillMode, RelayHttp};
use loadtest::harness::{self, AgentSide, LoadConfig, LoadResult, Pacing, Progress, RunOptions};
use loadtest::pin::Pinning;
use loadtest::report::{self, Capacity, CapacityStep, Report};
use loadtest::{fixtures, procs, soak};

// The same allocator as the relay, so the harness's own allocation cost stays small.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load harness for media-relay: simulated Twilio callers ↔ relay ↔ mock voice agent
/// (ElevenLabs, AssemblyAI or OpenAI Realtime).
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the floor: a minimal fastwebsockets echo server (one read + one write per frame).
    /// Prints `listening on ADDR` on stdout once bound.
    FloorServer {
        /// Address to listen on (port 0 = any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Run the bench mock agent as a process of its own, on one thread (like a Node `ws`
    /// server): the dialect's HTTP and WebSocket endpoints on --listen, driven by the harness
    /// over stdin/stdout (`loadtest --agent-process separate` starts it). Prints `listening on
    /// ADDR` on stdout once bound.
    AgentServer {
        /// Agent dialect to speak.
        #[arg(long, value_enum, default_value = "elevenlabs")]
        dialect: AgentArg,
        /// Address to listen on (port 0 = any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PacingArg {
    /// Each call has its own 20 ms timer (calls spread over the period, or all on one phase
    /// with --aligned) and sends its own frames.
    PerCall,
    /// One 20 ms ticker sends every call's frame in one burst per tick, as a media gateway
    /// batching its calls does.
    Lockstep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AgentProcessArg {
    /// The mock agent runs in the harness process, on its runtime.
    InProcess,
    /// The mock agent runs as `loadtest agent-server`, a process of its own with one thread.
    Separate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PinArg {
    /// No pinning: the relay (or floor), the harness and a separate agent share every CPU.
    None,
    /// The process under test on one CPU, the harness (and a separate agent) on the others.
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The mock agent echoes every caller frame at once: per-frame round trips.
    Echo,
    /// Scripted turns with the speech fixtures (caller utterance, agent reply).
    Conversation,
}

/// The agent API the mock agent speaks (and the spawned relay is configured for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AgentArg {
    /// ElevenLabs Conversational AI (signed URL + conversation WebSocket).
    Elevenlabs,
    /// AssemblyAI Voice Agent API.
    Assemblyai,
    /// OpenAI Realtime API (GA).
    Openai,
}

impl AgentArg {
    fn dialect(self) -> BenchDialect {
        match self {
            AgentArg::Elevenlabs => BenchDialect::ElevenLabs,
            AgentArg::Assemblyai => BenchDialect::AssemblyAi,
            AgentArg::Openai => BenchDialect::OpenAi,
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Agent dialect of the mock agent; with --spawn the relay gets the matching flags
    /// (`--agent assemblyai --assemblyai-url …` with ASSEMBLYAI_API_KEY=test-key, `--agent
    /// openai --openai-realtime-url …` with OPENAI_API_KEY=test-key).
    #[arg(long, value_enum, default_value = "elevenlabs")]
    agent: AgentArg,
    /// Start the release relay binary (target/release/media-relay) pointed at an in-process
    /// mock agent.
    #[arg(long, conflicts_with = "target")]
    spawn: bool,
    /// Drive a relay running elsewhere (`ws://host:port/media`).
    #[arg(long)]
    target: Option<String>,
    /// With --target: start the mock agent on this address and point the relay at it
    /// (ElevenLabs: --elevenlabs-api-base, agent id `loadtest`; AssemblyAI: --assemblyai-url
    /// ws://ADDR/v1/ws; OpenAI: --openai-realtime-url ws://ADDR/v1/realtime?model=gpt-realtime;
    /// API key `test-key`). The printed line names the exact flags.
    #[arg(long)]
    mock_agent_listen: Option<String>,
    /// With --target: sample this process's CPU/RSS.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Relay binary for --spawn (default: <workspace>/target/release/media-relay, built if
    /// missing).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Run `cargo build --release -p media-relay` before spawning even if the binary exists.
    #[arg(long)]
    build_relay: bool,
    /// RUST_LOG for the spawned relay.
    #[arg(long, default_value = "warn")]
    relay_log: String,
    /// Concurrent calls.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Calls started per second.
    #[arg(long, default_value_t = 50.0)]
    ramp_per_sec: f64,
    /// Steady window (all calls up), seconds (default 20). With --soak: the soak's length
    /// from the first call; with --churn: an optional time limit.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Soak run: keep --calls calls up for --duration-secs (calls of --call-secs replaced as
    /// they end, or each lasting the whole window), sampling the relay's RSS, descriptors
    /// and tasks every --sample-secs.
    #[arg(long, conflicts_with_all = ["churn", "find_capacity", "side_by_side"])]
    soak: bool,
    /// Churn run: short calls (--call-secs, default 1 s of audio), about --calls in flight,
    /// until --total-calls have run; each call checked byte-exact; sampled like --soak.
    #[arg(long, conflicts_with_all = ["find_capacity", "side_by_side"])]
    churn: bool,
    /// --churn: calls to run in all.
    #[arg(long)]
    total_calls: Option<u64>,
    /// --soak/--churn: audio per call, seconds (soak default: the whole window; churn: 1).
    #[arg(long)]
    call_secs: Option<f64>,
    /// --soak/--churn: seconds between resource samples (default: soak 10, churn 2).
    #[arg(long)]
    sample_secs: Option<f64>,
    /// --soak/--churn: time between a call's last frame and its `stop`, ms.
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
    /// --soak/--churn: after the last call, wait up to this long for the relay's
    /// descriptors and tasks to return to the baseline, seconds.
    #[arg(long, default_value_t = 30)]
    after_wait_secs: u64,
    /// --soak/--churn: RSS within this many KiB of the baseline counts as back at baseline.
    #[arg(long, default_value_t = 2048)]
    rss_tolerance_kib: u64,
    /// --soak/--churn: before the baseline sample, run the same load for this many seconds
    /// (calls of at most --call-secs) and let the relay go idle, so the baseline is a
    /// warmed-up process (its allocator has seen the load) rather than a cold one.
    #[arg(long, default_value_t = 0.0)]
    warmup_secs: f64,
    /// --soak/--churn: stop starting calls once this file exists.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// --soak/--churn with --target: the relay's HTTP address (`host:port`) to read
    /// /metrics from (tasks, calls; RSS and fds too without --relay-pid).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Pause between the ramp's end and the steady window, seconds.
    #[arg(long, default_value_t = 1.0)]
    settle_secs: f64,
    /// Echo (per-frame round trips) or conversation (turns).
    #[arg(long, value_enum, default_value = "echo")]
    mode: Mode,
    /// Conversation mode: the caller talks over the agent's reply (agent interrupts itself).
    #[arg(long)]
    barge_in: bool,
    /// Conversation mode: agent think time, ms.
    #[arg(long, default_value_t = 500)]
    think_ms: u64,
    /// Send every call's frame on the same tick (worst-case bursts) instead of spreading the
    /// calls over the 20 ms period (per-call pacing: each call keeps its own timer).
    #[arg(long)]
    aligned: bool,
    /// How caller frames are clocked: `per-call` (each call's own timer) or `lockstep` (one
    /// 20 ms ticker sends every call's frame in one burst per tick). The floor runs get the
    /// same pacing.
    #[arg(long, value_enum, default_value = "per-call")]
    pacing: PacingArg,
    /// Where the mock agent runs: `in-process` (the harness's runtime) or `separate` (its own
    /// single-threaded `loadtest agent-server` process; with --target it listens on
    /// --mock-agent-listen). The separate agent measures no barge-in latency.
    #[arg(long, value_enum, default_value = "in-process")]
    agent_process: AgentProcessArg,
    /// ElevenLabs mock: send a `ping` every N ms on a timer of its own per conversation
    /// (1000 = the real service's keepalive); 0 = every 250 caller frames, in line with the
    /// audio (the default).
    #[arg(long, default_value_t = 0)]
    agent_ping_ms: u64,
    /// Count context switches and system calls of the relay (and floor) over each steady
    /// window with `perf stat` (needs perf and permission for the syscall tracepoints); it
    /// makes every system call of the process a little dearer, so measure ratios without it.
    #[arg(long)]
    perf_stat: bool,
    /// Skip the floor. By default the same caller load is also run against the
    /// fastwebsockets echo floor (child process) and relay ÷ floor CPU per frame is reported.
    #[arg(long)]
    no_floor: bool,
    /// The floor runs by default; accepted so older command lines keep working.
    #[arg(long, hide = true, conflicts_with = "no_floor")]
    floor: bool,
    /// Run the floor at the same time as the relay (each with --calls calls, same schedule),
    /// so both are sampled over the same window of the same machine state. The harness then
    /// carries both loads.
    #[arg(long, conflicts_with_all = ["no_floor", "find_capacity"])]
    side_by_side: bool,
    /// Raise the call count (×1.5 per step, or by --capacity-step, from --calls) until the
    /// SLO breaks.
    #[arg(long)]
    find_capacity: bool,
    /// Calls added per --find-capacity step; 0 multiplies by 1.5 instead (coarse: 450 → 680).
    #[arg(long, default_value_t = 0, requires = "find_capacity")]
    capacity_step: usize,
    /// SLO for --find-capacity: relay-added one-way p99 limit, µs.
    #[arg(long, default_value_t = 2000.0)]
    slo_p99_us: f64,
    /// CPU placement: `relay` (`--pin` alone) gives the relay (and the floor) one CPU of its
    /// own and runs the harness (and a separate agent) on the other CPUs, so they do not
    /// compete for a core (Linux, ≥ 2 CPUs; needs --spawn); `none` (the default) pins
    /// nothing, every process shares every CPU. Unpinned, at high call counts the
    /// percentiles measure the harness and relay queueing behind each other.
    #[arg(long, value_enum, num_args = 0..=1, default_value = "none", default_missing_value = "relay")]
    pin: PinArg,
    /// Measure relay and floor this many times (alternately, or together with
    /// --side-by-side) and report the median relay ÷ floor ratio beside every pair (pairs
    /// measured one after the other moved by ±0.2 on this machine). The tables show the first pair, whose RSS starts from an idle process.
    #[arg(long, default_value_t = 1, conflicts_with = "find_capacity")]
    repeat: usize,
    /// Upper bound of --find-capacity.
    #[arg(long, default_value_t = 5000)]
    max_calls: usize,
    /// Write every number as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG latency plot.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Recovery benchmark (issue 17): the mock agent kills this share of the live agent
    /// sockets per minute of the steady window (200 calls, 10, 120 s: 40 kills, spread over
    /// the window, none in its last 5 s) without the dialect's end signal, and accepts the
    /// relay's reconnects at once. Reports the gaps the callers heard, the relay's own
    /// recovery figures, hold audio, calls lost, frames lost inside and outside the gaps, and
    /// the latency of the calls no kill hit. 0: no kills, reported the same way (the
    /// baseline). Echo mode, in-process agent. With --spawn the relay gets an admin token
    /// for `GET /calls/{sid}`.
    #[arg(long, value_name = "PERCENT", conflicts_with_all = ["soak", "churn", "find_capacity"])]
    kill_agent_sockets_per_min: Option<f64>,
    /// How a socket is killed: `close` (WebSocket Close 1011) or `reset` (TCP reset).
    #[arg(long, value_enum, default_value = "close")]
    kill_mode: KillModeArg,
    /// Seed of the kill schedule (the same seed, the same kills).
    #[arg(long, default_value_t = 17)]
    kill_seed: u64,
    /// Most kills of one call (the relay allows 3 recoveries per call by default).
    #[arg(long, default_value_t = 3)]
    kill_max_per_call: u32,
    /// With --target and --kill-agent-sockets-per-min: the relay's admin token
    /// (RELAY_ADMIN_TOKEN), to read each call's recoveries from `GET /calls/{sid}` on
    /// --metrics-addr.
    #[arg(long)]
    relay_admin_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KillModeArg {
    /// A WebSocket Close with code 1011 (internal error; no dialect's end signal).
    Close,
    /// A TCP reset (SO_LINGER 0, then the connection dropped).
    Reset,
}

/// The admin token `--spawn` gives the relay in a fault run.
const BENCH_ADMIN_TOKEN: &str = "loadtest-admin";

struct Bar(ProgressBar);

impl Progress for Bar {
    fn tick(&self, elapsed_s: f64, total_s: f64, active: usize, media_rx: u64) {
        self.0.set_length((total_s * 10.0) as u64);
        self.0
            .set_position(((elapsed_s * 10.0) as u64).min((total_s * 10.0) as u64));
        self.0
            .set_message(format!("{active} calls active, {media_rx} media received"));
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Pin before the runtime exists: its worker threads inherit the mask and the pool is sized
    // for the harness CPUs.
    let pin = match (&cli.cmd, cli.run.pin) {
        (None, PinArg::Relay) => {
            if !cli.run.spawn {
                bail!("--pin relay needs --spawn");
            }
            let p = Pinning::plan()?;
            p.apply_to_harness()?;
            eprintln!("pinned: {}", p.describe());
            Some(p)
        }
        _ => None,
    };
    if let Some(Cmd::AgentServer { dialect, listen }) = &cli.cmd {
        // One thread, like a Node event loop.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(agent_process::serve(listen, dialect.dialect()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Some(Cmd::AgentServer { .. }) => unreachable!("handled above"),
        Some(Cmd::FloorServer { listen }) => rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("listening on {}", listener.local_addr()?);
            use std::io::Write;
            std::io::stdout().flush()?;
            loadtest::floor::serve(listener).await
        }),
        None => rt.block_on(run(cli.run, pin)),
    }
}

fn progress_bar(label: &str) -> ProgressBar {
    let pb = ProgressBar::new(1);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}

async fn run(a: RunArgs, pin: Option<Pinning>) -> anyhow::Result<()> {
    if !a.spawn && a.target.is_none() {
        bail!("give --spawn or --target ws://HOST:PORT/media");
    }
    if a.calls == 0 {
        bail!("--calls must be > 0");
    }
    if (a.soak || a.churn) && a.mode != Mode::Echo {
        bail!("--soak and --churn run in echo mode");
    }
    if a.churn && a.total_calls.is_none() && a.duration_secs.is_none() && a.stop_file.is_none() {
        bail!("--churn needs --total-calls (or --duration-secs / --stop-file)");
    }
    if a.soak && a.duration_secs.is_none() {
        bail!("--soak needs --duration-secs");
    }
    let faulty = a.kill_agent_sockets_per_min.is_some();
    if faulty {
        if a.mode != Mode::Echo {
            bail!("--kill-agent-sockets-per-min runs in echo mode");
        }
        if a.agent_process == AgentProcessArg::Separate {
            bail!("--kill-agent-sockets-per-min needs the in-process agent");
        }
        if !a.spawn && a.mock_agent_listen.is_none() {
            bail!("--kill-agent-sockets-per-min with --target needs --mock-agent-listen");
        }
        if a.kill_agent_sockets_per_min
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            bail!("--kill-agent-sockets-per-min is a percentage (0..=100)");
        }
    }
    let caller = Arc::new(fixtures::caller_utterance()?);
    let reply = Arc::new(fixtures::agent_reply()?);
    let (plan, mode) = match a.mode {
        Mode::Echo => harness::echo_setup(caller.clone()),
        Mode::Conversation => harness::conversation_setup(
            caller.clone(),
            reply,
            Duration::from_millis(a.think_ms),
            a.barge_in,
        ),
    };

    let separate = a.agent_process == AgentProcessArg::Separate;
    if separate && (a.soak || a.churn) {
        bail!("--soak and --churn run with the in-process agent");
    }
    if a.pacing == PacingArg::Lockstep && (a.soak || a.churn) {
        bail!("--soak and --churn run with per-call pacing");
    }
    let opts = RunOptions {
        pacing: match a.pacing {
            PacingArg::PerCall => Pacing::PerCall,
            PacingArg::Lockstep => Pacing::Lockstep,
        },
        agent_ping: if a.agent_ping_ms > 0 {
            PingSchedule::IntervalMs(a.agent_ping_ms)
        } else {
            PingSchedule::default()
        },
        perf_stat: a.perf_stat,
    };
    // The separate agent process (inherits this process's CPU affinity: the harness CPUs
    // when pinned).
    let agent_proc = if separate && (a.spawn || a.mock_agent_listen.is_some()) {
        let exe = std::env::current_exe().context("locating the loadtest binary")?;
        let listen = a.mock_agent_listen.as_deref().unwrap_or("127.0.0.1:0");
        let p = AgentProcess::spawn(&exe, a.agent.dialect(), listen).await?;
        eprintln!(
            "mock {} agent: separate process (pid {}) on {}",
            p.dialect().as_str(),
            p.pid(),
            p.addr()
        );
        Some(p)
    } else {
        None
    };

    // Agent side and relay.
    let (agent, relay, url, pid) = if a.spawn {
        let agent = match &agent_proc {
            Some(_) => None,
            None => Some(BenchAgent::start_dialect("127.0.0.1:0", a.agent.dialect()).await?),
        };
        let relay_agent = match (&agent, &agent_proc) {
            (Some(ag), _) => ag.relay_agent(),
            (None, Some(p)) => p.relay_agent(),
            (None, None) => unreachable!("one agent exists with --spawn"),
        };
        let bin = match &a.relay_bin {
            Some(b) => b.clone(),
            None => procs::relay_binary("release", a.build_relay)?,
        };
        // A fault run reads the relay's per-call recoveries (`GET /calls/{sid}`).
        let env: &[(&str, &str)] = if faulty {
            &[("RELAY_ADMIN_TOKEN", BENCH_ADMIN_TOKEN)]
        } else {
            &[]
        };
        let relay =
            procs::spawn_relay_env(&bin, &relay_agent, &a.relay_log, pin.as_ref(), env).await?;
        eprintln!(
            "relay {} (pid {}) on {}, mock {} agent on {}, relay log {}",
            bin.display(),
            relay.proc.pid(),
            relay.addr,
            a.agent.dialect().as_str(),
            agent
                .as_ref()
                .map(|x| x.addr())
                .or(agent_proc.as_ref().map(AgentProcess::addr))
                .map_or("-".into(), |x| x.to_string()),
            relay.log.display()
        );
        let url = relay.media_url();
        let pid = relay.proc.pid();
        (agent, Some(relay), url, Some(pid))
    } else {
        if let Some(p) = &agent_proc {
            let ra = p.relay_agent();
            let env: Vec<String> = ra.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!(
                "mock {} agent process on {}: run the relay with {} {}",
                p.dialect().as_str(),
                p.addr(),
                env.join(" "),
                ra.args().join(" ")
            );
        }
        let agent = match &a.mock_agent_listen {
            Some(_) if agent_proc.is_some() => None,
            Some(l) => {
                let ag = BenchAgent::start_dialect(l, a.agent.dialect()).await?;
                let ra = ag.relay_agent();
                let env: Vec<String> = ra.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
                eprintln!(
                    "mock {} agent on {}: run the relay with {} {}",
                    ag.dialect().as_str(),
                    ag.addr(),
                    env.join(" "),
                    ra.args().join(" ")
                );
                Some(ag)
            }
            None => None,
        };
        (
            agent,
            None,
            a.target.clone().unwrap_or_default(),
            a.relay_pid,
        )
    };
    // Let the relay's startup settle before sampling idle RSS.
    tokio::time::sleep(Duration::from_millis(300)).await;

    if a.soak || a.churn {
        let Some(agent) = agent.as_ref() else {
            bail!("--soak/--churn need the in-process mock agent (--spawn, or --target with --mock-agent-listen)");
        };
        // The relay's task gauge is refreshed every second: let it catch up.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let kind = if a.soak {
            soak::SoakKind::Soak
        } else {
            soak::SoakKind::Churn
        };
        let call_secs = a.call_secs.or(a.churn.then_some(1.0));
        let cfg = soak::SoakConfig {
            kind,
            url: url.clone(),
            calls: a.calls,
            total_calls: a.total_calls,
            duration: a.duration_secs.map(Duration::from_secs),
            call_len: call_secs.map(Duration::from_secs_f64),
            linger: Duration::from_millis(a.linger_ms),
            ramp_per_sec: a.ramp_per_sec,
            sample_every: Duration::from_secs_f64(a.sample_secs.unwrap_or(if a.soak {
                10.0
            } else {
                2.0
            })),
            monitor: soak::Monitor {
                pid,
                metrics_addr: relay
                    .as_ref()
                    .map(|r| r.addr.clone())
                    .or(a.metrics_addr.clone()),
            },
            after_wait: Duration::from_secs(a.after_wait_secs),
            rss_tolerance_kib: a.rss_tolerance_kib,
            stop_file: a.stop_file.clone(),
            warmup: (a.warmup_secs > 0.0).then(|| Duration::from_secs_f64(a.warmup_secs)),
            plan: plan.clone(),
            pinning: pin.as_ref().map(Pinning::describe),
        };
        let rep = soak::run_soak(cfg, agent).await?;
        drop(relay);
        print!("{}", soak::summarize(&rep));
        if let Some(p) = &a.json {
            rep.write_json(p)?;
            eprintln!("wrote {}", p.display());
        }
        if let Some(p) = &a.svg {
            soak::write_svg(&rep, p)?;
            eprintln!("wrote {}", p.display());
        }
        if !rep.clean() {
            std::process::exit(1);
        }
        return Ok(());
    }

    let side = match (&agent, &agent_proc) {
        (Some(ag), _) => AgentSide::InProcess(ag),
        (None, Some(p)) => AgentSide::Process(p),
        (None, None) => AgentSide::None,
    };
    let shape = format!(
        "pacing {}{}; agent {}{}; {}",
        opts.pacing.as_str(),
        if a.aligned && opts.pacing == Pacing::PerCall {
            " (aligned)"
        } else {
            ""
        },
        side.describe(),
        match opts.agent_ping {
            PingSchedule::IntervalMs(ms) => format!(", pings every {ms} ms"),
            PingSchedule::EveryFrames(n) => format!(", pings every {n} caller frames"),
        },
        if pin.is_some() { "pinned" } else { "unpinned" }
    );
    let base = LoadConfig {
        url: url.clone(),
        floor: false,
        calls: a.calls,
        ramp_per_sec: a.ramp_per_sec,
        duration: Duration::from_secs(a.duration_secs.unwrap_or(20)),
        settle: Duration::from_secs_f64(a.settle_secs),
        plan: plan.clone(),
        mode: mode.clone(),
        aligned: a.aligned,
        monitor_pid: pid,
    };
    let fault_cfg = a.kill_agent_sockets_per_min.map(|p| {
        let mut f = FaultConfig::new(p);
        f.mode = match a.kill_mode {
            KillModeArg::Close => KillMode::Close,
            KillModeArg::Reset => KillMode::Reset,
        };
        f.seed = a.kill_seed;
        f.max_kills_per_call = a.kill_max_per_call;
        f.relay = match &relay {
            Some(r) => Some(RelayHttp {
                addr: r.addr.clone(),
                admin_token: Some(BENCH_ADMIN_TOKEN.to_owned()),
            }),
            None => a.metrics_addr.clone().map(|addr| RelayHttp {
                addr,
                admin_token: a.relay_admin_token.clone(),
            }),
        };
        f
    });
    let mut rep = Report {
        relay: None,
        floor: None,
        cpu_ratio_relay_over_floor: None,
        pairs: Vec::new(),
        floor_schedule: (!a.no_floor).then(|| {
            if a.side_by_side {
                "side by side (same window)".to_owned()
            } else {
                "after the relay".to_owned()
            }
        }),
        capacity: None,
        pinning: pin.as_ref().map(Pinning::describe),
        shape: Some(shape),
        notes: {
            let mut n = notes();
            n.push(format!("Agent dialect: {}.", a.agent.dialect().as_str()));
            if let Some(f) = &fault_cfg {
                n.push(format!(
                    "Agent-socket faults: {} % of the live agent sockets per minute of the \
                     steady window killed ({}, seed {}, at most {} per call, none in the \
                     window's last {} s); the relay runs with its default recovery settings. \
                     The gap heard = receive time of the last echo sent before the kill → of \
                     the first sent after it; unaffected latency = frames of calls with no \
                     kill scheduled.",
                    f.percent_per_min,
                    match f.mode {
                        KillMode::Close => "WebSocket Close 1011",
                        KillMode::Reset => "TCP reset",
                    },
                    f.seed,
                    f.max_kills_per_call,
                    f.tail.as_secs()
                ));
            }
            if separate {
                n.push(
                    "The mock agent ran as a separate process (`loadtest agent-server`, one \
                     thread); its receive and send times are on the harness's clock (the run's \
                     epoch handed over as a CLOCK_MONOTONIC reading). Barge-in latency is not \
                     measured with it."
                        .into(),
                );
            }
            n
        },
    };

    if a.find_capacity {
        let mut steps = Vec::new();
        let mut calls = a.calls;
        let mut last_pass: Option<(usize, Option<f64>)> = None;
        let mut last_result: Option<LoadResult> = None;
        loop {
            let pb = progress_bar(&format!("{calls}"));
            let cfg = LoadConfig {
                calls,
                ..base.clone()
            };
            let r = harness::run_load_with(cfg, &opts, side, Some(&Bar(pb.clone()))).await?;
            pb.finish_and_clear();
            let p99 = [&r.caller_to_agent, &r.agent_to_caller]
                .iter()
                .filter_map(|p| p.as_ref().map(|p| p.p99_us))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let pass = r.clean() && p99.is_none_or(|p| p <= a.slo_p99_us);
            let cores_per_call = r.resources.as_ref().map(|x| x.cores / calls as f64);
            let step = CapacityStep {
                calls,
                p99_us: p99,
                lost: r.lost(),
                pass,
                cpu_us_per_frame: r.resources.as_ref().map(|x| x.cpu_us_per_frame),
                cores_per_call,
            };
            eprintln!(
                "capacity step: {calls} calls: p99 {:?} µs, lost {}, {}",
                p99.map(|v| v.round()),
                step.lost,
                if pass { "pass" } else { "FAIL" }
            );
            steps.push(step);
            if pass {
                last_pass = Some((calls, cores_per_call));
                last_result = Some(r);
            } else {
                if last_result.is_none() {
                    last_result = Some(r);
                }
                break;
            }
            if calls >= a.max_calls {
                break;
            }
            calls = if a.capacity_step > 0 {
                calls + a.capacity_step
            } else {
                ((calls as f64 * 1.5) / 10.0).ceil() as usize * 10
            }
            .min(a.max_calls);
            // Let the previous calls' sockets drain.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        rep.capacity = Some(Capacity {
            slo_p99_us: a.slo_p99_us,
            steps,
            last_passing_calls: last_pass.map(|x| x.0),
            last_passing_cores_per_call: last_pass.and_then(|x| x.1),
        });
        rep.relay = last_result;
    } else {
        // The floor process is started once and kept beside the relay; each repeat measures
        // the relay and then the floor, or both at once with --side-by-side.
        let floor = if !a.no_floor {
            let exe = std::env::current_exe().context("locating the loadtest binary")?;
            let (proc, url) = procs::spawn_floor(&exe, pin.as_ref())?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some((proc, url))
        } else {
            None
        };
        for k in 0..a.repeat.max(1) {
            if k > 0 {
                // Let the previous calls' sockets drain.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let pb = progress_bar("relay");
            let bar = Bar(pb.clone());
            let relay_run =
                harness::run_load_faults(base.clone(), &opts, side, Some(&bar), fault_cfg.as_ref());
            let (r, f) = match &floor {
                Some((proc, url)) if a.side_by_side => {
                    // Both under the same load at the same time: machine noise hits both.
                    let floor_run =
                        run_floor(&base, &opts, url, proc.pid(), a.calls, &caller, false);
                    let (r, f) = tokio::join!(relay_run, floor_run);
                    (r?, Some(f?))
                }
                Some((proc, url)) => {
                    let r = relay_run.await?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    (
                        r,
                        Some(
                            run_floor(&base, &opts, url, proc.pid(), a.calls, &caller, true)
                                .await?,
                        ),
                    )
                }
                None => (relay_run.await?, None),
            };
            pb.finish_and_clear();
            rep.add_pair(r, f);
        }
        drop(floor);
    }
    drop(relay);
    drop(agent_proc);

    if !a.no_floor && a.find_capacity {
        let exe = std::env::current_exe().context("locating the loadtest binary")?;
        let (floor_proc, floor_url) = procs::spawn_floor(&exe, pin.as_ref())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls = rep.relay.as_ref().map_or(a.calls, |r| r.calls);
        rep.floor = Some(
            run_floor(
                &base,
                &opts,
                &floor_url,
                floor_proc.pid(),
                calls,
                &caller,
                true,
            )
            .await?,
        );
        drop(floor_proc);
    }
    rep.compute_ratio();

    print!("{}", report::summarize_report(&rep));
    if let Some(p) = &a.json {
        rep.write_json(p)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.svg {
        report::write_svg(&rep, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// One floor run: the caller load of `base` with `calls` calls against the echo floor at
/// `url`, sampling process `pid`; with a progress bar unless another run draws one.
async fn run_floor(
    base: &LoadConfig,
    opts: &RunOptions,
    url: &str,
    pid: u32,
    calls: usize,
    caller: &Arc<Vec<u8>>,
    show_progress: bool,
) -> anyhow::Result<LoadResult> {
    let (fplan, fmode) = harness::echo_setup(caller.clone());
    let cfg = LoadConfig {
        url: url.to_owned(),
        floor: true,
        calls,
        plan: fplan,
        mode: fmode,
        monitor_pid: Some(pid),
        ..base.clone()
    };
    if !show_progress {
        return harness::run_load_with(cfg, opts, AgentSide::None, None).await;
    }
    let pb = progress_bar("floor");
    let r = harness::run_load_with(cfg, opts, AgentSide::None, Some(&Bar(pb.clone()))).await;
    pb.finish_and_clear();
    r
}

fn notes() -> Vec<String> {
    vec![
        "All latencies are on one clock (the harness process, which also hosts the mock agent). \
         One-way numbers are 'relay + 2 loopback hops + both simulators' scheduling': \
         caller→agent = mock receive − caller send; agent→caller = caller receive − mock send \
         (the mock re-tags echoed frames with its send time). Recorded for frames sent in the \
         steady window."
            .into(),
        "CPU = utime+stime of the relay (or floor) process from /proc/<pid>/stat between the \
         window's start and end; frames = frames the mock received + media messages the callers \
         received in the window (each one read + one write by the relay); for the floor, frames \
         echoed. RSS per call = (VmRSS at window end − VmRSS before the first call) ÷ calls."
            .into(),
        "Caller load: one 160-byte frame per call per 20 ms on a shared grid (per-call pacing: \
         each call's own timer, calls spread over the period by index mod 20 ms unless \
         --aligned; lockstep: one ticker sends every call's frame in one burst per tick); Twilio \
         playback is emulated (8 bytes per ms per call), so the relay's marks are echoed when \
         'played'."
            .into(),
        "Context switches per frame: voluntary + involuntary switches summed over the \
         process's threads (/proc/<pid>/task/*/status) between the window's edges ÷ frames."
            .into(),
    ]
}

//! Child processes the harness starts: the relay under test and the floor echo server.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::pin::Pinning;

/// The workspace root (parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The target directory (`$CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of the relay binary for `profile` (`"release"` or `"debug"`), building it with
/// `cargo build [--release] -p media-relay` first if it does not exist or `force_build`.
pub fn relay_binary(profile: &str, force_build: bool) -> anyhow::Result<PathBuf> {
    let bin = target_dir().join(profile).join("media-relay");
    if force_build || !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "-p",
            "media-relay",
            "--bin",
            "media-relay",
        ]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build -p media-relay")?;
        if !status.success() {
            bail!("cargo build -p media-relay failed: {status}");
        }
    }
    if !bin.exists() {
        bail!("{} does not exist after building", bin.display());
    }
    Ok(bin)
}

/// A free loopback port (bound and released; a tiny race is accepted).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed on drop.
pub struct ChildGuard {
    /// The child.
    pub child: Child,
    /// What it is (for messages).
    pub name: String,
}

impl ChildGuard {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A spawned relay.
pub struct SpawnedRelay {
    /// The process (killed on drop).
    pub proc: ChildGuard,
    /// `127.0.0.1:<port>` it listens on.
    pub addr: String,
    /// Where its log (stderr + stdout) goes.
    pub log: PathBuf,
}

impl SpawnedRelay {
    /// `ws://ADDR/media`.
    pub fn media_url(&self) -> String {
        format!("ws://{}/media", self.addr)
    }
}

/// API key the bench agent ([`crate::bench::bench_agent`]) expects from the relay for AssemblyAI
/// and OpenAI (`Authorization: Bearer test-key`), and that [`RelayAgent::env`] gives the relay.
pub const BENCH_API_KEY: &str = "test-key";

/// ElevenLabs agent id [`RelayAgent::args`] configures on the relay (the bench agent accepts any).
pub const BENCH_AGENT_ID: &str = "loadtest";

/// Which agent a spawned relay talks to, and where (the bench agent's
/// [`crate::bench::bench_agent::BenchAgent::relay_agent`] gives the right one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAgent {
    /// `--agent elevenlabs --elevenlabs-agent-id loadtest --elevenlabs-api-base <api_base>`
    /// (no `ELEVENLABS_API_KEY`: a public agent).
    ElevenLabs {
        /// `http://host:port` of the mock.
        api_base: String,
    },
    /// `--agent assemblyai --assemblyai-url <url>` with `ASSEMBLYAI_API_KEY=test-key`.
    AssemblyAi {
        /// `ws://host:port/v1/ws` of the mock.
        url: String,
    },
    /// `--agent openai --openai-realtime-url <url>` with `OPENAI_API_KEY=test-key`.
    OpenAi {
        /// `ws://host:port/v1/realtime?model=…` of the mock.
        url: String,
    },
}

impl RelayAgent {
    /// The relay flags selecting this agent.
    pub fn args(&self) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            RelayAgent::ElevenLabs { api_base } => v(&[
                "--agent",
                "elevenlabs",
                "--elevenlabs-agent-id",
                BENCH_AGENT_ID,
                "--elevenlabs-api-base",
                api_base,
            ]),
            RelayAgent::AssemblyAi { url } => {
                v(&["--agent", "assemblyai", "--assemblyai-url", url])
            }
            RelayAgent::OpenAi { url } => v(&["--agent", "openai", "--openai-realtime-url", url]),
        }
    }

    /// Environment variables the relay needs for it (the API key), beside the flags.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        let key = BENCH_API_KEY;
        match self {
            RelayAgent::ElevenLabs { .. } => Vec::new(),
            RelayAgent::AssemblyAi { .. } => vec![("ASSEMBLYAI_API_KEY", key)],
            RelayAgent::OpenAi { .. } => vec![("OPENAI_API_KEY", key)],
        }
    }
}

/// Environment variables of the relay that could redirect or re-key a spawned relay's agent;
/// removed from its environment so only [`RelayAgent`] decides.
const AGENT_ENV: [&str; 8] = [
    "RELAY_AGENT",
    "ELEVENLABS_API_KEY",
    "ELEVENLABS_AGENT_ID",
    "ASSEMBLYAI_API_KEY",
    "ASSEMBLYAI_URL",
    "OPENAI_API_KEY",
    "OPENAI_REALTIME_URL",
    "OPENAI_REALTIME_MODEL",
];

/// Starts `bin serve --listen 127.0.0.1:<free> --agent elevenlabs --elevenlabs-agent-id
/// loadtest --elevenlabs-api-base <api_base>` with `RUST_LOG=<log_level>` and
/// `RELAY_INSECURE_SKIP_TWILIO_SIGNATURE=true` (no `TWILIO_AUTH_TOKEN`), and waits (up to
/// 15 s) for `GET /healthz` to answer 200.
///
/// With `pin`, the relay runs on [`Pinning::target_cpu`] only.
pub async fn spawn_relay(
    bin: &Path,
    api_base: &str,
    log_level: &str,
    pin: Option<&Pinning>,
) -> anyhow::Result<SpawnedRelay> {
    let agent = RelayAgent::ElevenLabs {
        api_base: api_base.to_owned(),
    };
    spawn_relay_with(bin, &agent, log_level, pin).await
}

/// Starts `bin serve --listen 127.0.0.1:<free> <agent flags>` (see [`RelayAgent::args`];
/// the API key in the environment, see [`RelayAgent::env`]) with `RUST_LOG=<log_level>` and
/// `RELAY_INSECURE_SKIP_TWILIO_SIGNATURE=true` (no `TWILIO_AUTH_TOKEN`), and waits (up to
/// 15 s) for `GET /healthz` to answer 200. Agent-related variables of this process's
/// environment are not passed on.
///
/// With `pin`, the relay runs on [`Pinning::target_cpu`] only.
pub async fn spawn_relay_with(
    bin: &Path,
    agent: &RelayAgent,
    log_level: &str,
    pin: Option<&Pinning>,
) -> anyhow::Result<SpawnedRelay> {
    spawn_relay_env(bin, agent, log_level, pin, &[]).await
}

/// [`spawn_relay_with`] with `env` added to the relay's environment (e.g.
/// `RELAY_ADMIN_TOKEN` for `GET /calls`).
pub async fn spawn_relay_env(
    bin: &Path,
    agent: &RelayAgent,
    log_level: &str,
    pin: Option<&Pinning>,
    env: &[(&str, &str)],
) -> anyhow::Result<SpawnedRelay> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let log =
        std::env::temp_dir().join(format!("loadtest-relay-{}-{port}.log", std::process::id()));
    let logf = std::fs::File::create(&log)?;
    let mut cmd = Command::new(bin);
    if let Some(p) = pin {
        p.apply_to_child(&mut cmd)?;
    }
    cmd.args(["serve", "--listen", &addr]).args(agent.args());
    for var in AGENT_ENV {
        cmd.env_remove(var);
    }
    let child = cmd
        .envs(agent.env())
        .env("RUST_LOG", log_level)
        // Loopback load run: no Twilio signatures (the env form works with relays that
        // predate the flag, which ignore it).
        .env_remove("TWILIO_AUTH_TOKEN")
        .env("RELAY_INSECURE_SKIP_TWILIO_SIGNATURE", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = ChildGuard {
        child,
        name: "media-relay".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "the relay exited with {status} before becoming healthy; log: {}",
                log.display()
            );
        }
        if healthz(&addr).await {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the relay did not answer /healthz within 15 s; log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(SpawnedRelay { proc, addr, log })
}

/// True if `GET http://addr/healthz` answers 200.
pub async fn healthz(addr: &str) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}

/// Starts `exe floor-server --listen 127.0.0.1:0` and reads the address it prints
/// (`listening on ADDR`). Returns the process and `ws://ADDR/media`. With `pin`, the floor
/// runs on [`Pinning::target_cpu`] only, like the relay.
pub fn spawn_floor(exe: &Path, pin: Option<&Pinning>) -> anyhow::Result<(ChildGuard, String)> {
    let mut cmd = Command::new(exe);
    if let Some(p) = pin {
        p.apply_to_child(&mut cmd)?;
    }
    let mut child = cmd
        .args(["floor-server", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} floor-server", exe.display()))?;
    let stdout = child.stdout.take().context("floor stdout")?;
    let guard = ChildGuard {
        child,
        name: "floor-server".into(),
    };
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected floor-server output {line:?}"))?
        .to_owned();
    Ok((guard, format!("ws://{addr}/media")))
}

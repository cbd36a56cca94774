//! The thread layouts (`--runtime multi-thread|per-core`, `--worker-threads`): the per-core
//! layout's workers, each a single-thread runtime with its own `SO_REUSEPORT` listener, serve
//! calls byte-exact, and the binary runs exactly the threads the layout names.

mod common;

use common::*;
use loadtest::agent_sim::{self, AgentBehavior, MockAgentConfig};
use loadtest::fixtures;
use loadtest::twilio_sim::{run_call, CallScript};
use media_relay::http::settings::RuntimeLayout;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The name tokio gives its threads unless told otherwise.
const TOKIO_WORKER: &str = "tokio-rt-worker";

/// Names of this process's threads (`/proc/self/task/*/comm`, at most 15 bytes each).
fn thread_names(pid: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(n) = std::fs::read_to_string(t.path().join("comm")) {
                names.push(n.trim().to_owned());
            }
        }
    }
    names
}

/// Forty calls through a per-core relay with two workers (this test's thread is the first,
/// `relay-worker-1` the second). The kernel hands each connection to one of the two
/// listeners by a hash of its 4-tuple, so with forty callers on distinct ports both
/// listeners get calls: a worker that did not serve its listener would leave about half of
/// them unanswered, and every call must come back byte for byte, its own audio only.
#[tokio::test(flavor = "current_thread")]
async fn per_core_layout_relays_every_call_byte_exact() {
    let mut cfg = MockAgentConfig::new("agent_echo");
    cfg.behavior = AgentBehavior::Echo;
    let mock = agent_sim::start(cfg).await.unwrap();
    let mut args = elevenlabs_args(&mock.api_base(), "agent_echo", None);
    args.http.runtime = RuntimeLayout::PerCore;
    args.http.worker_threads = 2;
    let mut relay = start_relay(args).await;
    // `run` starts the worker once this thread gets to it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !thread_names("self").iter().any(|n| n == "relay-worker-1") {
        assert!(tokio::time::Instant::now() < deadline, "no worker thread");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let threads = thread_names("self");
    assert_eq!(
        threads.iter().filter(|n| *n == "relay-worker-1").count(),
        1,
        "{threads:?}"
    );
    assert!(
        !threads.iter().any(|n| n == "relay-worker-2"),
        "{threads:?}"
    );

    tagged_calls(relay.media_url(), 40, 300).await;
    assert_eq!(mock.conversations_started(), 40);
    let m = wait_metric(relay.addr, "relay_calls_active", 0.0).await;
    assert_eq!(
        metric(&m, "relay_calls_started_total{agent=\"elevenlabs\"}"),
        40.0
    );

    // Shutdown ends the worker thread too.
    relay.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut relay.done)
        .await
        .expect("the relay stops")
        .unwrap();
    assert!(
        !thread_names("self").iter().any(|n| n == "relay-worker-1"),
        "the worker thread outlived the relay"
    );
}

/// A per-core relay that is bound and dropped without running (as when a later start-up
/// step fails) shuts its workers down without panicking (a tokio runtime dropped inside an
/// async context would) and closes every listener: the port can be bound again without
/// `SO_REUSEPORT`.
#[tokio::test(flavor = "current_thread")]
async fn a_per_core_relay_dropped_before_it_runs_closes_its_listeners() {
    let mut args = common::args();
    args.http.runtime = RuntimeLayout::PerCore;
    args.http.worker_threads = 3;
    let relay = media_relay::Relay::bind(args.settings().unwrap())
        .await
        .unwrap();
    let addr = relay.local_addr().unwrap();
    drop(relay);
    std::net::TcpListener::bind(addr).expect("every listener of the dropped relay is closed");
}

fn relay_command(layout: &[&str], addr: SocketAddr) -> Command {
    let mut c = relay_binary();
    c.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--echo-delay-ms",
        "0",
    ])
    .args(layout)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `n` calls at once (stream SIDs from `sid_base`, `call_index` = i), each playing its own
/// tagged speech to an echoing agent and checking it comes back byte for byte, its own audio
/// only, within 30 s (a call the kernel handed to a listener nobody serves never answers).
async fn tagged_calls(url: String, n: u8, sid_base: u64) {
    let caller = fixtures::caller_utterance().unwrap();
    let mut calls = Vec::new();
    for i in 0..n {
        let audio = Arc::new(tagged_audio(i, 40, &caller));
        let idx = i.to_string();
        let mut script = CallScript::new(
            url.clone(),
            start_params(sid_base + u64::from(i), &[("call_index", idx.as_str())]),
            audio.clone(),
        );
        script.linger = Duration::from_millis(600);
        calls.push(tokio::spawn(async move { (audio, run_call(script).await) }));
    }
    for c in calls {
        let (audio, report) = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a call was not answered: one listener is not served")
            .unwrap();
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
}

async fn wait_healthy(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while try_http(addr, "/healthz").await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm_and_wait(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// The binary with `--runtime per-core --worker-threads 3`: the main thread and two
/// `relay-worker-N` threads serve, no work-stealing pool exists (tokio names its
/// multi-thread workers `tokio-rt-worker`), calls are relayed, SIGTERM exits cleanly.
/// With `--runtime multi-thread --worker-threads 1`, exactly one tokio worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_the_threads_its_layout_names() {
    let addr = free_addr();
    let child = relay_command(&["--runtime", "per-core", "--worker-threads", "3"], addr)
        .spawn()
        .unwrap();
    wait_healthy(addr).await;
    let names = thread_names(&child.id().to_string());
    for w in ["relay-worker-1", "relay-worker-2"] {
        assert_eq!(
            names.iter().filter(|n| *n == w).count(),
            1,
            "{w}: {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "relay-worker-3"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with(TOKIO_WORKER)),
        "{names:?}"
    );
    tagged_calls(format!("ws://{addr}/media"), 24, 500).await;
    sigterm_and_wait(child).await;

    let addr = free_addr();
    let child = relay_command(
        &["--runtime", "multi-thread", "--worker-threads", "1"],
        addr,
    )
    .spawn()
    .unwrap();
    wait_healthy(addr).await;
    let names = thread_names(&child.id().to_string());
    assert_eq!(
        names.iter().filter(|n| n.starts_with(TOKIO_WORKER)).count(),
        1,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("relay-worker")));
    tagged_calls(format!("ws://{addr}/media"), 8, 600).await;
    sigterm_and_wait(child).await;
}

/// `--worker-threads` has an upper bound, and the layout's name is checked.
#[test]
fn worker_threads_and_runtime_are_validated() {
    let out = relay_binary()
        .args(["serve", "--worker-threads", "5000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--worker-threads"));
    let out = relay_binary()
        .args(["serve", "--runtime", "fibers"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

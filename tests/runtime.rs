//! The thread layouts (`--runtime multi-thread|per-core|uring`, `--worker-threads`): the
//! per-core layout's workers, each a single-thread runtime with its own `SO_REUSEPORT`
//! listener, serve calls byte-exact, the binary runs exactly the threads the layout names,
//! and (built with `--features uring`) the uring layout carries the calls' sockets on one
//! io_uring per worker.

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

/// The io_uring rings of a process: per `anon_inode:[io_uring]` descriptor, the submission
/// queue's tail from its `/proc/<pid>/fdinfo` (the count of entries ever submitted, mod 2³²).
#[cfg(feature = "uring")]
fn ring_submissions(pid: u32) -> Vec<u32> {
    fdinfo_of(pid, "anon_inode:[io_uring]")
        .iter()
        .map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("SqTail:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// The `/proc/<pid>/fdinfo` text of each of the process's descriptors whose link reads
/// `target` (e.g. `anon_inode:[eventpoll]`).
#[cfg(feature = "uring")]
fn fdinfo_of(pid: u32, target: &str) -> Vec<String> {
    let mut infos = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == target) {
            let path = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            infos.push(std::fs::read_to_string(path).unwrap_or_default());
        }
    }
    infos
}

/// The relay's established TCP sockets by role, as descriptor numbers: carrier sockets
/// (local port `relay_port`) and agent sockets (peer port `agent_port`), from
/// `/proc/<pid>/fd` and `/proc/<pid>/net/tcp`.
#[cfg(feature = "uring")]
fn call_sockets(pid: u32, relay_port: u16, agent_port: u16) -> (Vec<u64>, Vec<u64>) {
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let (mut carrier_inodes, mut agent_inodes) = (Vec::new(), Vec::new());
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local, remote, state (01 = established), ..., inode (field 9)
        if f.len() < 10 || f[3] != "01" {
            continue;
        }
        if port(f[1]) == Some(relay_port) {
            carrier_inodes.push(f[9].to_owned());
        } else if port(f[2]) == Some(agent_port) {
            agent_inodes.push(f[9].to_owned());
        }
    }
    let (mut carrier, mut agent) = (Vec::new(), Vec::new());
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        else {
            continue;
        };
        let Ok(n) = fd.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        if carrier_inodes.iter().any(|i| i == inode) {
            carrier.push(n);
        } else if agent_inodes.iter().any(|i| i == inode) {
            agent.push(n);
        }
    }
    (carrier, agent)
}

/// Every descriptor registered with one of the process's epoll instances (the `tfd:` lines
/// of their `/proc/<pid>/fdinfo`).
#[cfg(feature = "uring")]
fn epoll_registered(pid: u32) -> Vec<u64> {
    let mut fds = Vec::new();
    for info in fdinfo_of(pid, "anon_inode:[eventpoll]") {
        fds.extend(info.lines().filter_map(|l| {
            l.trim_start()
                .strip_prefix("tfd:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        }));
    }
    fds
}

/// The binary with `--runtime uring --worker-threads 2` and an ElevenLabs agent (the
/// harness's mock, over loopback): one io_uring per worker thread; while the calls run, both
/// of each call's sockets (carrier and agent) exist and none is registered with epoll; the
/// rings' submissions grow by at least two per caller frame (each frame is read from the
/// carrier socket and written to the agent's as ring operations, and its echo read and
/// written back the same way); every call comes back byte-exact. SIGTERM exits cleanly.
#[cfg(feature = "uring")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uring_layout_carries_both_call_sockets_on_one_ring_per_worker() {
    let mut cfg = MockAgentConfig::new("agent_echo");
    cfg.behavior = AgentBehavior::Echo;
    let mock = agent_sim::start(cfg).await.unwrap();
    let agent_port = mock.addr().port();
    let addr = free_addr();
    let child = relay_command(
        &[
            "--runtime",
            "uring",
            "--worker-threads",
            "2",
            "--agent",
            "elevenlabs",
            "--elevenlabs-agent-id",
            "agent_echo",
            "--elevenlabs-api-base",
            &mock.api_base(),
            "--insecure-skip-twilio-signature",
        ],
        addr,
    )
    .spawn()
    .unwrap();
    wait_healthy(addr).await;
    let pid = child.id();
    let before = ring_submissions(pid);
    assert_eq!(before.len(), 2, "one ring per worker: {before:?}");
    let names = thread_names(&pid.to_string());
    assert_eq!(
        names.iter().filter(|n| *n == "relay-worker-1").count(),
        1,
        "{names:?}"
    );

    let calls = 24u8;
    let run = tokio::spawn(tagged_calls(format!("ws://{addr}/media"), calls, 700));
    // While every call is up: its two sockets exist, and epoll watches neither.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (carrier, agent) = call_sockets(pid, addr.port(), agent_port);
        if carrier.len() == usize::from(calls) && agent.len() == usize::from(calls) {
            let watched = epoll_registered(pid);
            let on_epoll: Vec<_> = carrier
                .iter()
                .chain(&agent)
                .filter(|fd| watched.contains(fd))
                .collect();
            assert!(
                on_epoll.is_empty(),
                "call sockets registered with epoll: {on_epoll:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw all {calls} calls up: {} carrier, {} agent sockets",
            carrier.len(),
            agent.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.await.unwrap();
    assert_eq!(mock.conversations_started(), usize::from(calls));

    let after = ring_submissions(pid);
    // `tagged_calls` plays 40 frames per call.
    let submitted: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| u64::from(a.wrapping_sub(*b)))
        .sum();
    let frames = u64::from(calls) * 40;
    eprintln!("ring submissions {before:?} -> {after:?}: {submitted} for {frames} caller frames");
    assert!(
        submitted >= 2 * frames,
        "{submitted} ring submissions for {frames} caller frames: the sockets are not on io_uring"
    );
    // Both rings took calls: the kernel spread the connections over both listeners.
    assert!(
        after.iter().zip(&before).all(|(a, b)| a != b),
        "{before:?} -> {after:?}"
    );
    sigterm_and_wait(child).await;
}

/// Without the `uring` feature, `--runtime uring` is a configuration error (exit 64).
#[cfg(not(feature = "uring"))]
#[test]
fn the_uring_layout_needs_the_uring_feature() {
    let out = relay_binary()
        .args(["serve", "--runtime", "uring"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features uring"));
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

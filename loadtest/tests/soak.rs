//! Small soak and churn runs through a spawned relay (debug build): every call byte-exact and
//! counted, 0 frames lost, and the relay's descriptors and tasks back at the baseline after
//! the calls end. No timing or memory assertions (those are for the committed full-size runs
//! in loadtest/results/, README-soak.md).

use std::sync::Arc;
use std::time::Duration;

use loadtest::bench_agent::BenchAgent;
use loadtest::soak::{self, Monitor, SoakConfig, SoakKind, SoakReport};
use loadtest::{fixtures, harness, procs};

fn assert_clean(r: &SoakReport, expect_calls: Option<u64>) {
    let summary = soak::summarize(r);
    if let Some(n) = expect_calls {
        assert_eq!(r.calls_started, n, "{summary}");
    }
    assert!(r.calls_completed > 0, "{summary}");
    assert_eq!(r.calls_completed, r.calls_started, "{summary}");
    assert_eq!(r.calls_byte_exact, r.calls_completed, "{summary}");
    assert_eq!(
        r.calls_failed + r.calls_not_exact + r.calls_cut,
        0,
        "{summary}"
    );
    assert_eq!(r.lost_caller_to_agent + r.lost_to_caller, 0, "{summary}");
    assert_eq!(r.agent.unique, r.frames_sent, "{summary}");
    assert_eq!(r.caller.unique, r.frames_sent, "{summary}");
    assert_eq!(
        r.caller.close_codes.get(&1000).copied(),
        Some(r.calls_completed),
        "{summary}"
    );
    assert_eq!(
        r.relay_outcomes.get("caller_hangup").copied(),
        Some(r.calls_completed as f64),
        "{summary}"
    );
    // Samples: baseline, load and after, with every resource read.
    for phase in ["baseline", "load", "after"] {
        assert!(
            r.samples.iter().any(|s| s.phase == phase),
            "no {phase} sample\n{summary}"
        );
    }
    assert!(r.baseline.rss_kib.is_some() && r.baseline.fds.is_some() && r.baseline.tasks.is_some());
    assert!(
        r.during_max.fds > r.baseline.fds,
        "descriptors rose with calls\n{summary}"
    );
    assert_eq!(r.back_at_baseline.fds, Some(true), "{summary}");
    assert_eq!(r.back_at_baseline.tasks, Some(true), "{summary}");
    assert!(r.clean(), "{summary}");
}

async fn run(kind: SoakKind, f: impl FnOnce(&mut SoakConfig)) -> SoakReport {
    let bin = procs::relay_binary("debug", false).expect("relay binary");
    let agent = BenchAgent::start("127.0.0.1:0").await.unwrap();
    let relay = procs::spawn_relay(&bin, &agent.api_base(), "warn", None)
        .await
        .unwrap();
    // The relay refreshes its task gauge every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let caller = Arc::new(fixtures::caller_utterance().unwrap());
    let (plan, _) = harness::echo_setup(caller);
    let mut cfg = SoakConfig {
        kind,
        url: relay.media_url(),
        calls: 10,
        total_calls: None,
        duration: None,
        call_len: Some(Duration::from_secs(1)),
        linger: Duration::from_millis(300),
        ramp_per_sec: 20.0,
        sample_every: Duration::from_millis(500),
        monitor: Monitor {
            pid: Some(relay.proc.pid()),
            metrics_addr: Some(relay.addr.clone()),
        },
        after_wait: Duration::from_secs(15),
        rss_tolerance_kib: 4096,
        stop_file: None,
        warmup: None,
        plan,
        pinning: None,
    };
    f(&mut cfg);
    let r = soak::run_soak(cfg, &agent).await.unwrap();
    // The SVG renders.
    let svg = std::env::temp_dir().join(format!("loadtest-soak-test-{}.svg", std::process::id()));
    soak::write_svg(&r, &svg).unwrap();
    let _ = std::fs::remove_file(svg);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_every_call_byte_exact_and_counted() {
    let r = run(SoakKind::Churn, |c| c.total_calls = Some(40)).await;
    assert_clean(&r, Some(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_turnover_and_warmup() {
    let r = run(SoakKind::Soak, |c| {
        c.duration = Some(Duration::from_secs(5));
        c.call_len = Some(Duration::from_secs(2));
        c.warmup = Some(Duration::from_secs(2));
    })
    .await;
    assert_clean(&r, None);
    // Turnover: more calls than workers.
    assert!(r.calls_completed > 10, "{}", soak::summarize(&r));
    assert!(r.warmup.as_ref().is_some_and(|w| w.calls_completed > 0));
}

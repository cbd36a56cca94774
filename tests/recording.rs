//! Call recording over loopback with the real relay: the WAV file of a recorded call, read
//! back and checked against what the simulated caller sent (left channel, byte for byte, a
//! lost chunk as silence at its place) and what it heard (right channel: the agent's audio
//! on the caller's playout, a barge-in's flushed audio absent), paused spans silent, the
//! `post_call_audio` record signed, and a directory that cannot be written costing nothing
//! but the recording.

#[path = "common/call_peers.rs"]
mod call_peers;
mod common;

use call_peers::{audio_duration, PlayingCaller};
use common::post_call_receiver::{receiver, verify, SECRET};
use common::*;
use loadtest::agent_sim::{self, MockAgentConfig};
use media_relay::auth::Secret;
use media_relay::call::recording::RecordMode;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("media-relay-rec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A stereo μ-law WAV read back: checks the header the relay writes (RIFF, `fmt ` of 18
/// bytes with tag 7, 2 channels, 8000 Hz, 8 bits, block align 2, a `fact` chunk, sizes that
/// match the file) and returns (left, right).
fn read_wav(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    assert_eq!(&b[0..4], b"RIFF");
    assert_eq!(u32_at(4) as usize, b.len() - 8, "RIFF size");
    assert_eq!(&b[8..16], b"WAVEfmt ");
    assert_eq!(u32_at(16), 18, "WAVEFORMATEX");
    assert_eq!(
        (
            u16_at(20),
            u16_at(22),
            u32_at(24),
            u32_at(28),
            u16_at(32),
            u16_at(34)
        ),
        (7, 2, 8000, 16_000, 2, 8),
        "μ-law, stereo, 8 kHz, 8 bits"
    );
    assert_eq!(&b[38..42], b"fact");
    let frames = u32_at(46) as usize;
    assert_eq!(&b[50..54], b"data");
    let data = u32_at(54) as usize;
    assert_eq!(data, b.len() - 58, "data size");
    assert_eq!(data, frames * 2, "fact: samples per channel");
    let samples = &b[58..];
    (
        samples.iter().step_by(2).copied().collect(),
        samples.iter().skip(1).step_by(2).copied().collect(),
    )
}

/// The caller's 20 ms frame `k`: bytes `1 + k % 100` (never μ-law silence), frame 30 lost.
fn caller_frame(k: u64) -> Option<[u8; 160]> {
    (k != 30).then(|| [1 + (k % 100) as u8; 160])
}

fn recording_args(api_base: &str, agent: &str, dir: &Path) -> media_relay::config::ServeArgs {
    let mut a = elevenlabs_args(api_base, agent, None);
    a.call.record = RecordMode::All;
    a.call.recording_dir = dir.to_path_buf();
    a
}

/// The file the relay names after the call and stream SIDs.
fn wav_in(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one finished file, no .part left: {files:?}"
    );
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("wav"));
    files[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_holds_what_the_caller_sent_and_what_it_heard_without_the_flushed_audio() {
    aws_env();
    let dir = temp_dir("heard");
    let mock = agent_sim::start(MockAgentConfig::new("agent_rec"))
        .await
        .unwrap();
    let relay = start_relay(recording_args(&mock.api_base(), "agent_rec", &dir)).await;
    let caller = PlayingCaller::connect_streaming(
        &relay.media_url(),
        &[],
        &start_params(21, &[]),
        true,
        caller_frame,
    )
    .await;
    let conv = mock.next_conversation(T).await.unwrap();
    conv.init_data(T).await.unwrap();
    // 2 s of agent audio at once; the caller barges in after about 500 ms of it.
    conv.send_audio(&[0x33; 16_000], 1).await;
    caller
        .wait("agent audio", T, |h| (!h.audio.is_empty()).then_some(()))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    conv.send_interruption(1).await;
    caller
        .wait("the clear", T, |h| (h.clears > 0).then_some(()))
        .await;
    // A second reply, heard whole.
    conv.send_audio(&[0x44; 4000], 2).await;
    caller
        .wait("the second reply played", T, |h| {
            h.play_end
                .filter(|e| h.audio.ends_with(&[0x44; 4000]) && *e < tokio::time::Instant::now())
        })
        .await;
    caller
        .wait("100 caller frames", T, |h| (h.frames >= 100).then_some(()))
        .await;
    caller.stop().await;
    wait_metric(
        relay.addr,
        "relay_recordings_total{result=\"complete\"}",
        1.0,
    )
    .await;

    let (left, right) = read_wav(&wav_in(&dir));
    let (frames, played, started, first_media) = caller.heard(|h| {
        (
            h.frames,
            h.played(),
            h.started.unwrap(),
            h.media.first().unwrap().0,
        )
    });
    // Left: every frame the caller streamed, at its timestamp; the lost one is silence.
    assert!(left.len() as u64 >= frames * 160, "{} samples", left.len());
    for k in 0..frames {
        let want = caller_frame(k).map_or(0xFF, |f| f[0]);
        let got = &left[k as usize * 160..(k as usize + 1) * 160];
        assert!(
            got.iter().all(|&b| b == want),
            "caller frame {k}: {:?}",
            &got[..4]
        );
    }
    assert!(left[frames as usize * 160..].iter().all(|&b| b == 0xFF));
    // Right: the agent's audio as the caller played it; what the clear flushed is absent.
    let agent_heard: Vec<u8> = right.iter().copied().filter(|&b| b != 0xFF).collect();
    let caller_heard: Vec<u8> = played.iter().copied().filter(|&b| b != 0xFF).collect();
    let count = |v: &[u8], b: u8| v.iter().filter(|&&x| x == b).count();
    assert_eq!(count(&agent_heard, 0x44), 4000, "the second reply whole");
    let (rec_33, heard_33) = (count(&agent_heard, 0x33), count(&caller_heard, 0x33));
    assert!(
        (3000..8000).contains(&heard_33),
        "the caller heard {heard_33} bytes of the first reply before the clear"
    );
    // The relay's clock and the caller's agree to within 100 ms (800 samples) on how much
    // of the first reply played before the clear.
    assert!(
        rec_33.abs_diff(heard_33) <= 800,
        "recorded {rec_33} bytes of the cut reply, the caller heard {heard_33}"
    );
    assert!(
        rec_33 < 16_000,
        "the flushed rest of the first reply is not recorded"
    );
    assert_eq!(
        agent_heard.iter().position(|&b| b == 0x44),
        Some(rec_33),
        "the cut reply, then the second"
    );
    // Placed where it played: the first agent byte within 100 ms of its arrival at the caller.
    let first = right.iter().position(|&b| b != 0xFF).unwrap();
    let arrived = first_media.duration_since(started);
    let at = audio_duration(first);
    assert!(
        at.abs_diff(arrived) < Duration::from_millis(100),
        "first agent byte recorded at {at:?}, heard at {arrived:?}"
    );
    let m = metrics(relay.addr).await;
    assert_eq!(metric(&m, "relay_recording_blocks_dropped_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_span_is_silent_on_both_channels_and_the_post_call_audio_record_says_where() {
    aws_env();
    let dir = temp_dir("paused");
    let (addr, seen) = receiver(0).await;
    let mock = agent_sim::start(MockAgentConfig::new("agent_pause"))
        .await
        .unwrap();
    let mut a = recording_args(&mock.api_base(), "agent_pause", &dir);
    a.call.recording_pause_digit = Some('9');
    a.http.admin_token = Some(Secret::new("admin-secret"));
    a.call.post_call_webhook_url = Some(format!("http://{addr}/post-call"));
    a.call.post_call_webhook_secret = Some(Secret::new(SECRET));
    let relay = start_relay(a).await;
    let caller = PlayingCaller::connect_streaming(
        &relay.media_url(),
        &[],
        &start_params(22, &[]),
        true,
        |k| Some([1 + (k % 100) as u8; 160]),
    )
    .await;
    let conv = mock.next_conversation(T).await.unwrap();
    conv.init_data(T).await.unwrap();
    // The agent talks for 3 s; the caller pauses the recording for about 1 s of it.
    conv.send_audio(&[0x55; 24_000], 1).await;
    caller
        .wait("1 s of the call", T, |h| (h.frames >= 50).then_some(()))
        .await;
    caller.tx.send_dtmf("9").await.unwrap();
    caller
        .wait("2 s of the call", T, |h| (h.frames >= 100).then_some(()))
        .await;
    caller.tx.send_dtmf("9").await.unwrap();
    caller
        .wait("3.5 s of the call", T, |h| (h.frames >= 175).then_some(()))
        .await;
    caller.stop().await;
    wait_metric(
        relay.addr,
        "relay_recordings_total{result=\"complete\"}",
        1.0,
    )
    .await;

    let (status, calls) = http_with(
        relay.addr,
        "GET",
        &format!("/calls/{}", start_params(22, &[]).call_sid),
        &[("Authorization", "Bearer admin-secret")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&calls).unwrap();
    assert_eq!(
        v["recording"]["pauses_ms"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    assert_eq!(
        v["recording"]["location"],
        wav_in(&dir).display().to_string()
    );
    let (left, right) = read_wav(&wav_in(&dir));
    // The paused span: about 1 s (the keys arrived with the 50th and 100th frames).
    let silent = |v: &[u8], from: usize, to: usize| v[from..to].iter().all(|&b| b == 0xFF);
    let span = (0..left.len())
        .filter(|&i| left[i] == 0xFF)
        .fold(None::<(usize, usize)>, |acc, i| match acc {
            None => Some((i, i + 1)),
            Some((a, b)) if b == i => Some((a, i + 1)),
            Some(x) => Some(x),
        })
        .expect("a silent span on the caller channel");
    let len = span.1 - span.0;
    assert!(
        (6400..9600).contains(&len),
        "paused for {} ms, from {} ms",
        len / 8,
        span.0 / 8
    );
    assert!(
        silent(&right, span.0, span.1),
        "the agent channel is silent too"
    );
    assert!(right[span.0 - 800..span.0].iter().all(|&b| b == 0x55));
    assert!(right[span.1..span.1 + 800].iter().all(|&b| b == 0x55));
    // The digits were not sent to the agent.
    assert!(
        conv.wait_messages_of_type("user_message", 1, Duration::from_millis(300))
            .await
            .is_err(),
        "the pause key is not the agent's"
    );
    // post_call_audio: where the file is, what it holds, the pause; signed.
    let record = loop {
        let got = seen.lock().unwrap().iter().find_map(|(_, sig, body)| {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            (v["type"] == "post_call_audio").then(|| (sig.clone(), body.clone(), v))
        });
        if let Some(r) = got {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(verify(record.0.as_deref().unwrap(), &record.1), "signed");
    let rec = &record.2["data"]["recording"];
    assert_eq!(rec["location"], wav_in(&dir).display().to_string());
    assert_eq!(rec["encoding"], "mulaw");
    assert_eq!(rec["degraded"], false);
    assert_eq!(rec["pauses_secs"].as_array().map(Vec::len), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_directory_that_cannot_be_written_fails_the_recording_not_the_call() {
    aws_env();
    // A regular file where the directory should be: nothing can be created under it.
    let base = temp_dir("blocked");
    std::fs::create_dir_all(&base).unwrap();
    let blocked = base.join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let relay = start_relay({
        let mut a = args();
        a.call.record = RecordMode::All;
        a.call.recording_dir = blocked.clone();
        a
    })
    .await;
    let caller =
        PlayingCaller::connect(&relay.media_url(), &[], &start_params(23, &[]), true).await;
    // The echo agent answers: the call works.
    caller
        .wait("the echo", T, |h| (h.audio.len() >= 1600).then_some(()))
        .await;
    caller.stop().await;
    wait_metric(relay.addr, "relay_recordings_total{result=\"failed\"}", 1.0).await;
    wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    let _ = std::fs::remove_dir_all(&base);
}

/// `moto_server` (PyPI `moto[server]`, an S3-compatible server; `$MOTO_SERVER` or the one on
/// `PATH`) on a free loopback port, killed on drop. `.ci/test` installs it when missing.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let child = std::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} ({e}): pip install 'moto[server]', or set MOTO_SERVER (.ci/test does)")
        });
    let m = Moto { child, port };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "moto_server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m
}

/// The AWS environment `object_store` reads (moto accepts any credentials). Set once, and
/// every test of this file calls it first, so no thread reads the environment while it is
/// written.
fn aws_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test-key-id");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_uploaded_to_an_s3_compatible_store_and_read_back_through_the_s3_api() {
    use object_store::ObjectStoreExt;
    aws_env();
    let s3 = moto().await;
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    // Create the bucket (path style: the Host header names no bucket).
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s3.port))
            .await
            .unwrap();
        let req = format!(
            "PUT /rec-bucket HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            s3.port
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create the bucket: {answer}"
    );
    let spool = temp_dir("s3");
    let relay = start_relay({
        let mut a = args();
        a.call.record = RecordMode::All;
        a.call.recording_dir = spool.clone();
        a.call.recording_url = Some("s3://rec-bucket/calls/2026".into());
        a.call.recording_s3_endpoint = Some(endpoint.clone());
        a
    })
    .await;
    let caller = PlayingCaller::connect_streaming(
        &relay.media_url(),
        &[],
        &start_params(24, &[]),
        true,
        caller_frame,
    )
    .await;
    caller
        .wait("60 caller frames", T, |h| (h.frames >= 60).then_some(()))
        .await;
    caller.stop().await;
    wait_metric(
        relay.addr,
        "relay_recording_uploads_total{result=\"uploaded\"}",
        1.0,
    )
    .await;
    wait_metric(
        relay.addr,
        "relay_recordings_total{result=\"complete\"}",
        1.0,
    )
    .await;
    let frames = caller.heard(|h| h.frames);

    // Read back through the S3 API.
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name("rec-bucket")
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .build()
        .unwrap();
    let p = start_params(24, &[]);
    let key = format!("calls/2026/{}_{}.wav", p.call_sid, p.stream_sid);
    let bytes = store
        .get(&object_store::path::Path::from(key.as_str()))
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .bytes()
        .await
        .unwrap();
    let local = spool.join("readback.wav");
    std::fs::write(&local, &bytes).unwrap();
    let (left, _) = read_wav(&local);
    for k in 0..frames {
        let want = caller_frame(k).map_or(0xFF, |f| f[0]);
        assert!(
            left[k as usize * 160..(k as usize + 1) * 160]
                .iter()
                .all(|&b| b == want),
            "caller frame {k}"
        );
    }
    std::fs::remove_file(&local).unwrap();
    // The spool is empty once the object is stored.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&spool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_that_refuses_leaves_the_file_in_the_spool_counted_and_the_call_untouched()
{
    aws_env();
    let spool = temp_dir("s3-down");
    // Nothing listens on port 9.
    let relay = start_relay({
        let mut a = args();
        a.call.record = RecordMode::All;
        a.call.recording_dir = spool.clone();
        a.call.recording_url = Some("s3://rec-bucket/calls".into());
        a.call.recording_s3_endpoint = Some("http://127.0.0.1:9".into());
        a
    })
    .await;
    let caller =
        PlayingCaller::connect(&relay.media_url(), &[], &start_params(25, &[]), true).await;
    caller
        .wait("the echo", T, |h| (h.audio.len() >= 1600).then_some(()))
        .await;
    caller.stop().await;
    wait_metric(
        relay.addr,
        "relay_calls_total{outcome=\"caller_hangup\"}",
        1.0,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = metrics(relay.addr).await;
        if metric(&m, "relay_recording_uploads_total{result=\"failed\"}") == 1.0 {
            assert_eq!(
                metric(&m, "relay_recording_uploads_total{result=\"retried\"}"),
                2.0
            );
            assert_eq!(metric(&m, "relay_recordings_total{result=\"failed\"}"), 1.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upload failure counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = start_params(25, &[]);
    let kept = spool.join(format!("{}_{}.wav", p.call_sid, p.stream_sid));
    let (left, _) = read_wav(&kept);
    assert!(!left.is_empty(), "the recording stays in the spool");
    let _ = std::fs::remove_dir_all(&spool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_the_recordings_and_their_records_before_the_relay_returns() {
    aws_env();
    let dir = temp_dir("drain");
    let (hook, seen) = receiver(0).await;
    let mut relay = start_relay({
        let mut a = args();
        a.call.record = RecordMode::All;
        a.call.recording_dir = dir.clone();
        a.call.post_call_webhook_url = Some(format!("http://{hook}/post-call"));
        a.http.drain_timeout_secs = 1;
        a
    })
    .await;
    let caller =
        PlayingCaller::connect(&relay.media_url(), &[], &start_params(26, &[]), true).await;
    caller
        .wait("the echo", T, |h| (h.audio.len() >= 1600).then_some(()))
        .await;
    // SIGTERM with the call still up: the drain deadline (1 s) closes it; the relay returns
    // only after its recording is on disk and both records were delivered.
    relay.shutdown();
    tokio::time::timeout(Duration::from_secs(20), &mut relay.done)
        .await
        .expect("the relay stops within the drain")
        .unwrap();
    let (left, _) = read_wav(&wav_in(&dir));
    assert!(left.len() >= 8000, "{} samples", left.len());
    let kinds: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, _, b)| {
            let v: serde_json::Value = serde_json::from_slice(b).ok()?;
            v["type"].as_str().map(str::to_owned)
        })
        .collect();
    assert!(
        kinds.contains(&"post_call_transcription".to_owned())
            && kinds.contains(&"post_call_audio".to_owned()),
        "{kinds:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

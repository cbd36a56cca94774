//! A hand-rolled ElevenLabs-speaking agent server that misbehaves on purpose: it stops
//! reading (its receive window fills), closes mid-sentence, resets the connection, never
//! answers the WebSocket upgrade, or hangs the signed-URL request. Raw sockets, so each
//! fault is exactly what the network would show. Loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// What the agent does once a conversation is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Reports ready, then never reads again (a tiny receive buffer, so the relay's writes
    /// stall quickly) while sending 20 ms of audio every 20 ms.
    StopReading,
    /// Reports ready, sends `chunks` audio events, then a close frame with `code` in the
    /// middle of the reply.
    CloseMidSentence { chunks: usize, code: u16 },
    /// Reports ready, sends a few audio events, then resets the TCP connection.
    Reset,
    /// Reports ready, then sends 48 KB audio events as fast as the relay takes them (reading
    /// everything it is sent).
    Flood,
    /// Accepts TCP but never answers the HTTP upgrade.
    NeverUpgrade,
    /// Accepts the signed-URL request (`GET …/get-signed-url`) and never answers.
    HangSignedUrl,
}

/// A running fault agent.
pub struct FaultAgent {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultAgent {
    /// The REST origin to configure as `--elevenlabs-api-base`.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    if payload.len() < 126 {
        out.push(payload.len() as u8);
    } else if payload.len() <= 65535 {
        out.push(126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// An ElevenLabs `audio` event of 160 bytes of `byte`.
pub fn audio_event(byte: u8, event_id: u64) -> Vec<u8> {
    audio_event_sized(byte, event_id, 160)
}

/// An ElevenLabs `audio` event of `len` bytes of `byte`.
pub fn audio_event_sized(byte: u8, event_id: u64, len: usize) -> Vec<u8> {
    let b64 = base64_simd::STANDARD.encode_to_string(vec![byte; len]);
    server_frame(
        1,
        format!(
            r#"{{"type":"audio","audio_event":{{"audio_base_64":"{b64}","event_id":{event_id}}}}}"#
        )
        .as_bytes(),
    )
}

const READY: &str = r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"conv_fault","user_input_audio_format":"ulaw_8000","agent_output_audio_format":"ulaw_8000"}}"#;

/// Starts the agent on a loopback port.
pub async fn start(fault: Fault) -> FaultAgent {
    let socket = TcpSocket::new_v4().unwrap();
    if fault == Fault::StopReading {
        // Accepted sockets inherit it: the relay's writes stall after a few KiB.
        socket.set_recv_buffer_size(4096).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s, fault));
        }
    });
    FaultAgent {
        addr,
        accepted,
        task,
    }
}

async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    loop {
        let n = s.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
    }
}

async fn serve(mut s: TcpStream, fault: Fault) {
    if fault == Fault::NeverUpgrade {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    if fault == Fault::HangSignedUrl {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let accept = media_relay::wire::ws_client::expected_accept(&key);
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if s.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let _ = s.write_all(&server_frame(1, READY.as_bytes())).await;
    match fault {
        Fault::StopReading => {
            // Never read; keep talking.
            for i in 0..1000u64 {
                if s.write_all(&audio_event(0x42, i + 1)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Fault::CloseMidSentence { chunks, code } => {
            let (mut r, mut w) = s.into_split();
            let drain = tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                while matches!(r.read(&mut b).await, Ok(n) if n > 0) {}
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            for _ in 0..chunks {
                let _ = w.write_all(&audio_event(0x43, 1)).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut close = code.to_be_bytes().to_vec();
            close.extend_from_slice(b"internal error");
            let _ = w.write_all(&server_frame(8, &close)).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
        Fault::Flood => {
            let (mut r, mut w) = s.into_split();
            tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                while matches!(r.read(&mut b).await, Ok(n) if n > 0) {}
            });
            let event = audio_event_sized(0x45, 1, 48_000);
            for _ in 0..20_000 {
                if w.write_all(&event).await.is_err() {
                    return;
                }
            }
        }
        Fault::Reset => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for _ in 0..5 {
                let _ = s.write_all(&audio_event(0x44, 1)).await;
            }
            // SO_LINGER 0: closing sends a reset instead of a FIN (blocking on drop is what
            // tokio's deprecation warns about, and exactly what this fault wants).
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
        Fault::NeverUpgrade | Fault::HangSignedUrl => {}
    }
}

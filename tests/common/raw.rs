//! A raw WebSocket client for hostile-peer tests: does the HTTP upgrade by hand and then
//! writes whatever bytes a test crafts (malformed headers, bad close frames, huge lengths),
//! which no well-behaved WebSocket library would send. Reads frames back without judging them.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A masked client frame (RFC 6455 §5.2) with the given first byte (FIN/RSV/opcode) and
/// payload; the length field uses the shortest encoding.
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else if payload.len() <= 65535 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A final text frame.
pub fn text(s: &str) -> Vec<u8> {
    frame(0x81, s.as_bytes())
}

/// A frame header claiming a 64-bit payload length of `len` (masked), with no payload.
pub fn header_with_len64(first: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// A frame read back from the server (unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// An upgraded raw connection.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades `GET path` on `addr` and returns the raw socket.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::upgrade(stream, path).await
    }

    /// Like [`RawWs::connect`] with a small receive buffer, so a client that stops reading
    /// fills its window quickly.
    pub async fn connect_small_window(addr: SocketAddr, path: &str) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        Self::upgrade(stream, path).await
    }

    async fn upgrade(mut stream: TcpStream, path: &str) -> RawWs {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("upgrade answer in time")
                .unwrap();
            assert!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
                buf.drain(..end + 4);
                return RawWs { stream, buf };
            }
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame from the server, or `None` at EOF / reset / after `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 2 {
                let b1 = self.buf[1] & 0x7f;
                let (len, hl) = match b1 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut l = [0u8; 8];
                        l.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(l) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    l => (l as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= hl + len {
                    let f = ServerFrame {
                        opcode: self.buf[0] & 0x0f,
                        payload: self.buf[hl..hl + len].to_vec(),
                    };
                    self.buf.drain(..hl + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads frames until a close frame (returned) or EOF (`None`).
    pub async fn until_close(&mut self, timeout: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(f) if f.opcode == 8 => return Some(f),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// True if the server closes TCP within `timeout` (reads return EOF or reset).
    pub async fn closed_by_server(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Twilio's `connected` and a `start` for `call_sid` / `stream_sid`, as raw frames.
pub fn connected_and_start(call_sid: &str, stream_sid: &str) -> Vec<u8> {
    let mut out = text(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#);
    out.extend(text(&format!(
        r#"{{"event":"start","sequenceNumber":"1","start":{{"accountSid":"AC00000000000000000000000000000000","streamSid":"{stream_sid}","callSid":"{call_sid}","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{}}}},"streamSid":"{stream_sid}"}}"#
    )));
    out
}

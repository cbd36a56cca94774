//! WebSocket plumbing shared by both legs, on top of fastwebsockets' split halves.
//!
//! Owns: turning a read half into a cancel-safe stream of whole messages (fastwebsockets'
//! `read_frame` is not cancel-safe, so the in-flight read lives inside the stream and a
//! `select!` that drops `next()` loses nothing), bounded reassembly of fragmented messages,
//! and a writer that buffers frames until [`WsWriter::flush`] so a batch costs one syscall.
//! Does not own: protocol parsing, or which task writes (each writer has one owner: `call`).
//!
//! Control frames are surfaced, not answered here: auto-pong and auto-close are off, so the
//! owner of the write half answers pings and closes itself.

use bytes::BytesMut;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead, WebSocketWrite};
use futures_util::stream::{self, BoxStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// One whole WebSocket message as the reader saw it.
#[derive(Debug)]
pub enum Message {
    /// A text message; the buffer is mutable so JSON can be parsed in place.
    Text(BytesMut),
    /// A binary message (neither leg accepts these); carries its length in bytes.
    Binary(usize),
    /// A ping with its payload (≤ 125 bytes); the writer's owner answers with a pong.
    Ping(BytesMut),
    /// A close frame: code (if any) and UTF-8 reason. The stream ends after it.
    Close {
        /// Close code from the frame, if it carried one.
        code: Option<u16>,
        /// Reason text (lossy UTF-8).
        reason: String,
    },
}

/// Why reading a socket failed. The stream ends after yielding one of these.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A message (possibly reassembled from fragments) exceeded the leg's limit.
    #[error("message larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// True when the oversized message was consumed and the stream can go on.
        in_sync: bool,
    },
    /// The peer closed TCP without a close frame.
    #[error("connection closed without a close frame")]
    Eof,
    /// Any other framing or I/O error.
    #[error("websocket error: {0}")]
    Protocol(#[from] WebSocketError),
}

impl ReadError {
    /// Stable snake_case name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::TooLarge { .. } => "message_too_large",
            ReadError::Eof => "eof",
            ReadError::Protocol(WebSocketError::IoError(_)) => "io",
            ReadError::Protocol(WebSocketError::InvalidUTF8) => "invalid_utf8",
            ReadError::Protocol(_) => "websocket_protocol",
        }
    }
}

/// A cancel-safe stream of whole messages from one socket.
pub type MessageStream = BoxStream<'static, Result<Message, ReadError>>;

struct ReadState<R> {
    reader: WebSocketRead<R>,
    max_message_bytes: usize,
    done: bool,
    /// A fragmented message in progress (control frames may arrive between fragments).
    partial: Option<(OpCode, BytesMut)>,
}

/// Frames up to this size are read whole even when over a leg's message limit, so the
/// stream stays in sync and the peer can still be sent a close and answer it; a single
/// frame beyond it is refused before its payload is read and ends the stream.
pub const MAX_FRAME_READ_BYTES: usize = 1 << 20;

/// Wraps a read half into a [`MessageStream`]. `max_message_bytes` caps each message,
/// fragmented or not: an over-limit message yields [`ReadError::TooLarge`] and is skipped
/// (the stream continues); a frame over `max(max_message_bytes, MAX_FRAME_READ_BYTES)`
/// ends the stream.
pub fn message_stream<R>(mut reader: WebSocketRead<R>, max_message_bytes: usize) -> MessageStream
where
    R: AsyncRead + Unpin + Send + 'static,
{
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    reader.set_max_message_size(
        max_message_bytes
            .max(MAX_FRAME_READ_BYTES)
            .saturating_add(1),
    );
    let state = ReadState {
        reader,
        max_message_bytes,
        done: false,
        partial: None,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = read_message(&mut st).await;
        let recoverable = matches!(item, Err(ReadError::TooLarge { in_sync: true, .. }));
        if matches!(item, Err(_) | Ok(Message::Close { .. })) && !recoverable {
            st.done = true;
        }
        Some((item, st))
    }))
}

async fn read_message<R: AsyncRead + Unpin>(st: &mut ReadState<R>) -> Result<Message, ReadError> {
    // Control frames are answered by the write-half owner: this callback is never invoked
    // because auto-pong and auto-close are off.
    let mut no_obligations = |_: Frame<'static>| async { Ok::<(), std::convert::Infallible>(()) };
    loop {
        let frame = match st.reader.read_frame(&mut no_obligations).await {
            Ok(f) => f,
            Err(WebSocketError::UnexpectedEOF) => return Err(ReadError::Eof),
            Err(WebSocketError::FrameTooLarge) => {
                return Err(ReadError::TooLarge {
                    limit: st.max_message_bytes,
                    in_sync: false,
                })
            }
            Err(e) => return Err(e.into()),
        };
        match frame.opcode {
            OpCode::Ping => return Ok(Message::Ping(into_bytes_mut(frame.payload))),
            OpCode::Pong => continue,
            OpCode::Close => {
                let p = &frame.payload[..];
                let (code, reason) = if p.len() >= 2 {
                    (
                        Some(u16::from_be_bytes([p[0], p[1]])),
                        String::from_utf8_lossy(&p[2..]).into_owned(),
                    )
                } else {
                    (None, String::new())
                };
                return Ok(Message::Close { code, reason });
            }
            OpCode::Text | OpCode::Binary => {
                if st.partial.is_some() {
                    return Err(WebSocketError::InvalidFragment.into());
                }
                if frame.payload.len() > st.max_message_bytes {
                    if !frame.fin {
                        // Skip the continuation frames of this message too.
                        st.partial = Some((OpCode::Continuation, BytesMut::new()));
                    }
                    return Err(ReadError::TooLarge {
                        limit: st.max_message_bytes,
                        in_sync: true,
                    });
                }
                if frame.fin {
                    return Ok(finish(frame.opcode, into_bytes_mut(frame.payload)));
                }
                st.partial = Some((frame.opcode, into_bytes_mut(frame.payload)));
            }
            OpCode::Continuation => {
                let Some((op, buf)) = st.partial.as_mut() else {
                    return Err(WebSocketError::InvalidContinuationFrame.into());
                };
                if *op == OpCode::Continuation {
                    // Remainder of an oversized message already reported: discard.
                    if frame.fin {
                        st.partial = None;
                    }
                    continue;
                }
                if buf.len() + frame.payload.len() > st.max_message_bytes {
                    let fin = frame.fin;
                    st.partial = (!fin).then(|| (OpCode::Continuation, BytesMut::new()));
                    return Err(ReadError::TooLarge {
                        limit: st.max_message_bytes,
                        in_sync: true,
                    });
                }
                buf.extend_from_slice(&frame.payload);
                if frame.fin {
                    let op = *op;
                    let buf = std::mem::take(buf);
                    st.partial = None;
                    return Ok(finish(op, buf));
                }
            }
        }
    }
}

fn finish(op: OpCode, buf: BytesMut) -> Message {
    if op == OpCode::Text {
        Message::Text(buf)
    } else {
        Message::Binary(buf.len())
    }
}

fn into_bytes_mut(p: Payload<'_>) -> BytesMut {
    match p {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
}

/// The write half of a socket, buffered: frames are queued by [`WsWriter::send_text`] and
/// reach the kernel on [`WsWriter::flush`] (or when the buffer fills). One owner only.
pub struct WsWriter<W: AsyncWrite + Unpin> {
    inner: WebSocketWrite<BufWriter<W>>,
    close_sent: bool,
}

/// Capacity of the per-socket write buffer in bytes: a dozen ~300-byte Twilio media
/// messages, or one ElevenLabs chunk of ~250 ms of audio, per syscall.
pub const WRITE_BUFFER_BYTES: usize = 1024;

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// Wraps a fastwebsockets write half whose stream is already a `BufWriter`.
    pub fn new(mut inner: WebSocketWrite<BufWriter<W>>) -> Self {
        // Vectored writes would bypass the BufWriter for payloads over the threshold.
        inner.set_writev(false);
        Self {
            inner,
            close_sent: false,
        }
    }

    /// Queues one text frame. `payload` may be scrambled (client-side masking is done in place).
    ///
    /// # Errors
    /// The socket's I/O error, or `ConnectionClosed` after a close frame was sent.
    pub async fn send_text(&mut self, payload: &mut [u8]) -> Result<(), WebSocketError> {
        self.inner
            .write_frame(Frame::text(Payload::BorrowedMut(payload)))
            .await
    }

    /// Queues a pong echoing `payload`.
    ///
    /// # Errors
    /// As [`WsWriter::send_text`].
    pub async fn send_pong(&mut self, payload: &mut [u8]) -> Result<(), WebSocketError> {
        self.inner
            .write_frame(Frame::pong(Payload::BorrowedMut(payload)))
            .await
    }

    /// Writes everything queued to the socket.
    ///
    /// # Errors
    /// The socket's I/O error.
    pub async fn flush(&mut self) -> Result<(), WebSocketError> {
        self.inner.flush().await
    }

    /// Sends a close frame with `code` and `reason` (once; later calls do nothing) and flushes.
    ///
    /// # Errors
    /// The socket's I/O error.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), WebSocketError> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        self.inner
            .write_frame(Frame::close(code, reason.as_bytes()))
            .await?;
        self.inner.flush().await
    }
}

/// A reader that first yields `prefix` (bytes hyper read past the upgrade request) and then
/// reads from `inner`. Without it the first frame after the upgrade could be lost.
pub struct Prefixed<R> {
    prefix: bytes::Bytes,
    inner: R,
}

impl<R> Prefixed<R> {
    /// Chains `prefix` in front of `inner`.
    pub fn new(prefix: bytes::Bytes, inner: R) -> Self {
        Self { prefix, inner }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Role;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    fn client_frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        let mask = [1u8, 2, 3, 4];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn messages(wire: Vec<u8>, limit: usize, split_every: usize) -> Vec<String> {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for part in wire.chunks(split_every) {
                let _ = a.write_all(part).await;
            }
        });
        let (r, _w) = tokio::io::split(b);
        let (reader, _writer) =
            fastwebsockets::after_handshake_split(r, tokio::io::sink(), Role::Server);
        message_stream(reader, limit)
            .map(|m| match m {
                Ok(Message::Text(t)) => format!("text:{}", String::from_utf8_lossy(&t)),
                Ok(m) => format!("{m:?}"),
                Err(e) => format!("err:{}", e.kind()),
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn reassembles_fragments_delivered_byte_by_byte() {
        let mut wire = client_frame(1, false, b"hel");
        wire.extend(client_frame(9, true, b"p")); // ping between fragments
        wire.extend(client_frame(0, true, b"lo"));
        wire.extend(client_frame(8, true, &[0x03, 0xe8, b'b', b'y']));
        let got = messages(wire, 1024, 1).await;
        assert_eq!(got[0], "Ping(b\"p\")");
        assert_eq!(got[1], "text:hello");
        assert_eq!(got[2], "Close { code: Some(1000), reason: \"by\" }");
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn caps_single_and_fragmented_messages_and_stays_in_sync() {
        let mut wire = client_frame(1, true, &[b'a'; 200]);
        wire.extend(client_frame(1, true, b"ok1"));
        let got = messages(wire, 100, 7).await;
        assert_eq!(got, vec!["err:message_too_large", "text:ok1", "err:eof"]);
        let mut wire = client_frame(1, false, &[b'a'; 60]);
        wire.extend(client_frame(0, false, &[b'a'; 60]));
        wire.extend(client_frame(0, true, &[b'a'; 60]));
        wire.extend(client_frame(1, true, b"ok2"));
        let got = messages(wire, 100, 7).await;
        assert_eq!(got, vec!["err:message_too_large", "text:ok2", "err:eof"]);
    }

    #[tokio::test]
    async fn binary_and_eof() {
        let got = messages(client_frame(2, true, b"\x00\x01"), 100, 3).await;
        assert_eq!(got, vec!["Binary(2)", "err:eof"]);
    }

    #[tokio::test]
    async fn prefix_comes_first() {
        use tokio::io::AsyncReadExt;
        let mut r = Prefixed::new(bytes::Bytes::from_static(b"ab"), &b"cd"[..]);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "abcd");
    }
}

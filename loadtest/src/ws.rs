//! Shared WebSocket plumbing for both simulated peers (crate-private).
//!
//! A connection is split with `tokio::io::split` into a [`WsReader`] and a [`WsWriter`]. The
//! writer is an `Arc<Mutex<..>>` so any number of tasks can send. The reader keeps fastwebsockets'
//! `auto_pong`/`auto_close` on; the control frames it owes (pong, close echo) are written through
//! the same shared writer from inside `read_frame`'s callback, so a reader needs no separate
//! writer task. Every frame is flushed right after it is written.

use std::future::Future;
use std::sync::Arc;

use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::Mutex;

/// The upgraded stream both sides use (client handshake and server upgrade both yield this).
pub(crate) type Stream = TokioIo<Upgraded>;

/// Spawns hyper's background futures on the current tokio runtime.
#[derive(Clone, Copy)]
pub(crate) struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Splits an upgraded WebSocket into a reader and a shared writer.
pub(crate) fn split(ws: WebSocket<Stream>) -> (WsReader, WsWriter) {
    let (read, write) = ws.split(tokio::io::split);
    let writer = WsWriter {
        inner: Arc::new(Mutex::new(Some(write))),
    };
    let reader = WsReader {
        read: FragmentCollectorRead::new(read),
        writer: writer.clone(),
    };
    (reader, writer)
}

/// One complete message read from the peer.
#[derive(Debug)]
pub(crate) enum WsMessage {
    /// A text message (valid UTF-8; fragments already reassembled).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// The peer sent a Close frame (already echoed). `code` is `None` for an empty payload.
    Close { code: Option<u16>, reason: String },
    /// The TCP stream ended without a Close frame.
    Eof,
}

/// Reading half. `next` is **not cancel-safe** (fastwebsockets' `read_frame` is not): run it
/// in a task or future that is never dropped mid-read.
pub(crate) struct WsReader {
    read: FragmentCollectorRead<ReadHalf<Stream>>,
    writer: WsWriter,
}

impl WsReader {
    /// Reads the next data or close message; pings are answered internally.
    pub(crate) async fn next(&mut self) -> Result<WsMessage, WebSocketError> {
        let writer = self.writer.clone();
        let mut send_fn = move |frame: Frame<'static>| {
            let writer = writer.clone();
            async move { writer.write_obligated(frame).await }
        };
        loop {
            let frame = match self.read.read_frame(&mut send_fn).await {
                Ok(f) => f,
                Err(WebSocketError::UnexpectedEOF) => return Ok(WsMessage::Eof),
                Err(WebSocketError::IoError(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(WsMessage::Eof)
                }
                Err(e) => return Err(e),
            };
            match frame.opcode {
                OpCode::Text => {
                    let bytes: Vec<u8> = frame.payload.into();
                    return String::from_utf8(bytes)
                        .map(WsMessage::Text)
                        .map_err(|_| WebSocketError::InvalidUTF8);
                }
                OpCode::Binary => return Ok(WsMessage::Binary(frame.payload.into())),
                OpCode::Close => {
                    let p: &[u8] = &frame.payload;
                    let (code, reason) = if p.len() >= 2 {
                        (
                            Some(u16::from_be_bytes([p[0], p[1]])),
                            String::from_utf8_lossy(&p[2..]).into_owned(),
                        )
                    } else {
                        (None, String::new())
                    };
                    return Ok(WsMessage::Close { code, reason });
                }
                // Pings are answered by auto_pong; unsolicited pongs are ignored.
                _ => continue,
            }
        }
    }
}

/// Shared, cloneable writing half. `None` inside once the connection has been released.
#[derive(Clone)]
pub(crate) struct WsWriter {
    inner: Arc<Mutex<Option<fastwebsockets::WebSocketWrite<WriteHalf<Stream>>>>>,
}

impl WsWriter {
    async fn write(&self, frame: Frame<'_>) -> Result<(), WebSocketError> {
        let mut guard = self.inner.lock().await;
        let w = guard.as_mut().ok_or(WebSocketError::ConnectionClosed)?;
        w.write_frame(frame).await?;
        w.flush().await
    }

    /// Sends a text frame and flushes it.
    pub(crate) async fn send_text(&self, text: String) -> Result<(), WebSocketError> {
        self.write(Frame::text(Payload::Owned(text.into_bytes())))
            .await
    }

    /// Sends a binary frame and flushes it.
    pub(crate) async fn send_binary(&self, bytes: Vec<u8>) -> Result<(), WebSocketError> {
        self.write(Frame::binary(Payload::Owned(bytes))).await
    }

    /// Sends a Close frame with `code` and `reason`. A no-op if a Close was already sent.
    pub(crate) async fn send_close(&self, code: u16, reason: &str) -> Result<(), WebSocketError> {
        if self.is_closed().await {
            return Ok(());
        }
        self.write(Frame::close(code, reason.as_bytes())).await
    }

    /// Writes a control frame the reader owes (pong or close echo), unless a Close was already
    /// sent (then nothing more may be written).
    async fn write_obligated(&self, frame: Frame<'static>) -> Result<(), WebSocketError> {
        let mut guard = self.inner.lock().await;
        let Some(w) = guard.as_mut() else {
            return Ok(());
        };
        if w.is_closed() {
            return Ok(());
        }
        w.write_frame(frame).await?;
        w.flush().await
    }

    /// True once a Close frame has been written (or the writer was released).
    pub(crate) async fn is_closed(&self) -> bool {
        self.inner
            .lock()
            .await
            .as_ref()
            .is_none_or(|w| w.is_closed())
    }

    /// Drops the write half; once the reader is dropped too, the TCP connection closes.
    pub(crate) async fn release(&self) {
        self.inner.lock().await.take();
    }
}

//! The echo loop shared by the Autobahn conformance binaries: every message goes back as
//! it came, pings get pongs, a peer's close gets a close reply, and a read error gets the
//! close code RFC 6455 §7.4.1 prescribes. Built only on `media_relay::wire::ws`, the relay's own
//! data-path framing, so Autobahn tests exactly the code the call legs run.

use media_relay::wire::ws::{Message, ReadError, WsReader, WsWriter};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long to wait for the peer's close (or EOF) after we sent ours.
const LINGER: Duration = Duration::from_secs(2);

/// Echoes until the connection ends. `wait_for_tcp_close`: the client waits for the server
/// to drop TCP after the closing handshake (RFC 6455 §7.1.1); the server drops it itself.
pub async fn echo<R, W>(mut rx: WsReader<R>, mut tx: WsWriter<W>, wait_for_tcp_close: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let sent = match rx.next().await {
            Ok(Message::Text(t)) => tx.send_text(t),
            Ok(Message::Binary(b)) => tx.send_binary(b),
            Ok(Message::Ping(p)) => tx.send_pong(p),
            Ok(Message::Close { code, .. }) => {
                if tx.close_reply(code).await.is_ok() && wait_for_tcp_close {
                    linger(&mut rx).await;
                }
                return;
            }
            Err(e) => {
                if let Some(code) = e.close_code() {
                    if tx.close(code, "").await.is_ok() {
                        linger(&mut rx).await;
                    }
                }
                return;
            }
        };
        if sent.is_err() || tx.flush().await.is_err() {
            return;
        }
    }
}

/// Reads and discards until the peer's close, EOF or [`LINGER`].
async fn linger<R: AsyncRead + Unpin>(rx: &mut WsReader<R>) {
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            match rx.next().await {
                Ok(Message::Close { .. }) | Err(ReadError::Eof) => return,
                Err(ReadError::TooLarge { .. }) | Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

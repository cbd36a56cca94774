//! Autobahn TestSuite client (`wstest -m fuzzingserver`), on the relay's own framing in the
//! client role, connected exactly as the agent leg connects (`wire::ws_client::connect`:
//! fastwebsockets handshake with `Sec-WebSocket-Accept` checked, then `media_relay::wire::ws`).
//!
//! Usage: `autobahn_client [BASE_URL] [AGENT]` (default `ws://127.0.0.1:9002`,
//! `media-relay`): reads `/getCaseCount`, runs every case with `/runCase?case=N&agent=…`
//! echoing each message, then asks for `/updateReports?agent=…`.

#[path = "common/echo.rs"]
mod echo;

use anyhow::Context;
use media_relay::agent::MAX_AGENT_MESSAGE_BYTES;
use media_relay::wire::ws_client;

async fn connect_ws(
    url: &str,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<(ws_client::ClientRead, ws_client::ClientWrite), ws_client::HandshakeError> {
    ws_client::connect(url, &[], tls, MAX_AGENT_MESSAGE_BYTES).await
}
use media_relay::wire::ws::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9002".into());
    let agent = args.next().unwrap_or_else(|| "media-relay".into());
    let tls = media_relay::wire::net::tls_client_config()?;

    let (mut rx, _tx) = connect_ws(&format!("{base}/getCaseCount"), &tls).await?;
    let count: u32 = match rx.next().await? {
        Message::Text(t) => std::str::from_utf8(t)?.trim().parse()?,
        other => anyhow::bail!("unexpected answer to getCaseCount: {other:?}"),
    };
    eprintln!("running {count} cases as agent {agent}");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        match connect_ws(&url, &tls).await {
            Ok((rx, tx)) => echo::echo(rx, tx, true).await,
            Err(e) => eprintln!("case {case}: connect failed: {e}"),
        }
    }
    let (mut rx, mut tx) = connect_ws(&format!("{base}/updateReports?agent={agent}"), &tls)
        .await
        .context("updateReports")?;
    // The server closes once the reports are written.
    while let Ok(m) = rx.next().await {
        if let Message::Close { code, .. } = m {
            let _ = tx.close_reply(code).await;
            break;
        }
    }
    eprintln!("reports updated");
    Ok(())
}

//! Autobahn TestSuite echo server (`wstest -m fuzzingclient`), on the relay's own framing in
//! the server role, as the Twilio leg uses it: hyper + fastwebsockets do the upgrade exactly
//! as `media-relay`'s `/media` route does, then `media_relay::wire::ws` reads and writes.
//!
//! Usage: `autobahn_server [ADDR]` (default `127.0.0.1:9001`). Loopback only by intent.

#[path = "common/echo.rs"]
mod echo;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use media_relay::wire::ws::{Prefixed, Role, WsReader, WsWriter};
use tokio::net::{TcpListener, TcpStream};

/// Largest message echoed (bytes): Autobahn's 9.x cases go up to 16 MiB.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("autobahn_server listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                let Ok((resp, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                    let mut r = Response::new(Empty::<Bytes>::new());
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return Ok::<_, std::convert::Infallible>(r);
                };
                tokio::spawn(async move {
                    let Ok(ws) = upgrade.await else { return };
                    let Ok(parts) = ws
                        .into_inner()
                        .into_inner()
                        .downcast::<TokioIo<TcpStream>>()
                    else {
                        return;
                    };
                    let (r, w) = parts.io.into_inner().into_split();
                    let rx = WsReader::new(
                        Prefixed::new(parts.read_buf, r),
                        Role::Server,
                        MAX_MESSAGE_BYTES,
                    );
                    echo::echo(rx, WsWriter::new(w, Role::Server), false).await;
                });
                let (parts, _) = resp.into_parts();
                Ok(Response::from_parts(parts, Empty::<Bytes>::new()))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

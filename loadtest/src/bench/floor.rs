//! The cost floor: a minimal fastwebsockets echo server. Per frame it does one WebSocket read
//! and one write of the same payload, with no parsing — the least any WebSocket relay on this
//! machine can spend per relayed frame. `loadtest floor-server` runs it as its own process so
//! its CPU and RSS can be read from `/proc/<pid>` exactly like the relay's.

use std::convert::Infallible;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves the echo on `listener` forever (any path upgrades). Each connection echoes every
/// text/binary frame back unchanged; pings and closes are answered by fastwebsockets.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                let Ok((resp, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                    let mut r = Response::new(Empty::<Bytes>::new());
                    *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                    return Ok::<_, Infallible>(r);
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = fut.await else { return };
                    loop {
                        let frame = match ws.read_frame().await {
                            Ok(f) => f,
                            Err(_) => break,
                        };
                        match frame.opcode {
                            OpCode::Text | OpCode::Binary => {
                                let out = Frame::new(true, frame.opcode, None, frame.payload);
                                if ws.write_frame(out).await.is_err() {
                                    break;
                                }
                            }
                            OpCode::Close => break,
                            _ => {}
                        }
                    }
                });
                let (parts, _) = resp.into_parts();
                Ok(Response::from_parts(parts, Empty::<Bytes>::new()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

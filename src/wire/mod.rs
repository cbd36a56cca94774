//! Wire level, below every protocol: WebSocket framing on the data path ([`ws`]), client
//! WebSocket handshakes ([`ws_client`]), base64 audio payloads ([`b64`]), JSON helpers for
//! hand-built output and lenient decoding ([`json`]), XML escaping ([`xml`]), outbound TCP/TLS
//! connections ([`net`]), the pooled HTTP client ([`http_client`]) and, with the `uring`
//! feature, call sockets on io_uring (`uring`). Knows no vendor, no carrier and no call.

pub mod b64;
pub mod http_client;
pub mod json;
pub mod net;
#[cfg(feature = "uring")]
#[allow(unsafe_code)]
pub mod uring;
pub mod ws;
pub mod ws_client;
pub mod xml;

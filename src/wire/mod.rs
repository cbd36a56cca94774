//! Wire level, below every protocol: WebSocket framing on the data path ([`ws`]), JSON helpers
//! for hand-built output and lenient decoding ([`json`]), outbound TCP/TLS connections
//! ([`net`]) and the pooled HTTP client ([`http_client`]). Knows no vendor and no call.

pub mod http_client;
pub mod json;
pub mod net;
pub mod ws;

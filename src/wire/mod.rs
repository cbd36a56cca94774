//! Wire level, below every protocol: WebSocket framing on the data path ([`ws`]), JSON helpers
//! for hand-built output and lenient decoding ([`json`]), and outbound TCP/TLS connections and
//! HTTP requests ([`net`]). Knows no vendor and no call.

pub mod json;
pub mod net;
pub mod ws;

//! The control plane: everything before and around the WebSocket upgrade. The accept loop,
//! routing, admission and drain ([`server`]), TwiML ([`twiml`]), outbound calls and Twilio
//! status callbacks ([`control`]). Calls themselves live in `call`.

pub mod control;
pub mod server;
pub mod twiml;

//! The Twilio leg: Media Streams wire codec (sans-IO) and request signatures (X-Twilio-Signature
//! validation and per-call tokens; not yet enforced by the server).

pub mod codec;
pub mod signature;

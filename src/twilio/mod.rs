//! The Twilio leg: Media Streams wire codec (sans-IO) and request signatures (X-Twilio-Signature
//! validation, enforced by `server` when `TWILIO_AUTH_TOKEN` is set; per-call tokens, not yet used).

pub mod codec;
pub mod signature;

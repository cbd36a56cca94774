//! The Twilio leg: Media Streams wire codec (sans-IO) and request signatures.

pub mod codec;

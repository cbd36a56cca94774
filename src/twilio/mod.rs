//! The Twilio leg: the Media Streams wire codec (sans-IO). Request signatures are in
//! `auth::signature`.

pub mod codec;

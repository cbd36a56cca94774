//! G.711 μ-law audio facts the relay relies on (ITU-T G.711; Twilio Media Streams send
//! 8 kHz mono μ-law, <https://www.twilio.com/docs/voice/media-streams/websocket-messages>),
//! and the caller speech detector ([`vad`]).
//!
//! The relay never transcodes: audio is only ever decoded to measure its energy.

pub mod vad;

/// Duration of one Twilio media frame (160 μ-law bytes).
pub const FRAME_DURATION: std::time::Duration = std::time::Duration::from_millis(20);

/// Audio bytes per millisecond of μ-law at 8 kHz mono, one byte per sample (1 ms = 8 bytes).
pub const MULAW_BYTES_PER_MS: u64 = 8;

/// Bytes in one 20 ms μ-law chunk (160 samples; Twilio's usual frame, never asserted on
/// input).
pub const MULAW_CHUNK_BYTES: usize = 160;

/// Milliseconds of audio in `bytes` μ-law bytes (truncating).
#[inline]
pub const fn bytes_to_ms(bytes: u64) -> u64 {
    bytes / MULAW_BYTES_PER_MS
}

/// μ-law bytes in `ms` milliseconds of audio.
#[inline]
pub const fn ms_to_bytes(ms: u64) -> u64 {
    ms * MULAW_BYTES_PER_MS
}

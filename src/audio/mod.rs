//! G.711 μ-law audio facts the relay relies on (protocols.md §5.1).
//!
//! Owns the constants only: the relay never transcodes, so there is no DSP here.

/// Audio bytes per millisecond of μ-law at 8 kHz mono, one byte per sample (§5.1: 1 ms = 8
/// bytes).
pub const MULAW_BYTES_PER_MS: u64 = 8;

/// Bytes in one 20 ms μ-law chunk (160 samples; §1.3, community-assumed, never asserted on
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

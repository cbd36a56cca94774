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

/// Why a notice file is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WavError {
    /// A RIFF/WAVE file that is not G.711 μ-law (format tag 7), 8000 Hz, mono, 8 bits.
    #[error("not a G.711 μ-law 8000 Hz mono WAV file: {0}")]
    Format(&'static str),
    /// The RIFF structure is cut short or has no `data` chunk.
    #[error("malformed WAV file: {0}")]
    Malformed(&'static str),
}

/// The audio of an operator-provided file: a RIFF/WAVE file of G.711 μ-law, 8000 Hz, mono
/// (format tag 7, as `sox … -e u-law -r 8000 -c 1` writes it), or headerless μ-law bytes when
/// the file does not start with `RIFF`. Returns the μ-law bytes (the `data` chunk).
///
/// # Errors
/// [`WavError`] for a WAV file of another format or a malformed one.
pub fn mulaw_from_file_bytes(bytes: &[u8]) -> Result<Vec<u8>, WavError> {
    if !bytes.starts_with(b"RIFF") {
        return Ok(bytes.to_vec());
    }
    if bytes.len() < 12 || &bytes[8..12] != b"WAVE" {
        return Err(WavError::Malformed("no WAVE header"));
    }
    let mut at = 12;
    let mut format_ok = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = at + 8;
        let end = body
            .checked_add(len)
            .ok_or(WavError::Malformed("chunk length"))?;
        if id == b"fmt " {
            if len < 16 || end > bytes.len() {
                return Err(WavError::Malformed("short fmt chunk"));
            }
            let u16_at = |i: usize| u16::from_le_bytes([bytes[body + i], bytes[body + i + 1]]);
            let rate = u32::from_le_bytes([
                bytes[body + 4],
                bytes[body + 5],
                bytes[body + 6],
                bytes[body + 7],
            ]);
            format_ok = Some(match (u16_at(0), u16_at(2), rate, u16_at(14)) {
                (7, 1, 8000, 8) => Ok(()),
                (7, _, _, _) => Err(WavError::Format("must be 8000 Hz mono, 8 bits")),
                _ => Err(WavError::Format("format tag is not 7 (μ-law)")),
            });
        } else if id == b"data" {
            format_ok.ok_or(WavError::Malformed("data before fmt"))??;
            let end = end.min(bytes.len());
            return Ok(bytes[body..end].to_vec());
        }
        // Chunks are padded to an even length.
        at = end + (len & 1);
    }
    Err(WavError::Malformed("no data chunk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_wav_and_raw_bytes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/caller-8k-mulaw.wav");
        let wav = std::fs::read(path).unwrap();
        let audio = mulaw_from_file_bytes(&wav).unwrap();
        assert_eq!(audio.len() % 160, 0);
        assert!(audio.len() > 40_000);
        assert_eq!(
            mulaw_from_file_bytes(&[0xff, 0x7f]).unwrap(),
            vec![0xff, 0x7f]
        );
        // A PCM WAV is refused.
        let mut pcm = wav.clone();
        let fmt = pcm.windows(4).position(|w| w == b"fmt ").unwrap();
        pcm[fmt + 8] = 1;
        assert_eq!(
            mulaw_from_file_bytes(&pcm),
            Err(WavError::Format("format tag is not 7 (μ-law)"))
        );
        assert!(mulaw_from_file_bytes(b"RIFF\x04\x00\x00\x00WAVE").is_err());
    }
}

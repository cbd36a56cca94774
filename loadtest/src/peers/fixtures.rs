//! Speech fixtures: 8 kHz mono G.711 μ-law WAV files in `<workspace>/tests/fixtures/`.
//!
//! The files are produced by `tests/fixtures/make-fixtures.sh` (espeak-ng + sox). Each file's
//! audio is a whole number of 160-byte (20 ms) frames. The loaders return only the raw μ-law
//! bytes of the `data` chunk, never the WAV header.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

/// WAVE `fmt ` format tag for G.711 μ-law (`WAVE_FORMAT_MULAW`).
const WAVE_FORMAT_MULAW: u16 = 7;
/// WAVE `fmt ` format tag for `WAVE_FORMAT_EXTENSIBLE` (the real tag is in the sub-format GUID).
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// File name of the caller utterance fixture (≈5.6 s, "Hi, I'm calling about my order…").
pub const CALLER_UTTERANCE: &str = "caller-8k-mulaw.wav";
/// File name of the agent reply fixture (≈6.0 s, "Thanks for calling Acme support…").
pub const AGENT_REPLY: &str = "agent-8k-mulaw.wav";

/// Path of `<workspace root>/tests/fixtures/<name>`.
///
/// Resolved at compile time from this crate's manifest directory, so it works from any
/// current directory (tests, benches, the loadtest binary run from the workspace).
/// The file is not checked for existence.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// Reads a RIFF/WAVE file and returns the raw bytes of its `data` chunk.
///
/// The file must be G.711 μ-law (format tag 7, or `WAVE_FORMAT_EXTENSIBLE` with the μ-law
/// sub-format), 8000 Hz, 1 channel, 8 bits per sample; anything else is an error that names
/// the offending field. Chunks are walked in order (honouring the RIFF pad byte after
/// odd-sized chunks); unknown chunks such as `fact` or `LIST` are skipped. The `fmt ` chunk
/// must come before `data`.
///
/// Returns the μ-law samples, 1 byte per sample (8 bytes per ms).
pub fn load_mulaw_wav(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_mulaw_wav(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Loads `tests/fixtures/caller-8k-mulaw.wav`: a caller utterance, raw μ-law bytes
/// (8 kHz mono, length a multiple of 160 bytes, ≈45 kB ≈ 5.6 s).
pub fn caller_utterance() -> anyhow::Result<Vec<u8>> {
    load_mulaw_wav(&fixture_path(CALLER_UTTERANCE))
}

/// Loads `tests/fixtures/agent-8k-mulaw.wav`: an agent reply, raw μ-law bytes
/// (8 kHz mono, length a multiple of 160 bytes, ≈48 kB ≈ 6.0 s).
pub fn agent_reply() -> anyhow::Result<Vec<u8>> {
    load_mulaw_wav(&fixture_path(AGENT_REPLY))
}

/// Parses an in-memory RIFF/WAVE file; see [`load_mulaw_wav`].
fn parse_mulaw_wav(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    if bytes.len() < 12 {
        bail!("file too short for a RIFF header ({} bytes)", bytes.len());
    }
    if &bytes[0..4] != b"RIFF" {
        bail!(
            "not a RIFF file (magic {:?})",
            String::from_utf8_lossy(&bytes[0..4])
        );
    }
    if &bytes[8..12] != b"WAVE" {
        bail!(
            "RIFF form type is {:?}, not WAVE",
            String::from_utf8_lossy(&bytes[8..12])
        );
    }

    let mut pos = 12usize;
    let mut fmt_ok = false;
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| anyhow!("truncated chunk header at offset {pos}"))?;
        let id = [header[0], header[1], header[2], header[3]];
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body_start = pos + 8;
        let body = bytes.get(body_start..body_start + size).ok_or_else(|| {
            anyhow!(
                "chunk {:?} at offset {pos} claims {size} bytes but only {} remain",
                String::from_utf8_lossy(&id),
                bytes.len() - body_start
            )
        })?;
        match &id {
            b"fmt " => {
                check_fmt(body)?;
                fmt_ok = true;
            }
            b"data" => {
                if !fmt_ok {
                    bail!("data chunk before fmt chunk");
                }
                return Ok(body.to_vec());
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body_start + size + (size & 1);
    }
    if fmt_ok {
        bail!("no data chunk")
    } else {
        bail!("no fmt chunk")
    }
}

/// Checks a `fmt ` chunk body for μ-law, 8000 Hz, mono, 8 bits per sample.
fn check_fmt(fmt: &[u8]) -> anyhow::Result<()> {
    if fmt.len() < 16 {
        bail!(
            "fmt chunk too short ({} bytes, need at least 16)",
            fmt.len()
        );
    }
    let u16_at = |i: usize| u16::from_le_bytes([fmt[i], fmt[i + 1]]);
    let mut format_tag = u16_at(0);
    let channels = u16_at(2);
    let sample_rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let bits_per_sample = u16_at(14);
    if format_tag == WAVE_FORMAT_EXTENSIBLE {
        // cbSize(2) validBits(2) channelMask(4) subFormat GUID(16): the GUID starts with the tag.
        if fmt.len() < 40 {
            bail!(
                "WAVE_FORMAT_EXTENSIBLE fmt chunk too short ({} bytes)",
                fmt.len()
            );
        }
        format_tag = u16_at(24);
    }
    if format_tag != WAVE_FORMAT_MULAW {
        bail!("format tag is {format_tag}, expected {WAVE_FORMAT_MULAW} (G.711 mu-law)");
    }
    if sample_rate != 8000 {
        bail!("sample rate is {sample_rate} Hz, expected 8000");
    }
    if channels != 1 {
        bail!("{channels} channels, expected 1");
    }
    if bits_per_sample != 8 {
        bail!("{bits_per_sample} bits per sample, expected 8");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a WAV file from a fmt body, optional extra chunk and data.
    fn wav(fmt: &[u8], extra: Option<(&[u8; 4], &[u8])>, data: &[u8]) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        let mut push = |id: &[u8; 4], b: &[u8]| {
            body.extend_from_slice(id);
            body.extend_from_slice(&(b.len() as u32).to_le_bytes());
            body.extend_from_slice(b);
            if b.len() % 2 == 1 {
                body.push(0);
            }
        };
        push(b"fmt ", fmt);
        if let Some((id, b)) = extra {
            push(id, b);
        }
        push(b"data", data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn fmt(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * u32::from(channels)).to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes()); // cbSize
        f
    }

    fn err_of(bytes: &[u8]) -> String {
        format!("{:#}", parse_mulaw_wav(bytes).expect_err("should fail"))
    }

    #[test]
    fn parses_minimal_mulaw_with_odd_extra_chunk() {
        let data: Vec<u8> = (0..=255u8).collect();
        let file = wav(&fmt(7, 1, 8000, 8), Some((b"fact", &[1, 2, 3])), &data);
        assert_eq!(parse_mulaw_wav(&file).unwrap(), data);
    }

    #[test]
    fn parses_extensible_mulaw() {
        let mut f = fmt(WAVE_FORMAT_EXTENSIBLE, 1, 8000, 8);
        f.truncate(16);
        f.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        f.extend_from_slice(&8u16.to_le_bytes()); // valid bits
        f.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        f.extend_from_slice(&7u16.to_le_bytes()); // sub-format GUID starts with the tag
        f.extend_from_slice(&[0; 14]);
        let file = wav(&f, None, &[0xFF; 160]);
        assert_eq!(parse_mulaw_wav(&file).unwrap(), vec![0xFF; 160]);
    }

    #[test]
    fn rejects_wrong_formats() {
        assert!(err_of(&wav(&fmt(1, 1, 8000, 16), None, &[0; 4])).contains("format tag is 1"));
        assert!(err_of(&wav(&fmt(7, 1, 16000, 8), None, &[0; 4])).contains("16000 Hz"));
        assert!(err_of(&wav(&fmt(7, 2, 8000, 8), None, &[0; 4])).contains("2 channels"));
        assert!(err_of(&wav(&fmt(7, 1, 8000, 16), None, &[0; 4])).contains("16 bits"));
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(err_of(b"RIFX").contains("too short"));
        assert!(err_of(b"RIFX\0\0\0\0WAVE").contains("not a RIFF"));
        assert!(err_of(b"RIFF\0\0\0\0AVI ").contains("not WAVE"));
        assert!(err_of(b"RIFF\x04\0\0\0WAVE").contains("no fmt chunk"));

        // Truncated data chunk: header claims more bytes than the file holds.
        let mut file = wav(&fmt(7, 1, 8000, 8), None, &[0xFF; 160]);
        file.truncate(file.len() - 10);
        assert!(err_of(&file).contains("claims 160 bytes"));

        // Truncated chunk header.
        let mut file = wav(&fmt(7, 1, 8000, 8), None, &[]);
        file.truncate(file.len() - 3);
        assert!(err_of(&file).contains("truncated chunk header"));

        // fmt chunk too short.
        assert!(err_of(&wav(&[7, 0, 1, 0], None, &[0; 4])).contains("fmt chunk too short"));

        // data before fmt.
        let mut out = b"RIFF\0\0\0\0WAVEdata\x02\0\0\0\xff\xff".to_vec();
        out.extend_from_slice(b"fmt \x10\0\0\0");
        out.extend_from_slice(&fmt(7, 1, 8000, 8)[..16]);
        assert!(err_of(&out).contains("data chunk before fmt"));

        // fmt but no data.
        let mut out = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
        out.extend_from_slice(&fmt(7, 1, 8000, 8)[..16]);
        assert!(err_of(&out).contains("no data chunk"));
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let e = load_mulaw_wav(Path::new("/nonexistent/x.wav")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/x.wav"));
    }

    #[test]
    fn committed_fixtures_load_and_are_whole_frames() {
        for (name, audio) in [
            (CALLER_UTTERANCE, caller_utterance().unwrap()),
            (AGENT_REPLY, agent_reply().unwrap()),
        ] {
            assert_eq!(audio.len() % 160, 0, "{name}: {} bytes", audio.len());
            let ms = audio.len() / 8;
            assert!((4000..=7000).contains(&ms), "{name}: {ms} ms");
            // Not all silence.
            assert!(audio.iter().filter(|&&b| b != 0xFF && b != 0x7F).count() > audio.len() / 4);
        }
    }
}

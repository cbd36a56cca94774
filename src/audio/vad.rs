//! Speech-end detection on the caller's μ-law audio, so turn latency can be measured the same
//! way for every agent dialect (no agent event needed).
//!
//! Method: decode each frame with the G.711 μ-law table (ITU-T G.711, the 14-bit expansion
//! scaled to 16-bit linear), take the mean square energy of the frame, and compare it with a
//! fixed level. A frame at or above [`SPEECH_LEVEL_DBFS`] is voiced. Speech *starts* after
//! [`ONSET_FRAMES`] voiced frames in a row (a click is not speech) and *ends* at the last
//! voiced frame once [`HANGOVER`] of unvoiced audio followed it (pauses between words and
//! sentences are shorter). The reported end is the arrival time of the last voiced frame,
//! not the end of the hangover, so the hangover does not inflate turn latency.
//!
//! Parameters, checked against `tests/fixtures/turns-8k-mulaw.wav` (two utterances with
//! known ends over a −60 dBFS noise floor) in this module's tests:
//! window 20 ms (one Twilio frame; longer or shorter frames are measured as they come),
//! level −40 dBFS, onset 2 frames (40 ms), hangover 500 ms.
//!
//! Sans-IO: the caller feeds frames with their arrival time.

use std::time::{Duration, Instant};

/// Mean-square level (dB relative to a full-scale 16-bit square wave) at or above which a
/// frame counts as voiced.
pub const SPEECH_LEVEL_DBFS: f64 = -40.0;

/// Consecutive voiced frames before speech counts as started.
pub const ONSET_FRAMES: u32 = 2;

/// Unvoiced audio after the last voiced frame before speech counts as ended.
pub const HANGOVER: Duration = Duration::from_millis(500);

/// The G.711 μ-law → 16-bit linear table (ITU-T G.711 expansion; `0xFF` and `0x7F` are
/// silence).
pub static MULAW_TO_LINEAR: [i16; 256] = build_table();

const fn build_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        let u = !(i as u8);
        let sign = u & 0x80;
        let exponent = ((u >> 4) & 0x07) as i32;
        let mantissa = (u & 0x0F) as i32;
        let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
        t[i] = if sign != 0 {
            -(magnitude as i16)
        } else {
            magnitude as i16
        };
        i += 1;
    }
    t
}

/// The square of each code's linear value (a frame's energy is a sum of table lookups).
static MULAW_SQUARE: [u32; 256] = build_squares();

const fn build_squares() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let v = MULAW_TO_LINEAR[i] as i32;
        t[i] = (v * v) as u32;
        i += 1;
    }
    t
}

/// Mean-square energy threshold matching [`SPEECH_LEVEL_DBFS`] (full scale = 32768²).
fn threshold() -> f64 {
    32768.0f64.powi(2) * 10f64.powf(SPEECH_LEVEL_DBFS / 10.0)
}

/// Mean-square level of one frame in dBFS (`-inf` for digital silence).
pub fn level_dbfs(frame: &[u8]) -> f64 {
    if frame.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = frame
        .iter()
        .map(|&b| {
            let s = MULAW_TO_LINEAR[b as usize] as f64;
            s * s
        })
        .sum();
    10.0 * (sum / frame.len() as f64 / 32768.0f64.powi(2)).log10()
}

/// What one frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechEvent {
    /// The caller started speaking; carries the arrival time of the first voiced frame.
    Started(Instant),
    /// The caller stopped speaking; carries the arrival time of the last voiced frame.
    Ended(Instant),
}

/// Per-call detector state (24 bytes plus the threshold).
#[derive(Debug, Clone)]
pub struct SpeechDetector {
    threshold: f64,
    run: u32,
    first_voiced: Option<Instant>,
    last_voiced: Option<Instant>,
    speaking: bool,
}

impl Default for SpeechDetector {
    fn default() -> Self {
        SpeechDetector {
            threshold: threshold(),
            run: 0,
            first_voiced: None,
            last_voiced: None,
            speaking: false,
        }
    }
}

impl SpeechDetector {
    /// Feeds one frame of caller μ-law that arrived at `at`.
    pub fn push(&mut self, frame: &[u8], at: Instant) -> Option<SpeechEvent> {
        if frame.is_empty() {
            return None;
        }
        let sum: u64 = frame
            .iter()
            .map(|&b| u64::from(MULAW_SQUARE[b as usize]))
            .sum();
        let voiced = sum as f64 / frame.len() as f64 >= self.threshold;
        if voiced {
            if self.run == 0 {
                self.first_voiced = Some(at);
            }
            self.run += 1;
            self.last_voiced = Some(at);
            if !self.speaking && self.run >= ONSET_FRAMES {
                self.speaking = true;
                return self.first_voiced.map(SpeechEvent::Started);
            }
            return None;
        }
        self.run = 0;
        if self.speaking {
            if let Some(last) = self.last_voiced {
                if at.saturating_duration_since(last) >= HANGOVER {
                    self.speaking = false;
                    return Some(SpeechEvent::Ended(last));
                }
            }
        }
        None
    }

    /// True while the caller is speaking (between a start and its end).
    pub fn speaking(&self) -> bool {
        self.speaking
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_g711() {
        // Silence codes and the extremes of G.711 μ-law.
        assert_eq!(MULAW_TO_LINEAR[0xFF], 0);
        assert_eq!(MULAW_TO_LINEAR[0x7F], 0);
        assert_eq!(MULAW_TO_LINEAR[0x00], -32124);
        assert_eq!(MULAW_TO_LINEAR[0x80], 32124);
        assert_eq!(MULAW_TO_LINEAR[0xFE], 8);
        assert_eq!(MULAW_TO_LINEAR[0x7E], -8);
        assert!(level_dbfs(&[0xFF; 160]).is_infinite());
        assert!(level_dbfs(&[0x80; 160]) > -1.0);
    }

    fn run(audio: &[u8]) -> Vec<(bool, u64)> {
        let t0 = Instant::now();
        let mut d = SpeechDetector::default();
        let mut out = Vec::new();
        for (i, frame) in audio.chunks(160).enumerate() {
            let at = t0 + Duration::from_millis(20 * i as u64);
            match d.push(frame, at) {
                Some(SpeechEvent::Started(t)) => out.push((true, (t - t0).as_millis() as u64)),
                Some(SpeechEvent::Ended(t)) => out.push((false, (t - t0).as_millis() as u64)),
                None => {}
            }
        }
        out
    }

    fn tone(frames: usize, amplitude_code: u8) -> Vec<u8> {
        // Alternating ± samples of one magnitude: a square wave at that level.
        (0..frames * 160)
            .map(|i| {
                if i % 2 == 0 {
                    amplitude_code
                } else {
                    amplitude_code ^ 0x80
                }
            })
            .collect()
    }

    #[test]
    fn clicks_are_not_speech_and_pauses_do_not_split() {
        let mut a = vec![0xFFu8; 10 * 160];
        a.extend(tone(1, 0x90)); // one loud frame: a click
        a.extend(vec![0xFF; 40 * 160]);
        a.extend(tone(20, 0x90)); // 400 ms speech at 200 ms
        a.extend(vec![0xFF; 15 * 160]); // 300 ms pause (< hangover)
        a.extend(tone(10, 0x90));
        a.extend(vec![0xFF; 40 * 160]);
        let got = run(&a);
        let start = (10 + 1 + 40) * 20;
        let end = (10 + 1 + 40 + 20 + 15 + 10 - 1) * 20;
        assert_eq!(got, vec![(true, start), (false, end)]);
    }

    #[test]
    fn quiet_noise_is_not_speech() {
        // Code 0xF0 is ±~ 100 linear ≈ -50 dBFS.
        let n = tone(100, 0xF0);
        assert!(level_dbfs(&n[..160]) < SPEECH_LEVEL_DBFS);
        assert!(run(&n).is_empty());
    }

    /// The committed fixture with known utterance ends (see `tests/fixtures/README.md`):
    /// each detected end is within one frame before and 40 ms after the known end, and
    /// there are no others.
    #[test]
    fn finds_the_known_utterance_ends_in_the_fixture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let wav = std::fs::read(dir.join("turns-8k-mulaw.wav")).unwrap();
        let data_at = wav.windows(4).position(|w| w == b"data").unwrap();
        let audio = &wav[data_at + 8..];
        let manifest = std::fs::read_to_string(dir.join("turns-8k-mulaw.txt")).unwrap();
        let known: Vec<u64> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("utterance_end_ms="))
            .map(|v| v.trim().parse().unwrap())
            .collect();
        assert_eq!(known.len(), 2, "{manifest}");
        let ends: Vec<u64> = run(audio)
            .into_iter()
            .filter(|(start, _)| !start)
            .map(|(_, t)| t + 20) // the frame's end
            .collect();
        assert_eq!(
            ends.len(),
            known.len(),
            "detected {ends:?}, known {known:?}"
        );
        for (got, want) in ends.iter().zip(&known) {
            assert!(
                *got + 20 >= *want && *got <= want + 40,
                "detected end {got} ms, known {want} ms"
            );
        }
    }
}

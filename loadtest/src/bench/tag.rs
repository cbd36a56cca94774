//! Per-frame tags carried *inside* the μ-law payload of every caller frame, so the load
//! harness can check each frame's arrival, loss, order, duplication, cross-talk and
//! byte-exactness at both ends, and time it on one clock.
//!
//! Layout of one 160-byte (20 ms) caller frame:
//!
//! | bytes    | content                                                                     |
//! |----------|-----------------------------------------------------------------------------|
//! | 0..8     | call index, `u32` little-endian, quiet-encoded                              |
//! | 8..16    | sequence number within the call (0-based), `u32` LE, quiet-encoded          |
//! | 16..32   | caller send time, `u64` LE, nanoseconds since the harness epoch, quiet      |
//! | 32..48   | fixture audio as sent; the harness's mock agent overwrites it in echo mode  |
//! |          | with *its* send time (`u64` LE ns since the same epoch, quiet-encoded)      |
//! | 48..160  | fixture audio ([`FramePlan::body`]), never modified by anyone               |
//!
//! **Quiet encoding**: each tag byte is written as two μ-law bytes `0xF0 | high nibble`,
//! `0xF0 | low nibble`. μ-law `0xF0..=0xFF` are the sixteen smallest positive levels (at most
//! 120 of 32767, about −49 dBFS for a single sample), so a "silent" frame stays well under the
//! relay's speech detector threshold (−40 dBFS mean square) and its turn latency measurement
//! sees the caller stop speaking. (Plain little-endian integers put `0x00` bytes, full-scale
//! μ-law samples, into every frame.)
//!
//! The relay forwards payloads byte-exact, so none of this is visible to it: it is just audio.

use std::sync::Arc;

use crate::MULAW_FRAME_BYTES;

/// Bytes of the caller tag (call index + sequence + send time, 16 bytes quiet-encoded).
pub const TAG_BYTES: usize = 32;
/// Byte range the mock agent overwrites with its own send time when echoing.
pub const AGENT_TS: std::ops::Range<usize> = 32..48;

/// Writes `bytes` quiet-encoded (two μ-law bytes `0xF0 | nibble` each) into `out`, which must
/// be twice as long.
fn put_quiet(bytes: &[u8], out: &mut [u8]) {
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = 0xF0 | (b >> 4);
        o[1] = 0xF0 | (b & 0x0F);
    }
}

/// Reads `N` quiet-encoded bytes from `enc` (`2 × N` bytes); `None` if it is shorter or a
/// byte is not of the form `0xF0 | nibble` (not a tag).
fn get_quiet<const N: usize>(enc: &[u8]) -> Option<[u8; N]> {
    let enc = enc.get(..2 * N)?;
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(enc.chunks_exact(2)) {
        if pair[0] & 0xF0 != 0xF0 || pair[1] & 0xF0 != 0xF0 {
            return None;
        }
        *o = (pair[0] << 4) | (pair[1] & 0x0F);
    }
    Some(out)
}
/// μ-law silence.
pub const SILENCE: u8 = 0xFF;

/// A decoded caller tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTag {
    /// Call index (0-based, harness-wide).
    pub call: u32,
    /// Sequence number of the frame within its call (0-based).
    pub seq: u32,
    /// Caller send time, nanoseconds since the harness epoch.
    pub sent_ns: u64,
}

impl FrameTag {
    /// Reads the tag from the first [`TAG_BYTES`] of `frame`; `None` if it is shorter or
    /// not quiet-encoded.
    pub fn read(frame: &[u8]) -> Option<FrameTag> {
        let b: [u8; 16] = get_quiet(frame.get(..TAG_BYTES)?)?;
        Some(FrameTag {
            call: u32::from_le_bytes(b[0..4].try_into().ok()?),
            seq: u32::from_le_bytes(b[4..8].try_into().ok()?),
            sent_ns: u64::from_le_bytes(b[8..16].try_into().ok()?),
        })
    }

    /// Writes the tag into the first [`TAG_BYTES`] of `frame` (which must be that long).
    pub fn write(&self, frame: &mut [u8]) {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.call.to_le_bytes());
        b[4..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.sent_ns.to_le_bytes());
        put_quiet(&b, &mut frame[..TAG_BYTES]);
    }
}

/// Reads the agent's re-tag (send time, ns since the epoch) from an echoed frame.
pub fn read_agent_ts(frame: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(get_quiet::<8>(frame.get(AGENT_TS)?)?))
}

/// Writes the agent's send time (ns since the epoch) into an echoed frame.
pub fn write_agent_ts(frame: &mut [u8], ns: u64) {
    put_quiet(&ns.to_le_bytes(), &mut frame[AGENT_TS]);
}

/// Conversation turn structure shared by callers and the mock agent: every call repeats a
/// turn of `turn_frames` frames whose first `speech_frames` carry the caller utterance and the
/// rest silence (during which the agent answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnPlan {
    /// Frames of caller speech at the start of each turn (20 ms each).
    pub speech_frames: u32,
    /// Frames per turn (speech + listening), 20 ms each; ≥ `speech_frames + 1`.
    pub turn_frames: u32,
}

impl TurnPlan {
    /// True if frame `seq` is the last speech frame of its turn (the caller stops talking).
    pub fn is_speech_end(&self, seq: u32) -> bool {
        seq % self.turn_frames == self.speech_frames - 1
    }

    /// True if frame `seq` is the first speech frame of a turn after the first.
    pub fn is_speech_start(&self, seq: u32) -> bool {
        seq > 0 && seq.is_multiple_of(self.turn_frames)
    }

    /// Turn number of frame `seq`.
    pub fn turn_of(&self, seq: u32) -> u32 {
        seq / self.turn_frames
    }
}

/// What audio the caller puts under the tag of each frame. Both ends use it: the caller to
/// build frames, the agent and the caller to check them byte for byte.
#[derive(Debug, Clone)]
pub struct FramePlan {
    /// Caller fixture audio (μ-law, a whole number of 160-byte frames, non-empty).
    pub fixture: Arc<Vec<u8>>,
    /// `None`: the fixture loops forever (echo mode). `Some`: turns (conversation mode).
    pub turns: Option<TurnPlan>,
}

impl FramePlan {
    /// Frames in the fixture.
    pub fn fixture_frames(&self) -> u32 {
        (self.fixture.len() / MULAW_FRAME_BYTES) as u32
    }

    /// The 160 bytes of frame `seq` before tagging (the caller tag then overwrites 0..16).
    pub fn body(&self, seq: u32) -> [u8; MULAW_FRAME_BYTES] {
        let n = self.fixture_frames().max(1);
        let idx = match self.turns {
            None => Some(seq % n),
            Some(t) => {
                let pos = seq % t.turn_frames;
                (pos < t.speech_frames).then_some(pos % n)
            }
        };
        let mut out = [SILENCE; MULAW_FRAME_BYTES];
        if let Some(i) = idx {
            let start = i as usize * MULAW_FRAME_BYTES;
            out.copy_from_slice(&self.fixture[start..start + MULAW_FRAME_BYTES]);
        }
        out
    }

    /// Builds the tagged frame for `tag`.
    pub fn frame(&self, tag: FrameTag) -> [u8; MULAW_FRAME_BYTES] {
        let mut f = self.body(tag.seq);
        tag.write(&mut f);
        f
    }

    /// True if `frame` is exactly the frame tagged `tag` would be, ignoring bytes
    /// `skip` (e.g. [`AGENT_TS`] for a re-tagged echo) and the tag's `sent_ns` (checked by
    /// the caller against its own record).
    pub fn matches(&self, frame: &[u8], seq: u32, skip: Option<std::ops::Range<usize>>) -> bool {
        if frame.len() != MULAW_FRAME_BYTES {
            return false;
        }
        let body = self.body(seq);
        let from = skip.as_ref().map_or(TAG_BYTES, |r| r.end.max(TAG_BYTES));
        if let Some(r) = &skip {
            if r.start > TAG_BYTES && frame[TAG_BYTES..r.start] != body[TAG_BYTES..r.start] {
                return false;
            }
        }
        frame[from..] == body[from..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trip_and_matching() {
        let fixture: Vec<u8> = (0..320).map(|i| (i % 251) as u8).collect();
        let plan = FramePlan {
            fixture: Arc::new(fixture),
            turns: None,
        };
        let tag = FrameTag {
            call: 7,
            seq: 3,
            sent_ns: 123_456_789,
        };
        let mut f = plan.frame(tag);
        assert_eq!(FrameTag::read(&f), Some(tag));
        assert!(plan.matches(&f, 3, None));
        write_agent_ts(&mut f, 42);
        assert_eq!(read_agent_ts(&f), Some(42));
        assert!(!plan.matches(&f, 3, None));
        assert!(plan.matches(&f, 3, Some(AGENT_TS)));
        f[100] ^= 1;
        assert!(!plan.matches(&f, 3, Some(AGENT_TS)));
        // A byte outside the quiet alphabet is not a tag.
        f[0] = 0x00;
        assert_eq!(FrameTag::read(&f), None);
    }

    /// A silent frame carrying a tag (and an agent re-tag) stays under the relay speech
    /// detector's −40 dBFS: mean square of the G.711 expansion, relative to full scale.
    #[test]
    fn tagged_silence_is_quiet() {
        let plan = FramePlan {
            fixture: Arc::new(vec![SILENCE; 160]),
            turns: None,
        };
        let tag = FrameTag {
            call: u32::MAX,
            seq: 0,
            sent_ns: 0x0F0F_0000_1234_5678,
        };
        let mut f = plan.frame(tag);
        write_agent_ts(&mut f, 0);
        let level = |u: u8| -> f64 {
            // ITU-T G.711 μ-law expansion (16-bit scale).
            let u = !u;
            let (sign, exp, man) = (u & 0x80, (u >> 4) & 7, u & 0x0F);
            let mag = ((((man as i32) << 3) + 0x84) << exp) - 0x84;
            f64::from(if sign != 0 { -mag } else { mag })
        };
        let ms: f64 = f.iter().map(|&u| level(u).powi(2)).sum::<f64>() / f.len() as f64;
        let dbfs = 10.0 * (ms / (32767.0f64 * 32767.0)).log10();
        assert!(dbfs < -50.0, "{dbfs} dBFS");
    }

    #[test]
    fn turn_plan() {
        let t = TurnPlan {
            speech_frames: 3,
            turn_frames: 5,
        };
        assert!(t.is_speech_end(2) && t.is_speech_end(7) && !t.is_speech_end(3));
        assert!(t.is_speech_start(5) && !t.is_speech_start(0));
        let plan = FramePlan {
            fixture: Arc::new(vec![1; 480]),
            turns: Some(t),
        };
        assert_eq!(plan.body(1)[50], 1);
        assert_eq!(plan.body(3)[50], SILENCE);
    }
}

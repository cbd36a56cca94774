//! Call recording: one stereo G.711 μ-law WAV per call ([`wav`]), left = the caller as
//! received, right = the agent as the caller heard it ([`timeline`]), written off the call's
//! task by one process-wide writer thread ([`writer`]) to `--recording-dir` as `<name>.part`,
//! renamed to `<name>.wav` when complete.
//!
//! The call never waits on the writer: a block the writer's bounded queue cannot take is
//! not recorded, the recording is marked `degraded` (counted in
//! `relay_recordings_total{result="degraded"}`), and the samples it lost are written as
//! silence so the rest stays in time.

pub mod timeline;
pub mod upload;
pub mod wav;
pub mod writer;

pub use timeline::{Block, Pause, Timeline};
pub use writer::{Recorder, Recordings};

use std::path::PathBuf;

crate::label_enum! {
    /// Which calls are recorded (`--record`).
    pub enum RecordMode {
        /// None.
        Off = "off",
        /// Every call.
        All = "all",
        /// Calls whose stream carries `relay_record=1` (from `/twiml?record=1` or
        /// `/outbound-call`'s `"record": true`).
        OnDemand = "on-demand",
    }
}

crate::label_enum! {
    /// A pause or resume of the recording (PCI): the tool names `pause_recording` /
    /// `resume_recording` and the tool webhook's `"action": {"type": …}`.
    pub enum RecordingAction {
        /// Both channels are silence from now on.
        Pause = "pause_recording",
        /// Recording goes on.
        Resume = "resume_recording",
    }
}

/// The stream parameter that asks for a recording in `on-demand` mode.
pub const RECORD_PARAMETER: &str = "relay_record";

/// Whether a stream parameter value asks for a recording (`1`, `true`, `yes`).
pub fn is_yes(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
}

/// Recording settings.
#[derive(Debug, Clone)]
pub struct RecordingSettings {
    /// Which calls are recorded.
    pub mode: RecordMode,
    /// Where recordings are written (the spool, with `upload`).
    pub dir: PathBuf,
    /// Object storage the finished files are uploaded to (then removed from `dir`).
    pub upload: Option<upload::S3Target>,
    /// Blocks (500 ms of both channels, 8 KB) the writer's queue holds: the writer's memory
    /// bound is this × 8 KB.
    pub queue_blocks: usize,
    /// A keypad digit that pauses recording, and resumes it pressed again (PCI); not sent
    /// to the agent.
    pub pause_digit: Option<char>,
}

impl RecordingSettings {
    /// Whether a call with these stream parameters is recorded.
    pub fn records(&self, params: &[(String, String)]) -> bool {
        match self.mode {
            RecordMode::Off => false,
            RecordMode::All => true,
            RecordMode::OnDemand => params
                .iter()
                .any(|(k, v)| k == RECORD_PARAMETER && is_yes(v)),
        }
    }
}

/// The file name of a call's recording (without extension): the call and stream ids with
/// anything but `A-Z a-z 0-9 _ -` replaced by `_`.
pub fn file_stem(call_sid: &str, stream_sid: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .take(128)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let call = if call_sid.is_empty() {
        "nocall".to_owned()
    } else {
        clean(call_sid)
    };
    format!("{call}_{}", clean(stream_sid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_records_only_calls_that_ask() {
        let s = |mode| RecordingSettings {
            mode,
            dir: PathBuf::from("/tmp"),
            upload: None,
            queue_blocks: 8,
            pause_digit: None,
        };
        let ask = vec![(RECORD_PARAMETER.to_owned(), "1".to_owned())];
        let no = vec![(RECORD_PARAMETER.to_owned(), "0".to_owned())];
        assert!(s(RecordMode::OnDemand).records(&ask));
        assert!(!s(RecordMode::OnDemand).records(&no));
        assert!(!s(RecordMode::OnDemand).records(&[]));
        assert!(s(RecordMode::All).records(&[]));
        assert!(!s(RecordMode::Off).records(&ask));
    }

    #[test]
    fn file_names_keep_only_safe_characters() {
        assert_eq!(file_stem("CA1", "MZ2"), "CA1_MZ2");
        assert_eq!(file_stem("v3:a/../b", "s t"), "v3_a____b_s_t");
        assert_eq!(file_stem("", "MZ2"), "nocall_MZ2");
    }
}

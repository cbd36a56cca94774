//! Keypad digits: collected into one entry and sent to the agent once no new digit came for
//! `--dtmf-interdigit-ms`, on `#`, or when [`MAX_DTMF_DIGITS`] are collected.

use std::time::{Duration, Instant};

/// Most keypad digits collected before they are sent anyway.
pub const MAX_DTMF_DIGITS: usize = 32;

/// The digits of the entry being typed.
#[derive(Debug, Default)]
pub struct Dtmf {
    digits: String,
    /// When the entry is sent if no new digit comes.
    pub deadline: Option<Instant>,
}

impl Dtmf {
    /// A digit pressed at `now`; returns the finished entry when this digit ends it.
    pub fn push(&mut self, digit: &str, now: Instant, interdigit: Duration) -> Option<String> {
        if self.digits.len() < MAX_DTMF_DIGITS {
            self.digits.push_str(digit);
        }
        if digit == "#" || self.digits.len() >= MAX_DTMF_DIGITS {
            self.flush()
        } else {
            self.deadline = Some(now + interdigit);
            None
        }
    }

    /// The entry so far (the interdigit time passed); `None` when empty.
    pub fn flush(&mut self) -> Option<String> {
        self.deadline = None;
        (!self.digits.is_empty()).then(|| std::mem::take(&mut self.digits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_ends_on_hash_on_the_cap_or_by_its_deadline() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(1500);
        let mut d = Dtmf::default();
        assert_eq!(d.push("1", t0, gap), None);
        assert_eq!(d.deadline, Some(t0 + gap));
        assert_eq!(d.push("#", t0, gap).as_deref(), Some("1#"));
        assert_eq!(d.deadline, None);
        for _ in 0..MAX_DTMF_DIGITS - 1 {
            assert_eq!(d.push("5", t0, gap), None);
        }
        assert_eq!(d.push("5", t0, gap).map(|s| s.len()), Some(MAX_DTMF_DIGITS));
        assert_eq!(d.push("7", t0, gap), None);
        assert_eq!(d.flush().as_deref(), Some("7"));
        assert_eq!(d.flush(), None);
    }
}

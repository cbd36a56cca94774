//! The fuzz targets' bodies, one check function per target (`ws_reader(data)`, …), and the
//! helpers they share: splitting an input into records, polling futures without a runtime,
//! an in-memory stream that returns its bytes in fuzz-chosen chunks, and JSON checks for the
//! relay's outputs.
//!
//! Each check panics when a property of the relay does not hold for `data`, and returns
//! otherwise. `../fuzz_targets/<target>.rs` hands libFuzzer's inputs to it (nightly,
//! cargo-fuzz); `tests/replay.rs` runs every file of `../seeds/<target>/` and
//! `../regressions/<target>/` through it under stable `cargo test`. Input formats and the
//! properties checked are documented on each function. Only the `media_relay` library's public
//! API is used.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

mod agent_dialects;
mod call_machine;
mod signature;
mod telnyx_codec;
mod twilio_codec;
mod twiml;
mod ws_reader;
mod ws_roundtrip;

pub use agent_dialects::agent_dialects;
pub use call_machine::call_machine;
pub use signature::signature;
pub use telnyx_codec::telnyx_codec;
pub use twilio_codec::twilio_codec;
pub use twiml::twiml;
pub use ws_reader::ws_reader;
pub use ws_roundtrip::ws_roundtrip;

/// A target's check: panics when a property does not hold for the input.
pub type Check = fn(&[u8]);

/// Every target, by name (the `[[bin]]` names of `../Cargo.toml`), with its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("ws_reader", ws_reader),
    ("ws_roundtrip", ws_roundtrip),
    ("twilio_codec", twilio_codec),
    ("agent_dialects", agent_dialects),
    ("signature", signature),
    ("twiml", twiml),
    ("call_machine", call_machine),
    ("telnyx_codec", telnyx_codec),
];

/// Polls `f` once with a no-op waker.
pub fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    f.poll(&mut cx)
}

/// Polls `f` to completion with a no-op waker; panics after `max_polls` pending polls (every
/// stream in these targets makes progress on each poll, so that is a hang).
pub fn block_on<F: Future>(f: F, max_polls: usize) -> F::Output {
    let mut f = std::pin::pin!(f);
    for _ in 0..max_polls {
        if let Poll::Ready(v) = poll_once(f.as_mut()) {
            return v;
        }
    }
    panic!("future still pending after {max_polls} polls");
}

/// Splits `data` at every NUL byte (JSON text never contains a raw NUL, so seed files stay
/// readable: one message per record).
pub fn records(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == 0)
}

/// An in-memory byte stream that hands out its bytes in chunks whose sizes cycle through
/// `plan` (`(b & 0x7f) + 1` bytes each). With `pending`, a plan byte with its top bit set
/// first answers `Pending` once (the reader's future is then dropped by the caller: a
/// cancellation at that point).
pub struct ChunkedReader<'a> {
    data: &'a [u8],
    pos: usize,
    plan: &'a [u8],
    step: usize,
    pending: bool,
    pended: bool,
    /// Number of `Pending` answers given.
    pub pendings: usize,
}

impl<'a> ChunkedReader<'a> {
    /// A stream over `data` chunked by `plan` (one chunk with everything if `plan` is empty).
    pub fn new(data: &'a [u8], plan: &'a [u8], pending: bool) -> Self {
        Self {
            data,
            pos: 0,
            plan,
            step: 0,
            pending,
            pended: false,
            pendings: 0,
        }
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let rest = self.data.len() - self.pos;
        if rest == 0 {
            return Poll::Ready(Ok(()));
        }
        let (size, pend) = if self.plan.is_empty() {
            (rest, false)
        } else {
            let b = self.plan[self.step % self.plan.len()];
            (usize::from(b & 0x7f) + 1, b & 0x80 != 0)
        };
        if self.pending && pend && !self.pended {
            self.pended = true;
            self.pendings += 1;
            return Poll::Pending;
        }
        self.pended = false;
        self.step += 1;
        let n = size.min(rest).min(buf.remaining());
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Parses `bytes` as JSON with serde_json (a second, independent parser), panicking with the
/// text if it is not valid: everything the relay writes to a peer must be valid JSON.
pub fn must_be_json(what: &str, bytes: &[u8]) -> serde_json::Value {
    match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => panic!(
            "{what}: output is not valid JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// True if some string anywhere in `v` (object keys included) satisfies `f`.
pub fn any_string(v: &serde_json::Value, f: &mut dyn FnMut(&str) -> bool) -> bool {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().any(|x| any_string(x, f)),
        serde_json::Value::Object(o) => o.iter().any(|(k, x)| f(k) || any_string(x, f)),
        _ => false,
    }
}

/// Standard padded base64 (for comparing with the relay's base64-simd output).
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// True if `check` is listed in `FUZZ_SKIP_KNOWN` (comma-separated): lets a long run keep
/// exploring past a known, reported bug. CI leaves it unset, so every check is on.
pub fn skip_known(check: &str) -> bool {
    static SKIP: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("FUZZ_SKIP_KNOWN")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
    .iter()
    .any(|s| s == check)
}

use crate::{must_be_json, records};
use media_relay::carrier::telnyx::{
    decode, is_call_id, is_media, is_mulaw_8k_mono, peek_sequence_number, Session, REORDER_WINDOW,
    REORDER_WINDOW_BYTES,
};
use media_relay::carrier::{
    is_plain_id, is_valid_dtmf_digit, CallerEvent, CarrierCodec, DecodeError, Decoded,
};
use media_relay::wire::b64;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// The stream id of Telnyx's documented samples.
const STREAM: &str = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC";

/// The keys of a JSON object (panics for anything else).
fn keys(what: &str, v: &serde_json::Value) -> Vec<String> {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object: {v}"));
    let mut k: Vec<String> = o.keys().cloned().collect();
    k.sort();
    k
}

/// `encode_mark` writes exactly `{"event":"mark","mark":{"name":NAME}}` (no stream id, whatever
/// stream it is given) and the name decodes back unchanged.
fn roundtrip_mark(s: &Session, stream: &str, name: &str) {
    let mut out = Vec::new();
    s.encode_mark(stream, name, &mut out);
    let v = must_be_json("encode_mark", &out);
    assert_eq!(keys("encode_mark", &v), ["event", "mark"], "{v}");
    assert_eq!(keys("encode_mark .mark", &v["mark"]), ["name"], "{v}");
    assert_eq!(
        v["mark"]["name"].as_str(),
        Some(name),
        "serde_json reads another name"
    );
    let mut scratch = simd_json::Buffers::default();
    match decode(&mut out, &mut scratch) {
        Ok(CallerEvent::Mark { name: got }) => assert_eq!(got, name, "mark name changed"),
        other => panic!("encode_mark output decodes as {other:?}"),
    }
}

/// `encode_media` writes exactly `{"event":"media","media":{"payload":B64}}` with canonical
/// base64 of the audio, which decodes back to the same bytes.
fn roundtrip_media(s: &Session, stream: &str, audio: &[u8]) {
    let mut out = Vec::new();
    s.encode_media(stream, audio, &mut out);
    let v = must_be_json("encode_media", &out);
    assert_eq!(keys("encode_media", &v), ["event", "media"], "{v}");
    assert_eq!(keys("encode_media .media", &v["media"]), ["payload"], "{v}");
    let mut scratch = simd_json::Buffers::default();
    let payload = match decode(&mut out, &mut scratch) {
        Ok(CallerEvent::Media(m)) => m.payload.to_owned(),
        other => panic!("encode_media output decodes as {other:?}"),
    };
    assert_eq!(
        payload,
        crate::b64(audio),
        "payload is not canonical base64"
    );
    let mut back = vec![0xAA];
    b64::decode(&payload, &mut back).expect("own payload decodes");
    assert_eq!(back, audio, "audio changed");
}

/// `encode_clear` writes exactly `{"event":"clear"}`.
fn check_clear(s: &Session, stream: &str) {
    let mut out = Vec::new();
    s.encode_clear(stream, &mut out);
    let v = must_be_json("encode_clear", &out);
    assert_eq!(keys("encode_clear", &v), ["event"], "{v}");
    let mut scratch = simd_json::Buffers::default();
    match decode(&mut out, &mut scratch) {
        Ok(CallerEvent::Other { event: "clear" }) => {}
        other => panic!("encode_clear output decodes as {other:?}"),
    }
}

/// One frame decoded on its own (`telnyx::decode`, order ignored).
fn check_frame(s: &Session, frame: &[u8]) {
    let mut f = frame.to_vec();
    let mut scratch = simd_json::Buffers::default();
    match decode(&mut f, &mut scratch) {
        Ok(CallerEvent::Start(st)) => {
            assert!(
                is_plain_id(st.stream_sid),
                "start accepted stream id {:?}",
                st.stream_sid
            );
            assert!(
                st.call_sid.is_empty() || is_call_id(st.call_sid),
                "start accepted call id {:?}",
                st.call_sid
            );
            assert_eq!(st.account_sid, "", "Telnyx starts carry no account");
            assert_eq!(
                st.mulaw_8k_mono,
                is_mulaw_8k_mono(st.encoding, st.sample_rate, st.channels),
                "mulaw_8k_mono disagrees with the media format of {st:?}"
            );
            check_clear(s, st.stream_sid);
            roundtrip_mark(s, st.stream_sid, "ms-1");
        }
        Ok(CallerEvent::Mark { name }) => roundtrip_mark(s, STREAM, name),
        Ok(CallerEvent::Media(m)) => {
            use base64::Engine;
            let mut audio = Vec::new();
            let ours = b64::decode(m.payload, &mut audio);
            let reference = base64::engine::general_purpose::STANDARD.decode(m.payload);
            if let Ok(reference) = &reference {
                assert!(ours.is_ok(), "valid base64 refused: {:?}", m.payload);
                assert_eq!(&audio, reference, "decoded to other bytes: {:?}", m.payload);
            }
            if ours.is_ok() {
                roundtrip_media(s, STREAM, &audio);
            }
        }
        Ok(CallerEvent::Dtmf { digit }) => {
            assert!(is_valid_dtmf_digit(digit), "dtmf accepted {digit:?}");
            roundtrip_mark(s, STREAM, digit);
        }
        Ok(CallerEvent::Error { title, detail, .. }) => {
            roundtrip_mark(s, STREAM, title.unwrap_or(""));
            roundtrip_mark(s, STREAM, detail.unwrap_or(""));
        }
        Ok(_) => {}
        Err(e) => {
            assert!(!e.kind().as_str().is_empty());
            let _ = e.to_string();
        }
    }
}

/// What decoding `frame` on its own gives, as a comparable string (events borrow their frame).
fn alone(frame: &[u8]) -> Result<String, DecodeError> {
    let mut f = frame.to_vec();
    let mut scratch = simd_json::Buffers::default();
    decode(&mut f, &mut scratch).map(|ev| format!("{ev:?}"))
}

/// What is held in the reordering window.
#[derive(Debug)]
struct Window {
    media: usize,
    frames: usize,
    bytes: usize,
}

impl Window {
    fn overflows(&self) -> bool {
        self.media > REORDER_WINDOW
            || self.frames > 4 * REORDER_WINDOW
            || self.bytes > REORDER_WINDOW_BYTES
    }
}

/// The reordering session, and what it must have done so far given what it answered.
struct Reorder {
    s: Session,
    scratch: simd_json::Buffers,
    buf: Vec<u8>,
    /// Frames it said it holds, by sequence number, as they were fed.
    held: BTreeMap<u64, Vec<u8>>,
    /// The sequence number of the newest numbered frame delivered (decoded in order).
    last: Option<u64>,
    /// Sequence numbers skipped over (gaps given up on).
    skipped: u64,
    /// Frames it dropped: late ones and duplicates of held ones.
    dropped: u64,
    /// The sum of `take_out_of_order()`.
    out_of_order: u64,
    /// `release_all` was called.
    draining: bool,
}

impl Reorder {
    /// One frame delivered (in order): numbered frames strictly after the last one, and
    /// decoded as the frame decodes on its own.
    fn delivered(&mut self, seq: Option<u64>, frame: &[u8], got: Result<String, DecodeError>) {
        assert_eq!(got, alone(frame), "the session decoded a frame differently");
        let Some(q) = seq else { return };
        if let Some(l) = self.last {
            assert!(
                q > l,
                "frame {q} delivered after frame {l}: twice or out of order"
            );
            self.skipped += q - l - 1;
        }
        self.last = Some(q);
    }

    fn feed(&mut self, frame: &[u8]) {
        let seq = peek_sequence_number(frame);
        let mut f = frame.to_vec();
        let res = self.s.decode(&mut f, &mut self.scratch);
        match (res, seq) {
            (Ok(Decoded::Held), Some(q)) => {
                assert!(
                    self.last.is_some_and(|l| q > l + 1),
                    "held frame {q}, but the next one due is {:?}",
                    self.last.map(|l| l + 1)
                );
                match self.held.entry(q) {
                    Entry::Occupied(_) => self.dropped += 1, // a duplicate of a held frame
                    Entry::Vacant(e) => {
                        e.insert(frame.to_vec());
                    }
                }
            }
            (Ok(Decoded::Late), Some(q)) => {
                assert!(
                    self.last.is_some_and(|l| q <= l),
                    "frame {q} called late, the last delivered being {:?}",
                    self.last
                );
                self.dropped += 1;
            }
            (Ok(Decoded::Held | Decoded::Late), None) => {
                panic!("a frame without a sequence number was reordered")
            }
            (Ok(Decoded::Event(ev)), _) => {
                if let (Some(q), Some(l)) = (seq, self.last) {
                    assert_eq!(q, l + 1, "frame {q} delivered at once after frame {l}");
                }
                let got = Ok(format!("{ev:?}"));
                self.delivered(seq, frame, got);
            }
            (Err(e), _) => {
                if let (Some(q), Some(l)) = (seq, self.last) {
                    assert_eq!(q, l + 1, "frame {q} decoded at once after frame {l}");
                }
                self.delivered(seq, frame, Err(e));
            }
        }
        // Between a frame and the releases it allows, one more than the window may wait.
        let w = self.window();
        assert!(
            w.media <= REORDER_WINDOW + 1 && w.frames <= 4 * REORDER_WINDOW + 1,
            "{w:?} held"
        );
    }

    /// What the model holds, measured as the window measures it.
    fn window(&self) -> Window {
        Window {
            media: self.held.values().filter(|f| is_media(f)).count(),
            frames: self.held.len(),
            bytes: self.held.values().map(Vec::len).sum(),
        }
    }

    /// Takes every released frame, as the driver does after each frame.
    fn drain(&mut self) {
        // A gap is given up on only while the window overflows (more than `REORDER_WINDOW`
        // media frames, 4× that many frames or `REORDER_WINDOW_BYTES` held), or once draining.
        while self.s.take_released(&mut self.buf) {
            let may_skip = self.draining || self.window().overflows();
            let mut frame = std::mem::take(&mut self.buf);
            let q = peek_sequence_number(&frame).expect("released a frame without a number");
            let stored = self
                .held
                .remove(&q)
                .unwrap_or_else(|| panic!("released frame {q}, which was never held"));
            assert_eq!(frame, stored, "released frame {q} is not the frame held");
            let l = self
                .last
                .unwrap_or_else(|| panic!("released frame {q} before any delivery"));
            assert!(
                q <= l + 1 || may_skip,
                "frames {}..{q} skipped with {} frames held",
                l + 1,
                self.held.len() + 1
            );
            let got = self
                .s
                .decode_released(&mut frame, &mut self.scratch)
                .map(|ev| format!("{ev:?}"));
            self.delivered(Some(q), &stored, got);
        }
        self.out_of_order += self.s.take_out_of_order();
        assert!(
            !self.window().overflows(),
            "{:?} held after the releases, window {REORDER_WINDOW}: {:?}",
            self.window(),
            self.held.keys().collect::<Vec<_>>()
        );
        if self.draining {
            assert!(
                self.held.is_empty(),
                "frames {:?} still held after release_all",
                self.held.keys().collect::<Vec<_>>()
            );
        } else if let (Some(l), Some((&first, _))) = (self.last, self.held.first_key_value()) {
            assert!(
                first > l + 1,
                "frame {first} is due (after {l}) but still held"
            );
        }
    }

    fn release_all(&mut self) {
        self.s.release_all();
        self.draining = true;
        self.drain();
    }
}

/// `carrier::telnyx`: `decode` of arbitrary Telnyx media-stream frames; the reordering
/// `Session` (`CarrierCodec::decode`, `take_released`, `decode_released`, `release_all`) fed
/// the frames in a fuzz-chosen order; the outbound encoders.
///
/// Input: `[n][plan: n bytes][frame]\0[frame]\0…`. The frames are fed to one session in the
/// order the plan gives, each followed by taking every frame it releases (as
/// `driver::on_caller` does): plan byte `b` feeds frame `(b & 0x3f) % frames`, twice in a row
/// when bit 6 is set, after `release_all` when bit 7 is set; then every frame the plan did
/// not feed, in input order; then `release_all`. An empty plan feeds the frames as they are.
///
/// Checks, besides "never panics":
/// - every frame on its own: a `start` has a plain stream id, a valid or empty call id, no
///   account, and `mulaw_8k_mono` as `is_mulaw_8k_mono` of its media format; a `dtmf` digit
///   is one keypad character; base64 payloads the `base64` crate accepts decode to the same
///   bytes; a decode error has a metric label and a message;
/// - the session never delivers a numbered frame twice or out of `sequence_number` order, and
///   delivers each frame as it decodes on its own; it holds only numbered frames that are not
///   due yet, releases exactly the bytes it held, keeps at most `REORDER_WINDOW` media
///   frames, 4× that many frames and `REORDER_WINDOW_BYTES` once the releases are taken,
///   never one that is due, and nothing after `release_all`; it gives up on a gap only while
///   more than that waits (media counted by `is_media`), or once `release_all` was called;
///   frames it calls late are behind the last delivered one; `take_out_of_order` counts exactly the late frames,
///   the duplicates of held frames and the sequence numbers skipped;
/// - `encode_media` / `encode_mark` / `encode_clear` write valid JSON with exactly the
///   documented keys and no stream id (whatever stream they are given, the input's text
///   included) that decodes back to the same audio / name / `clear`.
pub fn telnyx_codec(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (plan, rest) = rest.split_at(n);
    let frames: Vec<&[u8]> = records(rest).collect();

    let s = Session::default();
    for f in &frames {
        check_frame(&s, f);
    }

    let mut r = Reorder {
        s: Session::default(),
        scratch: simd_json::Buffers::default(),
        buf: Vec::new(),
        held: BTreeMap::new(),
        last: None,
        skipped: 0,
        dropped: 0,
        out_of_order: 0,
        draining: false,
    };
    let mut fed = vec![false; frames.len()];
    for &b in plan {
        if b & 0x80 != 0 {
            r.release_all();
        }
        let i = usize::from(b & 0x3f) % frames.len();
        for _ in 0..1 + usize::from(b & 0x40 != 0) {
            r.feed(frames[i]);
            r.drain();
        }
        fed[i] = true;
    }
    for (i, f) in frames.iter().enumerate() {
        if !fed[i] {
            r.feed(f);
            r.drain();
        }
    }
    r.release_all();
    assert!(!r.s.take_released(&mut r.buf), "a frame released twice");
    assert_eq!(
        r.out_of_order,
        r.dropped + r.skipped,
        "take_out_of_order counted {} frames; {} were late or duplicates, {} skipped",
        r.out_of_order,
        r.dropped,
        r.skipped
    );

    // The encoders on arbitrary text and bytes, with the text as the stream too.
    let text = String::from_utf8_lossy(data);
    roundtrip_mark(&s, &text, &text);
    check_clear(&s, &text);
    if data.len() <= 1024 {
        roundtrip_media(&s, &text, data);
    }
}

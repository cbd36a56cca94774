use crate::must_be_json;
use media_relay::carrier::twilio::codec::{
    decode, encode_clear, encode_mark, encode_media, is_mulaw_8k_mono, is_valid_call_sid,
    is_valid_stream_sid,
};
use media_relay::carrier::{is_valid_dtmf_digit, CallerEvent};
use media_relay::wire::b64;

const SID: &str = "MZ0123456789abcdef0123456789abcdef";

fn roundtrip_mark(sid: &str, name: &str) {
    let mut out = Vec::new();
    encode_mark(sid, name, &mut out);
    let v = must_be_json("encode_mark", &out);
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

fn roundtrip_media(sid: &str, audio: &[u8]) {
    let mut out = Vec::new();
    encode_media(sid, audio, &mut out);
    let v = must_be_json("encode_media", &out);
    assert_eq!(v["streamSid"].as_str(), Some(sid));
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

fn check_payload(payload: &str) {
    use base64::Engine;
    let mut out = Vec::new();
    let ours = b64::decode(payload, &mut out);
    let reference = base64::engine::general_purpose::STANDARD.decode(payload);
    if let Ok(reference) = &reference {
        // Everything the strict reference decoder accepts, the relay accepts as the same bytes.
        assert!(ours.is_ok(), "valid base64 refused: {payload:?}");
        assert_eq!(&out, reference, "decoded to other bytes: {payload:?}");
    }
    if ours.is_ok() {
        // What the relay accepts and forwards is the payload's only meaning.
        roundtrip_media(SID, &out);
    }
    let mut buf = vec![1u8, 2, 3];
    match b64::decode_append(payload, &mut buf) {
        Ok(n) => {
            assert_eq!(&buf[..3], &[1, 2, 3]);
            assert_eq!(buf.len(), 3 + n);
            assert_eq!(&buf[3..], &out[..], "append decoded other bytes");
        }
        Err(_) => {
            assert_eq!(buf, [1, 2, 3], "a refused payload left bytes behind");
            assert!(ours.is_err());
        }
    }
}

/// `carrier::twilio::codec`: `decode` of arbitrary text frames from Twilio, `wire::b64` of
/// their payloads, and the encoders the relay answers with.
///
/// Input: one frame (the whole input), as Twilio would send it. Checks, besides "never
/// panics":
/// - a decoded `start` has a valid stream SID and a valid or empty call SID, its
///   `mulaw_8k_mono` agrees with `is_mulaw_8k_mono` of its media format, and `mark`/`clear`
///   encoded with its SID decode back;
/// - a decoded `mark` name survives `encode_mark` → `decode` unchanged (names are JSON-escaped);
/// - a decoded `dtmf` digit is one keypad character;
/// - a decoded `media` payload that `b64::decode` accepts is the same bytes the `base64`
///   crate decodes, and survives `encode_media` → `decode` → `b64::decode`;
/// - `b64::decode_append` leaves the buffer as it was when it refuses a payload;
/// - a decode error has a metric label (`kind().as_str()`) and a message;
/// - independent of the above: the input as a mark name (lossy UTF-8) and as raw audio
///   round-trips through the encoders, and everything encoded is valid JSON to serde_json.
pub fn twilio_codec(data: &[u8]) {
    let mut frame = data.to_vec();
    let mut scratch = simd_json::Buffers::default();
    match decode(&mut frame, &mut scratch) {
        Ok(CallerEvent::Start(s)) => {
            assert!(
                is_valid_stream_sid(s.stream_sid),
                "start accepted {:?}",
                s.stream_sid
            );
            assert!(
                s.call_sid.is_empty() || is_valid_call_sid(s.call_sid),
                "start accepted call SID {:?}",
                s.call_sid
            );
            assert_eq!(
                s.mulaw_8k_mono,
                is_mulaw_8k_mono(s.encoding, s.sample_rate, s.channels),
                "mulaw_8k_mono disagrees with the media format of {s:?}"
            );
            let mut out = Vec::new();
            encode_clear(s.stream_sid, &mut out);
            must_be_json("encode_clear", &out);
            match decode(&mut out, &mut scratch) {
                Ok(CallerEvent::Other { event: "clear" }) => {}
                other => panic!("encode_clear output decodes as {other:?}"),
            }
            roundtrip_mark(s.stream_sid, "ms-1");
        }
        Ok(CallerEvent::Mark { name }) => roundtrip_mark(SID, name),
        Ok(CallerEvent::Media(m)) => check_payload(m.payload),
        Ok(CallerEvent::Dtmf { digit }) => {
            assert!(is_valid_dtmf_digit(digit), "dtmf accepted {digit:?}");
            roundtrip_mark(SID, digit);
        }
        Ok(_) => {}
        Err(e) => {
            assert!(!e.kind().as_str().is_empty());
            let _ = e.to_string();
        }
    }

    // The encoders on arbitrary text and bytes.
    let text = String::from_utf8_lossy(data);
    roundtrip_mark(SID, &text);
    if data.len() <= 1024 {
        roundtrip_media(SID, data);
    }
    check_payload(&text);
}

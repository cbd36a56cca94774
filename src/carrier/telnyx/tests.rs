//! Telnyx codec, reordering, signatures and TeXML, from the documented message samples.

use super::*;
use ed25519_dalek::{Signer, SigningKey};

const STREAM: &str = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC";

fn dec(s: &str) -> Result<String, DecodeError> {
    let mut b = s.as_bytes().to_vec();
    let mut sc = simd_json::Buffers::default();
    decode(&mut b, &mut sc).map(|e| format!("{e:?}"))
}

fn media(seq: u64, payload: &str) -> String {
    format!(
        r#"{{"event":"media","sequence_number":"{seq}","media":{{"track":"inbound","chunk":"{seq}","timestamp":"{}","payload":"{payload}"}},"stream_id":"{STREAM}"}}"#,
        seq * 20
    )
}

#[test]
fn decodes_the_documented_samples() {
    let start = r#"{
 "event": "start",
 "sequence_number": "1",
 "start": {
   "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
   "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
   "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
   "from": "+13122010094",
   "to": "+13122123456",
   "tags": ["TAG1", "TAG2"],
   "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
   "media_format": { "encoding": "PCMU", "sample_rate": 8000, "channels": 1 }
 },
 "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
}"#;
    let mut b = start.as_bytes().to_vec();
    let mut sc = simd_json::Buffers::default();
    match decode(&mut b, &mut sc).unwrap() {
        CallerEvent::Start(s) => {
            assert_eq!(s.stream_sid, STREAM);
            assert_eq!(
                s.call_sid,
                "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
            );
            assert!(s.mulaw_8k_mono);
            assert!(s.custom_parameters.is_empty());
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        dec(&media(4, "no+JhoaJ")).unwrap(),
        r#"Media(Media { track: Some("inbound"), chunk: Some(4), timestamp_ms: Some(80), payload: "no+JhoaJ" })"#
    );
    assert_eq!(
        dec(r#"{ "event": "dtmf", "stream_id": "x", "occurred_at": "2025-06-05T08:54:19.698408Z", "sequence_number": "5", "dtmf": { "digit": "1" } }"#).unwrap(),
        r#"Dtmf { digit: "1" }"#
    );
    assert_eq!(
        dec(r#"{ "event": "mark", "stream_id": "x", "sequence_number": "5", "mark": { "name": "some_mark_name" } }"#).unwrap(),
        r#"Mark { name: "some_mark_name" }"#
    );
    assert_eq!(
        dec(r#"{ "event": "error", "payload": { "code": 100003, "title": "malformed_frame", "detail": "Received frame was not formed correctly" }, "stream_id": "uuid" }"#).unwrap(),
        r#"Error { code: Some(100003), title: Some("malformed_frame"), detail: Some("Received frame was not formed correctly") }"#
    );
    assert_eq!(
        dec(r#"{ "event": "stop", "sequence_number": "5", "stop": { "user_id": "3E6F", "call_control_id": "v2:T0" }, "stream_id": "x" }"#).unwrap(),
        "Stop"
    );
    assert_eq!(
        dec(r#"{ "event": "connected", "version": "1.0.0" }"#).unwrap(),
        r#"Connected { protocol: None, version: Some("1.0.0") }"#
    );
    assert_eq!(
        dec(r#"{"event":"someday"}"#).unwrap(),
        r#"Other { event: "someday" }"#
    );
}

/// The field that carries TeXML `<Parameter>`s in `start` is not documented: an object and a
/// `[{name, value}]` list are both read.
#[test]
fn start_parameters_as_an_object_or_a_list() {
    for params in [
        r#"{"agent":"echo","relay_token":"t"}"#,
        r#"[{"name":"agent","value":"echo"},{"name":"relay_token","value":"t"}]"#,
    ] {
        let s = format!(
            r#"{{"event":"start","start":{{"call_control_id":"v3:abc","custom_parameters":{params}}},"stream_id":"s-1"}}"#
        );
        let mut b = s.into_bytes();
        let mut sc = simd_json::Buffers::default();
        match decode(&mut b, &mut sc).unwrap() {
            CallerEvent::Start(s) => assert_eq!(
                s.custom_parameters,
                vec![("agent", "echo"), ("relay_token", "t")]
            ),
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn pcmu_and_audio_x_mulaw_are_accepted_other_formats_refused() {
    assert!(is_mulaw_8k_mono(Some("PCMU"), Some(8000), Some(1)));
    assert!(is_mulaw_8k_mono(Some("audio/x-mulaw"), Some(8000), Some(1)));
    assert!(is_mulaw_8k_mono(None, None, None));
    assert!(!is_mulaw_8k_mono(Some("PCMA"), Some(8000), Some(1)));
    assert!(!is_mulaw_8k_mono(Some("L16"), Some(16000), Some(1)));
    assert!(!is_mulaw_8k_mono(Some("PCMU"), Some(16000), Some(1)));
    assert!(!is_mulaw_8k_mono(Some("PCMU"), Some(8000), Some(2)));
}

#[test]
fn errors() {
    assert_eq!(dec("{").unwrap_err().kind().as_str(), "malformed_json");
    assert_eq!(dec(r#"{"x":1}"#).unwrap_err(), DecodeError::MissingEvent);
    assert_eq!(
        dec(r#"{"event":"media","media":{}}"#).unwrap_err().kind().as_str(),
        "missing_field"
    );
    assert_eq!(
        dec(r#"{"event":"start","start":{},"stream_id":"a\"b"}"#).unwrap_err(),
        DecodeError::InvalidStreamSid
    );
    assert_eq!(
        dec(r#"{"event":"start","start":{"call_control_id":"v3 x"},"stream_id":"s"}"#).unwrap_err(),
        DecodeError::InvalidCallSid
    );
    assert_eq!(
        dec(r#"{"event":"dtmf","dtmf":{"digit":"12"}}"#).unwrap_err(),
        DecodeError::InvalidDtmf
    );
}

#[test]
fn sequence_numbers_are_found_without_parsing() {
    assert_eq!(peek_sequence_number(media(42, "AA==").as_bytes()), Some(42));
    assert_eq!(
        peek_sequence_number(br#"{"sequence_number" :  7 ,"event":"x"}"#),
        Some(7)
    );
    assert_eq!(peek_sequence_number(br#"{"event":"connected"}"#), None);
    assert_eq!(peek_sequence_number(br#"{"sequence_number":"x"}"#), None);
    assert_eq!(peek_sequence_number(br#"{"sequence_number":"#), None);
}

/// Feeds frames as they arrive and returns the payloads in the order the session delivers
/// them, plus how many it gave up on.
fn deliver(s: &mut Session, frames: &[String]) -> (Vec<String>, u64) {
    let mut out = Vec::new();
    let mut sc = simd_json::Buffers::default();
    let mut push = |ev: CallerEvent<'_>| {
        if let CallerEvent::Media(m) = ev {
            out.push(m.payload.to_owned());
        }
    };
    let mut buf = Vec::new();
    for f in frames {
        let mut b = f.clone().into_bytes();
        if let Decoded::Event(ev) = s.decode(&mut b, &mut sc).unwrap() {
            push(ev);
        }
        while s.take_released(&mut buf) {
            push(s.decode_released(&mut buf, &mut sc).unwrap());
        }
    }
    while s.take_released(&mut buf) {
        push(s.decode_released(&mut buf, &mut sc).unwrap());
    }
    (out, s.take_out_of_order())
}

#[test]
fn frames_out_of_order_are_delivered_in_sequence() {
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let frames: Vec<String> = (0..10).map(|i| media(i + 2, &names[i as usize])).collect();
    // 2 3 5 4 6 9 7 8 10 11: a few swapped, one three apart.
    let order = [0, 1, 3, 2, 4, 7, 5, 6, 8, 9];
    let shuffled: Vec<String> = order.iter().map(|&i| frames[i].clone()).collect();
    let mut s = Session::default();
    let (got, lost) = deliver(&mut s, &shuffled);
    assert_eq!(got, names);
    assert_eq!(lost, 0);
}

#[test]
fn a_gap_longer_than_the_window_is_skipped_and_late_frames_dropped() {
    let frames: Vec<String> = (1..=10).map(|i| media(i, &format!("p{i}"))).collect();
    // Frame 3 is missing until after the window gave up on it.
    let mut arrival: Vec<String> = frames.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, f)| f.clone()).collect();
    arrival.push(frames[2].clone());
    let mut s = Session::default();
    let (got, lost) = deliver(&mut s, &arrival);
    let expect: Vec<String> = [1, 2, 4, 5, 6, 7, 8, 9, 10].iter().map(|i| format!("p{i}")).collect();
    assert_eq!(got, expect);
    // The skipped gap, then the late frame itself.
    assert_eq!(lost, 2);
    assert!(s.held.is_empty() && s.held_bytes == 0);
}

#[test]
fn held_frames_are_released_when_the_stream_ends() {
    let mut s = Session::default();
    let frames = [media(1, "a"), media(3, "c"), media(4, "d")];
    let (got, _) = deliver(&mut s, &frames);
    assert_eq!(got, ["a"]);
    s.release_all();
    let (got, lost) = deliver(&mut s, &[]);
    assert_eq!(got, ["c", "d"]);
    assert_eq!(lost, 1);
}

#[test]
fn outbound_messages_carry_no_stream_id() {
    let s = Session::default();
    let mut out = Vec::new();
    s.encode_media("ignored", &[0xff; 3], &mut out);
    assert_eq!(out, br#"{"event":"media","media":{"payload":"////"}}"#);
    s.encode_mark("ignored", "ms-100", &mut out);
    assert_eq!(out, br#"{"event":"mark","mark":{"name":"ms-100"}}"#);
    s.encode_clear("ignored", &mut out);
    assert_eq!(out, br#"{"event":"clear"}"#);
}

fn keypair(seed: u8) -> (SigningKey, VerifyingKey) {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let vk = sk.verifying_key();
    (sk, vk)
}

fn sign(sk: &SigningKey, ts: &str, body: &[u8]) -> String {
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'|');
    msg.extend_from_slice(body);
    base64_simd::STANDARD.encode_to_string(sk.sign(&msg).to_bytes())
}

#[test]
fn ed25519_signatures_good_bad_and_stale() {
    let (sk, vk) = keypair(7);
    let body = b"AccountSid=a&CallSid=v3%3Ax&From=%2B1";
    let now = 1_764_600_000;
    let tol = Duration::from_secs(300);
    let ts = now.to_string();
    let good = sign(&sk, &ts, body);
    assert_eq!(verify_signature(&vk, &good, &ts, body, now, tol), Ok(()));
    // Within the tolerance either way.
    let early = (now - 299).to_string();
    assert_eq!(
        verify_signature(&vk, &sign(&sk, &early, body), &early, body, now, tol),
        Ok(())
    );
    // Stale, and from the future.
    for t in [now - 301, now + 301] {
        let t = t.to_string();
        assert_eq!(
            verify_signature(&vk, &sign(&sk, &t, body), &t, body, now, tol),
            Err(SignatureError::Stale)
        );
    }
    // Another body, another timestamp, another key.
    assert_eq!(
        verify_signature(&vk, &good, &ts, b"AccountSid=b", now, tol),
        Err(SignatureError::Mismatch)
    );
    let ts2 = (now + 1).to_string();
    assert_eq!(
        verify_signature(&vk, &good, &ts2, body, now, tol),
        Err(SignatureError::Mismatch)
    );
    let (_, other) = keypair(8);
    assert_eq!(
        verify_signature(&other, &good, &ts, body, now, tol),
        Err(SignatureError::Mismatch)
    );
    // Missing and malformed.
    assert_eq!(
        verify_signature(&vk, "", &ts, body, now, tol),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        verify_signature(&vk, &good, "", body, now, tol),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        verify_signature(&vk, "not base64!", &ts, body, now, tol),
        Err(SignatureError::Malformed)
    );
    assert_eq!(
        verify_signature(&vk, "AAAA", &ts, body, now, tol),
        Err(SignatureError::Malformed)
    );
    assert_eq!(
        verify_signature(&vk, &good, "yesterday", body, now, tol),
        Err(SignatureError::Malformed)
    );
}

#[test]
fn public_keys_are_read_as_the_portal_shows_them() {
    let (_, vk) = keypair(3);
    let b64 = base64_simd::STANDARD.encode_to_string(vk.as_bytes());
    assert_eq!(parse_public_key(&format!(" {b64}\n")).unwrap(), vk);
    assert!(parse_public_key("AAAA").is_err());
    assert!(parse_public_key("not base64").is_err());
}

#[test]
fn texml_streams_bidirectional_pcmu_with_the_token_in_the_url_then_hangs_up() {
    let x = Telnyx
        .connect_markup(StreamMarkup {
            host: "relay.example.com",
            params: &[("From", "+1555"), ("relay_token", "tok-_1")],
            token: Some("tok-_1"),
        })
        .unwrap();
    assert_eq!(
        x,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://relay.example.com/telnyx/media?relay_token=tok-_1\" bidirectionalMode=\"rtp\" bidirectionalCodec=\"PCMU\" bidirectionalSamplingRate=\"8000\" statusCallback=\"https://relay.example.com/telnyx/stream-status\" statusCallbackMethod=\"POST\"><Parameter name=\"From\" value=\"+1555\"/><Parameter name=\"relay_token\" value=\"tok-_1\"/></Stream></Connect><Hangup/></Response>"
    );
    let long = "x".repeat(499);
    assert!(Telnyx
        .connect_markup(StreamMarkup {
            host: "h",
            params: &[("p", &long)],
            token: None
        })
        .is_err());
}

#[test]
fn the_upgrade_token_comes_from_the_url() {
    let s = CarrierSettings::from_args(&Default::default(), &SharedSettings::default()).unwrap();
    let h = HeaderMap::new();
    assert_eq!(
        Telnyx
            .verify_upgrade(&s, "/telnyx/media?relay_token=abc%2D1", &h)
            .unwrap(),
        Some("abc-1".into())
    );
    assert_eq!(Telnyx.verify_upgrade(&s, "/telnyx/media", &h).unwrap(), None);
}

#[test]
fn create_call_body_and_answers() {
    let b = create_call_body(
        "app-1",
        &NewCall {
            to: "+15551230001",
            from: "+15557654321",
            markup_url: "https://h/telnyx/texml/outbound?x=1",
            status_callback: "https://h/telnyx/call-status",
            machine_detection: Some(("Enable", Some(30))),
        },
    );
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["ApplicationSid"], "app-1");
    assert_eq!(v["To"], "+15551230001");
    assert_eq!(v["UrlMethod"], "POST");
    assert_eq!(v["MachineDetection"], "Enable");
    assert_eq!(v["MachineDetectionTimeout"], 30_000);
    assert_eq!(
        call_id_of(&serde_json::json!({"sid": "v3:abc"})).as_deref(),
        Some("v3:abc")
    );
    assert_eq!(
        call_id_of(&serde_json::json!({"data": {"call_control_id": "v3:d"}})).as_deref(),
        Some("v3:d")
    );
    assert_eq!(call_id_of(&serde_json::json!({"from": "+1"})), None);
}

#[test]
fn a_frame_made_next_by_a_skipped_gap_is_delivered_once_even_if_it_repeats_before_release() {
    let mut s = Session::default();
    let mut sc = simd_json::Buffers::default();
    let mut got = Vec::new();
    let mut feed = |s: &mut Session, f: String, got: &mut Vec<String>| {
        let mut b = f.into_bytes();
        if let Decoded::Event(CallerEvent::Media(m)) = s.decode(&mut b, &mut sc).unwrap() {
            got.push(m.payload.to_owned());
        }
    };
    // 1, then 3..=7 without 2: the window overflows and makes 3 the next frame, still held.
    for i in [1, 3, 4, 5, 6, 7] {
        feed(&mut s, media(i, &format!("p{i}")), &mut got);
    }
    // A repeat of 3 before the driver took the released frames is a duplicate.
    feed(&mut s, media(3, "p3"), &mut got);
    let mut buf = Vec::new();
    while s.take_released(&mut buf) {
        if let CallerEvent::Media(m) = s.decode_released(&mut buf, &mut sc).unwrap() {
            got.push(m.payload.to_owned());
        }
    }
    assert_eq!(got, ["p1", "p3", "p4", "p5", "p6", "p7"]);
    assert_eq!(s.take_out_of_order(), 2, "the skipped frame 2 and the repeat of 3");
}

#[test]
fn an_overflowing_window_skips_gaps_until_it_holds_no_more_than_the_window() {
    let sid = r#""stream_id":"32DE0DEA-53CB-4B21-89A4-9E1819C043BC""#;
    let mark = format!(r#"{{"event":"mark","sequence_number":"3","mark":{{"name":"m3"}},{sid}}}"#);
    // 1 delivered; then a mark echo (3) heads the window before media 5..=8 and 10, with 2,
    // 4 and 9 missing. The fifth held media frame overflows the window: releasing the mark
    // alone would leave five media frames waiting, so the gaps before them are skipped too.
    let frames = [media(1, "p1"), mark, media(5, "p5"), media(6, "p6"), media(7, "p7"), media(8, "p8"), media(10, "p10")];
    let mut s = Session::default();
    let (got, lost) = deliver(&mut s, &frames);
    assert_eq!(got, ["p1", "p5", "p6", "p7", "p8"]);
    assert_eq!(lost, 2, "frames 2 and 4 skipped");
    assert_eq!((s.held.len(), s.held_media), (1, 1), "frame 10 waits for 9");
}

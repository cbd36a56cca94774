use crate::{block_on, poll_once, ChunkedReader};
use media_relay::wire::ws::{Message, ReadError, Role, WsReader, WsWriter};
use std::task::Poll;

const LIMITS: [usize; 4] = [256, 65536, 16, 125];
const CLOSE_CODES: [u16; 6] = [1000, 1001, 1008, 1009, 1011, 4000];

#[derive(Debug, PartialEq, Eq)]
enum Want {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Close(u16, String),
    TooLarge,
}

/// `wire::ws::WsWriter` → `WsReader` round trip: whatever the relay queues with
/// `send_text` / `send_binary` / `send_pong` / `close` comes back out of a reader of the other
/// role byte for byte (pongs are skipped by readers; messages over the reader's limit come
/// back as `TooLarge`), whatever chunks the bytes travel in.
///
/// Input: `[cfg][n][plan: n bytes][ops…]`; `cfg` bit 0: writer role; bits 1-2: reader limit.
/// Each op is `[kind][len lo][len hi][bytes…]`: kind % 5 = text, binary, pong, close,
/// long text (the bytes repeated to at least `len * 2` bytes: reaches the 16- and 64-bit
/// length encodings). Payload bytes are taken from the input (`len` of them, fewer at its end).
pub fn ws_roundtrip(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let cfg = data[0];
    let n = usize::from(data[1] % 33).min(data.len() - 2);
    let plan = &data[2..2 + n];
    let mut ops = &data[2 + n..];
    let role = if cfg & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let peer = if role == Role::Server {
        Role::Client
    } else {
        Role::Server
    };
    let limit = LIMITS[usize::from((cfg >> 1) & 3)];

    let mut wire: Vec<u8> = Vec::new();
    let mut want = Vec::new();
    {
        let mut w = WsWriter::new(&mut wire, role);
        let mut closed = false;
        while ops.len() >= 3 {
            let kind = ops[0] % 5;
            let len = usize::from(u16::from_le_bytes([ops[1], ops[2]]));
            let take = len.min(ops.len() - 3);
            let bytes = &ops[3..3 + take];
            ops = &ops[3 + take..];
            match kind {
                0 | 4 => {
                    let mut s = String::from_utf8_lossy(bytes).into_owned();
                    if kind == 4 && !s.is_empty() {
                        let target = len * 2;
                        while s.len() < target {
                            s.push_str(&s.clone());
                        }
                    }
                    let r = w.send_text(s.as_bytes());
                    assert_eq!(r.is_err(), closed, "send_text after close: {r:?}");
                    if !closed {
                        want.push(if s.len() > limit {
                            Want::TooLarge
                        } else {
                            Want::Text(s.into_bytes())
                        });
                    }
                }
                1 => {
                    let r = w.send_binary(bytes);
                    assert_eq!(r.is_err(), closed, "send_binary after close: {r:?}");
                    if !closed {
                        want.push(if bytes.len() > limit {
                            Want::TooLarge
                        } else {
                            Want::Binary(bytes.to_vec())
                        });
                    }
                }
                2 => {
                    // Pongs are control frames: the relay only echoes pings (≤ 125 bytes).
                    let p = &bytes[..bytes.len().min(125)];
                    let r = w.send_pong(p);
                    assert_eq!(r.is_err(), closed, "send_pong after close: {r:?}");
                }
                _ => {
                    let code = CLOSE_CODES[usize::from(len as u8) % CLOSE_CODES.len()];
                    let reason = String::from_utf8_lossy(bytes).into_owned();
                    block_on(w.close(code, &reason), 4).expect("close into a Vec");
                    if !closed {
                        let mut cut = reason.len().min(123);
                        while !reason.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        want.push(Want::Close(code, reason[..cut].to_owned()));
                    }
                    closed = true;
                    assert!(w.close_sent());
                }
            }
        }
        block_on(w.flush(), 4).expect("flush into a Vec");
        assert_eq!(w.pending_bytes(), 0);
    }

    let mut io = ChunkedReader::new(&wire, plan, false);
    let mut r = WsReader::new(&mut io, peer, limit);
    let mut got = Vec::new();
    loop {
        let mut fut = std::pin::pin!(r.next());
        let res = match poll_once(fut.as_mut()) {
            Poll::Ready(res) => res,
            Poll::Pending => panic!("in-memory reader is pending"),
        };
        match res {
            Ok(Message::Text(t)) => got.push(Want::Text(t.to_vec())),
            Ok(Message::Binary(b)) => got.push(Want::Binary(b.to_vec())),
            Ok(Message::Ping(p)) => panic!("writer produced a ping: {p:?}"),
            Ok(Message::Close { code, reason }) => {
                got.push(Want::Close(code.expect("close with a code"), reason));
                break;
            }
            Err(ReadError::TooLarge { .. }) => got.push(Want::TooLarge),
            Err(ReadError::Eof) => break,
            Err(e) => panic!("reader refused the writer's frames: {e} after {got:?}"),
        }
    }
    assert_eq!(got, want, "round trip changed the messages");
}

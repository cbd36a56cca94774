use crate::{poll_once, ChunkedReader};
use media_relay::wire::ws::{is_valid_close_code, Message, ReadError, Role, WsReader};
use std::task::Poll;

const LIMITS: [usize; 4] = [256, 65536, 16, 125];

#[derive(Debug, PartialEq, Eq, Clone)]
enum Got {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>, String),
    TooLarge(usize),
    Eof,
    Protocol(&'static str),
    InvalidUtf8,
    Io(String),
}

fn owned(r: Result<Message<'_>, ReadError>) -> Got {
    match r {
        Ok(Message::Text(t)) => Got::Text(t.to_vec()),
        Ok(Message::Binary(b)) => Got::Binary(b.to_vec()),
        Ok(Message::Ping(p)) => Got::Ping(p.to_vec()),
        Ok(Message::Close { code, reason }) => Got::Close(code, reason),
        Err(ReadError::TooLarge { limit }) => Got::TooLarge(limit),
        Err(ReadError::Eof) => Got::Eof,
        Err(ReadError::Protocol(m)) => Got::Protocol(m),
        Err(ReadError::InvalidUtf8) => Got::InvalidUtf8,
        Err(ReadError::Io(e)) => Got::Io(e.to_string()),
    }
}

/// Reads every message; `cancel`: drop the `next()` future whenever it is pending.
fn read_all(stream: &[u8], plan: &[u8], role: Role, limit: usize, cancel: bool) -> Vec<Got> {
    let mut io = ChunkedReader::new(stream, plan, cancel);
    let mut r = WsReader::new(&mut io, role, limit);
    let mut out = Vec::new();
    // Every message or error consumes at least 2 bytes, and every pending answer is
    // followed by a chunk: anything more is a hang.
    let max_calls = stream.len() + 8;
    let mut calls = 0;
    let mut pendings = 0;
    loop {
        calls += 1;
        assert!(calls <= max_calls, "WsReader made no progress: {out:?}");
        let got = {
            let mut fut = std::pin::pin!(r.next());
            match poll_once(fut.as_mut()) {
                Poll::Ready(res) => owned(res),
                Poll::Pending => {
                    assert!(cancel, "pending without a pending stream");
                    pendings += 1;
                    assert!(pendings <= stream.len() + 1, "endless pending");
                    calls -= 1;
                    continue; // the future is dropped here: a cancellation
                }
            }
        };
        check(&got, limit);
        let cap = r.buffered_capacity();
        assert!(
            cap <= 8 * limit + 8192,
            "reader holds {cap} bytes with a {limit}-byte limit"
        );
        let finished = !matches!(
            got,
            Got::Text(_) | Got::Binary(_) | Got::Ping(_) | Got::TooLarge(_)
        );
        out.push(got);
        if finished {
            // Finished for good: only EOF from now on.
            for _ in 0..2 {
                let again = {
                    let mut fut = std::pin::pin!(r.next());
                    match poll_once(fut.as_mut()) {
                        Poll::Ready(res) => owned(res),
                        Poll::Pending => panic!("finished reader is pending"),
                    }
                };
                assert_eq!(
                    again,
                    Got::Eof,
                    "finished reader returned more after {out:?}"
                );
            }
            return out;
        }
    }
}

fn check(got: &Got, limit: usize) {
    match got {
        Got::Text(t) => {
            assert!(
                t.len() <= limit,
                "text of {} bytes over limit {limit}",
                t.len()
            );
            assert!(std::str::from_utf8(t).is_ok(), "text is not UTF-8");
        }
        Got::Binary(b) => assert!(b.len() <= limit, "binary over limit"),
        Got::Ping(p) => assert!(p.len() <= 125, "ping payload of {} bytes", p.len()),
        Got::Close(code, reason) => {
            if let Some(c) = code {
                assert!(is_valid_close_code(*c), "invalid close code {c} surfaced");
            } else {
                assert!(reason.is_empty(), "reason without a code");
            }
            assert!(
                reason.len() <= 123,
                "close reason of {} bytes",
                reason.len()
            );
        }
        Got::TooLarge(l) => assert_eq!(*l, limit),
        _ => {}
    }
}

/// `wire::ws::WsReader` on arbitrary bytes from a peer, in both roles, with a small and a
/// large message limit, the bytes arriving in fuzz-chosen chunks.
///
/// Input: `[cfg][n][plan: n bytes][stream…]`. `cfg` bit 0: role (0 server, 1 client);
/// bits 1-2: limit (256, 65536, 16, 125). `plan`: chunk sizes (`(b & 0x7f) + 1`, cycled); a
/// plan byte with the top bit set makes the stream answer `Pending` once before that chunk.
///
/// Checks, besides "never panics / never hangs":
/// - the same bytes give the same messages whether they arrive in one read, in the planned
///   chunks, or in the planned chunks with `Pending` answers where the `next()` future is
///   dropped and called again (the documented cancel safety);
/// - text is UTF-8 and data messages are within the limit; pings ≤ 125 bytes; close codes are
///   valid and reasons ≤ 123 bytes;
/// - after a close or any error but `TooLarge`, `next()` returns `Eof` for good;
/// - the reader's buffers stay bounded by a linear function of the limit.
pub fn ws_reader(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let cfg = data[0];
    let n = usize::from(data[1] % 33).min(data.len() - 2);
    let plan = &data[2..2 + n];
    let stream = &data[2 + n..];
    let role = if cfg & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let limit = LIMITS[usize::from((cfg >> 1) & 3)];

    let whole = read_all(stream, &[], role, limit, false);
    let chunked = read_all(stream, plan, role, limit, false);
    assert_eq!(whole, chunked, "chunking changed the messages");
    let cancelled = read_all(stream, plan, role, limit, true);
    assert_eq!(whole, cancelled, "cancelling next() changed the messages");
}

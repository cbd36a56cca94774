//! WebSocket framing on the data path (RFC 6455 §5), after fastwebsockets did the upgrade.
//!
//! Owns: reading frames from a byte stream into one small per-socket buffer (grown only for
//! a large message and shrunk back after), unmasking in place, bounded reassembly of
//! fragmented messages, skipping over-limit messages without buffering them, and writing
//! frames into one per-socket output buffer that reaches the kernel in a single write per
//! [`WsWriter::flush`]. Does not own: the HTTP upgrade or client handshake (fastwebsockets,
//! see `server` and `agent::connect`), protocol parsing, or which task writes (each writer
//! has one owner: `call`).
//!
//! Why not fastwebsockets' own read/write halves: their 8 KiB read buffer per socket and a
//! second copy through a write buffer were most of the relay's per-call memory; Twilio frames
//! are ~400 bytes. [`WsReader::next`] is cancel-safe by construction (all state lives in the
//! reader; a dropped future loses no bytes), so a `select!` loop can wait on it directly.
//!
//! Control frames are surfaced, not answered here: the owner of the write half answers pings
//! and closes ([`WsWriter::close_reply`] for a peer's close, [`ReadError::close_code`] for the
//! close a read error owes the peer, RFC 6455 §7.1.7).
//!
//! Input is untrusted: every length is checked before it is added or sliced with, a 64-bit
//! length with its top bit set is refused (RFC 6455 §5.2), text is validated as UTF-8 (fail
//! fast across fragments, RFC 6455 §8.1), and close frames are checked for size, code
//! (RFC 6455 §7.4) and UTF-8 reason (RFC 6455 §5.5.1). Memory per reader is bounded by its
//! message limit.

use crate::obs::labels::ErrorKind;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Which end of the connection we are: a server expects masked frames and sends unmasked
/// ones; a client the reverse (RFC 6455 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted the connection (the Twilio leg).
    Server,
    /// Opened the connection (the agent leg).
    Client,
}

/// Initial (and resting) size of a socket's read buffer, in bytes: one ~400-byte Twilio frame.
pub const READ_BUFFER_BYTES: usize = 512;

/// Bytes waiting in a writer beyond which a pong is not queued ([`WsWriter::send_pong`]).
pub const PONG_SKIP_PENDING_BYTES: usize = 80 * 1024;

/// One whole WebSocket message, borrowing the reader's buffer until the next read.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, unmasked and validated as UTF-8 (RFC 6455 §8.1), mutable so JSON can
    /// be parsed in place.
    Text(&'a mut [u8]),
    /// A binary message, unmasked (neither call leg accepts these; the conformance echo
    /// server returns them).
    Binary(&'a mut [u8]),
    /// A ping with its payload (≤ 125 bytes); the write-half owner answers with a pong.
    Ping(&'a [u8]),
    /// A valid close frame: code (if any) and reason. The reader ends after it; answer with
    /// [`WsWriter::close_reply`].
    Close {
        /// Close code, if the frame carried one (always a valid code, RFC 6455 §7.4).
        code: Option<u16>,
        /// Reason text (valid UTF-8, at most 123 bytes).
        reason: String,
    },
}

/// Why reading failed. Except for [`ReadError::TooLarge`] the reader is finished after one.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A message exceeded the leg's limit. It was skipped without buffering; the reader stays
    /// in sync and can go on.
    #[error("message larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer closed TCP without a close frame (or the reader already ended).
    #[error("connection closed without a close frame")]
    Eof,
    /// A framing violation (reserved bits, bad opcode, masking, fragmented control frame,
    /// oversized 64-bit length, bad close frame…).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or a close reason is not valid UTF-8 (RFC 6455 §8.1).
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The `kind` label of `relay_errors_total` (an end of stream counts as `io`; the call
    /// logs it as a close, not an error).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReadError::TooLarge { .. } => ErrorKind::MessageTooLarge,
            ReadError::Eof | ReadError::Io(_) => ErrorKind::Io,
            ReadError::Protocol(_) => ErrorKind::WebsocketProtocol,
            ReadError::InvalidUtf8 => ErrorKind::InvalidUtf8,
        }
    }

    /// The close code this error owes the peer (RFC 6455 §7.4.1): 1009 for a message over the
    /// limit, 1002 for a protocol error, 1007 for invalid UTF-8; `None` when the connection is
    /// already gone (EOF, I/O error).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ReadError::TooLarge { .. } => Some(1009),
            ReadError::Protocol(_) => Some(1002),
            ReadError::InvalidUtf8 => Some(1007),
            ReadError::Eof | ReadError::Io(_) => None,
        }
    }
}

/// True for a close code a peer may send (RFC 6455 §7.4.1, §7.4.2 and the IANA registry:
/// 1000–1003, 1007–1014, 3000–4999). 1004–1006 and 1015 are reserved and never sent.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: u64,
}

/// Parses a frame header from the front of `b`; `Ok(None)` if more bytes are needed.
fn parse_header(b: &[u8]) -> Result<Option<Header>, ReadError> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x70 != 0 {
        return Err(ReadError::Protocol("reserved bits set"));
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0F;
    let masked = b[1] & 0x80 != 0;
    let (payload_len, mut n) = match b[1] & 0x7F {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            let len = u64::from_be_bytes(l);
            if len >> 63 != 0 {
                // RFC 6455 §5.2: "the most significant bit MUST be 0".
                return Err(ReadError::Protocol("64-bit length with the top bit set"));
            }
            (len, 10)
        }
        l => (l as u64, 2),
    };
    let mask = if masked {
        if b.len() < n + 4 {
            return Ok(None);
        }
        let m = [b[n], b[n + 1], b[n + 2], b[n + 3]];
        n += 4;
        Some(m)
    } else {
        None
    };
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || payload_len > 125 {
                return Err(ReadError::Protocol("invalid control frame"));
            }
        }
        _ => return Err(ReadError::Protocol("unknown opcode")),
    }
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len: n,
        payload_len,
    }))
}

/// Reads whole messages from one socket. See the module docs.
pub struct WsReader<R> {
    io: R,
    role: Role,
    max_message_bytes: usize,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opcode and bytes of a fragmented message in progress.
    frag: Option<(u8, Vec<u8>)>,
    /// How many leading bytes of a fragmented text message are known to be valid UTF-8
    /// (an incomplete sequence may straddle two fragments).
    frag_utf8_valid: usize,
    /// Bytes still to discard of an over-limit frame, and whether its message continues.
    skip: u64,
    skipping_message: bool,
    done: bool,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// A reader for `io`; messages over `max_message_bytes` are skipped with
    /// [`ReadError::TooLarge`].
    pub fn new(io: R, role: Role, max_message_bytes: usize) -> Self {
        Self {
            io,
            role,
            max_message_bytes,
            buf: Vec::new(),
            start: 0,
            end: 0,
            frag: None,
            frag_utf8_valid: 0,
            skip: 0,
            skipping_message: false,
            done: false,
        }
    }

    /// Reads more bytes into the buffer. Cancel-safe: bytes are only accounted after a
    /// completed read, in the same poll.
    async fn fill(&mut self, need: usize) -> Result<(), ReadError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_BUFFER_BYTES {
                // Back to the resting size after a large message.
                self.buf = vec![0; READ_BUFFER_BYTES];
            }
        }
        let want = need.max(READ_BUFFER_BYTES);
        if self.buf.len() - self.start < want {
            // Move the pending bytes to the front, then grow if still too small.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            self.done = true;
            return Err(ReadError::Eof);
        }
        self.end += n;
        Ok(())
    }

    /// The next whole message. Cancel-safe (see module docs).
    ///
    /// # Errors
    /// [`ReadError`]; after anything but `TooLarge` the reader returns `Eof` forever.
    pub async fn next(&mut self) -> Result<Message<'_>, ReadError> {
        if self.done {
            return Err(ReadError::Eof);
        }
        match self.next_inner().await {
            Ok(range) => Ok(self.finish(range)),
            Err(e) => {
                if !matches!(e, ReadError::TooLarge { .. }) {
                    self.done = true;
                }
                Err(e)
            }
        }
    }

    async fn next_inner(&mut self) -> Result<Frame, ReadError> {
        loop {
            // Discard the rest of an over-limit frame as it arrives.
            while self.skip > 0 {
                if self.start == self.end {
                    self.fill(1).await?;
                }
                let n = ((self.end - self.start) as u64).min(self.skip) as usize;
                self.start += n;
                self.skip -= n as u64;
            }
            let h = loop {
                match parse_header(&self.buf[self.start..self.end])? {
                    Some(h) => break h,
                    None => self.fill(14).await?,
                }
            };
            match (self.role, h.mask.is_some()) {
                (Role::Server, false) => return Err(ReadError::Protocol("unmasked client frame")),
                (Role::Client, true) => return Err(ReadError::Protocol("masked server frame")),
                _ => {}
            }
            let is_data = h.opcode < 0x8;
            let so_far = self.frag.as_ref().map_or(0, |(_, v)| v.len()) as u64;
            // Saturating: the peer controls payload_len (up to 2^63 - 1).
            if is_data
                && (self.skipping_message
                    || h.payload_len.saturating_add(so_far) > self.max_message_bytes as u64)
            {
                // Over the limit (or the rest of a message already refused): skip it.
                let reported = self.skipping_message;
                if h.opcode != OP_CONTINUATION && (self.frag.is_some() || reported) {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                self.start += h.header_len;
                self.skip = h.payload_len;
                self.frag = None;
                self.skipping_message = !h.fin;
                if !reported {
                    return Err(ReadError::TooLarge {
                        limit: self.max_message_bytes,
                    });
                }
                continue;
            }
            // In range: payload_len ≤ max_message_bytes for data frames (checked above) and
            // ≤ 125 for control frames (checked in parse_header).
            let total = h.header_len + h.payload_len as usize;
            while self.end - self.start < total {
                self.fill(total).await?;
            }
            let p0 = self.start + h.header_len;
            let p1 = self.start + total;
            self.start = p1;
            if let Some(mask) = h.mask {
                fastwebsockets::unmask(&mut self.buf[p0..p1], mask);
            }
            match h.opcode {
                OP_PING => return Ok(Frame::Ping(p0, p1)),
                OP_PONG => continue,
                OP_CLOSE => {
                    check_close_payload(&self.buf[p0..p1])?;
                    return Ok(Frame::Close(p0, p1));
                }
                OP_TEXT | OP_BINARY => {
                    if self.frag.is_some() {
                        return Err(ReadError::Protocol("new message inside a fragmented one"));
                    }
                    if h.fin {
                        if h.opcode == OP_TEXT && std::str::from_utf8(&self.buf[p0..p1]).is_err() {
                            return Err(ReadError::InvalidUtf8);
                        }
                        return Ok(Frame::Data(h.opcode, p0, p1));
                    }
                    self.frag = Some((h.opcode, self.buf[p0..p1].to_vec()));
                    self.frag_utf8_valid = 0;
                    self.check_fragment_utf8(false)?;
                }
                _ => {
                    let Some((op, v)) = self.frag.as_mut() else {
                        return Err(ReadError::Protocol("continuation without a message"));
                    };
                    let op = *op;
                    v.extend_from_slice(&self.buf[p0..p1]);
                    self.check_fragment_utf8(h.fin)?;
                    if h.fin {
                        return Ok(Frame::Reassembled(op));
                    }
                }
            }
        }
    }

    /// Fail-fast UTF-8 check of a fragmented text message (RFC 6455 §8.1): bytes that can
    /// never become valid fail at once; an incomplete sequence at the end waits for the next
    /// fragment, unless this was the last one.
    fn check_fragment_utf8(&mut self, last: bool) -> Result<(), ReadError> {
        let Some((OP_TEXT, v)) = self.frag.as_ref() else {
            return Ok(());
        };
        match std::str::from_utf8(&v[self.frag_utf8_valid..]) {
            Ok(_) => self.frag_utf8_valid = v.len(),
            Err(e) if e.error_len().is_some() || last => return Err(ReadError::InvalidUtf8),
            Err(e) => self.frag_utf8_valid += e.valid_up_to(),
        }
        Ok(())
    }

    fn finish(&mut self, f: Frame) -> Message<'_> {
        match f {
            Frame::Ping(a, b) => Message::Ping(&self.buf[a..b]),
            Frame::Close(a, b) => {
                self.done = true;
                // Validated by `check_close_payload`: empty, or a valid code + UTF-8 reason.
                let p = &self.buf[a..b];
                if p.len() >= 2 {
                    Message::Close {
                        code: Some(u16::from_be_bytes([p[0], p[1]])),
                        reason: String::from_utf8_lossy(&p[2..]).into_owned(),
                    }
                } else {
                    Message::Close {
                        code: None,
                        reason: String::new(),
                    }
                }
            }
            Frame::Data(OP_TEXT, a, b) => Message::Text(&mut self.buf[a..b]),
            Frame::Data(_, a, b) => Message::Binary(&mut self.buf[a..b]),
            Frame::Reassembled(op) => {
                // Keep the reassembled bytes in the read buffer's place so the message can
                // borrow mutably; the fragment vector becomes the buffer (bounded by the limit).
                let (_, v) = self.frag.take().unwrap_or_default();
                let pending = self.buf[self.start..self.end].to_vec();
                let len = v.len();
                self.buf = v;
                self.buf.extend_from_slice(&pending);
                self.start = len;
                self.end = len + pending.len();
                if op == OP_TEXT {
                    Message::Text(&mut self.buf[..len])
                } else {
                    Message::Binary(&mut self.buf[..len])
                }
            }
        }
    }

    /// Bytes held by the reader's buffers (for tests and memory accounting).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity() + self.frag.as_ref().map_or(0, |(_, v)| v.capacity())
    }
}

/// Checks a close frame's payload (RFC 6455 §5.5.1, §7.4): empty, or a valid code followed by
/// a UTF-8 reason. One byte, a reserved or unassigned code, or a bad reason is an error.
fn check_close_payload(p: &[u8]) -> Result<(), ReadError> {
    match p.len() {
        0 => Ok(()),
        1 => Err(ReadError::Protocol("close frame with a 1-byte payload")),
        _ => {
            if !is_valid_close_code(u16::from_be_bytes([p[0], p[1]])) {
                return Err(ReadError::Protocol("invalid close code"));
            }
            std::str::from_utf8(&p[2..]).map_err(|_| ReadError::InvalidUtf8)?;
            Ok(())
        }
    }
}

/// A frame located in the buffer (byte ranges), resolved into a [`Message`] by `finish`.
enum Frame {
    Ping(usize, usize),
    Close(usize, usize),
    Data(u8, usize, usize),
    Reassembled(u8),
}

/// The write half of a socket: frames are appended to one output buffer by
/// [`WsWriter::send_text`] and reach the kernel in one write on [`WsWriter::flush`].
/// One owner only.
pub struct WsWriter<W> {
    io: W,
    role: Role,
    /// Frames queued; `out[..written]` already reached the socket.
    out: Vec<u8>,
    written: usize,
    /// Bytes that reached the socket over the writer's life.
    total_written: u64,
    close_sent: bool,
    /// xorshift state for client masking keys.
    mask_state: u64,
}

/// Output buffers larger than this are released after a flush (bytes). A few ~400-byte
/// frames fit; a 500 ms agent event (five 100 ms Twilio media messages of ~1.2 KiB each at the
/// default `--twilio-chunk-ms`) does not, so its buffer is freed rather than kept for the rest
/// of the call.
const OUT_BUFFER_KEEP_BYTES: usize = 2048;

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// A writer for `io`.
    pub fn new(io: W, role: Role) -> Self {
        let mut seed = [0u8; 8];
        // Masking keys only need to be unpredictable to intermediaries (RFC 6455 §10.3); a
        // per-socket random seed and xorshift is plenty between servers.
        let _ = rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut seed);
        Self {
            io,
            role,
            out: Vec::new(),
            written: 0,
            total_written: 0,
            close_sent: false,
            mask_state: u64::from_le_bytes(seed) | 1,
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_le_bytes()
    }

    fn push_frame(&mut self, opcode: u8, payload: &[u8]) {
        if self.written > OUT_BUFFER_KEEP_BYTES && self.written * 2 > self.out.len() {
            // A stalled socket is draining slowly: drop what it already took.
            self.out.drain(..self.written);
            self.written = 0;
        }
        let len = payload.len();
        let masked = self.role == Role::Client;
        self.out.reserve(14 + len);
        self.out.push(0x80 | opcode);
        let mask_bit = if masked { 0x80 } else { 0 };
        if len < 126 {
            self.out.push(mask_bit | len as u8);
        } else if len <= u16::MAX as usize {
            self.out.push(mask_bit | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(mask_bit | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            let mask = self.next_mask();
            self.out.extend_from_slice(&mask);
            let at = self.out.len();
            self.out.extend_from_slice(payload);
            fastwebsockets::unmask(&mut self.out[at..], mask);
        } else {
            self.out.extend_from_slice(payload);
        }
    }

    /// Queues one text frame (no I/O).
    ///
    /// # Errors
    /// `BrokenPipe` after a close frame was sent.
    pub fn send_text(&mut self, payload: &[u8]) -> std::io::Result<()> {
        if self.close_sent {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.push_frame(OP_TEXT, payload);
        Ok(())
    }

    /// Queues one binary frame (no I/O).
    ///
    /// # Errors
    /// `BrokenPipe` after a close frame was sent.
    pub fn send_binary(&mut self, payload: &[u8]) -> std::io::Result<()> {
        if self.close_sent {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.push_frame(OP_BINARY, payload);
        Ok(())
    }

    /// Queues a pong echoing `payload` (no I/O), unless more than
    /// [`PONG_SKIP_PENDING_BYTES`] already wait to be written: a peer that sends pings and
    /// does not read cannot grow the buffer with pongs (RFC 6455 §5.5.3 lets an endpoint
    /// answer only the most recent ping; a later one gets its pong once the peer reads).
    ///
    /// # Errors
    /// As [`WsWriter::send_text`].
    pub fn send_pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        if self.close_sent {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        if self.pending_bytes() <= PONG_SKIP_PENDING_BYTES {
            self.push_frame(OP_PONG, payload);
        }
        Ok(())
    }

    /// Writes everything queued (one write in the common case). Cancel-safe, see
    /// [`WsWriter::poll_flush`].
    ///
    /// # Errors
    /// The socket's I/O error.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Writes queued frames until all reached the socket (then `Ready(Ok)`), the socket is
    /// full (`Pending`, progress kept), or it fails. Cancel-safe: what was written is
    /// remembered in the writer, so dropping the future loses nothing, and frames may be
    /// queued between polls.
    ///
    /// # Errors
    /// The socket's I/O error (`WriteZero` if it accepts nothing).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.total_written += n as u64;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // TLS streams buffer records; plain TCP flush is a no-op.
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > OUT_BUFFER_KEEP_BYTES {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Bytes that reached the socket since the writer was made (a slow peer's progress).
    pub fn bytes_written(&self) -> u64 {
        self.total_written
    }

    /// Bytes queued that have not reached the socket yet.
    #[inline]
    pub fn pending_bytes(&self) -> usize {
        self.out.len() - self.written
    }

    /// Answers a peer's close frame (RFC 6455 §5.5.1): echoes its code, or sends an empty
    /// close when it had none; then flushes. Once only, like [`WsWriter::close`].
    ///
    /// # Errors
    /// The socket's I/O error.
    pub async fn close_reply(&mut self, received: Option<u16>) -> std::io::Result<()> {
        match received {
            Some(code) => self.close(code, "").await,
            None => {
                if self.close_sent {
                    return Ok(());
                }
                self.push_frame(OP_CLOSE, &[]);
                self.close_sent = true;
                self.flush().await
            }
        }
    }

    /// True once a close frame was queued.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Queues a close frame with `code` and `reason` (once; later calls do nothing) and
    /// flushes. The TCP connection closes when the owner drops both halves.
    ///
    /// # Errors
    /// The socket's I/O error.
    pub async fn close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        if self.close_sent {
            return Ok(());
        }
        let mut p = Vec::with_capacity(2 + reason.len().min(123));
        p.extend_from_slice(&code.to_be_bytes());
        // Control frame payloads are at most 125 bytes; cut on a char boundary.
        let mut r = reason.len().min(123);
        while !reason.is_char_boundary(r) {
            r -= 1;
        }
        p.extend_from_slice(&reason.as_bytes()[..r]);
        self.push_frame(OP_CLOSE, &p);
        self.close_sent = true;
        self.flush().await
    }
}

/// A reader that first yields `prefix` (bytes hyper read past the upgrade request) and then
/// reads from `inner`. Without it the first frame after the upgrade could be lost.
pub struct Prefixed<R> {
    prefix: bytes::Bytes,
    inner: R,
}

impl<R> Prefixed<R> {
    /// Chains `prefix` in front of `inner`. The prefix is copied out of hyper's read buffer
    /// (usually it is empty), so the call does not keep that 8 KiB+ allocation alive.
    pub fn new(prefix: bytes::Bytes, inner: R) -> Self {
        let prefix = if prefix.is_empty() {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::copy_from_slice(&prefix)
        };
        Self { prefix, inner }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn client_frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        let mask = [1u8, 2, 3, 4];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn messages(wire: Vec<u8>, limit: usize, split_every: usize) -> Vec<String> {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for part in wire.chunks(split_every.max(1)) {
                let _ = a.write_all(part).await;
            }
        });
        let mut r = WsReader::new(b, Role::Server, limit);
        let mut got = Vec::new();
        loop {
            let item = match r.next().await {
                Ok(Message::Text(t)) => format!("text:{}", String::from_utf8_lossy(t)),
                Ok(m) => format!("{m:?}"),
                Err(ReadError::Eof) => "err:eof".to_owned(),
                Err(e) => format!("err:{}", e.kind()),
            };
            let end = item.starts_with("Close")
                || matches!(
                    item.as_str(),
                    "err:eof" | "err:websocket_protocol" | "err:invalid_utf8"
                );
            got.push(item);
            if end {
                return got;
            }
        }
    }

    #[tokio::test]
    async fn reassembles_fragments_delivered_byte_by_byte() {
        let mut wire = client_frame(1, false, b"hel");
        wire.extend(client_frame(9, true, b"p")); // ping between fragments
        wire.extend(client_frame(0, true, b"lo"));
        wire.extend(client_frame(1, true, b"next"));
        wire.extend(client_frame(8, true, &[0x03, 0xe8, b'b', b'y']));
        let got = messages(wire, 1024, 1).await;
        assert_eq!(
            got,
            vec![
                "Ping([112])",
                "text:hello",
                "text:next",
                "Close { code: Some(1000), reason: \"by\" }"
            ]
        );
    }

    #[tokio::test]
    async fn caps_single_and_fragmented_messages_and_stays_in_sync() {
        let mut wire = client_frame(1, true, &[b'a'; 200]);
        wire.extend(client_frame(1, true, b"ok1"));
        let got = messages(wire, 100, 7).await;
        assert_eq!(got, vec!["err:message_too_large", "text:ok1", "err:eof"]);
        let mut wire = client_frame(1, false, &[b'a'; 60]);
        wire.extend(client_frame(0, false, &[b'a'; 60]));
        wire.extend(client_frame(0, true, &[b'a'; 60]));
        wire.extend(client_frame(1, true, b"ok2"));
        let got = messages(wire, 100, 7).await;
        assert_eq!(got, vec!["err:message_too_large", "text:ok2", "err:eof"]);
        // A 70 KiB frame is skipped without being buffered.
        let mut wire = client_frame(1, true, &vec![b'x'; 70 * 1024]);
        wire.extend(client_frame(1, true, b"ok3"));
        let got = messages(wire, 64 * 1024, 4096).await;
        assert_eq!(got, vec!["err:message_too_large", "text:ok3", "err:eof"]);
    }

    #[tokio::test]
    async fn protocol_violations_end_the_reader() {
        let mut unmasked = vec![0x81, 0x02];
        unmasked.extend_from_slice(b"hi");
        assert_eq!(
            messages(unmasked, 100, 1).await,
            vec!["err:websocket_protocol"]
        );
        let reserved = client_frame(0x41 & 0x7f | 0x40, true, b"x");
        assert_eq!(
            messages(reserved, 100, 1).await,
            vec!["err:websocket_protocol"]
        );
        let bad_op = client_frame(3, true, b"x");
        assert_eq!(
            messages(bad_op, 100, 1).await,
            vec!["err:websocket_protocol"]
        );
        let lone_cont = client_frame(0, true, b"x");
        assert_eq!(
            messages(lone_cont, 100, 1).await,
            vec!["err:websocket_protocol"]
        );
        let frag_ping = client_frame(9, false, b"x");
        assert_eq!(
            messages(frag_ping, 100, 1).await,
            vec!["err:websocket_protocol"]
        );
    }

    #[tokio::test]
    async fn binary_and_eof() {
        let got = messages(client_frame(2, true, b"\x00\x01"), 100, 3).await;
        assert_eq!(got, vec!["Binary([0, 1])", "err:eof"]);
    }

    fn len64_header(first: u8, len: u64) -> Vec<u8> {
        let mut h = vec![first, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[tokio::test]
    async fn huge_lengths_are_protocol_errors_not_panics() {
        // A buffered fragment, then a continuation whose length wraps `so_far + len`.
        let mut wire = client_frame(1, false, b"0123456789");
        wire.extend(len64_header(0x80, u64::MAX - 9));
        assert_eq!(
            messages(wire, 1 << 16, 3).await,
            vec!["err:websocket_protocol"]
        );
        // Top bit set on a single frame (RFC 6455 §5.2).
        assert_eq!(
            messages(len64_header(0x81, 1 << 63), 1 << 16, 3).await,
            vec!["err:websocket_protocol"]
        );
        // Just under the top bit: over the limit, skipped (the stream then ends).
        let mut wire = client_frame(1, false, b"ab");
        wire.extend(len64_header(0x80, (1 << 63) - 1));
        assert_eq!(
            messages(wire, 1 << 16, 3).await,
            vec!["err:message_too_large", "err:eof"]
        );
    }

    #[tokio::test]
    async fn close_frames_are_validated() {
        for (payload, want) in [
            (vec![], "Close { code: None, reason: \"\" }"),
            (vec![0x03, 0xe8], "Close { code: Some(1000), reason: \"\" }"),
            (
                vec![0x0f, 0xa0, b'o', b'k'],
                "Close { code: Some(4000), reason: \"ok\" }",
            ),
            (vec![0x03], "err:websocket_protocol"),
            (vec![0x03, 0xe8, 0xc3], "err:invalid_utf8"),
        ] {
            assert_eq!(
                messages(client_frame(8, true, &payload), 200, 2).await,
                vec![want],
                "{payload:?}"
            );
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!is_valid_close_code(code), "{code}");
            assert_eq!(
                messages(client_frame(8, true, &code.to_be_bytes()), 200, 2).await,
                vec!["err:websocket_protocol"],
                "{code}"
            );
        }
        for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(is_valid_close_code(code), "{code}");
        }
    }

    #[tokio::test]
    async fn text_must_be_utf8_failing_fast_across_fragments() {
        assert_eq!(
            messages(client_frame(1, true, b"ok\xff"), 200, 2).await,
            vec!["err:invalid_utf8"]
        );
        // A two-byte sequence split across fragments is valid.
        let mut wire = client_frame(1, false, b"caf\xc3");
        wire.extend(client_frame(0, true, b"\xa9"));
        assert_eq!(messages(wire, 200, 2).await, vec!["text:café", "err:eof"]);
        // An impossible byte fails at its fragment, before the message ends.
        let mut wire = client_frame(1, false, b"a\xff");
        wire.extend(client_frame(0, false, b"never read"));
        assert_eq!(messages(wire, 200, 2).await, vec!["err:invalid_utf8"]);
        // A sequence left incomplete by the last fragment fails.
        let mut wire = client_frame(1, false, b"a");
        wire.extend(client_frame(0, true, b"\xe2\x82"));
        assert_eq!(messages(wire, 200, 2).await, vec!["err:invalid_utf8"]);
        // Binary messages are not checked.
        assert_eq!(
            messages(client_frame(2, true, b"\xff"), 200, 2).await,
            vec!["Binary([255])", "err:eof"]
        );
    }

    #[tokio::test]
    async fn close_reply_echoes_the_code_or_sends_an_empty_close() {
        for (received, want) in [
            (
                Some(1001u16),
                Message::Close {
                    code: Some(1001),
                    reason: String::new(),
                },
            ),
            (
                None,
                Message::Close {
                    code: None,
                    reason: String::new(),
                },
            ),
        ] {
            let (a, b) = tokio::io::duplex(1024);
            let mut w = WsWriter::new(a, Role::Server);
            w.close_reply(received).await.unwrap();
            assert!(w.close_sent());
            w.close(1000, "second close is not sent").await.unwrap();
            drop(w);
            let mut r = WsReader::new(b, Role::Client, 1024);
            assert_eq!(r.next().await.unwrap(), want);
            assert!(matches!(r.next().await, Err(ReadError::Eof)));
        }
    }

    #[tokio::test]
    async fn buffer_returns_to_resting_size_after_a_large_message() {
        let mut wire = client_frame(1, true, &vec![b'y'; 20_000]);
        wire.extend(client_frame(1, true, b"small"));
        let (mut a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = a.write_all(&wire).await;
        });
        let mut r = WsReader::new(b, Role::Server, 1 << 20);
        assert!(matches!(r.next().await, Ok(Message::Text(t)) if t.len() == 20_000));
        assert!(matches!(r.next().await, Ok(Message::Text(t)) if t == b"small"));
        assert!(matches!(r.next().await, Err(ReadError::Eof)));
        let _ = r.fill(1).await;
        assert!(r.buffered_capacity() <= 4 * READ_BUFFER_BYTES + 64);
    }

    #[tokio::test]
    async fn writer_frames_round_trip_through_the_reader() {
        for role in [Role::Client, Role::Server] {
            let (a, b) = tokio::io::duplex(1 << 20);
            let mut w = WsWriter::new(a, role);
            let big = vec![b'z'; 70_000];
            let mid = vec![b'm'; 300];
            w.send_text(b"one").unwrap();
            w.send_text(&mid).unwrap();
            w.send_text(&big).unwrap();
            w.send_pong(b"pp").unwrap();
            w.flush().await.unwrap();
            w.close(1001, "bye").await.unwrap();
            assert!(w.send_text(b"late").is_err());
            let peer = if role == Role::Client {
                Role::Server
            } else {
                Role::Client
            };
            let mut r = WsReader::new(b, peer, 1 << 20);
            assert!(matches!(r.next().await, Ok(Message::Text(t)) if t == b"one"));
            assert!(matches!(r.next().await, Ok(Message::Text(t)) if t == &mid[..]));
            assert!(matches!(r.next().await, Ok(Message::Text(t)) if t == &big[..]));
            assert_eq!(
                r.next().await.unwrap(),
                Message::Close {
                    code: Some(1001),
                    reason: "bye".into()
                }
            );
        }
    }

    #[tokio::test]
    async fn a_large_flush_gives_its_buffer_back() {
        let mut w = WsWriter::new(tokio::io::sink(), Role::Server);
        w.send_text(&[b'a'; 400]).unwrap();
        w.flush().await.unwrap();
        let small = w.out.capacity();
        assert!(small > 0 && small <= OUT_BUFFER_KEEP_BYTES, "{small}");
        // A 500 ms agent event relayed as five 100 ms media messages.
        for _ in 0..5 {
            w.send_text(&[b'b'; 1200]).unwrap();
        }
        assert!(w.out.capacity() > OUT_BUFFER_KEEP_BYTES);
        w.flush().await.unwrap();
        assert_eq!(w.out.capacity(), 0);
        assert!(w.out.is_empty());
    }

    /// A flush cancelled while the socket is full loses nothing: frames queued meanwhile
    /// follow, in order, once the peer reads.
    #[tokio::test]
    async fn flush_is_cancel_safe_and_resumes() {
        let (a, b) = tokio::io::duplex(64);
        let mut w = WsWriter::new(a, Role::Server);
        let first = vec![b'1'; 300];
        w.send_text(&first).unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), w.flush())
                .await
                .is_err(),
            "the 64-byte pipe cannot take 300 bytes"
        );
        assert!(w.pending_bytes() > 0 && w.pending_bytes() < 304);
        w.send_text(b"second").unwrap();
        let mut r = WsReader::new(b, Role::Client, 1024);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..2 {
                match r.next().await.unwrap() {
                    Message::Text(t) => got.push(t.to_vec()),
                    m => panic!("{m:?}"),
                }
            }
            got
        });
        w.flush().await.unwrap();
        assert_eq!(w.pending_bytes(), 0);
        assert_eq!(reader.await.unwrap(), vec![first, b"second".to_vec()]);
    }

    /// A peer that pings and never reads cannot grow the writer with pongs; the count of
    /// bytes the socket took shows a slow reader's progress.
    #[tokio::test]
    async fn pongs_stop_queueing_when_the_peer_does_not_read() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WsWriter::new(a, Role::Server);
        for _ in 0..1000 {
            w.send_pong(&[7u8; 125]).unwrap();
        }
        let cap = PONG_SKIP_PENDING_BYTES + 127;
        assert!(w.pending_bytes() <= cap, "{}", w.pending_bytes());
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), w.flush()).await;
        assert_eq!(w.bytes_written(), 64, "the pipe took 64 bytes");
        for _ in 0..1000 {
            w.send_pong(&[7u8; 125]).unwrap();
        }
        assert!(w.pending_bytes() <= cap, "{}", w.pending_bytes());
    }

    #[tokio::test]
    async fn prefix_comes_first() {
        use tokio::io::AsyncReadExt;
        let mut r = Prefixed::new(bytes::Bytes::from_static(b"ab"), &b"cd"[..]);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "abcd");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn messages_survive_any_split_and_fragmentation(
                msgs in proptest::collection::vec(proptest::collection::vec(b'a'..=b'z', 0..600), 1..8),
                frag in 1usize..300,
                split in 1usize..97,
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let mut wire = Vec::new();
                for m in &msgs {
                    let chunks: Vec<&[u8]> = if m.is_empty() { vec![&m[..]] } else { m.chunks(frag).collect() };
                    for (i, c) in chunks.iter().enumerate() {
                        let op = if i == 0 { 1 } else { 0 };
                        wire.extend(client_frame(op, i + 1 == chunks.len(), c));
                    }
                }
                let got = rt.block_on(messages(wire, 1 << 20, split));
                let want: Vec<String> = msgs
                    .iter()
                    .map(|m| format!("text:{}", String::from_utf8_lossy(m)))
                    .chain(std::iter::once("err:eof".to_string()))
                    .collect();
                prop_assert_eq!(got, want);
            }

            /// Frames with hostile header fields (any opcode, RSV bits, mask bit and any
            /// 7/16/64-bit length, including ones near 2^63 and 2^64) never panic the reader.
            #[test]
            fn hostile_headers_never_panic(
                frames in proptest::collection::vec(
                    (any::<u8>(), any::<bool>(), 0u8..3, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)),
                    1..6,
                ),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let mut wire = Vec::new();
                for (first, masked, enc, len, payload) in frames {
                    wire.push(first);
                    let m = if masked { 0x80 } else { 0 };
                    match enc {
                        0 => wire.push(m | (len % 126) as u8),
                        1 => { wire.push(m | 126); wire.extend_from_slice(&(len as u16).to_be_bytes()); }
                        _ => { wire.push(m | 127); wire.extend_from_slice(&len.to_be_bytes()); }
                    }
                    if masked { wire.extend_from_slice(&[9, 8, 7, 6]); }
                    wire.extend_from_slice(&payload);
                }
                let _ = rt.block_on(messages(wire, 64, 3));
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let _ = rt.block_on(messages(bytes, 256, 5));
            }
        }
    }
}

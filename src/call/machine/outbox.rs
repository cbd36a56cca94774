//! Byte-capped queues of audio waiting for a leg's socket (sans-IO, no clock of their own).
//!
//! [`ByteQueue`] keeps μ-law bytes back to back in one buffer (no allocation per frame; the
//! buffer rewinds whenever it drains, which on a healthy call is every loop turn).
//! [`AudioQueue`] adds item boundaries (a caller frame, an agent audio event) with their read
//! time and reply key, and a byte cap enforced by dropping the oldest items.

use crate::agent::ReplyKey;
use std::collections::VecDeque;
use std::time::Instant;

/// Buffers grown past this many bytes are released when they drain (a burst of agent audio
/// should not stay allocated for the rest of the call).
pub const KEEP_BYTES: usize = 4096;

/// μ-law bytes back to back: append at the tail, consume from the head.
#[derive(Debug, Default)]
pub struct ByteQueue {
    buf: Vec<u8>,
    head: usize,
}

impl ByteQueue {
    /// Bytes queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer to append to (callers extend it; e.g. a base64 decode writes in place).
    #[inline]
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The first `n` queued bytes.
    #[inline]
    pub fn front(&self, n: usize) -> &[u8] {
        &self.buf[self.head..self.head + n.min(self.len())]
    }

    /// Drops the first `n` queued bytes; rewinds (and releases a large buffer) when empty.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.head += n.min(self.len());
        if self.head == self.buf.len() {
            self.head = 0;
            self.buf.clear();
            if self.buf.capacity() > KEEP_BYTES {
                self.buf = Vec::new();
            }
        } else if self.head > KEEP_BYTES && self.head > self.buf.len() / 2 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }

    /// Bytes allocated (for memory accounting in tests).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// One queued piece of audio.
#[derive(Debug, Clone, Copy)]
pub struct Item {
    /// Bytes of this item still queued.
    pub len: usize,
    /// When its message was read from the other leg (relay-added latency starts here).
    pub read_at: Instant,
    /// The agent reply it belongs to (caller audio: `ReplyKey(0)`).
    pub reply: ReplyKey,
    /// Already cut by the byte cap (counted once when cut).
    pub cut: bool,
}

/// Audio items with a byte cap.
#[derive(Debug, Default)]
pub struct AudioQueue {
    /// The bytes of every queued item, in order.
    pub bytes: ByteQueue,
    /// Item boundaries, oldest first.
    pub items: VecDeque<Item>,
}

impl AudioQueue {
    /// Bytes queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Records that the last `len` bytes appended to [`ByteQueue::tail`] form a new item;
    /// with `merge`, they join the newest item instead when it has the same reply.
    #[inline]
    pub fn commit(&mut self, len: usize, read_at: Instant, reply: ReplyKey, merge: bool) {
        if merge {
            if let Some(last) = self.items.back_mut() {
                if last.reply == reply {
                    last.len += len;
                    return;
                }
            }
        }
        self.items.push_back(Item {
            len,
            read_at,
            reply,
            cut: false,
        });
    }

    /// Drops the oldest items until at most `cap` bytes are queued (the oldest item is cut
    /// when dropping part of it is enough). Returns how many items lost audio, each counted
    /// once (when first cut or dropped).
    pub fn enforce_cap(&mut self, cap: usize) -> u64 {
        let mut dropped = 0;
        while self.len() > cap {
            let excess = self.len() - cap;
            let Some(front) = self.items.front_mut() else {
                break;
            };
            dropped += u64::from(!front.cut);
            if front.len <= excess {
                let n = front.len;
                self.items.pop_front();
                self.bytes.consume(n);
            } else {
                front.len -= excess;
                front.cut = true;
                self.bytes.consume(excess);
            }
        }
        dropped
    }

    /// Drops every item whose reply is at or below `through`; returns how many.
    pub fn drop_replies_through(&mut self, through: ReplyKey) -> u64 {
        // Items are in reply order, so stale ones are a prefix… except caller audio (key 0),
        // which never shares a queue with agent audio. Rebuild the queue without them.
        if !self.items.iter().any(|i| i.reply <= through) {
            return 0;
        }
        let mut kept = ByteQueue::default();
        let mut items = VecDeque::with_capacity(self.items.len());
        let mut dropped = 0;
        for it in self.items.drain(..) {
            if it.reply <= through {
                dropped += 1;
            } else {
                kept.tail().extend_from_slice(self.bytes.front(it.len));
                items.push_back(it);
            }
            self.bytes.consume(it.len);
        }
        self.bytes = kept;
        self.items = items;
        dropped
    }

    /// Takes up to `max` bytes of the front item into `out` (replacing its contents);
    /// returns that item's (read time, reply, whether the item is now fully taken).
    pub fn take_front(
        &mut self,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Option<(Instant, ReplyKey, bool)> {
        let front = self.items.front_mut()?;
        let n = front.len.min(max);
        out.clear();
        out.extend_from_slice(self.bytes.front(n));
        self.bytes.consume(n);
        front.len -= n;
        let info = (front.read_at, front.reply, front.len == 0);
        if front.len == 0 {
            self.items.pop_front();
        }
        Some(info)
    }

    /// Empties the queue; returns how many items were dropped.
    pub fn clear(&mut self) -> u64 {
        let n = self.items.len() as u64;
        self.items.clear();
        let all = self.bytes.len();
        self.bytes.consume(all);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(q: &mut AudioQueue, bytes: &[u8], reply: u64, merge: bool) {
        q.bytes.tail().extend_from_slice(bytes);
        q.commit(bytes.len(), Instant::now(), ReplyKey(reply), merge);
    }

    #[test]
    fn fifo_with_chunked_takes() {
        let mut q = AudioQueue::default();
        push(&mut q, &[1, 2, 3], 1, false);
        push(&mut q, &[4, 5], 2, false);
        let mut out = Vec::new();
        let (_, r, done) = q.take_front(2, &mut out).unwrap();
        assert_eq!(
            (out.as_slice(), r, done),
            (&[1u8, 2][..], ReplyKey(1), false)
        );
        let (_, _, done) = q.take_front(2, &mut out).unwrap();
        assert_eq!((out.as_slice(), done), (&[3u8][..], true));
        q.take_front(10, &mut out).unwrap();
        assert_eq!(out, [4, 5]);
        assert!(q.take_front(1, &mut out).is_none());
        assert!(q.is_empty() && q.bytes.is_empty());
    }

    #[test]
    fn cap_drops_oldest_and_cuts_oversized_items() {
        let mut q = AudioQueue::default();
        for i in 0..5u8 {
            push(&mut q, &[i; 10], 0, false);
        }
        assert_eq!(q.enforce_cap(30), 2);
        let mut out = Vec::new();
        q.take_front(100, &mut out).unwrap();
        assert_eq!(out, [2; 10]);
        push(&mut q, &[9; 100], 0, false);
        assert_eq!(q.enforce_cap(25), 3);
        assert_eq!(q.len(), 25);
        q.take_front(100, &mut out).unwrap();
        assert_eq!(out, [9; 25]);
    }

    #[test]
    fn merging_and_dropping_replies() {
        let mut q = AudioQueue::default();
        push(&mut q, &[1; 40], 3, true);
        push(&mut q, &[1; 40], 3, true);
        push(&mut q, &[2; 10], 4, true);
        assert_eq!(q.items.len(), 2);
        assert_eq!(q.drop_replies_through(ReplyKey(3)), 1);
        assert_eq!(q.len(), 10);
        let mut out = Vec::new();
        q.take_front(100, &mut out).unwrap();
        assert_eq!(out, [2; 10]);
        assert_eq!(q.drop_replies_through(ReplyKey(9)), 0);
    }

    #[test]
    fn byte_queue_rewinds_and_releases() {
        let mut b = ByteQueue::default();
        b.tail().extend_from_slice(&[0; 10_000]);
        b.consume(6000);
        assert_eq!(b.len(), 4000);
        b.consume(4000);
        assert!(b.is_empty());
        assert_eq!(b.capacity(), 0);
        b.tail().extend_from_slice(&[0; 100]);
        b.consume(100);
        assert!(b.capacity() >= 100 && b.capacity() <= KEEP_BYTES);
    }
}

//! The io_uring data plane (`--runtime uring`, cargo feature `uring`): a measured
//! experiment, not the default (see the README's "io_uring data plane").
//!
//! Owns: running a thread on a tokio-uring runtime ([`block_on`]), and the call sockets on
//! it: after the upgrade or the agent's TCP connect (both still through tokio's epoll
//! sockets, hyper and fastwebsockets), the socket moves to io_uring ([`Stream::from_tokio`]),
//! and every later read and write of that socket is an io_uring operation. tokio-uring
//! submits the operations of all the thread's calls in one `io_uring_enter` when the thread
//! parks, so the per-frame `recvfrom`/`sendto` system calls of the epoll path go away.
//!
//! What tokio-uring 0.5 carries and what not, which is why this is an adapter: its
//! `TcpStream` has owned-buffer `read`/`write` futures but no `AsyncRead`/`AsyncWrite`, and
//! is `!Send`. [`ReadHalf`] and [`WriteHalf`] keep one operation in flight each, hold its
//! buffer, and expose tokio's traits, so our framing (`ws`), rustls (tokio-rustls over a
//! [`Stream`]) and the call driver run unchanged. Each operation is one boxed future, and
//! received bytes are copied once from the operation's buffer into the framing's buffer.
//! tokio-uring implements no multishot receive, so each read is one submission.
//!
//! `Send`: the call task must be `Send` (the relay's task tracker), and tokio-uring's
//! sockets are not. The halves are created on a uring thread's current-thread runtime,
//! whose tasks never move. Every poll checks that it runs on the creating thread (an error
//! otherwise) and a drop on another thread leaks the socket instead of touching its
//! reference counts: the `Rc`s inside are only ever used on their own thread.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of each socket's read operation buffer, held for the socket's life (one ~400-byte
/// Twilio frame or agent audio event fits; a larger message takes several reads).
pub const READ_OP_BYTES: usize = 1536;

/// Most bytes one write operation takes from the framing's output buffer.
pub const WRITE_OP_BYTES: usize = 64 * 1024;

/// A write buffer grown past this by a burst is released once written.
const WRITE_KEEP_BYTES: usize = 4096;

/// Submission queue entries per thread's ring (the completion queue is twice that).
pub const RING_ENTRIES: u32 = 1024;

thread_local! {
    /// Whether this thread runs a tokio-uring runtime (set by [`block_on`]).
    static ON_URING: Cell<bool> = const { Cell::new(false) };
    /// This thread's number, for the halves' owner check (never reused, unlike addresses).
    static THREAD_ID: u64 = NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed);
}

static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

fn thread_id() -> u64 {
    // 0 only during this thread's teardown: matches no owner, so nothing is touched.
    THREAD_ID.try_with(|id| *id).unwrap_or(0)
}

/// Whether this thread runs on io_uring: call sockets made here move to it.
pub fn active() -> bool {
    ON_URING.with(Cell::get)
}

/// Runs `f` to completion on a new tokio-uring runtime on this thread ([`RING_ENTRIES`]
/// submission entries). tokio's timers and epoll sockets work inside it as usual.
///
/// The ring is set up with `IORING_SETUP_COOP_TASKRUN` and `IORING_SETUP_SINGLE_ISSUER`
/// (io_uring_setup(2)): completions are not pushed into the thread by an interrupt while it
/// runs, and only this thread submits. Measured in the gateway shape, 150 calls: 9.2 µs per
/// relayed frame with them, 12.0 µs without (the profile without them: 13 % of the relay's
/// samples in `irqentry_exit_to_user_mode` running task work, 16 % in spinlocks).
/// `IORING_SETUP_DEFER_TASKRUN` does not work with tokio-uring, which waits for completions
/// through epoll on the ring's descriptor: the deferred work never ran and the calls
/// stalled. Kernels without the two flags get the ring without them.
///
/// # Errors
/// The ring could not be set up (io_uring disabled by `kernel.io_uring_disabled` or a
/// seccomp filter, or the memory lock limit).
pub fn block_on<F: Future>(f: F) -> io::Result<F::Output> {
    let mut urb = tokio_uring::uring_builder();
    urb.setup_coop_taskrun().setup_single_issuer();
    let rt = match tokio_uring::Runtime::new(
        tokio_uring::builder()
            .entries(RING_ENTRIES)
            .uring_builder(&urb),
    ) {
        Ok(rt) => rt,
        // Kernels before 6.0 refuse the flags (EINVAL): the ring without them.
        Err(e) if e.raw_os_error() == Some(libc_einval()) => {
            tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES))?
        }
        Err(e) => return Err(e),
    };
    ON_URING.with(|c| c.set(true));
    let out = rt.block_on(f);
    ON_URING.with(|c| c.set(false));
    Ok(out)
}

/// `EINVAL` (22 on Linux), what `io_uring_setup(2)` answers for flags the kernel lacks.
const fn libc_einval() -> i32 {
    22
}

fn off_thread() -> io::Error {
    io::Error::other("io_uring socket used off the thread that made it")
}

type Op = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;

struct ReadState {
    stream: Rc<tokio_uring::net::TcpStream>,
    /// The last completed read's bytes; `buf[pos..]` not yet handed out.
    buf: Vec<u8>,
    pos: usize,
    op: Option<Op>,
}

struct WriteState {
    stream: Rc<tokio_uring::net::TcpStream>,
    /// The idle buffer (while no write is in flight).
    buf: Vec<u8>,
    op: Option<Op>,
    /// The write in flight was polled with a task's waker (a `poll_write` or shutdown is
    /// waiting for it): a flush must not replace that waker with a no-op one.
    waited: bool,
}

/// The read half of an io_uring socket: one read operation in flight at a time, its bytes
/// handed out through [`AsyncRead`]. Dropping it with a read in flight discards what that
/// read brings (tokio-uring keeps the buffer until the kernel is done with it); the socket
/// is being closed then anyway.
pub struct ReadHalf {
    owner: u64,
    /// `None` only once dropped.
    state: Option<ReadState>,
}

/// The write half of an io_uring socket. [`AsyncWrite::poll_write`] copies the bytes into
/// the write operation's buffer and submits it; it returns `Pending` while the previous
/// write is in flight (back-pressure from a full socket). [`AsyncWrite::poll_flush`] is
/// `Ready` once the bytes are with the ring: it does not wait for the write's completion
/// (that would cost the task a wake-up per write, and a writer that keeps its bytes until
/// a flush completes would never release them under steady traffic), but takes a completed
/// write's result: a short write's rest is submitted, an error returned. A write's error
/// is otherwise returned by the next write, flush or shutdown; shutdown waits for the last
/// write. Not carried: a write cut short by a full socket after the last flush, on a half
/// then dropped (the end of a call whose peer stopped reading), loses its rest; the epoll
/// path's flush would wait for it, up to the close timeout.
pub struct WriteHalf {
    owner: u64,
    /// `None` only once dropped.
    state: Option<WriteState>,
}

// SAFETY: the `Rc`s and `!Send` futures inside are only polled or dropped on the thread
// that made them: every method reaches the state through `state()`, which checks `owner`
// against the current thread, and a drop elsewhere forgets the state (see the module docs).
unsafe impl Send for ReadHalf {}
// SAFETY: as for `ReadHalf`.
unsafe impl Send for WriteHalf {}

impl Drop for ReadHalf {
    fn drop(&mut self) {
        if thread_id() != self.owner {
            std::mem::forget(self.state.take());
        }
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        if thread_id() != self.owner {
            std::mem::forget(self.state.take());
        }
    }
}

impl ReadHalf {
    fn state(&mut self) -> io::Result<&mut ReadState> {
        match self.state.as_mut() {
            Some(s) if thread_id() == self.owner => Ok(s),
            _ => Err(off_thread()),
        }
    }
}

impl WriteHalf {
    fn state(&mut self) -> io::Result<&mut WriteState> {
        match self.state.as_mut() {
            Some(s) if thread_id() == self.owner => Ok(s),
            _ => Err(off_thread()),
        }
    }
}

impl ReadState {
    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.remaining().min(self.buf.len() - self.pos);
                out.put_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            match self.op.as_mut() {
                Some(op) => {
                    let (res, buf) = ready!(op.as_mut().poll(cx));
                    self.op = None;
                    self.buf = buf;
                    self.pos = 0;
                    match res {
                        // End of stream: nothing put, as tokio's contract says.
                        Ok(0) => return Poll::Ready(Ok(())),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.clear(),
                        Err(e) => {
                            self.buf.clear();
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                None => {
                    let mut buf = std::mem::take(&mut self.buf);
                    buf.clear();
                    buf.reserve_exact(READ_OP_BYTES);
                    self.pos = 0;
                    let stream = self.stream.clone();
                    // The read fills `buf[..capacity]` and sets its length.
                    self.op = Some(Box::pin(async move { stream.read(buf).await }));
                }
            }
        }
    }
}

impl WriteState {
    /// Waits until no write is in flight (re-submitting the rest of a partial write).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(op) = self.op.as_mut() {
            let Poll::Ready((res, mut buf)) = op.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.op = None;
            self.waited = false;
            match res {
                Ok(n) if n >= buf.len() => {}
                Ok(0) => {
                    self.idle(buf);
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    buf.drain(..n);
                    self.submit(buf);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.submit(buf);
                    continue;
                }
                Err(e) => {
                    self.idle(buf);
                    return Poll::Ready(Err(e));
                }
            }
            self.idle(buf);
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until no write is in flight, as the task `cx` wakes.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = self.poll_idle(cx);
        self.waited = polled.is_pending();
        polled
    }

    /// Takes a completed write's result without waiting for one in flight. Polled with a
    /// no-op waker, so a later completion wakes nobody, unless a task already waits for
    /// that write: then with `cx`, so its waker stays registered.
    fn handed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let polled = if self.waited {
            self.poll_wait(cx)
        } else {
            self.poll_idle(&mut Context::from_waker(std::task::Waker::noop()))
        };
        match polled {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    fn idle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() > WRITE_KEEP_BYTES {
            buf = Vec::new();
        }
        self.buf = buf;
    }

    fn submit(&mut self, buf: Vec<u8>) {
        let stream = self.stream.clone();
        self.op = Some(Box::pin(async move { stream.write(buf).submit().await }));
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_wait(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(WRITE_OP_BYTES);
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(&data[..n]);
        self.submit(buf);
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().state() {
            Ok(s) => s.poll_read(cx, out),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().state() {
            Ok(s) => s.poll_write(cx, data),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().state() {
            Ok(s) => Poll::Ready(s.handed(cx)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = match self.get_mut().state() {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        ready!(s.poll_wait(cx))?;
        match s.stream.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// A TCP socket on io_uring, both halves ([`AsyncRead`] + [`AsyncWrite`]); split it with
/// [`Stream::into_split`].
pub struct Stream {
    read: ReadHalf,
    write: WriteHalf,
}

impl Stream {
    /// Moves a connected tokio socket to this thread's io_uring. The socket is put back in
    /// blocking mode: io_uring then waits for readiness itself instead of completing a
    /// read with `EAGAIN`; nothing else reads it.
    ///
    /// # Errors
    /// An error if this thread is not on io_uring ([`active`]); the socket's own error from
    /// deregistering it.
    pub fn from_tokio(tcp: tokio::net::TcpStream) -> io::Result<Stream> {
        if !active() {
            return Err(io::Error::other("this thread does not run io_uring"));
        }
        let std = tcp.into_std()?;
        std.set_nonblocking(false)?;
        let stream = Rc::new(tokio_uring::net::TcpStream::from_std(std));
        let owner = thread_id();
        Ok(Stream {
            read: ReadHalf {
                owner,
                state: Some(ReadState {
                    stream: stream.clone(),
                    buf: Vec::new(),
                    pos: 0,
                    op: None,
                }),
            },
            write: WriteHalf {
                owner,
                state: Some(WriteState {
                    stream,
                    buf: Vec::new(),
                    op: None,
                    waited: false,
                }),
            },
        })
    }

    /// The two halves, each usable by its own owner within the call task.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, out)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Runs a test body on a uring runtime; the `uring` tests need io_uring and fail without.
    fn on_uring<T>(body: impl Future<Output = io::Result<T>>) -> T {
        match block_on(body) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("test I/O failed: {e}"),
            Err(e) => panic!("io_uring unavailable (the `uring` tests need it): {e}"),
        }
    }

    /// A loopback connection: our end on io_uring, the peer's a tokio socket.
    async fn loopback() -> io::Result<(Stream, tokio::net::TcpStream)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tcp = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (peer, _) = listener.accept().await?;
        Ok((Stream::from_tokio(tcp)?, peer))
    }

    /// A loopback echo through io_uring halves: bytes arrive in order and complete, and the
    /// write half's shutdown reaches the peer as end of stream.
    #[test]
    fn loopback_round_trip_and_shutdown() {
        let (n, same) = on_uring(async {
            let (ours, mut s) = loopback().await?;
            let peer = tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await?;
                s.write_all(&got).await?;
                io::Result::Ok(got.len())
            });
            let (mut r, mut w) = ours.into_split();
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            w.write_all(&data).await?;
            w.shutdown().await?;
            let mut back = Vec::new();
            r.read_to_end(&mut back).await?;
            let echoed = peer.await.map_err(io::Error::other)??;
            io::Result::Ok((echoed, back == data))
        });
        assert_eq!(n, 200_000);
        assert!(same, "echoed bytes differ");
    }

    /// Polling a half on another thread is an error, not a use of its `Rc`s, and dropping
    /// it there leaks instead of touching them.
    #[test]
    fn off_thread_use_is_refused() {
        let both = on_uring(async {
            let (ours, _peer) = loopback().await?;
            let (r, w) = ours.into_split();
            let res = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let (mut r, mut w) = (r, w);
                let read = rt.block_on(async { r.read(&mut [0u8; 8]).await });
                let write = rt.block_on(async { w.write(b"x").await });
                io::Result::Ok((read.is_err(), write.is_err()))
            })
            .join()
            .map_err(|_| io::Error::other("thread panicked"))??;
            io::Result::Ok(res)
        });
        assert_eq!(both, (true, true));
    }

    /// With the peer not reading, writes fill the socket until a write stays in flight and
    /// the next `poll_write` is `Pending` (back-pressure); `poll_flush` is `Ready` all the
    /// same (the bytes are with the ring). Once the peer reads, shutdown waits for the last
    /// write and every byte arrives, in order.
    #[test]
    fn flush_hands_off_and_shutdown_completes_under_back_pressure() {
        let (blocked, flushed, same, sent) = on_uring(async {
            let (ours, mut peer) = loopback().await?;
            let (_r, mut w) = ours.into_split();
            let chunk: Vec<u8> = (0..WRITE_OP_BYTES as u32)
                .map(|i| (i % 253) as u8)
                .collect();
            let mut sent = 0usize;
            let mut blocked = false;
            for _ in 0..4096 {
                let polled =
                    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut w).poll_write(cx, &chunk)))
                        .await;
                match polled {
                    Poll::Ready(n) => sent += n?,
                    Poll::Pending => {
                        blocked = true;
                        break;
                    }
                }
                // Let the ring submit and complete what it can.
                tokio::task::yield_now().await;
            }
            let flushed =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut w).poll_flush(cx))).await;
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                peer.read_to_end(&mut got).await?;
                io::Result::Ok(got)
            });
            w.shutdown().await?;
            let got = reader.await.map_err(io::Error::other)??;
            let expected: Vec<u8> = chunk.iter().copied().cycle().take(sent).collect();
            io::Result::Ok((blocked, flushed.is_ready(), got == expected, sent))
        });
        assert!(blocked, "the socket never filled ({sent} bytes taken)");
        assert!(flushed, "poll_flush waited for the write in flight");
        assert!(same, "the peer did not get the {sent} bytes in order");
    }

    /// A task waiting for a write in flight (its `poll_write` was `Pending`) is still woken
    /// when the write completes, even if a flush was polled in between: the flush does not
    /// replace the waiting task's waker with its no-op one.
    #[test]
    fn a_flush_keeps_the_waker_of_a_pending_write() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (pending, flushed, woken) = on_uring(async {
            let (ours, mut peer) = loopback().await?;
            let (_r, mut w) = ours.into_split();
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = std::task::Waker::from(count.clone());
            let mut cx = Context::from_waker(&waker);
            let chunk = vec![5u8; WRITE_OP_BYTES];
            let mut pending = false;
            for _ in 0..4096 {
                match Pin::new(&mut w).poll_write(&mut cx, &chunk) {
                    Poll::Ready(n) => {
                        n?;
                    }
                    Poll::Pending => {
                        pending = true;
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
            let woken_before = count.0.load(Ordering::SeqCst);
            let flushed = Pin::new(&mut w).poll_flush(&mut cx).is_ready();
            let drain = tokio::spawn(async move {
                let mut sink = vec![0u8; 1 << 16];
                while peer.read(&mut sink).await? > 0 {}
                io::Result::Ok(())
            });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while count.0.load(Ordering::SeqCst) == woken_before
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let woken = count.0.load(Ordering::SeqCst) > woken_before;
            drop(w);
            drain.abort();
            io::Result::Ok((pending, flushed, woken))
        });
        assert!(pending, "the socket never filled");
        assert!(flushed);
        assert!(
            woken,
            "the writing task was never woken after its write completed"
        );
    }
}

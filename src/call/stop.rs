//! [`PollWhenWoken`]: a future the driver polls on every loop turn (the call's stop signal)
//! that costs an atomic swap and a waker registration per turn instead of what polling the
//! inner future costs. tokio-util's `WaitForCancellationFuture` locks the token's mutex on
//! every poll (`is_cancelled`, then the `Notified` underneath), and the driver's `select!`
//! polls it on every turn that ends pending, which is most turns: once per frame.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Set when the inner future wakes its waker; wakes the task that polls the wrapper.
#[derive(Debug)]
struct Woken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls `F` only on its first poll and after `F` woke the waker it was given; every other
/// poll returns `Pending` at once. Correct for any future that wakes its waker when it can
/// make progress (the `Future` contract): the wrapper registers the polling task's waker
/// before it looks at the flag, so a wake between the two is not lost.
///
/// One allocation for the inner future and one for the flag, at creation. Like any future,
/// it must not be polled after it returned `Ready`.
pub struct PollWhenWoken<F> {
    inner: Pin<Box<F>>,
    flag: Arc<Woken>,
    waker: Waker,
}

impl<F: Future> PollWhenWoken<F> {
    /// Wraps `inner`; its first poll polls `inner`.
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Woken {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        PollWhenWoken {
            inner: Box::pin(inner),
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for PollWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        this.inner.as_mut().poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// A token's `cancelled()` future that counts its polls.
    struct Counting {
        polls: Arc<AtomicUsize>,
        inner: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    }

    impl Future for Counting {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.inner.as_mut().poll(cx)
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_when_it_woke() {
        let polls = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let mut f = std::pin::pin!(PollWhenWoken::new(Counting {
            polls: polls.clone(),
            inner: Box::pin(token.clone().cancelled_owned()),
        }));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1000 {
            assert!(f.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "only the first poll");
        token.cancel();
        assert!(f.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_task_parked_on_it_wakes_when_the_token_is_cancelled() {
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            let mut stopped = std::pin::pin!(PollWhenWoken::new(stop.cancelled_owned()));
            let mut turns = 0u32;
            loop {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(Duration::from_millis(1)), if turns < 20 => turns += 1,
                    _ = &mut stopped => return turns,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
        // Polled on every turn of the sleeps, then parked on the stop branch alone.
        let turns = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken by the cancel")
            .unwrap();
        assert!(turns > 0);
    }
}

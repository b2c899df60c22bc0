//! Patience for what becomes true across tasks and processes: poll until a condition holds or a
//! deadline passes, then fail naming what was awaited (and, for [`eventually_eq`], the expected
//! value and the last one seen). Never a bare sleep as the assertion.
//!
//! Every wait here runs the one loop, [`poll`]; they differ only in what they poll for and how
//! they fail.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Time between two polls.
pub const POLL: Duration = Duration::from_millis(20);

/// [`poll_every`] at the usual pace, [`POLL`].
pub async fn poll<T, L, F, Fut>(within: Duration, probe: F) -> Result<T, L>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, L>>,
{
    poll_every(within, POLL, probe).await
}

/// The loop: calls `probe` every `every` until it answers `Ok`, and returns that; once `within`
/// has passed, returns the last `Err` (what was seen instead).
pub async fn poll_every<T, L, F, Fut>(within: Duration, every: Duration, mut probe: F) -> Result<T, L>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, L>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `probe` until it returns `expected`, and returns it; panics with `what`, the expected
/// value and the last value seen if that does not happen within `within`.
pub async fn eventually_eq<T, F, Fut>(within: Duration, what: impl Display, expected: T, mut probe: F) -> T
where
    T: PartialEq + Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let outcome = poll(within, || {
        let seen = probe();
        let expected = &expected;
        async move {
            let seen = seen.await;
            if seen == *expected {
                Ok(seen)
            } else {
                Err(seen)
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|seen| {
        panic!("still not true after {within:?}: {what}: expected {expected:?}, last saw {seen:?}")
    })
}

/// Polls `probe` until it returns `Some`, and returns that; panics with `what` if it does not
/// within `within`.
pub async fn eventually_some<T, F, Fut>(within: Duration, what: impl Display, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let outcome = poll(within, || {
        let check = probe();
        async move { check.await.ok_or(()) }
    })
    .await;
    outcome.unwrap_or_else(|()| panic!("still not true after {within:?}: {what}"))
}

/// Polls `condition` until it returns true; panics with `what` if it does not within `within`.
pub async fn eventually<F, Fut>(within: Duration, what: impl Display, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(within, what, move || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Polls `condition` until it returns true (true) or `within` passes (false): for a caller that
/// asserts with its own message, or has something to do before it asserts.
pub async fn holds_within<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let outcome = poll(within, || {
        let check = condition();
        async move { check.await.then_some(()).ok_or(()) }
    })
    .await;
    outcome.is_ok()
}

/// [`eventually_some`] for a synchronous test whose probe blocks (runs a command, reads a
/// socket), polled every `every`: the same loop, on a runtime of its own.
pub fn eventually_some_blocking<T>(
    within: Duration,
    every: Duration,
    what: impl Display,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let outcome = runtime.block_on(poll_every(within, every, || {
        let seen = probe().ok_or(());
        async move { seen }
    }));
    outcome.unwrap_or_else(|()| panic!("still not true after {within:?}: {what}"))
}

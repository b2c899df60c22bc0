//! Patience for what becomes true across processes: poll a condition until it holds or a
//! deadline passes, then fail naming what was awaited. Never a bare sleep as the assertion.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Time between two polls.
pub const POLL: Duration = Duration::from_millis(50);

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

/// Polls `probe` until it returns `Some`, and returns that; panics with `what` if it does not
/// within `within`.
pub async fn eventually_some<T, F, Fut>(within: Duration, what: impl Display, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("still not true after {within:?}: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` until it returns `expected`, and returns it; panics with `what`, the expected
/// value and the last value seen if that does not happen within `within`.
pub async fn eventually_eq<T, F, Fut>(within: Duration, what: impl Display, expected: T, mut probe: F) -> T
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let seen = probe().await;
        if seen == expected {
            return seen;
        }
        if Instant::now() >= deadline {
            panic!("still not true after {within:?}: {what}: expected {expected:?}, last saw {seen:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

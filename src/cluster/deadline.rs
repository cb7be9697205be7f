//! The deadline of the request a scheduler call serves. The HTTP layer
//! sets it around a request's execution (a tokio task-local); every call
//! takes the shorter of its own timeout and what is left of it, so no call
//! outlives its request.

use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as its request deadline.
pub async fn scope<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// Like [`scope`], doing nothing for `None`.
pub async fn scope_opt<F: Future>(deadline: Option<Instant>, fut: F) -> F::Output {
    match deadline {
        Some(deadline) => DEADLINE.scope(deadline, fut).await,
        None => fut.await,
    }
}

/// The deadline of the current request, if one was set.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Time left before the current request's deadline (zero once past it),
/// or `None` outside a request.
pub fn remaining() -> Option<Duration> {
    current().map(|d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn visible_inside_the_scope_only() {
        assert_eq!(remaining(), None);
        let deadline = Instant::now() + Duration::from_secs(2);
        let left = scope(deadline, async { remaining() }).await.unwrap();
        assert!(left <= Duration::from_secs(2) && left > Duration::from_secs(1));
        let past = scope(Instant::now(), async { remaining() }).await;
        assert_eq!(past, Some(Duration::ZERO));
    }
}

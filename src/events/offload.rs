//! A runtime of its own for the watcher's heavy work. A host-list poll
//! decodes and diffs every host of a cluster (milliseconds for 10k hosts);
//! on the request runtime that stalls whichever worker polls it, and every
//! request queued behind it waits. Here it runs on one dedicated thread, so
//! the watcher can fall behind under load but never holds a request worker.

use std::future::Future;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// The watcher's thread: a single-threaded runtime that lives until `stop`.
#[derive(Clone)]
pub(crate) struct Offload {
    handle: Handle,
}

/// Why offloaded work did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OffloadError {
    #[error("the watcher's runtime could not start: {0}")]
    Start(std::io::Error),
    #[error("the watcher's runtime stopped before the work finished")]
    Stopped,
}

impl Offload {
    /// Starts the thread; it ends, dropping what still runs there, once
    /// `stop` is cancelled.
    pub(crate) fn start(stop: CancellationToken) -> Result<Self, OffloadError> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name("dfgraph-watch")
            .build()
            .map_err(OffloadError::Start)?;
        let handle = runtime.handle().clone();
        thread::Builder::new()
            .name("dfgraph-watch".into())
            .spawn(move || runtime.block_on(stop.cancelled()))
            .map_err(OffloadError::Start)?;
        Ok(Self { handle })
    }

    /// Runs `work` on the watcher's thread and waits for its result.
    pub(crate) async fn run<F>(&self, work: F) -> Result<F::Output, OffloadError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(work)
            .await
            .map_err(|_| OffloadError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_watchers_thread_until_stop() {
        let stop = CancellationToken::new();
        let offload = Offload::start(stop.clone()).expect("runtime starts");
        let name = offload
            .run(async { thread::current().name().map(str::to_owned) })
            .await
            .expect("runs");
        assert_eq!(name.as_deref(), Some("dfgraph-watch"));

        stop.cancel();
        // Work handed over once the thread has stopped fails; it does not hang.
        let mut refused = false;
        for _ in 0..100 {
            if offload.run(async {}).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(refused, "work after stop was not refused");
    }
}

//! Waiting between retries of work that must eventually succeed (a produce,
//! a Redis write, a start-up step), with a growing pause, until the caller
//! is told to stop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Longest pause between two tries.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// The process is stopping: work that was not finished must be left for the
/// next owner of its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopping;

/// A pause that doubles after each use, up to 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// Starts with a pause of `first`.
    pub fn new(first: Duration) -> Self {
        Self { delay: first }
    }

    /// Sleeps for the current pause and doubles it for next time; returns
    /// early with [`Stopping`] when `stop` fires.
    pub async fn pause(&mut self, stop: &CancellationToken) -> Result<(), Stopping> {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        tokio::select! {
            _ = stop.cancelled() => Err(Stopping),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_the_cap_and_stop_early() {
        let stop = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_millis(1500));
        for expected in [1500, 3000, 5000, 5000] {
            let started = tokio::time::Instant::now();
            backoff.pause(&stop).await.unwrap();
            assert_eq!(started.elapsed(), Duration::from_millis(expected));
        }
        stop.cancel();
        assert_eq!(backoff.pause(&stop).await, Err(Stopping));
    }
}

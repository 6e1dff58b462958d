//! One retry schedule for everything that waits on something outside the
//! agent to come back (containerd after a restart, the first bootstrap
//! peer): quick at first, since most outages are a restart, then backing
//! off to a pace that costs nothing while a node stays down.

use std::time::Duration;

const STEPS: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Failures in a row, and how long to wait after them.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: usize,
}

impl Backoff {
    /// The wait after the failures so far.
    pub fn wait(&self) -> Duration {
        STEPS[self.failures.min(STEPS.len() - 1)]
    }

    /// Counts a failure, and returns the wait after it.
    pub fn failed(&mut self) -> Duration {
        let wait = self.wait();
        self.failures += 1;
        wait
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_a_ceiling_and_start_over_after_a_success() {
        let mut backoff = Backoff::default();
        let waits: Vec<_> = (0..7).map(|_| backoff.failed()).collect();
        assert_eq!(waits[..5], STEPS);
        assert_eq!(waits[5..], [STEPS[4], STEPS[4]]);
        backoff.reset();
        assert_eq!(backoff.wait(), STEPS[0]);
    }
}

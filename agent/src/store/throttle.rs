//! A bound on the work that misses can cause. A request for a tag or a
//! manifest the store has not seen makes it look again (containerd's image
//! list, a layout's `index.json`), and a client can send such requests as
//! fast as it likes; so a miss looks again at most once per interval, and
//! in between a miss stays a miss.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a miss may make a store look at everything again.
pub const MISS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
        }
    }

    /// True, and the clock restarted, when the interval has passed since
    /// the last time this said true.
    pub fn ready(&self) -> bool {
        let mut last = self.last.lock().expect("throttle clock poisoned");
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval() {
        let throttle = Throttle::new(Duration::from_millis(100));
        assert!(throttle.ready());
        assert!(!throttle.ready());
        std::thread::sleep(Duration::from_millis(120));
        assert!(throttle.ready());
        assert!(!throttle.ready());
    }
}

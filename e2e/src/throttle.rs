//! Slowing a process down from outside, so that a fault can land while a
//! transfer is surely in progress.
//!
//! Loopback moves a 256 MiB layer in well under a second, too fast to act
//! "mid-pull" by polling. Stopping the receiving containerd for most of
//! each period (SIGSTOP, SIGCONT) makes its reads, and by back-pressure the
//! whole chain of senders, crawl, without touching the code under test or
//! the host's network settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Time the process runs, then is stopped, in each period.
const RUN: Duration = Duration::from_millis(10);
const STOP: Duration = Duration::from_millis(40);

/// Throttles a process until dropped; dropping always leaves it running.
///
/// A thread of its own rather than a task: dropping joins it, so no SIGSTOP
/// can follow the final SIGCONT.
pub struct Throttle {
    pid: Pid,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Throttle {
    pub fn start(pid: u32) -> Self {
        let pid = Pid::from_raw(pid as i32);
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let done = done.clone();
            move || {
                while !done.load(Ordering::Relaxed) {
                    if kill(pid, Signal::SIGSTOP).is_err() {
                        return;
                    }
                    std::thread::sleep(STOP);
                    if kill(pid, Signal::SIGCONT).is_err() {
                        return;
                    }
                    std::thread::sleep(RUN);
                }
            }
        });
        Self {
            pid,
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = kill(self.pid, Signal::SIGCONT);
    }
}

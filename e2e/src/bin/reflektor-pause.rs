//! The pod sandbox's process, for the project's own sandbox ("pause")
//! image: the harness runs pods through each node's CRI, and no registry it
//! can reach carries Kubernetes' pause image. As PID 1 of the sandbox it
//! waits, reaps any child that is handed to it, and exits 0 on SIGTERM or
//! SIGINT, which is all Kubernetes' pause does.

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() -> ExitCode {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    if let Err(error) = signals.thread_block() {
        eprintln!("reflektor-pause: cannot block signals: {error}");
        return ExitCode::FAILURE;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                // Reap every child that has ended, without blocking.
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(_) => return ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("reflektor-pause: waiting for a signal failed: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
}

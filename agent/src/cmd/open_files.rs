//! The agent's open-file limit. Each connection holds a socket and, while
//! a blob streams, the blob's file: two descriptors. Init systems commonly
//! start services with a soft limit of 1024 (systemd's default) under a far
//! higher hard one, which is fewer than `--max-connections` allows; at the
//! limit, accept(2) fails and the server backs off, so pulls stall instead
//! of failing (700 concurrent GETs took 35.5 s at 1024, 12.6 s once raised,
//! in `just load`). Go's runtime raises the soft limit to the hard one at
//! start, which Spegel gets for free; this does the same.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors a connection can hold at once: its socket and a blob file.
const PER_CONNECTION: u64 = 2;
/// Listeners, the containerd and DHT sockets, the log, the data directory.
const BASE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard one, and warns when even
/// that is below what `max_connections` connections can need.
pub fn raise(max_connections: usize) -> Result<(), rustix::io::Errno> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let (soft, hard) = (current.unwrap_or(u64::MAX), maximum.unwrap_or(u64::MAX));
    if soft < hard {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        )?;
        tracing::debug!(from = soft, to = hard, "raised the open-file limit");
    }
    let needed = BASE + PER_CONNECTION * max_connections as u64;
    if hard < needed {
        tracing::warn!(
            limit = hard,
            needed,
            max_connections,
            "the open-file limit is below what --max-connections can need (a socket and a blob \
             file per connection); raise the hard limit (LimitNOFILE= in a systemd unit, \
             `ulimit -Hn` in a shell) or lower --max-connections"
        );
    }
    Ok(())
}

//! Listen addresses as Spegel writes them.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

/// Spegel's address syntax: `:5000` means every interface (IPv4 here;
/// `[::]:5000` asks for dual-stack IPv6), else an IP and a port.
pub fn listen_addr(addr: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    match addr.strip_prefix(':') {
        Some(port) => {
            let port: u16 = port.parse().with_context(|| {
                format!("{flag} {addr:?}: expected \":PORT\" or \"IP:PORT\", e.g. \":5000\"")
            })?;
            Ok(SocketAddr::from(([0u8; 4], port)))
        }
        None => addr.parse().with_context(|| {
            format!(
                "{flag} {addr:?}: expected \":PORT\" or \"IP:PORT\", e.g. \"127.0.0.1:5000\" \
                 or \"[::1]:5000\""
            )
        }),
    }
}

pub async fn bind(addr: &str, flag: &str) -> anyhow::Result<TcpListener> {
    let addr_parsed = listen_addr(addr, flag)?;
    TcpListener::bind(addr_parsed).await.with_context(|| {
        format!("{flag} {addr:?}: cannot listen; is another process using the port?")
    })
}

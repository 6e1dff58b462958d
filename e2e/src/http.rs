//! The harness's HTTP client and port picker: one plain HTTP/1.1 exchange
//! per call on a fresh connection, so a test sees exactly what one request
//! got (the benchmarks' client is built on the same exchange), and loopback
//! ports chosen at random so that parallel tests never collide.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, header};
use hyper_util::rt::TokioIo;

/// Each exchange, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A port nobody listens on now on `ip`, handed out once per process.
///
/// Ports come from below the kernel's ephemeral range. A port the kernel
/// picked for `bind(0)` and we then released can be taken again by any
/// outgoing connection before the agent binds it (CI saw exactly that); ports
/// below the range are never picked for outgoing connections, and the set of
/// ports already handed out keeps this process's parallel tests apart.
pub fn free_port(ip: IpAddr) -> Result<SocketAddr> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let (low, high) = fixed_port_range();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let port = rand::random_range(low..high);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((ip, port)).is_ok() {
            handed_out.insert(port);
            return Ok(SocketAddr::new(ip, port));
        }
    }
    bail!("found no free port on {ip} in {low}..{high} after 200 tries; is something holding them?")
}

/// Ports the kernel never hands to outgoing connections: from 10000 up to
/// the start of `ip_local_port_range`.
fn fixed_port_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_start > 12000 {
        (10000, ephemeral_start)
    } else {
        // A host that made the ephemeral range start low: use the ports above it.
        (
            ephemeral_start.max(1024).saturating_add(30000).min(60000),
            65000,
        )
    }
}

/// Keeps a request's connection running while its response is read; the
/// connection ends when this is dropped.
pub struct Connection(tokio::task::JoinHandle<hyper::Result<()>>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `method path` with `headers` on a fresh HTTP/1.1 connection (Nagle
/// off) and returns the response head with its body still to be read: the
/// one exchange every harness and benchmark client is built on.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Response<Incoming>, Connection)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {addr}"))?;
    let connection = Connection(tokio::spawn(connection));
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    Ok((response, connection))
}

/// Sends `method path` with `headers` and collects the whole response.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response<Bytes>> {
    let exchange = async {
        let (response, _connection) = send(addr, method.clone(), path, headers).await?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("reading the body of {method} http://{addr}{path}"))?
            .to_bytes();
        anyhow::Ok(Response::from_parts(parts, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{method} http://{addr}{path} took over {REQUEST_TIMEOUT:?}"))?
}

/// A GET with an `Accept` header, the common case.
pub async fn get(addr: SocketAddr, path: &str, accept: &str) -> Result<Response<Bytes>> {
    request(addr, Method::GET, path, &[("accept", accept)]).await
}

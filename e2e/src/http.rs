//! The harness's HTTP client and port picker: one plain HTTP/1.1 exchange
//! per call on a fresh connection, so a test sees exactly what one request
//! got, and loopback ports chosen at random so that parallel tests never
//! collide.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, Response, body::Bytes, header};
use hyper_util::rt::TokioIo;

/// Each exchange, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A port nobody listens on now on `ip`. The caller's server binds it a
/// moment later, so callers retry if another process was quicker.
pub fn free_port(ip: IpAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0))
        .with_context(|| format!("binding {ip}:0 to find a free port"))?;
    listener
        .local_addr()
        .with_context(|| format!("reading the address of {ip}:0"))
}

/// Sends `method path` with `headers` and collects the whole response.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response<Bytes>> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {addr}"))?;
        let connection = tokio::spawn(connection);
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
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("reading the body of {method} http://{addr}{path}"))?
            .to_bytes();
        connection.abort();
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

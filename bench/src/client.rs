//! The one client every server is fetched with: HTTP/1.1 over a fresh
//! connection, the body counted and dropped frame by frame, so the client's
//! own cost is the same whichever server answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

/// What one fetch got.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub status: StatusCode,
    pub bytes: u64,
    pub took: Duration,
}

/// GETs (or HEADs) `path` from `addr`, with `range` as the Range header if
/// given, and reads the whole body. Fails on a status other than 200 or 206,
/// or a body shorter or longer than its Content-Length.
pub async fn fetch(
    addr: SocketAddr,
    method: Method,
    path: &str,
    range: Option<&str>,
) -> Result<Fetched> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {addr}"))?;
    let connection = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "*/*");
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await
        .with_context(|| format!("{method} {path} on {addr}"))?;
    let status = response.status();
    ensure!(
        status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT,
        "{method} {path} on {addr} answered {status}"
    );
    let length: Option<u64> = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("reading the body of {path} from {addr}"))?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        }
    }
    if method == Method::GET
        && let Some(length) = length
    {
        ensure!(
            bytes == length,
            "{path} from {addr}: {bytes} body bytes, Content-Length said {length}"
        );
    }
    connection.abort();
    Ok(Fetched {
        status,
        bytes,
        took: started.elapsed(),
    })
}

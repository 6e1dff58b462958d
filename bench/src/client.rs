//! The one client every server is fetched with: the harness's HTTP/1.1
//! exchange over a fresh connection, the body counted and dropped frame by
//! frame, so the client's own cost is the same whichever server answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode, header};
use reflektor_e2e::http;

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
    let mut headers = vec![("accept", "*/*")];
    if let Some(range) = range {
        headers.push(("range", range));
    }
    let (response, _connection) = http::send(addr, method.clone(), path, &headers).await?;
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
    Ok(Fetched {
        status,
        bytes,
        took: started.elapsed(),
    })
}

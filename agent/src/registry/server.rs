//! The registry's HTTP/1.1 server. We own the connections instead of handing
//! them to hyper because hyper writes every body byte from user space: it has
//! no way to send a file with `sendfile(2)`, and blob bodies are nearly all
//! of what a mirror sends. Every request still goes through the axum router,
//! so handlers stay plain and testable; a blob response carries a [`SendFile`]
//! extension, and this server sends that file range straight from the page
//! cache to the socket. Other bodies are written as they stream.
//!
//! Scope: what containerd, skopeo and curl send to a pull-only registry.
//! Requests have no bodies (one that announces a body is answered and the
//! connection closed), responses carry `Content-Length` or, when the length
//! is not known up front, are chunked, and connections are kept alive
//! between requests.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, TryStreamExt};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::Route;
use super::limits::{Limit, LimitHits, ServerLimits};
use crate::metrics::{Metrics, Source};
use crate::store::ByteRange;

/// Real clients send a few dozen headers; more get 431, whatever the size.
const MAX_HEADERS: usize = 64;
/// How long a client may leave the socket full before it counts as gone:
/// a reader that stops must not hold a connection slot, a file and perhaps
/// a peer's connection forever.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// One `sendfile` call moves at most this much; the kernel's own cap is
/// just under 2 GiB.
const SENDFILE_CHUNK: usize = 0x7fff_f000;

/// A file range for the server to send with `sendfile(2)`. The handler also
/// gives the response an ordinary body that streams the same range, which
/// is what any other server (and `oneshot` in tests) will use.
#[derive(Debug, Clone)]
pub struct SendFile {
    file: Arc<std::fs::File>,
    range: ByteRange,
}

impl SendFile {
    pub fn new(file: std::fs::File, range: ByteRange) -> Self {
        Self {
            file: Arc::new(file),
            range,
        }
    }

    /// The same bytes as a stream, read lazily: nothing is read unless the
    /// response goes out through a server that ignores this extension.
    pub fn stream(&self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let file = Arc::clone(&self.file);
        let range = self.range;
        futures::stream::once(async move {
            let mut file = tokio::fs::File::from_std(file.try_clone()?);
            file.seek(io::SeekFrom::Start(range.start)).await?;
            Ok::<_, io::Error>(ReaderStream::new(file.take(range.len)))
        })
        .try_flatten()
    }
}

/// How long open connections get to finish their responses at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` is cancelled; connections
/// already open then finish their current response (for up to [`DRAIN`])
/// and close instead of waiting for another request.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    metrics: Arc<Metrics>,
    limits: ServerLimits,
    hits: Arc<LimitHits>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // A bound on connections, so a flood cannot exhaust file descriptors.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                hits.hit(
                    Limit::Connections,
                    "every connection slot is taken; new connections wait for one",
                );
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    permit = Arc::clone(&slots).acquire_owned() => permit.expect("never closed"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, the error repeats every
                    // 50 ms until one closes: counted, and logged rate-limited.
                    let out_of_files = [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE]
                        .iter()
                        .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()));
                    if out_of_files {
                        hits.hit(Limit::OpenFiles, &format!("accept failed: {error}"));
                    } else {
                        tracing::debug!(%error, "accept failed");
                    }
                    // Back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without it, a body's last short segment can wait for the
        // client's delayed ACK: 40 ms on a 1 MiB blob now and then (the
        // max latency in `just load` before this), as nginx's tcp_nodelay avoids.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "could not turn Nagle's algorithm off");
        }
        let connection = Connection {
            stream,
            buffer: BytesMut::with_capacity(4096),
            app: app.clone(),
            metrics: Arc::clone(&metrics),
            limits,
            hits: Arc::clone(&hits),
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            if let Err(error) = connection.run().await {
                tracing::debug!(%peer, %error, "connection ended");
            }
            drop(permit);
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still busy at shutdown; cutting them"
        );
    }
    Ok(())
}

struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    app: Router,
    metrics: Arc<Metrics>,
    limits: ServerLimits,
    hits: Arc<LimitHits>,
    shutdown: CancellationToken,
}

/// What reading a request head produced.
enum Head {
    Request {
        request: Box<Request<Body>>,
        keep_alive: bool,
    },
    /// The client closed the connection between requests.
    Closed,
    /// Not HTTP we can answer; respond with this status and close.
    Reject(axum::http::StatusCode, &'static str),
}

impl Connection {
    async fn run(mut self) -> io::Result<()> {
        let mut first = true;
        loop {
            let shutdown = self.shutdown.clone();
            // A kept-alive connection may idle until its next request
            // starts; from the first byte (or the accept), the head must be
            // whole within the header timeout, however slowly it trickles.
            if !first && self.buffer.is_empty() {
                let idle = self.limits.idle_timeout;
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    read = tokio::time::timeout(idle, self.stream.read_buf(&mut self.buffer)) => match read {
                        Ok(Ok(0)) => return Ok(()),
                        Ok(read) => { read?; }
                        Err(_) => {
                            self.hits.hit(Limit::IdleTimeout, "closed a connection idle for the idle timeout");
                            return Ok(());
                        }
                    },
                }
            }
            first = false;
            let head = tokio::select! {
                // Between requests, a shutdown simply closes the connection.
                () = shutdown.cancelled(), if self.buffer.is_empty() => return Ok(()),
                head = tokio::time::timeout(self.limits.header_timeout, self.read_head()) => match head {
                    Ok(head) => head?,
                    Err(_) => {
                        let peer = self.stream.peer_addr().map_or_else(|_| "-".to_owned(), |a| a.to_string());
                        self.hits.hit(
                            Limit::HeaderTimeout,
                            &format!("closed a connection from {peer} that sent no whole request head in time"),
                        );
                        return Ok(());
                    }
                },
            };
            let (request, keep_alive) = match head {
                Head::Closed => return Ok(()),
                Head::Reject(status, message) => {
                    self.write_error(status, message).await?;
                    return Ok(());
                }
                Head::Request {
                    request,
                    keep_alive,
                } => (*request, keep_alive),
            };
            let method = request.method().clone();
            let path =
                tracing::enabled!(tracing::Level::DEBUG).then(|| request.uri().path().to_owned());
            let started = std::time::Instant::now();
            self.metrics.in_flight.inc();
            let result = self.respond(request, keep_alive).await;
            self.metrics.in_flight.dec();
            let (route, status, bytes, source) = result?;
            self.metrics.record(route, &method, status, bytes, source);
            // One line per request, when asked for: the trace to follow a
            // pull by when the metrics only say that something failed.
            if let Some(path) = path {
                tracing::debug!(
                    %method,
                    path,
                    route,
                    status,
                    source = source.map_or("-", Source::label),
                    bytes,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "request"
                );
            }
            if !keep_alive || self.shutdown.is_cancelled() {
                return self.stream.shutdown().await;
            }
        }
    }

    async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if !self.buffer.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Request::new(&mut headers);
                match parsed.parse(&self.buffer) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = build_request(&parsed);
                        self.buffer.advance(len);
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Ok(Head::Reject(
                            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "too many request headers",
                        ));
                    }
                    Err(_) => {
                        return Ok(Head::Reject(
                            axum::http::StatusCode::BAD_REQUEST,
                            "malformed HTTP request",
                        ));
                    }
                }
                if self.buffer.len() >= self.limits.max_header_bytes {
                    self.hits.hit(
                        Limit::HeaderBytes,
                        "refused a request head over the size limit with 431",
                    );
                    return Ok(Head::Reject(
                        axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head too large",
                    ));
                }
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(Head::Closed)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Runs the router and writes its response; returns what metrics need.
    async fn respond(
        &mut self,
        request: Request<Body>,
        keep_alive: bool,
    ) -> io::Result<(&'static str, u16, u64, Option<Source>)> {
        let head_only = request.method() == Method::HEAD;
        let http10 = request.version() == Version::HTTP_10;
        let response: Response<Body> = match self.app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (mut parts, body) = response.into_parts();
        let route = parts.extensions.get::<Route>().map_or("other", |r| r.0);
        let source = parts.extensions.get::<Source>().copied();
        let status = parts.status.as_u16();
        let send_file = parts.extensions.remove::<SendFile>();
        if !keep_alive {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let sent = if head_only {
            self.write_head(parts.status, &parts.headers).await?;
            0
        } else if let Some(send_file) = send_file {
            self.write_head(parts.status, &parts.headers).await?;
            self.send_file(&send_file).await?
        } else if let Some(promised) = content_length(&parts.headers) {
            self.write_head(parts.status, &parts.headers).await?;
            self.write_body(body, promised).await?
        } else if let Some(exact) = axum::body::HttpBody::size_hint(&body).exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(exact));
            self.write_head(parts.status, &parts.headers).await?;
            self.write_body(body, exact).await?
        } else {
            // No length up front (a peer's chunked answer, say): streamed,
            // never gathered, so no body can make the agent buffer more
            // than one frame of it. HTTP/1.0 knows no chunks: its body ends
            // where the connection does, which for 1.0 it always does.
            let chunked = !http10;
            if chunked {
                parts.headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            self.write_head(parts.status, &parts.headers).await?;
            self.write_streamed(body, chunked).await?
        };
        Ok((route, status, sent, source))
    }

    async fn write_head(
        &mut self,
        status: axum::http::StatusCode,
        headers: &HeaderMap,
    ) -> io::Result<()> {
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        self.write_all(&head).await
    }

    /// `write_all` that gives up on a client that stopped reading.
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        stalled(self.stream.write_all(bytes)).await
    }

    /// Streams a body as its frames arrive. The length was promised in the
    /// head, so an error midway must end the connection: a truncated
    /// response is the only honest signal left.
    async fn write_body(&mut self, mut body: Body, promised: u64) -> io::Result<u64> {
        let mut sent = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(io::Error::other)?;
            if let Ok(data) = frame.into_data() {
                self.write_all(&data).await?;
                sent += data.len() as u64;
            }
        }
        if sent != promised {
            // The client would wait for the rest, or read the next response
            // as body bytes: closing is the only honest end.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the body ended after {sent} of {promised} promised bytes"),
            ));
        }
        Ok(sent)
    }

    /// A body of unknown length, frame by frame: as chunks (each frame, then
    /// the last, empty chunk), or bare for a connection that closes after
    /// it. A body that fails midway ends the connection without the last
    /// chunk, so the client cannot take what it got as whole.
    async fn write_streamed(&mut self, mut body: Body, chunked: bool) -> io::Result<u64> {
        let mut sent = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(io::Error::other)?;
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                if chunked {
                    self.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                        .await?;
                }
                self.write_all(&data).await?;
                if chunked {
                    self.write_all(b"\r\n").await?;
                }
                sent += data.len() as u64;
            }
        }
        if chunked {
            self.write_all(b"0\r\n\r\n").await?;
        }
        Ok(sent)
    }

    /// The zero-copy path: the kernel moves the range from the page cache to
    /// the socket, waiting for the socket to drain between calls.
    async fn send_file(&mut self, send_file: &SendFile) -> io::Result<u64> {
        let mut offset = send_file.range.start;
        let end = send_file.range.start + send_file.range.len;
        while offset < end {
            let want = usize::try_from(end - offset)
                .unwrap_or(usize::MAX)
                .min(SENDFILE_CHUNK);
            stalled(self.stream.writable()).await?;
            let socket = self.stream.as_fd();
            let file = send_file.file.as_fd();
            match self.stream.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(socket, file, Some(&mut offset), want).map_err(io::Error::from)
            }) {
                // The file is shorter than the store said: it changed under us.
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(send_file.range.len)
    }

    async fn write_error(
        &mut self,
        status: axum::http::StatusCode,
        message: &str,
    ) -> io::Result<()> {
        let code = if status == axum::http::StatusCode::BAD_REQUEST {
            "BAD_REQUEST"
        } else {
            "HEADERS_TOO_LARGE"
        };
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        self.write_head(status, &headers).await?;
        self.write_all(body.as_bytes()).await?;
        self.metrics.record(
            "other",
            &Method::GET,
            status.as_u16(),
            body.len() as u64,
            None,
        );
        self.stream.shutdown().await
    }
}

/// Waits for a write, up to [`WRITE_STALL`].
async fn stalled<T>(write: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(WRITE_STALL, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))?
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Turns a parsed head into a request for the router. A request that
/// announces a body is served, but the connection is closed after it rather
/// than read past a body we never wanted.
fn build_request(parsed: &httparse::Request<'_, '_>) -> Head {
    let bad = Head::Reject(
        axum::http::StatusCode::BAD_REQUEST,
        "malformed HTTP request",
    );
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return bad;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return bad;
    };
    let Ok(uri) = path.parse::<axum::http::Uri>() else {
        return bad;
    };
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut keep_alive = version == 1;
    for header in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return bad;
        };
        let announces_body = (name == header::CONTENT_LENGTH && value.as_bytes() != b"0")
            || name == header::TRANSFER_ENCODING;
        let asks_close = name == header::CONNECTION
            && value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        if announces_body || asks_close {
            keep_alive = false;
        }
        request.headers_mut().append(name, value);
    }
    Head::Request {
        request: Box::new(request),
        keep_alive,
    }
}

//! The registry's handlers through `oneshot`, over a real OCI layout store:
//! every case as GET and as HEAD, checking status, headers and body.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::auth::BasicAuth;
use crate::store::OciLayoutStore;
use crate::store::conformance::{Expected, write_layout};

struct Fixture {
    app: Router,
    expected: Expected,
    _dir: tempfile::TempDir,
}

async fn fixture(filter: Filter) -> Fixture {
    fixture_with_auth(filter, None).await
}

async fn fixture_with_auth(filter: Filter, auth: Option<BasicAuth>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let expected = write_layout(dir.path(), 3);
    let store = OciLayoutStore::open(dir.path()).await.unwrap();
    let app = router(Arc::new(AppState {
        store: Arc::new(store),
        filter,
        mirror: None,
        peers: None,
        auth,
    }));
    Fixture {
        app,
        expected,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

async fn call(app: &Router, method: Method, uri: &str, range: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The OCI error code in a JSON error body.
fn code(answer: &Answer) -> String {
    let body: serde_json::Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", answer.body));
    body["errors"][0]["code"].as_str().unwrap().to_owned()
}

/// Calls as GET and HEAD; checks HEAD has GET's status and headers and no body.
async fn both(app: &Router, uri: &str, range: Option<&str>) -> Answer {
    let get = call(app, Method::GET, uri, range).await;
    let head = call(app, Method::HEAD, uri, range).await;
    assert_eq!(head.status, get.status, "HEAD {uri}");
    for name in [
        "content-type",
        "content-length",
        "docker-content-digest",
        "content-range",
    ] {
        assert_eq!(
            head.headers.get(name),
            get.headers.get(name),
            "HEAD {uri}: {name}"
        );
    }
    if get.status.is_success() {
        assert!(head.body.is_empty(), "HEAD {uri} has a body");
        assert_eq!(
            header(&get, "content-length"),
            get.body.len().to_string(),
            "{uri}"
        );
    }
    get
}

#[tokio::test]
async fn the_api_root_says_registry_v2() {
    let f = fixture(Filter::default()).await;
    for uri in ["/v2/", "/v2"] {
        let answer = both(&f.app, uri, None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            header(&answer, "docker-distribution-api-version"),
            "registry/2.0"
        );
    }
}

#[tokio::test]
async fn manifests_by_tag_and_by_digest_carry_their_own_media_type() {
    let f = fixture(Filter::default()).await;
    let e = &f.expected;
    let by_tag = [
        format!("/v2/{}/manifests/{}?ns={}", e.name, e.tag, e.registry),
        format!("/v2/{}/{}/manifests/{}", e.registry, e.name, e.tag),
    ];
    for uri in by_tag {
        let answer = both(&f.app, &uri, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
        assert_eq!(header(&answer, "content-type"), media_type::OCI_INDEX);
        assert_eq!(header(&answer, "docker-content-digest"), e.root.to_string());
        assert_eq!(Digest::sha256_of(&answer.body), e.root);
    }
    for (digest, media_type) in &e.manifests {
        let uri = format!("/v2/{}/manifests/{digest}?ns={}", e.name, e.registry);
        let answer = both(&f.app, &uri, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
        assert_eq!(header(&answer, "content-type"), media_type);
        assert_eq!(Digest::sha256_of(&answer.body), *digest);
    }
}

#[tokio::test]
async fn blobs_whole_and_ranged() {
    let f = fixture(Filter::default()).await;
    let (digest, size) = f.expected.blobs[0].clone();
    let uri = format!("/v2/team/app/blobs/{digest}");
    let whole = both(&f.app, &uri, None).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(header(&whole, "content-type"), "application/octet-stream");
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert_eq!(header(&whole, "docker-content-digest"), digest.to_string());
    assert_eq!(whole.body.len() as u64, size);
    assert_eq!(Digest::sha256_of(&whole.body), digest);

    let part = both(&f.app, &uri, Some("bytes=10-19")).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&part, "content-range"),
        format!("bytes 10-19/{size}")
    );
    assert_eq!(part.body, whole.body[10..20]);

    let tail = both(&f.app, &uri, Some("bytes=-5")).await;
    assert_eq!(tail.body, whole.body[whole.body.len() - 5..]);

    let beyond = both(&f.app, &uri, Some(&format!("bytes={size}-"))).await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&beyond, "content-range"), format!("bytes */{size}"));
    assert_eq!(code(&beyond), "RANGE_INVALID");
}

#[tokio::test]
async fn errors_are_oci_json_with_the_right_code() {
    let f = fixture(Filter::default()).await;
    let e = &f.expected;
    let missing = Digest::sha256_of(b"missing");
    let config = &e.blobs[1].0;
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            format!("/v2/team/app/blobs/{missing}"),
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            format!("/v2/team/app/manifests/{missing}"),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/team/app/manifests/{config}"),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/team/app/manifests/nope?ns={}", e.registry),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/team/app/manifests/v1".into(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "/v2/team/app/blobs/sha256:abc".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/team/app/blobs/md5:abc".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/Team/app/manifests/v1?ns=example.com".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/team/%2e%2e/manifests/v1".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/team/app/manifests/-bad".into(),
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
        ),
        (
            "/v2/team/app/manifests/v1?ns=not/a/host".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/team/app/tags/list".into(),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        ("/v2/_catalog".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        ("/etc/passwd".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
    ];
    for (uri, status, expected) in cases {
        let answer = both(&f.app, &uri, None).await;
        assert_eq!(answer.status, status, "{uri}");
        assert_eq!(code(&answer), expected, "{uri}");
    }
}

#[tokio::test]
async fn push_methods_are_refused_with_405() {
    let f = fixture(Filter::default()).await;
    for method in [Method::PUT, Method::POST, Method::PATCH, Method::DELETE] {
        for uri in [
            "/v2/",
            "/v2/team/app/blobs/uploads/",
            "/v2/team/app/manifests/v1",
        ] {
            let answer = call(&f.app, method.clone(), uri, None).await;
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}"
            );
            assert_eq!(code(&answer), "UNSUPPORTED", "{method} {uri}");
        }
    }
}

#[tokio::test]
async fn filters_hide_what_is_not_mirrored() {
    let mirrored_elsewhere = Filter {
        mirrored: vec!["docker.io".parse().unwrap()],
        exclude: vec![],
    };
    let f = fixture(mirrored_elsewhere).await;
    let e = &f.expected;
    let uri = format!("/v2/{}/manifests/{}?ns={}", e.name, e.tag, e.registry);
    let answer = both(&f.app, &uri, None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&answer), "MANIFEST_UNKNOWN");

    let excluded = Filter {
        mirrored: vec![],
        exclude: vec![regex::Regex::new(":v1$").unwrap()],
    };
    let f = fixture(excluded).await;
    assert_eq!(both(&f.app, &uri, None).await.status, StatusCode::NOT_FOUND);
    let by_digest = format!("/v2/{}/manifests/{}?ns={}", e.name, e.root, e.registry);
    assert_eq!(both(&f.app, &by_digest, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn health_endpoints() {
    let f = fixture(Filter::default()).await;
    assert_eq!(
        call(&f.app, Method::GET, "/livez", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&f.app, Method::GET, "/readyz", None).await.status,
        StatusCode::OK
    );
}

#[test]
fn error_bodies_snapshot() {
    let errors = [
        RegistryError::from_store(crate::store::StoreError::NotFound("blob x".into()), false),
        RegistryError::MethodNotAllowed("PUT is not supported".into()),
        RegistryError::RangeNotSatisfiable("range".into(), 10),
    ];
    let rendered: Vec<String> = errors
        .into_iter()
        .map(|error| {
            let response = error.into_response();
            let status = response.status();
            let range = response.headers().get("content-range").cloned();
            let body = futures::executor::block_on(response.into_body().collect())
                .unwrap()
                .to_bytes();
            format!("{status} {range:?} {}", String::from_utf8_lossy(&body))
        })
        .collect();
    insta::assert_snapshot!(rendered.join("\n"));
}

#[tokio::test]
async fn local_blob_bodies_are_marked_for_sendfile() {
    let f = fixture(Filter::default()).await;
    let (digest, _) = &f.expected.blobs[0];
    let request = Request::get(format!("/v2/team/app/blobs/{digest}"))
        .body(Body::empty())
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    assert!(response.extensions().get::<SendFile>().is_some());
}

/// The production server over a real socket: keep-alive, sendfile bodies,
/// and the hostile input a mirror on every node will see.
mod socket {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::metrics::Metrics;

    /// Sends `request` raw and reads until the server closes the connection.
    async fn until_closed(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
            .await
            .expect("the server closed the connection")
            .unwrap();
        String::from_utf8_lossy(&received).into_owned()
    }

    /// Serves `app` on a fresh loopback port until `stop`.
    pub(super) async fn serve(
        app: Router,
        metrics: Arc<Metrics>,
        stop: &CancellationToken,
    ) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(LimitHits::new(Arc::clone(&metrics)));
        tokio::spawn(server::serve(
            listener,
            app,
            metrics,
            ServerLimits::default(),
            hits,
            stop.clone(),
        ));
        addr
    }

    struct Server {
        addr: std::net::SocketAddr,
        expected: Expected,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn start() -> Server {
        start_with(ServerLimits::default()).await
    }

    async fn start_with(limits: ServerLimits) -> Server {
        let f = fixture(Filter::default()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let hits = Arc::new(LimitHits::new(Arc::clone(&metrics)));
        tokio::spawn(server::serve(
            listener,
            f.app,
            Arc::clone(&metrics),
            limits,
            hits,
            stop.clone(),
        ));
        Server {
            addr,
            expected: f.expected,
            metrics,
            stop,
            _dir: f._dir,
        }
    }

    /// A raw HTTP/1.1 client that keeps bytes past one response for the
    /// next, as pipelining needs.
    struct Client {
        stream: TcpStream,
        buffer: Vec<u8>,
    }

    impl Client {
        async fn connect(addr: std::net::SocketAddr) -> Self {
            Self {
                stream: TcpStream::connect(addr).await.unwrap(),
                buffer: Vec::new(),
            }
        }

        async fn send(&mut self, request: &str) {
            self.stream.write_all(request.as_bytes()).await.unwrap();
        }

        async fn fill(&mut self, context: &str) {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed {context}");
            self.buffer.extend_from_slice(&chunk[..n]);
        }

        /// One response: status, headers, and exactly Content-Length bytes.
        async fn response(&mut self, head_only: bool) -> (u16, Vec<(String, String)>, Vec<u8>) {
            let (status, headers, consumed) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut response = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(len) = response.parse(&self.buffer).unwrap() {
                    let headers: Vec<(String, String)> = response
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_lowercase(), value)
                        })
                        .collect();
                    break (response.code.unwrap(), headers, len);
                }
                self.fill("before a full response head").await;
            };
            let length: usize = value(&headers, "content-length")
                .expect("every response has a content-length")
                .parse()
                .unwrap();
            let want = consumed + if head_only { 0 } else { length };
            while self.buffer.len() < want {
                self.fill("in the middle of a body").await;
            }
            let rest = self.buffer.split_off(want);
            let body = self.buffer.split_off(consumed);
            self.buffer = rest;
            (status, headers, body)
        }
    }

    fn value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads until the server closes the connection (a reset counts: the
    /// server closing with unread bytes sends one), or panics after `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
        let mut received = Vec::new();
        let _closed_or_reset = tokio::time::timeout(within, stream.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| panic!("the connection was still open after {within:?}"));
        received
    }

    /// A head trickled a byte at a time is cut off at the header timeout
    /// however steadily it trickles, an idle kept-alive connection at the
    /// idle timeout, and neither keeps a normal client from being served.
    #[tokio::test]
    async fn slow_heads_and_idle_connections_are_closed_at_their_limits() {
        let limits = ServerLimits {
            header_timeout: Duration::from_millis(400),
            idle_timeout: Duration::from_millis(400),
            ..ServerLimits::default()
        };
        let server = start_with(limits).await;
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        let trickle = async {
            for byte in b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: abcdefghijklmnopqrstuvwxyz" {
                if slow.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let mut normal = Client::connect(server.addr).await;
        let served = async {
            normal.send("GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
            normal.response(false).await.0
        };
        let ((), status) = tokio::join!(trickle, served);
        assert_eq!(status, 200, "a normal client is served alongside");
        let received = closed_within(&mut slow, Duration::from_secs(2)).await;
        assert!(received.is_empty(), "no answer to a head never finished");

        // The normal client's connection, kept alive, idles out.
        tokio::time::timeout(Duration::from_secs(2), async {
            let mut rest = Vec::new();
            normal.stream.read_to_end(&mut rest).await.unwrap();
        })
        .await
        .expect("the idle connection was closed");
        let text = server.metrics.encode();
        assert!(
            text.contains(r#"reflektor_limit_hits_total{limit="header_timeout"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"reflektor_limit_hits_total{limit="idle_timeout"} 1"#),
            "{text}"
        );
    }

    /// A head over the size limit gets 431 and is counted.
    #[tokio::test]
    async fn a_head_over_the_size_limit_gets_431() {
        let server = start_with(ServerLimits {
            max_header_bytes: 2048,
            ..ServerLimits::default()
        })
        .await;
        let big = format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(4096)
        );
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(big.as_bytes()).await.unwrap();
        let received = closed_within(&mut stream, Duration::from_secs(2)).await;
        assert!(
            String::from_utf8_lossy(&received).starts_with("HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&received)
        );
        assert!(
            server
                .metrics
                .encode()
                .contains(r#"reflektor_limit_hits_total{limit="header_bytes"} 1"#)
        );
    }

    /// Past the connection limit, a new connection waits for a slot: it is
    /// served once another closes, and the wait is counted.
    #[tokio::test]
    async fn past_the_connection_limit_a_connection_waits_for_a_slot() {
        let server = start_with(ServerLimits {
            max_connections: 1,
            ..ServerLimits::default()
        })
        .await;
        let first = TcpStream::connect(server.addr).await.unwrap();
        let mut second = Client::connect(server.addr).await;
        second.send("GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let waited = tokio::time::timeout(Duration::from_millis(300), second.response(false)).await;
        assert!(
            waited.is_err(),
            "the second connection was served while the first held the slot"
        );
        drop(first);
        let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), second.response(false))
            .await
            .expect("served once the slot was free");
        assert_eq!(status, 200);
        // Once per wait: the first connection's, and perhaps another for
        // the next accept while the second holds the slot.
        let text = server.metrics.encode();
        assert!(
            text.contains(r#"reflektor_limit_hits_total{limit="connections"} 1"#)
                || text.contains(r#"reflektor_limit_hits_total{limit="connections"} 2"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn keep_alive_serves_many_requests_on_one_connection() {
        let server = start().await;
        let mut client = Client::connect(server.addr).await;
        let (digest, size) = server.expected.blobs[0].clone();
        let requests = [
            (
                format!("GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n"),
                false,
            ),
            (
                format!("HEAD /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n"),
                true,
            ),
            (
                format!("GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nRange: bytes=1-3\r\n\r\n"),
                false,
            ),
            ("GET /v2/ HTTP/1.1\r\n\r\n".to_owned(), false),
        ];
        let mut answers = Vec::new();
        for (request, head_only) in &requests {
            client.send(request).await;
            answers.push(client.response(*head_only).await);
        }
        let (status, headers, body) = &answers[0];
        assert_eq!(*status, 200);
        assert_eq!(body.len() as u64, size);
        assert_eq!(Digest::sha256_of(body), digest);
        assert_eq!(
            value(headers, "content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(answers[1].0, 200);
        assert_eq!(answers[2].0, 206);
        assert_eq!(answers[2].2, body[1..4]);
        assert_eq!(answers[3].0, 200);
        let metrics = server.metrics.encode();
        assert!(
            metrics.contains(r#"reflektor_served_bytes_total{source="local"}"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"route="blob",method="GET",status="206""#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let server = start().await;
        let mut client = Client::connect(server.addr).await;
        let (digest, _) = server.expected.blobs[0].clone();
        let two = format!(
            "GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nRange: bytes=0-0\r\n\r\n\
             GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nRange: bytes=1-1\r\n\r\n"
        );
        client.send(&two).await;
        let first = client.response(false).await;
        let second = client.response(false).await;
        assert_eq!((first.0, first.2.len()), (206, 1));
        assert_eq!((second.0, second.2.len()), (206, 1));
        assert_ne!(first.2, second.2);
    }

    /// A body that ends before its promised length ends the connection,
    /// so the client cannot mistake the next response for the rest.
    #[tokio::test]
    async fn a_short_body_closes_the_connection() {
        let app = Router::new().route(
            "/short",
            axum::routing::get(|| async {
                Response::builder()
                    .header(header::CONTENT_LENGTH, 10)
                    .body(Body::from("12345"))
                    .unwrap()
            }),
        );
        let stop = CancellationToken::new();
        let addr = serve(app, Arc::new(Metrics::new()), &stop).await;
        let text = until_closed(
            addr,
            b"GET /short HTTP/1.1\r\n\r\nGET /short HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(text.ends_with("12345"), "{text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
        stop.cancel();
    }

    /// A body of unknown length is streamed as chunks, never gathered in
    /// memory first; a second request on the connection still works.
    #[tokio::test]
    async fn a_body_without_a_length_is_chunked() {
        let app = Router::new().route(
            "/stream",
            axum::routing::get(|| async {
                let chunks = (0..3)
                    .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a' + i; 100_000])));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        );
        let stop = CancellationToken::new();
        let addr = serve(app, Arc::new(Metrics::new()), &stop).await;
        let client = crate::http_client::client(Duration::from_secs(5));
        for _ in 0..2 {
            let response = client
                .get(format!("http://{addr}/stream").parse().unwrap())
                .await
                .unwrap();
            assert_eq!(
                response.headers().get(header::TRANSFER_ENCODING).unwrap(),
                "chunked"
            );
            assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 300_000);
            assert!(body[..100_000].iter().all(|&b| b == b'a'));
            assert!(body[200_000..].iter().all(|&b| b == b'c'));
        }
        // HTTP/1.0 has no chunks: the body runs to the connection's close.
        let text = until_closed(addr, b"GET /stream HTTP/1.0\r\n\r\n").await;
        assert!(!text.contains("chunked"), "{}", &text[..200]);
        assert!(
            text.ends_with(&"c".repeat(100_000)),
            "the whole body, unframed"
        );
        stop.cancel();
    }

    /// Each case gets a 4xx with a JSON error body, never a 5xx or a hang.
    #[tokio::test]
    async fn hostile_requests_get_4xx() {
        let server = start().await;
        let many_params: String = (0..5000).map(|i| format!("p{i}=x&")).collect();
        let huge_header = "a".repeat(20_000);
        let cases: Vec<(String, u16)> = vec![
            (
                "GET /v2/../../etc/passwd/manifests/x HTTP/1.1\r\n\r\n".into(),
                400,
            ),
            ("GET /v2/a%2Fb/manifests/v1 HTTP/1.1\r\n\r\n".into(), 400),
            ("GET /v2/a/manifests/v1\0 HTTP/1.1\r\n\r\n".into(), 400),
            (
                format!("GET /v2/a/manifests/v1?{many_params} HTTP/1.1\r\n\r\n"),
                431,
            ),
            (
                format!("GET /v2/ HTTP/1.1\r\nX-Big: {huge_header}\r\n\r\n"),
                431,
            ),
            (
                format!(
                    "GET /v2/ HTTP/1.1\r\n{}\r\n",
                    (0..100)
                        .map(|i| format!("X-{i}: y\r\n"))
                        .collect::<String>()
                ),
                431,
            ),
            ("BREW /v2/ HTCPCP/1.0\r\n\r\n".into(), 400),
            ("GET /v2/a/blobs/sha256:zz HTTP/1.1\r\n\r\n".into(), 400),
            (
                format!(
                    "GET /v2/team/app/blobs/{} HTTP/1.1\r\nRange: bytes=99999999-\r\n\r\n",
                    server.expected.blobs[0].0
                ),
                416,
            ),
            (
                "PUT /v2/team/app/manifests/v1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".into(),
                405,
            ),
            (
                "GET /v2/a/manifests/v1?ns=a%2Fb HTTP/1.1\r\n\r\n".into(),
                400,
            ),
        ];
        for (request, expected) in cases {
            let mut client = Client::connect(server.addr).await;
            client.send(&request).await;
            let shown: String = request.chars().take(60).collect();
            let (status, headers, body) =
                tokio::time::timeout(Duration::from_secs(5), client.response(false))
                    .await
                    .unwrap_or_else(|_| panic!("{shown:?} hung"));
            assert_eq!(status, expected, "{shown:?}");
            assert_eq!(
                value(&headers, "content-type"),
                Some("application/json"),
                "{shown:?}"
            );
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(body["errors"][0]["code"].is_string(), "{shown:?}");
        }
    }
}

/// The mirror path between real servers on loopback: B holds nothing and
/// asks A, found through a fixed list of providers (a test double for the
/// router, which has its own tests).
mod peers {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::socket::serve;
    use super::*;
    use crate::metrics::Metrics;

    struct FixedProviders(Vec<SocketAddr>);

    #[async_trait::async_trait]
    impl ProviderLookup for FixedProviders {
        async fn providers(&self, _: &str, limit: usize, _: Duration) -> Vec<SocketAddr> {
            self.0.iter().copied().take(limit).collect()
        }
    }

    /// A node with nothing in its store, mirroring through `providers`.
    async fn empty_node(
        providers: Vec<SocketAddr>,
        metrics: Arc<Metrics>,
    ) -> (Router, tempfile::TempDir) {
        empty_node_with_auth(providers, metrics, None, None).await
    }

    /// [`empty_node`] requiring `own` from its clients and sending `to_peers`
    /// to its peers.
    async fn empty_node_with_auth(
        providers: Vec<SocketAddr>,
        metrics: Arc<Metrics>,
        own: Option<BasicAuth>,
        to_peers: Option<BasicAuth>,
    ) -> (Router, tempfile::TempDir) {
        let lookup = Arc::new(FixedProviders(providers));
        node_over(lookup, metrics, own, to_peers, Duration::ZERO).await
    }

    /// A node with nothing in its store, mirroring through `lookup`.
    async fn node_over(
        lookup: Arc<dyn ProviderLookup>,
        metrics: Arc<Metrics>,
        own: Option<BasicAuth>,
        to_peers: Option<BasicAuth>,
        herd_wait: Duration,
    ) -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        let store = OciLayoutStore::open(dir.path()).await.unwrap();
        let mirror = Mirror::new(
            lookup,
            MirrorConfig {
                resolve_timeout: Duration::from_millis(20),
                retries: 3,
                resolve_tags: true,
                max_peer_requests: 64,
                auth: to_peers,
                verify: true,
                herd_wait,
            },
            Arc::clone(&metrics),
            Arc::new(LimitHits::new(Arc::clone(&metrics))),
        )
        .marking(Arc::new(crate::store::PeerFed::default()));
        let app = router(Arc::new(AppState {
            store: Arc::new(store),
            filter: Filter::default(),
            mirror: Some(mirror),
            peers: None,
            auth: own,
        }));
        (app, dir)
    }

    /// A test double for the router in a herd: nobody provides the key at
    /// first, this node is told `role`, and a provider (`leader`) is
    /// advertised after `appears`, or never (`None`).
    struct HerdDouble {
        role: Herd,
        leader: Option<SocketAddr>,
        appears: Duration,
        joined: std::sync::Mutex<Vec<String>>,
        waited_until: std::sync::Mutex<Option<std::time::Instant>>,
    }

    impl HerdDouble {
        fn new(role: Herd, leader: Option<SocketAddr>, appears: Duration) -> Arc<Self> {
            Arc::new(HerdDouble {
                role,
                leader,
                appears,
                joined: Default::default(),
                waited_until: Default::default(),
            })
        }
    }

    #[async_trait::async_trait]
    impl ProviderLookup for HerdDouble {
        async fn providers(&self, _: &str, _: usize, _: Duration) -> Vec<SocketAddr> {
            Vec::new()
        }

        async fn join_herd(&self, key: &str) -> Herd {
            self.joined.lock().unwrap().push(key.to_owned());
            self.role.clone()
        }

        async fn wait_for_providers(
            &self,
            _: &str,
            _: usize,
            until: std::time::Instant,
        ) -> Vec<SocketAddr> {
            *self.waited_until.lock().unwrap() = Some(until);
            match self.leader {
                Some(leader) if std::time::Instant::now() + self.appears < until => {
                    tokio::time::sleep(self.appears).await;
                    vec![leader]
                }
                _ => {
                    tokio::time::sleep_until(until.into()).await;
                    Vec::new()
                }
            }
        }
    }

    fn herd_count(metrics: &Metrics, outcome: &str) -> u64 {
        let line = format!("reflektor_herd_misses_total{{outcome=\"{outcome}\"}} ");
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.parse().ok())
            .unwrap_or(0)
    }

    /// An address nobody listens on: a leader that has gone.
    async fn gone() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A node over `lookup`, without auth, waiting `herd_wait` for its
    /// leaders, and its metrics.
    async fn herd_node(
        lookup: Arc<HerdDouble>,
        herd_wait: Duration,
    ) -> (Router, tempfile::TempDir, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let (node, dir) = node_over(lookup, Arc::clone(&metrics), None, None, herd_wait).await;
        (node, dir, metrics)
    }

    /// Asserts that `node` answers a GET of blob `digest` with all its
    /// `size` bytes.
    async fn gets_whole(node: &Router, digest: &crate::oci::Digest, size: u64) {
        let answer = call(
            node,
            Method::GET,
            &format!("/v2/team/app/blobs/{digest}"),
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.len() as u64, size);
    }

    /// A herd of two: this node and its leader at `leader`.
    fn follows(leader: SocketAddr) -> Herd {
        Herd {
            leader: Some(leader),
            others: vec![leader],
        }
    }

    /// A follower asks its leader directly, and streams the blob from it
    /// whole before the DHT says a word; a HEAD and a manifest never join
    /// a herd.
    #[tokio::test]
    async fn a_follower_streams_the_blob_from_its_leader_before_it_is_advertised() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let lookup = HerdDouble::new(follows(a_addr), None, Duration::ZERO);
        let herd_wait = Duration::from_secs(3);
        let (b, _dir, metrics) = herd_node(lookup.clone(), herd_wait).await;
        let (digest, size) = a.expected.blobs[0].clone();
        let uri = format!("/v2/team/app/blobs/{digest}");

        let started = std::time::Instant::now();
        gets_whole(&b, &digest, size).await;
        assert!(started.elapsed() < herd_wait, "{:?}", started.elapsed());
        assert_eq!(*lookup.joined.lock().unwrap(), vec![digest.to_string()]);
        assert_eq!(herd_count(&metrics, "followed"), 1);

        assert_eq!(
            call(&b, Method::HEAD, &uri, None).await.status,
            StatusCode::NOT_FOUND
        );
        let manifest = format!("/v2/team/app/manifests/{}", a.expected.root);
        assert_eq!(
            call(&b, Method::GET, &manifest, None).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            lookup.joined.lock().unwrap().len(),
            1,
            "only the blob's GET joined"
        );
        stop.cancel();
    }

    /// A follower whose leader is gone still takes a provider the DHT
    /// finds while it waits.
    #[tokio::test]
    async fn a_follower_whose_leader_is_gone_takes_a_provider_that_appears() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let leader = gone().await;
        let lookup = HerdDouble::new(follows(leader), Some(a_addr), Duration::from_millis(200));
        let (b, _dir, metrics) = herd_node(lookup, Duration::from_secs(3)).await;
        let (digest, size) = a.expected.blobs[0].clone();

        let started = std::time::Instant::now();
        gets_whole(&b, &digest, size).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(herd_count(&metrics, "followed"), 1);
        stop.cancel();
    }

    /// A leader answers 404 at once, so its containerd goes to the
    /// upstream; a follower whose leader never serves the blob, and which
    /// no provider appears for, gives up at the herd wait and answers 404
    /// too.
    #[tokio::test]
    async fn a_leader_goes_upstream_and_a_follower_waits_no_longer_than_the_bound() {
        let digest = crate::oci::Digest::sha256_of(b"nobody has this");
        let uri = format!("/v2/team/app/blobs/{digest}");

        let lookup = HerdDouble::new(Herd::default(), None, Duration::ZERO);
        let (leader, _dir, metrics) = herd_node(lookup, Duration::from_secs(3)).await;
        let started = std::time::Instant::now();
        assert_eq!(
            call(&leader, Method::GET, &uri, None).await.status,
            StatusCode::NOT_FOUND
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(herd_count(&metrics, "led"), 1);

        let wait = Duration::from_millis(400);
        let leader = gone().await;
        let lookup = HerdDouble::new(follows(leader), None, Duration::ZERO);
        let (follower, _dir, metrics) = herd_node(lookup.clone(), wait).await;
        let started = std::time::Instant::now();
        assert_eq!(
            call(&follower, Method::GET, &uri, None).await.status,
            StatusCode::NOT_FOUND
        );
        let took = started.elapsed();
        assert!(
            took >= wait && took < wait + Duration::from_secs(1),
            "{took:?}"
        );
        let until = lookup
            .waited_until
            .lock()
            .unwrap()
            .expect("the follower waited");
        assert!(until <= started + wait + Duration::from_millis(50));
        assert_eq!(herd_count(&metrics, "waited_out"), 1);
    }

    /// A node the XOR metric picks, that came after another wanter had
    /// begun as the leader of fewer nodes, follows that one instead of
    /// fetching the blob a second time.
    #[tokio::test]
    async fn a_wanter_that_began_first_is_followed_whoever_would_lead() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let herd = Herd {
            leader: None,
            others: vec![gone().await, a_addr],
        };
        let lookup = HerdDouble::new(herd, None, Duration::ZERO);
        let (b, _dir, metrics) = herd_node(lookup, Duration::from_secs(3)).await;
        let (digest, size) = a.expected.blobs[0].clone();
        gets_whole(&b, &digest, size).await;
        assert_eq!(herd_count(&metrics, "followed"), 1);
        assert_eq!(herd_count(&metrics, "led"), 0);
        stop.cancel();
    }

    /// With --mirror-herd-wait=0s a miss never waits for other nodes.
    #[tokio::test]
    async fn a_zero_herd_wait_never_joins_a_herd() {
        let digest = crate::oci::Digest::sha256_of(b"nobody has this");
        let leader = gone().await;
        let lookup = HerdDouble::new(follows(leader), None, Duration::ZERO);
        let (node, _dir, _) = herd_node(lookup.clone(), Duration::ZERO).await;
        let uri = format!("/v2/team/app/blobs/{digest}");
        assert_eq!(
            call(&node, Method::GET, &uri, None).await.status,
            StatusCode::NOT_FOUND
        );
        assert!(lookup.joined.lock().unwrap().is_empty());
    }

    /// A peer that dies mid-body: the head promises all of `blob`, the
    /// first half comes.
    async fn dying_peer(blob: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
                    blob.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&blob[..blob.len() / 2]).await;
                // Dropping the stream cuts the body short.
            }
        });
        addr
    }

    /// A peer whose port drops every SYN, as a blackholed hostPort does:
    /// a listener whose one-slot accept queue is already full, so the
    /// kernel drops further SYNs without an answer.
    async fn blackholed_peer() -> (SocketAddr, (TcpListener, Vec<tokio::net::TcpStream>)) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Whatever the kernel's slack over the backlog, a few connects
        // fill it; the ones it drops would only hang, so none is awaited.
        for _ in 0..4 {
            if let Ok(Ok(stream)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                fillers.push(stream);
            }
        }
        let probe = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        assert!(
            probe.is_err(),
            "the accept queue is full, so a connect hangs"
        );
        (addr, (listener, fillers))
    }

    /// A peer that accepts and reads, and never answers: a wedged agent,
    /// or a pooled connection whose far end went away silently. It counts
    /// the connections it accepted.
    async fn silent_peer() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        (addr, accepted)
    }

    /// Two silent providers ahead of the one that holds the blob: the
    /// request must not wait out either's timeout (1 s to connect, 5 s for
    /// a head) but hedge to the next provider, and the next request must go
    /// to the holder first, without touching the silent ones again.
    #[tokio::test]
    async fn silent_providers_are_raced_past_and_then_tried_last() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let (blackholed, _held) = blackholed_peer().await;
        let (silent, accepted) = silent_peer().await;
        let (b, _dir) =
            empty_node(vec![blackholed, silent, a_addr], Arc::new(Metrics::new())).await;
        let (digest, size) = a.expected.blobs[0].clone();
        let uri = format!("/v2/team/app/blobs/{digest}");

        let started = std::time::Instant::now();
        let answer = call(&b, Method::GET, &uri, None).await;
        let first = started.elapsed();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.len() as u64, size);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Waiting each out would take 6 s; hedging takes about 0.6 s.
        assert!(
            first < Duration::from_secs(3),
            "the request waited {first:?}, as if for the silent peers' timeouts"
        );

        for _ in 0..3 {
            let answer = call(&b, Method::GET, &uri, None).await;
            assert_eq!(answer.status, StatusCode::OK);
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a suspect is tried after the holder, which answers"
        );
        stop.cancel();
    }

    /// A peer that answers every request with `size` bytes of 'x', with a
    /// length or chunked: content that matches no digest asked of it.
    async fn lying_peer(size: usize, chunked: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
                let body = vec![b'x'; size];
                let response = if chunked {
                    let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
                    r.extend(format!("{size:x}\r\n").as_bytes());
                    r.extend(&body);
                    r.extend(b"\r\n0\r\n\r\n");
                    r
                } else {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
                    )
                    .into_bytes();
                    r.extend(&body);
                    r
                };
                let _ = stream.write_all(&response).await;
            }
        });
        addr
    }

    /// GETs `uri` and reads the whole body: the bytes, or the error that
    /// broke it off.
    async fn get_body(app: &Router, uri: &str) -> (StatusCode, Result<Vec<u8>, String>) {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await;
        (
            status,
            body.map(|b| b.to_bytes().to_vec())
                .map_err(|e| e.to_string()),
        )
    }

    /// A peer whose bytes do not hash to the digest asked for: the response
    /// breaks before its end instead of passing them on as the blob, with
    /// or without a length, and the peer is then tried after the honest one.
    #[tokio::test]
    async fn a_body_that_does_not_match_its_digest_is_never_handed_on_whole() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let (digest, size) = a.expected.blobs[0].clone();
        let uri = format!("/v2/team/app/blobs/{digest}");
        for chunked in [false, true] {
            let liar = lying_peer(size as usize, chunked).await;
            let metrics = Arc::new(Metrics::new());
            let (b, _dir) = empty_node(vec![liar, a_addr], Arc::clone(&metrics)).await;
            let (status, body) = get_body(&b, &uri).await;
            assert_eq!(status, StatusCode::OK, "the head came before the bytes");
            body.expect_err("corrupt bytes must break the body");
            assert!(
                metrics
                    .encode()
                    .contains(r#"reflektor_peer_failures_total{reason="digest_mismatch"} 1"#),
                "{}",
                metrics.encode()
            );
            let (status, body) = get_body(&b, &uri).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                Digest::sha256_of(&body.unwrap()),
                digest,
                "chunked: {chunked}"
            );
        }
        stop.cancel();
    }

    /// GETs `uri` with an `Authorization` header, if any.
    async fn get_with(app: &Router, uri: &str, authorization: Option<&str>) -> Response {
        let mut request = Request::get(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        app.clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    /// With credentials, `/v2/` answers only the right ones, a client's or
    /// a peer's, and health endpoints stay open; a node sends its own to
    /// its peers, so one that has wrong ones or none gets nothing from them.
    #[tokio::test]
    async fn basic_auth_guards_the_client_and_the_peer_path() {
        let auth = BasicAuth::new("hello", "world");
        let right = auth.header_value();
        let wrong = BasicAuth::new("hello", "nope").header_value();
        let stop = CancellationToken::new();
        let a = fixture_with_auth(Filter::default(), Some(auth.clone())).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let (digest, size) = a.expected.blobs[0].clone();
        let blob = format!("/v2/team/app/blobs/{digest}");

        for uri in ["/v2/", blob.as_str()] {
            for credentials in [None, Some(wrong.as_str()), Some("Bearer abc")] {
                let response = get_with(&a.app, uri, credentials).await;
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{uri} {credentials:?}"
                );
                assert_eq!(
                    response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                    "Basic realm=\"reflektor\""
                );
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert!(String::from_utf8_lossy(&body).contains("UNAUTHORIZED"));
            }
            let response = get_with(&a.app, uri, Some(&right)).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{uri} with the right credentials"
            );
        }
        for open in ["/readyz", "/livez"] {
            assert_eq!(
                get_with(&a.app, open, None).await.status(),
                StatusCode::OK,
                "{open}"
            );
        }

        // B requires and sends the same credentials: served from A.
        let (b, _b) = empty_node_with_auth(
            vec![a_addr],
            Arc::new(Metrics::new()),
            Some(auth.clone()),
            Some(auth.clone()),
        )
        .await;
        assert_eq!(
            get_with(&b, &blob, None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let response = get_with(&b, &blob, Some(&right)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len() as u64, size);

        // Wrong credentials to peers, or none: A refuses B, so B misses.
        for to_peers in [Some(BasicAuth::new("hello", "nope")), None] {
            let (c, _c) =
                empty_node_with_auth(vec![a_addr], Arc::new(Metrics::new()), None, to_peers).await;
            assert_eq!(
                get_with(&c, &blob, None).await.status(),
                StatusCode::NOT_FOUND
            );
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn a_node_serves_what_only_its_peer_holds() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let metrics = Arc::new(Metrics::new());
        let (b, _dir) = empty_node(vec![a_addr], Arc::clone(&metrics)).await;
        let e = &a.expected;

        let (digest, size) = &e.blobs[0];
        let blob = both(&b, &format!("/v2/{}/blobs/{digest}", e.name), None).await;
        assert_eq!(blob.status, StatusCode::OK);
        assert_eq!(blob.body.len() as u64, *size);
        assert_eq!(Digest::sha256_of(&blob.body), *digest);

        let part = both(
            &b,
            &format!("/v2/{}/blobs/{digest}", e.name),
            Some("bytes=5-9"),
        )
        .await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.body, blob.body[5..10]);

        let by_tag = format!("/v2/{}/manifests/{}?ns={}", e.name, e.tag, e.registry);
        let manifest = both(&b, &by_tag, None).await;
        assert_eq!(manifest.status, StatusCode::OK);
        assert_eq!(header(&manifest, "content-type"), media_type::OCI_INDEX);
        assert_eq!(
            header(&manifest, "docker-content-digest"),
            e.root.to_string()
        );
        let text = metrics.encode();
        assert!(text.contains(r#"cache="hit""#), "{text}");
        stop.cancel();
    }

    /// A peer that answers 404 to everything after `delay`, counting the
    /// requests it got: a provider record for content it does not hold.
    async fn refusing_peer(delay: Duration) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await
                    {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let refusal = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(refusal.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, asked)
    }

    /// Peers that advertise everything and hold nothing, listed first for
    /// every key: a real agent with an empty store, which refuses at once,
    /// and one that refuses only after 2 s. Every blob and manifest must
    /// still come whole from the holder, each within well under the slow
    /// one's delay (the 300 ms hedge moves on), and once the slow one has
    /// lost a race it is asked last, so later requests cost one refusal.
    #[tokio::test]
    async fn peers_that_advertise_everything_cost_a_bounded_time_per_key() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let (hollow, _hollow_dir) = empty_node(vec![], Arc::new(Metrics::new())).await;
        let hollow_addr = serve(hollow, Arc::new(Metrics::new()), &stop).await;
        let (slow, slow_asked) = refusing_peer(Duration::from_secs(2)).await;
        let (b, _dir) = empty_node(vec![hollow_addr, slow, a_addr], Arc::new(Metrics::new())).await;
        let e = &a.expected;

        let mut uris: Vec<String> = e
            .blobs
            .iter()
            .map(|(digest, _)| format!("/v2/{}/blobs/{digest}", e.name))
            .collect();
        uris.push(format!("/v2/{}/manifests/{}", e.name, e.root));
        uris.push(format!(
            "/v2/{}/manifests/{}?ns={}",
            e.name, e.tag, e.registry
        ));
        let mut slowest = Duration::ZERO;
        for uri in &uris {
            let started = std::time::Instant::now();
            let answer = call(&b, Method::GET, uri, None).await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(answer.status, StatusCode::OK, "{uri}");
        }
        for (digest, size) in &e.blobs {
            let answer = call(
                &b,
                Method::GET,
                &format!("/v2/{}/blobs/{digest}", e.name),
                None,
            )
            .await;
            assert_eq!(answer.body.len() as u64, *size);
            assert_eq!(Digest::sha256_of(&answer.body), *digest);
        }
        assert!(
            slowest < Duration::from_secs(1),
            "a request waited {slowest:?}, as if for the slow peer's refusal"
        );
        assert_eq!(
            slow_asked.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the slow peer lost its first race and is asked after the holder from then on"
        );

        // A key nobody holds: every provider is asked, the slow one last,
        // and the miss waits for its refusal, never past the 5 s head
        // timeout, before containerd goes to the upstream.
        let absent = Digest::sha256_of(b"held by nobody");
        let started = std::time::Instant::now();
        let answer = call(
            &b,
            Method::GET,
            &format!("/v2/{}/blobs/{absent}", e.name),
            None,
        )
        .await;
        let miss = started.elapsed();
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert!(miss < Duration::from_secs(6), "a miss took {miss:?}");
        stop.cancel();
    }

    #[tokio::test]
    async fn no_provider_means_404_at_once_and_forwarded_requests_stay_local() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_addr = serve(a.app.clone(), Arc::new(Metrics::new()), &stop).await;
        let (nobody, _d1) = empty_node(vec![], Arc::new(Metrics::new())).await;
        let (digest, _) = &a.expected.blobs[0];
        let uri = format!("/v2/team/app/blobs/{digest}");
        let answer = both(&nobody, &uri, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(code(&answer), "BLOB_UNKNOWN");

        let (b, _d2) = empty_node(vec![a_addr], Arc::new(Metrics::new())).await;
        let request = Request::get(&uri)
            .header(FORWARDED_HEADER, "1")
            .body(Body::empty())
            .unwrap();
        let response = b.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "a forwarded request is never forwarded again"
        );
        stop.cancel();
    }

    /// The whole body must hash to its digest, so a resume at the wrong
    /// offset would break it; and the holder that resumed sent only the
    /// rest, as a range.
    #[tokio::test]
    async fn a_dead_provider_is_skipped_and_a_failing_body_is_resumed() {
        let stop = CancellationToken::new();
        let a = fixture(Filter::default()).await;
        let a_metrics = Arc::new(Metrics::new());
        let a_addr = serve(a.app.clone(), Arc::clone(&a_metrics), &stop).await;
        let (digest, size) = a.expected.blobs[0].clone();
        let uri = format!("/v2/team/app/blobs/{digest}");
        let whole = call(&a.app, Method::GET, &uri, None).await.body;
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let dying = dying_peer(whole.clone()).await;
        let (b, _dir) = empty_node(vec![closed, dying, a_addr], Arc::new(Metrics::new())).await;
        let answer = call(&b, Method::GET, &uri, None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, whole);
        let rest = size - size / 2;
        let text = a_metrics.encode();
        assert!(
            text.contains(&format!(
                r#"reflektor_served_bytes_total{{source="local"}} {rest}"#
            )),
            "the holder sent the rest, {rest} bytes, and no more: {text}"
        );
        stop.cancel();
    }
}

/// Readiness waits for what the node needs to be useful: with peer routing,
/// a peer.
#[tokio::test]
async fn readyz_waits_for_peers() {
    struct Lonely;
    #[async_trait::async_trait]
    impl Readiness for Lonely {
        async fn ready(&self) -> Result<(), String> {
            Err("no peers yet".to_owned())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    write_layout(dir.path(), 1);
    let app = router(Arc::new(AppState {
        store: Arc::new(OciLayoutStore::open(dir.path()).await.unwrap()),
        filter: Filter::default(),
        mirror: None,
        peers: Some(Arc::new(Lonely)),
        auth: None,
    }));
    let answer = call(&app, Method::GET, "/readyz", None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&answer.body).contains("no peers yet"));
}

//! The HTTP mirror: the OCI distribution spec's pull endpoints over a node's
//! content store. Handlers are plain axum, testable with `oneshot`; `server`
//! owns the connections in production so that blob bodies can leave through
//! `sendfile(2)`.

mod error;
mod filter;
mod limits;
mod mirror;
mod peer_health;
pub mod range;
pub mod server;
pub mod target;

pub use error::RegistryError;
pub use limits::{LimitHits, ServerLimits};
pub use mirror::{FORWARDED_HEADER, Herd, Mirror, MirrorConfig, ProviderLookup};
pub use server::SendFile;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::StreamExt;

use crate::auth::BasicAuth;
use crate::metrics::Source;
use crate::oci::{Digest, Filter, Reference, media_type};
use crate::store::{BlobBody, ByteRange, ContentStore, StoreError};
use range::RangeRequest;
use target::{Kind, Target};

/// The header the distribution spec uses to name a response's digest.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Which endpoint answered, for metrics; set on every response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(pub &'static str);

pub struct AppState {
    pub store: Arc<dyn ContentStore>,
    pub filter: Filter,
    /// Peers to ask for what this node does not hold; `None` serves local
    /// content only.
    pub mirror: Option<Mirror>,
    /// Also required for `/readyz`: with peer routing, the first bootstrap
    /// round over.
    pub peers: Option<Arc<dyn Readiness>>,
    /// Credentials `/v2/` requires; `None` serves everyone. Health
    /// endpoints stay open, as kubelet's probes carry none.
    pub auth: Option<BasicAuth>,
}

/// Something `/readyz` waits for besides the content store.
#[async_trait::async_trait]
pub trait Readiness: Send + Sync {
    async fn ready(&self) -> Result<(), String>;
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*path}", any(dispatch))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .fallback(not_found)
        .with_state(state)
}

fn with_route(route: &'static str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(Route(route));
    response
}

fn pull_only(method: &Method) -> Result<(), RegistryError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(RegistryError::MethodNotAllowed(format!(
            "{method} is not supported: this is a read-only mirror; push to the upstream registry"
        )))
    }
}

/// Checks the request's credentials when the mirror has some.
fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), RegistryError> {
    match &state.auth {
        Some(auth)
            if !auth.accepts(
                headers
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
            ) =>
        {
            Err(RegistryError::Unauthorized)
        }
        _ => Ok(()),
    }
}

async fn base(State(state): State<Arc<AppState>>, method: Method, headers: HeaderMap) -> Response {
    let response = authorized(&state, &headers)
        .and_then(|()| pull_only(&method))
        .map(|()| {
            (
                [(
                    "docker-distribution-api-version",
                    HeaderValue::from_static("registry/2.0"),
                )],
                axum::Json(serde_json::json!({})),
            )
        });
    with_route("base", response)
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let route = if path.contains("/blobs/") {
        "blob"
    } else {
        "manifest"
    };
    let result = async {
        authorized(&state, &headers)?;
        pull_only(&method)?;
        let target = Target::parse(path, uri.query())?;
        filter::check(&state.filter, &target)?;
        let head = method == Method::HEAD;
        let local = match &target.kind {
            Kind::Manifest(reference) => {
                manifest(
                    &state,
                    &target.registry,
                    &target.name,
                    reference.clone(),
                    head,
                )
                .await
            }
            Kind::Blob(digest) => blob(&state, digest, &headers, head).await,
        };
        let forwarded = headers.contains_key(FORWARDED_HEADER);
        match (local, &state.mirror) {
            (
                Err(miss @ (RegistryError::ManifestUnknown(_) | RegistryError::BlobUnknown(_))),
                Some(mirror),
            ) if !forwarded => mirror.forward(&target, &method, &headers, miss).await,
            (local, _) => local.map(|mut response| {
                if response.extensions().get::<Source>().is_none() {
                    response.extensions_mut().insert(Source::Local);
                }
                response
            }),
        }
    }
    .await;
    with_route(route, result)
}

async fn manifest(
    state: &AppState,
    registry: &Option<crate::oci::RegistryHost>,
    name: &crate::oci::Name,
    reference: Reference,
    head: bool,
) -> Result<Response, RegistryError> {
    let digest = match reference {
        Reference::Digest(digest) => digest,
        Reference::Tag(tag) => {
            let Some(registry) = registry else {
                return Err(RegistryError::NameUnknown(format!(
                    "tag {name}:{tag} needs its registry: add ?ns=<registry> or put the \
                     registry first in the path, as in /v2/docker.io/{name}/manifests/{tag}"
                )));
            };
            state
                .store
                .resolve(registry, name, &tag)
                .await
                .map_err(|e| RegistryError::from_store(e, true))?
        }
    };
    let manifest = state
        .store
        .manifest(&digest)
        .await
        .map_err(|e| RegistryError::from_store(e, true))?;
    let headers = [
        (header::CONTENT_TYPE, header_value(&manifest.media_type)),
        (
            header::CONTENT_LENGTH,
            HeaderValue::from(manifest.bytes.len()),
        ),
        (
            header::HeaderName::from_static(DOCKER_CONTENT_DIGEST),
            header_value(&digest.to_string()),
        ),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes)
    };
    Ok((headers, body).into_response())
}

async fn blob(
    state: &AppState,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, RegistryError> {
    // A peer may have what this node is still downloading; this node's own
    // containerd never: that download is the one it is waiting for.
    let forwarded = headers.contains_key(FORWARDED_HEADER);
    let (size, in_flight) = match state.store.blob_size(digest).await {
        Ok(size) => (size, false),
        Err(StoreError::NotFound(_)) if forwarded => {
            let size = state
                .store
                .in_flight_size(digest)
                .await
                .map_err(|e| RegistryError::from_store(e, false))?;
            (size, true)
        }
        Err(error) => return Err(RegistryError::from_store(error, false)),
    };
    let range_header = headers.get(header::RANGE).map(HeaderValue::as_bytes);
    let (status, range) = match range::parse(range_header, size) {
        RangeRequest::Whole => (
            StatusCode::OK,
            ByteRange {
                start: 0,
                len: size,
            },
        ),
        RangeRequest::Partial(range) => (StatusCode::PARTIAL_CONTENT, range),
        RangeRequest::Unsatisfiable => {
            return Err(RegistryError::RangeNotSatisfiable(
                format!("the requested range is not within blob {digest} of {size} bytes"),
                size,
            ));
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, media_type::OCTET_STREAM)
        .header(header::CONTENT_LENGTH, range.len)
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        let end = range.start + range.len - 1;
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{end}/{size}", range.start),
        );
    }
    if head {
        return Ok(response.body(Body::empty()).expect("valid response parts"));
    }
    let body = if in_flight {
        state.store.in_flight_blob(digest, range).await
    } else {
        state.store.blob(digest, range).await
    };
    let body = body.map_err(|e| RegistryError::from_store(e, false))?;
    if in_flight {
        response = response.extension(Source::InFlight);
    }
    let response = match body {
        BlobBody::File { file, range } => {
            let send_file = SendFile::new(file, range);
            let body = Body::from_stream(send_file.stream());
            response.extension(send_file).body(body)
        }
        BlobBody::Stream(stream) => response.body(Body::from_stream(stream.boxed())),
    };
    Ok(response.expect("valid response parts"))
}

/// Media types and digests are plain ASCII by construction; a store that
/// returned anything else gets its value replaced rather than a panic.
fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut problem = state.store.ready().await.err().map(|e| e.to_string());
    if problem.is_none()
        && let Some(peers) = &state.peers
    {
        problem = peers.ready().await.err();
    }
    let response = match problem {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(problem) => {
            tracing::debug!(%problem, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {problem}\n"),
            )
                .into_response()
        }
    };
    with_route("readyz", response)
}

async fn livez() -> Response {
    with_route("livez", (StatusCode::OK, "alive\n"))
}

async fn not_found() -> Response {
    with_route(
        "other",
        RegistryError::Unsupported("not a registry endpoint; try /v2/".to_owned()),
    )
}

#[cfg(test)]
mod tests;

//! Every way a registry request can fail, as the OCI distribution spec's
//! error JSON. One place maps errors to status codes, so a handler cannot
//! answer a hostile request with a 5xx by accident.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::oci::{DigestError, NameError, RegistryHostError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    DigestInvalid(DigestError),
    #[error("{0}")]
    ManifestUnknown(String),
    #[error("{0}")]
    BlobUnknown(String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("{0}")]
    RangeNotSatisfiable(String, u64),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error(
        "this mirror needs basic-auth credentials: the ones in the agents' \
         /etc/secrets/basic-auth, which `reflektor configuration` writes into hosts.toml"
    )]
    Unauthorized,
    /// The store failed for a reason of its own; the details go to the log,
    /// not to the client, so the message leaves them out.
    #[error("the content store is unavailable")]
    Unavailable(StoreError),
}

impl RegistryError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RegistryError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            RegistryError::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            RegistryError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            RegistryError::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            RegistryError::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            RegistryError::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            RegistryError::RangeNotSatisfiable(..) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID")
            }
            RegistryError::Unsupported(_) => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            RegistryError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            RegistryError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            RegistryError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        }
    }

    /// A store miss becomes the right "unknown" for what was asked.
    pub fn from_store(error: StoreError, manifest: bool) -> Self {
        match error {
            StoreError::NotFound(what) if manifest => {
                RegistryError::ManifestUnknown(format!("{what} is not on this node"))
            }
            StoreError::NotFound(what) => {
                RegistryError::BlobUnknown(format!("{what} is not on this node"))
            }
            other => RegistryError::Unavailable(other),
        }
    }
}

impl From<NameError> for RegistryError {
    fn from(error: NameError) -> Self {
        match error {
            NameError::Tag(_) => RegistryError::TagInvalid(error.to_string()),
            NameError::Digest(digest) => RegistryError::DigestInvalid(digest),
            NameError::Name(_) | NameError::TooLong(_) => {
                RegistryError::NameInvalid(error.to_string())
            }
        }
    }
}

impl From<DigestError> for RegistryError {
    fn from(error: DigestError) -> Self {
        RegistryError::DigestInvalid(error)
    }
}

impl From<RegistryHostError> for RegistryError {
    fn from(error: RegistryHostError) -> Self {
        RegistryError::NameInvalid(error.to_string())
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let RegistryError::Unavailable(source) = &self {
            tracing::error!(error = %source, "content store failed");
        }
        let body = json!({"errors": [{"code": code, "message": self.to_string()}]});
        let mut response = (status, Json(body)).into_response();
        if let RegistryError::Unauthorized = self {
            // RFC 9110 asks a 401 to say which scheme answers it.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"reflektor\""),
            );
        }
        if let RegistryError::RangeNotSatisfiable(_, size) = self {
            response.headers_mut().insert(
                axum::http::header::CONTENT_RANGE,
                format!("bytes */{size}")
                    .parse()
                    .expect("a valid header value"),
            );
        }
        response
    }
}

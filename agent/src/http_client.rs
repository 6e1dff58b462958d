//! The agent's one HTTP client, for talking to other nodes: the mirror
//! path's forwarded requests and HTTP bootstrap's `/id` fetch. hyper-util's
//! pooled client over plain TCP (peers speak HTTP/1.1 inside the cluster),
//! with a connect timeout of its own so that a dead address fails fast, and
//! Nagle off, since requests are small and latency is what counts.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client for bodiless requests (GET and HEAD).
pub type PeerClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client(connect_timeout: Duration) -> PeerClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

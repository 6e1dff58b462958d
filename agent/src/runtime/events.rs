//! containerd's event stream, narrowed to what state sync reacts to: images
//! and content coming and going in one namespace.

use containerd_client::services::v1::{SubscribeRequest, events_client::EventsClient};
use futures::{Stream, StreamExt};

use super::{Containerd, RuntimeError};

impl Containerd {
    /// The topics (`/images/create`, `/content/delete`, …) of image and
    /// content events in `namespace`, as they happen. Resolves only when
    /// the first event arrives (containerd sends no response before it), so
    /// callers run it in a task of its own. The stream ends when containerd
    /// goes away; callers subscribe again.
    pub async fn image_and_content_events(
        &self,
        namespace: &str,
    ) -> Result<impl Stream<Item = Result<String, RuntimeError>> + use<>, RuntimeError> {
        // Filters in one string are ANDed; separate strings are ORed.
        let filters = ["images", "content"]
            .map(|kind| format!(r#"namespace=="{namespace}",topic~="^/{kind}/""#))
            .to_vec();
        let mut client = EventsClient::new(self.channel());
        let socket = self.socket().to_owned();
        let failed = move |rpc: &'static str, status: tonic::Status| RuntimeError::Rpc {
            path: socket.clone(),
            rpc,
            status: Box::new(status),
        };
        // No timeout: containerd answers a subscription only with its first
        // event, which on a quiet node may be hours away.
        let stream = client
            .subscribe(SubscribeRequest { filters })
            .await
            .map_err(|status| failed("Events Subscribe", status))?
            .into_inner();
        Ok(stream.map(move |envelope| {
            envelope
                .map(|e| e.topic)
                .map_err(|status| failed("Events stream", status))
        }))
    }
}

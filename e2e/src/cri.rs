//! Image pulls the way kubelet makes them, and containerd's own record of the result.
//!
//! The mirror exists to serve kubelet's pulls, and those go through CRI's
//! `ImageService`: CRI resolves registries through `hosts.toml`, stores images in the
//! `k8s.io` namespace and, on containerd 2.x, pulls through the transfer service; `ctr
//! pull` or the transfer API called directly would take other paths. What a pull left
//! behind is then read from containerd's images and content services, not from CRI,
//! because CRI reports image IDs and sizes, not the manifests and blobs a mirror serves.

use std::time::Duration;

use anyhow::{Context, Result};
use containerd_client::{
    Client,
    services::v1::{GetImageRequest, Image, Info, InfoRequest},
};
use k8s_cri::v1::{
    self, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest, RemoveImageRequest,
    image_service_client::ImageServiceClient,
};
use tonic::{Code, Request, Status, transport::Channel};

use crate::node::ContainerdNode;

/// Where CRI keeps images, blobs and snapshots.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// A pull fetches and unpacks every layer; big test images take a while in CI.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// Every other call only reads or deletes metadata.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's CRI image service, as kubelet uses it.
#[derive(Debug, Clone)]
pub struct Cri {
    node: String,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(node: &ContainerdNode) -> Result<Self> {
        Ok(Self {
            node: node.name().to_owned(),
            images: ImageServiceClient::new(channel(node).await?),
        })
    }

    /// `PullImage`, as kubelet sends it for a pod without pull secrets; returns the image
    /// reference CRI answers with, the image ID (`sha256:<config digest>`).
    pub async fn pull_image(&self, image: &str) -> Result<String> {
        let request = PullImageRequest {
            image: Some(spec(image)),
            ..Default::default()
        };
        let mut images = self.images.clone();
        let response = self
            .within(
                format!("CRI PullImage of {image}"),
                PULL_TIMEOUT,
                images.pull_image(deadline(request, PULL_TIMEOUT)),
            )
            .await?;
        Ok(response.image_ref)
    }

    /// `ImageStatus`; `None` when the node does not have the image.
    pub async fn image_status(&self, image: &str) -> Result<Option<v1::Image>> {
        let request = ImageStatusRequest {
            image: Some(spec(image)),
            verbose: false,
        };
        let mut images = self.images.clone();
        let response = self
            .within(
                format!("CRI ImageStatus of {image}"),
                CALL_TIMEOUT,
                images.image_status(deadline(request, CALL_TIMEOUT)),
            )
            .await?;
        Ok(response.image)
    }

    /// `ListImages`, unfiltered.
    pub async fn list_images(&self) -> Result<Vec<v1::Image>> {
        let request = ListImagesRequest { filter: None };
        let mut images = self.images.clone();
        let response = self
            .within(
                "CRI ListImages".to_owned(),
                CALL_TIMEOUT,
                images.list_images(deadline(request, CALL_TIMEOUT)),
            )
            .await?;
        Ok(response.images)
    }

    /// Waits until CRI answers `ListImages`: after a restart, containerd
    /// answers its own API before the CRI plugin has recovered its state,
    /// and CRI calls fail with "server is not initialized yet" until then.
    /// kubelet retries such calls; a check must wait instead.
    pub async fn wait_initialized(&self) -> Result<()> {
        crate::support::eventually(
            &format!("CRI on node {} serving after a restart", self.node),
            || async { Ok(self.list_images().await.is_ok()) },
        )
        .await
    }

    /// `RemoveImage`; removing an image the node does not have succeeds, as in CRI.
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        let request = RemoveImageRequest {
            image: Some(spec(image)),
        };
        let mut images = self.images.clone();
        self.within(
            format!("CRI RemoveImage of {image}"),
            CALL_TIMEOUT,
            images.remove_image(deadline(request, CALL_TIMEOUT)),
        )
        .await?;
        Ok(())
    }

    /// Awaits a call, a second longer than the deadline containerd was given, so that
    /// containerd's own error wins when it answers at all.
    async fn within<T>(
        &self,
        what: String,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T> {
        let response = tokio::time::timeout(timeout + Duration::from_secs(1), call)
            .await
            .with_context(|| format!("{what} on node {} took over {timeout:?}", self.node))?
            .with_context(|| format!("{what} on node {} failed", self.node))?;
        Ok(response.into_inner())
    }
}

/// A request carrying its deadline, so that containerd abandons work the harness has
/// given up on.
fn deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

/// containerd's own records in the `k8s.io` namespace: images by name, with the
/// descriptor they point at, and content by digest.
pub struct K8sNamespace {
    node: String,
    client: Client,
}

impl K8sNamespace {
    pub async fn connect(node: &ContainerdNode) -> Result<Self> {
        Ok(Self {
            node: node.name().to_owned(),
            client: Client::from(channel(node).await?),
        })
    }

    /// The image record named `name` (e.g. `127.0.0.1:5000/repo:tag`, or
    /// `…/repo@sha256:…`), `None` when there is none.
    pub async fn image(&self, name: &str) -> Result<Option<Image>> {
        let request = namespaced(GetImageRequest {
            name: name.to_owned(),
        });
        match self.client.images().get(request).await {
            Ok(response) => Ok(response.into_inner().image),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status).with_context(|| {
                format!(
                    "reading image {name} in namespace {K8S_NAMESPACE} of node {}",
                    self.node
                )
            }),
        }
    }

    /// The content store's record of the blob `digest`, `None` when the node lacks it.
    pub async fn content(&self, digest: &str) -> Result<Option<Info>> {
        let request = namespaced(InfoRequest {
            digest: digest.to_owned(),
        });
        match self.client.content().info(request).await {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status).with_context(|| {
                format!(
                    "reading content {digest} in namespace {K8S_NAMESPACE} of node {}",
                    self.node
                )
            }),
        }
    }
}

fn namespaced<T>(message: T) -> Request<T> {
    let mut request = deadline(message, CALL_TIMEOUT);
    request.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(K8S_NAMESPACE),
    );
    request
}

pub(crate) async fn channel(node: &ContainerdNode) -> Result<Channel> {
    containerd_client::connect(node.socket())
        .await
        .with_context(|| {
            format!(
                "connecting to node {} on {}",
                node.name(),
                node.socket().display()
            )
        })
}

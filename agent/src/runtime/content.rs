//! containerd's images and content services in one namespace: what the
//! content store serves from. Every call goes through the same deadline as
//! the rest of the client, so a wedged containerd fails a request instead
//! of hanging it.

use bytes::Bytes;
use containerd_client::services::v1::{
    GetImageRequest, InfoRequest, ListImagesRequest, ReadContentRequest,
    content_client::ContentClient, images_client::ImagesClient,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};

use super::{Containerd, RuntimeError};

/// The metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// A containerd namespace, checked once: it travels in a gRPC header, which
/// must be printable ASCII.
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
    header: MetadataValue<Ascii>,
}

impl Namespace {
    pub fn new(name: &str) -> Result<Self, RuntimeError> {
        let header = name.parse().map_err(|_| RuntimeError::Namespace {
            name: name.to_owned(),
        })?;
        Ok(Namespace {
            name: name.to_owned(),
            header,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.header.clone());
        request
    }
}

/// An image record: its name and the descriptor it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub target: Option<ImageTarget>,
}

/// The descriptor an image record points at, as containerd keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTarget {
    pub media_type: String,
    pub digest: String,
}

impl From<containerd_client::services::v1::Image> for ImageRecord {
    fn from(image: containerd_client::services::v1::Image) -> Self {
        ImageRecord {
            name: image.name,
            target: image.target.map(|target| ImageTarget {
                media_type: target.media_type,
                digest: target.digest,
            }),
        }
    }
}

impl Containerd {
    /// Every image record in `namespace`.
    pub async fn images(&self, namespace: &Namespace) -> Result<Vec<ImageRecord>, RuntimeError> {
        let mut client = ImagesClient::new(self.channel());
        let request = namespace.request(ListImagesRequest { filters: vec![] });
        let reply = self.call("images List", client.list(request)).await?;
        Ok(reply
            .into_inner()
            .images
            .into_iter()
            .map(ImageRecord::from)
            .collect())
    }

    /// One image record by name; `None` when there is none.
    pub async fn image(
        &self,
        namespace: &Namespace,
        name: &str,
    ) -> Result<Option<ImageRecord>, RuntimeError> {
        let mut client = ImagesClient::new(self.channel());
        let request = namespace.request(GetImageRequest {
            name: name.to_owned(),
        });
        let reply = found(self.call("images Get", client.get(request)).await)?;
        Ok(reply.and_then(|r| r.into_inner().image.map(ImageRecord::from)))
    }

    /// A blob's size; `None` when the content store lacks it.
    pub async fn content_size(
        &self,
        namespace: &Namespace,
        digest: &str,
    ) -> Result<Option<u64>, RuntimeError> {
        let mut client = ContentClient::new(self.channel());
        let request = namespace.request(InfoRequest {
            digest: digest.to_owned(),
        });
        let reply = found(self.call("content Info", client.info(request)).await)?;
        Ok(reply.and_then(|r| u64::try_from(r.into_inner().info?.size).ok()))
    }

    /// `len` bytes of a blob from `offset`, as containerd streams them.
    /// The deadline covers the call, not the stream: a large blob may take
    /// longer than it to arrive.
    pub async fn read_content(
        &self,
        namespace: &Namespace,
        digest: &str,
        offset: u64,
        len: u64,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, RuntimeError> {
        let too_large = |n: u64| RuntimeError::Range { offset: n };
        let mut client = ContentClient::new(self.channel());
        let request = namespace.request(ReadContentRequest {
            digest: digest.to_owned(),
            offset: i64::try_from(offset).map_err(|_| too_large(offset))?,
            size: i64::try_from(len).map_err(|_| too_large(len))?,
        });
        let stream = self
            .call("content Read", client.read(request))
            .await?
            .into_inner();
        Ok(stream
            .map_ok(|chunk| Bytes::from(chunk.data))
            .map_err(std::io::Error::other)
            .boxed())
    }
}

/// containerd's "not found" as `None`, every other failure as it is.
fn found<T>(result: Result<T, RuntimeError>) -> Result<Option<T>, RuntimeError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

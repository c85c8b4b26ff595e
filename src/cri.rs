//! Generated CRI v1 types, clients and servers (from `proto/runtime/v1/api.proto`), and a helper
//! that connects a tonic channel to a CRI unix socket.
//!
//! The proxy never re-encodes what it forwards; these types are used to decode the intercepted
//! calls, by the CLI's own CRI client, and by tests.

#![allow(clippy::all, missing_docs)]

use std::path::{Path, PathBuf};

tonic::include_proto!("runtime.v1");

include!(concat!(env!("OUT_DIR"), "/known_methods.rs"));

/// gRPC path prefix of the CRI v1 services.
pub const V1_PREFIX: &str = "/runtime.v1.";
/// gRPC path prefix of the deprecated CRI v1alpha2 services, which the proxy refuses.
pub const V1ALPHA2_PREFIX: &str = "/runtime.v1alpha2.";

/// A lazily connecting tonic channel to a CRI server on a unix socket. The first call connects;
/// a broken connection is re-established on the next call.
pub fn channel(socket: impl AsRef<Path>) -> tonic::transport::Channel {
    let path: PathBuf = socket.as_ref().to_path_buf();
    // The URI is ignored by the connector; it only has to parse.
    tonic::transport::Endpoint::from_static("http://cri.sock").connect_with_connector_lazy(
        tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }),
    )
}

/// A RuntimeService client on `socket`.
pub fn runtime_client(
    socket: impl AsRef<Path>,
) -> runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
    runtime_service_client::RuntimeServiceClient::new(channel(socket))
}

/// An ImageService client on `socket`.
pub fn image_client(
    socket: impl AsRef<Path>,
) -> image_service_client::ImageServiceClient<tonic::transport::Channel> {
    image_service_client::ImageServiceClient::new(channel(socket))
}

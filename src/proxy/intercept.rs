//! The one intercept point: PullImage, CreateContainer and RunPodSandbox are buffered, decoded
//! and handed to a [`Guard`] before anything reaches the runtime. Everything else is relayed
//! untouched.
//!
//! The guard sees decoded requests; the proxy keeps the original bytes and forwards those (or the
//! original bytes with extra fields appended, see [`Verdict::ForwardAppended`]), so fields a newer
//! kubelet sends and our proto lacks survive.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::grpc::Status;
use crate::cri::{
    CreateContainerRequest, PullImageRequest, PullImageResponse, RunPodSandboxRequest,
};

/// The gRPC paths that go through the guard.
pub const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
pub const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
/// Runs the runtime's sandbox (pause) image, which no PullImage or CreateContainer names.
pub const RUN_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/RunPodSandbox";

/// A decoded request that needs a decision.
#[derive(Debug)]
pub enum Call {
    Pull(Box<PullImageRequest>),
    Create(Box<CreateContainerRequest>),
    RunSandbox(Box<RunPodSandboxRequest>),
}

impl Call {
    /// The method name, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Call::Pull(_) => "PullImage",
            Call::Create(_) => "CreateContainer",
            Call::RunSandbox(_) => "RunPodSandbox",
        }
    }

    /// The image the call names, for logs (never includes credentials; caller-controlled text:
    /// log it escaped, e.g. with `grpc::Text`).
    pub fn image(&self) -> &str {
        let spec = match self {
            Call::Pull(r) => r.image.as_ref(),
            Call::Create(r) => r.config.as_ref().and_then(|c| c.image.as_ref()),
            Call::RunSandbox(_) => None,
        };
        spec.map(|s| s.image.as_str()).unwrap_or("")
    }

    /// The namespace the request claims (its sandbox config), for logs. A claim: decisions
    /// on CreateContainer take the namespace from the runtime's record of the sandbox.
    pub fn namespace(&self) -> &str {
        let sandbox = match self {
            Call::Pull(r) => r.sandbox_config.as_ref(),
            Call::Create(r) => r.sandbox_config.as_ref(),
            Call::RunSandbox(r) => r.config.as_ref(),
        };
        sandbox
            .and_then(|s| s.metadata.as_ref())
            .map(|m| m.namespace.as_str())
            .unwrap_or("")
    }
}

/// Checks the runtime's successful PullImage response before it goes back to the kubelet; an
/// error status replaces the response (the guard must undo what the runtime did, e.g. remove
/// the image, before returning it).
pub type Confirm =
    Box<dyn FnOnce(PullImageResponse) -> BoxFuture<'static, Result<(), Status>> + Send>;

/// What to do with an intercepted call.
pub enum Verdict {
    /// Forward the original request bytes.
    Forward,
    /// Forward the original message with these protobuf-encoded fields appended (protobuf merge:
    /// the last value of a field wins, embedded messages merge), e.g. to pin an image to a digest
    /// without dropping fields unknown to our proto.
    ForwardAppended(Bytes),
    /// Forward the original bytes; if the runtime succeeds, run the confirmation on its response
    /// before answering (used to check the digest the runtime actually stored, invariant I1).
    ForwardThen(Confirm),
    /// Refuse: answer with this status; nothing reaches the runtime.
    Deny(Status),
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Forward => f.write_str("Forward"),
            Verdict::ForwardAppended(b) => write!(f, "ForwardAppended({} bytes)", b.len()),
            Verdict::ForwardThen(_) => f.write_str("ForwardThen"),
            Verdict::Deny(s) => write!(f, "Deny({s:?})"),
        }
    }
}

/// A boxed future, as returned by [`Guard::decide`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides on intercepted calls. Implementations must fail closed: any error is a `Deny`.
pub trait Guard: Send + Sync + 'static {
    fn decide<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Verdict>;
}

/// The guard of the transparent proxy: allows everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Guard for AllowAll {
    fn decide<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Verdict> {
        crate::metrics::DecisionLog {
            method: call.method(),
            image: call.image(),
            digest: "",
            namespace: call.namespace(),
            pod: "",
            rule: "(no policy)",
            mode: "",
            verdict: crate::metrics::Verdict::Allow,
            class: crate::metrics::ReasonClass::NoPolicy,
            reason: "no policy configured: every image is allowed",
            cached: false,
            duration: std::time::Duration::ZERO,
        }
        .emit();
        Box::pin(std::future::ready(Verdict::Forward))
    }
}

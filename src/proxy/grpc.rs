//! The little of gRPC-over-HTTP/2 the proxy has to speak itself: unwrapping the one
//! length-prefixed message of an intercepted unary request, and answering with a status
//! (a trailers-only response) when it refuses or cannot reach the runtime.

use bytes::Bytes;
use http::{HeaderValue, Response};

/// gRPC status codes the proxy itself produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// Used for signature denials: the kubelet strips the code only for `Unknown` and then reads
    /// the `SignatureValidationFailed` / `RegistryUnavailable` message prefix.
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// A status the proxy answers with instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// A trailers-only gRPC response carrying this status (send it with end-of-stream set).
    pub fn to_response(&self) -> Response<()> {
        let mut r = Response::new(());
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(self.code as u16));
        // Percent-encoded per the gRPC spec, so this cannot fail.
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&self.message)) {
            h.insert("grpc-message", v);
        }
        r
    }
}

/// Percent-encodes a grpc-message value: bytes outside printable ASCII, and `%`, become `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a request body is not one plain gRPC message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the request body is shorter than a gRPC message header ({0} bytes)")]
    Truncated(usize),
    #[error("the request message is compressed; cri-guard needs uncompressed CRI requests")]
    Compressed,
    #[error("the request body holds {got} bytes but its gRPC header announces {want}")]
    LengthMismatch { got: usize, want: usize },
}

/// Returns the single message of a unary gRPC request body (5-byte header, then the message).
pub fn unary_message(body: &Bytes) -> Result<Bytes, FrameError> {
    if body.len() < 5 {
        return Err(FrameError::Truncated(body.len()));
    }
    if body[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let want = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let got = body.len() - 5;
    if want != got {
        return Err(FrameError::LengthMismatch { got, want });
    }
    Ok(body.slice(5..))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed frame yields its message; every malformed shape is a named error.
    #[test]
    fn unary_frames() {
        let ok = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(unary_message(&ok).unwrap(), Bytes::from_static(&[8, 1]));
        assert_eq!(
            unary_message(&Bytes::from_static(&[0, 0])),
            Err(FrameError::Truncated(2))
        );
        assert_eq!(
            unary_message(&Bytes::from_static(&[1, 0, 0, 0, 0])),
            Err(FrameError::Compressed)
        );
        assert_eq!(
            unary_message(&Bytes::from_static(&[0, 0, 0, 0, 9, 1])),
            Err(FrameError::LengthMismatch { got: 1, want: 9 })
        );
    }

    /// Status responses are trailers-only with a percent-encoded message.
    #[test]
    fn status_response() {
        let r =
            Status::new(Code::Unknown, "SignatureValidationFailed: a 100% ünsigned").to_response();
        assert_eq!(r.headers()["grpc-status"], "2");
        assert_eq!(
            r.headers()["grpc-message"],
            "SignatureValidationFailed: a 100%25 %C3%BCnsigned"
        );
    }
}

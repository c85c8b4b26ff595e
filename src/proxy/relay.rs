//! Intercepted calls that are allowed go to the runtime on a connection of their own (never on
//! the relayed connection, whose stream ids and HPACK state belong to the client), through the
//! `h2` client: the request's original bytes (or with fields appended), the runtime's answer
//! read whole (bounded) and handed back to the frame relay ([`super::splice`]) as an [`Answer`]
//! it writes to the client itself.

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::client::SendRequest;
use http::Request;

use super::grpc::{self, Code, Status};
use super::intercept::Confirm;
use crate::cri::PullImageResponse;
use prost::Message;

fn unavailable(what: &str, e: &h2::Error) -> Status {
    Status::new(
        Code::Unavailable,
        format!("cri-guard: the container runtime {what}: {e}; the call was not completed"),
    )
}

/// Sends a unary call on `upstream` and reads the whole answer (at most `max_response` bytes
/// of data). A reset from the runtime is passed on as a reset.
pub(crate) async fn exchange(
    head: http::request::Parts,
    body: Bytes,
    upstream: SendRequest<Bytes>,
    max_response: usize,
) -> Answer {
    let mut upstream = match upstream.ready().await {
        Ok(u) => u,
        Err(e) => return Answer::Status(unavailable("connection failed", &e)),
    };
    let response = match upstream.send_request(Request::from_parts(head, ()), false) {
        Ok((response, mut tx)) => {
            let _ = tx.send_data(body, true);
            response
        }
        Err(e) => return Answer::Status(unavailable("refused the call", &e)),
    };
    let resp = match response.await {
        Ok(r) => r,
        Err(e) => {
            return match e.reason() {
                Some(reason) if e.is_remote() && e.is_reset() => Answer::Reset(reason),
                _ => Answer::Status(unavailable("connection broke", &e)),
            };
        }
    };
    let (parts, mut rx) = resp.into_parts();
    if rx.is_end_stream() {
        return Answer::TrailersOnly(parts);
    }
    let data = match read_body(&mut rx, max_response, "response").await {
        Ok(d) => d,
        Err(ReadError::Refused(status)) => return Answer::Status(status),
        Err(ReadError::Gone) => {
            return Answer::Status(Status::new(
                Code::Unavailable,
                "cri-guard: the runtime's response broke off",
            ));
        }
    };
    match rx.trailers().await {
        Ok(trailers) => Answer::Relay {
            parts,
            data,
            trailers,
        },
        Err(_) => Answer::Status(Status::new(
            Code::Unavailable,
            "cri-guard: the runtime's response broke off before its trailers",
        )),
    }
}

/// Why a response body was not read whole.
pub(crate) enum ReadError {
    /// The runtime's stream broke off or was reset.
    Gone,
    /// Refused, with this status.
    Refused(Status),
}

/// Reads the runtime's whole response body to a kept call, refusing more than `max` bytes.
pub(crate) async fn read_body(
    rx: &mut RecvStream,
    max: usize,
    what: &str,
) -> Result<Bytes, ReadError> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.map_err(|_| ReadError::Gone)?;
        total += chunk.len();
        if total > max {
            return Err(ReadError::Refused(Status::new(
                Code::ResourceExhausted,
                format!(
                    "cri-guard: the runtime's {what} is larger than {max} bytes; raise \
                     `max_intercepted_message` in the cri-guard configuration if this is legitimate"
                ),
            )));
        }
        let _ = rx.flow_control().release_capacity(chunk.len());
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(f) => {
                // Room for the whole message its gRPC header announces (within `max`), so the
                // buffer does not grow by doubling past the announced size.
                let announced = f.get(1..5).map_or(0, |l| {
                    u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 5
                });
                buf.reserve(announced.min(max).max(f.len() + chunk.len()));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The runtime's answer to a confirmed call, read whole, for the client.
pub(crate) enum Answer {
    /// The runtime's response, relayed unchanged: headers, message, trailers.
    Relay {
        parts: http::response::Parts,
        data: Bytes,
        trailers: Option<http::HeaderMap>,
    },
    /// A trailers-only response (an error status from the runtime), relayed unchanged.
    TrailersOnly(http::response::Parts),
    /// cri-guard's own status instead (the confirmation refused, or the runtime failed).
    Status(Status),
    /// The runtime reset the stream: the client's stream is reset with the same code.
    Reset(h2::Reason),
}

impl Answer {
    /// Whether the answer is a failure (for the per-method error counters).
    pub(crate) fn failed(&self) -> bool {
        let bad = |h: &http::HeaderMap| h.get("grpc-status").is_some_and(|s| s.as_bytes() != b"0");
        match self {
            Answer::Relay { trailers, .. } => trailers.as_ref().is_none_or(bad),
            Answer::TrailersOnly(parts) => bad(&parts.headers),
            Answer::Status(_) | Answer::Reset(_) => true,
        }
    }
}

/// Sends a unary call to the runtime and, if it succeeds, runs `confirm` on its response,
/// independently of the client (the caller runs this in its own task, so that the check, and
/// the removal of an image that fails it, complete even if the client goes away: I1).
/// The response is read whole (headers, message, trailers); error responses pass through.
pub(crate) async fn exchange_confirmed(
    head: http::request::Parts,
    body: Bytes,
    upstream: SendRequest<Bytes>,
    confirm: Confirm,
    max_response: usize,
) -> Answer {
    let mut upstream = match upstream.ready().await {
        Ok(u) => u,
        Err(e) => return Answer::Status(unavailable("connection failed", &e)),
    };
    let response = match upstream.send_request(Request::from_parts(head, ()), false) {
        Ok((response, mut tx)) => {
            let _ = tx.send_data(body, true);
            response
        }
        Err(e) => return Answer::Status(unavailable("refused the call", &e)),
    };
    let resp = match response.await {
        Ok(r) => r,
        Err(e) => return Answer::Status(unavailable("connection broke", &e)),
    };
    let (parts, mut rx) = resp.into_parts();
    if rx.is_end_stream() {
        // Trailers-only: an error status. Nothing was stored; pass it on.
        return Answer::TrailersOnly(parts);
    }
    let data = match read_body(&mut rx, max_response, "PullImage response").await {
        Ok(d) => d,
        Err(_) => {
            return Answer::Status(Status::new(
                Code::Unavailable,
                "cri-guard: the runtime's response broke off",
            ));
        }
    };
    let trailers = rx.trailers().await.ok().flatten();
    let ok = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|s| s.as_bytes() == b"0");
    if ok {
        let decoded = grpc::unary_message(&data)
            .map_err(|e| e.to_string())
            .and_then(|m| PullImageResponse::decode(m).map_err(|e| e.to_string()));
        let verdict = match decoded {
            Ok(pulled) => confirm(pulled).await,
            Err(e) => Err(Status::new(
                Code::Unknown,
                format!(
                    "SignatureValidationFailed: cri-guard cannot read the runtime's PullImage response ({e})"
                ),
            )),
        };
        if let Err(status) = verdict {
            return Answer::Status(status);
        }
    }
    Answer::Relay {
        parts,
        data,
        trailers,
    }
}

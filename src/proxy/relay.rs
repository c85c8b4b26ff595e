//! Moving one gRPC call between the downstream (kubelet) and upstream (runtime) HTTP/2
//! connections without decoding it: headers, data frames, trailers and resets are passed on as
//! they come, so what leaves is byte-for-byte what arrived (messages are never re-encoded).
//!
//! Two details carry the speed (see design.md section 7): request data that is already there is
//! sent right behind the request headers without reserving capacity first, so both leave in one
//! write; and the response is sent with flow-control capacity reserved, releasing the upstream
//! window only for what was actually forwarded, so a large List response has real backpressure.

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};

use super::grpc::{self, Code, Status};
use super::intercept::Confirm;
use crate::cri::PullImageResponse;
use crate::metrics::{METRICS, method_index};
use prost::Message;

/// A request body: still arriving, or already read whole (an intercepted call).
pub(crate) enum Body {
    Stream(RecvStream),
    Buffered(Bytes),
}

/// Answers a call with a status and nothing else.
pub(crate) fn reply(mut respond: SendResponse<Bytes>, status: &Status) {
    // An error here means the client already went away: nothing left to tell it.
    let _ = respond.send_response(status.to_response(), true);
}

fn unavailable(what: &str, e: &h2::Error) -> Status {
    Status::new(
        Code::Unavailable,
        format!("cri-guard: the container runtime {what}: {e}; the call was not completed"),
    )
}

/// Forwards one call upstream and relays the response back.
pub(crate) async fn forward(
    head: http::request::Parts,
    body: Body,
    mut respond: SendResponse<Bytes>,
    upstream: SendRequest<Bytes>,
) {
    // Counted per method: one relaxed atomic add on a counter made at start.
    let method = method_index(head.uri.path());
    METRICS.relayed(method);
    let failed = |respond, status: &Status| {
        METRICS.relay_failed(method);
        reply(respond, status)
    };
    let mut upstream = match upstream.ready().await {
        Ok(u) => u,
        Err(e) => return failed(respond, &unavailable("connection failed", &e)),
    };
    let request = Request::from_parts(head, ());

    // Send the headers, plus whatever request data is already here, before yielding.
    let (response, rest) = match body {
        Body::Buffered(bytes) => match upstream.send_request(request, false) {
            Ok((response, mut tx)) => {
                let _ = tx.send_data(bytes, true);
                (response, None)
            }
            Err(e) => return failed(respond, &unavailable("refused the call", &e)),
        },
        Body::Stream(mut rx) => {
            let mut first = None;
            if !rx.is_end_stream() {
                if let Some(Some(Ok(chunk))) = rx.data().now_or_never() {
                    first = Some(chunk);
                }
            }
            let done = rx.is_end_stream() && first.is_none();
            match upstream.send_request(request, done) {
                Ok((response, mut tx)) => {
                    if let Some(chunk) = first {
                        let n = chunk.len();
                        let eos = rx.is_end_stream();
                        let _ = tx.send_data(chunk, eos);
                        let _ = rx.flow_control().release_capacity(n);
                        (response, (!eos).then_some((rx, tx)))
                    } else {
                        (response, (!done).then_some((rx, tx)))
                    }
                }
                Err(e) => return failed(respond, &unavailable("refused the call", &e)),
            }
        }
    };

    let response_side = async move {
        match response.await {
            Ok(resp) => {
                let (parts, rx) = resp.into_parts();
                let eos = rx.is_end_stream();
                let trailers_only_error = eos && error_status(&parts.headers);
                let ended_in_error =
                    match respond.send_response(Response::from_parts(parts, ()), eos) {
                        Ok(tx) if !eos => pipe(rx, tx, true).await,
                        _ => trailers_only_error,
                    };
                if ended_in_error {
                    METRICS.relay_failed(method);
                }
            }
            Err(e) => {
                METRICS.relay_failed(method);
                match e.reason() {
                    // The runtime reset the stream: pass the reset on, as a direct client
                    // would see it.
                    Some(reason) if e.is_remote() => respond.send_reset(reason),
                    _ => reply(respond, &unavailable("connection broke", &e)),
                }
            }
        }
    };
    match rest {
        None => response_side.await,
        Some((rx, tx)) => {
            // The call ends when the response ends; a request still streaming then is dropped.
            let request_side = async move {
                let _ = pipe(rx, tx, false).await;
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = request_side => {}
                _ = response_side => {}
            }
        }
    }
}

/// Relays one direction of a stream: data with backpressure, then trailers or end of stream.
/// A reset on either side is passed to the other (dropping `rx` resets it with CANCEL). On the
/// response side (`response`), a runtime connection that breaks mid-response ends the client's
/// call with status Unavailable (trailers), so it is never mistaken for a complete answer.
/// Returns whether the stream ended in an error: a reset, a break, or trailers with a gRPC
/// error status.
async fn pipe(mut rx: RecvStream, mut tx: SendStream<Bytes>, response: bool) -> bool {
    loop {
        let next = tokio::select! {
            biased;
            d = rx.data() => d,
            _ = poll_fn(|cx| tx.poll_reset(cx)) => return true,
        };
        match next {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                let eos = rx.is_end_stream();
                if send_all(&mut tx, chunk, eos).await.is_err() {
                    return true;
                }
                let _ = rx.flow_control().release_capacity(n);
                if eos {
                    return false;
                }
            }
            Some(Err(e)) => {
                fail(tx, &e, response);
                return true;
            }
            None => break,
        }
    }
    match rx.trailers().await {
        Ok(Some(trailers)) => {
            let failed = error_status(&trailers);
            let _ = tx.send_trailers(trailers);
            failed
        }
        Ok(None) => {
            let _ = tx.send_data(Bytes::new(), true);
            false
        }
        Err(e) => {
            fail(tx, &e, response);
            true
        }
    }
}

/// Whether headers (or trailers) carry a gRPC status other than OK.
fn error_status(h: &http::HeaderMap) -> bool {
    h.get("grpc-status").is_some_and(|s| s.as_bytes() != b"0")
}

/// Ends `tx` after its source failed: a reset the runtime (or client) sent is passed on as is;
/// a broken runtime connection ends a response with status Unavailable.
fn fail(mut tx: SendStream<Bytes>, e: &h2::Error, response: bool) {
    match e.reason() {
        Some(reason) if e.is_remote() || !response => tx.send_reset(reason),
        _ if response => {
            let status = unavailable("connection broke during the response", e);
            let mut trailers = http::HeaderMap::new();
            for (k, v) in status.to_response().headers() {
                if k != "content-type" {
                    trailers.insert(k, v.clone());
                }
            }
            let _ = tx.send_trailers(trailers);
        }
        _ => tx.send_reset(Reason::CANCEL),
    }
}

/// Sends `chunk` within the peer's flow-control window, waiting for capacity as needed; the
/// end-of-stream flag rides on the last frame.
async fn send_all(tx: &mut SendStream<Bytes>, mut chunk: Bytes, eos: bool) -> Result<(), ()> {
    if chunk.is_empty() {
        return if eos {
            tx.send_data(chunk, true).map_err(drop)
        } else {
            Ok(())
        };
    }
    while !chunk.is_empty() {
        tx.reserve_capacity(chunk.len());
        let mut cap = tx.capacity();
        while cap == 0 {
            cap = match poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                _ => return Err(()),
            };
        }
        let part = chunk.split_to(cap.min(chunk.len()));
        tx.send_data(part, eos && chunk.is_empty()).map_err(drop)?;
    }
    Ok(())
}

/// Why a body was not read whole.
pub(crate) enum ReadError {
    /// The client went away (or reset the stream): nobody to answer.
    Gone,
    /// Refused, with this status.
    Refused(Status),
}

/// Reads a whole body, refusing more than `max` bytes; `admit` is asked before each chunk is
/// kept (the intercepted-bytes budget) and may refuse it.
pub(crate) async fn read_body(
    rx: &mut RecvStream,
    max: usize,
    method: &str,
    mut admit: impl FnMut(usize) -> Result<(), Status>,
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
                    "cri-guard: {method} request larger than {max} bytes refused; raise \
                     `max_intercepted_message` in the cri-guard configuration if this is legitimate"
                ),
            )));
        }
        admit(chunk.len()).map_err(ReadError::Refused)?;
        let _ = rx.flow_control().release_capacity(chunk.len());
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(f) => {
                // Room for the whole message its gRPC header announces (within `max`), so the
                // buffer does not grow by doubling past what was admitted.
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
    let method = method_index(head.uri.path());
    METRICS.relayed(method);
    let failed = |status| {
        METRICS.relay_failed(method);
        Answer::Status(status)
    };
    let mut upstream = match upstream.ready().await {
        Ok(u) => u,
        Err(e) => return failed(unavailable("connection failed", &e)),
    };
    let response = match upstream.send_request(Request::from_parts(head, ()), false) {
        Ok((response, mut tx)) => {
            let _ = tx.send_data(body, true);
            response
        }
        Err(e) => return failed(unavailable("refused the call", &e)),
    };
    let resp = match response.await {
        Ok(r) => r,
        Err(e) => return failed(unavailable("connection broke", &e)),
    };
    let (parts, mut rx) = resp.into_parts();
    if rx.is_end_stream() {
        // Trailers-only: an error status. Nothing was stored; pass it on.
        METRICS.relay_failed(method);
        return Answer::TrailersOnly(parts);
    }
    let data = match read_body(&mut rx, max_response, "PullImage response", |_| Ok(())).await {
        Ok(d) => d,
        Err(_) => {
            return failed(Status::new(
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
    } else {
        METRICS.relay_failed(method);
    }
    Answer::Relay {
        parts,
        data,
        trailers,
    }
}

/// Gives the client the answer of [`exchange_confirmed`].
pub(crate) fn answer(mut respond: SendResponse<Bytes>, answer: Answer) {
    match answer {
        Answer::Status(status) => reply(respond, &status),
        Answer::TrailersOnly(parts) => {
            let _ = respond.send_response(Response::from_parts(parts, ()), true);
        }
        Answer::Relay {
            parts,
            data,
            trailers,
        } => {
            let Ok(mut tx) = respond.send_response(Response::from_parts(parts, ()), false) else {
                return;
            };
            let _ = tx.send_data(data, false);
            match trailers {
                Some(t) => {
                    let _ = tx.send_trailers(t);
                }
                None => {
                    let _ = tx.send_data(Bytes::new(), true);
                }
            }
        }
    }
}

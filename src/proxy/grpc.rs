//! The little of gRPC-over-HTTP/2 the proxy has to speak itself: unwrapping the one
//! length-prefixed message of an intercepted unary request, and answering with a status
//! (a trailers-only response) when it refuses or cannot reach the runtime.
//!
//! Status messages carry text that callers, pod authors and registries control (image names,
//! registry answers). Every message is bounded ([`MAX_MESSAGE`] bytes, with a truncation
//! marker) and its control characters escaped, so a registry cannot make a status too large
//! for a gRPC client's header limits, and nobody can forge lines in a text log. [`Text`] does
//! the same for log fields.

use std::fmt::{self, Write as _};

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

/// Longest status message, in bytes (before percent-encoding); the kubelet shows it in pod
/// events, and gRPC clients limit header sizes (16 KiB is common).
pub const MAX_MESSAGE: usize = 2048;
/// Longest text of one log field, in bytes.
pub const MAX_LOG_FIELD: usize = 1024;

impl Status {
    /// A status whose message is escaped and bounded ([`bounded`]).
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        let message = message.into();
        Status {
            code,
            message: bounded(&message, MAX_MESSAGE),
        }
    }

    /// A trailers-only gRPC response carrying this status (send it with end-of-stream set).
    pub fn to_response(&self) -> Response<()> {
        let mut r = Response::new(());
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(self.code as u16));
        // Bounded again (the fields are public) and percent-encoded per the gRPC spec, so this
        // cannot fail.
        let message = bounded(&self.message, MAX_MESSAGE);
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
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

/// Whether `c` must not appear raw in a message or a log line: ASCII and Unicode control
/// characters, line and paragraph separators, and bidirectional overrides (which reorder how
/// a terminal shows the rest of the line).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Writes `s` with unsafe characters escaped (`\n`, `\r`, `\t`, `\u{..}`), at most `max`
/// bytes of it, then (if cut) a marker saying how much of how long a text was shown.
fn write_escaped(out: &mut impl fmt::Write, s: &str, max: usize) -> fmt::Result {
    let mut written = 0;
    let mut esc = String::new();
    for (i, c) in s.char_indices() {
        esc.clear();
        match c {
            '\n' => esc.push_str("\\n"),
            '\r' => esc.push_str("\\r"),
            '\t' => esc.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(esc, "\\u{{{:x}}}", c as u32);
            }
            c => esc.push(c),
        }
        if written + esc.len() > max {
            return write!(out, "... [truncated: {i} of {} bytes shown]", s.len());
        }
        written += esc.len();
        out.write_str(&esc)?;
    }
    Ok(())
}

/// `s` with control characters escaped, cut to about `max` bytes with a truncation marker
/// (the marker adds under 60 bytes).
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max && !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(max.min(s.len()) + 64);
    let _ = write_escaped(&mut out, s, max.saturating_sub(60));
    out
}

/// A log field value that a caller, pod author or registry controls: displayed escaped and
/// bounded to [`MAX_LOG_FIELD`] bytes (`info!(image = %Text(&image), ..)`).
#[derive(Debug, Clone, Copy)]
pub struct Text<'a>(pub &'a str);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= MAX_LOG_FIELD && !self.0.chars().any(unsafe_char) {
            return f.write_str(self.0);
        }
        let mut out = String::new();
        write_escaped(&mut out, self.0, MAX_LOG_FIELD - 60)?;
        f.write_str(&out)
    }
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

    /// Control characters are escaped, so a message or log field is one line whatever it quotes.
    #[test]
    fn escaping() {
        assert_eq!(bounded("plain", 100), "plain");
        assert_eq!(
            bounded("a\nb\r\tc\u{1b}[31m\u{202e}x\u{7f}", 100),
            "a\\nb\\r\\tc\\u{1b}[31m\\u{202e}x\\u{7f}"
        );
        assert_eq!(Text("x\ny").to_string(), "x\\ny");
        assert_eq!(Text("ünïcode stays").to_string(), "ünïcode stays");
    }

    /// Long text is cut at a character boundary with a marker saying how long it was.
    #[test]
    fn truncation() {
        let long = "é".repeat(5000);
        let b = bounded(&long, 1000);
        assert!(b.len() <= 1000, "{}", b.len());
        assert!(
            b.ends_with("... [truncated: 940 of 10000 bytes shown]"),
            "{b}"
        );
        let t = Text(&long).to_string();
        assert!(t.len() <= MAX_LOG_FIELD && t.contains("truncated"), "{t}");
        let s = Status::new(Code::Unknown, "x".repeat(1 << 20));
        assert!(s.message.len() <= MAX_MESSAGE);
        let r = Status {
            code: Code::Unknown,
            message: "y".repeat(1 << 20),
        }
        .to_response();
        assert!(r.headers()["grpc-message"].len() <= MAX_MESSAGE);
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

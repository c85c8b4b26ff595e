//! HTTP/2 frames as the relay sees them (RFC 9113 section 4 and 6): the 9-byte header, the
//! checks each frame type needs before it may be relayed, and the few frames cri-guard writes
//! itself (SETTINGS, WINDOW_UPDATE, RST_STREAM, GOAWAY, and the HEADERS/DATA of its own
//! answers).
//!
//! Nothing here allocates for a frame that passes through: a header is read from the bytes where
//! they lie, and a payload is checked in place.

use std::fmt;

/// The client connection preface (RFC 9113 section 3.4), before the client's first SETTINGS.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Size of a frame header.
pub(crate) const HEAD: usize = 9;
/// The largest frame either side may send through the relay. It is HTTP/2's default, and the
/// relay rewrites a larger SETTINGS_MAX_FRAME_SIZE in the SETTINGS it relays down to it, so a
/// frame never needs more than this much buffer.
pub(crate) const MAX_FRAME: usize = 16_384;
/// The initial flow-control window of a connection and, by default, of a stream.
pub(crate) const DEFAULT_WINDOW: i64 = 65_535;
/// Largest flow-control window (RFC 9113 section 6.9.1).
pub(crate) const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Highest stream id: the last-stream-id of a GOAWAY that refuses nothing.
pub(crate) const MAX_STREAM_ID: u32 = (1 << 31) - 1;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

pub(crate) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(crate) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(crate) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub(crate) const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// HTTP/2 error codes (RFC 9113 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A connection error: the peer broke the protocol; the connection ends with a GOAWAY carrying
/// `reason` and `what` as debug data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnError {
    pub reason: Reason,
    pub what: &'static str,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.reason, self.what)
    }
}

pub(crate) fn conn_err(reason: Reason, what: &'static str) -> ConnError {
    ConnError { reason, what }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Reads a header from the first 9 bytes of `b` (the caller checked there are 9).
    #[inline]
    pub(crate) fn parse(b: &[u8]) -> Head {
        Head {
            len: (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize,
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt (RFC 9113 section 4.1).
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Appends a frame header.
#[inline]
pub(crate) fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len < 1 << 24);
    let l = (len as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]);
}

pub(crate) fn put_window_update(out: &mut Vec<u8>, stream: u32, inc: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&inc.to_be_bytes());
}

pub(crate) fn put_rst(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub(crate) fn put_goaway(out: &mut Vec<u8>, last: u32, reason: Reason, debug: &[u8]) {
    let debug = &debug[..debug.len().min(256)];
    put_head(out, 8 + debug.len(), GOAWAY, 0, 0);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
    out.extend_from_slice(debug);
}

pub(crate) fn put_settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    put_head(out, 6 * params.len(), SETTINGS, 0, 0);
    for (id, v) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(crate) fn put_settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, SETTINGS, ACK, 0);
}

/// The header block fragment of a HEADERS payload (padding and priority fields removed).
pub(crate) fn headers_fragment(head: &Head, payload: &[u8]) -> Result<(usize, usize), ConnError> {
    let (mut start, end) = unpad(head, payload)?;
    if head.has(PRIORITY_FLAG) {
        if end - start < 5 {
            return Err(conn_err(
                Reason::FrameSize,
                "HEADERS too short for its priority",
            ));
        }
        start += 5;
    }
    Ok((start, end))
}

/// Where the data of a possibly padded DATA or HEADERS payload lies: `(start, end)`.
pub(crate) fn unpad(head: &Head, payload: &[u8]) -> Result<(usize, usize), ConnError> {
    if !head.has(PADDED) {
        return Ok((0, payload.len()));
    }
    let Some(&pad) = payload.first() else {
        return Err(conn_err(
            Reason::FrameSize,
            "padded frame without a pad length",
        ));
    };
    let end = payload
        .len()
        .checked_sub(1 + pad as usize)
        .ok_or(conn_err(Reason::Protocol, "padding longer than the frame"))?;
    Ok((1, 1 + end))
}

/// Checks what a frame of `head` must satisfy whatever its stream's state (RFC 9113 section 6):
/// lengths, stream ids of connection-level frames, and the size limit.
pub(crate) fn check(head: &Head, payload: &[u8]) -> Result<(), ConnError> {
    let stream0 = head.stream == 0;
    match head.kind {
        DATA | HEADERS | CONTINUATION | PUSH_PROMISE if stream0 => {
            Err(conn_err(Reason::Protocol, "stream frame on stream 0"))
        }
        DATA => unpad(head, payload).map(drop),
        HEADERS => headers_fragment(head, payload).map(drop),
        PRIORITY if stream0 => Err(conn_err(Reason::Protocol, "PRIORITY on stream 0")),
        PRIORITY if head.len != 5 => Err(conn_err(Reason::FrameSize, "PRIORITY of wrong length")),
        RST_STREAM if stream0 => Err(conn_err(Reason::Protocol, "RST_STREAM on stream 0")),
        RST_STREAM if head.len != 4 => {
            Err(conn_err(Reason::FrameSize, "RST_STREAM of wrong length"))
        }
        SETTINGS | PING | GOAWAY if !stream0 => {
            Err(conn_err(Reason::Protocol, "connection frame on a stream"))
        }
        SETTINGS if head.has(ACK) && head.len != 0 => {
            Err(conn_err(Reason::FrameSize, "SETTINGS ACK with a payload"))
        }
        SETTINGS if head.len % 6 != 0 => {
            Err(conn_err(Reason::FrameSize, "SETTINGS of wrong length"))
        }
        SETTINGS => settings(payload).try_for_each(|(id, v)| check_setting(id, v)),
        PING if head.len != 8 => Err(conn_err(Reason::FrameSize, "PING of wrong length")),
        GOAWAY if head.len < 8 => Err(conn_err(Reason::FrameSize, "GOAWAY too short")),
        WINDOW_UPDATE if head.len != 4 => {
            Err(conn_err(Reason::FrameSize, "WINDOW_UPDATE of wrong length"))
        }
        WINDOW_UPDATE if window_increment(payload) == 0 => {
            // A stream error on a stream, a connection error on stream 0 (section 6.9); the
            // relay treats both as connection errors (no peer of cri-guard sends them).
            Err(conn_err(Reason::Protocol, "WINDOW_UPDATE of 0"))
        }
        _ => Ok(()),
    }
}

fn check_setting(id: u16, v: u32) -> Result<(), ConnError> {
    match id {
        SETTINGS_ENABLE_PUSH if v > 1 => Err(conn_err(Reason::Protocol, "ENABLE_PUSH not 0 or 1")),
        SETTINGS_INITIAL_WINDOW_SIZE if v as i64 > MAX_WINDOW => Err(conn_err(
            Reason::FlowControl,
            "INITIAL_WINDOW_SIZE over 2^31-1",
        )),
        SETTINGS_MAX_FRAME_SIZE if !(16_384..=16_777_215).contains(&v) => {
            Err(conn_err(Reason::Protocol, "MAX_FRAME_SIZE out of range"))
        }
        _ => Ok(()),
    }
}

/// The parameters of a SETTINGS payload (its length was checked to be a multiple of 6).
pub(crate) fn settings(payload: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    payload.chunks_exact(6).map(|p| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
        )
    })
}

/// The increment of a WINDOW_UPDATE payload (4 bytes, checked).
pub(crate) fn window_increment(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff
}

/// The error code of an RST_STREAM payload, or of a GOAWAY payload from offset 4.
pub(crate) fn code_at(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(len: usize, kind: u8, flags: u8, stream: u32) -> Head {
        Head {
            len,
            kind,
            flags,
            stream,
        }
    }

    /// A header written and read back is the same; the reserved bit is ignored.
    #[test]
    fn head_round_trip() {
        let mut out = Vec::new();
        put_head(&mut out, 0x12345, HEADERS, END_HEADERS | END_STREAM, 7);
        assert_eq!(Head::parse(&out), head(0x12345, HEADERS, 5, 7));
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out).stream, 7);
    }

    /// Padding: the pad length byte and the pad are cut off; too much padding is an error.
    #[test]
    fn padding() {
        let h = head(6, DATA, PADDED, 1);
        assert_eq!(unpad(&h, &[2, b'a', b'b', b'c', 0, 0]), Ok((1, 4)));
        assert_eq!(unpad(&h, &[5, 0, 0, 0, 0, 0]), Ok((1, 1)));
        assert!(unpad(&h, &[6, 0, 0, 0, 0, 0]).is_err());
        assert!(unpad(&head(0, DATA, PADDED, 1), &[]).is_err());
        let hp = head(8, HEADERS, PADDED | PRIORITY_FLAG, 1);
        assert_eq!(
            headers_fragment(&hp, &[1, 0, 0, 0, 3, 9, 0x82, 0]),
            Ok((6, 7))
        );
        assert!(headers_fragment(&hp, &[3, 0, 0, 0, 3]).is_err());
    }

    /// Each frame type's fixed rules.
    #[test]
    fn checks() {
        assert!(check(&head(0, DATA, 0, 0), &[]).is_err());
        assert!(check(&head(4, RST_STREAM, 0, 1), &[0; 4]).is_ok());
        assert!(check(&head(3, RST_STREAM, 0, 1), &[0; 3]).is_err());
        assert!(check(&head(6, SETTINGS, 0, 1), &[0; 6]).is_err());
        assert!(check(&head(5, SETTINGS, 0, 0), &[0; 5]).is_err());
        assert!(check(&head(6, SETTINGS, 0, 0), &[0, 2, 0, 0, 0, 2]).is_err());
        assert!(check(&head(6, SETTINGS, 0, 0), &[0, 5, 0, 0, 0x10, 0]).is_err());
        assert!(check(&head(6, SETTINGS, 0, 0), &[0, 5, 0, 0, 0x40, 0]).is_ok());
        assert!(check(&head(6, SETTINGS, 0, 0), &[0, 4, 0x80, 0, 0, 0]).is_err());
        assert!(check(&head(6, SETTINGS, 0, 0), &[0, 0x99, 0xff, 0, 0, 0]).is_ok());
        assert!(check(&head(6, SETTINGS, ACK, 0), &[0; 6]).is_err());
        assert!(check(&head(8, PING, 0, 0), &[0; 8]).is_ok());
        assert!(check(&head(8, PING, 0, 3), &[0; 8]).is_err());
        assert!(check(&head(4, WINDOW_UPDATE, 0, 0), &[0; 4]).is_err());
        assert!(check(&head(4, WINDOW_UPDATE, 0, 0), &[0, 0, 0, 1]).is_ok());
        assert!(check(&head(7, GOAWAY, 0, 0), &[0; 7]).is_err());
        assert!(check(&head(4, PRIORITY, 0, 1), &[0; 4]).is_err());
        assert!(
            check(&head(3, 0xfa, 0, 1), &[0; 3]).is_ok(),
            "unknown types pass"
        );
    }
}

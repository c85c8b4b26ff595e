//! Accepting the `:authority` that gRPC's C core (Python's grpcio, C++ agents) and grpc-java
//! send on unix sockets: the socket path, percent-encoded (`tmp%2Fx%2Fcri.sock`) or raw.
//!
//! containerd (Go) serves such requests. The `h2` crate builds an `http::Uri` for every request,
//! and the `http` crate refuses a `%` in a host name (and a `/` anywhere in an authority), so
//! `h2` resets each such stream with PROTOCOL_ERROR before the proxy sees it (docs/upstream.md).
//! Neither crate has a hook, so this module fixes the bytes before `h2` reads them: it follows
//! the HTTP/2 frames coming from the client, walks the HPACK blocks of HEADERS (and
//! CONTINUATION) frames, and rewrites an `:authority` value that `http` would refuse into one of
//! the *same length* in which every byte outside `[A-Za-z0-9._~-]` became `_`
//! (`tmp%2Fx%2Fcri.sock` -> `tmp_2Fx_2Fcri.sock`). The same length keeps the client's and
//! `h2`'s HPACK dynamic tables the same size, so every later reference to the entry (which is
//! how clients repeat the authority) resolves to the rewritten value on both sides. Everything
//! else passes through byte for byte, and the upstream sees the rewritten authority (the only
//! thing `h2` can send; containerd does not use it).
//!
//! What is not rewritten: an empty `:authority` (no valid value has length 0), and a literal
//! whose name refers to a *dynamic* table entry (that would need the whole table tracked; no
//! known client does it: encoders take the name from the static table). Those streams are
//! reset by `h2` as before.
//!
//! Cost: frames other than HEADERS/CONTINUATION are passed through without copying; a header
//! block is walked once (no allocation unless it is rewritten).

use bytes::{BufMut, Bytes, BytesMut};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size `h2` advertises (HTTP/2's default; cri-guard does not change it): rewritten
/// blocks are split into frames no larger.
const MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are passed through untouched (h2 then applies its own
/// header-list limit); nothing legitimate comes close.
const MAX_BLOCK: usize = 256 * 1024;

/// The HPACK Huffman code of `:` (7 bits, `1011100`, RFC 7541 appendix B), left-aligned: a
/// Huffman-coded literal name starting with it may be `:authority` and is decoded to check.
const COLON_CODE: u8 = 0b1011_1000;
const COLON_MASK: u8 = 0b1111_1110;

/// Follows the client-to-server byte stream of one HTTP/2 connection.
#[derive(Default)]
pub(crate) struct AuthorityFix {
    /// Preface bytes still to pass.
    preface_left: usize,
    /// Payload bytes of the current (non-header) frame still to pass.
    skip: usize,
    /// Bytes held back: a partial frame header, or header frames being collected.
    held: BytesMut,
    /// Bytes processed and ready to hand to h2.
    out: BytesMut,
    /// Set once the stream stops making sense (e.g. an oversized block): pass everything.
    passthrough: bool,
    /// How many `:authority` values were rewritten (tests and debug logs).
    pub rewritten: u64,
}

impl AuthorityFix {
    pub(crate) fn new() -> AuthorityFix {
        AuthorityFix {
            preface_left: PREFACE_LEN,
            ..Default::default()
        }
    }

    /// Whether bytes are waiting in `out` or `held` (then new input must go through
    /// [`AuthorityFix::push`], not [`AuthorityFix::scan`]).
    pub(crate) fn busy(&self) -> bool {
        !self.out.is_empty() || !self.held.is_empty()
    }

    /// Whether processed bytes are waiting to be handed to h2.
    pub(crate) fn has_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// Takes up to `max` processed bytes.
    pub(crate) fn take_out(&mut self, max: usize) -> Bytes {
        let n = max.min(self.out.len());
        self.out.split_to(n).freeze()
    }

    /// Scans freshly read bytes in place; returns how many of them may go to h2 as they are.
    /// The rest (from the first header frame, or a partial frame header, on) must be given to
    /// [`AuthorityFix::push`].
    pub(crate) fn scan(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        loop {
            if self.passthrough {
                return data.len();
            }
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len() - i);
                self.preface_left -= n;
                i += n;
            }
            if self.skip > 0 {
                let n = self.skip.min(data.len() - i);
                self.skip -= n;
                i += n;
            }
            if i == data.len() {
                return i;
            }
            if data.len() - i < FRAME_HEADER {
                return i;
            }
            let (len, kind) = frame_len_kind(&data[i..]);
            if kind == HEADERS || kind == CONTINUATION {
                return i;
            }
            i += FRAME_HEADER;
            self.skip = len;
        }
    }

    /// Takes bytes that [`AuthorityFix::scan`] did not pass (or any input while busy) and
    /// processes as much as possible into `out`.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.held.extend_from_slice(data);
        self.process();
    }

    /// End of input: whatever is held goes out as it is (h2 then sees the truncated frame).
    pub(crate) fn finish(&mut self) {
        let held = self.held.split();
        self.out.extend_from_slice(&held);
    }

    fn process(&mut self) {
        loop {
            if self.passthrough {
                return self.finish();
            }
            if self.preface_left > 0 || self.skip > 0 {
                let n = (self.preface_left + self.skip).min(self.held.len());
                let moved = self.held.split_to(n);
                self.out.extend_from_slice(&moved);
                let from_preface = n.min(self.preface_left);
                self.preface_left -= from_preface;
                self.skip -= n - from_preface;
                if self.held.is_empty() {
                    return;
                }
            }
            if self.held.len() < FRAME_HEADER {
                return;
            }
            let (len, kind) = frame_len_kind(&self.held);
            if kind != HEADERS {
                // A CONTINUATION here has no HEADERS before it: a protocol error h2 reports.
                let moved = self.held.split_to(FRAME_HEADER);
                self.out.extend_from_slice(&moved);
                self.skip = len;
                continue;
            }
            match self.collect_block() {
                Collected::NeedMore => return,
                Collected::GiveUp => {
                    self.passthrough = true;
                }
                Collected::Block { frames_len, fixed } => {
                    let frames = self.held.split_to(frames_len);
                    match fixed {
                        Some((bytes, n)) => {
                            if self.rewritten == 0 {
                                tracing::debug!(
                                    "rewrote a client's :authority that h2 cannot accept (a \
                                     socket path, as gRPC's C core sends on unix sockets)"
                                );
                            }
                            self.rewritten += n;
                            self.out.extend_from_slice(&bytes);
                        }
                        None => self.out.extend_from_slice(&frames),
                    }
                }
            }
        }
    }

    /// Looks at the HEADERS frame at the start of `held` and the CONTINUATION frames after it.
    fn collect_block(&self) -> Collected {
        let mut at = 0;
        let mut block = Vec::new();
        let mut first: Option<(u8, u32, Option<[u8; 5]>)> = None;
        loop {
            let rest = &self.held[at..];
            if rest.len() < FRAME_HEADER {
                return Collected::NeedMore;
            }
            let (len, kind) = frame_len_kind(rest);
            let flags = rest[4];
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            let expected = if first.is_none() {
                HEADERS
            } else {
                CONTINUATION
            };
            if kind != expected
                || len > MAX_FRAME
                || first.is_some_and(|(_, s, _)| s != stream)
                || block.len() + len > MAX_BLOCK
            {
                return Collected::GiveUp;
            }
            if rest.len() < FRAME_HEADER + len {
                return Collected::NeedMore;
            }
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            let fragment = if first.is_none() {
                let Some((fragment, priority)) = headers_fragment(payload, flags) else {
                    return Collected::GiveUp;
                };
                if flags & END_HEADERS != 0 {
                    // The usual case: the whole block in one frame, walked where it is.
                    let fixed = fix_block(fragment).map(|(new_block, n)| {
                        (
                            encode_frames(&new_block, flags & END_STREAM, stream, priority),
                            n,
                        )
                    });
                    return Collected::Block {
                        frames_len: FRAME_HEADER + len,
                        fixed,
                    };
                }
                first = Some((flags, stream, priority));
                fragment
            } else {
                payload
            };
            block.extend_from_slice(fragment);
            at += FRAME_HEADER + len;
            if flags & END_HEADERS != 0 {
                break;
            }
        }
        let Some((flags, stream, priority)) = first else {
            return Collected::GiveUp;
        };
        let fixed = fix_block(&block).map(|(new_block, n)| {
            (
                encode_frames(&new_block, flags & END_STREAM, stream, priority),
                n,
            )
        });
        Collected::Block {
            frames_len: at,
            fixed,
        }
    }
}

enum Collected {
    NeedMore,
    GiveUp,
    /// A whole header block: `frames_len` bytes of frames, and their replacement if rewritten
    /// (with the count of values rewritten).
    Block {
        frames_len: usize,
        fixed: Option<(Bytes, u64)>,
    },
}

fn frame_len_kind(h: &[u8]) -> (usize, u8) {
    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
    (len, h[3])
}

/// The header block fragment of a HEADERS payload, and its priority fields if any.
fn headers_fragment(payload: &[u8], flags: u8) -> Option<(&[u8], Option<[u8; 5]>)> {
    let mut p = payload;
    let pad = if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        p = rest;
        n as usize
    } else {
        0
    };
    let priority = if flags & PRIORITY != 0 {
        let prio: [u8; 5] = p.get(..5)?.try_into().ok()?;
        p = &p[5..];
        Some(prio)
    } else {
        None
    };
    let end = p.len().checked_sub(pad)?;
    Some((&p[..end], priority))
}

/// A HEADERS frame (plus CONTINUATION frames if needed) carrying `block`.
fn encode_frames(block: &[u8], end_stream: u8, stream: u32, priority: Option<[u8; 5]>) -> Bytes {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let mut out = BytesMut::with_capacity(block.len() + prio_len + 2 * FRAME_HEADER);
    let first_len = block.len().min(MAX_FRAME - prio_len);
    let mut rest = &block[first_len..];
    let mut flags = end_stream;
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    put_frame_header(&mut out, first_len + prio_len, HEADERS, flags, stream);
    if let Some(p) = priority {
        out.put_slice(&p);
    }
    out.put_slice(&block[..first_len]);
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        put_frame_header(&mut out, n, CONTINUATION, flags, stream);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
    out.freeze()
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// One string literal of a header block: where it is and what it says.
struct Str<'a> {
    start: usize,
    end: usize,
    huffman: bool,
    raw: &'a [u8],
}

/// Walks an HPACK block; returns the block with every invalid `:authority` value rewritten, or
/// `None` when nothing needs rewriting (or the block does not parse: h2 will say why).
pub(crate) fn fix_block(block: &[u8]) -> Option<(Vec<u8>, u64)> {
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let b = block[i];
        if b & 0x80 != 0 {
            // Indexed field.
            i = integer(block, i, 7)?.1;
            continue;
        }
        if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            i = integer(block, i, 5)?.1;
            continue;
        }
        let prefix = if b & 0x40 != 0 { 6 } else { 4 };
        let (index, next) = integer(block, i, prefix)?;
        i = next;
        let is_authority = match index {
            0 => {
                let name = string(block, i)?;
                i = name.end;
                is_authority_name(&name)
            }
            1 => true,
            _ => false,
        };
        let value = string(block, i)?;
        i = value.end;
        if is_authority {
            if let Some(new) = fixed_authority(&value) {
                edits.push((value.start, value.end, new));
            }
        }
    }
    if edits.is_empty() {
        return None;
    }
    let n = edits.len() as u64;
    let mut out = Vec::with_capacity(block.len() + 16);
    let mut at = 0;
    for (start, end, value) in edits {
        out.extend_from_slice(&block[at..start]);
        put_integer(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(&value);
        at = end;
    }
    out.extend_from_slice(&block[at..]);
    Some((out, n))
}

fn is_authority_name(name: &Str) -> bool {
    if !name.huffman {
        return name.raw == b":authority";
    }
    // Only names whose first symbol is `:` are decoded (pseudo-header names; rare as literals).
    if name
        .raw
        .first()
        .is_none_or(|b| b & COLON_MASK != COLON_CODE)
    {
        return false;
    }
    huffman_decode(name.raw).is_some_and(|n| n == b":authority")
}

/// The same-length valid replacement of an `:authority` value that `http` refuses.
fn fixed_authority(value: &Str) -> Option<Vec<u8>> {
    let decoded = if value.huffman {
        huffman_decode(value.raw)?
    } else {
        value.raw.to_vec()
    };
    if decoded.is_empty() || http::uri::Authority::try_from(decoded.as_slice()).is_ok() {
        return None;
    }
    Some(
        decoded
            .iter()
            .map(|&c| {
                if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'~') {
                    c
                } else {
                    b'_'
                }
            })
            .collect(),
    )
}

fn huffman_decode(raw: &[u8]) -> Option<Vec<u8>> {
    loona_hpack::huffman::HuffmanDecoder::new().decode(raw).ok()
}

/// An HPACK integer with an `n`-bit prefix at `block[i]`: (value, index after it).
fn integer(block: &[u8], i: usize, n: u32) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let mut value = (*block.get(i)? as usize) & mask;
    let mut i = i + 1;
    if value < mask {
        return Some((value, i));
    }
    let mut shift = 0u32;
    loop {
        let b = *block.get(i)?;
        i += 1;
        // More than 28 bits of continuation is no length a header block can have.
        if shift > 21 {
            return None;
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some((value, i));
        }
    }
}

fn put_integer(out: &mut Vec<u8>, first_bits: u8, n: u32, value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string literal at `block[i]`.
fn string(block: &[u8], i: usize) -> Option<Str<'_>> {
    let huffman = *block.get(i)? & 0x80 != 0;
    let (len, start) = integer(block, i, 7)?;
    let end = start.checked_add(len)?;
    let raw = block.get(start..end)?;
    Some(Str {
        start: i,
        end,
        huffman,
        raw,
    })
}

/// Feeds `input` in `chunk`-sized reads the way `Socket::poll_read` does; returns what h2 gets.
#[cfg(test)]
fn run_all(fix: &mut AuthorityFix, input: &[u8], chunk: usize) -> Vec<u8> {
    let mut got = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        if fix.busy() {
            fix.push(piece);
        } else {
            let n = fix.scan(piece);
            got.extend_from_slice(&piece[..n]);
            if n < piece.len() {
                fix.push(&piece[n..]);
            }
        }
        got.extend_from_slice(&fix.take_out(usize::MAX));
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.put_slice(payload);
        out.to_vec()
    }

    /// What grpcio 1.85 sends first on a unix socket (captured): `:path` and `:authority` as
    /// literals with incremental indexing and literal names, plain strings.
    fn grpcio_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x40, 5];
        b.extend_from_slice(b":path");
        b.push(34);
        b.extend_from_slice(b"/runtime.v1.RuntimeService/Version");
        b.extend_from_slice(&[0x40, 10]);
        b.extend_from_slice(b":authority");
        b.push(authority.len() as u8);
        b.extend_from_slice(authority);
        b.extend_from_slice(&[0x83, 0x86]); // :method POST, :scheme http
        b
    }

    fn decode(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut d = loona_hpack::Decoder::new();
        d.decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    /// A percent-encoded socket path becomes a same-length valid authority; the rest of the
    /// block decodes to the same fields.
    #[test]
    fn rewrites_grpcio_authority() {
        let block = grpcio_block(b"tmp%2Fx%2Fcri.sock");
        let (fixed, n) = fix_block(&block).expect("rewritten");
        assert_eq!(n, 1);
        let fields = decode(&fixed);
        assert_eq!(fields, {
            let mut f = decode(&block);
            f[1].1 = b"tmp_2Fx_2Fcri.sock".to_vec();
            f
        });
        assert!(http::uri::Authority::try_from(&fields[1].1[..]).is_ok());
    }

    /// Valid authorities, other headers and unparsable blocks are left alone.
    #[test]
    fn leaves_valid_blocks_alone() {
        assert!(fix_block(&grpcio_block(b"localhost")).is_none());
        assert!(fix_block(&grpcio_block(b"localhost:10250")).is_none());
        // Static-name literal (index 1), valid value.
        assert!(fix_block(&[0x41, 3, b'a', b'b', b'c']).is_none());
        // Empty authority: no valid value has its length; left for h2 to refuse.
        assert!(fix_block(&[0x41, 0]).is_none());
        // Truncated block.
        assert!(fix_block(&[0x41, 9, b'%']).is_none());
    }

    /// Static-name literals (without indexing, never indexed) and raw paths are rewritten too.
    #[test]
    fn rewrites_other_representations() {
        for first in [0x41u8, 0x01, 0x11] {
            let mut block = vec![first, 14];
            block.extend_from_slice(b"/run/cri.sock!");
            let (fixed, _) = fix_block(&block).unwrap();
            assert_eq!(decode(&fixed)[0].1, b"_run_cri.sock_");
        }
    }

    /// A Huffman-coded `:authority` name and value are recognised (decoded) and rewritten.
    #[test]
    fn huffman_coded_name_and_value() {
        // The code of ':' is 7 bits: with one padding 1-bit it is one byte.
        assert_eq!(huffman_decode(&[COLON_CODE | 1]).unwrap(), b":");
        // Huffman-code a string by searching the decoder byte by byte is not practical here;
        // use h2-style known encodings: "%" is 6 bits 010101, "a" 5 bits 00011.
        // "%a" = 010101 00011 + padding 11111 -> 0101_0100 0111_1111
        assert_eq!(huffman_decode(&[0x54, 0x7f]).unwrap(), b"%a");
        let block = vec![0x41, 0x82, 0x54, 0x7f];
        let (fixed, n) = fix_block(&block).unwrap();
        assert_eq!(n, 1);
        assert_eq!(fixed, vec![0x41, 2, b'_', b'a']);
    }

    /// The whole stream: preface, SETTINGS, a HEADERS frame with the bad authority, DATA; fed
    /// in every chunk size, the output is the same frames with the header block rewritten.
    #[test]
    fn stream_in_any_chunking() {
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let headers = frame(HEADERS, END_HEADERS, 1, &grpcio_block(b"tmp%2Fg.sock"));
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\x04\x0a\x02v1");
        let input: Vec<u8> = [PREFACE, &settings, &headers, &data].concat();
        let want_headers = frame(HEADERS, END_HEADERS, 1, &grpcio_block(b"tmp_2Fg.sock"));
        let want: Vec<u8> = [PREFACE, &settings, &want_headers, &data].concat();
        for chunk in [1, 2, 7, 9, 10, 33, 100, 4096] {
            let mut fix = AuthorityFix::new();
            assert_eq!(run_all(&mut fix, &input, chunk), want, "chunk {chunk}");
            assert_eq!(fix.rewritten, 1);
        }
        // A valid request passes unchanged.
        let ok = frame(HEADERS, END_HEADERS, 3, &grpcio_block(b"localhost"));
        let input: Vec<u8> = [PREFACE, &settings, &ok, &data].concat();
        for chunk in [1, 5, 4096] {
            let mut fix = AuthorityFix::new();
            assert_eq!(run_all(&mut fix, &input, chunk), input);
        }
    }

    /// Padding, priority and CONTINUATION frames: the block is reassembled, rewritten and sent
    /// as one HEADERS frame with the priority kept and the padding dropped.
    #[test]
    fn padded_priority_and_continuation() {
        let block = grpcio_block(b"a%b");
        let (part1, part2) = block.split_at(10);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        payload.extend_from_slice(part1);
        payload.extend_from_slice(&[0, 0, 0]);
        let input: Vec<u8> = [
            PREFACE,
            &frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload),
            &frame(CONTINUATION, END_HEADERS, 5, part2),
        ]
        .concat();
        let mut want_payload = vec![0, 0, 0, 0, 15];
        want_payload.extend_from_slice(&grpcio_block(b"a_b"));
        let want: Vec<u8> = [
            PREFACE,
            &frame(
                HEADERS,
                PRIORITY | END_STREAM | END_HEADERS,
                5,
                &want_payload,
            ),
        ]
        .concat();
        for chunk in [1, 3, 4096] {
            let mut fix = AuthorityFix::new();
            assert_eq!(run_all(&mut fix, &input, chunk), want, "chunk {chunk}");
        }
    }

    /// Garbage after the preface is passed on as it is (h2 reports the protocol error).
    #[test]
    fn garbage_passes_through() {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&frame(CONTINUATION, 0, 1, b"xyz"));
        input.extend_from_slice(&frame(HEADERS, 0, 1, &[0x41, 1, b'%']));
        input.extend_from_slice(&frame(0x0, 0, 1, b"data"));
        for chunk in [1, 4096] {
            let mut fix = AuthorityFix::new();
            let mut got = run_all(&mut fix, &input, chunk);
            fix.finish();
            got.extend_from_slice(&fix.take_out(usize::MAX));
            assert_eq!(got, input, "chunk {chunk}");
        }
    }
}

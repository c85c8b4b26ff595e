//! HPACK (RFC 7541) for the relay: a decoder that follows one peer's encoder (its dynamic
//! table), and an encoder that writes only static-table references and literals *without
//! indexing*, so the receiving peer's dynamic table is never touched.
//!
//! Why our own and not a crate: the relay decodes every request header block (to route by
//! `:path`) and every response header block (to keep a mirror of the client's decoder, to check
//! what it relays, and to read `grpc-status`). loona-hpack (a dev-dependency: the test
//! oracle here) decodes Huffman strings bit by bit with two hash-map lookups per bit and copies
//! every field into new `Vec`s; h2's codec is not public. This decoder walks Huffman codes a
//! nibble at a time through a 256-state table built once from RFC 7541 Appendix B, decodes into
//! one reused buffer, and keeps each dynamic-table entry in one allocation. Measured on a
//! kubelet-shaped request block: see docs/benchmarks.md.
//!
//! Everything the decoder reads is bounded: integers (at most 2^28), string lengths (within the
//! block), the dynamic table (the size the peer may use, itself capped by the relay), and the
//! decoded list kept (fields past the caller's limit are decoded, so the table stays in step,
//! but not kept). Any malformed input is an [`HpackError`] (a COMPRESSION_ERROR), never a panic.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block could not be decoded (a COMPRESSION_ERROR for the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("truncated header block")]
    Truncated,
    #[error("integer too large")]
    Integer,
    #[error("index out of range")]
    Index,
    #[error("invalid Huffman code")]
    Huffman,
    #[error("dynamic table size update not allowed here or too large")]
    SizeUpdate,
}

/// Per-entry overhead of the dynamic table (RFC 7541 section 4.1); also the per-field overhead
/// of a header list's size (RFC 9113 section 6.5.2).
pub(crate) const ENTRY_OVERHEAD: usize = 32;
/// Default dynamic table size.
pub(crate) const DEFAULT_TABLE: usize = 4096;

/// One decoded field: where its name and value lie in [`Fields::arena`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    start: u32,
    name_len: u32,
    value_len: u32,
    /// Sent as "never indexed": must be forwarded the same way (RFC 7541 section 6.2.3).
    pub never_indexed: bool,
}

/// A decoded header list, reused from block to block (no allocation once warm).
#[derive(Debug, Default)]
pub(crate) struct Fields {
    arena: Vec<u8>,
    list: Vec<Field>,
    /// The list's size as RFC 9113 counts it (name + value + 32 per field), kept or not.
    pub size: usize,
    /// Fields were decoded past the limit and not kept.
    pub over: bool,
}

impl Fields {
    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.list.clear();
        self.size = 0;
        self.over = false;
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn name(&self, i: usize) -> &[u8] {
        let f = &self.list[i];
        &self.arena[f.start as usize..(f.start + f.name_len) as usize]
    }

    pub(crate) fn value(&self, i: usize) -> &[u8] {
        let f = &self.list[i];
        let s = (f.start + f.name_len) as usize;
        &self.arena[s..s + f.value_len as usize]
    }

    pub(crate) fn field(&self, i: usize) -> &Field {
        &self.list[i]
    }

    /// The value of the first field named `name`.
    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        (0..self.len())
            .find(|&i| self.name(i) == name)
            .map(|i| self.value(i))
    }

    /// `(name, value)` pairs in order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        (0..self.len()).map(|i| (self.name(i), self.value(i)))
    }
}

struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

/// Follows one peer's HPACK encoder.
pub(crate) struct Decoder {
    /// Newest entry first.
    table: VecDeque<Entry>,
    size: usize,
    max: usize,
    /// The most the peer may set the table to (what it was told, capped by the relay).
    allowed: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub(crate) fn new() -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: DEFAULT_TABLE,
            allowed: DEFAULT_TABLE,
        }
    }

    /// The largest dynamic table size the peer's encoder may switch to (SETTINGS_HEADER_TABLE_SIZE
    /// as the peer was told it).
    pub(crate) fn set_allowed(&mut self, allowed: usize) {
        self.allowed = allowed;
    }

    /// Bytes the dynamic table holds (RFC 7541 sizes).
    #[cfg(test)]
    pub(crate) fn table_size(&self) -> usize {
        self.size
    }

    /// Decodes one whole header block into `out` (cleared first), keeping fields while the
    /// list's size stays within `keep` bytes. The dynamic table follows every field either way.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        out: &mut Fields,
        keep: usize,
    ) -> Result<(), HpackError> {
        out.clear();
        let mut i = 0;
        let mut first = true;
        let mut size_update_last = false;
        while i < block.len() {
            size_update_last = false;
            let b = block[i];
            if b & 0x80 != 0 {
                let (index, n) = integer(&block[i..], 7)?;
                i += n;
                let start = out.arena.len();
                let (name_len, value_len) = self.lookup(index, &mut out.arena, true)?;
                self.push(out, start, name_len, value_len, false, keep);
            } else if b & 0xe0 == 0x20 {
                if !first {
                    return Err(HpackError::SizeUpdate);
                }
                let (size, n) = integer(&block[i..], 5)?;
                i += n;
                if size > self.allowed {
                    return Err(HpackError::SizeUpdate);
                }
                self.max = size;
                self.evict(0);
                size_update_last = true;
                continue;
            } else {
                let (index_it, prefix) = match b {
                    _ if b & 0x40 != 0 => (true, 6),
                    _ => (false, 4),
                };
                let never = !index_it && b & 0x10 != 0;
                let (index, n) = integer(&block[i..], prefix)?;
                i += n;
                let start = out.arena.len();
                let name_len = if index == 0 {
                    let (len, n) = string(&block[i..], &mut out.arena)?;
                    i += n;
                    len
                } else {
                    self.lookup(index, &mut out.arena, false)?.0
                };
                let (value_len, n) = string(&block[i..], &mut out.arena)?;
                i += n;
                if index_it {
                    self.insert(&out.arena[start..start + name_len + value_len], name_len);
                }
                self.push(out, start, name_len, value_len, never, keep);
            }
            first = false;
        }
        if size_update_last {
            // A size update must be followed by a field (what decoders such as loona-hpack,
            // and so some clients, insist on); a block of size updates only is refused.
            return Err(HpackError::SizeUpdate);
        }
        Ok(())
    }

    fn push(
        &self,
        out: &mut Fields,
        start: usize,
        name_len: usize,
        value_len: usize,
        never_indexed: bool,
        keep: usize,
    ) {
        out.size += name_len + value_len + ENTRY_OVERHEAD;
        if out.size > keep || out.over {
            out.over = true;
            out.arena.truncate(start);
            return;
        }
        out.list.push(Field {
            start: start as u32,
            name_len: name_len as u32,
            value_len: value_len as u32,
            never_indexed,
        });
    }

    /// Appends the name (and, if `value`, the value) of table entry `index` to `arena`.
    fn lookup(
        &self,
        index: usize,
        arena: &mut Vec<u8>,
        value: bool,
    ) -> Result<(usize, usize), HpackError> {
        let (name, val): (&[u8], &[u8]) = match index {
            0 => return Err(HpackError::Index),
            1..=61 => STATIC_TABLE[index - 1],
            _ => {
                let e = self.table.get(index - 62).ok_or(HpackError::Index)?;
                e.bytes.split_at(e.name_len)
            }
        };
        arena.extend_from_slice(name);
        if value {
            arena.extend_from_slice(val);
            Ok((name.len(), val.len()))
        } else {
            Ok((name.len(), 0))
        }
    }

    fn insert(&mut self, bytes: &[u8], name_len: usize) {
        let size = bytes.len() + ENTRY_OVERHEAD;
        if size > self.max {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(Entry {
            bytes: bytes.into(),
            name_len,
        });
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some(e) => self.size -= e.bytes.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// Decodes an HPACK integer with an `prefix`-bit prefix: `(value, bytes used)`.
fn integer(b: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1usize << prefix) - 1;
    let first = *b.first().ok_or(HpackError::Truncated)? as usize & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = mask;
    let mut shift = 0;
    for (i, &byte) in b.iter().enumerate().skip(1) {
        // Four continuation bytes (2^28) are far beyond any size the relay accepts.
        if i > 4 {
            return Err(HpackError::Integer);
        }
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(HpackError::Truncated)
}

/// Decodes a string literal into `arena`: `(decoded length, bytes used)`.
fn string(b: &[u8], arena: &mut Vec<u8>) -> Result<(usize, usize), HpackError> {
    let huffman = b.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, n) = integer(b, 7)?;
    let raw = b.get(n..n + len).ok_or(HpackError::Truncated)?;
    let before = arena.len();
    if huffman {
        huffman_decode(raw, arena)?;
    } else {
        arena.extend_from_slice(raw);
    }
    Ok((arena.len() - before, n + len))
}

/// Appends an HPACK integer: `flags` fill the bits above the `prefix`-bit prefix.
pub(crate) fn put_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Appends one field that the receiver will not add to its dynamic table: an indexed
/// static-table field when name and value match one, else a literal without indexing (or never
/// indexed) whose name is a static-table reference when there is one. No Huffman coding: the
/// relay spends no CPU on compression, and a unix socket does not care about a few bytes.
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], never_indexed: bool) {
    let flags = if never_indexed { 0x10 } else { 0x00 };
    match static_index(name, value) {
        (Some(full), _) if !never_indexed => out.push(0x80 | full),
        (_, Some(name_index)) => {
            put_integer(out, flags, 4, name_index as usize);
            put_string(out, value);
        }
        _ => {
            out.push(flags);
            put_string(out, name);
            put_string(out, value);
        }
    }
}

/// The static-table index of `(name, value)` if both match, and of `name`.
fn static_index(name: &[u8], value: &[u8]) -> (Option<u8>, Option<u8>) {
    let first = match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"content-type" => 31,
        b"user-agent" => 58,
        b"accept-encoding" => 16,
        b"content-length" => 28,
        b"date" => 33,
        _ => {
            let i = STATIC_TABLE.iter().position(|(n, _)| *n == name);
            return (None, i.map(|i| i as u8 + 1));
        }
    };
    let full = STATIC_TABLE[first - 1..]
        .iter()
        .take_while(|(n, _)| *n == name)
        .position(|(_, v)| *v == value)
        .map(|i| (first + i) as u8);
    (full, Some(first as u8))
}

/// The static table (RFC 7541 Appendix A).
static STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The Huffman code (RFC 7541 Appendix B): `(code, bits)` for symbols 0..=255 and EOS (256).
static HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// One transition of the nibble decoder: next state (bits 0-7), symbol (8-15), flags.
const EMIT: u32 = 1 << 16;
const FAIL: u32 = 1 << 17;

struct Huffman {
    /// `next[state * 16 + nibble]`.
    next: Vec<u32>,
    /// States in which the input may end: the bits read since the last symbol are a prefix of
    /// EOS (all ones) no longer than 7 bits (RFC 7541 section 5.2).
    accept: [bool; 256],
}

/// Builds the nibble decoder from the code table: a binary tree of the 257 codes has 256
/// internal nodes, which are the states; each (state, 4 bits) transition emits at most one
/// symbol, because no code is shorter than 5 bits.
fn build_huffman() -> Huffman {
    const LEAF: u32 = 1 << 31;
    // children[node] = [zero, one]; 0 = none yet; LEAF | symbol for a leaf.
    let mut children: Vec<[u32; 2]> = vec![[0, 0]];
    let mut depth = vec![0u8];
    let mut ones = vec![true];
    for (sym, &(code, bits)) in HUFFMAN_CODES.iter().enumerate() {
        let mut node = 0usize;
        for i in (0..bits).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                children[node][bit] = LEAF | sym as u32;
            } else {
                if children[node][bit] == 0 {
                    children.push([0, 0]);
                    depth.push(depth[node] + 1);
                    ones.push(ones[node] && bit == 1);
                    children[node][bit] = (children.len() - 1) as u32;
                }
                node = children[node][bit] as usize;
            }
        }
    }
    debug_assert_eq!(children.len(), 256);
    let mut next = vec![0u32; 256 * 16];
    let mut accept = [false; 256];
    for state in 0..children.len() {
        accept[state] = ones[state] && depth[state] <= 7;
        for nibble in 0..16u32 {
            let mut node = state;
            let mut t = 0u32;
            for i in (0..4).rev() {
                let child = children[node][((nibble >> i) & 1) as usize];
                if child & LEAF != 0 {
                    let sym = child & !LEAF;
                    if sym == 256 {
                        t |= FAIL;
                    } else {
                        t |= EMIT | sym << 8;
                    }
                    node = 0;
                } else {
                    node = child as usize;
                }
            }
            next[state * 16 + nibble as usize] = t | node as u32;
        }
    }
    Huffman { next, accept }
}

fn huffman() -> &'static Huffman {
    static TABLE: OnceLock<Huffman> = OnceLock::new();
    TABLE.get_or_init(build_huffman)
}

/// Builds the Huffman table now (at bind time), not on the first call.
pub(crate) fn warm_up() {
    huffman();
}

/// Decodes a Huffman-coded string, appending to `out`.
pub(crate) fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let h = huffman();
    out.reserve(src.len() * 8 / 5 + 1);
    let mut state = 0usize;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0xf] {
            let t = h.next[state * 16 + nibble as usize];
            if t & FAIL != 0 {
                return Err(HpackError::Huffman);
            }
            if t & EMIT != 0 {
                out.push((t >> 8) as u8);
            }
            state = (t & 0xff) as usize;
        }
    }
    if h.accept[state] {
        Ok(())
    } else {
        Err(HpackError::Huffman)
    }
}

#[cfg(test)]
pub(crate) fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in src {
        let (code, len) = HUFFMAN_CODES[b as usize];
        acc = acc << len | code as u64;
        bits += len as u32;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8 | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(f: &Fields) -> Vec<(Vec<u8>, Vec<u8>)> {
        f.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
    }

    fn strs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        v.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// RFC 7541 C.3 and C.4: three requests on one connection, without and with Huffman
    /// coding; the dynamic table ends at the size the RFC gives.
    #[test]
    fn rfc7541_examples() {
        for blocks in [
            [
                "828684410f7777772e6578616d706c652e636f6d",
                "828684be58086e6f2d6361636865",
                "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            ],
            [
                "828684418cf1e3c2e5f23a6ba0ab90f4ff",
                "828684be5886a8eb10649cbf",
                "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
            ],
        ] {
            let mut d = Decoder::new();
            let mut f = Fields::default();
            d.decode(&hex(blocks[0]), &mut f, 1 << 16).unwrap();
            assert_eq!(
                pairs(&f),
                strs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com")
                ])
            );
            assert_eq!(d.table_size(), 57);
            d.decode(&hex(blocks[1]), &mut f, 1 << 16).unwrap();
            assert_eq!(f.get(b"cache-control"), Some(&b"no-cache"[..]));
            assert_eq!(d.table_size(), 110);
            d.decode(&hex(blocks[2]), &mut f, 1 << 16).unwrap();
            assert_eq!(
                pairs(&f),
                strs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value")
                ])
            );
            assert_eq!(d.table_size(), 164);
        }
    }

    /// Every byte string Huffman-coded decodes back to itself, and loona-hpack's decoder
    /// agrees with ours on random (mostly invalid) input.
    #[test]
    fn huffman_against_oracle() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut oracle = loona_hpack::huffman::HuffmanDecoder::new();
        for round in 0..3000 {
            let len = (next() % 40) as usize;
            let s: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let coded = huffman_encode(&s);
            let mut out = Vec::new();
            huffman_decode(&coded, &mut out).unwrap();
            assert_eq!(out, s);
            let random: Vec<u8> = (0..(round % 12)).map(|_| next() as u8).collect();
            let mut ours = Vec::new();
            let got = huffman_decode(&random, &mut ours).map(|()| ours);
            assert_eq!(got.ok(), oracle.decode(&random).ok(), "{random:?}");
        }
    }

    /// Blocks made by loona-hpack's encoder (which indexes everything) decode to what it
    /// encoded, block after block, with entries evicted along the way.
    #[test]
    fn follows_an_indexing_encoder() {
        let mut enc = loona_hpack::Encoder::new();
        let mut dec = Decoder::new();
        let mut f = Fields::default();
        for i in 0..500u32 {
            let timeout = format!("{}u", 1_999_000 + i * 7);
            let path = format!("/runtime.v1.RuntimeService/M{}", i % 13);
            let fields: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", b"localhost"),
                (b"content-type", b"application/grpc"),
                (b"grpc-timeout", timeout.as_bytes()),
                (b"te", b"trailers"),
            ];
            let block = enc.encode(fields.iter().copied());
            dec.decode(&block, &mut f, 1 << 16).unwrap();
            let want: Vec<(Vec<u8>, Vec<u8>)> = fields
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(pairs(&f), want, "block {i}");
            assert!(dec.table_size() <= DEFAULT_TABLE);
        }
    }

    /// What the encoder writes decodes (with an independent decoder) to the same fields, in
    /// order, and leaves the receiver's dynamic table empty.
    #[test]
    fn encoder_never_indexes() {
        let fields: &[(&[u8], &[u8], bool)] = &[
            (b":method", b"POST", false),
            (b":scheme", b"http", false),
            (b":path", b"/runtime.v1.ImageService/PullImage", false),
            (b":authority", b"tmp%2Fx.sock", false),
            (b"content-type", b"application/grpc", false),
            (b"authorization", b"secret", true),
            (b"x-custom", b"", false),
            (b":status", b"200", false),
        ];
        let mut out = Vec::new();
        for (n, v, never) in fields {
            encode_field(&mut out, n, v, *never);
        }
        let mut oracle = loona_hpack::Decoder::new();
        let got = oracle.decode(&out).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = fields
            .iter()
            .map(|(n, v, _)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(got, want);
        let mut ours = Decoder::new();
        let mut f = Fields::default();
        ours.decode(&out, &mut f, 1 << 16).unwrap();
        assert_eq!(ours.table_size(), 0);
        assert!(f.field(5).never_indexed);
        assert_eq!(out[0], 0x83, ":method POST is one static reference");
    }

    /// Malformed blocks are errors: index 0 or past the table, truncation, long integers,
    /// size updates after a field or over the allowed size; never a panic.
    #[test]
    fn malformed_blocks() {
        let mut f = Fields::default();
        for bad in [
            &[0x80][..],
            &[0xbe],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0x40, 0x05, b'a'],
            &[0x00, 0x81],
            &[0x82, 0x20],
            &[0x3f, 0xe2, 0x1f],
            &[0x40, 0x81, 0xff, 0x00],
        ] {
            assert!(
                Decoder::new().decode(bad, &mut f, 1 << 16).is_err(),
                "{bad:?}"
            );
        }
        let mut d = Decoder::new();
        d.decode(&[0x20, 0x3f, 0xe1, 0x1f, 0x82], &mut f, 1 << 16)
            .unwrap();
        assert!(d.decode(&[0x20], &mut f, 1 << 16).is_err());
    }

    /// Fields past `keep` are decoded (the table follows) but not kept.
    #[test]
    fn list_limit() {
        let mut d = Decoder::new();
        let mut f = Fields::default();
        let mut block = vec![0x40, 3, b'a', b'b', b'c', 100];
        block.extend_from_slice(&[b'x'; 100]);
        block.push(0x82);
        d.decode(&block, &mut f, 64).unwrap();
        assert!(f.over);
        assert_eq!(f.len(), 0);
        assert_eq!(d.table_size(), 32 + 103);
    }
}

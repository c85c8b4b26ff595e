//! A small HTTP/2 client that writes and reads frames itself (loona-hpack for its header
//! blocks, with indexing, as grpc-go and tonic do), for what the `h2` client cannot be made to
//! do: change HEADER_TABLE_SIZE mid-connection, send CONTINUATION, padding and priority, PING
//! and GOAWAY on demand, and see every frame that comes back.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::tap::Frame;

pub struct RawConn {
    pub io: UnixStream,
    enc: loona_hpack::Encoder<'static>,
    dec: loona_hpack::Decoder<'static>,
    buf: Vec<u8>,
    block: Option<(Frame, Vec<u8>)>,
    pub next_id: u32,
    /// Every frame received so far (header blocks decoded).
    pub seen: Vec<Frame>,
}

/// A response: header fields, data, trailer fields, or the reset code.
#[derive(Debug, Default, Clone)]
pub struct Resp {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Vec<u8>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    pub reset: Option<u32>,
}

impl Resp {
    pub fn status(&self) -> Option<String> {
        self.trailers
            .iter()
            .chain(self.headers.iter())
            .find(|(n, _)| n == b"grpc-status")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

pub fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl RawConn {
    pub async fn connect(path: &Path, settings: &[(u16, u32)]) -> RawConn {
        let mut io = UnixStream::connect(path).await.expect("connect");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut p = Vec::new();
        for (id, v) in settings {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        out.extend(frame_bytes(4, 0, 0, &p));
        io.write_all(&out).await.unwrap();
        RawConn {
            io,
            enc: loona_hpack::Encoder::new(),
            dec: loona_hpack::Decoder::new(),
            buf: Vec::new(),
            block: None,
            next_id: 1,
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    /// The request header block of a gRPC call (encoded with indexing).
    pub fn request_block(&mut self, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        fields.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        self.enc.encode(fields)
    }

    /// Sends a unary call (HEADERS, then DATA with END_STREAM); returns its stream id.
    pub async fn start_call(&mut self, path: &str, body: &[u8], extra: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let block = self.request_block(path, extra);
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = if i + 1 == chunks.len() { 0x4 } else { 0 };
            out.extend(frame_bytes(if i == 0 { 1 } else { 9 }, end, id, chunk));
        }
        for (i, chunk) in body.chunks(16_384).enumerate() {
            let last = (i + 1) * 16_384 >= body.len();
            out.extend(frame_bytes(0, if last { 1 } else { 0 }, id, chunk));
        }
        if body.is_empty() {
            out.extend(frame_bytes(0, 1, id, &[]));
        }
        self.send(&out).await;
        id
    }

    /// Reads frames until stream `id` ends (or is reset), acking SETTINGS and PINGs and giving
    /// back all flow-control credit as data arrives.
    pub async fn finish(&mut self, id: u32) -> Resp {
        let mut resp = Resp::default();
        let mut from = 0;
        loop {
            for f in &self.seen[from..] {
                if f.stream != id {
                    continue;
                }
                match f.kind {
                    0 => resp.data.extend_from_slice(&f.payload),
                    1 if resp.headers.is_empty() => resp.headers = f.fields.clone(),
                    1 => resp.trailers = f.fields.clone(),
                    3 => {
                        resp.reset = Some(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                        return resp;
                    }
                    _ => {}
                }
                if f.kind <= 1 && f.flags & 1 != 0 {
                    return resp;
                }
            }
            from = self.seen.len();
            if !self.read_some(Duration::from_secs(20)).await {
                panic!("connection ended before stream {id} did: {resp:?}");
            }
        }
    }

    /// Reads what arrives within `wait` (false: the connection ended or nothing came).
    pub async fn read_some(&mut self, wait: Duration) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = match tokio::time::timeout(wait, self.io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        self.buf.extend_from_slice(&chunk[..n]);
        let mut replies = Vec::new();
        while self.buf.len() >= 9 {
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            if self.buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (self.buf[3], self.buf[4]);
            let stream = u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let payload: Vec<u8> = self.buf[9..9 + len].to_vec();
            self.buf.drain(..9 + len);
            let mut frame = Frame {
                kind,
                flags,
                stream,
                payload,
                fields: vec![],
            };
            match kind {
                0 => {
                    if len > 0 {
                        let inc = (len as u32).to_be_bytes();
                        replies.extend(frame_bytes(8, 0, 0, &inc));
                        replies.extend(frame_bytes(8, 0, stream, &inc));
                    }
                    if flags & 0x8 != 0 {
                        let pad = frame.payload[0] as usize;
                        frame.payload = frame.payload[1..frame.payload.len() - pad].to_vec();
                    }
                }
                1 | 9 => {
                    let mut frag = frame.payload.clone();
                    if kind == 1 {
                        if flags & 0x8 != 0 {
                            let pad = frag[0] as usize;
                            frag = frag[1..frag.len() - pad].to_vec();
                        }
                        if flags & 0x20 != 0 {
                            frag.drain(..5);
                        }
                    }
                    let (mut first, mut all) = match self.block.take() {
                        Some((f, mut b)) => {
                            b.extend_from_slice(&frag);
                            (f, b)
                        }
                        None => (frame, frag),
                    };
                    if flags & 0x4 == 0 {
                        self.block = Some((first, all));
                        continue;
                    }
                    first.fields = self
                        .dec
                        .decode(&std::mem::take(&mut all))
                        .expect("a header block the client can decode");
                    self.seen.push(first);
                    continue;
                }
                4 if flags & 1 == 0 => {
                    for p in frame.payload.chunks(6) {
                        if u16::from_be_bytes([p[0], p[1]]) == 1 {
                            let v = u32::from_be_bytes(p[2..6].try_into().unwrap());
                            self.enc.set_max_table_size(v as usize);
                        }
                    }
                    replies.extend(frame_bytes(4, 1, 0, &[]));
                }
                6 if flags & 1 == 0 => replies.extend(frame_bytes(6, 1, 0, &frame.payload)),
                _ => {}
            }
            self.seen.push(frame);
        }
        if !replies.is_empty() {
            let _ = self.io.write_all(&replies).await;
        }
        true
    }

    /// One whole unary call.
    pub async fn call(&mut self, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Resp {
        let id = self.start_call(path, body, extra).await;
        self.finish(id).await
    }
}

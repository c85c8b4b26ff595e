//! A byte tap in front of an HTTP/2 server (a real containerd, or a fake): a unix-socket relay
//! that records every byte each way, and a reader of the recording that checks it frame by
//! frame and decodes every header block with an independent HPACK decoder (loona-hpack), so a
//! test can say exactly what reached the runtime (and came back), and that all of it was
//! well-formed HTTP/2.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// One connection's bytes: client to server, server to client.
#[derive(Debug, Default, Clone)]
pub struct Recording {
    pub up: Vec<u8>,
    pub down: Vec<u8>,
}

pub struct Tap {
    pub path: PathBuf,
    pub conns: Arc<Mutex<Vec<Arc<Mutex<Recording>>>>>,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    pub fn start(listen: &Path, target: &Path) -> Tap {
        let _ = std::fs::remove_file(listen);
        let listener = UnixListener::bind(listen).expect("bind tap");
        let conns: Arc<Mutex<Vec<Arc<Mutex<Recording>>>>> = Default::default();
        let (all, target) = (conns.clone(), target.to_path_buf());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = UnixStream::connect(&target).await else {
                    continue;
                };
                let rec = Arc::new(Mutex::new(Recording::default()));
                all.lock().unwrap().push(rec.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rec.clone(), true));
                tokio::spawn(pump(sr, cw, rec, false));
            }
        });
        Tap {
            path: listen.to_path_buf(),
            conns,
            task,
        }
    }

    /// The recordings so far, one per connection.
    pub fn recordings(&self) -> Vec<Recording> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect()
    }
}

async fn pump(
    mut from: tokio::net::unix::OwnedReadHalf,
    mut to: tokio::net::unix::OwnedWriteHalf,
    rec: Arc<Mutex<Recording>>,
    up: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut r = rec.lock().unwrap();
            let side = if up { &mut r.up } else { &mut r.down };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// One frame as recorded, with a header block (after CONTINUATION) decoded.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    /// HEADERS: the whole block's fields, decoded.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Frame {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads a byte stream as HTTP/2 frames (after the client preface if `client`), checking each
/// frame's framing and decoding header blocks with one decoder for the stream. Errors name the
/// first malformed thing; a truncated last frame is not an error (the recording may end there).
pub fn frames(bytes: &[u8], client: bool) -> Result<Vec<Frame>, String> {
    let mut at = 0;
    if client {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        if bytes.len() < PREFACE.len() {
            return Ok(vec![]);
        }
        if &bytes[..PREFACE.len()] != PREFACE {
            return Err("no client preface".into());
        }
        at = PREFACE.len();
    }
    let mut out = Vec::new();
    let mut dec = loona_hpack::Decoder::new();
    let mut block: Option<(Frame, Vec<u8>)> = None;
    while bytes.len() - at >= 9 {
        let h = &bytes[at..];
        let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
        if len > 16_384 {
            return Err(format!("frame of {len} bytes at {at}"));
        }
        if bytes.len() - at < 9 + len {
            break;
        }
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let payload = bytes[at + 9..at + 9 + len].to_vec();
        at += 9 + len;
        if let Some((first, mut frag)) = block.take() {
            if kind != 0x9 || stream != first.stream {
                return Err(format!(
                    "header block of stream {} interrupted",
                    first.stream
                ));
            }
            frag.extend_from_slice(&payload);
            if flags & 0x4 == 0 {
                block = Some((first, frag));
                continue;
            }
            let mut first = first;
            first.fields = dec.decode(&frag).map_err(|e| format!("HPACK: {e:?}"))?;
            out.push(first);
            continue;
        }
        let padded = |p: &[u8]| -> Result<Vec<u8>, String> {
            if flags & 0x8 == 0 {
                return Ok(p.to_vec());
            }
            let pad = *p.first().ok_or("padded frame without pad length")? as usize;
            if pad + 1 > p.len() {
                return Err("padding longer than the frame".into());
            }
            Ok(p[1..p.len() - pad].to_vec())
        };
        match kind {
            0x0 => {
                if stream == 0 {
                    return Err("DATA on stream 0".into());
                }
                let data = padded(&payload)?;
                out.push(Frame {
                    kind,
                    flags,
                    stream,
                    payload: data,
                    fields: vec![],
                });
            }
            0x1 => {
                if stream == 0 {
                    return Err("HEADERS on stream 0".into());
                }
                let mut frag = padded(&payload)?;
                if flags & 0x20 != 0 {
                    if frag.len() < 5 {
                        return Err("short priority".into());
                    }
                    frag.drain(..5);
                }
                let frame = Frame {
                    kind,
                    flags,
                    stream,
                    payload: vec![],
                    fields: vec![],
                };
                if flags & 0x4 == 0 {
                    block = Some((frame, frag));
                } else {
                    let mut frame = frame;
                    frame.fields = dec.decode(&frag).map_err(|e| format!("HPACK: {e:?}"))?;
                    out.push(frame);
                }
            }
            0x9 => return Err("CONTINUATION without HEADERS".into()),
            _ => {
                let ok = match kind {
                    0x3 | 0x8 => len == 4 && (kind == 0x8 || stream != 0),
                    0x4 => stream == 0 && len % 6 == 0 && (flags & 1 == 0 || len == 0),
                    0x6 => stream == 0 && len == 8,
                    0x7 => stream == 0 && len >= 8,
                    0x2 => len == 5 && stream != 0,
                    _ => true,
                };
                if !ok {
                    return Err(format!("malformed frame of type {kind} at {at}"));
                }
                out.push(Frame {
                    kind,
                    flags,
                    stream,
                    payload,
                    fields: vec![],
                });
            }
        }
    }
    Ok(out)
}

//! The frame relay: one kubelet connection and its runtime connection, joined at the level of
//! HTTP/2 frames, with only the streams cri-guard must decide on terminated here.
//!
//! # Design
//!
//! One task per client connection drives two sockets (client, runtime), each read into a
//! buffer of its own and written from a buffer of its own: every pass reads what is there on
//! both sides, handles each whole frame, and writes each side at most once. No h2 connection
//! state machine, no per-stream tasks: a relayed unary call costs two reads and two writes, two
//! frame-header walks, one HPACK decode and re-encode of the request headers, and one HPACK
//! decode of each response header block.
//!
//! **Client to runtime.** DATA, WINDOW_UPDATE, PING, PRIORITY, RST_STREAM, GOAWAY and unknown
//! extension frames of relayed streams are forwarded as they are; SETTINGS too, with the
//! adjustments below. Every request header block (HEADERS + CONTINUATION) is decoded with a
//! decoder that follows the client's encoder ([`hpack::Decoder`]), to route by `:path` and to
//! check the request, then re-encoded toward the runtime with static-table references and
//! literals *without indexing* only: the runtime's dynamic table stays empty, so the header
//! blocks of streams cri-guard keeps for itself never have to reach it, and the runtime sees the
//! client's fields (names, values, order, never-indexed flags) exactly as sent. Stream ids are
//! not mapped: the runtime sees gaps where cri-guard kept a stream (allowed, RFC 9113 5.1.1).
//!
//! **Runtime to client.** Every frame of a relayed stream is forwarded as it is, so the client's
//! HPACK decoder follows the runtime's encoder. The relay decodes each response header block
//! with a mirror of the client's decoder, to check it before it is relayed (a malformed block is
//! a connection error toward the runtime, never relayed), to read `grpc-status` (per-method
//! error counters), and because a block must be decoded to keep the mirror in step. A block is
//! forwarded whole, after its last CONTINUATION, so cri-guard's own frames never fall inside one.
//!
//! **Streams cri-guard keeps** (PullImage, CreateContainer, RunPodSandbox; refused paths; calls
//! while the runtime is away): the request is buffered under the bounds of `conn` (message
//! size, shared budget, arrival deadline), decided by the guard, and, when allowed, sent on a
//! separate runtime connection (`relay::exchange`); the answer goes back as frames written
//! here, header blocks encoded without indexing (the client's dynamic table is never touched).
//!
//! **Flow control.** Windows are the endpoints' own business for relayed streams. What
//! cri-guard changes, it accounts for:
//! - DATA the client sends on kept streams used connection credit the runtime never sees: it is
//!   given back to the client at once (WINDOW_UPDATE on stream 0), and stream credit for a kept
//!   stream is granted as its bytes are taken into the buffer (so a request larger than the
//!   window arrives).
//! - DATA cri-guard sends the client uses the client's connection window, which the runtime
//!   believes it has: `owed` counts it, and that much is withheld from the client's next
//!   connection WINDOW_UPDATEs before they are forwarded. cri-guard sends only within the
//!   client's real window (`client_window`); runtime DATA that would exceed it (possible only
//!   while `owed` > 0) waits in the buffer, and the runtime is not read meanwhile.
//! - Both connection windows are checked; a peer that overruns one is a FLOW_CONTROL_ERROR.
//!
//! **SETTINGS** are relayed both ways and read on the way. cri-guard sends the client its own
//! SETTINGS first (MAX_CONCURRENT_STREAMS = `max_streams_per_connection`, MAX_HEADER_LIST_SIZE),
//! and the runtime one SETTINGS (ENABLE_PUSH = 0 plus the client's settings so far); the ACKs
//! for those are consumed here, the others relayed (ACKs come in order, so a queue per side
//! says whose each is). Relayed values are capped: MAX_CONCURRENT_STREAMS toward the client at
//! the configured limit (a stream opened beyond it is refused), HEADER_TABLE_SIZE at 64 KiB
//! (the size of the decoder tables kept here), MAX_FRAME_SIZE at 16 KiB (a frame always fits
//! the read buffers), MAX_HEADER_LIST_SIZE at 64 KiB.
//!
//! **The runtime's lifetime.** The runtime connection is opened when the client connects. If
//! the runtime is not there, calls are answered Unavailable at once and each new relayed call
//! tries again; once it connects, the relay starts (the client's decoder table is still empty,
//! since cri-guard never indexes, so a fresh runtime encoder matches it). If the runtime goes
//! away while relaying, the client's decoder holds the old runtime's entries, so the client
//! connection cannot continue: open calls get Unavailable from cri-guard, then GOAWAY (last
//! stream 2^31-1, so nothing in flight is mistaken for unprocessed), new calls arriving in
//! flight get Unavailable too, and the connection closes when the client leaves or after a
//! short linger; gRPC clients reconnect on GOAWAY at once (grpc-go and tonic open a new
//! connection for the next call, without backoff). A GOAWAY from the runtime is relayed with
//! its last-stream-id raised to cover the streams cri-guard kept (their calls were processed);
//! relayed streams between the two ids get REFUSED_STREAM (not processed: safe to retry).
//!
//! **Bounds and errors.** Read buffers are fixed (64 KiB per side); a side is not read while
//! the other side's pending writes exceed 128 KiB; header blocks are limited to 256 KiB of
//! fragments and 64 KiB of decoded request headers; every malformed frame is a connection error
//! toward its sender (GOAWAY with PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR or
//! FLOW_CONTROL_ERROR as RFC 9113 says), never a panic and never relayed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use super::budget::{Held, method_index};
use super::conn::{self, Kind, Route, Shared};
use super::frame::{self as f, ConnError, Head, Reason, conn_err};
use super::grpc::{self, Code, Status};
use super::hpack::{self, Decoder, Fields};
use super::relay::Answer;
use super::socket::Socket;

/// Read buffer per side: room for several frames of the largest size allowed.
const READ_BUF: usize = 64 * 1024;
/// A side is not read while more than this is waiting to be written to the other side.
const HIGH_WATER: usize = 128 * 1024;
/// Header block fragments collected across CONTINUATION frames, at most.
const MAX_BLOCK: usize = 256 * 1024;
/// CONTINUATION frames in one header block, at most.
const MAX_CONTINUATIONS: usize = 64;
/// Decoded request header list kept, at most (RFC 9113 sizes); larger requests are refused.
pub(crate) const MAX_HEADER_LIST: usize = 64 * 1024;
/// Largest dynamic table either side may ask for (capped in the SETTINGS relayed).
const MAX_TABLE: u32 = 64 * 1024;
/// SETTINGS frames relayed to the runtime and not yet acknowledged, at most (a client sending
/// them faster than the runtime acks them ends its connection).
const MAX_UNACKED_SETTINGS: usize = 64;
/// Streams the client reset recently, whose late frames from the runtime are still relayed.
const TOMBSTONES: usize = 256;
/// How long a connection stays after its last call once it is ending (GOAWAY sent): long
/// enough for calls already in flight from the client to arrive and be answered.
const LINGER: Duration = Duration::from_millis(200);

/// A fast hasher for stream ids (small odd integers).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u32 stream ids are hashed")
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type StreamMap = HashMap<u32, Stream, BuildHasherDefault<IdHasher>>;

/// A read buffer: bytes `[start, end)` are unprocessed.
struct InBuf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl InBuf {
    fn new() -> InBuf {
        InBuf {
            data: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Free space at the end, compacting first if a whole frame might not fit.
    fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.data.len() - self.end < f::HEAD + f::MAX_FRAME {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }
}

/// A write buffer: bytes `[at, len)` are still to be written.
#[derive(Default)]
struct OutBuf {
    data: Vec<u8>,
    at: usize,
}

impl OutBuf {
    fn pending(&self) -> usize {
        self.data.len() - self.at
    }
}

/// Who sent a SETTINGS frame that is waiting for its ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// cri-guard itself: the ACK is consumed.
    Own,
    /// The other peer: the ACK is relayed to it.
    Peer,
}

/// The runtime connection.
enum Up {
    /// Being opened.
    Connecting(Pin<Box<dyn Future<Output = Result<UnixStream, Status>> + Send>>),
    /// Not there: calls are answered Unavailable; the next relayed call tries again.
    Absent,
    /// Relaying. `going_away`: the runtime sent GOAWAY with this last stream id.
    Live {
        sock: Socket,
        going_away: Option<u32>,
    },
    /// It went away while relaying: the client connection ends.
    Dead,
}

/// A stream the client opened.
struct Stream {
    /// The client sent END_STREAM.
    client_done: bool,
    role: Role,
}

enum Role {
    /// Relayed to the runtime.
    Relayed {
        method: u16,
        /// The runtime sent the response's first HEADERS.
        responded: bool,
        runtime_done: bool,
    },
    /// Kept by cri-guard.
    Own(Box<Own>),
}

struct Own {
    phase: Phase,
    /// What the client may still send on this stream (policing).
    recv_window: i64,
    /// What cri-guard may still send on this stream.
    send_window: i64,
    /// Stream credit to grant at the next flush.
    grant: u32,
    /// Frames of the answer not yet written (waiting for window).
    out: Option<Pending>,
}

enum Phase {
    /// Reading the request body.
    Collect(Box<Collect>),
    /// The decision (and forward) is running.
    Deciding(AbortHandle),
    /// Answered, or answering.
    Answered,
}

struct Collect {
    kind: Kind,
    head: http::request::Parts,
    buf: BytesMut,
    held: Held,
    deadline: Instant,
}

/// An answer being written: its header block, data and tail, in that order.
struct Pending {
    headers: Option<(Vec<u8>, bool)>,
    data: Bytes,
    tail: Tail,
}

enum Tail {
    /// A trailers block (ends the stream).
    Trailers(Vec<u8>),
    /// An empty DATA frame with END_STREAM.
    EmptyData,
    /// Already ended by the header block (trailers-only).
    Ended,
    /// A reset with this code.
    Reset(u32),
}

/// A client header block being collected across CONTINUATION frames.
struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    frames: usize,
}

/// A runtime header block being collected: its raw frames (relayed as they are) and fragment.
struct UpBlock {
    stream: u32,
    end_stream: bool,
    raw: Vec<u8>,
    fragment: Vec<u8>,
    frames: usize,
}

/// A relayed stream waiting for the runtime connection to open.
struct Opening {
    stream: u32,
    method: u16,
    end_stream: bool,
    frames: Vec<u8>,
}

type Call = Pin<Box<dyn Future<Output = (u32, Option<Answer>)> + Send>>;

/// One client connection and its runtime connection.
pub(crate) struct Relay {
    shared: Arc<Shared>,
    client: Socket,
    cin: InBuf,
    cout: OutBuf,
    up: Up,
    uin: InBuf,
    uout: OutBuf,
    preface_left: usize,
    req_dec: Decoder,
    resp_dec: Decoder,
    fields: Fields,
    enc: Vec<u8>,
    cblock: Option<Block>,
    ublock: Option<UpBlock>,
    streams: StreamMap,
    tombstones: VecDeque<u32>,
    max_client_id: u32,
    max_relayed_id: u32,
    opening: Option<Opening>,
    /// The runtime's DATA frame at the front of `uin` waits for client window.
    stalled: bool,
    /// The client's settings so far (capped as relayed), for a runtime connection opened later.
    client_settings: Vec<(u16, u32)>,
    to_client: VecDeque<Origin>,
    to_runtime: VecDeque<Origin>,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE: its receive window for each stream.
    client_initial: i64,
    /// The runtime's SETTINGS_INITIAL_WINDOW_SIZE as relayed: the client's send window per stream.
    runtime_initial: i64,
    runtime_max_streams: u32,
    /// The client's connection receive window (what may still be sent to it).
    client_window: i64,
    /// How much less than the runtime believes `client_window` is (cri-guard's own DATA).
    owed: i64,
    /// The client's connection send window (what it may still send).
    client_send_window: i64,
    /// Connection credit to give back to the client at the next flush.
    grant0: u32,
    grants: Vec<u32>,
    with_output: Vec<u32>,
    calls: FuturesUnordered<Call>,
    side: conn::Side,
    deadline: Option<(Instant, Pin<Box<Sleep>>)>,
    linger: Option<Pin<Box<Sleep>>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    draining: bool,
    goaway_sent: Option<u32>,
    /// Ending: write what is pending, then close.
    closing: bool,
}

/// Serves one client connection until it ends.
pub(crate) async fn serve(io: UnixStream, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let client = match Socket::new(io) {
        Ok(s) => s,
        Err(e) => return debug!(error = %e, "cannot set up the client socket"),
    };
    let mut relay = Relay::new(client, shared, shutdown);
    std::future::poll_fn(|cx| relay.poll(cx)).await;
}

impl Relay {
    fn new(client: Socket, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Relay {
        let stop = Box::pin(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        });
        let mut relay = Relay {
            up: Up::Connecting(Box::pin(conn::connect_socket(shared.clone()))),
            shared,
            client,
            cin: InBuf::new(),
            cout: OutBuf::default(),
            uin: InBuf::new(),
            uout: OutBuf::default(),
            preface_left: f::PREFACE.len(),
            req_dec: Decoder::new(),
            resp_dec: Decoder::new(),
            fields: Fields::default(),
            enc: Vec::new(),
            cblock: None,
            ublock: None,
            streams: StreamMap::default(),
            tombstones: VecDeque::new(),
            max_client_id: 0,
            max_relayed_id: 0,
            opening: None,
            stalled: false,
            client_settings: Vec::new(),
            to_client: VecDeque::new(),
            to_runtime: VecDeque::new(),
            client_initial: f::DEFAULT_WINDOW,
            runtime_initial: f::DEFAULT_WINDOW,
            runtime_max_streams: u32::MAX,
            client_window: f::DEFAULT_WINDOW,
            owed: 0,
            client_send_window: f::DEFAULT_WINDOW,
            grant0: 0,
            grants: Vec::new(),
            with_output: Vec::new(),
            calls: FuturesUnordered::new(),
            side: conn::Side::default(),
            deadline: None,
            linger: None,
            stop,
            draining: false,
            goaway_sent: None,
            closing: false,
        };
        // The server preface: cri-guard's own SETTINGS, at once (the runtime's follow, relayed).
        f::put_settings(
            &mut relay.cout.data,
            &[
                (f::SETTINGS_MAX_CONCURRENT_STREAMS, relay.shared.max_streams),
                (f::SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
            ],
        );
        relay.to_client.push_back(Origin::Own);
        relay
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut again = false;
            if !self.draining && self.stop.as_mut().poll(cx).is_ready() {
                self.start_drain();
            }
            if let Up::Connecting(fut) = &mut self.up {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    self.connected(r);
                    again = true;
                }
            }
            // The client side.
            if self.can_read_client() {
                match self.client.poll_read_into(cx, self.cin.space()) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(n)) => {
                        self.cin.end += n;
                        again = true;
                    }
                    Poll::Pending => {}
                }
            }
            if !self.closing && self.cin.pending() > 0 && self.opening.is_none() {
                if let Err(e) = self.process_client() {
                    self.client_error(e);
                }
            }
            // The runtime side.
            if self.can_read_runtime() {
                if let Up::Live { sock, .. } = &mut self.up {
                    match sock.poll_read_into(cx, self.uin.space()) {
                        Poll::Ready(Ok(0)) => self.runtime_lost("closed the connection"),
                        Poll::Ready(Err(_)) => self.runtime_lost("connection broke"),
                        Poll::Ready(Ok(n)) => {
                            self.uin.end += n;
                            again = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if matches!(self.up, Up::Live { .. }) && self.uin.pending() > 0 {
                if let Err(e) = self.process_runtime() {
                    self.runtime_error(e);
                }
            }
            // Calls cri-guard keeps.
            while let Poll::Ready(Some((id, answer))) = self.calls.poll_next_unpin(cx) {
                if let Some(answer) = answer {
                    self.answer(id, answer);
                }
                again = true;
            }
            if let Some((_, sleep)) = &mut self.deadline {
                if sleep.as_mut().poll(cx).is_ready() {
                    self.deadline = None;
                    self.expire_collects();
                    again = true;
                }
            }
            self.write_pending();
            self.settle();
            if let Some(sleep) = &mut self.linger {
                if sleep.as_mut().poll(cx).is_ready() {
                    self.linger = None;
                    self.end_connection();
                }
            }
            // A side held back because the other side's output was over HIGH_WATER is not
            // registered for reading, and client frames already read wait unprocessed; once the
            // flush brings that output down, go on in this poll, or nothing would wake the task
            // for it (a client's WINDOW_UPDATE unread while the runtime side waits for it: both
            // sides stuck).
            let held = (
                !self.can_read_client(),
                !self.can_read_runtime(),
                self.output_full(),
            );
            match self.flush(cx) {
                Err(()) => return Poll::Ready(()),
                Ok(true) if self.closing => return Poll::Ready(()),
                Ok(_) => {}
            }
            if (held.0 && self.can_read_client())
                || (held.1 && self.can_read_runtime())
                || (held.2 && !self.output_full())
            {
                again = true;
            }
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// Output to either side over HIGH_WATER: no more client frames are processed (nor read).
    fn output_full(&self) -> bool {
        self.uout.pending() >= HIGH_WATER || self.cout.pending() >= HIGH_WATER
    }

    fn can_read_client(&self) -> bool {
        !self.closing
            && self.opening.is_none()
            && self.uout.pending() < HIGH_WATER
            && self.cout.pending() < HIGH_WATER
            && self.cin.data.len() - self.cin.pending() >= f::HEAD + f::MAX_FRAME
    }

    fn can_read_runtime(&self) -> bool {
        !self.closing
            && !self.stalled
            && self.cout.pending() < HIGH_WATER
            && self.uin.data.len() - self.uin.pending() >= f::HEAD + f::MAX_FRAME
    }

    /// Writes each side once. `Ok(true)`: nothing left to write to the client.
    fn flush(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        // Each side is written until its buffer is empty or the socket is full: a partial
        // write is retried at once, so whatever stays buffered has a writability waker
        // registered (after a partial write alone, nothing would wake the task to finish it).
        // A write that takes everything, the usual case, is still one syscall.
        let mut broke = false;
        if let Up::Live { sock, .. } = &mut self.up {
            while self.uout.pending() > 0 {
                match sock.poll_write_from(cx, &self.uout.data[self.uout.at..]) {
                    Poll::Ready(Ok(n)) if n > 0 => self.uout.at += n,
                    Poll::Ready(_) => {
                        broke = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if self.uout.at == self.uout.data.len() {
                self.uout.data.clear();
                self.uout.at = 0;
            }
        }
        if broke {
            self.runtime_lost("connection broke");
        }
        while self.cout.pending() > 0 {
            match self
                .client
                .poll_write_from(cx, &self.cout.data[self.cout.at..])
            {
                Poll::Ready(Ok(n)) if n > 0 => self.cout.at += n,
                Poll::Ready(_) => return Err(()),
                Poll::Pending => break,
            }
        }
        if self.cout.at == self.cout.data.len() {
            self.cout.data.clear();
            self.cout.at = 0;
        }
        Ok(self.cout.pending() == 0)
    }

    // ---- the runtime connection ----

    fn connected(&mut self, r: Result<UnixStream, Status>) {
        let sock =
            r.and_then(|io| Socket::new(io).map_err(|e| conn::unreachable(&self.shared, &e)));
        match sock {
            Ok(sock) => {
                self.shared.stats.count_connect(true);
                debug!("relaying to the runtime");
                self.uout.data.clear();
                self.uout.at = 0;
                self.uout.data.extend_from_slice(f::PREFACE);
                let mut params = vec![(f::SETTINGS_ENABLE_PUSH, 0)];
                params.extend(
                    self.client_settings
                        .iter()
                        .filter(|(id, _)| *id != f::SETTINGS_ENABLE_PUSH),
                );
                f::put_settings(&mut self.uout.data, &params);
                self.to_runtime.push_back(Origin::Own);
                // The runtime starts out believing the client's window is the default.
                let believed = self.client_window + self.owed;
                if believed > f::DEFAULT_WINDOW {
                    let inc = (believed - f::DEFAULT_WINDOW) as u32;
                    f::put_window_update(&mut self.uout.data, 0, inc);
                    self.owed = 0;
                } else {
                    self.owed = f::DEFAULT_WINDOW - self.client_window;
                }
                self.resp_dec = Decoder::new();
                self.resp_dec.set_allowed(self.client_table_size());
                self.up = Up::Live {
                    sock,
                    going_away: None,
                };
                if let Some(o) = self.opening.take() {
                    self.forward_open(o);
                }
            }
            Err(status) => {
                self.shared.stats.count_connect(false);
                self.up = Up::Absent;
                if let Some(o) = self.opening.take() {
                    warn!(message = %status.message, "runtime unavailable");
                    self.shared.stats.count_call(o.method as usize);
                    self.shared.stats.count_error(o.method as usize);
                    self.own_status(o.stream, o.end_stream, &status);
                }
            }
        }
    }

    fn client_table_size(&self) -> usize {
        self.client_settings
            .iter()
            .rev()
            .find(|(id, _)| *id == f::SETTINGS_HEADER_TABLE_SIZE)
            .map_or(hpack::DEFAULT_TABLE, |(_, v)| *v as usize)
            .max(hpack::DEFAULT_TABLE)
    }

    /// The runtime connection ended or broke while relaying.
    fn runtime_lost(&mut self, what: &str) {
        if !matches!(self.up, Up::Live { .. }) {
            return;
        }
        self.shared.stats.count_lost();
        debug!(
            what,
            "runtime connection lost; ending the client connection"
        );
        self.up = Up::Dead;
        self.uin.start = 0;
        self.uin.end = 0;
        self.uout = OutBuf::default();
        self.stalled = false;
        self.ublock = None;
        let status = Status::new(
            Code::Unavailable,
            format!(
                "cri-guard: the container runtime {what} before the call was answered; the \
                 call was not completed (reconnect: the next connection reaches the runtime again)"
            ),
        );
        let open: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| matches!(s.role, Role::Relayed { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            let Some(Stream {
                client_done,
                role:
                    Role::Relayed {
                        method,
                        responded,
                        runtime_done,
                    },
            }) = self.streams.remove(&id)
            else {
                continue;
            };
            if runtime_done {
                // Answered in full; the rest of the request has nowhere to go.
                f::put_rst(&mut self.cout.data, id, Reason::NoError);
                continue;
            }
            self.shared.stats.count_error(method as usize);
            let block = status_block(&mut self.enc, &status, !responded);
            put_block(&mut self.cout.data, id, &block, true, None);
            if !client_done {
                f::put_rst(&mut self.cout.data, id, Reason::NoError);
            }
        }
        self.send_goaway(f::MAX_STREAM_ID, Reason::NoError, b"");
    }

    /// The runtime broke the protocol: tell it, drop it, and end the client connection.
    fn runtime_error(&mut self, e: ConnError) {
        warn!(error = %e, "the container runtime broke the HTTP/2 protocol");
        if let Up::Live { sock, .. } = &mut self.up {
            let mut out = Vec::new();
            f::put_goaway(&mut out, self.max_relayed_id, e.reason, e.what.as_bytes());
            // Best effort: the connection is dropped right after.
            let waker = futures_util::task::noop_waker();
            let _ = sock.poll_write_from(&mut Context::from_waker(&waker), &out);
        }
        self.runtime_lost("broke the HTTP/2 protocol");
    }

    /// The client broke the protocol: GOAWAY with the reason, then close.
    fn client_error(&mut self, e: ConnError) {
        debug!(error = %e, "client connection error");
        let last = self.max_client_id;
        self.goaway_sent = None;
        self.send_goaway(last, e.reason, e.what.as_bytes());
        self.closing = true;
    }

    fn send_goaway(&mut self, last: u32, reason: Reason, debug: &[u8]) {
        if self.goaway_sent.is_some_and(|prev| prev <= last) && reason == Reason::NoError {
            return;
        }
        let last = self.goaway_sent.map_or(last, |prev| prev.min(last));
        f::put_goaway(&mut self.cout.data, last, reason, debug);
        self.goaway_sent = Some(last);
    }

    fn start_drain(&mut self) {
        self.draining = true;
        self.send_goaway(f::MAX_STREAM_ID, Reason::NoError, b"");
    }

    /// Decides whether an ending connection (drained, or its runtime gone) can close now.
    fn settle(&mut self) {
        let ending = self.draining || matches!(self.up, Up::Dead);
        if !ending || self.closing {
            return;
        }
        if self.streams.is_empty() && self.opening.is_none() {
            if self.linger.is_none() {
                self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
            }
        } else {
            self.linger = None;
        }
    }

    fn end_connection(&mut self) {
        let last = self.max_client_id;
        self.send_goaway(last, Reason::NoError, b"");
        self.closing = true;
    }

    // ---- client frames ----

    fn process_client(&mut self) -> Result<(), ConnError> {
        let buf = std::mem::replace(&mut self.cin.data, Box::new([]));
        let (mut at, end) = (self.cin.start, self.cin.end);
        let res = (|| {
            if self.preface_left > 0 {
                let n = self.preface_left.min(end - at);
                let done = f::PREFACE.len() - self.preface_left;
                if buf[at..at + n] != f::PREFACE[done..done + n] {
                    return Err(conn_err(Reason::Protocol, "not an HTTP/2 client preface"));
                }
                self.preface_left -= n;
                at += n;
            }
            while self.preface_left == 0 && end - at >= f::HEAD && self.opening.is_none() {
                // Output over the high-water mark: the rest waits. A request header block is
                // re-encoded without indexing, so a few bytes of references into the client's
                // table can become up to MAX_HEADER_LIST of literals; without this stop one
                // read could queue that for every stream in it.
                if self.output_full() {
                    break;
                }
                let head = Head::parse(&buf[at..]);
                if head.len > f::MAX_FRAME {
                    return Err(conn_err(
                        Reason::FrameSize,
                        "frame larger than MAX_FRAME_SIZE",
                    ));
                }
                if end - at < f::HEAD + head.len {
                    break;
                }
                let frame = &buf[at..at + f::HEAD + head.len];
                self.client_frame(&head, frame)?;
                at += f::HEAD + head.len;
                if self.closing {
                    break;
                }
            }
            Ok(())
        })();
        self.cin.data = buf;
        self.cin.start = at;
        res
    }

    fn client_frame(&mut self, head: &Head, frame: &[u8]) -> Result<(), ConnError> {
        let payload = &frame[f::HEAD..];
        if let Some(block) = &mut self.cblock {
            if head.kind != f::CONTINUATION || head.stream != block.stream {
                return Err(conn_err(Reason::Protocol, "header block interrupted"));
            }
            block.frames += 1;
            if block.fragment.len() + payload.len() > MAX_BLOCK || block.frames > MAX_CONTINUATIONS
            {
                return Err(conn_err(Reason::EnhanceYourCalm, "header block too large"));
            }
            block.fragment.extend_from_slice(payload);
            if head.has(f::END_HEADERS) {
                let block = self.cblock.take().unwrap_or_else(|| unreachable!());
                self.request_block(block.stream, block.flags, block.priority, &block.fragment)?;
            }
            return Ok(());
        }
        f::check(head, payload)?;
        match head.kind {
            f::DATA => self.client_data(head, frame),
            f::HEADERS => {
                let (start, end) = f::headers_fragment(head, payload)?;
                let priority = head.has(f::PRIORITY_FLAG).then(|| {
                    let p = if head.has(f::PADDED) { 1 } else { 0 };
                    let mut b = [0u8; 5];
                    b.copy_from_slice(&payload[p..p + 5]);
                    b
                });
                if head.has(f::END_HEADERS) {
                    self.request_block(head.stream, head.flags, priority, &payload[start..end])
                } else {
                    self.cblock = Some(Block {
                        stream: head.stream,
                        flags: head.flags,
                        priority,
                        fragment: payload[start..end].to_vec(),
                        frames: 1,
                    });
                    Ok(())
                }
            }
            f::CONTINUATION => Err(conn_err(Reason::Protocol, "CONTINUATION without HEADERS")),
            f::PUSH_PROMISE => Err(conn_err(Reason::Protocol, "PUSH_PROMISE from a client")),
            f::RST_STREAM => {
                self.client_reset(head.stream, f::code_at(payload, 0));
                Ok(())
            }
            f::SETTINGS => self.client_settings(head, frame),
            f::PING => {
                if self.runtime_live() {
                    self.uout.data.extend_from_slice(frame);
                } else if !head.has(f::ACK) {
                    f::put_head(&mut self.cout.data, 8, f::PING, f::ACK, 0);
                    self.cout.data.extend_from_slice(payload);
                }
                Ok(())
            }
            f::WINDOW_UPDATE => self.client_window_update(head, frame),
            f::GOAWAY => {
                if self.runtime_live() {
                    self.uout.data.extend_from_slice(frame);
                }
                Ok(())
            }
            _ => {
                // PRIORITY and extension frames: relayed on stream 0 and on relayed streams.
                if self.runtime_live() && (head.stream == 0 || self.is_relayed(head.stream)) {
                    self.uout.data.extend_from_slice(frame);
                }
                Ok(())
            }
        }
    }

    fn runtime_live(&self) -> bool {
        matches!(self.up, Up::Live { .. })
    }

    fn is_relayed(&self, id: u32) -> bool {
        matches!(
            self.streams.get(&id),
            Some(Stream {
                role: Role::Relayed { .. },
                ..
            })
        )
    }

    fn client_data(&mut self, head: &Head, frame: &[u8]) -> Result<(), ConnError> {
        let n = head.len as i64;
        self.client_send_window -= n;
        if self.client_send_window < 0 {
            return Err(conn_err(
                Reason::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        let end_stream = head.has(f::END_STREAM);
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.max_client_id {
                return Err(conn_err(Reason::Protocol, "DATA on an idle stream"));
            }
            // A stream already closed here (kept and answered, refused, or reset): its credit
            // goes back to the client, as the runtime never sees the bytes.
            self.grant0 += head.len as u32;
            return Ok(());
        };
        if stream.client_done {
            return Err(conn_err(Reason::StreamClosed, "DATA after END_STREAM"));
        }
        stream.client_done = end_stream;
        match &mut stream.role {
            Role::Relayed { runtime_done, .. } => {
                let remove = end_stream && *runtime_done;
                if matches!(self.up, Up::Live { .. }) {
                    self.uout.data.extend_from_slice(frame);
                }
                if remove {
                    self.streams.remove(&head.stream);
                }
                Ok(())
            }
            Role::Own(own) => {
                self.grant0 += head.len as u32;
                own.recv_window -= n;
                if own.recv_window < 0 {
                    return Err(conn_err(
                        Reason::FlowControl,
                        "DATA beyond the stream window",
                    ));
                }
                if let Phase::Collect(_) = own.phase {
                    let (s, e) = f::unpad(head, &frame[f::HEAD..])?;
                    self.collect(
                        head.stream,
                        &frame[f::HEAD + s..f::HEAD + e],
                        head.len,
                        end_stream,
                    );
                } else if end_stream {
                    self.maybe_remove(head.stream);
                }
                Ok(())
            }
        }
    }

    /// Takes the body bytes of a kept stream into its buffer, within the bounds.
    fn collect(&mut self, id: u32, data: &[u8], frame_len: usize, end_stream: bool) {
        let shared = self.shared.clone();
        let Some(Stream {
            role: Role::Own(own),
            ..
        }) = self.streams.get_mut(&id)
        else {
            return;
        };
        let Phase::Collect(c) = &mut own.phase else {
            return;
        };
        let method = c.kind.method();
        if c.buf.len() + data.len() > shared.max_message {
            let status = conn::too_large(method, shared.max_message);
            warn!(method, message = %status.message, "refused");
            return self.own_answer(id, Answer::Status(status));
        }
        if !shared.budget.take(&mut c.held, data.len()) {
            let status = conn::over_budget(&shared, method);
            warn!(method, message = %status.message, "refused");
            return self.own_answer(id, Answer::Status(status));
        }
        c.buf.extend_from_slice(data);
        if !end_stream {
            // Stream credit for what was taken, so a body larger than the window arrives.
            own.grant += frame_len as u32;
            own.recv_window += frame_len as i64;
            if own.grant as usize == frame_len {
                self.grants.push(id);
            }
            return;
        }
        let Phase::Collect(c) = std::mem::replace(&mut own.phase, Phase::Answered) else {
            return;
        };
        let Collect {
            kind,
            head,
            buf,
            held,
            ..
        } = *c;
        let (abort, reg) = AbortHandle::new_pair();
        own.phase = Phase::Deciding(abort);
        let call = conn::intercepted(shared, self.side.clone(), kind, head, buf.freeze(), held);
        self.calls.push(Box::pin(async move {
            (id, Abortable::new(call, reg).await.ok())
        }));
    }

    fn expire_collects(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, s) in &self.streams {
            if let Role::Own(own) = &s.role {
                if let Phase::Collect(c) = &own.phase {
                    if c.deadline <= now {
                        expired.push((*id, c.kind.method()));
                    } else {
                        next = Some(next.map_or(c.deadline, |n| n.min(c.deadline)));
                    }
                }
            }
        }
        for (id, method) in expired {
            let status = conn::too_slow(&self.shared, method);
            warn!(method, message = %status.message, "refused");
            self.own_answer(id, Answer::Status(status));
        }
        if let Some(at) = next {
            self.set_deadline(at);
        }
    }

    fn set_deadline(&mut self, at: Instant) {
        if self.deadline.as_ref().is_some_and(|(d, _)| *d <= at) {
            return;
        }
        self.deadline = Some((at, Box::pin(tokio::time::sleep_until(at))));
    }

    fn client_reset(&mut self, id: u32, code: u32) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        match stream.role {
            Role::Relayed { method, .. } => {
                self.shared.stats.count_error(method as usize);
                if self.runtime_live() {
                    f::put_rst(&mut self.uout.data, id, reason_of(code));
                }
                if self.tombstones.len() == TOMBSTONES {
                    self.tombstones.pop_front();
                }
                self.tombstones.push_back(id);
            }
            Role::Own(own) => {
                // Dropping the call (and its buffer) releases the budget; a confirmed pull's
                // own task carries on.
                if let Phase::Deciding(abort) = own.phase {
                    abort.abort();
                }
            }
        }
    }

    fn client_settings(&mut self, head: &Head, frame: &[u8]) -> Result<(), ConnError> {
        if head.has(f::ACK) {
            if self.to_client.pop_front() == Some(Origin::Peer) && self.runtime_live() {
                self.uout.data.extend_from_slice(frame);
            }
            return Ok(());
        }
        let payload = &frame[f::HEAD..];
        let mut params: Vec<(u16, u32)> = Vec::with_capacity(payload.len() / 6);
        for (id, v) in f::settings(payload) {
            let v = match id {
                f::SETTINGS_HEADER_TABLE_SIZE => v.min(MAX_TABLE),
                f::SETTINGS_ENABLE_PUSH => 0,
                f::SETTINGS_MAX_FRAME_SIZE => v.min(f::MAX_FRAME as u32),
                f::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let delta = v as i64 - self.client_initial;
                    self.client_initial = v as i64;
                    for s in self.streams.values_mut() {
                        if let Role::Own(own) = &mut s.role {
                            own.send_window += delta;
                            if own.send_window > f::MAX_WINDOW {
                                return Err(conn_err(Reason::FlowControl, "window over 2^31-1"));
                            }
                        }
                    }
                    v
                }
                _ => v,
            };
            if id == f::SETTINGS_HEADER_TABLE_SIZE {
                self.resp_dec
                    .set_allowed((v as usize).max(self.client_table_size()));
            }
            params.push((id, v));
            if let Some(p) = self.client_settings.iter_mut().find(|(i, _)| *i == id) {
                p.1 = v;
            } else if self.client_settings.len() < 16 {
                self.client_settings.push((id, v));
            }
        }
        if !self.with_output.is_empty() {
            self.write_pending();
        }
        if self.runtime_live() {
            if self.to_runtime.len() >= MAX_UNACKED_SETTINGS {
                return Err(conn_err(
                    Reason::EnhanceYourCalm,
                    "too many SETTINGS frames awaiting an ACK",
                ));
            }
            f::put_settings(&mut self.uout.data, &params);
            self.to_runtime.push_back(Origin::Peer);
        } else {
            f::put_settings_ack(&mut self.cout.data);
        }
        Ok(())
    }

    fn client_window_update(&mut self, head: &Head, frame: &[u8]) -> Result<(), ConnError> {
        let inc = f::window_increment(&frame[f::HEAD..]);
        if head.stream == 0 {
            self.client_window += inc as i64;
            if self.client_window > f::MAX_WINDOW {
                return Err(conn_err(
                    Reason::FlowControl,
                    "connection window over 2^31-1",
                ));
            }
            let withheld = self.owed.min(inc as i64);
            self.owed -= withheld;
            let pass = inc as i64 - withheld;
            if pass > 0 && self.runtime_live() {
                f::put_window_update(&mut self.uout.data, 0, pass as u32);
            }
            self.stalled = false;
            return Ok(());
        }
        let live = self.runtime_live();
        match self.streams.get_mut(&head.stream) {
            Some(Stream {
                role: Role::Relayed { .. },
                ..
            }) if live => self.uout.data.extend_from_slice(frame),
            Some(Stream {
                role: Role::Relayed { .. },
                ..
            }) => {}
            Some(Stream {
                role: Role::Own(own),
                ..
            }) => {
                own.send_window += inc as i64;
                if own.send_window > f::MAX_WINDOW {
                    return Err(conn_err(Reason::FlowControl, "stream window over 2^31-1"));
                }
            }
            None if head.stream > self.max_client_id => {
                return Err(conn_err(
                    Reason::Protocol,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            None => {}
        }
        Ok(())
    }

    /// A whole request header block (new stream, or trailers).
    fn request_block(
        &mut self,
        id: u32,
        flags: u8,
        priority: Option<[u8; 5]>,
        block: &[u8],
    ) -> Result<(), ConnError> {
        // Decoded whatever becomes of the stream: the decoder must follow the client's encoder.
        self.req_dec
            .decode(block, &mut self.fields, MAX_HEADER_LIST)
            .map_err(|_| conn_err(Reason::Compression, "undecodable request header block"))?;
        let end_stream = flags & f::END_STREAM != 0;
        if id <= self.max_client_id || id % 2 == 0 {
            if id % 2 == 0 {
                return Err(conn_err(Reason::Protocol, "even stream id from a client"));
            }
            return self.request_trailers(id, end_stream);
        }
        self.max_client_id = id;
        if self.fields.over {
            let status = Status::new(
                Code::ResourceExhausted,
                format!("cri-guard: request headers larger than {MAX_HEADER_LIST} bytes refused"),
            );
            self.own_status(id, end_stream, &status);
            return Ok(());
        }
        let Some(path) = check_request(&self.fields) else {
            f::put_rst(&mut self.cout.data, id, Reason::Protocol);
            return Ok(());
        };
        if let Up::Live {
            going_away: Some(last),
            ..
        } = self.up
        {
            if id > last {
                // The runtime is going away: this call was not processed; the client retries.
                f::put_rst(&mut self.cout.data, id, Reason::RefusedStream);
                return Ok(());
            }
        }
        let limit = self.shared.max_streams.min(self.runtime_max_streams);
        if self.streams.len() >= limit as usize {
            f::put_rst(&mut self.cout.data, id, Reason::RefusedStream);
            return Ok(());
        }
        let method = method_index(path) as u16;
        match conn::route(path, &self.shared) {
            Route::Refuse(status) => {
                tracing::info!(method = %grpc::Text(&String::from_utf8_lossy(path)), code = ?status.code, "refused");
                self.own_status(id, end_stream, &status);
            }
            Route::Intercept(kind) => self.open_intercepted(id, kind, end_stream),
            Route::Relay => {
                let mut frames = Vec::new();
                self.enc.clear();
                for i in 0..self.fields.len() {
                    let fd = self.fields.field(i);
                    hpack::encode_field(
                        &mut self.enc,
                        self.fields.name(i),
                        self.fields.value(i),
                        fd.never_indexed,
                    );
                }
                put_block(&mut frames, id, &self.enc, end_stream, priority);
                let opening = Opening {
                    stream: id,
                    method,
                    end_stream,
                    frames,
                };
                match &self.up {
                    Up::Live { .. } => self.forward_open(opening),
                    Up::Connecting(_) => self.opening = Some(opening),
                    Up::Absent => {
                        self.up =
                            Up::Connecting(Box::pin(conn::connect_socket(self.shared.clone())));
                        self.opening = Some(opening);
                    }
                    Up::Dead => {
                        self.shared.stats.count_call(method as usize);
                        self.shared.stats.count_error(method as usize);
                        let status = Status::new(
                            Code::Unavailable,
                            "cri-guard: the container runtime connection this client \
                             connection used is gone; reconnect (a new connection reaches the \
                             runtime again)",
                        );
                        self.own_status(id, end_stream, &status);
                    }
                }
            }
        }
        Ok(())
    }

    fn forward_open(&mut self, o: Opening) {
        self.shared.stats.count_call(o.method as usize);
        self.uout.data.extend_from_slice(&o.frames);
        self.max_relayed_id = o.stream;
        self.streams.insert(
            o.stream,
            Stream {
                client_done: o.end_stream,
                role: Role::Relayed {
                    method: o.method,
                    responded: false,
                    runtime_done: false,
                },
            },
        );
    }

    fn request_trailers(&mut self, id: u32, end_stream: bool) -> Result<(), ConnError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            // A stream closed here already (reset, refused, answered): decoded, dropped.
            return Ok(());
        };
        if stream.client_done {
            return Err(conn_err(Reason::StreamClosed, "HEADERS after END_STREAM"));
        }
        if !end_stream {
            return Err(conn_err(Reason::Protocol, "trailers without END_STREAM"));
        }
        stream.client_done = true;
        if self.fields.over && matches!(stream.role, Role::Relayed { .. }) {
            // Trailers over the header-list bound are not relayed cut short: the call is reset
            // on both sides (toward the runtime as if the client had reset it).
            self.client_reset(id, Reason::Cancel as u32);
            f::put_rst(&mut self.cout.data, id, Reason::EnhanceYourCalm);
            return Ok(());
        }
        match &stream.role {
            Role::Relayed { runtime_done, .. } => {
                let done = *runtime_done;
                self.enc.clear();
                for i in 0..self.fields.len() {
                    let never = self.fields.field(i).never_indexed;
                    hpack::encode_field(
                        &mut self.enc,
                        self.fields.name(i),
                        self.fields.value(i),
                        never,
                    );
                }
                if self.runtime_live() {
                    put_block(&mut self.uout.data, id, &self.enc, true, None);
                }
                if done {
                    self.streams.remove(&id);
                }
            }
            Role::Own(own) => {
                if matches!(own.phase, Phase::Collect(_)) {
                    // End of a kept request: decide on what arrived.
                    self.collect(id, &[], 0, true);
                } else {
                    self.maybe_remove(id);
                }
            }
        }
        Ok(())
    }

    fn open_intercepted(&mut self, id: u32, kind: Kind, end_stream: bool) {
        let head = match conn::request_head(&self.fields) {
            Ok(h) => h,
            Err(what) => {
                let status = Status::new(
                    Code::InvalidArgument,
                    format!(
                        "cri-guard: cannot read the {} request: {what}",
                        kind.method()
                    ),
                );
                return self.own_status(id, end_stream, &status);
            }
        };
        let deadline = Instant::now() + self.shared.request_timeout;
        self.streams.insert(
            id,
            Stream {
                client_done: false,
                role: Role::Own(Box::new(Own {
                    phase: Phase::Collect(Box::new(Collect {
                        kind,
                        head,
                        buf: BytesMut::new(),
                        held: Held::new(&self.shared.budget),
                        deadline,
                    })),
                    recv_window: self.runtime_initial,
                    send_window: self.client_initial,
                    grant: 0,
                    out: None,
                })),
            },
        );
        if end_stream {
            if let Some(s) = self.streams.get_mut(&id) {
                s.client_done = true;
            }
            self.collect(id, &[], 0, true);
        } else {
            self.set_deadline(deadline);
        }
    }

    /// Answers a new stream with a status at once (nothing reaches the runtime).
    fn own_status(&mut self, id: u32, end_stream: bool, status: &Status) {
        self.streams.insert(
            id,
            Stream {
                client_done: end_stream,
                role: Role::Own(Box::new(Own {
                    phase: Phase::Answered,
                    recv_window: self.runtime_initial,
                    send_window: self.client_initial,
                    grant: 0,
                    out: None,
                })),
            },
        );
        self.own_answer(id, Answer::Status(status.clone()));
    }

    /// An answer for a kept stream, from its call.
    fn answer(&mut self, id: u32, answer: Answer) {
        self.own_answer(id, answer);
    }

    fn own_answer(&mut self, id: u32, answer: Answer) {
        let Some(Stream {
            role: Role::Own(own),
            ..
        }) = self.streams.get_mut(&id)
        else {
            return;
        };
        if let Phase::Deciding(abort) = &own.phase {
            abort.abort();
        }
        own.phase = Phase::Answered;
        let pending = match answer {
            Answer::Status(status) => Pending {
                headers: Some((status_block(&mut self.enc, &status, true), true)),
                data: Bytes::new(),
                tail: Tail::Ended,
            },
            Answer::TrailersOnly(parts) => Pending {
                headers: Some((response_block(&parts), true)),
                data: Bytes::new(),
                tail: Tail::Ended,
            },
            Answer::Relay {
                parts,
                data,
                trailers,
            } => Pending {
                headers: Some((response_block(&parts), false)),
                data,
                tail: match trailers {
                    Some(t) => Tail::Trailers(headers_block(&t)),
                    None => Tail::EmptyData,
                },
            },
            Answer::Reset(reason) => Pending {
                headers: None,
                data: Bytes::new(),
                tail: Tail::Reset(u32::from(reason)),
            },
        };
        own.out = Some(pending);
        self.with_output.push(id);
    }

    /// Writes what the windows allow of the answers waiting, and pending stream grants.
    fn write_pending(&mut self) {
        if self.grant0 > 0 {
            f::put_window_update(&mut self.cout.data, 0, self.grant0);
            self.client_send_window += self.grant0 as i64;
            self.grant0 = 0;
        }
        for id in std::mem::take(&mut self.grants) {
            if let Some(Stream {
                role: Role::Own(own),
                client_done: false,
            }) = self.streams.get_mut(&id)
            {
                if own.grant > 0 {
                    f::put_window_update(&mut self.cout.data, id, own.grant);
                    own.grant = 0;
                }
            }
        }
        if self.with_output.is_empty() {
            return;
        }
        let mut waiting = Vec::new();
        for id in std::mem::take(&mut self.with_output) {
            if self.cout.pending() >= HIGH_WATER || !self.emit(id) {
                waiting.push(id);
            }
        }
        self.with_output = waiting;
    }

    /// Writes as much of stream `id`'s answer as fits; true when it is all written.
    fn emit(&mut self, id: u32) -> bool {
        let Some(stream) = self.streams.get_mut(&id) else {
            return true;
        };
        let Role::Own(own) = &mut stream.role else {
            return true;
        };
        let Some(p) = &mut own.out else {
            return true;
        };
        let out = &mut self.cout.data;
        if let Some((block, end)) = p.headers.take() {
            put_block(out, id, &block, end, None);
        }
        while !p.data.is_empty() {
            let room = self
                .client_window
                .min(own.send_window)
                .min(f::MAX_FRAME as i64);
            if room <= 0 {
                return false;
            }
            let n = (room as usize).min(p.data.len());
            let chunk = p.data.split_to(n);
            let last = p.data.is_empty() && matches!(p.tail, Tail::EmptyData);
            f::put_head(out, n, f::DATA, if last { f::END_STREAM } else { 0 }, id);
            out.extend_from_slice(&chunk);
            self.client_window -= n as i64;
            self.owed += n as i64;
            own.send_window -= n as i64;
            if last {
                p.tail = Tail::Ended;
            }
        }
        match std::mem::replace(&mut p.tail, Tail::Ended) {
            Tail::Trailers(block) => put_block(out, id, &block, true, None),
            Tail::EmptyData => f::put_head(out, 0, f::DATA, f::END_STREAM, id),
            Tail::Ended => {}
            Tail::Reset(code) => {
                f::put_rst(out, id, reason_of(code));
                self.streams.remove(&id);
                return true;
            }
        }
        own.out = None;
        if !stream.client_done {
            // A complete answer before the whole request: the client may stop sending.
            f::put_rst(out, id, Reason::NoError);
        }
        self.streams.remove(&id);
        true
    }

    fn maybe_remove(&mut self, id: u32) {
        if let Some(Stream {
            client_done: true,
            role: Role::Own(own),
        }) = self.streams.get(&id)
        {
            if matches!(own.phase, Phase::Answered) && own.out.is_none() {
                self.streams.remove(&id);
            }
        }
    }

    // ---- runtime frames ----

    fn process_runtime(&mut self) -> Result<(), ConnError> {
        let buf = std::mem::replace(&mut self.uin.data, Box::new([]));
        let (mut at, end) = (self.uin.start, self.uin.end);
        let res = (|| {
            while end - at >= f::HEAD && self.runtime_live() {
                let head = Head::parse(&buf[at..]);
                if head.len > f::MAX_FRAME {
                    return Err(conn_err(
                        Reason::FrameSize,
                        "frame larger than MAX_FRAME_SIZE",
                    ));
                }
                if end - at < f::HEAD + head.len {
                    break;
                }
                if self.cout.pending() >= HIGH_WATER {
                    break;
                }
                let frame = &buf[at..at + f::HEAD + head.len];
                if !self.runtime_frame(&head, frame)? {
                    self.stalled = true;
                    break;
                }
                at += f::HEAD + head.len;
            }
            Ok(())
        })();
        if self.runtime_live() {
            self.uin.data = buf;
            self.uin.start = at;
        } else {
            self.uin.data = buf;
            self.uin.start = 0;
            self.uin.end = 0;
        }
        res
    }

    /// Handles one runtime frame; false when it must wait for client window (not consumed).
    fn runtime_frame(&mut self, head: &Head, frame: &[u8]) -> Result<bool, ConnError> {
        let payload = &frame[f::HEAD..];
        if let Some(block) = &mut self.ublock {
            if head.kind != f::CONTINUATION || head.stream != block.stream {
                return Err(conn_err(Reason::Protocol, "header block interrupted"));
            }
            block.frames += 1;
            if block.fragment.len() + payload.len() > MAX_BLOCK || block.frames > MAX_CONTINUATIONS
            {
                return Err(conn_err(Reason::EnhanceYourCalm, "header block too large"));
            }
            block.raw.extend_from_slice(frame);
            block.fragment.extend_from_slice(payload);
            if head.has(f::END_HEADERS) {
                let block = self.ublock.take().unwrap_or_else(|| unreachable!());
                self.response_block(block.stream, block.end_stream, &block.fragment, &block.raw)?;
            }
            return Ok(true);
        }
        f::check(head, payload)?;
        match head.kind {
            f::DATA => {
                let n = head.len as i64;
                let known = match self.streams.get(&head.stream) {
                    Some(Stream {
                        role:
                            Role::Relayed {
                                runtime_done: false,
                                ..
                            },
                        ..
                    }) => true,
                    _ if self.tombstones.contains(&head.stream) => false,
                    _ => return Err(conn_err(Reason::StreamClosed, "DATA on a closed stream")),
                };
                if n > self.client_window + self.owed {
                    return Err(conn_err(
                        Reason::FlowControl,
                        "DATA beyond the connection window",
                    ));
                }
                if n > self.client_window {
                    return Ok(false);
                }
                self.client_window -= n;
                self.cout.data.extend_from_slice(frame);
                if known && head.has(f::END_STREAM) {
                    self.runtime_end(head.stream, false);
                }
                Ok(true)
            }
            f::HEADERS => {
                let (start, end) = f::headers_fragment(head, payload)?;
                if head.has(f::END_HEADERS) {
                    self.response_block(
                        head.stream,
                        head.has(f::END_STREAM),
                        &payload[start..end],
                        frame,
                    )?;
                } else {
                    self.ublock = Some(UpBlock {
                        stream: head.stream,
                        end_stream: head.has(f::END_STREAM),
                        raw: frame.to_vec(),
                        fragment: payload[start..end].to_vec(),
                        frames: 1,
                    });
                }
                Ok(true)
            }
            f::CONTINUATION => Err(conn_err(Reason::Protocol, "CONTINUATION without HEADERS")),
            f::PUSH_PROMISE => Err(conn_err(
                Reason::Protocol,
                "PUSH_PROMISE (push is disabled)",
            )),
            f::RST_STREAM => {
                match self.streams.get(&head.stream) {
                    Some(Stream {
                        role: Role::Relayed { .. },
                        ..
                    }) => {
                        self.cout.data.extend_from_slice(frame);
                        let ok = f::code_at(payload, 0) == 0;
                        self.runtime_end(head.stream, !ok);
                        self.streams.remove(&head.stream);
                    }
                    _ if head.stream > self.max_relayed_id => {
                        return Err(conn_err(Reason::Protocol, "RST_STREAM on an idle stream"));
                    }
                    _ => {}
                }
                Ok(true)
            }
            f::SETTINGS => {
                self.runtime_settings(head, frame);
                Ok(true)
            }
            f::PING => {
                self.cout.data.extend_from_slice(frame);
                Ok(true)
            }
            f::GOAWAY => {
                self.runtime_goaway(payload);
                Ok(true)
            }
            f::WINDOW_UPDATE => {
                let inc = f::window_increment(payload) as i64;
                if head.stream == 0 {
                    self.client_send_window += inc;
                    if self.client_send_window > f::MAX_WINDOW {
                        return Err(conn_err(Reason::FlowControl, "window over 2^31-1"));
                    }
                    self.cout.data.extend_from_slice(frame);
                } else if self.is_relayed(head.stream) {
                    self.cout.data.extend_from_slice(frame);
                }
                Ok(true)
            }
            _ => {
                // PRIORITY and extension frames.
                if head.stream == 0 || self.is_relayed(head.stream) {
                    self.cout.data.extend_from_slice(frame);
                }
                Ok(true)
            }
        }
    }

    /// A whole response header block: checked (decoded), then relayed as its raw frames.
    fn response_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        raw: &[u8],
    ) -> Result<(), ConnError> {
        self.resp_dec
            .decode(block, &mut self.fields, MAX_HEADER_LIST)
            .map_err(|_| conn_err(Reason::Compression, "undecodable response header block"))?;
        let failed = end_stream && self.fields.get(b"grpc-status").is_none_or(|s| s != b"0");
        match self.streams.get_mut(&id) {
            Some(Stream {
                role:
                    Role::Relayed {
                        responded,
                        runtime_done: false,
                        ..
                    },
                ..
            }) => {
                *responded = true;
                self.cout.data.extend_from_slice(raw);
                if end_stream {
                    self.runtime_end(id, failed);
                }
            }
            // A stream the client reset: the block is still relayed, the client's decoder
            // must see it (the client ignores the frames themselves).
            _ if self.tombstones.contains(&id) => self.cout.data.extend_from_slice(raw),
            _ => {
                return Err(conn_err(
                    Reason::Protocol,
                    "HEADERS on a closed or unknown stream",
                ));
            }
        }
        Ok(())
    }

    /// The runtime ended (END_STREAM) a relayed stream.
    fn runtime_end(&mut self, id: u32, failed: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if let Role::Relayed {
            method,
            runtime_done,
            ..
        } = &mut stream.role
        {
            *runtime_done = true;
            if failed {
                self.shared.stats.count_error(*method as usize);
            }
            if stream.client_done {
                self.streams.remove(&id);
            }
        }
    }

    fn runtime_settings(&mut self, head: &Head, frame: &[u8]) {
        if head.has(f::ACK) {
            if self.to_runtime.pop_front() == Some(Origin::Peer) {
                self.cout.data.extend_from_slice(frame);
            }
            return;
        }
        let mut params = Vec::with_capacity(frame.len() / 6);
        for (id, v) in f::settings(&frame[f::HEAD..]) {
            let v = match id {
                f::SETTINGS_HEADER_TABLE_SIZE => {
                    let v = v.min(MAX_TABLE);
                    self.req_dec
                        .set_allowed((v as usize).max(hpack::DEFAULT_TABLE));
                    v
                }
                f::SETTINGS_MAX_CONCURRENT_STREAMS => {
                    self.runtime_max_streams = v;
                    v.min(self.shared.max_streams)
                }
                f::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let delta = v as i64 - self.runtime_initial;
                    self.runtime_initial = v as i64;
                    for s in self.streams.values_mut() {
                        if let Role::Own(own) = &mut s.role {
                            own.recv_window += delta;
                        }
                    }
                    v
                }
                f::SETTINGS_MAX_FRAME_SIZE => v.min(f::MAX_FRAME as u32),
                f::SETTINGS_MAX_HEADER_LIST_SIZE => v.min(MAX_HEADER_LIST as u32),
                _ => v,
            };
            params.push((id, v));
        }
        f::put_settings(&mut self.cout.data, &params);
        self.to_client.push_back(Origin::Peer);
    }

    /// The runtime is going away: relay its GOAWAY with the last stream id raised over the
    /// streams cri-guard kept (they were processed), and refuse the relayed ones in between.
    fn runtime_goaway(&mut self, payload: &[u8]) {
        let last = f::code_at(payload, 0) & 0x7fff_ffff;
        let code = f::code_at(payload, 4);
        let own_max = self
            .streams
            .iter()
            .filter(|(_, s)| matches!(s.role, Role::Own(_)))
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(0);
        let raised = last.max(own_max);
        let refused: Vec<u32> = self
            .streams
            .iter()
            .filter(|(id, s)| **id > last && matches!(s.role, Role::Relayed { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in refused {
            if let Some(Stream {
                role: Role::Relayed { method, .. },
                ..
            }) = self.streams.remove(&id)
            {
                self.shared.stats.count_error(method as usize);
                if id <= raised {
                    f::put_rst(&mut self.cout.data, id, Reason::RefusedStream);
                }
            }
        }
        if let Up::Live { going_away, .. } = &mut self.up {
            *going_away = Some(going_away.map_or(raised, |g| g.min(raised)));
        }
        let reason = reason_of(code);
        let debug = &payload[8..];
        if reason == Reason::NoError {
            self.send_goaway(raised, Reason::NoError, debug);
        } else {
            self.goaway_sent = None;
            self.send_goaway(raised, reason, debug);
        }
    }
}

/// The runtime-side encoding of an error code: known ones by name, others as they are.
fn reason_of(code: u32) -> Reason {
    match code {
        0x0 => Reason::NoError,
        0x1 => Reason::Protocol,
        0x3 => Reason::FlowControl,
        0x5 => Reason::StreamClosed,
        0x6 => Reason::FrameSize,
        0x7 => Reason::RefusedStream,
        0x8 => Reason::Cancel,
        0x9 => Reason::Compression,
        0xb => Reason::EnhanceYourCalm,
        _ => Reason::Internal,
    }
}

/// Checks a request's header list (RFC 9113 section 8.2 and 8.3) and returns its `:path`;
/// `None` if it is malformed (the stream is reset, nothing is relayed).
fn check_request(fields: &Fields) -> Option<&[u8]> {
    let (mut method, mut scheme, mut path, mut authority) = (false, false, None, false);
    let mut regular = false;
    for i in 0..fields.len() {
        let (name, value) = (fields.name(i), fields.value(i));
        if value.iter().any(|&b| b == 0 || b == b'\n' || b == b'\r') {
            return None;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            let seen = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => {
                    if regular || path.is_some() || value.is_empty() {
                        return None;
                    }
                    path = Some(value);
                    continue;
                }
                _ => return None,
            };
            if regular || *seen {
                return None;
            }
            *seen = true;
            continue;
        }
        regular = true;
        if name.is_empty()
            || name
                .iter()
                .any(|&b| b <= 0x20 || b.is_ascii_uppercase() || b >= 0x7f)
        {
            return None;
        }
        match name {
            b"connection" | b"proxy-connection" | b"keep-alive" | b"transfer-encoding"
            | b"upgrade" => return None,
            b"te" if value != b"trailers" => return None,
            _ => {}
        }
    }
    if method && scheme { path } else { None }
}

/// Appends `block` as HEADERS (plus CONTINUATION) frames no larger than the frame limit.
fn put_block(
    out: &mut Vec<u8>,
    id: u32,
    block: &[u8],
    end_stream: bool,
    priority: Option<[u8; 5]>,
) {
    let prio = if priority.is_some() { 5 } else { 0 };
    let first = block.len().min(f::MAX_FRAME - prio);
    let mut flags = if end_stream { f::END_STREAM } else { 0 };
    if priority.is_some() {
        flags |= f::PRIORITY_FLAG;
    }
    if first == block.len() {
        flags |= f::END_HEADERS;
    }
    f::put_head(out, first + prio, f::HEADERS, flags, id);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(f::MAX_FRAME);
        let flags = if n == rest.len() { f::END_HEADERS } else { 0 };
        f::put_head(out, n, f::CONTINUATION, flags, id);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// A status as a header block: trailers-only (with `:status` and content-type) or trailers.
fn status_block(scratch: &mut Vec<u8>, status: &Status, trailers_only: bool) -> Vec<u8> {
    let resp = status.to_response();
    scratch.clear();
    if trailers_only {
        hpack::encode_field(scratch, b":status", b"200", false);
        for (k, v) in resp.headers() {
            hpack::encode_field(scratch, k.as_str().as_bytes(), v.as_bytes(), false);
        }
    } else {
        for (k, v) in resp.headers() {
            if k != "content-type" {
                hpack::encode_field(scratch, k.as_str().as_bytes(), v.as_bytes(), false);
            }
        }
    }
    scratch.clone()
}

fn response_block(parts: &http::response::Parts) -> Vec<u8> {
    let mut out = Vec::new();
    hpack::encode_field(
        &mut out,
        b":status",
        parts.status.as_str().as_bytes(),
        false,
    );
    encode_headers(&mut out, &parts.headers);
    out
}

fn headers_block(headers: &http::HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    encode_headers(&mut out, headers);
    out
}

fn encode_headers(out: &mut Vec<u8>, headers: &http::HeaderMap) {
    for (k, v) in headers {
        hpack::encode_field(out, k.as_str().as_bytes(), v.as_bytes(), v.is_sensitive());
    }
}

//! A unix socket for h2 that the event loop watches for reading only.
//!
//! tokio registers its sockets for both readable and writable edges. A unix socket signals its
//! writer every time the peer reads, so each call through the proxy would wake it for nothing
//! twice (containerd draining the request, the kubelet draining the response): measured, about
//! 1.5 extra context switches per call. Here the socket is registered for readability only and
//! written with plain non-blocking writes; only when a write would block is a second
//! registration (on a duplicate of the descriptor) made for writability, and it is dropped
//! again as soon as a write goes through.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::authority::AuthorityFix;

pub(crate) struct Socket {
    read: AsyncFd<StdStream>,
    /// Registered for writability only while a write is blocked.
    write_wait: Option<AsyncFd<StdStream>>,
    /// On the kubelet side: the `:authority` fix applied to what the client sends.
    fix: Option<Box<AuthorityFix>>,
    /// What each read lands in before it is copied to h2.
    scratch: Box<[u8]>,
}

/// Most bytes one read takes (h2 asks for at most its buffer's free space anyway).
const READ_CHUNK: usize = 16 * 1024;

impl Socket {
    /// A socket to the runtime: bytes pass as they are.
    pub(crate) fn new(stream: tokio::net::UnixStream) -> io::Result<Socket> {
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        Ok(Socket {
            read: register(std, Interest::READABLE)?,
            write_wait: None,
            fix: None,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// A socket from a client: what it sends goes through [`AuthorityFix`] before h2 reads it.
    pub(crate) fn downstream(stream: tokio::net::UnixStream) -> io::Result<Socket> {
        let mut s = Socket::new(stream)?;
        s.fix = Some(Box::new(AuthorityFix::new()));
        Ok(s)
    }
}

/// Registers `stream` with the event loop for `interest`.
///
/// `with_interest` is deprecated because, for a borrowed descriptor, the registration could
/// outlive the descriptor; here the `AsyncFd` owns the stream, so the descriptor is closed only
/// after the registration is gone, which is the condition its `unsafe` replacement asks for.
#[allow(deprecated)]
fn register(stream: StdStream, interest: Interest) -> io::Result<AsyncFd<StdStream>> {
    AsyncFd::with_interest(stream, interest)
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(fix) = &mut this.fix {
                if fix.has_out() {
                    buf.put_slice(&fix.take_out(buf.remaining()));
                    return Poll::Ready(Ok(()));
                }
            }
            let mut guard = ready!(this.read.poll_read_ready(cx))?;
            // Read into our own (initialized) buffer and copy what came: h2 hands us
            // uninitialized space, and initializing it (a memset of its whole 8+ KiB) on every
            // read cost more than the copy of the few hundred bytes a CRI call brings.
            let len = this.scratch.len().min(buf.remaining());
            let scratch = &mut this.scratch[..len];
            match guard.try_io(|fd| fd.get_ref().read(scratch)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket: wait for the next edge instead of paying
                    // a read syscall just to hear EAGAIN (tokio's streams do the same; its
                    // readiness ticks make this race-free).
                    if n > 0 && n < len {
                        guard.clear_ready();
                    }
                    let read = &this.scratch[..n];
                    let Some(fix) = &mut this.fix else {
                        buf.put_slice(read);
                        return Poll::Ready(Ok(()));
                    };
                    if n == 0 {
                        fix.finish();
                        if fix.has_out() {
                            continue;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    let pass = if fix.busy() { 0 } else { fix.scan(read) };
                    if pass < n {
                        fix.push(&read[pass..]);
                    }
                    if pass > 0 {
                        buf.put_slice(&read[..pass]);
                        return Poll::Ready(Ok(()));
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.read.get_ref().write(data) {
                Ok(n) => {
                    self.write_wait = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.write_wait.is_none() {
                        let dup = self.read.get_ref().try_clone()?;
                        self.write_wait = Some(register(dup, Interest::WRITABLE)?);
                    }
                    if let Some(w) = &self.write_wait {
                        let mut guard = ready!(w.poll_write_ready(cx))?;
                        guard.clear_ready();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.read.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        })
    }
}

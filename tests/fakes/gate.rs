//! A TCP forwarder in front of a registry that, once armed, holds the first client chunk
//! containing a pattern until released (HTTP/1 request heads fit in one chunk): it stops a
//! pull or a signature fetch at a known point, so a test can act while it waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// A TCP forwarder that, once armed, holds the first client chunk containing `pattern` until
/// released (HTTP/1 request heads fit in one chunk).
pub struct Gate {
    pub addr: String,
    pattern: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    pub held: Arc<Notify>,
    pub release: watch::Sender<bool>,
    pub holding: Arc<AtomicBool>,
}

impl Gate {
    /// Forwards to `target` (host:port).
    pub async fn start(target: String) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pattern: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Default::default();
        let held = Arc::new(Notify::new());
        let holding = Arc::new(AtomicBool::new(false));
        let (release, released) = watch::channel(false);
        let (p, h, hh) = (pattern.clone(), held.clone(), holding.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (p, h, hh, target) = (p.clone(), h.clone(), hh.clone(), target.clone());
                let mut released = released.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let hit = p.lock().unwrap().as_ref().is_some_and(|pat| {
                                buf[..n].windows(pat.len()).any(|w| w == pat.as_slice())
                            });
                            if hit {
                                hh.store(true, Ordering::SeqCst);
                                h.notify_one();
                                let _ = released.wait_for(|r| *r).await;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Gate {
            addr,
            pattern,
            held,
            release,
            holding,
        }
    }

    /// Holds the next chunk that contains `pattern`.
    pub fn arm(&self, pattern: &str) {
        *self.pattern.lock().unwrap() = Some(pattern.as_bytes().to_vec());
    }
}

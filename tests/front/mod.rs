//! A scriptable HTTP/1.1 server for registry misbehaviour a real registry can't be made to show:
//! it sits in front of a real `docker-registry` (or alone) and, per request, forwards it (maybe to
//! another path), answers itself, or holds it until the test opens a gate. It records every
//! request it receives (method, path, headers), so tests can assert what a client sent where.
//!
//! One request per connection (`Connection: close`), enough for registry clients (containerd's
//! Go client, reqwest).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// A request as the front received it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether containerd sent it (its user agent is `containerd/<version>`).
    pub fn is_containerd(&self) -> bool {
        self.header("user-agent")
            .is_some_and(|ua| ua.starts_with("containerd"))
    }
}

/// A point where requests wait until the test opens it; counts the requests that reached it.
#[derive(Debug)]
pub struct Gate {
    reached: Semaphore,
    open: Semaphore,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            reached: Semaphore::new(0),
            open: Semaphore::new(0),
        })
    }

    /// Waits (at most `limit`) until a request has reached the gate.
    pub async fn reached(&self, limit: Duration) -> bool {
        match tokio::time::timeout(limit, self.reached.acquire()).await {
            Ok(Ok(p)) => {
                p.forget();
                true
            }
            _ => false,
        }
    }

    /// Lets every held request (and every later one) through.
    pub fn open(&self) {
        self.open.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    async fn pass(&self) {
        self.reached.add_permits(1);
        if let Ok(p) = self.open.acquire().await {
            p.forget();
        }
    }
}

/// What the front does with a request.
pub enum Action {
    /// Forward to the backend at this path (and query).
    Forward(String),
    /// Answer with this status, headers and body.
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Wait at the gate, then forward to this path.
    Hold(Arc<Gate>, String),
}

impl Action {
    pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Action {
        Action::Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Req) -> Action + Send + Sync>;

/// The server; stops when dropped.
pub struct Front {
    pub addr: String,
    recorded: Arc<Mutex<Vec<Req>>>,
    handler: Arc<Mutex<Handler>>,
    task: JoinHandle<()>,
}

impl Front {
    /// Starts on 127.0.0.1 (a free port). `backend` ("host:port") receives forwarded requests.
    pub async fn start(
        backend: Option<&str>,
        handler: impl Fn(&Req) -> Action + Send + Sync + 'static,
    ) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let addr = listener.local_addr().unwrap().to_string();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Arc::new(handler)));
        let backend = backend.map(str::to_string);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let (rec, h) = (recorded.clone(), handler.clone());
        let task = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let (rec, h, backend, client) =
                    (rec.clone(), h.clone(), backend.clone(), client.clone());
                tokio::spawn(async move {
                    let _ = serve(io, rec, h, backend, client).await;
                });
            }
        });
        Front {
            addr,
            recorded,
            handler,
            task,
        }
    }

    /// Replaces what the front does from now on.
    pub fn set(&self, handler: impl Fn(&Req) -> Action + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Req> {
        self.recorded.lock().unwrap().clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards everything unchanged.
pub fn pass(r: &Req) -> Action {
    Action::Forward(r.path.clone())
}

async fn serve(
    mut io: TcpStream,
    rec: Arc<Mutex<Vec<Req>>>,
    handler: Arc<Mutex<Handler>>,
    backend: Option<String>,
    client: reqwest::Client,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let req = Req {
        method,
        path,
        headers,
    };
    let want: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < want {
        let mut chunk = vec![0u8; want - body.len()];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    rec.lock().unwrap().push(req.clone());
    let action = {
        let h = handler.lock().unwrap().clone();
        h(&req)
    };
    let (status, headers, body) = match action {
        Action::Reply {
            status,
            headers,
            body,
        } => (status, headers, body),
        Action::Forward(path) => forward(&client, backend.as_deref(), &req, &path, body).await,
        Action::Hold(gate, path) => {
            gate.pass().await;
            forward(&client, backend.as_deref(), &req, &path, body).await
        }
    };
    let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    let mut has_length = false;
    for (k, v) in &headers {
        has_length |= k.eq_ignore_ascii_case("content-length");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    io.write_all(out.as_bytes()).await?;
    if req.method != "HEAD" {
        io.write_all(&body).await?;
    }
    io.shutdown().await
}

async fn forward(
    client: &reqwest::Client,
    backend: Option<&str>,
    req: &Req,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let Some(backend) = backend else {
        return (502, Vec::new(), b"no backend".to_vec());
    };
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
    let mut r = client.request(method, format!("http://{backend}{path}"));
    for (k, v) in &req.headers {
        if !["host", "connection", "content-length", "transfer-encoding"]
            .contains(&k.to_ascii_lowercase().as_str())
        {
            r = r.header(k, v);
        }
    }
    let resp = match r.body(body).send().await {
        Ok(r) => r,
        Err(e) => return (502, Vec::new(), e.to_string().into_bytes()),
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k != "transfer-encoding"
                && k != "connection"
                && (k != "content-length" || req.method == "HEAD")
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, headers, body)
}

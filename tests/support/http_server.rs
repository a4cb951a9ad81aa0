//! A tiny HTTP/1.1 server for tests, on 127.0.0.1 and a random port. Each connection serves
//! one request (answers carry `Connection: close`), so faults can be injected per request:
//! a normal answer, a body cut short, a connection reset, or a stall.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as sent (path and query, or an absolute URL through a proxy).
    pub target: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to send back.
pub enum Reply {
    /// A complete answer; `Content-Length` and `Connection: close` are added.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Headers promising `declared` bytes, then only `body`, then close.
    Truncated {
        status: u16,
        headers: Vec<(String, String)>,
        declared: usize,
        body: Vec<u8>,
    },
    /// Headers promising `declared` bytes, then `body`, then nothing for `stall` (the
    /// connection open), then close: a connection stuck mid-body.
    StalledBody {
        status: u16,
        headers: Vec<(String, String)>,
        declared: usize,
        body: Vec<u8>,
        stall: Duration,
    },
    /// Close the connection with a TCP reset, without answering.
    Reset,
    /// Answer nothing for that long, then close.
    Stall(Duration),
}

impl Reply {
    /// A complete answer with extra headers.
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        Reply::Full {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    /// A status with an empty body.
    pub fn status(status: u16) -> Self {
        Self::new(status, &[], Vec::new())
    }

    /// The same answer with `f` applied to the body of a complete one (how tests damage the
    /// bytes a handler serves); any other answer is returned as is.
    pub fn map_body(self, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Self {
        match self {
            Reply::Full {
                status,
                headers,
                body,
            } => Reply::Full {
                status,
                headers,
                body: f(body),
            },
            other => other,
        }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running server; stops when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Starts a server answering every request with `handler`.
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let task = tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (log, handler) = (Arc::clone(&log), Arc::clone(&handler));
                    tokio::spawn(async move {
                        let _ = serve(stream, log, handler).await;
                    });
                }
            }
        });
        Self { addr, log, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().clone()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.log.lock().clear();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<Request>>>,
    handler: Arc<Handler>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let req = Request {
        method,
        target,
        headers,
        body,
    };
    log.lock().push(req.clone());
    match handler(&req) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            stream
                .write_all(&head_bytes(status, &headers, body.len()))
                .await?;
            stream.write_all(&body).await?;
        }
        Reply::Truncated {
            status,
            headers,
            declared,
            body,
        } => {
            stream
                .write_all(&head_bytes(status, &headers, declared))
                .await?;
            stream.write_all(&body).await?;
        }
        Reply::StalledBody {
            status,
            headers,
            declared,
            body,
            stall,
        } => {
            stream
                .write_all(&head_bytes(status, &headers, declared))
                .await?;
            stream.write_all(&body).await?;
            stream.flush().await?;
            tokio::time::sleep(stall).await;
        }
        Reply::Reset => {
            #[allow(deprecated)]
            stream.set_linger(Some(Duration::ZERO))?;
        }
        Reply::Stall(d) => tokio::time::sleep(d).await,
    }
    stream.flush().await?;
    Ok(())
}

fn head_bytes(status: u16, headers: &[(String, String)], len: usize) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Answers a GET for `blob` honouring a single `Range: bytes=a-b` (206), or the whole blob
/// (200) when there is none; an unsatisfiable range gets 416.
pub fn serve_range(req: &Request, blob: &[u8]) -> Reply {
    let Some(range) = req.header("range") else {
        return Reply::new(200, &[], blob.to_vec());
    };
    let parsed = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match parsed {
        Some((a, b)) if a <= b && a < blob.len() => {
            let b = b.min(blob.len() - 1);
            let cr = format!("bytes {a}-{b}/{}", blob.len());
            Reply::new(206, &[("Content-Range", &cr)], blob[a..=b].to_vec())
        }
        _ => Reply::status(416),
    }
}

/// A deterministic pseudo-random blob.
pub fn make_blob(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A server that answers every GET with `blob`, honouring Range.
pub async fn blob_server(blob: &std::sync::Arc<Vec<u8>>) -> TestServer {
    let blob = std::sync::Arc::clone(blob);
    TestServer::start(move |req| serve_range(req, &blob)).await
}

/// The `(first, last)` byte ranges `server` was asked for, sorted, without the size probes
/// (`bytes=0-0`) the registry client sends when it opens a blob.
pub fn ranges_served(server: &TestServer) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = server
        .requests()
        .iter()
        .filter_map(|r| {
            let (a, b) = r.header("range")?.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .filter(|&(a, b)| (a, b) != (0, 0))
        .collect();
    ranges.sort_unstable();
    ranges
}

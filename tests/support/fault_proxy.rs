//! A loopback HTTP/1.1 reverse proxy that sits between our registry client and a real server
//! (an in-test server or a docker registry) and misbehaves on demand: connection resets, error
//! statuses, stalls, truncated bodies, flipped bytes, a Range header dropped so the server
//! answers 200 with the whole blob. It can also add latency per request and cap bandwidth,
//! to emulate a distant registry (benches/cold_start uses it that way).
//!
//! Each client connection carries one request (we answer `Connection: close`), and the fault
//! is chosen per request by a policy closure from its sequence number and request head.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    Pass,
    /// Close the client connection with a TCP reset, sending nothing.
    Reset,
    /// Answer this status with an empty body, without asking the server.
    Status(u16),
    /// Send nothing for this long, then close.
    Stall(Duration),
    /// Forward the answer's head, then only half of the body it announces, then close.
    Truncate,
    /// Forward the answer with the body byte at this position (modulo its length) flipped.
    Flip(u64),
    /// Drop the `Range` header, so the server answers 200 with the whole blob.
    IgnoreRange,
}

/// Link emulation applied to every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// Added before each request is forwarded (a round trip to a distant registry).
    pub latency: Duration,
    /// Bandwidth of the link shared by all connections, bytes per second (`None` = unlimited).
    pub bytes_per_sec: Option<u64>,
}

/// How far the bandwidth cap lets the link run ahead after idling (see `Shared::pace`).
const SLACK: Duration = Duration::from_millis(20);

type Policy = dyn Fn(u64, &str) -> Fault + Send + Sync;

struct Shared {
    upstream: SocketAddr,
    link: Link,
    policy: Box<Policy>,
    requests: AtomicU64,
    body_bytes: AtomicU64,
    faults: AtomicU64,
    /// When the emulated link is free again (bandwidth cap).
    link_free: Mutex<Instant>,
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 forwarding to `upstream`; `policy(n, head)` picks the fault
    /// for request number `n` (from 0) whose request head is `head`.
    pub async fn start(
        upstream: SocketAddr,
        link: Link,
        policy: impl Fn(u64, &str) -> Fault + Send + Sync + 'static,
    ) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), upstream, link, policy).await
    }

    /// [`FaultProxy::start`] listening on `listen` (a loopback address, or one in a network
    /// namespace of the test's own).
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        link: Link,
        policy: impl Fn(u64, &str) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            upstream,
            link,
            policy: Box::new(policy),
            requests: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            link_free: Mutex::new(Instant::now()),
        });
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let _ = handle(stream, shared).await;
                    });
                }
            }
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Response body bytes forwarded to clients so far.
    pub fn body_bytes(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }

    /// Requests that got a fault other than [`Fault::Pass`].
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until the end of an HTTP head; returns (head, bytes read past it).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with `Connection` (and optionally `Range`) removed and `Connection: close` added.
fn rewrite_head(head: &str, drop_range: bool) -> String {
    let mut lines = head.trim_end().split("\r\n");
    let mut out = format!("{}\r\n", lines.next().unwrap_or(""));
    for line in lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name == "connection" || name == "keep-alive" || (drop_range && name == "range") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn content_length(head: &str) -> Option<u64> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

impl Shared {
    /// Waits until the emulated link has carried `n` more bytes.
    async fn pace(&self, n: usize) {
        let Some(rate) = self.link.bytes_per_sec else {
            return;
        };
        let now = Instant::now();
        let until = {
            let mut free = self.link_free.lock();
            // Credit of up to 20 ms for an idle or overslept link: timers wake late by up to
            // a millisecond, which would otherwise cap the rate well below the setting.
            let start = (*free).max(now.checked_sub(SLACK).unwrap_or(now));
            *free = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *free
        };
        if until > now {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

async fn handle(mut client: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let Some((head, _)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    let fault = (shared.policy)(n, &head);
    if fault != Fault::Pass {
        shared.faults.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(shared.link.latency).await;
    match fault {
        Fault::Reset => {
            #[allow(deprecated)]
            client.set_linger(Some(Duration::ZERO))?;
            return Ok(());
        }
        Fault::Status(code) => {
            let answer = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            client.write_all(answer.as_bytes()).await?;
            return Ok(());
        }
        Fault::Stall(d) => {
            tokio::time::sleep(d).await;
            return Ok(());
        }
        _ => {}
    }
    let mut server = TcpStream::connect(shared.upstream).await?;
    server
        .write_all(rewrite_head(&head, fault == Fault::IgnoreRange).as_bytes())
        .await?;
    let Some((answer, mut body)) = read_head(&mut server).await? else {
        return Ok(());
    };
    let declared = content_length(&answer);
    client
        .write_all(rewrite_head(&answer, false).as_bytes())
        .await?;
    let limit = match (fault, declared) {
        (Fault::Truncate, Some(len)) => len / 2,
        (Fault::Truncate, None) => 0,
        _ => u64::MAX,
    };
    let flip_at = match (fault, declared) {
        (Fault::Flip(at), Some(len)) if len > 0 => Some(at % len),
        _ => None,
    };
    let mut sent = 0u64;
    loop {
        if body.is_empty() {
            let mut chunk = vec![0u8; 64 * 1024];
            let got = server.read(&mut chunk).await?;
            if got == 0 {
                break;
            }
            chunk.truncate(got);
            body = chunk;
        }
        let room = usize::try_from(limit - sent).unwrap_or(usize::MAX);
        body.truncate(body.len().min(room));
        if let Some(at) = flip_at {
            if (sent..sent + body.len() as u64).contains(&at) {
                body[(at - sent) as usize] ^= 0x01;
            }
        }
        shared.pace(body.len()).await;
        client.write_all(&body).await?;
        sent += body.len() as u64;
        shared
            .body_bytes
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        body.clear();
        if sent >= limit {
            break;
        }
    }
    client.flush().await?;
    Ok(())
}

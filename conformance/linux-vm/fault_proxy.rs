//! The fault proxy of the tests (`tests/support/fault_proxy.rs`) as a program, for the Linux VM
//! suite: it forwards HTTP between the guest's target and a registry on the host, and blacks
//! the registry out when asked, so the guest decides when an outage starts.
//!
//! `fault_proxy --listen ADDR:PORT --upstream ADDR:PORT`. `GET /__fault/blackout/SECS` is
//! answered (200) by the proxy itself: for SECS seconds from then every request is refused
//! (its connection reset, as by a registry that went down), then traffic passes again. The
//! proxy logs to standard error when a blackout starts and ends, and every 5 s a line
//! `fault_proxy: requests N refused M` (M counts requests refused by blackouts).
//!
//! `--latency-ms N` delays every request by N ms before it is forwarded (a distant registry;
//! the trace step of the container case starts an image through such a proxy).
//!
//! `fault_proxy --tcp --listen ADDR:PORT --upstream ADDR:PORT` forwards raw TCP instead (one
//! upstream connection per client connection; the multipath case puts it in front of one
//! iSCSI portal). SIGUSR1 cuts the link as an outage of the network would: every connection
//! stops passing bytes either way, with no FIN and no reset, and connections accepted during
//! the cut are held silent too (a login through it times out). SIGUSR2 ends the cut: each
//! connection that saw it is reset on both sides (the network's state for it is lost, and no
//! byte held during the cut reaches the target late), and new connections pass again. It logs
//! each cut and restore, and every 5 s `fault_proxy: connections N open M held H`.
//!
//! Built as a Cargo example (`cargo build --release --example fault_proxy`).

#[path = "../../tests/support/fault_proxy.rs"]
mod fault_proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fault_proxy::{Fault, FaultProxy, Link};
use parking_lot::Mutex;

fn usage() -> ! {
    eprintln!(
        "usage: fault_proxy [--tcp] --listen ADDR:PORT --upstream ADDR:PORT [--latency-ms N]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream, mut tcp) = (None, None, false);
    let mut link = Link::default();
    while let Some(flag) = args.next() {
        if flag == "--tcp" {
            tcp = true;
            continue;
        }
        let Some(value) = args.next() else { usage() };
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>().unwrap_or_else(|_| usage())),
            "--upstream" => {
                upstream = Some(value.parse::<SocketAddr>().unwrap_or_else(|_| usage()))
            }
            "--latency-ms" => {
                link.latency = Duration::from_millis(value.parse().unwrap_or_else(|_| usage()))
            }
            _ => usage(),
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        usage()
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if tcp {
        runtime.block_on(tcp_link::serve(listen, upstream));
    } else {
        runtime.block_on(serve(listen, upstream, link));
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr, link: Link) {
    let until: Arc<Mutex<Option<Instant>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let proxy = FaultProxy::start_on(listen, upstream, link, {
        let (until, refused) = (Arc::clone(&until), Arc::clone(&refused));
        move |_, head| {
            let path = head.split_whitespace().nth(1).unwrap_or("");
            if let Some(secs) = path.strip_prefix("/__fault/blackout/") {
                let secs: u64 = secs.parse().unwrap_or(0);
                *until.lock() = Some(Instant::now() + Duration::from_secs(secs));
                eprintln!("fault_proxy: blackout for {secs} s starts");
                return Fault::Status(200);
            }
            let mut until = until.lock();
            match *until {
                Some(end) if Instant::now() < end => {
                    refused.fetch_add(1, Ordering::SeqCst);
                    Fault::Reset
                }
                Some(_) => {
                    *until = None;
                    eprintln!("fault_proxy: blackout over");
                    Fault::Pass
                }
                None => Fault::Pass,
            }
        }
    })
    .await;
    eprintln!("fault_proxy: {} -> {upstream}", proxy.addr);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!(
            "fault_proxy: requests {} refused {}",
            proxy.requests(),
            refused.load(Ordering::SeqCst)
        );
    }
}

/// The `--tcp` mode: a raw TCP link that SIGUSR1 cuts and SIGUSR2 restores.
mod tcp_link {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::signal::unix::{signal, SignalKind};
    use tokio::sync::watch;

    #[derive(Default)]
    struct Counts {
        connections: AtomicU64,
        open: AtomicU64,
        held: AtomicU64,
    }

    pub async fn serve(listen: SocketAddr, upstream: SocketAddr) {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("fault_proxy: bind {listen}: {e}"));
        // true while the link is cut.
        let (cut_tx, cut_rx) = watch::channel(false);
        let counts = Arc::new(Counts::default());
        let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
        let mut usr2 = signal(SignalKind::user_defined2()).expect("SIGUSR2 handler");
        let mut report = tokio::time::interval(Duration::from_secs(5));
        report.tick().await;
        eprintln!("fault_proxy: tcp {listen} -> {upstream}");
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((client, peer)) = accepted else { continue };
                    counts.connections.fetch_add(1, Ordering::SeqCst);
                    counts.open.fetch_add(1, Ordering::SeqCst);
                    let (cut, counts) = (cut_rx.clone(), Arc::clone(&counts));
                    tokio::spawn(async move {
                        let how = link(client, upstream, cut, &counts).await;
                        counts.open.fetch_sub(1, Ordering::SeqCst);
                        eprintln!("fault_proxy: connection from {peer} ended: {how}");
                    });
                }
                _ = usr1.recv() => {
                    cut_tx.send_replace(true);
                    eprintln!(
                        "fault_proxy: cut: {} open connections held silent",
                        counts.open.load(Ordering::SeqCst)
                    );
                }
                _ = usr2.recv() => {
                    cut_tx.send_replace(false);
                    eprintln!(
                        "fault_proxy: restored: {} held connections reset, new ones pass",
                        counts.held.load(Ordering::SeqCst)
                    );
                }
                _ = report.tick() => eprintln!(
                    "fault_proxy: connections {} open {} held {}",
                    counts.connections.load(Ordering::SeqCst),
                    counts.open.load(Ordering::SeqCst),
                    counts.held.load(Ordering::SeqCst)
                ),
            }
        }
    }

    /// Forwards one connection until either side closes both ways, or a cut: then holds both
    /// sockets without reading or writing until the cut ends, and resets them. Says how it ended.
    async fn link(
        mut client: TcpStream,
        upstream: SocketAddr,
        mut cut: watch::Receiver<bool>,
        counts: &Counts,
    ) -> String {
        let server = if *cut.borrow_and_update() {
            None
        } else {
            tokio::select! {
                s = TcpStream::connect(upstream) => match s {
                    Ok(s) => Some(s),
                    Err(e) => return format!("upstream {upstream}: {e}"),
                },
                _ = cut.wait_for(|c| *c) => None,
            }
        };
        let mut server = match server {
            Some(s) => s,
            None => return hold(client, None, &mut cut, counts).await,
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (mut to_server, mut to_client) = (vec![0u8; 256 << 10], vec![0u8; 256 << 10]);
        let (mut client_eof, mut server_eof) = (false, false);
        while !(client_eof && server_eof) {
            let step = tokio::select! {
                _ = cut.wait_for(|c| *c) => Step::Cut,
                r = client.read(&mut to_server), if !client_eof => Step::FromClient(r),
                r = server.read(&mut to_client), if !server_eof => Step::FromServer(r),
            };
            // What was read is written before the next read; a cut cancels the write too.
            let written = match step {
                Step::Cut => return hold(client, Some(server), &mut cut, counts).await,
                Step::FromClient(Ok(0)) => {
                    client_eof = true;
                    server.shutdown().await.map(|_| true)
                }
                Step::FromServer(Ok(0)) => {
                    server_eof = true;
                    client.shutdown().await.map(|_| true)
                }
                Step::FromClient(Ok(n)) => tokio::select! {
                    w = server.write_all(&to_server[..n]) => w.map(|_| true),
                    _ = cut.wait_for(|c| *c) => Ok(false),
                },
                Step::FromServer(Ok(n)) => tokio::select! {
                    w = client.write_all(&to_client[..n]) => w.map(|_| true),
                    _ = cut.wait_for(|c| *c) => Ok(false),
                },
                Step::FromClient(Err(e)) | Step::FromServer(Err(e)) => Err(e),
            };
            match written {
                Ok(true) => {}
                Ok(false) => return hold(client, Some(server), &mut cut, counts).await,
                Err(e) => return e.to_string(),
            }
        }
        "closed".to_string()
    }

    enum Step {
        Cut,
        FromClient(std::io::Result<usize>),
        FromServer(std::io::Result<usize>),
    }

    /// Holds the sockets silent until the cut ends, then resets them.
    async fn hold(
        client: TcpStream,
        server: Option<TcpStream>,
        cut: &mut watch::Receiver<bool>,
        counts: &Counts,
    ) -> String {
        counts.held.fetch_add(1, Ordering::SeqCst);
        let _ = cut.wait_for(|c| !*c).await;
        counts.held.fetch_sub(1, Ordering::SeqCst);
        for s in std::iter::once(&client).chain(server.as_ref()) {
            let _ = s.set_zero_linger();
        }
        drop((client, server));
        "held during the cut, reset when it ended".to_string()
    }
}

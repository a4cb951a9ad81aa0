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
    eprintln!("usage: fault_proxy --listen ADDR:PORT --upstream ADDR:PORT");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream) = (None, None);
    while let Some(flag) = args.next() {
        let value: Option<SocketAddr> = args.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--listen", Some(v)) => listen = Some(v),
            ("--upstream", Some(v)) => upstream = Some(v),
            _ => usage(),
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        usage()
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(serve(listen, upstream));
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) {
    let until: Arc<Mutex<Option<Instant>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let proxy = FaultProxy::start_on(listen, upstream, Link::default(), {
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

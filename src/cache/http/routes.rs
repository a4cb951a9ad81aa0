//! Where a blob's bytes come from: an ordered list of routes, the P2P proxy first, then the
//! mirrors, then the registry itself, each read falling over to the next route that works.
//!
//! Design note. A node should take blobs from what its fleet runs (a P2P proxy such as
//! Dragonfly's, a caching mirror) and keep working when that is down. So every read, not only
//! the open, walks the routes:
//! - routes in good health are tried in their configured order, then those out of service
//!   (so a read still has somewhere to go when every route failed lately);
//! - a route that cannot answer (network error, timeout, 5xx, 429) is taken out of service
//!   for a while (`httpConfig.failoverBackoffMs`, doubling with each failure in a row, up to 64
//!   times that), and the read goes on to the next route;
//! - a mirror that lacks the blob or refuses us (404, 401/403) passes the read on without
//!   being taken out: it may hold other blobs, and the registry decides for good;
//! - the first read after the pause is the probe: answered, the route is back in service (and
//!   the log says so), and reads go to it first again.
//!
//! Routes other than the last try once per read (no retries of their own), so a failover
//! costs one failed request; the registry, last, keeps the client's retries. Each route is its
//! own [`HttpBlobSource`], so it resolves its own authorization: credentials are looked up
//! for the route's host and never sent elsewhere, and the P2P proxy is sent the registry's URL
//! with the registry's authorization.
//!
//! The health bookkeeping ([`Health`]) takes the time as an argument and is tested alone.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::HttpBlobSource;
use crate::source::{LayerSource, SourceError, SourceResult, Span};

/// What a route is, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Through the P2P proxy (`p2pConfig`).
    P2p,
    /// A registry mirror (`mirrors`).
    Mirror,
    /// The registry named by the image.
    Origin,
}

/// A route's service state: in service, or out until a time after failures in a row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Health {
    failures: u32,
    out_until: Option<Instant>,
}

/// How many doublings of the base pause a route out of service can reach (64 times).
const MAX_DOUBLINGS: u32 = 6;

impl Health {
    /// Whether the route is out of service at `now`.
    pub fn is_out(&self, now: Instant) -> bool {
        self.out_until.is_some_and(|t| now < t)
    }

    /// Records a failure at `now`: out of service for `base` doubled per earlier failure in a
    /// row (up to 64 × `base`). Returns how long.
    pub fn failed(&mut self, now: Instant, base: Duration) -> Duration {
        let pause = base.saturating_mul(1 << self.failures.min(MAX_DOUBLINGS));
        self.failures = self.failures.saturating_add(1);
        self.out_until = Some(now + pause);
        pause
    }

    /// Records an answer; true when the route had failed before (it is back in service).
    pub fn answered(&mut self) -> bool {
        let was_failing = self.failures > 0;
        *self = Health::default();
        was_failing
    }
}

/// One way to the blob.
pub struct Route {
    kind: RouteKind,
    source: HttpBlobSource,
    health: Mutex<Health>,
}

impl Route {
    /// `source` reached as `kind`.
    pub fn new(kind: RouteKind, source: HttpBlobSource) -> Route {
        Route {
            kind,
            source,
            health: Mutex::default(),
        }
    }
}

/// A blob read through its routes, in order, falling over per read.
pub struct RoutedBlob {
    routes: Vec<Route>,
    size: u64,
    backoff: Duration,
}

impl RoutedBlob {
    /// The blob of `size` bytes behind `routes` (tried in this order; the last one is the
    /// registry and keeps its retries); a failing route is passed over for `backoff` at first.
    pub fn new(routes: Vec<Route>, size: u64, backoff: Duration) -> RoutedBlob {
        let last = routes.len().saturating_sub(1);
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                if i < last {
                    Route {
                        source: r.source.with_retries(0),
                        ..r
                    }
                } else {
                    r
                }
            })
            .collect();
        RoutedBlob {
            routes,
            size,
            backoff,
        }
    }

    /// The order in which a read tries the routes at `now`: in service first, then the rest,
    /// each group in configured order.
    fn order(&self, now: Instant) -> Vec<&Route> {
        let (mut first, rest): (Vec<&Route>, Vec<&Route>) = self
            .routes
            .iter()
            .partition(|r| !r.health.lock().is_out(now));
        first.extend(rest);
        first
    }
}

#[async_trait]
impl LayerSource for RoutedBlob {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        let order = self.order(Instant::now());
        let mut last_error = None;
        for (i, route) in order.iter().enumerate() {
            let is_last = i + 1 == order.len();
            match route.source.read_exact_at(span.offset(), span.len()).await {
                Ok(bytes) => {
                    if route.health.lock().answered() {
                        tracing::info!(route = ?route.kind, blob = %route.source.describe(), "route answers again");
                    }
                    return Ok(bytes);
                }
                Err(e @ SourceError::Unavailable(_)) => {
                    let (pause, first) = {
                        let mut health = route.health.lock();
                        let first = health.failures == 0;
                        (health.failed(Instant::now(), self.backoff), first)
                    };
                    // Once per outage of the route: while the registry is out too, held
                    // commands retry every few seconds, and each would log it again.
                    if first && !is_last {
                        tracing::warn!(
                            route = ?route.kind,
                            blob = %route.source.describe(),
                            error = %e,
                            pause_secs = pause.as_secs_f64(),
                            "route failed; reading from the next one"
                        );
                    }
                    last_error = Some(e);
                }
                Err(e @ (SourceError::NotFound(_) | SourceError::Denied(_)))
                    if route.kind != RouteKind::Origin && !is_last =>
                {
                    tracing::debug!(route = ?route.kind, blob = %route.source.describe(), error = %e, "route cannot serve this blob; reading from the next one");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| SourceError::Unavailable("no route to the blob".into())))
    }

    fn describe(&self) -> String {
        self.routes
            .last()
            .map(|r| r.source.describe())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_double_the_pause_up_to_a_cap_and_an_answer_clears_them() {
        let base = Duration::from_secs(5);
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(!h.is_out(t0));
        assert_eq!(h.failed(t0, base), Duration::from_secs(5));
        assert!(h.is_out(t0 + Duration::from_secs(4)));
        assert!(!h.is_out(t0 + Duration::from_secs(5)), "back for the probe");
        let pauses: Vec<u64> = (0..8).map(|_| h.failed(t0, base).as_secs()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 320, 320]);
        assert!(h.answered(), "it had failed");
        assert!(!h.is_out(t0));
        assert!(!h.answered(), "nothing to report twice");
        assert_eq!(h.failed(t0, base), base, "the count starts again");
    }
}

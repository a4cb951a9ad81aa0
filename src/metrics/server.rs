//! The `--metrics ADDR:PORT` endpoint: plain HTTP/1.1, `GET /metrics` answers the text of
//! [`super::Metrics::render`], anything else 404 or 405. Bounded like the management API: a
//! few connections at once (the rest wait in the kernel's backlog), and a client that sends
//! its headers too slowly is dropped.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// What one client may hold: a connection serves one request (no keep-alive, so an idle
/// scraper cannot keep a slot), must send its headers within `header_timeout`, and is dropped
/// after `connection_timeout` whatever it does (a client that never reads its answer).
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once; scrapers need one each.
    max_connections: usize,
    header_timeout: Duration,
    connection_timeout: Duration,
}

const LIMITS: Limits = Limits {
    max_connections: 16,
    header_timeout: Duration::from_secs(10),
    connection_timeout: Duration::from_secs(30),
};

/// The metrics endpoint, bound and not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr`; the error says which address could not be used.
    pub async fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen for metrics on {addr}: {e}"),
            )
        })?;
        Ok(MetricsServer { listener })
    }

    /// The address bound (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves `server` until `shutdown` is cancelled.
pub async fn serve(server: MetricsServer, shutdown: CancellationToken) {
    serve_with(server, shutdown, LIMITS).await
}

async fn serve_with(server: MetricsServer, shutdown: CancellationToken, limits: Limits) {
    let listener = server.listener;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening (GET /metrics)");
    }
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // The permit first: surplus clients wait in the backlog instead of being accepted.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(stream, permit, shutdown.clone(), limits));
    }
}

async fn serve_connection(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let service =
        hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(answer(&request))
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::time::timeout(limits.connection_timeout, async {
        tokio::select! {
            r = connection.as_mut() => r,
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    });
    let Ok(result) = served.await else {
        tracing::debug!(
            "metrics connection dropped after {:?}",
            limits.connection_timeout
        );
        return;
    };
    if let Err(e) = result {
        tracing::debug!("metrics connection ended: {e}");
    }
}

/// The metrics as an HTTP answer (also the management API's `GET /v1/metrics`): OpenMetrics
/// when the `Accept` header names it (Prometheus does), else Prometheus' text format.
pub(crate) fn metrics_answer(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let metrics = super::global();
    let wants_openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        let text = metrics.render_openmetrics();
        text_answer(StatusCode::OK, super::OPENMETRICS_CONTENT_TYPE, text)
    } else {
        text_answer(StatusCode::OK, super::CONTENT_TYPE, metrics.render())
    }
}

/// The answer to `request`: the metrics, or a plain-text error.
fn answer<B>(request: &Request<B>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => return metrics_answer(request.headers()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_string(),
        ),
    };
    let mut response = text_answer(status, content_type, body);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        let headers = response.headers_mut();
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

fn text_answer(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client that sends nothing holds its slot only until the header timeout; a scraper
    /// waiting behind it is then served, and its connection closes after one answer.
    #[tokio::test]
    async fn a_silent_client_cannot_keep_the_only_slot() {
        let server = MetricsServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            header_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_secs(5),
        };
        let stop = CancellationToken::new();
        let serving = tokio::spawn(serve_with(server, stop.clone(), limits));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let mut scraper = TcpStream::connect(addr).await.unwrap();
        // No `Connection: close`: the server must close after one answer by itself.
        scraper
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), scraper.read_to_string(&mut answer))
            .await
            .expect("answered and closed")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "served before the silent one left"
        );
        // The silent client was dropped: its read sees the end (or a reset).
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        stop.cancel();
        serving.await.unwrap();
    }
}

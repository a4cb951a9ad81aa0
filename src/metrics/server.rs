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

/// Connections served at once; scrapers need one each.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
    let listener = server.listener;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening (GET /metrics)");
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        tokio::spawn(serve_connection(stream, permit, shutdown.clone()));
    }
}

async fn serve_connection(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let service =
        hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(answer(&request))
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
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

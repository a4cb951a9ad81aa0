//! A small client of the management API: one HTTP/1.1 request per connection over the Unix
//! socket, each bounded by a timeout, with error answers turned into their one-line message.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::encode_segment;
use crate::daemon::model::{
    AddLun, AddTarget, CacheReport, CachedLayer, ErrorBody, LunInfo, PublishInfo, PublishRequest,
    SessionInfo, Status, TargetInfo, TraceInfo, WarmReport, WarmRequest,
};

/// How long a request may take by default. Generous because adding a LUN answers only once
/// its backing is open, which for a registry image means fetching its manifest and indexes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The largest answer read; a status of thousands of targets fits many times over, and a
/// wrong peer cannot make the client buffer without end.
const MAX_ANSWER: usize = 64 << 20;

/// Why a request did not succeed. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to.
    #[error("cannot reach the API at {}: {reason}{hint}", .path.display())]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why, in words ("connection refused", "no such socket").
        reason: String,
        /// What to check.
        hint: &'static str,
    },
    /// No complete answer arrived in time.
    #[error("the API at {} did not answer within {} s", .path.display(), .timeout.as_secs_f64())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// The exchange failed or the answer is not what the API sends.
    #[error("bad exchange with the API at {}: {reason}", .path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The API refused the request; the message is the server's.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
}

/// A client of the API at one socket path.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
    max_answer: usize,
}

impl ApiClient {
    /// A client of the API at `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            max_answer: MAX_ANSWER,
        }
    }

    /// The same client reading answers of at most `limit` bytes (a longer one is a
    /// [`ClientError::Protocol`]); for other services than the API that speak over a socket
    /// (overlaybd's `uds` credential service).
    pub(crate) fn with_answer_limit(mut self, limit: usize) -> ApiClient {
        self.max_answer = limit;
        self
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/sessions`.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        self.get("/v1/sessions").await
    }

    /// `GET /v1/targets`.
    pub async fn targets(&self) -> Result<Vec<TargetInfo>, ClientError> {
        self.get("/v1/targets").await
    }

    /// `GET /v1/targets/{name}`.
    pub async fn target(&self, name: &str) -> Result<TargetInfo, ClientError> {
        self.get(&format!("/v1/targets/{}", encode_segment(name)))
            .await
    }

    /// `POST /v1/targets`.
    pub async fn add_target(&self, request: &AddTarget) -> Result<TargetInfo, ClientError> {
        self.post("/v1/targets", request).await
    }

    /// `DELETE /v1/targets/{name}?force=…`.
    pub async fn remove_target(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let path = format!("/v1/targets/{}?force={force}", encode_segment(name));
        self.delete(&path).await
    }

    /// `POST /v1/targets/{name}/luns`.
    pub async fn add_lun(&self, target: &str, request: &AddLun) -> Result<LunInfo, ClientError> {
        let path = format!("/v1/targets/{}/luns", encode_segment(target));
        self.post(&path, request).await
    }

    /// `DELETE /v1/targets/{name}/luns/{n}?force=…`.
    pub async fn remove_lun(&self, target: &str, lun: u64, force: bool) -> Result<(), ClientError> {
        let path = format!(
            "/v1/targets/{}/luns/{lun}?force={force}",
            encode_segment(target)
        );
        self.delete(&path).await
    }

    /// `GET /v1/targets/{name}/luns/{n}/trace`.
    pub async fn trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ClientError> {
        let path = format!("/v1/targets/{}/luns/{lun}/trace", encode_segment(target));
        self.get(&path).await
    }

    /// `POST /v1/targets/{name}/luns/{n}/trace/stop`: answers once the trace is written.
    pub async fn stop_trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ClientError> {
        let path = format!(
            "/v1/targets/{}/luns/{lun}/trace/stop",
            encode_segment(target)
        );
        let answer = self.send(Method::POST, &path, None).await?;
        self.decode(answer.body())
    }

    /// `POST /v1/targets/{name}/luns/{n}/trace/publish`: answers once the image is pushed.
    pub async fn publish_trace(
        &self,
        target: &str,
        lun: u64,
        to: Option<&str>,
    ) -> Result<PublishInfo, ClientError> {
        let path = format!(
            "/v1/targets/{}/luns/{lun}/trace/publish",
            encode_segment(target)
        );
        let request = PublishRequest {
            to: to.map(str::to_string),
        };
        self.post(&path, &request).await
    }

    /// `GET /v1/cache`.
    pub async fn cache(&self) -> Result<CacheReport, ClientError> {
        self.get("/v1/cache").await
    }

    /// `DELETE /v1/cache/layers/{digest}?force=…`, or `DELETE /v1/cache/layers` (every
    /// unpinned layer) without a digest.
    pub async fn purge_cache(
        &self,
        digest: Option<&str>,
        force: bool,
    ) -> Result<Vec<CachedLayer>, ClientError> {
        let path = match digest {
            Some(d) => format!("/v1/cache/layers/{}?force={force}", encode_segment(d)),
            None => "/v1/cache/layers".to_string(),
        };
        let answer = self.send(Method::DELETE, &path, None).await?;
        self.decode(answer.body())
    }

    /// `PUT` (pin) or `DELETE` (unpin) `/v1/cache/pins/{digest}`.
    pub async fn pin_layer(&self, digest: &str, pinned: bool) -> Result<CachedLayer, ClientError> {
        let method = if pinned { Method::PUT } else { Method::DELETE };
        let path = format!("/v1/cache/pins/{}", encode_segment(digest));
        let answer = self.send(method, &path, None).await?;
        self.decode(answer.body())
    }

    /// `POST /v1/cache/warm`; answers when the warm is done, so give the client a timeout
    /// long enough for the image ([`ApiClient::with_timeout`]).
    pub async fn warm(&self, request: &WarmRequest) -> Result<WarmReport, ClientError> {
        self.post("/v1/cache/warm", request).await
    }

    /// A GET whose answer is decoded as `T` (`serde_json::Value` keeps it as the server sent
    /// it, fields this client does not know included).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let answer = self.send(Method::GET, path, None).await?;
        self.decode(answer.body())
    }

    /// A POST of `body` as JSON whose answer is decoded as `T`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| self.protocol(format!("cannot encode the request: {e}")))?;
        let answer = self
            .send(Method::POST, path, Some(Bytes::from(body)))
            .await?;
        self.decode(answer.body())
    }

    /// A DELETE.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, None).await.map(|_| ())
    }

    /// Sends one request and returns a successful answer whole; an error status becomes
    /// [`ClientError::Api`] with the server's message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        let answer = self.exchange(method, path, body).await?;
        if answer.status().is_client_error() || answer.status().is_server_error() {
            return Err(api_error(answer.status(), answer.body()));
        }
        Ok(answer)
    }

    /// Sends one request and returns the answer whatever its status, within the timeout.
    pub(crate) async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange_unbounded(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.socket.clone(),
                timeout: self.timeout,
            })?
    }

    async fn exchange_unbounded(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        // The connection is driven by its own task, aborted when this request ends whichever
        // way (a timeout included), so nothing outlives the call.
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| self.protocol(format!("invalid request {path:?}: {e}")))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, self.max_answer)
            .collect()
            .await
            .map_err(|e| self.protocol(format!("cannot read the answer: {e}")))?
            .to_bytes();
        drop(driver);
        Ok(Response::from_parts(parts, body))
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| self.protocol(format!("unexpected answer: {e}")))
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            reason,
        }
    }

    fn unreachable(&self, e: &io::Error) -> ClientError {
        let (reason, hint) = match e.kind() {
            io::ErrorKind::NotFound => (
                "no such socket".to_string(),
                " (is overlaybd-target running with --api?)",
            ),
            io::ErrorKind::ConnectionRefused => (
                "connection refused".to_string(),
                " (is overlaybd-target running with --api?)",
            ),
            io::ErrorKind::PermissionDenied => (
                "permission denied".to_string(),
                " (only the daemon's user may use it)",
            ),
            _ => (e.to_string(), ""),
        };
        ClientError::Unreachable {
            path: self.socket.clone(),
            reason,
            hint,
        }
    }
}

/// The error of an answer with an error status: the server's [`ErrorBody`] message, or the
/// status itself when the body is not one (hyper's own answers to unparsable requests).
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => format!("the API answered {status}"),
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ApiClient, ClientError};

    #[tokio::test]
    async fn nothing_listening_is_one_line_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let e = ApiClient::new(&path).status().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the API at {}: no such socket (is overlaybd-target running with --api?)",
                path.display()
            )
        );
        // A socket file left by a dead server.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = ApiClient::new(&path).status().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the API at {}: connection refused (is overlaybd-target running with --api?)",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // Bound and listening, so connecting succeeds, but nothing ever accepts.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = ApiClient::new(&path).with_timeout(Duration::from_millis(200));
        let e = client.status().await.unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("the API at {} did not answer within 0.2 s", path.display())
        );
    }

    #[tokio::test]
    async fn a_peer_that_is_not_the_api_is_a_protocol_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await;
        });
        let e = ApiClient::new(&path).status().await.unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "bad exchange with the API at {}: unexpected answer: ",
                path.display()
            )),
            "{e}"
        );
        peer.await.unwrap();
    }
}

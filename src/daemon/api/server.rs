//! The management API server: HTTP/1.1 over a Unix socket, routed by hand (see the table in
//! [`super`]). Resources are bounded whatever clients do: at most
//! [`ApiLimits::max_connections`] connections are served at once (further ones wait in the
//! listen backlog), a client must send its headers within [`ApiLimits::header_read_timeout`]
//! and its body within [`ApiLimits::body_read_timeout`], and a body is at most 64 KiB.
//!
//! # Who may connect
//!
//! The socket file has mode 0600, so only the daemon's user (normally root) can use the API.
//! It is never reachable with looser permissions, not even for an instant: the socket is bound
//! inside a fresh private directory (mode 0700) next to the final path, given mode 0600 there,
//! and only then hard-linked to the final path. This avoids changing the process-wide umask,
//! which would race with files other threads create at the same time, and it works in a parent
//! directory shared with others (such as `/tmp`). The link also fails when the path appeared
//! meanwhile, so two instances starting together cannot both take it.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::encode_segment;
use crate::daemon::control::{ControlError, ControlPlane};
use crate::daemon::model::{AddLun, AddTarget, ErrorBody, PublishRequest, WarmRequest};

/// The largest request body accepted; the biggest real one (an `AddTarget` with a long
/// initiator list) is a few KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// How long shutdown waits for requests in progress (an `add_lun` still opening its backing)
/// before the connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// After a failed `accept` (out of descriptors, typically), the pause before the next one, so
/// that a persistent failure does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one connection may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also how long an idle keep-alive
    /// connection is kept).
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body once its headers arrived.
    pub body_read_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A live server answers on the path.
    #[error("another overlaybd-target is serving the API at {}", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket; it is left alone rather than deleted.
    #[error("{} exists and is not a socket; refusing to replace it{hint}", .path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// A pointer to `--api` when the path was the default.
        hint: &'static str,
    },
    /// A file system or socket operation failed.
    #[error("cannot {action} {}: {source}{hint}", .path.display())]
    Io {
        /// What was being done ("bind the API socket", "create the directory", …).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
        /// A pointer to `--api` when the path was the default.
        hint: &'static str,
    },
}

/// A bound API socket, ready to [`serve`](ApiServer::serve).
#[derive(Debug)]
pub struct ApiServer {
    listener: std::os::unix::net::UnixListener,
    socket: SocketFile,
    limits: ApiLimits,
}

/// The socket file this server created; removed when dropped, but only while the path still
/// names that same file (another instance may have replaced it since).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), "cannot remove the API socket: {e}");
                }
            }
        }
    }
}

/// The private directory a socket is bound in before it gets its final name; removed with
/// whatever is left in it, whichever way binding ends.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl ApiServer {
    /// Binds the API socket at `path` (see the module doc for its permissions). Creates the
    /// parent directory, mode 0700, when missing. An existing socket file is replaced when
    /// nothing listens on it (left over by a crash); when something answers, this fails with
    /// [`ApiError::InUse`]. `explicit` says the operator named the path (`--api PATH`); when
    /// false (the default path) errors suggest choosing another one.
    pub fn bind(path: &Path, explicit: bool) -> Result<ApiServer, ApiError> {
        let hint = if explicit {
            ""
        } else {
            " (the default API socket; choose another with --api PATH)"
        };
        let name = path.file_name().ok_or_else(|| ApiError::Io {
            action: "bind the API socket at",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
            hint,
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_error("create the directory", parent, hint))?;

        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("inspect", path, hint)(e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ApiError::NotASocket {
                    path: path.to_path_buf(),
                    hint,
                })
            }
            Ok(_) => {
                if is_live(path).map_err(io_error("probe the existing socket", path, hint))? {
                    return Err(ApiError::InUse(path.to_path_buf()));
                }
                tracing::info!(path = %path.display(), "replacing a stale API socket");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_error("remove the stale socket", path, hint)(e))
                    }
                    _ => {}
                }
            }
        }

        let private = make_private_dir(parent, name).map_err(io_error(
            "create a directory in",
            parent,
            hint,
        ))?;
        let staged = private.0.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&staged).map_err(io_error(
            "bind the API socket at",
            path,
            hint,
        ))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("set the mode of", path, hint))?;
        listener.set_nonblocking(true).map_err(io_error(
            "configure the API socket at",
            path,
            hint,
        ))?;
        // The staged name and the final one are the same inode; taking it now leaves nothing
        // that can fail between linking and owning the final name.
        let meta = std::fs::symlink_metadata(&staged).map_err(io_error("inspect", path, hint))?;
        std::fs::hard_link(&staged, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                ApiError::InUse(path.to_path_buf())
            } else {
                io_error("bind the API socket at", path, hint)(e)
            }
        })?;
        let socket = SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        drop(private);
        Ok(ApiServer {
            listener,
            socket,
            limits: ApiLimits::default(),
        })
    }

    /// Replaces the default limits.
    pub fn with_limits(mut self, limits: ApiLimits) -> ApiServer {
        self.limits = limits;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Serves the API until `shutdown` is cancelled, then stops accepting, lets requests in
    /// progress finish (a few seconds at most) and removes the socket file if it is still
    /// ours. Never fails once bound: a connection's error ends that connection only.
    pub async fn serve(self, control: Arc<dyn ControlPlane>, shutdown: CancellationToken) {
        let ApiServer {
            listener,
            socket,
            limits,
        } = self;
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(path = %socket.path.display(), "cannot serve the API: {e}");
                return;
            }
        };
        tracing::info!(path = %socket.path.display(), "management API listening");
        let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let mut connections = JoinSet::new();
        loop {
            // Taking the permit before accepting leaves surplus clients in the kernel's
            // backlog (backpressure) instead of accepting sockets we will not serve.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("API accept failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            connections.spawn(serve_connection(
                stream,
                control.clone(),
                shutdown.clone(),
                permit,
                limits,
            ));
        }
        drop(socket);
        drop(listener);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("API requests still running at shutdown were abandoned");
        }
    }
}

/// Wraps an error of `action` on `path` into an [`ApiError::Io`].
fn io_error(
    action: &'static str,
    path: &Path,
    hint: &'static str,
) -> impl FnOnce(io::Error) -> ApiError {
    let path = path.to_path_buf();
    move |source| ApiError::Io {
        action,
        path,
        source,
        hint,
    }
}

/// Whether something accepts connections on the socket at `path`. Non-blocking, so that a
/// live server whose backlog is full (`EAGAIN`) counts as live instead of hanging the probe.
fn is_live(path: &Path) -> io::Result<bool> {
    let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A new directory of mode 0700 in `parent`, with a random name so that neither a concurrent
/// instance nor a leftover of a crash collides with it. The name is short because a socket
/// path must fit in 108 bytes.
fn make_private_dir(parent: &Path, name: &std::ffi::OsStr) -> io::Result<PrivateDir> {
    let mut last = None;
    for _ in 0..8 {
        let mut dir_name = std::ffi::OsString::from(".");
        dir_name.push(name);
        dir_name.push(format!(".{:08x}", rand::random::<u32>()));
        let dir = parent.join(dir_name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(PrivateDir(dir)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Serves one connection until the client closes it, a timeout ends it or shutdown asks it to
/// finish its current request.
async fn serve_connection(
    stream: UnixStream,
    control: Arc<dyn ControlPlane>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
    limits: ApiLimits,
) {
    let stop = shutdown.clone();
    let service = hyper::service::service_fn(move |request| {
        let (control, stop) = (control.clone(), stop.clone());
        async move { Ok::<_, Infallible>(handle(control.as_ref(), request, &limits, &stop).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BODY);
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
        tracing::debug!("API connection ended: {e}");
    }
}

/// The answer to one request.
type Answer = Response<Full<Bytes>>;

/// An error answer before it becomes one: status, message and, for 405, the methods allowed.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    fn into_answer(self) -> Answer {
        // The contract is one line; a control plane's message is not trusted to keep it.
        let message = self.message.replace(['\r', '\n'], " ");
        let mut answer = json_answer(self.status, &ErrorBody { error: message });
        if let Some(allow) = self.allow {
            answer
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        answer
    }
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Failure {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Failure::new(status, e.to_string())
    }
}

/// The resources, by path.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Status,
    Sessions,
    Targets,
    Target(String),
    Luns(String),
    Lun(String, String),
    Trace(String, String),
    TraceStop(String, String),
    TracePublish(String, String),
    Cache,
    CacheLayers,
    CacheLayer(String),
    Pin(String),
    Warm,
}

impl Route {
    /// The route of a path's decoded segments.
    fn of(segments: &[String]) -> Option<Route> {
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let route = match s.as_slice() {
            ["v1", "metrics"] | ["metrics"] => Route::Metrics,
            ["v1", "status"] => Route::Status,
            ["v1", "sessions"] => Route::Sessions,
            ["v1", "targets"] => Route::Targets,
            ["v1", "targets", name] if !name.is_empty() => Route::Target(name.to_string()),
            ["v1", "targets", name, "luns"] if !name.is_empty() => Route::Luns(name.to_string()),
            ["v1", "targets", name, "luns", lun] if !name.is_empty() => {
                Route::Lun(name.to_string(), lun.to_string())
            }
            ["v1", "targets", name, "luns", lun, "trace"] if !name.is_empty() => {
                Route::Trace(name.to_string(), lun.to_string())
            }
            ["v1", "targets", name, "luns", lun, "trace", "stop"] if !name.is_empty() => {
                Route::TraceStop(name.to_string(), lun.to_string())
            }
            ["v1", "targets", name, "luns", lun, "trace", "publish"] if !name.is_empty() => {
                Route::TracePublish(name.to_string(), lun.to_string())
            }
            ["v1", "cache"] => Route::Cache,
            ["v1", "cache", "layers"] => Route::CacheLayers,
            ["v1", "cache", "layers", digest] if !digest.is_empty() => {
                Route::CacheLayer(digest.to_string())
            }
            ["v1", "cache", "pins", digest] if !digest.is_empty() => Route::Pin(digest.to_string()),
            ["v1", "cache", "warm"] => Route::Warm,
            _ => return None,
        };
        Some(route)
    }

    /// The `Allow` header of a 405.
    fn allow(&self) -> &'static str {
        match self {
            Route::Metrics | Route::Status | Route::Sessions => "GET",
            Route::Targets => "GET, POST",
            Route::Target(_) => "GET, DELETE",
            Route::Luns(_) | Route::Warm | Route::TraceStop(..) | Route::TracePublish(..) => "POST",
            Route::Trace(..) => "GET",
            Route::Lun(..) | Route::CacheLayers | Route::CacheLayer(_) => "DELETE",
            Route::Cache => "GET",
            Route::Pin(_) => "PUT, DELETE",
        }
    }
}

/// Answers one request; every failure becomes its JSON error answer.
async fn handle(
    control: &dyn ControlPlane,
    request: Request<Incoming>,
    limits: &ApiLimits,
    shutdown: &CancellationToken,
) -> Answer {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let answer = match route(control, request, limits, shutdown).await {
        Ok(answer) => answer,
        Err(failure) => failure.into_answer(),
    };
    tracing::debug!(%method, %path, status = answer.status().as_u16(), "API request");
    answer
}

/// Resolves and runs one request.
async fn route(
    control: &dyn ControlPlane,
    request: Request<Incoming>,
    limits: &ApiLimits,
    shutdown: &CancellationToken,
) -> Result<Answer, Failure> {
    let (parts, body) = request.into_parts();
    let segments = decode_path(parts.uri.path())?;
    let query = Query::parse(parts.uri.query())?;
    let route = Route::of(&segments).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("no such path: {}", parts.uri.path()),
        )
    })?;
    match (&parts.method, route) {
        (&Method::GET, Route::Metrics) => {
            query.expect(&[])?;
            Ok(crate::metrics::metrics_answer(&parts.headers))
        }
        (&Method::GET, Route::Status) => {
            query.expect(&[])?;
            Ok(json_answer(StatusCode::OK, &control.status()))
        }
        (&Method::GET, Route::Sessions) => {
            query.expect(&[])?;
            Ok(json_answer(StatusCode::OK, &control.sessions()))
        }
        (&Method::GET, Route::Targets) => {
            query.expect(&[])?;
            Ok(json_answer(StatusCode::OK, &control.status().targets))
        }
        (&Method::POST, Route::Targets) => {
            query.expect(&[])?;
            let request: AddTarget = read_json(body, &parts.headers, limits).await?;
            let target = control.add_target(request).await?;
            let location = format!("/v1/targets/{}", encode_segment(&target.name));
            Ok(created(
                json_answer(StatusCode::CREATED, &target),
                &location,
            ))
        }
        (&Method::GET, Route::Target(name)) => {
            query.expect(&[])?;
            Ok(json_answer(StatusCode::OK, &control.target(&name)?))
        }
        (&Method::DELETE, Route::Target(name)) => {
            query.expect(&["force"])?;
            let force = query.flag("force")?;
            control.remove_target(&name, force).await?;
            Ok(no_content())
        }
        (&Method::POST, Route::Luns(name)) => {
            query.expect(&[])?;
            let request: AddLun = read_json(body, &parts.headers, limits).await?;
            let lun = control.add_lun(&name, request).await?;
            let location = format!("/v1/targets/{}/luns/{}", encode_segment(&name), lun.lun);
            Ok(created(json_answer(StatusCode::CREATED, &lun), &location))
        }
        (&Method::DELETE, Route::Lun(name, lun)) => {
            query.expect(&["force"])?;
            let lun = parse_lun(&lun)?;
            let force = query.flag("force")?;
            control.remove_lun(&name, lun, force).await?;
            Ok(no_content())
        }
        (&Method::GET, Route::Trace(name, lun)) => {
            query.expect(&[])?;
            let lun = parse_lun(&lun)?;
            Ok(json_answer(
                StatusCode::OK,
                &control.trace(&name, lun).await?,
            ))
        }
        (&Method::POST, Route::TraceStop(name, lun)) => {
            query.expect(&[])?;
            let lun = parse_lun(&lun)?;
            Ok(json_answer(
                StatusCode::OK,
                &control.stop_trace(&name, lun).await?,
            ))
        }
        (&Method::POST, Route::TracePublish(name, lun)) => {
            query.expect(&[])?;
            let lun = parse_lun(&lun)?;
            let request: PublishRequest = read_json(body, &parts.headers, limits).await?;
            Ok(json_answer(
                StatusCode::OK,
                &control.publish_trace(&name, lun, request.to).await?,
            ))
        }
        (&Method::GET, Route::Cache) => {
            query.expect(&[])?;
            Ok(json_answer(StatusCode::OK, &control.cache().await?))
        }
        (&Method::DELETE, Route::CacheLayers) => {
            query.expect(&[])?;
            let purged = control.purge_cache(None, false).await?;
            Ok(json_answer(StatusCode::OK, &purged))
        }
        (&Method::DELETE, Route::CacheLayer(digest)) => {
            query.expect(&["force"])?;
            let force = query.flag("force")?;
            let purged = control.purge_cache(Some(&digest), force).await?;
            Ok(json_answer(StatusCode::OK, &purged))
        }
        (&Method::PUT, Route::Pin(digest)) => {
            query.expect(&[])?;
            let layer = control.pin_layer(&digest, true).await?;
            Ok(json_answer(StatusCode::OK, &layer))
        }
        (&Method::DELETE, Route::Pin(digest)) => {
            query.expect(&[])?;
            let layer = control.pin_layer(&digest, false).await?;
            Ok(json_answer(StatusCode::OK, &layer))
        }
        (&Method::POST, Route::Warm) => {
            query.expect(&[])?;
            let request: WarmRequest = read_json(body, &parts.headers, limits).await?;
            // A warm may take minutes; the daemon's shutdown ends it (every other request is
            // short, and completes or changes nothing).
            let report = tokio::select! {
                report = control.warm(request) => report?,
                _ = shutdown.cancelled() => return Err(ControlError::Unavailable(
                    "the target is shutting down; the warm was stopped".to_string(),
                ).into()),
            };
            Ok(json_answer(StatusCode::OK, &report))
        }
        (method, route) => Err(Failure {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!(
                "{method} is not allowed on {} (allowed: {})",
                parts.uri.path(),
                route.allow()
            ),
            allow: Some(route.allow()),
        }),
    }
}

/// The path's segments, percent-decoded one by one (so an encoded '/' stays inside its
/// segment).
fn decode_path(path: &str) -> Result<Vec<String>, Failure> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(|segment| {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    Failure::bad_request(format!(
                        "path segment {segment:?} is not UTF-8 once decoded"
                    ))
                })
        })
        .collect()
}

/// A LUN number from the path: decimal digits only.
fn parse_lun(text: &str) -> Result<u64, Failure> {
    let invalid = || {
        Failure::bad_request(format!(
            "LUN number must be a decimal integer, not {text:?}"
        ))
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    text.parse().map_err(|_| invalid())
}

/// The decoded query parameters of a request.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, Failure> {
        let mut pairs = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                let s = s.replace('+', " ");
                percent_encoding::percent_decode_str(&s)
                    .decode_utf8()
                    .map(|d| d.into_owned())
                    .map_err(|_| Failure::bad_request("the query is not UTF-8 once decoded"))
            };
            pairs.push((decode(key)?, decode(value)?));
        }
        Ok(Query(pairs))
    }

    /// Refuses parameters the route does not know, so a misspelt `force` is not ignored.
    fn expect(&self, known: &[&str]) -> Result<(), Failure> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((key, _)) => Err(Failure::bad_request(format!(
                "unknown query parameter {key:?}"
            ))),
            None => Ok(()),
        }
    }

    /// A boolean parameter: absent is false; given, it must be `true` or `false`, once.
    fn flag(&self, name: &str) -> Result<bool, Failure> {
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let value = match (values.next(), values.next()) {
            (None, _) => return Ok(false),
            (Some(v), None) => v,
            (Some(_), Some(_)) => {
                return Err(Failure::bad_request(format!(
                    "query parameter {name:?} is given more than once"
                )))
            }
        };
        match value {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(Failure::bad_request(format!(
                "query parameter {name:?} must be true or false, not {other:?}"
            ))),
        }
    }
}

/// Reads a bounded JSON body into `T`; unknown fields and trailing data are errors, and the
/// message names the field that is wrong.
async fn read_json<T: DeserializeOwned>(
    body: Incoming,
    headers: &HeaderMap,
    limits: &ApiLimits,
) -> Result<T, Failure> {
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        limits.body_read_timeout,
        Limited::new(body, MAX_BODY).collect(),
    )
    .await
    .map_err(|_| {
        Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                limits.body_read_timeout.as_secs_f32()
            ),
        )
    })?
    .map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            too_large()
        } else {
            Failure::bad_request(format!("cannot read the request body: {e}"))
        }
    })?
    .to_bytes();
    let mut de = serde_json::Deserializer::from_slice(&collected);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))?;
    de.end()
        .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))?;
    Ok(value)
}

/// A JSON answer.
fn json_answer<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Answer {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        // Only maps with non-string keys fail to serialize, and the model has none.
        Err(e) => {
            let error = ErrorBody {
                error: format!("cannot encode the answer: {e}"),
            };
            let body = serde_json::to_vec(&error).unwrap_or_default();
            (StatusCode::INTERNAL_SERVER_ERROR, body)
        }
    };
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

/// A 201 answer with the new resource's path in `Location`.
fn created(mut answer: Answer, location: &str) -> Answer {
    if let Ok(value) = HeaderValue::from_str(location) {
        answer.headers_mut().insert(LOCATION, value);
    }
    answer
}

/// A 204 answer.
fn no_content() -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = StatusCode::NO_CONTENT;
    answer
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::time::Duration;

    use bytes::Bytes;
    use hyper::header::{HeaderMap, ALLOW, CONTENT_TYPE, LOCATION};
    use hyper::{Method, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{ApiError, ApiLimits, ApiServer};
    use crate::daemon::api::client::{ApiClient, ClientError};
    use crate::daemon::api::fake::{FakeControl, Running};
    use crate::daemon::model::{
        CacheReport, CachedLayer, ErrorBody, LunInfo, SessionInfo, Status, TargetInfo, WarmReport,
    };

    const IQN: &str = "iqn.2026-11.io.overlaybd:a";
    const IQN_ENCODED: &str = "iqn.2026-11.io.overlaybd%3Aa";

    /// One request, whatever its answer.
    async fn call(
        socket: &Path,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let client = ApiClient::new(socket).with_timeout(Duration::from_secs(10));
        let body = body.map(|b| Bytes::from(b.to_string()));
        let answer = client
            .exchange(method, uri, body)
            .await
            .unwrap_or_else(|e| panic!("{uri}: {e}"));
        let (parts, body) = answer.into_parts();
        (parts.status, parts.headers, body)
    }

    /// The message of an error answer, checking that the body is exactly an `ErrorBody`.
    fn error_of(headers: &HeaderMap, body: &Bytes) -> String {
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        let value: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
        assert_eq!(value.as_object().map(|o| o.len()), Some(1), "{value}");
        let error: ErrorBody = serde_json::from_value(value).expect("ErrorBody");
        assert!(!error.error.contains('\n'));
        error.error
    }

    fn session() -> SessionInfo {
        SessionInfo {
            initiator: "iqn.1994-05.com.redhat:host".into(),
            isid: "23d000000001".into(),
            tsih: 7,
            peer: Some("10.0.0.2:51000".into()),
            target: Some(IQN.into()),
            keys: [("HeaderDigest".to_string(), "CRC32C".to_string())].into(),
        }
    }

    #[tokio::test]
    async fn cache_routes_show_pin_purge_and_warm() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        let a = format!("sha256:{}", "aa".repeat(32));
        let b = format!("sha256:{}", "bb".repeat(32));
        for digest in [&a, &b] {
            let (status, _, body) =
                call(&p, Method::PUT, &format!("/v1/cache/pins/{digest}"), None).await;
            assert_eq!(status, StatusCode::OK);
            let layer: CachedLayer = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (layer.digest.as_str(), layer.pinned),
                (digest.as_str(), true)
            );
        }
        let (status, _, body) =
            call(&p, Method::DELETE, &format!("/v1/cache/pins/{b}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!serde_json::from_slice::<CachedLayer>(&body).unwrap().pinned);

        let (status, _, body) = call(&p, Method::GET, "/v1/cache", None).await;
        assert_eq!(status, StatusCode::OK);
        let report: CacheReport = serde_json::from_slice(&body).unwrap();
        let pins: Vec<_> = report.layers.iter().map(|l| l.pinned).collect();
        assert_eq!(pins, [true, false]);

        // A pinned layer is purged only with force; purging all leaves pinned ones.
        let (status, headers, body) =
            call(&p, Method::DELETE, &format!("/v1/cache/layers/{a}"), None).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(error_of(&headers, &body).contains("pinned"));
        let (status, _, body) = call(&p, Method::DELETE, "/v1/cache/layers", None).await;
        assert_eq!(status, StatusCode::OK);
        let purged: Vec<CachedLayer> = serde_json::from_slice(&body).unwrap();
        assert_eq!(purged.iter().map(|l| &l.digest).collect::<Vec<_>>(), [&b]);
        let uri = format!("/v1/cache/layers/{a}?force=true");
        let (status, _, body) = call(&p, Method::DELETE, &uri, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Vec<CachedLayer>>(&body)
                .unwrap()
                .len(),
            1
        );

        let (status, _, body) = call(
            &p,
            Method::POST,
            "/v1/cache/warm",
            Some(r#"{"image":"registry.local/app:1","pin":true}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let report: WarmReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(report.image, "registry.local/app:1");
        assert!(report.layers[0].pinned);

        // Malformed requests: their status and a message naming the problem.
        for (method, uri, body, want, says) in [
            (
                Method::POST,
                "/v1/cache/warm",
                Some(r#"{"image":"x","fast":1}"#),
                400,
                "fast",
            ),
            (
                Method::POST,
                "/v1/cache/warm",
                Some(r#"{"image":"bad"}"#),
                400,
                "bad",
            ),
            (Method::PUT, "/v1/cache/pins/md5:1", None, 400, "digest"),
            (
                Method::DELETE,
                "/v1/cache/layers/x?force=yes",
                None,
                400,
                "force",
            ),
            (Method::GET, "/v1/cache?all=true", None, 400, "all"),
        ] {
            let (status, headers, answer) = call(&p, method.clone(), uri, body).await;
            assert_eq!(status.as_u16(), want, "{method} {uri}");
            let message = error_of(&headers, &answer);
            assert!(message.contains(says), "{method} {uri}: {message}");
        }
        for (method, uri, allow) in [
            (Method::POST, "/v1/cache", "GET"),
            (Method::GET, "/v1/cache/warm", "POST"),
            (Method::GET, "/v1/cache/pins/sha256:x", "PUT, DELETE"),
            (Method::PUT, "/v1/cache/layers", "DELETE"),
        ] {
            let (status, headers, _) = call(&p, method.clone(), uri, None).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert_eq!(headers[ALLOW], allow, "{method} {uri}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn every_route_answers_with_its_shape() {
        let control = FakeControl {
            sessions: vec![session()],
            ..FakeControl::default()
        };
        let mut server = Running::start(control).await;
        let p = server.path.clone();

        let (status, headers, body) = call(&p, Method::GET, "/v1/status", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        let s: Status = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s.version.as_str(), s.targets.len(), s.sessions),
            ("test", 0, 1)
        );

        let add = format!(
            r#"{{"name":"{IQN}","alias":"web","chap":{{"user":"u","secret":"twelve-chars!"}}}}"#
        );
        let (status, headers, body) = call(&p, Method::POST, "/v1/targets", Some(&add)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers[LOCATION], format!("/v1/targets/{IQN}"));
        let t: TargetInfo = serde_json::from_slice(&body).unwrap();
        assert_eq!(t.name, IQN);
        assert_eq!(t.alias.as_deref(), Some("web"));
        assert_eq!(t.chap_user.as_deref(), Some("u"));
        assert!(!String::from_utf8_lossy(&body).contains("twelve-chars!"));

        let (status, _, body) = call(&p, Method::GET, "/v1/targets", None).await;
        assert_eq!(status, StatusCode::OK);
        let list: Vec<TargetInfo> = serde_json::from_slice(&body).unwrap();
        assert_eq!(list, vec![t.clone()]);

        // Both the raw and the percent-encoded ':' name the same target.
        for uri in [
            format!("/v1/targets/{IQN}"),
            format!("/v1/targets/{IQN_ENCODED}"),
        ] {
            let (status, _, body) = call(&p, Method::GET, &uri, None).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(serde_json::from_slice::<TargetInfo>(&body).unwrap(), t);
        }

        let luns = format!("/v1/targets/{IQN_ENCODED}/luns");
        let (status, headers, body) =
            call(&p, Method::POST, &luns, Some(r#"{"backing":"file:/x"}"#)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers[LOCATION], format!("/v1/targets/{IQN}/luns/0"));
        let lun: LunInfo = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (lun.lun, lun.read_only, lun.backing.as_str()),
            (0, false, "file:/x")
        );
        let (status, _, body) = call(
            &p,
            Method::POST,
            &luns,
            Some(r#"{"backing":"ram:1G","lun":5,"read_only":true}"#),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let lun: LunInfo = serde_json::from_slice(&body).unwrap();
        assert_eq!((lun.lun, lun.read_only), (5, true));

        let (status, _, body) = call(&p, Method::GET, "/v1/sessions", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Vec<SessionInfo>>(&body).unwrap(),
            vec![session()]
        );

        let (status, _, body) =
            call(&p, Method::DELETE, &format!("{luns}/5?force=true"), None).await;
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        let (status, _, _) = call(&p, Method::DELETE, &format!("{luns}/0"), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, _) = call(
            &p,
            Method::DELETE,
            &format!("/v1/targets/{IQN}?force=false"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let removed = server.control.removed.lock().unwrap().clone();
        assert_eq!(
            removed,
            vec![
                (IQN.to_string(), Some(5), true),
                (IQN.to_string(), Some(0), false),
                (IQN.to_string(), None, false),
            ]
        );

        let (status, headers, body) =
            call(&p, Method::GET, &format!("/v1/targets/{IQN}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(error_of(&headers, &body), format!("no target {IQN}"));
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_text_format_a_scraper_asks_for() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        crate::metrics::global().registry_retry("api-metrics.example");
        let series = "overlaybd_target_registry_retries_total{host=\"api-metrics.example\"}";
        for path in ["/v1/metrics", "/metrics"] {
            let (status, headers, body) = call(&p, Method::GET, path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(
                headers[CONTENT_TYPE],
                crate::metrics::CONTENT_TYPE,
                "{path}"
            );
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(
                text.lines().any(|l| l.starts_with(series)),
                "{path}: {text}"
            );
            assert!(!text.contains("# EOF"), "{path}");
        }
        let (status, headers, _) = call(&p, Method::POST, "/v1/metrics", Some("{}")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[ALLOW], "GET");
        server.stop().await;
    }

    #[tokio::test]
    async fn malformed_requests_are_400_naming_the_problem() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        let cases: &[(&str, &str)] = &[
            (r#"{"name": "#, "EOF while parsing"),
            (r#"{"name":"x","bogus":1}"#, "unknown field `bogus`"),
            (
                r#"{"name":5}"#,
                "name: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"name":"x","chap":{"user":"u"}}"#,
                "chap: missing field `secret`",
            ),
            (r#"{"name":"x"} {}"#, "trailing characters"),
            ("", "EOF while parsing"),
        ];
        for (body, expected) in cases {
            let (status, headers, answer) = call(&p, Method::POST, "/v1/targets", Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            let error = error_of(&headers, &answer);
            assert!(error.starts_with("invalid request body: "), "{error}");
            assert!(error.contains(expected), "{body}: {error}");
        }
        assert!(server.control.targets.lock().unwrap().is_empty());

        call(&p, Method::POST, "/v1/targets", Some(r#"{"name":"t"}"#)).await;
        for lun in ["abc", "-1", "+1", "1.0", "99999999999999999999999"] {
            let uri = format!("/v1/targets/t/luns/{lun}");
            let (status, headers, body) = call(&p, Method::DELETE, &uri, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{lun}");
            assert_eq!(
                error_of(&headers, &body),
                format!("LUN number must be a decimal integer, not {lun:?}")
            );
        }
        let queries = [
            (
                "force=yes",
                "query parameter \"force\" must be true or false, not \"yes\"",
            ),
            (
                "force",
                "query parameter \"force\" must be true or false, not \"\"",
            ),
            (
                "force=true&force=false",
                "query parameter \"force\" is given more than once",
            ),
            ("forse=true", "unknown query parameter \"forse\""),
        ];
        for (query, expected) in queries {
            let (status, headers, body) =
                call(&p, Method::DELETE, &format!("/v1/targets/t?{query}"), None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(error_of(&headers, &body), expected);
        }
        let (status, headers, body) = call(&p, Method::GET, "/v1/status?verbose=1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            error_of(&headers, &body),
            "unknown query parameter \"verbose\""
        );
        let (status, _, _) = call(&p, Method::GET, "/v1/targets/%FF", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Nothing was removed by any of them.
        assert!(server.control.targets.lock().unwrap().contains_key("t"));
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        for uri in [
            "/",
            "/v1",
            "/v2/status",
            "/v1/nothing",
            "/v1/targets/t/luns/0/x",
            "/v1/targets//luns",
        ] {
            let (status, headers, body) = call(&p, Method::GET, uri, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(error_of(&headers, &body), format!("no such path: {uri}"));
        }
        let cases = [
            (Method::PUT, "/v1/status", "GET"),
            (Method::POST, "/v1/sessions", "GET"),
            (Method::DELETE, "/v1/targets", "GET, POST"),
            (Method::POST, "/v1/targets/t", "GET, DELETE"),
            (Method::GET, "/v1/targets/t/luns", "POST"),
            (Method::GET, "/v1/targets/t/luns/0", "DELETE"),
            (Method::POST, "/v1/targets/t/luns/0/trace", "GET"),
            (Method::GET, "/v1/targets/t/luns/0/trace/stop", "POST"),
            (Method::GET, "/v1/targets/t/luns/0/trace/publish", "POST"),
        ];
        for (method, uri, allow) in cases {
            let (status, headers, body) = call(&p, method.clone(), uri, None).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert_eq!(headers[ALLOW], allow);
            assert_eq!(
                error_of(&headers, &body),
                format!("{method} is not allowed on {uri} (allowed: {allow})")
            );
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn trace_routes_show_and_stop_a_recording() {
        use crate::daemon::model::{AddLun, AddTarget, TraceMode};
        let mut server = Running::start(FakeControl::default()).await;
        let client = ApiClient::new(&server.path).with_timeout(Duration::from_secs(10));
        let target = AddTarget {
            name: IQN.into(),
            alias: None,
            allowed_initiators: vec![],
            chap: None,
            mutual_chap: None,
            allow_target_reset: false,
        };
        client.add_target(&target).await.unwrap();
        let lun = AddLun {
            backing: "ram:1M".into(),
            lun: Some(0),
            read_only: false,
        };
        client.add_lun(IQN, &lun).await.unwrap();
        (server.control.recording.lock().unwrap()).push((IQN.to_string(), 0));
        let info = client.trace(IQN, 0).await.unwrap();
        assert_eq!(info.mode, TraceMode::Recording);
        let stopped = client.stop_trace(IQN, 0).await.unwrap();
        assert_eq!((stopped.mode, stopped.records), (TraceMode::Recorded, 3));
        assert_eq!(client.trace(IQN, 0).await.unwrap().mode, TraceMode::None);
        // Not recording: 409; no such LUN or target: 404; a bad number: 400.
        let status = |e: ClientError| match e {
            ClientError::Api { status, .. } => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(client.stop_trace(IQN, 0).await.unwrap_err()), 409);
        assert_eq!(status(client.stop_trace(IQN, 5).await.unwrap_err()), 404);
        assert_eq!(
            status(client.trace("iqn.x:none", 0).await.unwrap_err()),
            404
        );
        let uri = format!("/v1/targets/{IQN_ENCODED}/luns/x/trace");
        assert_eq!(
            call(&server.path, Method::GET, &uri, None).await.0,
            StatusCode::BAD_REQUEST
        );
        // Publish: the body's `to` reaches the control plane; errors keep their status.
        let published = client.publish_trace(IQN, 0, None).await.unwrap();
        assert_eq!(published.pushed, "reg.example/app:v1");
        let to = client.publish_trace(IQN, 0, Some("reg.example/b:v2")).await;
        assert_eq!(to.unwrap().pushed, "reg.example/b:v2");
        let bad = client.publish_trace(IQN, 0, Some("nope")).await;
        assert_eq!(status(bad.unwrap_err()), 400);
        assert_eq!(
            status(client.publish_trace(IQN, 9, None).await.unwrap_err()),
            404
        );
        let uri = format!("/v1/targets/{IQN_ENCODED}/luns/0/trace/publish");
        let unknown = call(&server.path, Method::POST, &uri, Some(r#"{"too":"x"}"#)).await;
        assert_eq!(
            unknown.0,
            StatusCode::BAD_REQUEST,
            "unknown fields are refused"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn control_errors_keep_their_status_and_message() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        let add = format!(r#"{{"name":"{IQN}"}}"#);
        assert_eq!(
            call(&p, Method::POST, "/v1/targets", Some(&add)).await.0,
            StatusCode::CREATED
        );
        let luns = format!("/v1/targets/{IQN}/luns");
        let cases = [
            (
                Method::POST,
                "/v1/targets".to_string(),
                add.clone(),
                409,
                format!("target {IQN} already exists"),
            ),
            (
                Method::POST,
                "/v1/targets".to_string(),
                r#"{"name":""}"#.to_string(),
                400,
                "the target name is empty".to_string(),
            ),
            (
                Method::POST,
                luns.clone(),
                r#"{"backing":"bad:x"}"#.to_string(),
                422,
                "cannot open bad:x".to_string(),
            ),
            (
                Method::POST,
                "/v1/targets/none/luns".to_string(),
                r#"{"backing":"file:/x"}"#.to_string(),
                404,
                "no target none".to_string(),
            ),
            (
                Method::DELETE,
                format!("{luns}/3"),
                String::new(),
                404,
                format!("no LUN 3 in {IQN}"),
            ),
            (
                Method::DELETE,
                "/v1/targets/none".to_string(),
                String::new(),
                404,
                "no target none".to_string(),
            ),
        ];
        for (method, uri, body, code, message) in cases {
            let body = (!body.is_empty()).then_some(body.as_str());
            let (status, headers, answer) = call(&p, method, &uri, body).await;
            assert_eq!(status.as_u16(), code, "{uri}");
            assert_eq!(error_of(&headers, &answer), message);
        }
        // The typed client turns the same answers into their message.
        let client = ApiClient::new(&p);
        match client.target("none").await {
            Err(ClientError::Api { status, message }) => {
                assert_eq!((status, message.as_str()), (404, "no target none"))
            }
            other => panic!("{other:?}"),
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn bodies_over_64_kib_are_413() {
        let mut server = Running::start(FakeControl::default()).await;
        let p = server.path.clone();
        let huge = format!(r#"{{"name":"{}"}}"#, "a".repeat(70 * 1024));
        // Declared with Content-Length: refused before it is read.
        let (status, headers, body) = call(&p, Method::POST, "/v1/targets", Some(&huge)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            error_of(&headers, &body),
            "the request body is over 65536 bytes"
        );
        // Chunked, so its size shows only while it is read.
        let mut stream = tokio::net::UnixStream::connect(&p).await.unwrap();
        let head = "POST /v1/targets HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut request = head.as_bytes().to_vec();
        for chunk in huge.as_bytes().chunks(8192) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        // The server may stop reading once over the limit; the answer is what matters.
        let _ = stream.write_all(&request).await;
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the connection was left open");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(
            answer.ends_with(r#"{"error":"the request body is over 65536 bytes"}"#),
            "{answer}"
        );
        assert!(server.control.targets.lock().unwrap().is_empty());
        server.stop().await;
    }

    #[tokio::test]
    async fn socket_is_0600_in_a_new_0700_directory_and_removed_at_shutdown() {
        let mut server = Running::start(FakeControl::default()).await;
        let meta = std::fs::symlink_metadata(&server.path).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = server.path.parent().unwrap().to_path_buf();
        assert_eq!(
            std::fs::metadata(&parent).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // The private directory it was bound in is gone.
        let names: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("api.sock")]);
        ApiClient::new(&server.path).status().await.expect("served");
        server.stop().await;
        assert!(!server.path.exists());
    }

    #[tokio::test]
    async fn shutdown_leaves_a_socket_that_is_no_longer_ours() {
        let mut server = Running::start(FakeControl::default()).await;
        std::fs::remove_file(&server.path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&server.path).unwrap();
        let ino = std::fs::symlink_metadata(&server.path).unwrap().ino();
        server.stop().await;
        assert_eq!(std::fs::symlink_metadata(&server.path).unwrap().ino(), ino);
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let first = ApiServer::bind(&path, true).unwrap();
        let ino = std::fs::symlink_metadata(&path).unwrap().ino();
        match ApiServer::bind(&path, true) {
            Err(e @ ApiError::InUse(_)) => assert_eq!(
                e.to_string(),
                format!(
                    "another overlaybd-target is serving the API at {}",
                    path.display()
                )
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino);
        drop(first);
        assert!(
            !path.exists(),
            "a server dropped before serving removes its socket"
        );

        // A socket file nobody listens on (left by a crash) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let stale = std::fs::symlink_metadata(&path).unwrap().ino();
        let server = ApiServer::bind(&path, true).expect("stale socket replaced");
        assert_ne!(std::fs::symlink_metadata(&path).unwrap().ino(), stale);
        drop(server);

        // Anything else is left alone.
        std::fs::write(&path, b"keep me").unwrap();
        let e = ApiServer::bind(&path, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} exists and is not a socket; refusing to replace it \
                 (the default API socket; choose another with --api PATH)",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_header_timeout() {
        let limits = ApiLimits {
            header_read_timeout: Duration::from_millis(200),
            ..ApiLimits::default()
        };
        let mut server = Running::start_with(FakeControl::default(), limits).await;
        let mut stream = tokio::net::UnixStream::connect(&server.path).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "still open: {read:?}"
        );
        server.stop().await;
    }

    /// Sends a GET for the status on a raw connection and reads until its answer is in.
    async fn served_keep_alive(path: &Path) -> tokio::net::UnixStream {
        let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
        stream
            .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("\"version\"") {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        stream
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_is_408() {
        let limits = ApiLimits {
            body_read_timeout: Duration::from_millis(200),
            ..ApiLimits::default()
        };
        let mut server = Running::start_with(FakeControl::default(), limits).await;
        let mut stream = tokio::net::UnixStream::connect(&server.path).await.unwrap();
        let request = "POST /v1/targets HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"na";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(
            answer.ends_with(r#"{"error":"the request body did not arrive within 0.2 s"}"#),
            "{answer}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_promptly() {
        let mut server = Running::start(FakeControl::default()).await;
        let mut held = served_keep_alive(&server.path).await;
        tokio::time::timeout(Duration::from_secs(2), server.stop())
            .await
            .expect("stopped without waiting for the idle connection");
        let mut buf = [0u8; 16];
        assert_eq!(held.read(&mut buf).await.unwrap(), 0);
        assert!(!server.path.exists());
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_one() {
        let limits = ApiLimits {
            max_connections: 1,
            ..ApiLimits::default()
        };
        let mut server = Running::start_with(FakeControl::default(), limits).await;
        // A keep-alive connection that has been served holds the only slot.
        let held = served_keep_alive(&server.path).await;
        let waiting = ApiClient::new(&server.path).with_timeout(Duration::from_millis(300));
        assert!(matches!(
            waiting.status().await,
            Err(ClientError::Timeout { .. })
        ));
        drop(held);
        let client = ApiClient::new(&server.path).with_timeout(Duration::from_secs(5));
        client.status().await.expect("served once the slot is free");
        server.stop().await;
    }
}

//! Metrics in the Prometheus (OpenMetrics) text format, served by `--metrics ADDR:PORT` and by
//! the management API's `GET /metrics`.
//!
//! Design note. The metric names and labels are a contract with operators' dashboards (README
//! "Metrics" lists them, with the mapping to overlaybd's exporter), so they are written once,
//! here, and the layers that count call named methods rather than touching label sets:
//! - One registry per process ([`global`]). The counting happens deep in layers that do not
//!   know each other (the registry client, the cache tiers, the SCSI pipeline, the iSCSI
//!   transport); passing a handle through every constructor would widen a dozen APIs for no
//!   gain, as `tracing` shows for logs.
//! - The hot path is one LUN's commands. Its series are resolved once, when the logical unit
//!   is built ([`LunMetrics`]), so a command costs a few atomic increments and one histogram
//!   observation, never a label-set lookup or an allocation. Series that appear rarely (a sense
//!   key, a registry status) are looked up when they happen.
//! - Label values come from bounded sets (target and LUN names the operator configured, sense
//!   key names, HTTP status codes, registry hosts, layer digests), so a hostile initiator
//!   cannot grow the registry: nothing it sends becomes a label.
//! - Times are measured by the callers that already own a clock (the SCSI pipeline, the HTTP
//!   client); protocol cores stay free of clocks.

mod server;

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub(crate) use server::metrics_answer;
pub use server::{serve, MetricsServer};

/// The content type of [`Metrics::render`]'s text: Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of [`Metrics::render_openmetrics`]'s text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a SCSI command did, for the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// READ(6/10/12/16).
    Read,
    /// WRITE(6/10/12/16), WRITE AND VERIFY, WRITE SAME, COMPARE AND WRITE, ORWRITE.
    Write,
    /// Everything else.
    Other,
}

impl CommandKind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            CommandKind::Read => "read",
            CommandKind::Write => "write",
            CommandKind::Other => "other",
        }
    }
}

/// A cache tier, for the `tier` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The in-memory tier.
    Memory,
    /// The on-disk tier.
    Disk,
}

impl Tier {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LoginLabels {
    target: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LunLabels {
    target: String,
    lun: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommandLabels {
    target: String,
    lun: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SenseLabels {
    target: String,
    lun: String,
    sense_key: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    host: String,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LayerLabels {
    layer: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Command latencies from 50 µs (a page-cache hit) to about 100 s (a read held through a
/// registry outage), doubling.
fn command_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

/// Registry request latencies from 1 ms to about 130 s, doubling.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Every metric of the process. Obtain it with [`global`].
pub struct Metrics {
    registry: Registry,
    sessions: Family<TargetLabels, Gauge>,
    logins: Family<LoginLabels, Counter>,
    commands: Family<CommandLabels, Counter>,
    read_bytes: Family<LunLabels, Counter>,
    write_bytes: Family<LunLabels, Counter>,
    command_duration: Histograms<CommandLabels>,
    check_conditions: Family<SenseLabels, Counter>,
    cache_hits: Family<TierLabels, Counter>,
    cache_misses: Counter,
    cache_bytes: Family<TierLabels, Gauge>,
    registry_requests: Family<RequestLabels, Counter>,
    registry_bytes: Family<HostLabels, Counter>,
    registry_duration: Histograms<HostLabels>,
    registry_retries: Family<HostLabels, Counter>,
    crc_failures: Counter,
    download_ratio: Family<LayerLabels, Gauge<f64, AtomicU64>>,
    held_commands: Gauge,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("overlaybd_target");
        let metrics = Metrics {
            registry: Registry::default(),
            sessions: Family::default(),
            logins: Family::default(),
            commands: Family::default(),
            read_bytes: Family::default(),
            write_bytes: Family::default(),
            command_duration: Family::new_with_constructor(command_histogram),
            check_conditions: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Counter::default(),
            cache_bytes: Family::default(),
            registry_requests: Family::default(),
            registry_bytes: Family::default(),
            registry_duration: Family::new_with_constructor(request_histogram),
            registry_retries: Family::default(),
            crc_failures: Counter::default(),
            download_ratio: Family::default(),
            held_commands: Gauge::default(),
        };
        // Counters are registered without `_total`: the encoder appends it.
        let m = &metrics;
        let r = &mut registry;
        r.register(
            "sessions",
            "iSCSI sessions logged in now",
            m.sessions.clone(),
        );
        r.register(
            "logins",
            "Logins by target and result (success or the login status's name)",
            m.logins.clone(),
        );
        r.register(
            "commands",
            "SCSI commands completed, by kind (read, write, other)",
            m.commands.clone(),
        );
        r.register(
            "read_bytes",
            "Bytes read by initiators (Data-In of successful reads)",
            m.read_bytes.clone(),
        );
        r.register(
            "write_bytes",
            "Bytes written by initiators (successful writes)",
            m.write_bytes.clone(),
        );
        r.register(
            "command_duration_seconds",
            "Time from a complete SCSI command to its status",
            m.command_duration.clone(),
        );
        r.register(
            "check_conditions",
            "Commands answered CHECK CONDITION, by sense key",
            m.check_conditions.clone(),
        );
        r.register(
            "cache_hits",
            "Cache units (or parts, for small reads) served by a tier",
            m.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Cache units in no tier, fetched from the origin",
            m.cache_misses.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes held by a cache tier",
            m.cache_bytes.clone(),
        );
        r.register(
            "registry_requests",
            "Registry HTTP requests, by host and status (a code, or error when no answer came)",
            m.registry_requests.clone(),
        );
        r.register(
            "registry_bytes",
            "Body bytes received from a registry",
            m.registry_bytes.clone(),
        );
        r.register(
            "registry_request_duration_seconds",
            "Time from a registry request to its answer's headers",
            m.registry_duration.clone(),
        );
        r.register(
            "registry_retries",
            "Registry requests sent again after a failure",
            m.registry_retries.clone(),
        );
        r.register(
            "crc_failures",
            "ZFile blocks whose CRC32C did not match",
            m.crc_failures.clone(),
        );
        r.register(
            "download_ratio",
            "Share of a layer held locally by the background download (0 to 1)",
            m.download_ratio.clone(),
        );
        r.register(
            "held_commands",
            "SCSI commands waiting for a registry that cannot serve their bytes now",
            m.held_commands.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Every metric in the OpenMetrics text format ([`OPENMETRICS_CONTENT_TYPE`]), which
    /// Prometheus asks for first.
    pub fn render_openmetrics(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Every metric in Prometheus' text format ([`CONTENT_TYPE`]), which every scraper and
    /// `promtool check metrics` read.
    pub fn render(&self) -> String {
        to_prometheus_text(&self.render_openmetrics())
    }

    /// The series of one logical unit, resolved once for its commands.
    pub fn lun(&self, target: &str, lun: u64) -> LunMetrics {
        let labels = LunLabels {
            target: target.to_string(),
            lun: lun.to_string(),
        };
        let per_kind = |kind: CommandKind| {
            let labels = CommandLabels {
                target: labels.target.clone(),
                lun: labels.lun.clone(),
                kind: kind.label(),
            };
            KindMetrics {
                commands: self.commands.get_or_create_owned(&labels),
                duration: self.command_duration.get_or_create_owned(&labels),
            }
        };
        LunMetrics {
            read: per_kind(CommandKind::Read),
            write: per_kind(CommandKind::Write),
            other: per_kind(CommandKind::Other),
            read_bytes: self.read_bytes.get_or_create_owned(&labels),
            write_bytes: self.write_bytes.get_or_create_owned(&labels),
            labels,
        }
    }

    /// A session of `target` logged in; it counts until the guard is dropped.
    pub fn session(&self, target: &str) -> SessionGauge {
        let gauge = self.sessions.get_or_create_owned(&TargetLabels {
            target: target.to_string(),
        });
        gauge.inc();
        SessionGauge(gauge)
    }

    /// A login to `target` ended with `result` (`"success"` or a login status's name).
    pub fn login(&self, target: &str, result: &'static str) {
        let labels = LoginLabels {
            target: target.to_string(),
            result,
        };
        self.logins.get_or_create(&labels).inc();
    }

    /// A layer read was served by `tier`.
    pub fn cache_hit(&self, tier: Tier) {
        self.cache_hits
            .get_or_create(&TierLabels { tier: tier.label() })
            .inc();
    }

    /// `units` cache units were in no tier and are fetched from the origin.
    pub fn cache_misses(&self, units: u64) {
        self.cache_misses.inc_by(units);
    }

    /// `tier` now holds `bytes`.
    pub fn cache_bytes(&self, tier: Tier, bytes: u64) {
        let gauge = self
            .cache_bytes
            .get_or_create(&TierLabels { tier: tier.label() });
        gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A registry request to `host` was answered with `status` (`None`: no answer came, a
    /// connection error or timeout) after `elapsed`.
    pub fn registry_request(&self, host: &str, status: Option<u16>, elapsed: Duration) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        let labels = RequestLabels {
            host: host.to_string(),
            status,
        };
        self.registry_requests.get_or_create(&labels).inc();
        let host = HostLabels { host: labels.host };
        self.registry_duration
            .get_or_create(&host)
            .observe(elapsed.as_secs_f64());
    }

    /// `bytes` of layer data arrived from `host`.
    pub fn registry_bytes(&self, host: &str, bytes: u64) {
        let host = HostLabels {
            host: host.to_string(),
        };
        self.registry_bytes.get_or_create(&host).inc_by(bytes);
    }

    /// A request to `host` is about to be sent again.
    pub fn registry_retry(&self, host: &str) {
        let host = HostLabels {
            host: host.to_string(),
        };
        self.registry_retries.get_or_create(&host).inc();
    }

    /// `delta` commands started (1) or stopped (-1) waiting for an unavailable registry.
    pub fn held_commands(&self, delta: i64) {
        self.held_commands.inc_by(delta);
    }

    /// A ZFile block failed its CRC32C check.
    pub fn crc_failure(&self) {
        self.crc_failures.inc();
    }

    /// The background download holds `ratio` (0 to 1) of `layer` (its digest or path).
    pub fn download_ratio(&self, layer: &str, ratio: f64) {
        let labels = LayerLabels {
            layer: layer.to_string(),
        };
        self.download_ratio
            .get_or_create(&labels)
            .set(ratio.clamp(0.0, 1.0));
    }
}

/// OpenMetrics text as Prometheus' text format: the two differ only in that OpenMetrics names
/// a counter family without its `_total` suffix in `# HELP`/`# TYPE` (the samples have it),
/// and has `# UNIT` and `# EOF` lines, which the older format lacks.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 12);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match comment {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Counts one logged-in session while it lives.
pub struct SessionGauge(Gauge);

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct KindMetrics {
    commands: Counter,
    duration: Histogram,
}

/// One logical unit's series ([`Metrics::lun`]).
pub struct LunMetrics {
    labels: LunLabels,
    read: KindMetrics,
    write: KindMetrics,
    other: KindMetrics,
    read_bytes: Counter,
    write_bytes: Counter,
}

impl LunMetrics {
    /// A command of `kind` completed in `elapsed`, moving `read` bytes to the initiator or
    /// `written` bytes to the medium; `sense_key` is the sense key's name when it ended in
    /// CHECK CONDITION.
    pub fn command(
        &self,
        kind: CommandKind,
        elapsed: Duration,
        read: u64,
        written: u64,
        sense_key: Option<&'static str>,
    ) {
        let series = match kind {
            CommandKind::Read => &self.read,
            CommandKind::Write => &self.write,
            CommandKind::Other => &self.other,
        };
        series.commands.inc();
        series.duration.observe(elapsed.as_secs_f64());
        if read > 0 {
            self.read_bytes.inc_by(read);
        }
        if written > 0 {
            self.write_bytes.inc_by(written);
        }
        if let Some(sense_key) = sense_key {
            let labels = SenseLabels {
                target: self.labels.target.clone(),
                lun: self.labels.lun.clone(),
                sense_key,
            };
            global().check_conditions.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests;

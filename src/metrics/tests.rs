//! The contract's names and labels, the text conversion, and the per-LUN accounting.

use std::time::Duration;

use super::*;

/// The value of `series` (written exactly, labels in order) in the current text.
fn value(series: &str) -> Option<f64> {
    global().render().lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

#[test]
fn every_contract_name_is_exposed_with_its_type() {
    // Touch the families whose series appear only when something happens.
    let m = global();
    drop(m.session("contract"));
    m.login("contract", "success");
    let _ = m.lun("contract", 0);
    m.cache_hit(Tier::Memory);
    m.cache_misses(0);
    m.cache_bytes(Tier::Disk, 0);
    m.registry_request("contract.example", Some(200), Duration::ZERO);
    m.registry_bytes("contract.example", 0);
    m.registry_retry("contract.example");
    m.download_ratio("sha256:contract", 0.0);
    let text = m.render();
    for (name, kind) in [
        ("sessions", "gauge"),
        ("logins_total", "counter"),
        ("commands_total", "counter"),
        ("read_bytes_total", "counter"),
        ("write_bytes_total", "counter"),
        ("command_duration_seconds", "histogram"),
        ("check_conditions_total", "counter"),
        ("cache_hits_total", "counter"),
        ("cache_misses_total", "counter"),
        ("cache_bytes", "gauge"),
        ("registry_requests_total", "counter"),
        ("registry_bytes_total", "counter"),
        ("registry_request_duration_seconds", "histogram"),
        ("registry_retries_total", "counter"),
        ("crc_failures_total", "counter"),
        ("download_ratio", "gauge"),
    ] {
        let line = format!("# TYPE overlaybd_target_{name} {kind}");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        let help = format!("# HELP overlaybd_target_{name} ");
        assert!(
            text.lines().any(|l| l.starts_with(&help)),
            "no help for {name}"
        );
    }
    assert!(
        !text.contains("# EOF"),
        "Prometheus' text format has no EOF line"
    );
    assert!(m.render_openmetrics().ends_with("# EOF\n"));
}

#[test]
fn openmetrics_counter_families_gain_their_suffix_in_the_text_format() {
    let openmetrics = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\n\
        a_bytes_total{x=\"1\"} 5\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
    assert_eq!(
        to_prometheus_text(openmetrics),
        "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 5\n\
         # HELP g A gauge.\n# TYPE g gauge\ng 2\n"
    );
}

#[test]
fn a_session_counts_while_its_guard_lives() {
    let series = "overlaybd_target_sessions{target=\"guarded\"}";
    let first = global().session("guarded");
    let second = global().session("guarded");
    assert_eq!(value(series), Some(2.0));
    drop(first);
    assert_eq!(value(series), Some(1.0));
    drop(second);
    assert_eq!(value(series), Some(0.0));
}

#[test]
fn a_lun_counts_commands_bytes_latency_and_sense_keys() {
    let lun = global().lun("accounting", 3);
    let series = |name: &str, extra: &str| {
        format!("overlaybd_target_{name}{{target=\"accounting\",lun=\"3\"{extra}}}")
    };
    // Every kind has its series from the start, at zero.
    for kind in ["read", "write", "other"] {
        let commands = series("commands_total", &format!(",kind=\"{kind}\""));
        assert_eq!(value(&commands), Some(0.0), "{kind}");
    }
    lun.command(CommandKind::Read, Duration::from_micros(80), 4096, 0, None);
    lun.command(
        CommandKind::Read,
        Duration::from_millis(3),
        0,
        0,
        Some("medium_error"),
    );
    lun.command(CommandKind::Write, Duration::from_micros(200), 0, 512, None);
    lun.command(
        CommandKind::Other,
        Duration::ZERO,
        0,
        0,
        Some("unit_attention"),
    );
    assert_eq!(
        value(&series("commands_total", ",kind=\"read\"")),
        Some(2.0)
    );
    assert_eq!(
        value(&series("commands_total", ",kind=\"write\"")),
        Some(1.0)
    );
    assert_eq!(
        value(&series("commands_total", ",kind=\"other\"")),
        Some(1.0)
    );
    assert_eq!(value(&series("read_bytes_total", "")), Some(4096.0));
    assert_eq!(value(&series("write_bytes_total", "")), Some(512.0));
    let medium = series("check_conditions_total", ",sense_key=\"medium_error\"");
    assert_eq!(value(&medium), Some(1.0));
    let count = series("command_duration_seconds_count", ",kind=\"read\"");
    assert_eq!(value(&count), Some(2.0));
    // 80 µs falls in the 100 µs bucket (buckets double from 50 µs), 3 ms does not. The
    // encoder writes `le` first.
    let bucket = |le: &str| {
        format!(
            "overlaybd_target_command_duration_seconds_bucket{{le=\"{le}\",target=\"accounting\",lun=\"3\",kind=\"read\"}}"
        )
    };
    assert_eq!(value(&bucket("0.0001")), Some(1.0));
    assert_eq!(value(&bucket("0.0016")), Some(1.0));
    assert_eq!(value(&bucket("0.0032")), Some(2.0));
}

#[test]
fn download_ratio_stays_between_zero_and_one() {
    let series = "overlaybd_target_download_ratio{layer=\"sha256:ratio\"}";
    global().download_ratio("sha256:ratio", 1.7);
    assert_eq!(value(series), Some(1.0));
    global().download_ratio("sha256:ratio", 0.25);
    assert_eq!(value(series), Some(0.25));
}

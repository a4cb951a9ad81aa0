//! The `overlaybd-target` binary: parses the command line (`cli.rs`), starts the daemon
//! ([`overlaybd_target::daemon`]: LUNs, iSCSI portals, management API), serves until SIGINT or
//! SIGTERM, then asks every initiator to log out before exiting. With a subcommand it runs an
//! image tool ([`overlaybd_target::tools`]) instead.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};
use overlaybd_target::daemon::state::DEFAULT_STATE_PATH as DEFAULT_STATE;
use overlaybd_target::daemon::{Daemon, DaemonOptions};

/// Keeps large buffers (1 MiB reads, Data-Out collection) in the heap instead of a fresh
/// mmap per allocation: glibc's defaults mmap and unmap each one, and the page faults of
/// touching new pages cost more than copying the data (seen in `perf` profiles of sequential
/// 1 MiB reads). Freed memory is returned to the system only above `TRIM_THRESHOLD`.
fn tune_allocator() {
    const MMAP_THRESHOLD: libc::c_int = 16 << 20;
    const TRIM_THRESHOLD: libc::c_int = 64 << 20;
    // SAFETY: mallopt only changes allocator settings; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Raises the soft limit on open files to the hard limit: every connection and image layer
/// is a descriptor, and the common soft default of 1024 is far below what a target serving
/// many initiators needs (the hard limit is what the administrator allows).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = old, to = lim.rlim_max, "raised the open-file limit");
            }
        }
    }
}

/// Colour in log lines only for a person at a terminal: not when stderr is a file or a pipe,
/// not under journald (which sets `JOURNAL_STREAM` for the services it collects), and not when
/// `NO_COLOR` is set (no-color.org).
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
        && std::env::var_os("JOURNAL_STREAM").is_none()
        && std::env::var_os("NO_COLOR").is_none()
}

/// Tells systemd (when it started us with `Type=notify`, i.e. `NOTIFY_SOCKET` is set) about
/// the service's state; without systemd this does nothing.
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let mut cli = Cli::parse();
    let filter = match cli::log_filter(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("overlaybd-target: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_logs())
        .with_writer(std::io::stderr)
        .init();
    if let Some(command) = cli.command.take() {
        return match command {
            Command::Tool(tool) => run_tool(tool),
            Command::Ctl(args) => run_ctl(overlaybd_target::daemon::ctl::run(args)),
            Command::Warm(args) => run_ctl(overlaybd_target::daemon::ctl::run_warm(args)),
            Command::Attach(args) => run_host(async move {
                println!("{}", overlaybd_target::host::attach::attach(&args).await?);
                Ok(())
            }),
            Command::Detach(args) => run_host(async move {
                for line in overlaybd_target::host::attach::detach(&args).await? {
                    println!("{line}");
                }
                Ok(())
            }),
        };
    }
    let options = DaemonOptions {
        state: state_path(&cli),
        api: (!cli.no_api).then(|| {
            cli.api
                .clone()
                .unwrap_or_else(|| PathBuf::from(overlaybd_target::daemon::api::DEFAULT_API_SOCKET))
        }),
        api_explicit: cli.api.is_some(),
        metrics: cli.metrics,
    };
    let check_only = cli.check_config;
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("overlaybd-target: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        let luns: usize = config.targets.iter().map(|t| t.luns.len()).sum();
        let portals: Vec<String> = config.portals.iter().map(|p| p.to_string()).collect();
        println!(
            "configuration valid: {} target(s), {luns} LUN(s), portals {}",
            config.targets.len(),
            if portals.is_empty() {
                format!("{} (default)", overlaybd_target::config::DEFAULT_PORTAL)
            } else {
                portals.join(", ")
            }
        );
        return ExitCode::SUCCESS;
    }
    raise_fd_limit();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let daemon = match Daemon::start(config, options).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("overlaybd-target: {e}");
                return ExitCode::FAILURE;
            }
        };
        for addr in daemon.local_addrs() {
            tracing::info!(%addr, "listening");
        }
        // Every portal listens and every LUN is served (ready, or NOT READY while it opens):
        // initiators can log in, so a unit ordered after this service may start.
        let signalled = shutdown_signal();
        reload_on_sighup(daemon.reloader());
        notify_systemd(sd_notify::NotifyState::Ready);
        daemon
            .run(async {
                signalled.await;
                notify_systemd(sd_notify::NotifyState::Stopping);
            })
            .await;
        ExitCode::SUCCESS
    })
}

/// The state file: `--state`, none with `--no-state`, else the default when its folder can be
/// created (a user without rights to it still gets a working target, minus persistence).
fn state_path(cli: &Cli) -> Option<PathBuf> {
    if cli.no_state {
        return None;
    }
    if let Some(path) = &cli.state {
        return Some(path.clone());
    }
    let path = PathBuf::from(DEFAULT_STATE);
    let usable = path
        .parent()
        .is_some_and(|dir| std::fs::create_dir_all(dir).is_ok() && writable(dir));
    if usable {
        Some(path)
    } else {
        tracing::warn!(
            state = DEFAULT_STATE,
            "cannot use the default state file; changes made through the API will not survive a restart (see --state)"
        );
        None
    }
}

/// True when this process may create files in `dir` (tried, since permission bits alone do not
/// tell: read-only mounts, capabilities).
fn writable(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .is_ok();
    if created {
        let _ = std::fs::remove_file(&probe);
    }
    created
}
/// The multi-threaded runtime, or `None` after printing why it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("overlaybd-target: cannot start the runtime: {e}");
            None
        }
    }
}

/// Runs an image tool to completion; errors are printed, never panicked.
fn run_tool(tool: overlaybd_target::tools::Tool) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(tool.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlaybd-target: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one management command against a running target; failures are one line.
fn run_ctl(
    work: impl std::future::Future<Output = Result<(), overlaybd_target::daemon::ctl::CtlError>>,
) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlaybd-target: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `attach` or `detach`; failures are one line.
fn run_host(
    work: impl std::future::Future<Output = Result<(), overlaybd_target::host::HostError>>,
) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlaybd-target: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
/// At each SIGHUP, reads the command line's configuration again (the config file named by
/// `--config`) and applies the difference to the running daemon; a configuration that does not
/// parse is logged and changes nothing. The handler is installed before this returns.
fn reload_on_sighup(reloader: overlaybd_target::daemon::Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; reloading needs a restart");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the configuration again");
            let config = Cli::try_parse()
                .map_err(|e| e.to_string())
                .and_then(|cli| cli.into_config().map_err(|e| e.to_string()));
            match config {
                Ok(config) => {
                    let changes = reloader.reload(&config).await;
                    if changes.is_empty() {
                        tracing::info!("reload: nothing to change");
                    }
                    for change in changes {
                        tracing::info!("reload: {change}");
                    }
                }
                Err(e) => tracing::error!("reload refused, nothing changed: {e}"),
            }
        }
    });
}

/// A future that resolves at SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled, so a signal sent right after readiness is
/// announced is not lost (the default action would end the process without a clean logout).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                // Without signal handlers only Ctrl-C can stop us.
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("signal received");
    }
}

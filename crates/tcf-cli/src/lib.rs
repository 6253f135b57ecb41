//! The `tcf-platform` command line: parses it, loads the config, and either runs the daemon
//! (`up`) or talks to it over its API. The binary (crates/tcf-platform) only calls [`main`]: this
//! crate is built for size, the binary's own crate at full speed (see the release profile).

mod access_cmd;
mod advisories_cmd;
mod audit_cmd;
mod backup_cmd;
mod cli;
mod init_cmd;
mod monitor_cmd;
mod output;
mod tls_cmd;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use cli::{
    Cli, Command, ConfigCommand, DaemonCommand, DeployArgs, Format, LockCommand,
    MaintenanceCommand, ProdCommand, RestartArgs, RollbackArgs, ScaleArgs, StatusArgs,
    ValidateArgs,
};
use http_body_util::BodyExt;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tcf_api::{Client, ClientError};
use tcf_config::{Config, ConfigError};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A failure with its exit code: 1 for operational failures, 2 for usage and config errors.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = if error.downcast_ref::<ConfigError>().is_some() {
            2
        } else {
            1
        };
        Failure { code, error }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

type CmdResult = Result<ExitCode, Failure>;

/// Runs the command line the process was started with; the binary's whole `main`.
pub fn main() -> ExitCode {
    // The daemon runs this binary as each process instance's log shim (no command line).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == tcf_daemon::LOG_SHIM_ARG) {
        return match tcf_daemon::run_log_shim(&args[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: tcf-platform log shim: {e}");
                ExitCode::from(1)
            }
        };
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(f) => {
            // Config errors render their own "error:" lines with file, line and column.
            match f.error.downcast_ref::<ConfigError>() {
                Some(ConfigError::Invalid { rendered, .. }) => eprint!("{rendered}"),
                _ => eprintln!("error: {:#}", f.error),
            }
            ExitCode::from(f.code)
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = tcf_config::locate(cli.config.as_deref())?;
    Ok(tcf_config::load(&path, cli.environment.as_deref())?)
}

/// The daemon's client. A config file that does not validate must not lock the operator out
/// of a running daemon: its socket is then found from the file's `state_dir`/`socket` alone,
/// with a warning (deploys still refuse a broken file: they load it themselves).
fn client(cli: &Cli) -> anyhow::Result<Client> {
    if let Some(remote) = access_cmd::remote(cli)? {
        return Ok(Client::remote(remote));
    }
    if let Some(socket) = &cli.socket {
        return Ok(Client::new(socket));
    }
    let path = tcf_config::locate(cli.config.as_deref())?;
    match tcf_config::load(&path, cli.environment.as_deref()) {
        Ok(config) => Ok(Client::new(config.daemon.socket)),
        Err(tcf_config::ConfigError::Invalid { path, .. }) => {
            let source = std::fs::read_to_string(&path)?;
            let socket =
                tcf_config::socket_of_invalid_config(&path, &source, cli.environment.as_deref());
            eprintln!(
                "warning: {} does not validate (see `tcf-platform config validate`); reaching the daemon at {} anyway",
                path.display(),
                socket.display()
            );
            Ok(Client::new(socket))
        }
        Err(e) => Err(e.into()),
    }
}

/// Write to stdout; a reader that went away (`| head`) is not an error.
fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    print_text(&text)
}

async fn dispatch(cli: Cli) -> CmdResult {
    match &cli.command {
        Command::Up => up(&cli).await,
        Command::Down { timeout, force } => down(&cli, *timeout, *force).await,
        Command::Status(args) => status(&cli, args).await,
        Command::Prod(ProdCommand::Status(args)) => status(&cli, args).await,
        Command::Prod(ProdCommand::Deploy(args)) => deploy(&cli, args).await,
        Command::Prod(ProdCommand::Rollback(args)) => rollback(&cli, args).await,
        Command::Prod(ProdCommand::Monitor(args)) => monitor_cmd::monitor(&cli, args).await,
        Command::Metrics(cmd) => monitor_cmd::metrics(&cli, cmd).await,
        Command::Alerts(args) => monitor_cmd::alerts(&cli, args).await,
        Command::Prod(ProdCommand::Abort) => abort(&cli).await,
        Command::Prod(ProdCommand::Audit(args)) => audit_cmd::audit(&cli, args).await,
        Command::Prod(ProdCommand::Validate(args)) => prod_validate(&cli, args).await,
        Command::Restart(args) => restart(&cli, args).await,
        Command::Scale(args) => scale(&cli, args).await,
        Command::History {
            service,
            limit,
            format,
        } => history(&cli, service.as_deref(), *limit, *format).await,
        Command::Lock(LockCommand::Status { format }) => lock_status(&cli, *format).await,
        Command::Lock(LockCommand::Release { force }) => lock_release(&cli, *force).await,
        Command::Maintenance(MaintenanceCommand::On {
            services,
            retry_after,
            reason,
            format,
        }) => {
            let seconds = u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX);
            maintenance(&cli, services, Some(seconds), reason, *format).await
        }
        Command::Maintenance(MaintenanceCommand::Off { services, format }) => {
            maintenance(&cli, services, None, "", *format).await
        }
        Command::Reload { format } => reload(&cli, *format).await,
        Command::Daemon(DaemonCommand::Restart { format }) => {
            daemon_handover(&cli, None, *format).await
        }
        Command::Daemon(DaemonCommand::Upgrade { binary, format }) => {
            daemon_handover(&cli, Some(binary), *format).await
        }
        Command::Tls(command) => tls_cmd::run(&cli, command).await,
        Command::Logs {
            service,
            follow,
            tail,
            timestamps,
            access,
        } => logs(&cli, service, *follow, *tail, *timestamps, *access).await,
        Command::Events {
            service,
            limit,
            format,
        } => events(&cli, service.as_deref(), *limit, *format).await,
        Command::Tokens(command) => access_cmd::tokens(&cli, command).await,
        Command::Secrets(command) => access_cmd::secrets(&cli, command).await,
        Command::Backup(command) => backup_cmd::run(&cli, command).await,
        Command::Config(ConfigCommand::Validate { format }) => validate(&cli, *format),
        Command::Config(ConfigCommand::Show { format }) => show(&cli, *format),
        Command::Init(args) => init_cmd::init(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "tcf-platform", &mut script);
            print_text(&String::from_utf8_lossy(&script))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            std::fs::create_dir_all(dir)
                .and_then(|_| clap_mangen::generate_to(Cli::command(), dir))
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version { format } => {
            match format {
                Format::Json => print_json(&serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "commit": env!("TCF_GIT_COMMIT"),
                    "build_date": env!("TCF_BUILD_DATE"),
                }))?,
                Format::Table => print_text(&format!("tcf-platform {}\n", cli::VERSION))?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `TCF_LOG`: a level (`debug`) or per-module levels (`info,tcf_proxy=debug`); info when unset.
/// (tracing-subscriber's `Targets`: the same directives as `RUST_LOG` without span filters, and
/// no regex engine in the binary.)
fn log_filter() -> tracing_subscriber::filter::Targets {
    let info = tracing_subscriber::filter::Targets::new()
        .with_default(tracing_subscriber::filter::LevelFilter::INFO);
    match std::env::var("TCF_LOG") {
        Ok(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("warning: TCF_LOG={spec:?} is not a log filter ({e}); logging at info\nhint: TCF_LOG=debug, or per module: TCF_LOG=info,tcf_proxy=debug");
            info
        }),
        Err(_) => info,
    }
}

async fn up(cli: &Cli) -> CmdResult {
    let config = load_config(cli)?;
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .finish()
        .with(log_filter())
        .init();
    eprintln!(
        "tcf-platform {}: platform {} with {} service(s); state in {}; API on {}",
        env!("CARGO_PKG_VERSION"),
        config.platform.name,
        config.services.len(),
        config.platform.state_dir.display(),
        config.daemon.socket.display()
    );
    for svc in config.services.values() {
        eprintln!("  {:<12} http://{}", svc.name, svc.listen);
    }
    eprintln!("Press Ctrl-C to stop (or run `tcf-platform down`).");
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    tcf_daemon::run(config, stop)
        .await
        .map_err(anyhow::Error::from)?;
    eprintln!("tcf-platform: stopped");
    Ok(ExitCode::SUCCESS)
}

async fn down(cli: &Cli, timeout: Duration, force: bool) -> CmdResult {
    let client = client(cli)?;
    let ping: tcf_api::Ping = match client.get("/v1/ping").await {
        Ok(ping) => ping,
        Err(e @ ClientError::NotRunning { .. }) => {
            // No API: maybe a daemon that is already stopping (a first `down` closed the API).
            return match stopping_daemon(cli) {
                Some(pid) if force => {
                    let groups = procfs_children(pid);
                    kill_everything(pid, &groups);
                    eprintln!(
                        "killed the daemon (pid {pid}, no longer answering) and {} instance group(s)",
                        groups.len()
                    );
                    Ok(ExitCode::from(1))
                }
                Some(pid) => Err(anyhow::anyhow!(
                    "the daemon (pid {pid}) is stopping and no longer answers\nhint: `tcf-platform down --force` kills it and its instances (SIGKILL)"
                )
                .into()),
                None => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let status: tcf_api::Status = client.get("/v1/status").await?;
    if let Some(release) = &status.deploy_in_progress {
        if !force {
            return Err(anyhow::anyhow!(
                "a release is running: {release}\nhint: wait for it, or `tcf-platform down --force` to interrupt it (it is recorded as interrupted and the next `up` serves the last active release)"
            )
            .into());
        }
        eprintln!("interrupting: {release}");
    }
    // What to kill if it comes to that: each instance leads its own process group.
    let groups: Vec<u32> = status
        .services
        .iter()
        .flat_map(|s| s.instances.iter().filter_map(|i| i.pid))
        .collect();
    let _: tcf_api::DownResponse = client.post("/v1/down", &serde_json::json!({})).await?;
    eprintln!(
        "stopping platform {} (daemon pid {})...",
        ping.platform, ping.pid
    );
    let started = Instant::now();
    if client.is_remote() {
        // Its pids are another machine's: never signal them here; wait for its API to close.
        while client.get::<tcf_api::Ping>("/v1/ping").await.is_ok() {
            if started.elapsed() > timeout {
                return Err(anyhow::anyhow!(
                    "the remote daemon still answers after {}; it keeps stopping (see its log there)",
                    humantime::format_duration(timeout)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("stop requested; the remote API has closed");
        return Ok(ExitCode::SUCCESS);
    }
    let mut last_report = Instant::now();
    let mut interrupts = 0;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    // The API closes first; the daemon is gone when its process is.
    let daemon = nix::unistd::Pid::from_raw(ping.pid as i32);
    while nix::sys::signal::kill(daemon, None).is_ok() && !is_zombie(ping.pid) {
        let out_of_time = started.elapsed() > timeout;
        if out_of_time && !force {
            return Err(anyhow::anyhow!(
                "the daemon (pid {}) is still stopping after {}; it keeps going\nhint: `tcf-platform down --force` kills it and its instances (SIGKILL); its own log says what it waits for",
                ping.pid,
                humantime::format_duration(timeout)
            )
            .into());
        }
        if out_of_time || interrupts >= 2 {
            kill_everything(ping.pid, &groups);
            eprintln!("killed the daemon and {} instance group(s)", groups.len());
            return Ok(ExitCode::from(1));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("  still stopping ({}s)...", started.elapsed().as_secs());
            last_report = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = &mut ctrl_c => {
                interrupts += 1;
                ctrl_c.set(tokio::signal::ctrl_c());
                if interrupts == 1 {
                    eprintln!("  still stopping; press Ctrl-C again to kill the daemon and its instances (SIGKILL)");
                }
            }
        }
    }
    eprintln!("stopped in {:.1}s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// A daemon that holds the state directory's lock (its pid is in `daemon.lock`) but no longer
/// serves the API.
fn stopping_daemon(cli: &Cli) -> Option<u32> {
    let state_dir = state_dir(cli)?;
    let pid: u32 = std::fs::read_to_string(state_dir.join("daemon.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    (alive && !is_zombie(pid) && is_tcf_platform(pid)).then_some(pid)
}

/// The state directory the config names, read loosely if the file does not validate.
fn state_dir(cli: &Cli) -> Option<std::path::PathBuf> {
    let path = tcf_config::locate(cli.config.as_deref()).ok()?;
    Some(match tcf_config::load(&path, cli.environment.as_deref()) {
        Ok(c) => c.platform.state_dir,
        Err(_) => {
            let source = std::fs::read_to_string(&path).ok()?;
            tcf_config::paths_of_invalid_config(&path, &source, cli.environment.as_deref()).0
        }
    })
}

/// With no daemon running, `history` and `events` read a copy of the store (only the daemon
/// writes it). `Ok(None)` when there is no store to read either.
fn offline_store(cli: &Cli) -> anyhow::Result<Option<tcf_store::Store>> {
    let Some(dir) = state_dir(cli) else {
        return Ok(None);
    };
    if !dir.join("state.db").exists() {
        return Ok(None);
    }
    let store = tcf_store::Store::open_read_only(&dir)?;
    eprintln!(
        "no daemon is running: read from the state store in {} (as of the daemon's last write)",
        dir.display()
    );
    Ok(Some(store))
}

/// True when `pid` runs this program (a pid in a stale lock file may have been reused).
fn is_tcf_platform(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(argv0).ends_with("tcf-platform")
        })
        .unwrap_or(false)
}

/// The process groups the daemon's child processes lead (its process instances).
fn procfs_children(daemon: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the command's closing parenthesis: state, ppid, pgrp, ...
                    let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
                    Some(rest.get(1)?.parse::<u32>().ok()? == daemon)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// The last resort of `down`: SIGKILL the daemon, then each instance's process group.
fn kill_everything(daemon: u32, groups: &[u32]) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(daemon as i32), Signal::SIGKILL);
    for pgid in groups {
        let _ = killpg(Pid::from_raw(*pgid as i32), Signal::SIGKILL);
    }
}

async fn status(cli: &Cli, args: &StatusArgs) -> CmdResult {
    let client = client(cli)?;
    let path = if args.metrics {
        "/v1/status?metrics=true"
    } else {
        "/v1/status"
    };
    let s: tcf_api::Status = client.get(path).await?;
    match args.format {
        Format::Json => print_json(&s)?,
        Format::Table => print_text(&output::status(&s, args.health, args.metrics))?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn logs(
    cli: &Cli,
    service: &str,
    follow: bool,
    tail: usize,
    timestamps: bool,
    access: bool,
) -> CmdResult {
    let client = client(cli)?;
    let path = format!(
        "/v1/logs/{service}?tail={tail}&follow={follow}&timestamps={timestamps}&access={access}"
    );
    let resp = client.send("GET", &path, None).await?;
    let mut body = resp.into_body();
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the log stream broke off")?;
        if let Some(data) = frame.data_ref() {
            // A closed pipe (`| head`) ends the command quietly.
            if out.write_all(data).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn events(cli: &Cli, service: Option<&str>, limit: u32, format: Format) -> CmdResult {
    let client = client(cli)?;
    let mut path = format!("/v1/events?limit={limit}");
    if let Some(s) = service {
        path.push_str(&format!("&service={s}"));
    }
    let events: Vec<tcf_api::Event> = match client.get(&path).await {
        Ok(events) => events,
        Err(e @ ClientError::NotRunning { .. }) => match offline_store(cli)? {
            Some(store) => store
                .events(service, 0, limit)
                .map_err(anyhow::Error::from)?
                .into_iter()
                .map(tcf_daemon::wire_event)
                .collect(),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    match format {
        Format::Json => print_json(&events)?,
        Format::Table => print_text(&output::events(&events))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(cli: &Cli, format: Format) -> CmdResult {
    let path = tcf_config::locate(cli.config.as_deref()).map_err(anyhow::Error::from)?;
    match tcf_config::load(&path, cli.environment.as_deref()) {
        Ok(cfg) => {
            let rt = tcf_runtime::process::ProcessRuntime::new(
                cfg.path.parent().unwrap_or(std::path::Path::new(".")),
            );
            let warnings: Vec<String> = cfg
                .services
                .values()
                // A container's command is its arguments, not a program on this machine.
                .filter(|s| s.runtime == tcf_config::RuntimeKind::Process)
                .filter_map(|s| {
                    let program = s.command.first()?;
                    rt.resolve_program(program).is_none().then(|| {
                        format!(
                            "service {:?}: program {program:?} not found beside tcf-platform or in PATH (yet)",
                            s.name
                        )
                    })
                })
                .collect();
            if let Some(missing) = access_cmd::missing_secret(&cfg) {
                return Err(Failure {
                    code: 2,
                    error: anyhow::anyhow!(missing),
                });
            }
            match format {
                Format::Json => print_json(&serde_json::json!({
                    "valid": true,
                    "path": path.display().to_string(),
                    "services": cfg.services.len(),
                    "dependencies": cfg.dependencies.len(),
                    "warnings": warnings,
                    "errors": [],
                }))?,
                Format::Table => {
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                    print_text(&format!(
                        "config ok: {} ({} services, {} dependencies)\n",
                        path.display(),
                        cfg.services.len(),
                        cfg.dependencies.len()
                    ))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid {
            rendered,
            diagnostics,
            ..
        }) => {
            match format {
                Format::Json => {
                    let source = std::fs::read_to_string(&path).unwrap_or_default();
                    let errors: Vec<serde_json::Value> = diagnostics
                        .iter()
                        .map(|d| {
                            let (line, column) = d
                                .span
                                .as_ref()
                                .map(|s| tcf_config::line_col(&source, s.start))
                                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
                            serde_json::json!({
                                "message": d.message, "line": line, "column": column, "hint": d.hint,
                            })
                        })
                        .collect();
                    print_json(&serde_json::json!({
                        "valid": false,
                        "path": path.display().to_string(),
                        "errors": errors,
                    }))?;
                }
                Format::Table => eprint!("{rendered}"),
            }
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(anyhow::Error::from(e).into()),
    }
}

fn show(cli: &Cli, format: Format) -> CmdResult {
    let cfg = load_config(cli)?;
    match format {
        Format::Json => print_json(&cfg)?,
        Format::Table => {
            print_text(&toml::to_string_pretty(&cfg).context("cannot print the config as TOML")?)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Who runs this command, for the audit trail.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{user}@{host}")
}

/// Ask on a terminal; true when the user agrees.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

/// A request the daemon refused as bad (400) is a usage error: exit 2.
fn bad_request_is_usage(e: ClientError) -> Failure {
    match e {
        ClientError::Api {
            status: 400,
            message,
        } => Failure {
            code: 2,
            error: anyhow::anyhow!(message),
        },
        other => other.into(),
    }
}

/// Print a release's progress as it streams; the exit code comes from its last line.
async fn follow_release(client: &Client, path: &str, body: Vec<u8>, format: Format) -> CmdResult {
    let resp = client
        .send("POST", path, Some(body))
        .await
        .map_err(bad_request_is_usage)?;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let started = Instant::now();
    let mut exit = None;
    // On a terminal a live line shows the running time under the steps.
    let live = format == Format::Table && std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut last_step = String::from("starting");
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = &mut ctrl_c => {
                if live {
                    print_text("\r\x1b[K")?;
                }
                eprintln!(
                    "stopped following; the release goes on in the daemon.\n  to stop it and revert: tcf-platform prod abort\n  to see how it ends:    tcf-platform history (or events)"
                );
                return Ok(ExitCode::from(130));
            }
            _ = ticker.tick(), if live => {
                const SPIN: [char; 4] = ['|', '/', '-', '\\'];
                let spin = SPIN[(started.elapsed().as_millis() / 200) as usize % 4];
                print_text(&format!("\r\x1b[K{spin} {:>6.1}s  {last_step}", started.elapsed().as_secs_f64()))?;
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.context("the daemon stopped answering mid-release; see `tcf-platform history` and `tcf-platform events`")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(p) = serde_json::from_slice::<tcf_api::ProgressLine>(&line) else {
                continue;
            };
            if live {
                print_text("\r\x1b[K")?;
            }
            match format {
                Format::Json => print_text(&String::from_utf8_lossy(&line))?,
                Format::Table => {
                    let place = p
                        .service
                        .as_deref()
                        .map(|s| format!("{s}: "))
                        .unwrap_or_default();
                    if p.result.is_some() {
                        print_text(&format!(
                            "[{:>6.1}s] {}: {}\n",
                            started.elapsed().as_secs_f64(),
                            p.result.as_deref().unwrap_or(""),
                            p.message
                        ))?;
                    } else {
                        print_text(&format!(
                            "[{:>6.1}s] {:<20} {place}{}\n",
                            started.elapsed().as_secs_f64(),
                            p.step,
                            p.message
                        ))?;
                        last_step = format!("{} {place}", p.step);
                    }
                }
            }
            if let Some(code) = p.exit_code {
                exit = Some(code);
            }
        }
    }
    if live {
        print_text("\r\x1b[K")?;
    }
    match exit {
        Some(code) => Ok(ExitCode::from(code)),
        None => Err(anyhow::anyhow!(
            "the release stream ended without a result; see `tcf-platform history`"
        )
        .into()),
    }
}

async fn prod_validate(cli: &Cli, args: &ValidateArgs) -> CmdResult {
    let client = client(cli)?;
    let report: tcf_api::ValidateReport = client
        .post(
            "/v1/validate",
            &tcf_api::ValidateRequest {
                version: args.version.clone(),
                services: args.services.clone(),
                check_dependencies: args.check_dependencies,
                security_scan: args.security_scan,
            },
        )
        .await
        .map_err(bad_request_is_usage)?;
    match args.format {
        Format::Json => print_json(&report)?,
        Format::Table => print_text(&output::validation(&report))?,
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn abort(cli: &Cli) -> CmdResult {
    let client = client(cli)?;
    let resp: tcf_api::AbortResponse = client
        .post("/v1/abort", &tcf_api::AbortRequest { actor: actor() })
        .await?;
    eprintln!(
        "aborting: {}\nit stops at its next step and reverts what it switched; its own output (or `tcf-platform history`) shows the end",
        resp.aborting
    );
    Ok(ExitCode::SUCCESS)
}

async fn restart(cli: &Cli, args: &RestartArgs) -> CmdResult {
    let client = client(cli)?;
    if !args.force
        && std::io::stdin().is_terminal()
        && !confirm(&format!("Restart {}?", args.services.join(", ")))
    {
        eprintln!("not restarted");
        return Ok(ExitCode::from(1));
    }
    let body = serde_json::to_vec(&tcf_api::RestartRequest {
        services: args.services.clone(),
        reason: args.reason.clone(),
        lock_wait_ms: args.lock_wait.as_millis() as u64,
        actor: actor(),
    })
    .map_err(anyhow::Error::from)?;
    follow_release(&client, "/v1/restart", body, args.format).await
}

async fn scale(cli: &Cli, args: &ScaleArgs) -> CmdResult {
    let client = client(cli)?;
    if !args.force
        && std::io::stdin().is_terminal()
        && !confirm(&format!(
            "Run {} instance(s) of {}?",
            args.instances, args.service
        ))
    {
        eprintln!("not scaled");
        return Ok(ExitCode::from(1));
    }
    let body = serde_json::to_vec(&tcf_api::ScaleRequest {
        service: args.service.clone(),
        instances: args.instances,
        reason: args.reason.clone(),
        lock_wait_ms: args.lock_wait.as_millis() as u64,
        actor: actor(),
    })
    .map_err(anyhow::Error::from)?;
    follow_release(&client, "/v1/scale", body, args.format).await
}

async fn deploy(cli: &Cli, args: &DeployArgs) -> CmdResult {
    if args.abort {
        return abort(cli).await;
    }
    let Some(version) = args.version.clone() else {
        return Err(anyhow::anyhow!("name the VERSION to deploy").into());
    };
    // A deploy never starts from a config that does not validate (a remote daemon checks its own).
    if cli.host.is_none() {
        load_config(cli)?;
    }
    let client = client(cli)?;
    if !args.force && std::io::stdin().is_terminal() {
        let which = if args.services.is_empty() {
            "every service".to_string()
        } else {
            args.services.join(", ")
        };
        if !confirm(&format!("Deploy {version} to {which}?")) {
            eprintln!("not deployed");
            return Ok(ExitCode::from(1));
        }
    }
    let req = tcf_api::DeployRequest {
        version,
        validate: if args.no_validate {
            Some(false)
        } else if args.validate {
            Some(true)
        } else {
            None
        },
        force: args.force,
        backup: args.backup.then_some(true),
        services: args.services.clone(),
        strategy: args.strategy.clone(),
        reason: args.reason.clone(),
        lock_wait_ms: args.lock_wait.as_millis() as u64,
        actor: actor(),
    };
    follow_release(
        &client,
        "/v1/deploy",
        serde_json::to_vec(&req).map_err(anyhow::Error::from)?,
        args.format,
    )
    .await
}

async fn rollback(cli: &Cli, args: &RollbackArgs) -> CmdResult {
    let client = client(cli)?;
    let version = args.version.clone().or_else(|| args.to_version.clone());
    if !args.force {
        if !std::io::stdin().is_terminal() {
            return Err(Failure {
                code: 2,
                error: anyhow::anyhow!(
                    "refusing to roll back without a terminal to confirm on; pass --force"
                ),
            });
        }
        let target = version
            .clone()
            .unwrap_or_else(|| "the previous successful release".into());
        if !confirm(&format!("Roll back to {target}?")) {
            eprintln!("not rolled back");
            return Ok(ExitCode::from(1));
        }
    }
    let req = tcf_api::RollbackRequest {
        version,
        services: args.services.clone(),
        reason: args.reason.clone(),
        lock_wait_ms: args.lock_wait.as_millis() as u64,
        actor: actor(),
    };
    follow_release(
        &client,
        "/v1/rollback",
        serde_json::to_vec(&req).map_err(anyhow::Error::from)?,
        args.format,
    )
    .await
}

async fn history(cli: &Cli, service: Option<&str>, limit: u32, format: Format) -> CmdResult {
    let client = client(cli)?;
    let mut path = format!("/v1/releases?limit={limit}");
    if let Some(s) = service {
        path.push_str(&format!("&service={s}"));
    }
    let releases: Vec<tcf_api::Release> = match client.get(&path).await {
        Ok(releases) => releases,
        Err(e @ ClientError::NotRunning { .. }) => match offline_store(cli)? {
            Some(store) => tcf_daemon::wire_releases(
                &store.releases(10_000).map_err(anyhow::Error::from)?,
                service,
                limit as usize,
            ),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    match format {
        Format::Json => print_json(&releases)?,
        Format::Table => print_text(&output::history(&releases))?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn lock_status(cli: &Cli, format: Format) -> CmdResult {
    let client = client(cli)?;
    let l: tcf_api::LockStatus = client.get("/v1/lock").await?;
    match format {
        Format::Json => print_json(&l)?,
        Format::Table if !l.held => print_text("the deploy lock is free\n")?,
        Format::Table => print_text(&format!(
            "held by {} on {} (pid {})\nreason:    {}\nacquired:  {}\nheartbeat: {}\nexpires:   {}\n",
            l.owner.unwrap_or_default(),
            l.host.unwrap_or_default(),
            l.pid.unwrap_or_default(),
            l.reason.unwrap_or_else(|| "-".into()),
            l.acquired.unwrap_or_default(),
            l.heartbeat.unwrap_or_default(),
            l.expires.unwrap_or_default()
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `maintenance on` (with a Retry-After) or `off` (without).
async fn maintenance(
    cli: &Cli,
    services: &[String],
    retry_after_s: Option<u32>,
    reason: &str,
    format: Format,
) -> CmdResult {
    let on = retry_after_s.is_some();
    let answer = set_maintenance(&client(cli)?, services, retry_after_s, reason).await?;
    match format {
        Format::Json => print_json(&answer)?,
        Format::Table => {
            let state = if on {
                "in maintenance"
            } else {
                "back in service"
            };
            let text = match answer.changed.as_slice() {
                [] => format!("no change: {} already {state}\n", services.join(", ")),
                changed => format!("{}: {state}\n", changed.join(", ")),
            };
            print_text(&text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `daemon restart` / `daemon upgrade`: the daemon answers once the new one serves.
async fn daemon_handover(cli: &Cli, binary: Option<&std::path::Path>, format: Format) -> CmdResult {
    let binary = match binary {
        Some(b) => Some(
            std::path::absolute(b)
                .with_context(|| format!("cannot resolve {}", b.display()))?
                .display()
                .to_string(),
        ),
        None => None,
    };
    // Taking over waits for the adopted instances' first health probe: allow for it.
    let client = client(cli)?.with_timeouts(Duration::from_secs(5), Duration::from_secs(300));
    let done: tcf_api::HandoverResponse = client
        .post("/v1/daemon/handover", &tcf_api::HandoverRequest { binary })
        .await?;
    match format {
        Format::Json => print_json(&done)?,
        Format::Table => print_text(&format!(
            "daemon pid {} took over from pid {} ({}); the old daemon is finishing its requests and exits\n",
            done.new_pid, done.old_pid, done.binary
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `reload`: the daemon answers with what changed once the new daemon runs the file.
async fn reload(cli: &Cli, format: Format) -> CmdResult {
    let client = client(cli)?.with_timeouts(Duration::from_secs(5), Duration::from_secs(300));
    let done: tcf_api::ReloadResponse = client.post("/v1/reload", &serde_json::json!({})).await?;
    match format {
        Format::Json => print_json(&done)?,
        Format::Table => {
            let mut text = String::new();
            for s in &done.added {
                text.push_str(&format!("  + {s} (new service: starting)\n"));
            }
            for s in &done.removed {
                text.push_str(&format!("  - {s} (removed: drained, then stopped)\n"));
            }
            for s in &done.scaled {
                text.push_str(&format!(
                    "  ~ {}: {} -> {} instance(s) (scale)\n",
                    s.service, s.from, s.to
                ));
            }
            for s in &done.changed {
                text.push_str(&format!("  ~ {s}: settings changed (blue-green switch)\n"));
            }
            if text.is_empty() {
                text.push_str("  no service changes\n");
            }
            print_text(&format!(
                "reloaded: daemon pid {} runs the config (took over from pid {})\n{text}follow the changes with `tcf-platform events`\n",
                done.new_pid, done.old_pid
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the daemon to put `services` in maintenance (`Some(retry after)`) or back in service.
pub(crate) async fn set_maintenance(
    client: &Client,
    services: &[String],
    retry_after_s: Option<u32>,
    reason: &str,
) -> anyhow::Result<tcf_api::MaintenanceResponse> {
    Ok(client
        .post(
            "/v1/maintenance",
            &tcf_api::MaintenanceRequest {
                services: services.to_vec(),
                on: retry_after_s.is_some(),
                retry_after_s,
                reason: reason.to_string(),
                actor: actor(),
            },
        )
        .await?)
}

async fn lock_release(cli: &Cli, force: bool) -> CmdResult {
    let client = client(cli)?;
    let l: tcf_api::LockStatus = client
        .post("/v1/lock/release", &serde_json::json!({ "force": force }))
        .await?;
    if !l.held {
        print_text("the deploy lock is free\n")?;
    }
    Ok(ExitCode::SUCCESS)
}

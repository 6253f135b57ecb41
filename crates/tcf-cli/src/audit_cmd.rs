//! `tcf-platform prod audit`: run the checks of tcf-audit against the config, the files and,
//! when the daemon answers, its processes; print or write the report; exit by `--fail-on`.

use crate::{print_text, CmdResult, Failure};
use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use tcf_api::{Client, ClientError};
use tcf_audit::checks::{self, Inputs, LiveView, StoredSecret};
use tcf_audit::{advisories::Database, render, Ignores, Meta, Report, Severity};
use tcf_daemon::audit as daemon_audit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Table,
    Json,
    Sarif,
    Junit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Args, Clone)]
pub struct AuditArgs {
    /// Add the slower checks: live TLS handshakes, the running containers, dependency
    /// advisories, the secret scan of files
    #[arg(long)]
    pub comprehensive: bool,
    /// Report format [default: from --output's extension (.json, .sarif, .xml), else table]
    #[arg(long, value_enum)]
    pub format: Option<AuditFormat>,
    /// Write the report to FILE instead of standard output
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit 1 when a finding is at or above this severity
    #[arg(long, value_enum, value_name = "SEVERITY")]
    pub fail_on: Option<FailOn>,
    /// Accepted findings: [[ignore]] entries with id, optional resource, statement, expires
    #[arg(long, value_name = "FILE")]
    pub ignore: Option<PathBuf>,
    /// Run only these checks (IDs such as TCF-SEC-001, or a group such as CTR)
    #[arg(long, value_name = "ID", num_args = 1..)]
    pub check: Vec<String>,
    /// Leave these checks out
    #[arg(long, value_name = "ID", num_args = 1..)]
    pub skip: Vec<String>,
    /// A local OSV advisory database for TCF-DEP-001: a JSON file or a directory of them
    /// [default: STATE_DIR/advisories when it exists]
    #[arg(long, value_name = "FILE|DIR")]
    pub advisories: Option<PathBuf>,
    /// Download the OSV database (crates.io, npm, PyPI, RubyGems) into the advisory directory
    /// (--advisories, else STATE_DIR/advisories), replacing it whole, then exit
    #[arg(long)]
    pub update_advisories: bool,
    /// Where --update-advisories downloads from: a mirror of OSV's bucket (BASE/ECOSYSTEM/all.zip)
    #[arg(
        long,
        value_name = "URL",
        env = "TCF_ADVISORIES_URL",
        default_value = crate::advisories_cmd::DEFAULT_BASE_URL
    )]
    pub advisories_url: String,
}

/// A usage or input problem: exit 2.
fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

use tcf_daemon::audit::live_containers;

/// What `GET /v1/events` returns at most: the failed authentications of the last day are
/// looked for among these newest events.
const EVENTS_LOOKED_AT: u32 = 10_000;

/// The daemon's view for the online checks and the store's secrets, or why there is none.
async fn live_view(
    socket: PathBuf,
) -> Result<(LiveView, Result<Vec<StoredSecret>, String>), String> {
    let client =
        Client::new(&socket).with_timeouts(Duration::from_secs(3), Duration::from_secs(10));
    let offline = |e: ClientError| match e {
        ClientError::NotRunning { socket } => {
            format!("no daemon answers on {}", socket.display())
        }
        other => format!("the daemon could not be asked: {other}"),
    };
    let ping: tcf_api::Ping = client.get("/v1/ping").await.map_err(offline)?;
    let status: tcf_api::Status = client.get("/v1/status").await.map_err(offline)?;
    let tokens = client
        .get::<Vec<tcf_api::access::TokenInfo>>("/v1/tokens")
        .await
        .map_err(|e| format!("the daemon's tokens could not be read: {e}"))
        .map(|list| list.into_iter().map(daemon_audit::live_token).collect());
    let failed_auths = client
        .get::<Vec<tcf_api::Event>>(&format!("/v1/events?limit={EVENTS_LOOKED_AT}"))
        .await
        .map_err(|e| format!("the daemon's events could not be read: {e}"))
        .map(|events| daemon_audit::failed_auths(&events, tcf_backup::time::now_unix_ms()));
    let secrets = client
        .get::<Vec<tcf_api::access::SecretInfo>>("/v1/secrets")
        .await
        .map_err(|e| format!("the daemon's secrets could not be listed: {e}"))
        .map(daemon_audit::stored_secrets);
    Ok((
        LiveView {
            tokens,
            failed_auths,
            daemon_pid: ping.pid,
            socket,
            services: daemon_audit::live_services(status),
        },
        secrets,
    ))
}

/// The report of a remote daemon (`--host`): it runs the checks on its host and answers with
/// the JSON report, before ignores; the ignores are applied here.
async fn remote_report(
    cli: &crate::cli::Cli,
    args: &AuditArgs,
    ignores: &Ignores,
) -> Result<Report, Failure> {
    if args.advisories.is_some() || args.update_advisories {
        return Err(usage(anyhow!(
            "--advisories and --update-advisories work on a local audit only\nhint: a remote daemon reads its own STATE_DIR/advisories; run `prod audit --update-advisories` on its host"
        )));
    }
    let mut query = format!("/v1/audit?comprehensive={}", args.comprehensive);
    if !args.check.is_empty() {
        query.push_str(&format!("&check={}", args.check.join(",")));
    }
    if !args.skip.is_empty() {
        query.push_str(&format!("&skip={}", args.skip.join(",")));
    }
    // A comprehensive audit handshakes and inspects containers: give it time.
    let client = crate::client(cli)
        .map_err(usage)?
        .with_timeouts(Duration::from_secs(10), Duration::from_secs(600));
    let value: serde_json::Value = client.get(&query).await.map_err(|e| Failure {
        code: 2,
        error: anyhow!("the remote daemon's audit could not be had: {e}"),
    })?;
    let (meta, results, unknown) =
        tcf_audit::report::results_from_json(&value).map_err(|e| Failure {
            code: 2,
            error: anyhow!(
                "the remote daemon answered a report this tcf-platform cannot read: {e}"
            ),
        })?;
    if !unknown.is_empty() {
        eprintln!(
            "warning: the remote daemon ran checks this tcf-platform does not know ({}); upgrade it to see them",
            unknown.join(", ")
        );
    }
    Ok(Report::build(meta, results, ignores))
}

/// The audit run here, on the config and files, with the local daemon's view when one answers.
/// None: `--update-advisories` was asked and done.
async fn local_report(
    cli: &crate::cli::Cli,
    args: &AuditArgs,
    selected: &[&'static tcf_audit::Rule],
    ignores: &Ignores,
    now: SystemTime,
) -> Result<Option<Report>, Failure> {
    let config = crate::load_config(cli)?;
    let default_advisories = config.platform.state_dir.join("advisories");
    if args.update_advisories {
        let dir = args.advisories.clone().unwrap_or(default_advisories);
        return match crate::advisories_cmd::update(&dir, &args.advisories_url).await {
            Ok(count) => {
                eprintln!(
                    "advisory database updated: {count} advisories in {}",
                    dir.display()
                );
                Ok(None)
            }
            // The database could not be had: the run did not do what was asked (exit 2), and
            // the directory is as it was.
            Err(error) => Err(Failure { code: 2, error }),
        };
    }
    let advisories: Option<Result<Database, String>> = match &args.advisories {
        Some(path) => Some(Ok(Database::load(path).map_err(|e| usage(e.into()))?)),
        // The directory --update-advisories fills, when there is one.
        None if default_advisories.is_dir() => {
            Some(Database::load(&default_advisories).map_err(|e| e.to_string()))
        }
        None => None,
    };
    let advisories_text = advisories
        .as_ref()
        .and_then(|db| db.as_ref().ok())
        .map(|db| db.describe(now));
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| config.daemon.socket.clone());
    let (live, secrets) = match live_view(socket).await {
        Ok((view, secrets)) => (Ok(view), secrets),
        Err(why) => (
            Err(why),
            daemon_audit::offline_secrets(&config.platform.state_dir),
        ),
    };
    let offline_reason = live.as_ref().err().cloned();

    let containers = if args.comprehensive {
        Some(live_containers(&config).await)
    } else {
        None
    };
    let inputs = Inputs {
        config: &config,
        live,
        advisories,
        comprehensive: args.comprehensive,
        containers,
        secrets,
    };
    let results = checks::run(&inputs, selected);
    let meta = Meta {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        generated_at: humantime::format_rfc3339_seconds(now).to_string(),
        config: config.path.clone(),
        platform: config.platform.name.clone(),
        environment: config.environment.clone(),
        offline_reason,
        comprehensive: args.comprehensive,
        advisories: advisories_text,
    };
    Ok(Some(Report::build(meta, results, ignores)))
}

pub async fn audit(cli: &crate::cli::Cli, args: &AuditArgs) -> CmdResult {
    let selected = tcf_audit::select(&args.check, &args.skip).map_err(|e| usage(e.into()))?;
    if selected.is_empty() {
        return Err(usage(anyhow!("--check and --skip left no check to run")));
    }
    let now = SystemTime::now();
    let ignores = match &args.ignore {
        Some(path) => Ignores::load(path, now).map_err(|e| usage(e.into()))?,
        None => Ignores::default(),
    };
    let report = if cli.host.is_some() {
        remote_report(cli, args, &ignores).await?
    } else {
        match local_report(cli, args, &selected, &ignores, now).await? {
            Some(report) => report,
            // --update-advisories did its work.
            None => return Ok(ExitCode::SUCCESS),
        }
    };

    let format = match (args.format, &args.output) {
        (Some(f), _) => f,
        (None, Some(path)) => match render::Format::from_extension(path) {
            render::Format::Json => AuditFormat::Json,
            render::Format::Sarif => AuditFormat::Sarif,
            render::Format::Junit => AuditFormat::Junit,
            render::Format::Table => AuditFormat::Table,
        },
        (None, None) => AuditFormat::Table,
    };
    let text = render::render(
        &report,
        match format {
            AuditFormat::Table => render::Format::Table,
            AuditFormat::Json => render::Format::Json,
            AuditFormat::Sarif => render::Format::Sarif,
            AuditFormat::Junit => render::Format::Junit,
        },
    );
    let s = &report.summary;
    let summary = format!(
        "{} checks: {} passed, {} failed, {} info, {} not run; {} findings ({} ignored)",
        s.checks,
        s.passed,
        s.failed,
        s.info,
        s.not_run,
        report.findings.len(),
        s.ignored
    );
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
            eprintln!("audit report written to {}: {summary}", path.display());
        }
        None => print_text(&text)?,
    }
    // Machine formats on stdout stay parseable; the offline note goes to stderr for them.
    if let Some(why) = &report.meta.offline_reason {
        if format != AuditFormat::Table || args.output.is_some() {
            eprintln!(
                "note: offline audit (config and files only): {why}; the checks that need the running daemon were not run"
            );
        }
    }
    for expired in &report.expired_ignores {
        eprintln!(
            "warning: the ignore of {} expired on {} and no longer applies",
            expired.id, expired.expires
        );
    }
    let threshold = args.fail_on.map(|f| match f {
        FailOn::Info => Severity::Info,
        FailOn::Low => Severity::Low,
        FailOn::Medium => Severity::Medium,
        FailOn::High => Severity::High,
        FailOn::Critical => Severity::Critical,
    });
    match threshold {
        Some(t) if report.fails_at(t) => {
            let n = report.findings.iter().filter(|f| f.severity >= t).count();
            eprintln!("audit failed: {n} finding(s) at or above {t} (--fail-on {t})");
            Ok(ExitCode::from(1))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

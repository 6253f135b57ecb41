//! The command line: every command, flag and its help text.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `--version`: the package version, the git commit and the build date (from build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TCF_GIT_COMMIT"),
    ", built ",
    env!("TCF_BUILD_DATE"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "tcf-platform",
    version = VERSION,
    about = "Run a multi-service platform and operate it in production",
    long_about = "Run a multi-service platform from one config file and operate it: a reverse proxy in \
front of every service, health checks, restarts, status, logs and an audit trail of events.\n\n\
Start with `tcf-platform up` in the directory that holds tcf-platform.toml (or pass --config). \
Every other command talks to that running daemon.",
    after_help = "Exit codes: 0 success, 1 failure (for example, no daemon running), 2 usage or config error."
)]
pub struct Cli {
    /// The config file [default: ./tcf-platform.toml]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "TCF_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// Apply the [environments.NAME] overrides of the config
    #[arg(
        long = "env",
        short = 'e',
        global = true,
        env = "TCF_ENV",
        value_name = "NAME"
    )]
    pub environment: Option<String>,

    /// Reach the daemon on this Unix socket instead of the config's
    ///
    /// Without it, a config that does not validate still names its socket: commands that only
    /// talk to the daemon warn and go on.
    #[arg(long, global = true, env = "TCF_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// A remote daemon's API, https://HOST:PORT (its [daemon] listen); the token comes from
    /// TCF_TOKEN or --token-file, the certificate is checked with --fingerprint or --ca
    #[arg(long, global = true, env = "TCF_HOST", value_name = "URL")]
    pub host: Option<String>,

    /// A file holding the API token for --host (instead of TCF_TOKEN)
    #[arg(long, global = true, env = "TCF_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Trust the remote daemon's certificate with this SHA-256 fingerprint (`status --format
    /// json` on its host shows it as api.fingerprint_sha256; the daemon prints it at start)
    #[arg(long, global = true, env = "TCF_FINGERPRINT", value_name = "SHA256")]
    pub fingerprint: Option<String>,

    /// Trust remote daemon certificates issued by the CA certificate(s) in this PEM file
    #[arg(long, global = true, env = "TCF_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform: the daemon in the foreground (Ctrl-C or `down` stops it)
    #[command(
        long_about = "Run the platform in the foreground: bind every service's public address, \
start the services in dependency order (a service starts once what it depends on is healthy), probe \
their health, restart what crashes, and serve the API on a Unix socket in the state directory.\n\n\
Ctrl-C, SIGTERM or `tcf-platform down` stop it cleanly: stop accepting, finish requests in flight, \
stop instances in reverse dependency order."
    )]
    Up,
    /// Stop the running daemon and everything it started
    #[command(
        long_about = "Stop the running daemon and everything it started: stop accepting, finish \
requests in flight, stop instances in reverse dependency order.\n\n\
While a release runs, `down` refuses unless --force (the release is then recorded as interrupted \
and the next `up` serves the last active release). With --force, a daemon still not gone after \
--timeout is killed (SIGKILL) with the process groups of its instances; pressing Ctrl-C twice \
while waiting does the same."
    )]
    Down {
        /// Wait this long for a clean stop; then give up (or, with --force, kill)
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// Stop even while a release runs, and kill what does not stop within --timeout
        #[arg(long)]
        force: bool,
    },
    /// Show services, instances and their health
    Status(StatusArgs),
    /// Restart a service's instances one at a time behind the health gate (no request dropped)
    #[command(
        long_about = "Restart the named services' instances on the version they run, one at a \
time: each new instance must pass the health gate before an old one leaves the pool, as in a \
rolling deploy (and it is recorded as a release, strategy `restart`). A failed gate puts the old \
instances back.\n\nExit codes as for `prod deploy`."
    )]
    Restart(RestartArgs),
    /// Run N instances of a service (new ones join behind the health gate; removed ones finish
    /// their requests first)
    #[command(
        long_about = "Change how many instances of a service run, in place: new instances start \
on the running version and join the pool once healthy (a failed gate stops them again and \
changes nothing); removed ones (the highest numbers) leave the pool, finish their requests and \
stop. Recorded as a release (strategy `scale`). It changes the running platform: set `instances` \
in the config file to keep it for the next deploy and the next `up`."
    )]
    Scale(ScaleArgs),
    /// Show the log of a service's instances
    Logs {
        /// The service
        service: String,
        /// Keep printing what the instances write
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many lines of each instance's log to show first
        #[arg(long, short = 'n', default_value_t = 100)]
        tail: usize,
        /// Start each line with the time it was written (RFC 3339, UTC)
        #[arg(long, short = 't')]
        timestamps: bool,
        /// Show the service's proxy access log instead (JSON lines; `[services.NAME.proxy]
        /// access_log = true` turns it on)
        #[arg(long)]
        access: bool,
    },
    /// Show the audit trail: every state change, oldest first
    Events {
        /// Only events of this service
        #[arg(long)]
        service: Option<String>,
        /// How many of the newest events
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Check or show the config
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List releases: versions, strategy, status, who, why, when, how long
    History {
        /// Only releases that include this service
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show or release the deploy lock
    #[command(subcommand)]
    Lock(LockCommand),
    /// Take services out of service (503 with Retry-After) while their instances keep running
    #[command(
        subcommand,
        long_about = "Put services in maintenance: their public address answers every request \
503 Service Unavailable with a Retry-After header, while their instances keep running and \
deploys, health checks and monitoring go on. `backup restore` does this by itself for the \
services that use what it restores, for as long as it writes. Every change is an event naming who \
made it; `status` shows who put a service in maintenance, when and why. Not kept across a \
daemon restart."
    )]
    Maintenance(MaintenanceCommand),
    /// Restart or upgrade the daemon itself without dropping a request
    #[command(
        subcommand,
        long_about = "Replace the running daemon by a new process without closing a public \
listener: the new daemon receives the listening sockets, adopts every instance (same pids) and \
accepts once its routes are ready; the old one finishes its in-flight requests and exits. If the \
new daemon fails to start, the old one keeps serving and the command says why (exit 1). See \
docs/running.md."
    )]
    Daemon(DaemonCommand),
    /// Apply the changed config file to the running platform (as SIGHUP does)
    #[command(
        long_about = "Validate the config file and apply it without dropping a request: a new \
daemon takes over the listeners and instances (as `daemon restart` does) and runs the new config: \
new services start, removed ones are drained and stopped, a changed instance count is a scale \
and any other change of a service's settings a blue-green switch, each through the release \
control loop (see `tcf-platform events`). An invalid file is refused and changes nothing (exit 1)."
    )]
    Reload {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// API tokens for the remote API: create (shown once), list, revoke
    #[command(
        subcommand,
        long_about = "API tokens for the remote API ([daemon] listen). A token has a role: viewer \
(reads status, events, logs, history, metrics, alerts), deployer (also deploys, rolls back, releases \
the lock, silences alerts) or admin (also manages tokens and secrets, restores backups, stops the \
platform). Only a token's SHA-256 is stored; it is shown once, at creation. See docs/security.md."
    )]
    Tokens(TokensCommand),
    /// Secrets services refer to as ${secret:NAME}: set (stdin), list, rm, import
    #[command(
        subcommand,
        long_about = "Secrets, encrypted at rest (XChaCha20-Poly1305) with a key outside the store \
(state_dir/secrets.key, created 0600 on first use, or TCF_SECRETS_KEY). A service refers to one in \
its env as \"${secret:NAME}\"; the value is put in the instance's environment when it starts and \
shown nowhere else. Values are read from stdin or a file, never from the command line. Works \
without a running daemon (the store is written directly while none runs). See docs/security.md."
    )]
    Secrets(SecretsCommand),
    /// HTTPS certificates: what each service serves, and reloading them from their files
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Back up, list, verify, restore and prune backups of the platform's data stores
    #[command(
        subcommand,
        long_about = "Backups of the sources in [backup] (PostgreSQL, Redis, directories), \
described by a manifest with SHA-256 checksums, verified by checksums or by a real restore into a \
scratch place. Runs in the daemon when one answers (its socket, or --host with a token: the \
roles apply) and streams its progress; with no daemon running here and no --host, runs in this \
process against the config. See docs/backups.md.\n\n\
Exit codes: 0 success, 1 failed (verify: damage found), 2 usage or config error, 3 the repository \
is locked by another backup, verify, restore or prune, 4 verify could not run a check (not proven)."
    )]
    Backup(BackupCommand),
    /// Production operations: status, deploy, rollback, abort, validate, monitor, audit
    #[command(subcommand)]
    Prod(ProdCommand),
    /// Metric history: list the series, query one over time
    #[command(subcommand)]
    Metrics(crate::monitor_cmd::MetricsCommand),
    /// Alerts: list, history, silence, unsilence
    Alerts(crate::monitor_cmd::AlertsArgs),
    /// Write a tcf-platform.toml from docker compose files
    #[command(
        long_about = "Write a commented tcf-platform.toml from docker compose files: services become \
runtime = \"docker\" services behind our proxy, well-known data stores (PostgreSQL, Redis, Qdrant, \
MySQL, ...) become [dependencies], health checks, replicas, limits, volumes and depends_on carry over. \
Files are merged in order as `docker compose -f A -f B` does, with the project's .env interpolated.\n\n\
Everything that has no equivalent is listed at the top of the file and on stderr, never dropped \
silently; credential-looking values are kept out of the file. The result passes `config validate`.\n\n\
Exit codes: 0 written (or printed), 2 usage or compose file error (or the output exists without --force)."
    )]
    Init(InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(
        long_about = "Print a completion script for SHELL to standard output.\n\n\
Example for bash: tcf-platform completions bash > /etc/bash_completion.d/tcf-platform"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (one per command) into DIR: for packaging
    #[command(hide = true)]
    Manpages {
        /// The directory to write tcf-platform.1, tcf-platform-up.1, ... into
        dir: PathBuf,
    },
    /// Print the version of this binary
    Version {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Args, Clone)]
pub struct InitArgs {
    /// Compose files, merged in order [default: compose.yaml or docker-compose.yml and its override file, here]
    #[arg(long = "from-compose", value_name = "FILE", num_args = 1..)]
    pub from_compose: Vec<PathBuf>,
    /// Where to write the config
    #[arg(
        long,
        short = 'o',
        value_name = "PATH",
        default_value = "tcf-platform.toml"
    )]
    pub output: PathBuf,
    /// Overwrite the output file if it exists
    #[arg(long)]
    pub force: bool,
    /// Print the config to stdout instead of writing it
    #[arg(long)]
    pub dry_run: bool,
    /// json: print the mapping report (what became what, what was not translated) to stdout
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Keep data stores (PostgreSQL, Redis, ...) as services we run instead of [dependencies]
    #[arg(long)]
    pub keep_stores_as_services: bool,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// One line per service (the default view)
    #[arg(long)]
    pub services: bool,
    /// Also one line per instance with its health, pid, port and restarts
    #[arg(long)]
    pub health: bool,
    /// Also request rate, 5xx rate, p50/p99 latency (from the proxy), CPU and memory
    #[arg(long)]
    pub metrics: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check the config: exit 0 when valid, 2 when not (with file, line and column)
    Validate {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print the effective config: defaults filled in, environment applied
    Show {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProdCommand {
    /// Show services, instances and their health (same as `tcf-platform status`)
    Status(StatusArgs),
    /// Deploy VERSION without dropping a request; reverts by itself when the new version fails
    #[command(
        long_about = "Deploy VERSION to every service (or those named with --service), one \
release switched in dependency order. blue_green starts the new version beside the old one, waits \
for its health gate, switches the route atomically and watches it; canary moves traffic in \
weighted steps with a gate at each; rolling replaces one instance at a time.\n\n\
Exit codes: 0 deployed, 1 failed and reverted (nothing changed for users), 2 usage or config \
error, 3 the deploy lock is held by someone else."
    )]
    Deploy(DeployArgs),
    /// Roll back to the previous successful release (or a version you name)
    #[command(
        long_about = "Roll back every service of the last release (or those named with \
--service) to the version each ran before, or to VERSION. While the previous version is still \
running (warm) this is an instant route switch; otherwise it is started like a deploy.\n\n\
Asks for confirmation on a terminal; without one it refuses unless --force.\n\
Exit codes as for deploy."
    )]
    Rollback(RollbackArgs),
    /// Control and show monitoring: collection, alert evaluation and notifications
    #[command(
        long_about = "Control monitoring in the running daemon: --action start|stop collection \
(add --alerts to start or stop alert evaluation and notifications instead), restart (reopen the \
history, rebuild rules and notifiers from the config), or status: what is collected, series and \
bytes on disk, last evaluation, firing and pending alerts, each notifier's last delivery and each \
service's health score. The choice persists across daemon restarts."
    )]
    Monitor(crate::monitor_cmd::MonitorArgs),
    /// Stop the release in progress and revert what it switched (same as `prod deploy --abort`)
    Abort,
    /// Security audit: findings with IDs, severities and fixes (table, JSON, SARIF, JUnit)
    #[command(
        long_about = "Audit the platform's security: config, files, and (when the daemon runs) its \
processes and sockets. Each finding has a stable ID (docs/audit.md), a severity, where it is and \
how to fix it; a check that could not run is reported as not run with the reason, never as a \
pass. Without a daemon the audit runs offline and says what it did not check.\n\n\
Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 usage error."
    )]
    Audit(crate::audit_cmd::AuditArgs),
    /// Can this version be deployed now? Every check PASS, FAIL or WARN (could not check)
    #[command(
        long_about = "Check, before anything starts, that a deploy can work: the config file \
validates (and what would change per service), the release's program or image is there, memory, \
disk, ports and file descriptors suffice, no release runs and the deploy lock is free, the \
services are healthy, the pre_deploy hook is executable; with --check-dependencies every \
dependency answers its protocol. Each check has a stable ID (docs/deploys.md).\n\n\
Every deploy runs the same checks first ([deploy] validate = true by default; --no-validate skips \
them).\n\nExit codes: 0 ready, 1 not ready, 2 usage error."
    )]
    Validate(ValidateArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ValidateArgs {
    /// The version to check [default: each service's running version]
    #[arg(long)]
    pub version: Option<String>,
    /// Check only this service (repeat for more)
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Also probe every dependency (PostgreSQL, Redis, HTTP, TCP) and time it
    #[arg(long)]
    pub check_dependencies: bool,
    /// Also the security checks that concern the release
    #[arg(long)]
    pub security_scan: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args, Clone)]
pub struct DeployArgs {
    /// The version to deploy (replaces {version} in the services' command)
    #[arg(required_unless_present = "abort")]
    pub version: Option<String>,
    /// Instead of deploying: stop the release in progress and revert what it switched
    #[arg(long, conflicts_with = "version")]
    pub abort: bool,
    /// blue_green (also blue-green), canary or rolling [default: the config's [deploy] strategy]
    #[arg(long)]
    pub strategy: Option<String>,
    /// Deploy only this service (repeat for more)
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Why, for the history and the audit trail
    #[arg(long)]
    pub reason: Option<String>,
    /// Wait up to this long for a deploy lock someone else holds (e.g. 5m)
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: std::time::Duration,
    /// Do not ask for confirmation; failed validation checks only warn (a missing program or
    /// image still stops the deploy)
    #[arg(long)]
    pub force: bool,
    /// Run `prod validate`'s checks first (the default, from [deploy] validate)
    #[arg(long, conflicts_with = "no_validate")]
    pub validate: bool,
    /// Skip the validation checks
    #[arg(long)]
    pub no_validate: bool,
    /// Back up every [backup] source (verified) before anything starts; a failed backup stops
    /// the deploy (with --force it only warns) [default: the config's [deploy] backup]
    #[arg(long)]
    pub backup: bool,
    /// table: one line per step; json: one JSON object per line
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args, Clone)]
pub struct ScaleArgs {
    /// The service
    pub service: String,
    /// How many instances (1 to 256)
    pub instances: u32,
    /// Why, for the history and the audit trail
    #[arg(long)]
    pub reason: Option<String>,
    /// Wait up to this long for a deploy lock someone else holds (e.g. 5m)
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: std::time::Duration,
    /// Do not ask for confirmation
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args, Clone)]
pub struct RestartArgs {
    /// The services to restart
    #[arg(required = true)]
    pub services: Vec<String>,
    /// Do not ask for confirmation
    #[arg(long)]
    pub force: bool,
    /// Why, for the history and the audit trail
    #[arg(long)]
    pub reason: Option<String>,
    /// Wait up to this long for a deploy lock someone else holds (e.g. 5m)
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: std::time::Duration,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args, Clone)]
pub struct RollbackArgs {
    /// The version to go back to [default: the previous successful one]
    pub version: Option<String>,
    /// Same as VERSION
    #[arg(long, conflicts_with = "version")]
    pub to_version: Option<String>,
    /// Roll back only this service (repeat for more)
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Why, for the history and the audit trail
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: std::time::Duration,
    /// Do not ask for confirmation (required without a terminal)
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Answer every request of these services 503 with Retry-After
    On {
        #[arg(required = true)]
        services: Vec<String>,
        /// What clients are told to wait before retrying
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        retry_after: std::time::Duration,
        /// Why, for the event and `status`
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Serve these services again
    Off {
        #[arg(required = true)]
        services: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Hand the running daemon over to a new process of the same binary
    Restart {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Hand the running daemon over to a new binary (a newer tcf-platform)
    Upgrade {
        /// The new tcf-platform binary
        #[arg(long)]
        binary: std::path::PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Every certificate in use: service, hostnames, issuer, expiry, source, last attempt
    /// (exit 2 when one has expired)
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Reload the certificates from their files now (they are also reloaded when they change)
    Reload {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Get new certificates from ACME now, due or not (renewal otherwise runs 30 days before
    /// expiry)
    Renew {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the deploy lock, why and until when
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Release the deploy lock (refused while a release runs, unless --force)
    Release {
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum VerifyLevel {
    /// Every artifact's size and SHA-256 (no key or server needed)
    #[default]
    Checksums,
    /// Checksums, then restore each artifact into a scratch database, a throwaway redis-server
    /// or a scratch directory and compare with what the manifest recorded
    Restore,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up every source (or one) and verify the stored checksums
    Create {
        /// Only this [backup.sources.NAME]
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List completed backups, oldest first, with their last verification
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Check a backup: checksums, or a real restore into a scratch place
    Verify {
        /// The backup's id (see `backup list`)
        id: String,
        #[arg(long, value_enum, default_value_t)]
        level: VerifyLevel,
        /// An age identity file, to read encrypted backups [default: [backup] identity]
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Replace the live data with a backup (a recovery-point backup is taken first)
    #[command(
        long_about = "Restore backup ID over the live data of every source in it (or --source). \
Every artifact's checksum is checked first, then a recovery-point backup of the same sources is \
taken; each database is restored into a new database and swapped in only once it matches the \
manifest, a directory is extracted beside the live one and swapped in, Redis is flushed and \
refilled from a throwaway server loaded with the RDB.\n\n\
Asks for confirmation on a terminal; refuses without one, or while services that use the source \
are running, unless --force."
    )]
    Restore {
        id: String,
        /// Only this source
        #[arg(long)]
        source: Option<String>,
        /// Do not ask, and restore even while services that use the source run
        #[arg(long)]
        force: bool,
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete backups the [backup] retention policy does not keep
    #[command(
        long_about = "Apply [backup] retention with restic's semantics (keep_last, keep_hourly, \
keep_daily, keep_weekly, keep_monthly, keep_yearly; UTC calendar buckets). Never deletes the \
newest verified backup nor the pre-deploy backups of the active and previous release."
    )]
    Prune {
        /// Show what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write it like 30s, 2m or 500ms)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Deployer,
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it (the only time it is shown)
    Create {
        /// Its name: the actor recorded for what it does (letters, digits, '-', '_', '.')
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Expire after this long (90d, 12h, ...); default: never
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Tokens with role, creation, expiry and last use (never the token)
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Revoke a token: it is refused from now on
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set a secret from stdin (one value; a final newline is dropped) or --from-file
    Set {
        name: String,
        /// Read the value from this file instead of stdin
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Secrets with when and by whom they were set, and which services use them (never values)
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a secret
    Rm { name: String },
    /// Set every NAME=value of a .env file
    Import { file: PathBuf },
}

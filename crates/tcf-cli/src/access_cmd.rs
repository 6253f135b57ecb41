//! `tokens` and `secrets`, and reaching a remote daemon (`--host`). Secrets work without a
//! daemon: with none running, the store is written directly under the daemon's lock.

use crate::cli::{Cli, Format, RoleArg, SecretsCommand, TokensCommand};
use crate::{client, load_config, print_json, print_text, CmdResult};
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use tcf_api::access::{
    CreateToken, SecretInfo, SecretsChanged, SetSecrets, TokenCreated, TokenInfo,
};
use tcf_api::remote::{Remote, Trust};
use tcf_api::ClientError;

/// The remote daemon `--host`/`TCF_HOST` names, with its token and how to trust it.
pub fn remote(cli: &Cli) -> anyhow::Result<Option<Remote>> {
    let Some(url) = &cli.host else {
        return Ok(None);
    };
    let token = match &cli.token_file {
        Some(file) => {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?;
            warn_if_others_can_read(file);
            token
        }
        None => std::env::var("TCF_TOKEN").unwrap_or_default(),
    };
    let trust = match (&cli.fingerprint, &cli.ca) {
        (Some(fp), None) => Trust::Fingerprint(normalize_fingerprint(fp)?),
        (None, Some(ca)) => {
            use tcf_api::remote::pem::{CertificateDer, PemObject};
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", ca.display()))?;
            Trust::Ca(certs)
        }
        (Some(_), Some(_)) => anyhow::bail!("give --fingerprint or --ca, not both"),
        (None, None) => anyhow::bail!(
            "{url}: say how to trust its certificate: --fingerprint SHA256 (the daemon prints it at start; `status --format json` on its host shows api.fingerprint_sha256) or --ca FILE"
        ),
    };
    Ok(Some(
        Remote::new(url, &token, trust).map_err(anyhow::Error::msg)?,
    ))
}

/// A token is a password: say so when a token file's mode lets the group or others read it
/// (as ssh does for a private key; a warning, since the file may be on a filesystem without
/// Unix modes).
fn warn_if_others_can_read(file: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: the token file {} can be read by others (mode {mode:03o}): chmod 600 {}",
                file.display(),
                file.display()
            );
        }
    }
}

fn normalize_fingerprint(text: &str) -> anyhow::Result<String> {
    tcf_auth::cert::normalize_fingerprint(text).ok_or_else(|| {
        anyhow::anyhow!(
            "--fingerprint {text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        )
    })
}

pub async fn tokens(cli: &Cli, command: &TokensCommand) -> CmdResult {
    let client = client(cli)?;
    match command {
        TokensCommand::Create {
            name,
            role,
            expires,
            format,
        } => {
            let expires_s = match expires {
                None => None,
                Some(text) => Some(
                    humantime::parse_duration(text)
                        .map_err(|e| {
                            anyhow::anyhow!("--expires {text:?}: {e} (use 90d, 12h, ...)")
                        })?
                        .as_secs(),
                ),
            };
            let role = match role {
                RoleArg::Viewer => "viewer",
                RoleArg::Deployer => "deployer",
                RoleArg::Admin => "admin",
            };
            let created: TokenCreated = client
                .post(
                    "/v1/tokens",
                    &CreateToken {
                        name: name.clone(),
                        role: role.into(),
                        expires_s,
                    },
                )
                .await?;
            match format {
                Format::Json => print_json(&created)?,
                Format::Table => {
                    print_text(&format!("{}\n", created.token))?;
                    eprintln!(
                        "token {} ({}{}) created; this is the only time it is shown: keep it in a secret store",
                        created.name,
                        created.role,
                        created
                            .expires
                            .map_or(String::new(), |e| format!(", expires {e}"))
                    );
                }
            }
        }
        TokensCommand::List { format } => {
            let list: Vec<TokenInfo> = client.get("/v1/tokens").await?;
            match format {
                Format::Json => print_json(&list)?,
                Format::Table => {
                    let mut out = format!(
                        "{:<20} {:<9} {:<25} {:<25} {:<25} {}\n",
                        "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "REVOKED"
                    );
                    for t in list {
                        out.push_str(&format!(
                            "{:<20} {:<9} {:<25} {:<25} {:<25} {}\n",
                            t.name,
                            t.role,
                            t.created,
                            t.expires.unwrap_or_else(|| "never".into()),
                            t.last_used.unwrap_or_else(|| "-".into()),
                            t.revoked.unwrap_or_else(|| "-".into())
                        ));
                    }
                    print_text(&out)?;
                }
            }
        }
        TokensCommand::Revoke { name } => {
            let t: TokenInfo = client
                .post(&format!("/v1/tokens/{name}/revoke"), &serde_json::json!({}))
                .await?;
            print_text(&format!(
                "token {} revoked ({})\n",
                t.name,
                t.revoked.unwrap_or_default()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn local_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {}", nix::unistd::getuid()), |u| u.name)
}

/// A value from stdin or a file; one final newline is not part of it.
fn read_value(name: &str, from_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let mut value = String::new();
    match from_file {
        Some(f) => {
            value = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {} (for the secret {name})", f.display()))?
        }
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("type the value of {name}, then Enter and Ctrl-D:");
            }
            std::io::stdin()
                .read_to_string(&mut value)
                .context("cannot read the value from stdin")?;
        }
    }
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        anyhow::bail!("the value of {name} is empty; give it on stdin or with --from-file FILE");
    }
    Ok(value)
}

/// Run `online` against the daemon; when none runs (and none is remote), `offline` on the store.
async fn with_daemon_or_store<T>(
    cli: &Cli,
    online: impl AsyncFnOnce(tcf_api::Client) -> Result<T, ClientError>,
    offline: impl FnOnce(&tcf_store::Store, &tcf_config::Config) -> Result<T, String>,
) -> anyhow::Result<T> {
    let client = client(cli)?;
    let remote = client.is_remote();
    match online(client).await {
        Err(ClientError::NotRunning { .. }) if !remote => {
            let config = load_config(cli)?;
            let dir = config.platform.state_dir.clone();
            let result = tcf_daemon::access::offline(&dir, |store| offline(store, &config))?;
            result.map_err(anyhow::Error::msg)
        }
        other => Ok(other?),
    }
}

pub async fn secrets(cli: &Cli, command: &SecretsCommand) -> CmdResult {
    match command {
        SecretsCommand::Set { name, from_file } => {
            let value = read_value(name, from_file.as_deref())?;
            set_secrets(cli, BTreeMap::from([(name.clone(), value)])).await?;
        }
        SecretsCommand::Import { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let pairs = tcf_daemon::access::parse_dotenv(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if pairs.is_empty() {
                return Err(anyhow::anyhow!("{} holds no NAME=value lines", file.display()).into());
            }
            set_secrets(cli, pairs.into_iter().collect()).await?;
        }
        SecretsCommand::List { format } => list_secrets(cli, *format).await?,
        SecretsCommand::Rm { name } => remove_secret(cli, name).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_secrets(cli: &Cli, format: Format) -> anyhow::Result<()> {
    let list: Vec<SecretInfo> = with_daemon_or_store(
        cli,
        async |c| c.get("/v1/secrets").await,
        tcf_daemon::access::list_secrets,
    )
    .await?;
    match format {
        Format::Json => print_json(&list)?,
        Format::Table => {
            let mut out = format!(
                "{:<24} {:<25} {:<16} {}\n",
                "NAME", "UPDATED", "BY", "USED BY"
            );
            for s in list {
                out.push_str(&format!(
                    "{:<24} {:<25} {:<16} {}\n",
                    s.name,
                    s.updated,
                    s.updated_by,
                    if s.used_by.is_empty() {
                        "-".to_string()
                    } else {
                        s.used_by.join(", ")
                    }
                ));
            }
            print_text(&out)?;
        }
    }
    Ok(())
}

async fn remove_secret(cli: &Cli, name: &str) -> anyhow::Result<()> {
    let n = name.to_string();
    let changed: SecretsChanged = with_daemon_or_store(
        cli,
        async |c| {
            c.send("DELETE", &format!("/v1/secrets/{name}"), None)
                .await
                .map(|_| SecretsChanged {
                    names: vec![name.to_string()],
                    stale_services: Vec::new(),
                })
        },
        move |store, _| match tcf_daemon::access::remove_secret(store, &n)? {
            true => Ok(SecretsChanged {
                names: vec![n],
                stale_services: Vec::new(),
            }),
            false => Err(format!(
                "no secret named {n}; see `tcf-platform secrets list`"
            )),
        },
    )
    .await?;
    print_text(&format!("secret {} removed\n", changed.names.join(", ")))?;
    Ok(())
}

async fn set_secrets(cli: &Cli, values: BTreeMap<String, String>) -> anyhow::Result<()> {
    let body = SetSecrets {
        secrets: values.clone(),
    };
    let actor = local_user();
    let changed: SecretsChanged = with_daemon_or_store(
        cli,
        async |c| c.post("/v1/secrets", &body).await,
        move |store, config| {
            let names = tcf_daemon::access::set_secrets(
                store,
                &config.platform.state_dir,
                &values,
                &actor,
            )?;
            Ok(SecretsChanged {
                names,
                stale_services: Vec::new(),
            })
        },
    )
    .await?;
    print_text(&format!("secret {} set\n", changed.names.join(", ")))?;
    if !changed.stale_services.is_empty() {
        eprintln!(
            "{} still run the old value until the next deploy (`tcf-platform prod deploy VERSION`)",
            changed.stale_services.join(", ")
        );
    }
    Ok(())
}

/// The first `${secret:NAME}` the config refers to that the store does not hold (read from a
/// copy of the store, so a running daemon is not disturbed), as a message naming it.
pub fn missing_secret(config: &tcf_config::Config) -> Option<String> {
    if let Some(e) = tcf_daemon::access::malformed_reference(config) {
        return Some(e);
    }
    // Services' env and `[backup]` passwords alike.
    let mut users = tcf_daemon::access::secret_users(config);
    for (secret, who) in tcf_daemon::access::backup_secret_users(config) {
        users.entry(secret).or_default().extend(who);
    }
    if users.is_empty() {
        return None;
    }
    let existing: Vec<String> = tcf_store::Store::open_read_only(&config.platform.state_dir)
        .and_then(|s| s.secrets())
        .map(|rows| rows.into_iter().map(|r| r.name).collect())
        .unwrap_or_default();
    users
        .into_iter()
        .find(|(name, _)| !existing.contains(name))
        .map(|(name, services)| {
            format!(
                "{} refers to the secret {name}, which is not set\nhint: set it with `tcf-platform secrets set {name}` (the value on stdin)",
                services.join(", ")
            )
        })
}

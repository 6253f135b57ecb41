//! `tls status` and `tls reload` (docs/tls.md): the daemon's certificates.

use crate::cli::{Cli, Format, TlsCommand};
use crate::{client, print_json, print_text, CmdResult, Failure};
use std::process::ExitCode;
use tcf_api::tls::{TlsReload, TlsStatus};

pub async fn run(cli: &Cli, command: &TlsCommand) -> CmdResult {
    let client = client(cli)?;
    match command {
        TlsCommand::Status { format } => {
            let status: TlsStatus = client.get("/v1/tls").await?;
            match format {
                Format::Json => print_json(&status)?,
                Format::Table => print_text(&table(&status))?,
            }
            // An expired certificate is a failure a script must see.
            if status.certificates.iter().any(|c| c.expired) {
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        TlsCommand::Reload { format } => {
            let reload: TlsReload = client
                .post("/v1/tls/reload", &serde_json::json!({}))
                .await?;
            outcomes(
                &reload,
                *format,
                "reloaded",
                "no service has certificates from files",
            )
        }
        TlsCommand::Renew { format } => {
            let renew: TlsReload = client.post("/v1/tls/renew", &serde_json::json!({})).await?;
            outcomes(
                &renew,
                *format,
                "renewed",
                "no service gets its certificates from ACME",
            )
        }
    }
}

/// Print what a reload or renewal did; exit 1 when one failed.
fn outcomes(outcome: &TlsReload, format: Format, done: &str, none: &str) -> CmdResult {
    match format {
        Format::Json => print_json(outcome)?,
        Format::Table => {
            let mut out = String::new();
            for s in &outcome.services {
                match &s.error {
                    Some(e) => out.push_str(&format!("{}: not {done}: {e}\n", s.service)),
                    None => out.push_str(&format!("{}: {done}\n", s.service)),
                }
            }
            if outcome.services.is_empty() {
                out.push_str(none);
                out.push('\n');
            }
            print_text(&out)?;
        }
    }
    if let Some(failed) = outcome.services.iter().find(|s| s.error.is_some()) {
        return Err(Failure {
            code: 1,
            error: anyhow::anyhow!(
                "the certificates of {} were not {done} (the ones in use stay): {}",
                failed.service,
                failed.error.clone().unwrap_or_default()
            ),
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn table(status: &TlsStatus) -> String {
    if status.certificates.is_empty() {
        return "no service serves HTTPS\n".into();
    }
    let mut out = format!(
        "{:<14} {:<28} {:<22} {:<21} {:>9}  {:<6} {}\n",
        "SERVICE", "HOSTNAMES", "ISSUER", "NOT AFTER", "DAYS LEFT", "SOURCE", "LAST ATTEMPT"
    );
    for c in &status.certificates {
        let days = if c.expired {
            format!("EXPIRED {}", c.days_left)
        } else {
            c.days_left.to_string()
        };
        let attempt = match (&c.last_attempt, &c.last_error) {
            (Some(at), Some(e)) => format!("{at} failed: {e}"),
            (Some(at), None) => format!("{at} ok"),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<14} {:<28} {:<22} {:<21} {:>9}  {:<6} {}\n",
            c.service,
            c.hostnames.join(","),
            c.issuer,
            c.not_after,
            days,
            c.source,
            attempt
        ));
    }
    out
}

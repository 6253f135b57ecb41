//! `tcf-platform init --from-compose`: write a tcf-platform.toml from docker compose files.

use crate::cli::{Format, InitArgs};
use crate::{print_json, print_text, CmdResult, Failure};
use anyhow::anyhow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tcf_compose::{Options, Translation, Variables};

/// A usage or input problem: exit 2.
fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

pub fn init(args: &InitArgs) -> CmdResult {
    let cwd =
        std::env::current_dir().map_err(|e| anyhow!("cannot read the current directory: {e}"))?;
    let files: Vec<PathBuf> = if args.from_compose.is_empty() {
        let found = tcf_compose::discover(&cwd);
        if found.is_empty() {
            return Err(usage(anyhow!(
                "no compose file in {} (compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml)\nhint: pass --from-compose FILE (repeat it to merge several, as docker compose -f does)",
                cwd.display()
            )));
        }
        found
    } else {
        args.from_compose.clone()
    };
    if !args.dry_run && args.output.exists() && !args.force {
        return Err(usage(anyhow!(
            "{} exists; pass --force to overwrite it, or --dry-run to print the config instead",
            args.output.display()
        )));
    }

    let project =
        tcf_compose::load(&files, &Variables::from_process()).map_err(|e| usage(anyhow!("{e}")))?;
    let options = Options {
        keep_stores_as_services: args.keep_stores_as_services,
    };
    let translation = tcf_compose::translate(&project, &options);
    let text = tcf_compose::render(&translation);

    // The file must pass `config validate` as written; resolve it as if it were already there.
    let output_abs = std::path::absolute(&args.output).unwrap_or_else(|_| cwd.join(&args.output));
    if let Err(diagnostics) = tcf_config::resolve(&output_abs, &text, None) {
        return Err(anyhow!(
            "the config written from these compose files does not validate (a bug in init: please report it with the compose files):\n{}",
            tcf_config::render(&args.output, &text, &diagnostics)
        )
        .into());
    }

    report_to_stderr(&translation);
    if !args.dry_run {
        write_config(&args.output, &text, args.force)?;
    }
    match args.format {
        Format::Json => print_json(&Report {
            output: args.output.display().to_string(),
            written: !args.dry_run,
            translation: &translation,
        })?,
        Format::Table if args.dry_run => print_text(&text)?,
        Format::Table => {}
    }
    if !args.dry_run {
        let config_flag = if args.output == Path::new(tcf_config::DEFAULT_FILE_NAME) {
            String::new()
        } else {
            format!(" --config {}", args.output.display())
        };
        eprintln!(
            "wrote {}: {} service(s), {} dependenc{}. Review it, then: tcf-platform config validate{config_flag} && tcf-platform up{config_flag}",
            args.output.display(),
            translation.services.len(),
            translation.dependencies.len(),
            if translation.dependencies.len() == 1 { "y" } else { "ies" },
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Report<'a> {
    output: String,
    written: bool,
    #[serde(flatten)]
    translation: &'a Translation,
}

/// What the user must review, on stderr (stdout carries the config or the JSON report).
fn report_to_stderr(t: &Translation) {
    let mut err = std::io::stderr().lock();
    if !t.untranslated.is_empty() {
        let _ = writeln!(
            err,
            "not translated ({}; also listed at the top of the config):",
            t.untranslated.len()
        );
        for f in &t.untranslated {
            let _ = writeln!(err, "  {}: {}", f.at, f.message);
        }
    }
    if !t.secrets.is_empty() {
        let _ = writeln!(
            err,
            "credentials kept out of the config ({}): the services refer to them as ${{secret:NAME}}; set each before `up` (the value on stdin):",
            t.secrets.len()
        );
        for s in &t.secrets {
            let _ = writeln!(
                err,
                "  tcf-platform secrets set {}    # {} env {}",
                s.name, s.service, s.key
            );
        }
    }
    if !t.notes.is_empty() {
        let _ = writeln!(err, "notes ({}):", t.notes.len());
        for f in &t.notes {
            let _ = writeln!(err, "  {}: {}", f.at, f.message);
        }
    }
}

/// Without --force the file is created only if it does not exist (checked again at creation);
/// with it, a temporary file is renamed over the old one so a reader never sees half a config.
fn write_config(path: &Path, text: &str, force: bool) -> Result<(), Failure> {
    let write_err = |e: std::io::Error| anyhow!("cannot write {}: {e}", path.display());
    if !force {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    usage(anyhow!(
                        "{} exists; pass --force to overwrite it",
                        path.display()
                    ))
                } else {
                    Failure::from(write_err(e))
                }
            })?;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(write_err)?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e).into());
    }
    Ok(())
}

//! A [`Translation`] as a commented `tcf-platform.toml`.

use crate::translate::{Finding, ServiceOut, Translation};
use std::fmt::Write;

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_string()
    } else {
        q(s)
    }
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|i| q(i)).collect();
    format!("[{}]", inner.join(", "))
}

fn comment_block(out: &mut String, title: &str, findings: &[Finding]) {
    if findings.is_empty() {
        return;
    }
    let _ = writeln!(out, "#\n# {title}");
    for f in findings {
        let _ = writeln!(out, "#   {}: {}", f.at, one_line(&f.message));
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// The config text. It passes `tcf-platform config validate` as written.
pub fn render(t: &Translation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# tcf-platform.toml, written by `tcf-platform init --from-compose` from:"
    );
    for s in &t.sources {
        let _ = writeln!(out, "#   {s}");
    }
    if let Some(env) = &t.env_file {
        let _ = writeln!(out, "#   {env} (variables)");
    }
    let _ = writeln!(
        out,
        "# Review it, then check it with `tcf-platform config validate` and start with `tcf-platform up`.\n# docs/migrating.md explains every mapping."
    );
    comment_block(
        &mut out,
        "NOT TRANSLATED (no equivalent in tcf-platform; decide what to do with each):",
        &t.untranslated,
    );
    if !t.secrets.is_empty() {
        let _ = writeln!(
            out,
            "#\n# CREDENTIALS KEPT OUT OF THIS FILE: the services refer to them as ${{secret:NAME}}. Set each\n# one before `up` (the value from the compose file or its .env, on stdin; see docs/security.md):"
        );
        let mut seen = std::collections::BTreeSet::new();
        for s in &t.secrets {
            if seen.insert(&s.name) {
                let _ = writeln!(
                    out,
                    "#   tcf-platform secrets set {}    # {} of {}",
                    s.name, s.key, s.service
                );
            }
        }
    }
    comment_block(&mut out, "Notes:", &t.notes);

    let _ = writeln!(out, "\n[platform]\nname = {}", q(&t.platform));
    let _ = writeln!(
        out,
        "# store, logs and the API socket, relative to this file\nstate_dir = \".tcf\""
    );

    for s in &t.services {
        render_service(&mut out, s, t);
    }

    for d in &t.dependencies {
        let _ = writeln!(out);
        for c in &d.comments {
            let _ = writeln!(out, "# {}", one_line(c));
        }
        let _ = writeln!(out, "[dependencies.{}]", key(&d.name));
        let _ = writeln!(out, "kind = {}", q(&d.kind));
        let _ = writeln!(out, "address = {}", q(&d.address));
    }

    if !t.backup_sources.is_empty() {
        let _ = writeln!(
            out,
            "\n# PROPOSED [backup] (not active: tcf-platform has no backups yet; uncomment once\n# `tcf-platform backup` exists and check the keys against docs/configuration.md):\n#\n# [backup]\n# repository = \"/var/backups/{}\"",
            t.platform
        );
        for b in &t.backup_sources {
            let _ = writeln!(
                out,
                "#\n# [backup.sources.{}]\n# kind = {}",
                key(&b.name),
                q(&b.kind)
            );
            if let Some(d) = &b.dependency {
                let _ = writeln!(out, "# dependency = {}", q(d));
            }
            if let Some(p) = &b.path {
                let _ = writeln!(out, "# path = {}", q(p));
            }
        }
    }
    out
}

fn render_service(out: &mut String, s: &ServiceOut, t: &Translation) {
    let _ = writeln!(out);
    let _ = writeln!(out, "# compose service {:?}", s.compose_service);
    for c in &s.comments {
        let _ = writeln!(out, "# {}", one_line(c));
    }
    let _ = writeln!(out, "[services.{}]", key(&s.name));
    let _ = writeln!(out, "runtime = \"docker\"");
    let _ = writeln!(out, "image = {}", q(&s.image));
    let _ = writeln!(out, "version = {}", q(&s.version));
    let _ = writeln!(out, "listen = {}", q(&s.listen));
    let _ = writeln!(out, "container_port = {}", s.container_port);
    if let Some(n) = s.instances {
        let _ = writeln!(out, "instances = {n}");
    }
    if !s.depends_on.is_empty() {
        let _ = writeln!(out, "depends_on = {}", list(&s.depends_on));
    }
    if let Some(c) = &s.command {
        let _ = writeln!(out, "command = {}", list(c));
    }
    if let Some(e) = &s.entrypoint {
        let _ = writeln!(out, "entrypoint = {}", list(e));
    }
    if let Some(u) = &s.user {
        let _ = writeln!(out, "user = {}", q(u));
    }
    if let Some(r) = s.read_only {
        let _ = writeln!(out, "read_only = {r}");
    }
    if !s.volumes.is_empty() {
        let _ = writeln!(out, "volumes = {}", list(&s.volumes));
    }
    if let Some(m) = &s.memory {
        let _ = writeln!(out, "memory = {}", q(m));
    }
    if let Some(c) = s.cpus {
        let _ = writeln!(out, "cpus = {}", toml::Value::Float(c));
    }
    if let Some(st) = &s.stop_timeout {
        let _ = writeln!(out, "stop_timeout = {}", q(st));
    }
    if let Some(n) = &s.network {
        let _ = writeln!(out, "network = {}", q(n));
    }
    if let Some(p) = &s.pull {
        let _ = writeln!(out, "pull = {}", q(p));
    }

    let h = &s.health;
    let _ = writeln!(out, "\n[services.{}.health]", key(&s.name));
    let _ = writeln!(out, "# {}", one_line(&h.from));
    let _ = writeln!(out, "probe = {}", q(&h.probe));
    if let Some(p) = &h.path {
        let _ = writeln!(out, "path = {}", q(p));
    }
    for (k, v) in [
        ("interval", &h.interval),
        ("timeout", &h.timeout),
        ("start_period", &h.start_period),
        ("deadline", &h.deadline),
    ] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {}", q(v));
        }
    }
    if let Some(n) = h.unhealthy_threshold {
        let _ = writeln!(out, "unhealthy_threshold = {n}");
    }

    let secrets: Vec<_> = t.secrets.iter().filter(|x| x.service == s.name).collect();
    if !s.env.is_empty() || !secrets.is_empty() {
        let _ = writeln!(out, "\n[services.{}.env]", key(&s.name));
        for (k, v) in &s.env {
            let _ = writeln!(out, "{} = {}", key(k), q(v));
        }
        for x in secrets {
            let _ = writeln!(
                out,
                "{} = {}  # a credential: `tcf-platform secrets set {}`",
                key(&x.key),
                q(&format!("${{secret:{}}}", x.name)),
                x.name
            );
        }
    }
}

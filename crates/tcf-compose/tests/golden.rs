//! Golden tests: compose projects under tests/fixtures, their translation pinned as insta
//! snapshots, and every output checked by tcf-config's own validator (what `config validate` runs).

use std::path::{Path, PathBuf};
use tcf_compose::{Options, Translation, Variables};

fn fixture(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

/// Only the given variables: the test must not depend on the environment it runs in.
fn vars(pairs: &[(&str, &str)]) -> Variables {
    let mut v = Variables::new();
    for (k, val) in pairs {
        v.add_missing(k, val);
    }
    v
}

/// Translate, render, validate with tcf-config; returns the config text with the fixture's
/// absolute directory replaced so snapshots do not depend on where the repository is.
fn translate(files: &[PathBuf], shell: &Variables, options: &Options) -> (String, Translation) {
    let project = tcf_compose::load(files, shell).unwrap();
    let translation = tcf_compose::translate(&project, options);
    let text = tcf_compose::render(&translation);
    let config_path = project.dir.join("tcf-platform.toml");
    if let Err(diagnostics) = tcf_config::resolve(&config_path, &text, None) {
        panic!(
            "the generated config does not validate:\n{}\n{text}",
            tcf_config::render(&config_path, &text, &diagnostics)
        );
    }
    let dir = project.dir.display().to_string();
    (text.replace(&dir, "[FIXTURE]"), translation)
}

fn report(t: &Translation) -> String {
    let dir = fixture("").parent().unwrap().display().to_string();
    serde_json::to_string_pretty(t)
        .unwrap()
        .replace(&dir, "[TESTS]")
}

#[test]
fn the_tcf_layout_with_its_override_and_env() {
    // Discovered as `docker compose` would: docker-compose.yml, then the override file.
    let files = tcf_compose::discover(&fixture("tcf"));
    assert_eq!(files.len(), 2, "{files:?}");
    let (text, t) = translate(&files, &vars(&[]), &Options::default());
    insta::assert_snapshot!("tcf", text);

    // The override's values won, the .env's interpolations were applied.
    let gateway = t.services.iter().find(|s| s.name == "gateway").unwrap();
    assert_eq!(gateway.instances, Some(2));
    assert_eq!(gateway.version, "1.5.2");
    assert_eq!(gateway.image, "tcf/gateway:{version}");
    assert_eq!(gateway.memory.as_deref(), Some("512MiB"));
    assert_eq!(gateway.env["LOG_LEVEL"], "debug");
    let personas = t.services.iter().find(|s| s.name == "personas").unwrap();
    // environment (override) over env_file (common.env).
    assert_eq!(personas.env["LOG_LEVEL"], "debug");
    assert_eq!(personas.env["RUST_BACKTRACE"], "1");
    assert_eq!(personas.depends_on, ["postgres", "redis"]);
    // Stores became dependencies with their probe kinds, on the addresses the override publishes.
    let kinds: Vec<(&str, &str, &str)> = t
        .dependencies
        .iter()
        .map(|d| (d.name.as_str(), d.kind.as_str(), d.address.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("postgres", "postgres", "127.0.0.1:5432"),
            ("qdrant", "qdrant", "127.0.0.1:6333"),
            ("redis", "redis", "127.0.0.1:6379")
        ]
    );
    // Credentials are out of the file, each listed once.
    for secret in ["dev jwt secret", "tcf-dev-password", "sk-test-123"] {
        assert!(!text.contains(secret), "{secret} leaked into the config");
    }
    let secrets: Vec<(&str, &str)> = t
        .secrets
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    assert!(secrets.contains(&("gateway", "jwt_secret")), "{secrets:?}");
    assert!(
        secrets.contains(&("context", "openai_api_key")),
        "{secrets:?}"
    );
    // Three services hold different DATABASE_URLs: one secret each.
    assert!(
        secrets.contains(&("personas", "personas_database_url")),
        "{secrets:?}"
    );
    // Service-to-service URLs by compose name are pointed out.
    assert!(
        t.notes
            .iter()
            .any(|n| n.at == "services.gateway.environment.PERSONAS_URL"
                && n.message.contains("0.0.0.0:3001")),
        "{:#?}",
        t.notes
    );
    insta::assert_snapshot!("tcf_report", report(&t));
}

#[test]
fn the_shell_environment_wins_over_the_env_file() {
    let files = tcf_compose::discover(&fixture("tcf"));
    let (_, t) = translate(
        &files,
        &vars(&[("TCF_VERSION", "2.0.0")]),
        &Options::default(),
    );
    assert!(t.services.iter().all(|s| s.version == "2.0.0"));
}

#[test]
fn stores_can_stay_services() {
    let files = tcf_compose::discover(&fixture("tcf"));
    let options = Options {
        keep_stores_as_services: true,
    };
    let (text, t) = translate(&files, &vars(&[]), &options);
    assert!(t.dependencies.is_empty());
    let postgres = t.services.iter().find(|s| s.name == "postgres").unwrap();
    assert_eq!(postgres.listen, "127.0.0.1:5432");
    assert_eq!(postgres.health.probe, "tcp");
    assert_eq!(postgres.version, "16");
    assert!(text.contains("kept as a service"), "{text}");

    // Without the override nothing publishes the stores: they get their usual port on loopback.
    let base = vec![fixture("tcf/docker-compose.yml")];
    let (_, t) = translate(&base, &vars(&[]), &options);
    let listen = |name: &str| {
        t.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| (s.listen.clone(), s.container_port))
    };
    assert_eq!(listen("postgres"), Some(("127.0.0.1:5432".into(), 5432)));
    assert_eq!(listen("redis"), Some(("127.0.0.1:6379".into(), 6379)));
    assert_eq!(listen("qdrant"), Some(("127.0.0.1:6333".into(), 6333)));
}

#[test]
fn a_file_using_every_supported_key() {
    let files = vec![fixture("every-key/compose.yaml")];
    let (text, t) = translate(
        &files,
        &vars(&[("FROM_SHELL", "from the shell")]),
        &Options::default(),
    );
    insta::assert_snapshot!("every_key", text);
    insta::assert_snapshot!("every_key_report", report(&t));
    let api = t.services.iter().find(|s| s.name == "api").unwrap();
    assert_eq!(api.env["FROM_SHELL"], "from the shell");
    assert_eq!(api.env["GREETING"], "cost is $5");
    // environment over env_file.
    assert_eq!(api.env["LOG_FORMAT"], "json");
    assert_eq!(api.env["API_MODE"], "production");
    assert!(!api.env.contains_key("SESSION_SECRET") && !api.env.contains_key("DB_PASSWORD"));
    assert_eq!(
        api.command.as_deref().unwrap(),
        ["serve", "--bind", "0.0.0.0:8080", "--name", "the api"]
    );
    assert_eq!(api.health.path.as_deref(), Some("/ready?deep=1"));
    assert_eq!(api.health.interval.as_deref(), Some("90s"));
    assert_eq!(api.health.deadline.as_deref(), Some("70s"));
    assert_eq!(api.depends_on, ["db", "worker"]);
    let worker = t.services.iter().find(|s| s.name == "worker").unwrap();
    assert_eq!(worker.listen, "127.0.0.1:9000");
    assert_eq!(worker.image, "every-key-worker:{version}");
}

#[test]
fn untranslatable_keys_are_listed_never_dropped() {
    let files = vec![fixture("untranslatable/compose.yaml")];
    let (text, t) = translate(&files, &vars(&[]), &Options::default());
    insta::assert_snapshot!("untranslatable", text);
    let listed: Vec<&str> = t.untranslated.iter().map(|f| f.at.as_str()).collect();
    for key in [
        "services.proxy.privileged",
        "services.proxy.network_mode",
        "services.proxy.container_name",
        "services.proxy.cap_add",
        "services.proxy.logging",
        "services.proxy.labels",
        "services.proxy.secrets",
        "services.proxy.configs",
        "services.proxy.networks",
        "services.proxy.tmpfs",
        "services.proxy.ulimits",
        "services.proxy.extra_hosts",
        "services.proxy.ports",
        "services.app.build",
        "services.app.volumes",
        "services.app.stop_signal",
        "services.app.deploy.placement",
        "services.app.deploy.update_config",
        "services.app.made_up_key",
        "services.app.depends_on.migrate",
        "services.migrate",
        "networks",
        "secrets",
        "configs",
    ] {
        assert!(listed.contains(&key), "{key} is not listed: {listed:#?}");
        assert!(
            text.contains(&format!("#   {key}: ")),
            "{key} is not in the file's header"
        );
    }
}

#[test]
fn errors_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, "services:\n  web:\n    image: app:${TAG:?set TAG}\n").unwrap();
    let e = tcf_compose::load(std::slice::from_ref(&file), &vars(&[])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: services.web.image: required variable TAG is missing a value: set TAG",
            file.display()
        )
    );
    std::fs::write(&file, "services:\n  web: [\n").unwrap();
    let e = tcf_compose::load(std::slice::from_ref(&file), &vars(&[])).unwrap_err();
    assert!(e.to_string().contains("invalid YAML"), "{e}");
}

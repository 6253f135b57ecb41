//! From a merged compose model to the services and dependencies of a `tcf-platform.toml`, with
//! every compose key accounted for: translated, translated with a note, or listed as untranslated.

use crate::ports::{convert_size, format_duration_ms, parse_duration_ms, parse_port, shell_words};
use crate::project::Project;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Choices the user makes on the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep data stores (PostgreSQL, Redis, ...) as services run by us instead of
    /// `[dependencies]` we only probe.
    pub keep_stores_as_services: bool,
}

/// The result of a translation: what the config will hold and everything the user must review.
#[derive(Debug, Clone, Serialize)]
pub struct Translation {
    pub platform: String,
    /// The compose files, as given.
    pub sources: Vec<String>,
    /// The `.env` file whose variables were used, if any.
    pub env_file: Option<String>,
    pub services: Vec<ServiceOut>,
    pub dependencies: Vec<DependencyOut>,
    /// Compose keys with no equivalent: listed at the top of the config and on stderr.
    pub untranslated: Vec<Finding>,
    /// Keys translated with a change the user should know about.
    pub notes: Vec<Finding>,
    /// Credential-looking environment values kept out of the config.
    pub secrets: Vec<SecretTodo>,
    /// A proposed `[backup]` (written as a commented block).
    pub backup_sources: Vec<BackupSource>,
}

/// Where in the compose model, and what about it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub at: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretTodo {
    pub service: String,
    pub key: String,
    /// The name to give it in the secret store (`tcf-platform secrets set NAME`).
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSource {
    pub name: String,
    /// postgres, redis or directory.
    pub kind: String,
    pub dependency: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceOut {
    pub name: String,
    /// The compose service it came from.
    pub compose_service: String,
    pub image: String,
    pub version: String,
    pub listen: String,
    pub container_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    pub env: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    pub health: HealthOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<String>,
    /// Comment lines written above the service's table.
    pub comments: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct HealthOut {
    /// http or tcp.
    pub probe: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Where the probe came from, for the comment.
    pub from: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DependencyOut {
    pub name: String,
    pub compose_service: String,
    /// postgres, redis, qdrant or tcp.
    pub kind: String,
    pub address: String,
    pub image: String,
    pub comments: Vec<String>,
}

/// A well-known data store, recognised by its image.
struct Store {
    kind: &'static str,
    port: u16,
    label: &'static str,
}

/// Matched against the image's last path component (without tag).
fn store_for(image: &str) -> Option<Store> {
    let repo = split_image(image).0;
    let last = repo
        .rsplit('/')
        .next()
        .unwrap_or(&repo)
        .to_ascii_lowercase();
    let s = |kind, port, label| Some(Store { kind, port, label });
    match last.as_str() {
        "postgres" | "postgis" | "pgvector" | "timescaledb" | "timescaledb-ha" => {
            s("postgres", 5432, "PostgreSQL")
        }
        "redis" | "valkey" | "redis-stack-server" | "redis-stack" | "keydb" => {
            s("redis", 6379, "Redis")
        }
        "qdrant" => s("qdrant", 6333, "Qdrant"),
        "mysql" | "mariadb" | "percona-server" => s("tcp", 3306, "MySQL/MariaDB"),
        "mongo" | "mongodb-community-server" => s("tcp", 27017, "MongoDB"),
        "memcached" => s("tcp", 11211, "memcached"),
        "rabbitmq" => s("tcp", 5672, "RabbitMQ"),
        "elasticsearch" | "opensearch" => s("tcp", 9200, "Elasticsearch/OpenSearch"),
        "nats" => s("tcp", 4222, "NATS"),
        "minio" => s("tcp", 9000, "MinIO"),
        _ => None,
    }
}

/// `registry:5000/team/app:1.2@sha256:...` → (`registry:5000/team/app`, tag, digest).
pub fn split_image(image: &str) -> (String, Option<String>, Option<String>) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (image, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(colon) => (
            rest[..slash + colon].to_string(),
            Some(rest[slash + colon + 1..].to_string()),
            digest,
        ),
        None => (rest.to_string(), None, digest),
    }
}

/// Keys that become config keys (some with notes).
const TRANSLATED: &[&str] = &[
    "image",
    "build",
    "ports",
    "expose",
    "environment",
    "healthcheck",
    "deploy",
    "scale",
    "command",
    "entrypoint",
    "user",
    "read_only",
    "volumes",
    "depends_on",
    "stop_grace_period",
    "mem_limit",
    "cpus",
    "restart",
    "pull_policy",
    "profiles",
];

/// Compose Specification keys with no equivalent, and why.
fn untranslatable_reason(key: &str) -> Option<&'static str> {
    Some(match key {
        "privileged" => "containers never run privileged under tcf-platform",
        "network_mode" => "instances run on the platform's network with a port published on loopback; host (or another container's) networking is not supported",
        "networks" => "one network per platform (`network` in the config); the service's compose networks are not kept",
        "container_name" => "containers are named PLATFORM-INSTANCE so that two colours can run side by side",
        "labels" => "containers carry tcf.* labels only",
        "logging" => "logs go to capped per-instance files (`log_max_size`, `tcf-platform logs`)",
        "cap_add" | "cap_drop" => "Linux capabilities are not configurable",
        "security_opt" => "security options are not configurable",
        "devices" | "device_cgroup_rules" | "gpus" => "devices are not configurable",
        "extra_hosts" => "extra /etc/hosts entries are not configurable",
        "dns" | "dns_search" | "dns_opt" => "DNS settings are not configurable",
        "hostname" | "domainname" => "the container's hostname is not configurable",
        "working_dir" => "the working directory comes from the image (set WORKDIR in its Dockerfile)",
        "tmpfs" => "tmpfs mounts are not configurable",
        "ulimits" | "sysctls" | "shm_size" | "pids_limit" | "oom_kill_disable" | "oom_score_adj" => {
            "kernel limits are not configurable"
        }
        "stop_signal" => "instances are always stopped with SIGTERM, then SIGKILL after stop_timeout",
        "init" => "no init process is injected (use one in the image if the service needs it)",
        "tty" | "stdin_open" | "attach" => "instances run without a terminal",
        "pid" | "ipc" | "uts" | "userns_mode" | "cgroup" | "cgroup_parent" | "isolation" => {
            "namespace settings are not configurable"
        }
        "secrets" => "file-mounted secrets are not supported; keep the value in `tcf-platform secrets` and refer to it in env as ${secret:NAME}",
        "configs" => "file-mounted configs are not supported; mount a file with `volumes`",
        "links" | "external_links" => "links are not supported; services reach each other through their public addresses",
        "extends" => "extends is not resolved; inline the extended service",
        "platform" => "images are run for the engine's own platform",
        "mem_reservation" | "memswap_limit" | "mem_swappiness" | "cpu_shares" | "cpuset"
        | "cpu_count" | "cpu_percent" | "cpu_period" | "cpu_quota" | "cpu_rt_runtime"
        | "cpu_rt_period" | "blkio_config" => "only memory and cpus limits are supported",
        "group_add" | "credential_spec" | "storage_opt" | "volumes_from" | "mac_address"
        | "runtime" | "annotations" | "post_start" | "pre_stop" | "develop" | "use_api_socket"
        | "provider" | "models" | "label_file" => "no equivalent in tcf-platform's docker runtime",
        _ => return None,
    })
}

struct Candidate<'a> {
    compose_name: String,
    name: String,
    svc: &'a Map<String, Value>,
    image: Option<String>,
    store: Option<Store>,
}

#[derive(Default)]
struct Findings {
    untranslated: Vec<Finding>,
    notes: Vec<Finding>,
}

impl Findings {
    fn untranslated(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.untranslated.push(Finding {
            at: at.into(),
            message: message.into(),
        });
    }
    fn note(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.notes.push(Finding {
            at: at.into(),
            message: message.into(),
        });
    }
}

/// Translate a loaded project.
pub fn translate(project: &Project, options: &Options) -> Translation {
    let mut f = Findings::default();
    let model = &project.model;
    let empty = Map::new();
    let services = model
        .get("services")
        .and_then(Value::as_object)
        .unwrap_or(&empty);

    for (key, value) in model.as_object().unwrap_or(&empty) {
        match key.as_str() {
            "services" | "name" => {}
            "version" => f.note(key, "obsolete in compose; ignored"),
            "volumes" => {
                for (vol, def) in value.as_object().unwrap_or(&empty) {
                    for opt in ["driver", "driver_opts", "labels"] {
                        if def.get(opt).is_some() {
                            f.untranslated(
                                format!("volumes.{vol}.{opt}"),
                                "volume drivers and options are not configurable; create the volume yourself (docker volume create) before `up`",
                            );
                        }
                    }
                }
            }
            "networks" => {
                if value.as_object().is_some_and(|m| !m.is_empty()) {
                    f.untranslated(key, "one network per platform (`network` in the config); custom networks are not kept");
                }
            }
            "secrets" | "configs" => {
                f.untranslated(key, "file-mounted secrets and configs are not supported")
            }
            "include" => f.untranslated(
                key,
                "include is not resolved; pass every file with --from-compose",
            ),
            k if k.starts_with("x-") => f.note(
                key,
                "extension field (compose ignores it too; YAML anchors are already applied)",
            ),
            _ => f.untranslated(key, "not a Compose Specification top-level key"),
        }
    }

    // Names: ours allow letters, digits, '-' and '_'.
    let mut candidates = Vec::new();
    for (compose_name, svc) in services {
        let Some(svc) = svc.as_object() else { continue };
        let name: String = compose_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if &name != compose_name {
            f.note(
                format!("services.{compose_name}"),
                format!("renamed to {name} (service names take letters, digits, '-' and '_')"),
            );
        }
        let image = svc.get("image").and_then(Value::as_str).map(str::to_string);
        let store = image.as_deref().and_then(store_for);
        candidates.push(Candidate {
            compose_name: compose_name.clone(),
            name,
            svc,
            image,
            store,
        });
    }

    let store_names: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.store.is_some() && !options.keep_stores_as_services)
        .collect();
    // When stores stay in compose, app containers join compose's network so that the stores'
    // names (postgres, redis, ...) in their URLs still resolve.
    let store_network = store_names.first().map(|c| {
        let net = c
            .svc
            .get("networks")
            .and_then(|n| match n {
                Value::Array(list) => list.first().and_then(Value::as_str).map(str::to_string),
                Value::Object(m) => m.keys().next().cloned(),
                _ => None,
            })
            .unwrap_or_else(|| "default".to_string());
        let explicit = model
            .get("networks")
            .and_then(|n| n.get(&net))
            .and_then(|d| d.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        explicit.unwrap_or_else(|| format!("{}_{net}", project.name))
    });

    let mut used_ports: BTreeSet<u16> = BTreeSet::new();
    let mut dependencies = Vec::new();
    let mut backup_sources = Vec::new();
    let mut pending = Vec::new();

    // Published ports first, so unpublished services get ports nobody else takes.
    for c in &candidates {
        for p in c
            .svc
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Ok(m) = parse_port(p) {
                if let Some(port) = m.single_published() {
                    used_ports.insert(port);
                }
            }
        }
    }

    for c in &candidates {
        let at = format!("services.{}", c.compose_name);
        if let (Some(store), false) = (&c.store, options.keep_stores_as_services) {
            dependencies.push(store_dependency(project, c, store, &mut f));
            match store.kind {
                "postgres" | "redis" => backup_sources.push(BackupSource {
                    name: c.name.clone(),
                    kind: store.kind.to_string(),
                    dependency: Some(c.name.clone()),
                    path: None,
                }),
                _ => {}
            }
            continue;
        }
        if c.image.is_none() && c.svc.get("build").is_none() {
            f.untranslated(
                &at,
                "neither image nor build: nothing to run; not translated",
            );
            continue;
        }
        pending.push(c);
    }

    let dependency_names: BTreeMap<String, String> = dependencies
        .iter()
        .map(|d: &DependencyOut| (d.compose_service.clone(), d.name.clone()))
        .collect();

    let mut outs = Vec::new();
    for c in &pending {
        if let Some(out) = translate_service(
            project,
            c,
            &mut used_ports,
            store_network.as_deref(),
            &mut f,
            &mut backup_sources,
        ) {
            outs.push(out);
        }
    }

    // depends_on, now that every name is known.
    let service_names: BTreeMap<String, String> = outs
        .iter()
        .map(|s| (s.compose_service.clone(), s.name.clone()))
        .collect();
    for out in outs.iter_mut() {
        let Some(c) = pending
            .iter()
            .find(|c| c.compose_name == out.compose_service)
        else {
            continue;
        };
        let at = format!("services.{}.depends_on", c.compose_name);
        for (dep, spec) in c
            .svc
            .get("depends_on")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let condition = spec
                .get("condition")
                .and_then(Value::as_str)
                .unwrap_or("service_started");
            if condition == "service_completed_successfully" {
                f.untranslated(
                    format!("{at}.{dep}"),
                    "one-shot jobs (service_completed_successfully) are not run by tcf-platform; run it before `up` or as a pre_deploy hook",
                );
                continue;
            }
            if spec.get("required").and_then(Value::as_bool) == Some(false) {
                f.note(
                    format!("{at}.{dep}"),
                    "required: false is not kept: the dependency is required",
                );
            }
            if spec.get("restart").and_then(Value::as_bool) == Some(true) {
                f.note(format!("{at}.{dep}"), "restart: true is not kept: a restarted dependency does not restart this service");
            }
            match service_names.get(dep).or_else(|| dependency_names.get(dep)) {
                Some(name) => out.depends_on.push(name.clone()),
                None => f.note(
                    format!("{at}.{dep}"),
                    format!("{dep} was not translated, so this dependency is left out"),
                ),
            }
        }
    }

    // Service-to-service URLs by compose name: our containers are not reachable by service name.
    for out in &outs {
        for (k, v) in &out.env {
            for other in outs.iter().filter(|o| o.name != out.name) {
                if refers_to(v, &other.compose_service) {
                    f.note(
                        format!("services.{}.environment.{k}", out.compose_service),
                        format!(
                            "refers to {0} by its compose name, which does not resolve under tcf-platform (containers are named PLATFORM-INSTANCE): point it at {0}'s public address {1} (from a container: the docker network's gateway address and port {2})",
                            other.compose_service,
                            other.listen,
                            other.listen.rsplit(':').next().unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }

    let mut secrets = Vec::new();
    assign_secret_names(&mut outs, &mut secrets);

    let mut untranslated = f.untranslated;
    untranslated.sort();
    let mut notes = f.notes;
    notes.sort();
    for v in &project.unset_variables {
        notes.push(Finding {
            at: "interpolation".into(),
            message: format!("variable {v} is not set; it became an empty string, as in compose"),
        });
    }
    Translation {
        platform: project.name.clone(),
        sources: project
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        env_file: project.env_file.as_ref().map(|p| p.display().to_string()),
        services: outs,
        dependencies,
        untranslated,
        notes,
        secrets,
        backup_sources,
    }
}

fn store_dependency(
    project: &Project,
    c: &Candidate,
    store: &Store,
    f: &mut Findings,
) -> DependencyOut {
    let at = format!("services.{}", c.compose_name);
    let image = c.image.clone().unwrap_or_default();
    let mut comments = vec![format!(
        "compose service {:?} ({}, image {image}): a data store tcf-platform probes but does not start.",
        c.compose_name, store.label
    )];
    let published = c
        .svc
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| parse_port(p).ok())
        .find(|m| m.protocol == "tcp" && m.single_published().is_some());
    let address = match &published {
        Some(m) => {
            let ip = match m.host_ip.as_deref() {
                None | Some("0.0.0.0") | Some("::") => "127.0.0.1".to_string(),
                Some(ip) if ip.contains(':') => format!("[{ip}]"),
                Some(ip) => ip.to_string(),
            };
            format!("{ip}:{}", m.single_published().unwrap_or(store.port))
        }
        None => {
            f.note(
                &at,
                format!(
                    "not published on the host in compose: publish it (ports: [\"127.0.0.1:{0}:{0}\"]) so that tcf-platform can probe it at 127.0.0.1:{0}",
                    store.port
                ),
            );
            format!("127.0.0.1:{}", store.port)
        }
    };
    let files: Vec<String> = project
        .files
        .iter()
        .map(|p| {
            format!(
                "-f {}",
                p.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    comments.push(format!(
        "Keep running it as today: docker compose {} up -d {}",
        files.join(" "),
        c.compose_name
    ));
    DependencyOut {
        name: c.name.clone(),
        compose_service: c.compose_name.clone(),
        kind: store.kind.to_string(),
        address,
        image,
        comments,
    }
}

fn translate_service(
    project: &Project,
    c: &Candidate,
    used_ports: &mut BTreeSet<u16>,
    store_network: Option<&str>,
    f: &mut Findings,
    backup_sources: &mut Vec<BackupSource>,
) -> Option<ServiceOut> {
    let at = format!("services.{}", c.compose_name);
    let svc = c.svc;
    let mut comments = Vec::new();

    for key in svc.keys() {
        if TRANSLATED.contains(&key.as_str()) {
            continue;
        }
        if key.starts_with("x-") {
            f.note(
                format!("{at}.{key}"),
                "extension field; ignored as compose does",
            );
        } else if let Some(reason) = untranslatable_reason(key) {
            let reason = match (key.as_str(), svc.get(key).and_then(Value::as_str)) {
                ("network_mode", Some("host")) => "network_mode: host is not supported: instances run on the platform's network with a port published on loopback (our proxy serves the public port)",
                _ => reason,
            };
            f.untranslated(format!("{at}.{key}"), reason);
        } else {
            f.untranslated(
                format!("{at}.{key}"),
                "not a Compose Specification service key",
            );
        }
    }

    // Image and version.
    let (image, version) = match &c.image {
        Some(image) => {
            let (repo, tag, digest) = split_image(image);
            match (tag, digest) {
                (_, Some(digest)) => {
                    f.note(
                        format!("{at}.image"),
                        "pinned by digest: every version runs this same image; replace it with a {version} tag to deploy new versions",
                    );
                    let short: String = digest
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect();
                    (image.clone(), format!("sha256-{short}"))
                }
                (Some(tag), None) => (format!("{repo}:{{version}}"), tag),
                (None, None) => (format!("{repo}:{{version}}"), "latest".to_string()),
            }
        }
        None => {
            let image = format!("{}-{}", project.name, c.compose_name);
            f.untranslated(
                format!("{at}.build"),
                format!("tcf-platform does not build images: build and tag them yourself (`docker compose build` tags {image}:latest), then deploy tags"),
            );
            (format!("{image}:{{version}}"), "latest".to_string())
        }
    };
    if c.image.is_some() && svc.get("build").is_some() {
        f.untranslated(
            format!("{at}.build"),
            "tcf-platform does not build images: build and tag them yourself, then deploy the tag",
        );
    }
    if let Some(policy) = svc.get("pull_policy").and_then(Value::as_str) {
        if matches!(policy, "always" | "daily" | "weekly") || policy.starts_with("every_") {
            f.note(
                format!("{at}.pull_policy"),
                format!("{policy}: images are pulled only when missing (pull = \"missing\")"),
            );
        } else if policy == "build" {
            f.note(
                format!("{at}.pull_policy"),
                "build: images are never built by tcf-platform (pull = \"never\")",
            );
        }
    }
    let pull = svc
        .get("pull_policy")
        .and_then(Value::as_str)
        .map(|p| match p {
            "never" | "build" => "never".to_string(),
            _ => "missing".to_string(),
        });

    // Ports.
    let mut mappings = Vec::new();
    for p in svc
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match parse_port(p) {
            Ok(m) => mappings.push(m),
            Err(e) => f.untranslated(format!("{at}.ports"), format!("{e}; not translated")),
        }
    }
    let chosen = mappings.iter().position(|m| {
        m.protocol == "tcp" && m.single_target().is_some() && m.single_published().is_some()
    });
    for (i, m) in mappings.iter().enumerate() {
        if Some(i) == chosen {
            continue;
        }
        let why = if m.protocol != "tcp" {
            "only TCP (HTTP) ports are served"
        } else if m.single_target().is_none()
            || (m.published.is_some() && m.single_published().is_none())
        {
            "port ranges are not supported"
        } else if m.published.is_none() {
            "a port published on a random host port is not kept"
        } else {
            "a service has one public address: only the first port is served"
        };
        f.untranslated(format!("{at}.ports"), format!("{:?}: {why}", m.text));
    }
    let health_url_port = health_url(svc).and_then(|(port, _)| port);
    let (listen, container_port) = match chosen.map(|i| &mappings[i]) {
        Some(m) => {
            let ip = match m.host_ip.as_deref() {
                None => "0.0.0.0".to_string(),
                Some(ip) if ip.contains(':') => format!("[{ip}]"),
                Some(ip) => ip.to_string(),
            };
            let published = m.single_published().unwrap_or_default();
            (
                format!("{ip}:{published}"),
                m.single_target().unwrap_or_default(),
            )
        }
        None => {
            // Not published: it still needs a port for our proxy. Guess the container's port.
            let expose = svc
                .get("expose")
                .and_then(Value::as_array)
                .and_then(|l| l.first())
                .and_then(|v| match v {
                    Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
                    Value::String(s) => s.split('/').next().and_then(|p| p.parse().ok()),
                    _ => None,
                });
            let from_env = svc
                .get("environment")
                .and_then(|e| e.get("PORT"))
                .and_then(Value::as_str)
                .and_then(|p| p.parse::<u16>().ok());
            let unpublished_target = mappings.iter().find_map(|m| m.single_target());
            let store_port = c.store.as_ref().map(|s| s.port);
            let Some(port) = expose
                .or(unpublished_target)
                .or(health_url_port)
                .or(from_env)
                .or(store_port)
            else {
                f.untranslated(
                    &at,
                    "no port (ports, expose, a healthcheck URL or PORT): tcf-platform serves every service through its proxy and needs the port the service listens on; not translated",
                );
                return None;
            };
            let mut public = port;
            while used_ports.contains(&public) {
                public = public.checked_add(1).unwrap_or(1024);
            }
            used_ports.insert(public);
            f.note(
                &at,
                format!("not published in compose: served on loopback only, at 127.0.0.1:{public} (container port {port})"),
            );
            (format!("127.0.0.1:{public}"), port)
        }
    };
    if listen.starts_with("0.0.0.0:") {
        comments.push("compose publishes on every interface; so does this listen address (use 127.0.0.1 to keep it local)".to_string());
    }

    // Environment.
    let mut env = BTreeMap::new();
    for (k, v) in svc
        .get("environment")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match v {
            Value::String(s) => {
                env.insert(k.clone(), s.clone());
            }
            Value::Null => f.note(
                format!("{at}.environment.{k}"),
                format!("{k} takes its value from the environment, where it is not set; left out"),
            ),
            other => {
                env.insert(k.clone(), other.to_string());
            }
        }
    }
    if let Some(p) = env.get("PORT") {
        if p.parse::<u16>().ok() != Some(container_port) {
            f.note(
                format!("{at}.environment.PORT"),
                format!("tcf-platform sets PORT to the container port ({container_port}) itself, over {p:?}"),
            );
        }
        env.remove("PORT");
    }

    // Health.
    let health = translate_health(svc, container_port, &at, f);

    // Instances.
    let replicas = svc
        .get("deploy")
        .and_then(|d| d.get("replicas"))
        .or_else(|| svc.get("scale"))
        .and_then(Value::as_u64);
    let instances = match replicas {
        Some(0) => {
            f.note(
                format!("{at}.deploy.replicas"),
                "0 replicas: translated with 1 instance; remove the service if it should not run",
            );
            Some(1)
        }
        Some(n) if n > 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        _ => None,
    };

    // Limits.
    let limits = svc
        .get("deploy")
        .and_then(|d| d.get("resources"))
        .and_then(|r| r.get("limits"));
    let memory = match limits
        .and_then(|l| l.get("memory"))
        .or_else(|| svc.get("mem_limit"))
    {
        Some(v) => match convert_size(v) {
            Ok(s) => Some(s),
            Err(e) => {
                f.untranslated(format!("{at}.deploy.resources.limits.memory"), e);
                None
            }
        },
        None => None,
    };
    let cpus = match limits
        .and_then(|l| l.get("cpus"))
        .or_else(|| svc.get("cpus"))
    {
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if n > 0.0 => Some(n),
                _ => {
                    f.untranslated(
                        format!("{at}.deploy.resources.limits.cpus"),
                        format!("invalid cpus {v}"),
                    );
                    None
                }
            }
        }
        None => None,
    };
    if let Some(deploy) = svc.get("deploy").and_then(Value::as_object) {
        for key in deploy.keys() {
            match key.as_str() {
                "replicas" => {}
                "resources" => {
                    for (kind, body) in deploy["resources"].as_object().into_iter().flatten() {
                        for k in body.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                            if !(kind == "limits" && (k == "memory" || k == "cpus")) {
                                f.untranslated(format!("{at}.deploy.resources.{kind}.{k}"), "only memory and cpus limits are supported");
                            }
                        }
                    }
                }
                "restart_policy" => f.note(format!("{at}.deploy.restart_policy"), "tcf-platform restarts every instance that exits, with backoff (and reports a crash loop)"),
                "update_config" | "rollback_config" => f.untranslated(format!("{at}.deploy.{key}"), "deploys are set in [deploy] (strategy, max_surge, watch): see docs/deploys.md"),
                _ => f.untranslated(format!("{at}.deploy.{key}"), "Swarm placement and modes are not supported"),
            }
        }
    }
    if let Some(r) = svc.get("restart").and_then(Value::as_str) {
        if r == "no" || r.starts_with("on-failure") {
            f.note(
                format!("{at}.restart"),
                format!("{r}: tcf-platform restarts every instance that exits, with backoff"),
            );
        }
    }
    if svc.get("profiles").is_some() {
        f.note(
            format!("{at}.profiles"),
            "profiles are not kept: the service runs always",
        );
    }

    // Command line.
    let words = |key: &str, f: &mut Findings| -> Option<Vec<String>> {
        match svc.get(key)? {
            Value::String(s) => match shell_words(s) {
                Ok(w) => Some(w),
                Err(e) => {
                    f.untranslated(format!("{at}.{key}"), e);
                    None
                }
            },
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
            ),
            Value::Null => None,
            other => {
                f.untranslated(format!("{at}.{key}"), format!("invalid {key} {other}"));
                None
            }
        }
    };
    let command = words("command", f);
    let entrypoint = words("entrypoint", f);
    for (key, list) in [("command", &command), ("entrypoint", &entrypoint)] {
        if list
            .iter()
            .flatten()
            .any(|w| w.contains("{version}") || w.contains("{service}") || w.contains("{instance}"))
        {
            f.note(format!("{at}.{key}"), "{version}, {service} and {instance} in it are replaced per instance by tcf-platform");
        }
    }

    let user = match svc.get("user") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let read_only = svc.get("read_only").and_then(Value::as_bool);
    let stop_timeout = match svc.get("stop_grace_period") {
        Some(v) => match parse_duration_ms(v) {
            Ok(ms) => Some(format_duration_ms(ms)),
            Err(e) => {
                f.untranslated(format!("{at}.stop_grace_period"), e);
                None
            }
        },
        None => None,
    };

    let volumes = translate_volumes(project, c, f, backup_sources);

    if store_network.is_some() {
        comments.push(
            "the network compose gives the data stores: their names in URLs keep resolving"
                .to_string(),
        );
    }
    if let Some(store) = &c.store {
        comments.push(format!(
            "{} kept as a service (--keep-stores-as-services): our proxy speaks HTTP, so clients must reach it on its container's network, not through listen",
            store.label
        ));
    }

    Some(ServiceOut {
        name: c.name.clone(),
        compose_service: c.compose_name.clone(),
        image,
        version,
        listen,
        container_port,
        instances,
        env,
        depends_on: Vec::new(),
        health,
        command,
        entrypoint,
        user,
        read_only,
        volumes,
        memory,
        cpus,
        stop_timeout,
        network: store_network.map(str::to_string),
        pull,
        comments,
    })
}

/// The URL a curl/wget healthcheck fetches: (its port, its path and query).
fn health_url(svc: &Map<String, Value>) -> Option<(Option<u16>, String)> {
    let test = svc.get("healthcheck")?.get("test")?;
    let words = test_words(test)?;
    let fetches = words.iter().any(|w| {
        let prog = w.rsplit('/').next().unwrap_or(w);
        prog == "curl" || prog == "wget"
    });
    if !fetches {
        return None;
    }
    let url = words.iter().find(|w| w.starts_with("http://"))?;
    let rest = &url["http://".len()..];
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if !authority.ends_with(']') => p.parse().ok(),
        _ => Some(80),
    };
    Some((port, path))
}

/// The words of a healthcheck test: `["CMD", ...]`, `["CMD-SHELL", "..."]` or a shell string.
fn test_words(test: &Value) -> Option<Vec<String>> {
    match test {
        Value::String(s) => shell_words(s).ok(),
        Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect();
            match items.first().map(String::as_str) {
                Some("CMD") => Some(items[1..].to_vec()),
                Some("CMD-SHELL") => shell_words(&items[1..].join(" ")).ok(),
                _ => None,
            }
        }
        _ => None,
    }
}

fn translate_health(
    svc: &Map<String, Value>,
    container_port: u16,
    at: &str,
    f: &mut Findings,
) -> HealthOut {
    let at = format!("{at}.healthcheck");
    let Some(hc) = svc.get("healthcheck").and_then(Value::as_object) else {
        return HealthOut {
            probe: "tcp".into(),
            from: "no healthcheck in compose: ready once the port accepts connections".into(),
            ..Default::default()
        };
    };
    let disabled = hc.get("disable").and_then(Value::as_bool) == Some(true)
        || hc
            .get("test")
            .and_then(Value::as_array)
            .and_then(|t| t.first())
            .and_then(Value::as_str)
            == Some("NONE");
    let mut out = HealthOut::default();
    if disabled {
        out.probe = "tcp".into();
        out.from =
            "healthcheck disabled in compose: ready once the port accepts connections".into();
        return out;
    }
    let test_text = hc.get("test").map(|t| match t {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        other => other.as_str().unwrap_or_default().to_string(),
    });
    match health_url(svc) {
        Some((Some(port), path)) if port == container_port => {
            out.probe = "http".into();
            out.path = Some(path);
            out.from = format!("compose healthcheck `{}`", test_text.unwrap_or_default());
        }
        Some((port, _)) => {
            out.probe = "tcp".into();
            out.from =
                "compose healthcheck fetches another port: ready once the port accepts connections"
                    .into();
            f.note(
                format!("{at}.test"),
                format!(
                    "the URL's port ({}) is not the served port ({container_port}); probing with a TCP connect instead",
                    port.map_or("?".to_string(), |p| p.to_string())
                ),
            );
        }
        None => {
            out.probe = "tcp".into();
            out.from = "ready once the port accepts connections".into();
            if let Some(t) = test_text.filter(|t| !t.is_empty()) {
                if t.contains("https://") {
                    f.note(format!("{at}.test"), "an https URL: our probe speaks plain HTTP; probing with a TCP connect instead");
                } else {
                    f.note(
                        format!("{at}.test"),
                        format!("`{t}` is not run by tcf-platform (only curl/wget of an http URL becomes an HTTP probe); the image's own HEALTHCHECK still runs and shows as runtime_health; probing with a TCP connect"),
                    );
                }
            }
        }
    }
    let dur = |key: &str, f: &mut Findings| -> Option<u64> {
        let v = hc.get(key)?;
        match parse_duration_ms(v) {
            Ok(ms) => Some(ms),
            Err(e) => {
                f.untranslated(format!("{at}.{key}"), e);
                None
            }
        }
    };
    out.interval = dur("interval", f)
        .filter(|ms| *ms > 0)
        .map(format_duration_ms);
    out.timeout = dur("timeout", f)
        .filter(|ms| *ms > 0)
        .map(format_duration_ms);
    let start_period = dur("start_period", f);
    out.start_period = start_period.map(format_duration_ms);
    // Our deadline (30 s by default) restarts an instance not healthy in time: leave a slow
    // starter its start period and then some.
    if let Some(sp) = start_period.filter(|sp| *sp > 0) {
        out.deadline = Some(format_duration_ms(sp + 30_000));
    }
    out.unhealthy_threshold = hc
        .get("retries")
        .and_then(Value::as_u64)
        .filter(|r| *r > 0)
        .map(|r| u32::try_from(r).unwrap_or(u32::MAX));
    if hc.get("start_interval").is_some() {
        f.note(format!("{at}.start_interval"), "until an instance is first healthy tcf-platform probes every 200 ms at most; start_interval is not needed");
    }
    for key in hc.keys() {
        if !matches!(
            key.as_str(),
            "test"
                | "interval"
                | "timeout"
                | "retries"
                | "start_period"
                | "start_interval"
                | "disable"
        ) {
            f.untranslated(format!("{at}.{key}"), "not a healthcheck key");
        }
    }
    out
}

fn translate_volumes(
    project: &Project,
    c: &Candidate,
    f: &mut Findings,
    backup_sources: &mut Vec<BackupSource>,
) -> Vec<String> {
    let at = format!("services.{}.volumes", c.compose_name);
    let mut out = Vec::new();
    let top = project.model.get("volumes").and_then(Value::as_object);
    let named = |name: &str| -> String {
        let def = top.and_then(|t| t.get(name));
        if let Some(n) = def.and_then(|d| d.get("name")).and_then(Value::as_str) {
            return n.to_string();
        }
        if def.and_then(|d| d.get("external")).and_then(Value::as_bool) == Some(true) {
            return name.to_string();
        }
        // What compose created: the data already there is kept.
        format!("{}_{name}", project.name)
    };
    for v in c
        .svc
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (source, target, mode, kind) = match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                match parts.as_slice() {
                    [t] => (None, t.to_string(), None, "volume"),
                    [s, t] => (Some(s.to_string()), t.to_string(), None, ""),
                    [s, t, m] => (Some(s.to_string()), t.to_string(), Some(m.to_string()), ""),
                    _ => {
                        f.untranslated(&at, format!("{s:?}: cannot read this volume"));
                        continue;
                    }
                }
            }
            Value::Object(m) => {
                let kind = m.get("type").and_then(Value::as_str).unwrap_or("volume");
                if !matches!(kind, "volume" | "bind") {
                    f.untranslated(&at, format!("a {kind} mount is not supported"));
                    continue;
                }
                let Some(target) = m.get("target").and_then(Value::as_str) else {
                    f.untranslated(&at, "a long-syntax volume without target");
                    continue;
                };
                for opt in ["bind", "volume", "tmpfs", "consistency", "image"] {
                    if m.get(opt).is_some() {
                        f.note(&at, format!("{target}: the {opt} options are not kept"));
                    }
                }
                let ro = m.get("read_only").and_then(Value::as_bool) == Some(true);
                (
                    m.get("source").and_then(Value::as_str).map(str::to_string),
                    target.to_string(),
                    ro.then(|| "ro".to_string()),
                    if kind == "bind" { "bind" } else { "" },
                )
            }
            _ => continue,
        };
        let Some(source) = source else {
            f.untranslated(
                &at,
                format!(
                    "{target}: an anonymous volume would not outlive an instance; give it a name"
                ),
            );
            continue;
        };
        let host = if source.starts_with('/') {
            source.clone()
        } else if source.starts_with('.') || kind == "bind" {
            let joined = project.dir.join(&source);
            let mut clean = std::path::PathBuf::new();
            for part in joined.components() {
                match part {
                    std::path::Component::CurDir => {}
                    std::path::Component::ParentDir => {
                        clean.pop();
                    }
                    other => clean.push(other),
                }
            }
            clean.display().to_string()
        } else if source.starts_with('~') {
            f.untranslated(
                &at,
                format!("{source}: a path in a home directory; write it as an absolute path"),
            );
            continue;
        } else {
            let resolved = named(&source);
            if resolved != source {
                f.note(&at, format!("named volume {source} is {resolved} on the engine (the volume compose created)"));
            }
            resolved
        };
        if host.starts_with('/') {
            backup_sources.push(BackupSource {
                name: format!("{}_{}", c.name, backup_name(&target)),
                kind: "directory".into(),
                dependency: None,
                path: Some(host.clone()),
            });
        }
        out.push(match mode {
            Some(m) => format!("{host}:{target}:{m}"),
            None => format!("{host}:{target}"),
        });
    }
    out
}

/// Whether an env value names `host` as a URL's or an address's host.
fn refers_to(value: &str, host: &str) -> bool {
    ["//", "@"].iter().any(|before| {
        [":", "/"]
            .iter()
            .any(|after| value.contains(&format!("{before}{host}{after}")))
            || value.ends_with(&format!("{before}{host}"))
    }) || value.starts_with(&format!("{host}:"))
}

fn backup_name(target: &str) -> String {
    let name: String = target
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() {
        "root".into()
    } else {
        name
    }
}

/// Environment variables whose name or value says they hold a credential.
pub fn looks_like_credential(key: &str, value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    let upper = key.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(['_', '-', '.'])
        .filter(|w| !w.is_empty())
        .collect();
    // A file path or a setting about the credential, not the credential.
    if matches!(
        words.last().copied(),
        Some(
            "FILE"
                | "PATH"
                | "DIR"
                | "TTL"
                | "EXPIRY"
                | "EXPIRES"
                | "LIFETIME"
                | "LENGTH"
                | "SIZE"
                | "HEADER"
                | "NAME"
                | "ALGORITHM"
                | "ALG"
                | "ISSUER"
                | "AUDIENCE"
                | "URL_PATH"
                | "ENABLED"
        )
    ) {
        return false;
    }
    let named = words.iter().any(|w| {
        matches!(
            *w,
            "PASSWORD"
                | "PASSWD"
                | "PASS"
                | "PWD"
                | "SECRET"
                | "TOKEN"
                | "APIKEY"
                | "CREDENTIAL"
                | "CREDENTIALS"
                | "PRIVATE"
                | "DSN"
        )
    }) || words.last() == Some(&"KEY");
    // A URL with a password in it: scheme://user:password@host
    let url_password = value
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|auth| auth.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .is_some_and(|(_, pw)| !pw.is_empty());
    named || url_password
}

/// Move credential-looking env values out, naming each secret after its variable (or
/// `service_variable` when two services hold different values under one name); render.rs
/// writes `${secret:NAME}` in their place.
fn assign_secret_names(outs: &mut [ServiceOut], secrets: &mut Vec<SecretTodo>) {
    let mut found: Vec<(usize, String, String)> = Vec::new();
    for (i, s) in outs.iter().enumerate() {
        for (k, v) in &s.env {
            if looks_like_credential(k, v) {
                found.push((i, k.clone(), v.clone()));
            }
        }
    }
    for (i, key, value) in &found {
        let shared = found
            .iter()
            .filter(|(_, k, _)| k == key)
            .all(|(_, _, v)| v == value);
        let name = if shared {
            key.to_ascii_lowercase()
        } else {
            format!("{}_{}", outs[*i].name, key).to_ascii_lowercase()
        };
        outs[*i].env.remove(key);
        if !secrets
            .iter()
            .any(|s: &SecretTodo| s.service == outs[*i].name && s.key == *key)
        {
            secrets.push(SecretTodo {
                service: outs[*i].name.clone(),
                key: key.clone(),
                name,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images() {
        assert_eq!(
            split_image("tcf/gateway:1.2"),
            ("tcf/gateway".into(), Some("1.2".into()), None)
        );
        assert_eq!(
            split_image("localhost:5000/app"),
            ("localhost:5000/app".into(), None, None)
        );
        assert_eq!(
            split_image("redis:7@sha256:abc"),
            ("redis".into(), Some("7".into()), Some("sha256:abc".into()))
        );
        assert_eq!(
            store_for("docker.io/library/postgres:16").map(|s| s.kind),
            Some("postgres")
        );
        assert_eq!(
            store_for("qdrant/qdrant:v1.9").map(|s| s.kind),
            Some("qdrant")
        );
        assert_eq!(store_for("mariadb:11").map(|s| s.kind), Some("tcp"));
        assert!(store_for("tcf/gateway:1").is_none());
    }

    #[test]
    fn credentials() {
        assert!(looks_like_credential("POSTGRES_PASSWORD", "x"));
        assert!(looks_like_credential("JWT_SECRET", "x"));
        assert!(looks_like_credential("OPENAI_API_KEY", "x"));
        assert!(looks_like_credential(
            "DATABASE_URL",
            "postgres://tcf:pw@postgres:5432/tcf"
        ));
        assert!(!looks_like_credential(
            "DATABASE_URL",
            "postgres://tcf@postgres:5432/tcf"
        ));
        assert!(!looks_like_credential("TOKENS_URL", "http://tokens:3005"));
        assert!(!looks_like_credential("TOKEN_TTL", "3600"));
        assert!(!looks_like_credential(
            "POSTGRES_PASSWORD_FILE",
            "/run/secrets/pg"
        ));
        assert!(!looks_like_credential("LOG_LEVEL", "info"));
        assert!(!looks_like_credential("API_KEY", ""));
    }

    #[test]
    fn references_by_service_name() {
        assert!(refers_to("http://personas:3001", "personas"));
        assert!(refers_to("redis://redis/0", "redis"));
        assert!(refers_to("postgres://u:p@db:5432/x", "db"));
        assert!(refers_to("api:8080", "api"));
        assert!(!refers_to("http://personas-v2:3001", "personas"));
        assert!(!refers_to("personas", "personas"));
    }
}

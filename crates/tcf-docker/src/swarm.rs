//! The Swarm runtime: each instance is a task of a Docker Swarm, driven through a manager's
//! Engine API (the same bollard client as the Docker runtime).
//!
//! One instance is one Swarm service of one replica, `PLATFORM-SERVICE-COLOUR-N`, labelled like
//! the Docker runtime's containers. Swarm cannot remove a chosen task from a replicated service
//! (a scale-down picks by node balance), while our deploys drain and stop one chosen instance at a
//! time; a service per instance keeps that exact, and Swarm still places, restarts and
//! reschedules every task (docs/swarm.md).
//!
//! The proxy reaches a task directly: its port is published in host mode (a dynamic port on the
//! task's node), and its address is the node's address plus that port. There is no ingress mesh
//! or VIP in between, so per-instance balancing, health gating and draining work as on one host.

use crate::{LABEL_COLOUR, LABEL_INSTANCE, LABEL_PLATFORM, LABEL_SERVICE, LABEL_VERSION};
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, NetworkAttachmentConfig,
    NodeState, SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
    TaskSpecPlacement, TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptions, ListNodesOptions, ListSecretsOptions, ListServicesOptions, ListTasksOptions,
    LogsOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcf_runtime::logfile::open_instance_log;
use tcf_runtime::{
    BoxFuture, Exit, Identity, InstanceSpec, Running, Runtime, RuntimeError, UsageProbe,
};
use tokio::sync::watch;

/// Which Swarm service an instance's secrets belong to (they go with it).
pub const LABEL_OWNER: &str = "tcf.owner";

/// How long a new task may take to be running with its port published.
const TASK_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an adopted service may take to show its running task.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tasks are re-read at least this often while waited on; engine events wake the wait sooner.
const TASK_RECHECK: Duration = Duration::from_secs(2);
/// Tasks rejected for a missing image before a start gives up (each node may try once).
const MISSING_IMAGE_REJECTIONS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("cannot reach the Swarm manager{}: {source}\nhint: set [swarm] endpoint (or DOCKER_HOST) to a manager's Engine API; services {services} use runtime = \"swarm\"", endpoint.as_ref().map(|h| format!(" at {h}")).unwrap_or_default())]
    Unreachable {
        endpoint: Option<String>,
        services: String,
        source: bollard::errors::Error,
    },
    #[error("the Docker engine{} is not a Swarm manager (swarm state: {state})\nhint: point [swarm] endpoint at a manager, or form a swarm (`docker swarm init`); services {services} use runtime = \"swarm\"", endpoint.as_ref().map(|h| format!(" at {h}")).unwrap_or_default())]
    NotManager {
        endpoint: Option<String>,
        state: String,
        services: String,
    },
    #[error("Swarm manager error: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error("[swarm] node_engines: cannot use {endpoint:?} for node {node}: {source}\nhint: give each node's engine as unix:///path/docker.sock or tcp://host:port")]
    NodeEngine {
        node: String,
        endpoint: String,
        source: bollard::errors::Error,
    },
    #[error("the platform's Swarm networks {names} are still listed {waited_s} s after their removal\nhint: look for tasks still attached: `docker network inspect {names}`")]
    NetworksLinger { names: String, waited_s: u64 },
}

/// A Swarm service of this platform found at startup, by its labels.
#[derive(Debug, Clone)]
pub struct FoundService {
    pub name: String,
    pub service: String,
    pub version: String,
    pub colour: String,
    pub instance: String,
}

/// One node of the swarm, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub addr: String,
    /// ready, down, unknown, disconnected
    pub state: String,
    /// active, pause, drain
    pub availability: String,
    pub manager: bool,
}

#[derive(Clone)]
pub struct SwarmRuntime {
    docker: Docker,
    platform: String,
    /// The manager's own hostname: its tasks' stats come from `docker`.
    manager_node: String,
    /// Other nodes' engines by hostname (`[swarm] node_engines`), for their tasks' stats.
    node_engines: Arc<HashMap<String, Docker>>,
    /// Bumped on every engine event about nodes and services: a wait on a task re-reads it then.
    changes: watch::Sender<u64>,
}

/// A Swarm service name from the platform's and instance's names (letters, digits and '-').
pub fn service_name(platform: &str, instance: &str) -> String {
    format!("{platform}-{instance}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn label_filter(label: &str, value: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{label}={value}")])])
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn terminal(state: Option<TaskState>) -> bool {
    matches!(
        state,
        Some(
            TaskState::COMPLETE
                | TaskState::SHUTDOWN
                | TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::REMOVE
                | TaskState::ORPHANED
        )
    )
}

/// The host-mode port a task publishes for `target`.
fn published_port(task: &Task, target: u16) -> Option<u16> {
    task.status
        .as_ref()?
        .port_status
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.target_port == Some(i64::from(target)))
        .and_then(|p| p.published_port)
        .and_then(|p| u16::try_from(p).ok())
}

impl SwarmRuntime {
    /// Connect to the manager at `endpoint` (else `DOCKER_HOST`, else the local socket) and
    /// check it is one; follow its events from now on.
    pub async fn connect(
        platform: &str,
        endpoint: Option<&str>,
        services: &[String],
    ) -> Result<SwarmRuntime, SwarmError> {
        let shown = endpoint
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok());
        let unreachable = |source| SwarmError::Unreachable {
            endpoint: shown.clone(),
            services: services.join(", "),
            source,
        };
        let docker = match endpoint {
            Some(e) => engine_client(e),
            None => Docker::connect_with_local_defaults()
                .map(|d| d.with_timeout(crate::ENGINE_CALL_TIMEOUT)),
        }
        .map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        let info = docker.info().await.map_err(unreachable)?;
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            return Err(SwarmError::NotManager {
                endpoint: shown,
                state: swarm
                    .local_node_state
                    .map(|s| format!("{s:?}").to_lowercase())
                    .unwrap_or_else(|| "unknown".into()),
                services: services.join(", "),
            });
        }
        let runtime = SwarmRuntime {
            docker,
            platform: platform.to_string(),
            manager_node: info.name.unwrap_or_default(),
            node_engines: Arc::new(HashMap::new()),
            changes: watch::channel(0).0,
        };
        runtime.follow_events();
        Ok(runtime)
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Read the CPU and memory of tasks on other nodes from these engines (hostname →
    /// endpoint). The clients connect on first use: a node that is down costs its tasks'
    /// numbers, never the start.
    pub fn with_node_engines(
        mut self,
        engines: &std::collections::BTreeMap<String, String>,
    ) -> Result<SwarmRuntime, SwarmError> {
        let mut clients = HashMap::new();
        for (node, endpoint) in engines {
            let client = engine_client(endpoint).map_err(|source| SwarmError::NodeEngine {
                node: node.clone(),
                endpoint: endpoint.clone(),
                source,
            })?;
            clients.insert(node.clone(), client);
        }
        self.node_engines = Arc::new(clients);
        Ok(self)
    }

    /// The engine that can read the stats of a task on `node`, if we know one.
    fn engine_of(&self, node: &str) -> Option<Docker> {
        if node == self.manager_node {
            return Some(self.docker.clone());
        }
        self.node_engines.get(node).cloned()
    }

    /// Wake every wait on a task whenever a node or service changes (a node that goes down,
    /// a task rescheduled), so rescheduling is followed without polling per request. The
    /// stream is opened again if the manager closes it.
    fn follow_events(&self) {
        let docker = self.docker.clone();
        let changes = self.changes.clone();
        tokio::spawn(async move {
            loop {
                let mut stream = docker.events(Some(EventsOptions {
                    filters: Some(HashMap::from([(
                        "type".to_string(),
                        vec!["node".to_string(), "service".to_string()],
                    )])),
                    ..Default::default()
                }));
                while let Some(Ok(_)) = stream.next().await {
                    changes.send_modify(|n| *n += 1);
                }
                // Closed (a manager restart, say): whatever changed meanwhile, re-read it.
                changes.send_modify(|n| *n += 1);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Every Swarm service of this platform.
    pub async fn find(&self) -> Result<Vec<FoundService>, SwarmError> {
        let list = self
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(label_filter(LABEL_PLATFORM, &self.platform)),
                ..Default::default()
            }))
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec?;
                let labels = spec.labels.unwrap_or_default();
                let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
                Some(FoundService {
                    name: spec.name?,
                    service: get(LABEL_SERVICE),
                    version: get(LABEL_VERSION),
                    colour: get(LABEL_COLOUR),
                    instance: get(LABEL_INSTANCE),
                })
            })
            .collect())
    }

    /// Remove a Swarm service and the secrets made for it.
    pub async fn remove(&self, name: &str) -> Result<(), SwarmError> {
        remove_service(&self.docker, name).await
    }

    /// Remove every secret of this platform no service uses any more (a secret in use cannot
    /// be removed; it goes with its service).
    pub async fn remove_secrets(&self) -> Result<usize, SwarmError> {
        let secrets = self
            .docker
            .list_secrets(Some(ListSecretsOptions {
                filters: Some(label_filter(LABEL_PLATFORM, &self.platform)),
            }))
            .await?;
        let mut removed = 0;
        for s in secrets {
            if let Some(id) = s.id {
                if self.docker.delete_secret(&id).await.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// What remains of this platform on the swarm: services, secrets, networks (for `down`'s
    /// check and the tests).
    pub async fn leftovers(&self) -> Result<Vec<String>, SwarmError> {
        let filter = label_filter(LABEL_PLATFORM, &self.platform);
        let mut left = Vec::new();
        for s in self.find().await? {
            left.push(format!("service {}", s.name));
        }
        for s in self
            .docker
            .list_secrets(Some(ListSecretsOptions {
                filters: Some(filter.clone()),
            }))
            .await?
        {
            left.push(format!(
                "secret {}",
                s.spec.and_then(|s| s.name).unwrap_or_default()
            ));
        }
        for n in self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filter),
            }))
            .await?
        {
            left.push(format!("network {}", n.name.unwrap_or_default()));
        }
        Ok(left)
    }

    /// Create the platform's overlay network unless it exists (attachable, so a host on the
    /// swarm can join it too).
    pub async fn ensure_network(&self, name: &str) -> Result<(), SwarmError> {
        let existing = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "name".to_string(),
                    vec![name.to_string()],
                )])),
            }))
            .await?;
        if existing.iter().any(|n| n.name.as_deref() == Some(name)) {
            return Ok(());
        }
        self.docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("overlay".into()),
                attachable: Some(true),
                labels: Some(HashMap::from([(
                    LABEL_PLATFORM.to_string(),
                    self.platform.clone(),
                )])),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Remove the platform's networks, waiting (up to 60 s) for the tasks still attached to
    /// be gone. Done only when the manager no longer lists them: a node that has just come
    /// back can hold an endpoint on the overlay for a while after its service was removed.
    pub async fn remove_networks(&self) -> Result<(), SwarmError> {
        const WAIT: Duration = Duration::from_secs(60);
        let deadline = Instant::now() + WAIT;
        loop {
            let nets = self
                .docker
                .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                    filters: Some(label_filter(LABEL_PLATFORM, &self.platform)),
                }))
                .await?;
            if nets.is_empty() {
                return Ok(());
            }
            let names: Vec<String> = nets.iter().filter_map(|n| n.name.clone()).collect();
            let mut last_error = None;
            for n in nets {
                if let Some(id) = n.id {
                    if let Err(e) = self.docker.remove_network(&id).await {
                        if !is_not_found(&e) {
                            last_error = Some(e);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return match last_error {
                    Some(e) => Err(e.into()),
                    None => Err(SwarmError::NetworksLinger {
                        names: names.join(" "),
                        waited_s: WAIT.as_secs(),
                    }),
                };
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The swarm's nodes, for `status`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, SwarmError> {
        let nodes = self.docker.list_nodes(None::<ListNodesOptions>).await?;
        let mut out: Vec<NodeInfo> = nodes
            .into_iter()
            .map(|n| {
                let spec = n.spec.unwrap_or_default();
                let status = n.status.unwrap_or_default();
                NodeInfo {
                    name: n
                        .description
                        .and_then(|d| d.hostname)
                        .or(spec.name)
                        .or(n.id)
                        .unwrap_or_default(),
                    addr: status.addr.unwrap_or_default(),
                    state: status
                        .state
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    availability: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
                    manager: n.manager_status.is_some(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Take over a service found at startup: its running task, as instance `spec`.
    pub async fn adopt(
        &self,
        found: &FoundService,
        spec: &InstanceSpec,
    ) -> Result<Box<dyn Running>, RuntimeError> {
        let target = spec
            .container
            .as_ref()
            .map(|c| c.container_port)
            .unwrap_or(spec.port);
        let task = self
            .running_task(&found.name, target, Instant::now() + ADOPT_TIMEOUT)
            .await
            .map_err(|e| spawn_error(spec, e))?;
        let inst = self.attach(&found.name, task, spec, false)?;
        Ok(Box::new(inst))
    }

    /// The running task of service `name`, with its node and address, once there is one.
    async fn running_task(
        &self,
        name: &str,
        target: u16,
        deadline: Instant,
    ) -> Result<RunningTask, String> {
        let mut changes = self.changes.subscribe();
        let mut last = String::from("no task yet");
        loop {
            let tasks = self
                .docker
                .list_tasks(Some(ListTasksOptions {
                    filters: Some(HashMap::from([(
                        "service".to_string(),
                        vec![name.to_string()],
                    )])),
                }))
                .await
                .map_err(|e| format!("cannot list the tasks of {name}: {e}"))?;
            let mut missing_image = 0;
            for t in &tasks {
                let status = t.status.clone().unwrap_or_default();
                let err = status.err.clone().unwrap_or_default();
                if !err.is_empty() {
                    last = format!(
                        "task {} {}: {err}",
                        t.slot.unwrap_or(0),
                        status.state.map(|s| s.to_string()).unwrap_or_default()
                    );
                    if err.contains("No such image") {
                        missing_image += 1;
                    }
                }
                if t.desired_state != Some(TaskState::RUNNING)
                    || status.state != Some(TaskState::RUNNING)
                {
                    continue;
                }
                let Some(port) = published_port(t, target) else {
                    last = "its task runs but publishes no port yet".into();
                    continue;
                };
                let Some(node_id) = t.node_id.clone() else {
                    continue;
                };
                let node = self
                    .docker
                    .inspect_node(&node_id)
                    .await
                    .map_err(|e| format!("cannot inspect node {node_id}: {e}"))?;
                let Some(ip) = node_address(&node) else {
                    last = format!("node {node_id} has no address");
                    continue;
                };
                return Ok(RunningTask {
                    id: t.id.clone().unwrap_or_default(),
                    container_id: status
                        .container_status
                        .as_ref()
                        .and_then(|c| c.container_id.clone()),
                    node_id,
                    node_name: node
                        .description
                        .and_then(|d| d.hostname)
                        .unwrap_or_default(),
                    addr: SocketAddr::new(ip, port),
                });
            }
            if missing_image >= MISSING_IMAGE_REJECTIONS {
                return Err(format!(
                    "{last}\nhint: load the image on every node (scripts/swarm-cluster load IMAGE, or docker save | docker load); no registry is used"
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no running task of {name}: {last}"));
            }
            let pause = (deadline - now).min(Duration::from_millis(250));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = changes.changed() => {}
            }
        }
    }

    /// Follow a task's output into the instance's log and make its handle.
    fn attach(
        &self,
        service: &str,
        task: RunningTask,
        spec: &InstanceSpec,
        from_start: bool,
    ) -> Result<SwarmTask, RuntimeError> {
        let log = open_instance_log(spec)?;
        let docker = self.docker.clone();
        let task_id = task.id.clone();
        let follower = tokio::spawn(async move {
            let mut stream = docker.task_logs(
                &task_id,
                Some(LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    tail: if from_start { "all".into() } else { "0".into() },
                    ..Default::default()
                }),
            );
            while let Some(Ok(chunk)) = stream.next().await {
                log.write(chunk.into_bytes().to_vec()).await;
            }
        });
        Ok(SwarmTask {
            docker: self.docker.clone(),
            node_engine: self.engine_of(&task.node_name),
            service: service.to_string(),
            task,
            changes: self.changes.subscribe(),
            stopping: Arc::new(AtomicBool::new(false)),
            log_follower: follower,
        })
    }

    /// The Swarm service spec of one instance; secret values go in as Swarm secrets.
    async fn service_spec(&self, name: &str, spec: &InstanceSpec) -> Result<ServiceSpec, String> {
        let Some(c) = &spec.container else {
            return Err("no container settings".into());
        };
        let labels = HashMap::from([
            (LABEL_PLATFORM.to_string(), self.platform.clone()),
            (LABEL_SERVICE.to_string(), spec.service.clone()),
            (LABEL_VERSION.to_string(), spec.version.clone()),
            (LABEL_COLOUR.to_string(), spec.colour.clone()),
            (LABEL_INSTANCE.to_string(), spec.id.clone()),
        ]);
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| !spec.secret_env.contains(*k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("PORT={}", c.container_port));
        env.push(format!("TCF_SERVICE={}", spec.service));
        env.push(format!("TCF_VERSION={}", spec.version));
        env.push(format!("TCF_INSTANCE={}", spec.id));
        let mut secrets = Vec::new();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for var in &spec.secret_env {
            let Some(value) = spec.env.get(var) else {
                continue;
            };
            let secret_name = format!("{name}-{var}-{stamp}");
            let created = self
                .docker
                .create_secret(SecretSpec {
                    name: Some(secret_name.clone()),
                    labels: Some(HashMap::from([
                        (LABEL_PLATFORM.to_string(), self.platform.clone()),
                        (LABEL_OWNER.to_string(), name.to_string()),
                    ])),
                    data: Some(base64(value.as_bytes())),
                    ..Default::default()
                })
                .await
                // The error names the secret, never its value.
                .map_err(|e| format!("cannot create the Swarm secret for env {var}: {e}"))?;
            secrets.push(TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(var.clone()),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o444),
                }),
                secret_id: Some(created.id),
                secret_name: Some(secret_name),
            });
            env.push(format!("{var}_FILE=/run/secrets/{var}"));
        }
        let mounts: Vec<Mount> = c
            .volumes
            .iter()
            .filter_map(|v| {
                let mut parts = v.splitn(3, ':');
                let source = parts.next()?.to_string();
                let target = parts.next()?.to_string();
                let read_only = parts.next() == Some("ro");
                Some(Mount {
                    typ: Some(if source.starts_with('/') {
                        MountType::BIND
                    } else {
                        MountType::VOLUME
                    }),
                    source: Some(source),
                    target: Some(target),
                    read_only: Some(read_only),
                    ..Default::default()
                })
            })
            .collect();
        let placement = c.swarm.clone().unwrap_or_default();
        let condition = match placement.restart.as_str() {
            "none" => TaskSpecRestartPolicyConditionEnum::NONE,
            "on-failure" => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
            _ => TaskSpecRestartPolicyConditionEnum::ANY,
        };
        let (command, args) = match &c.entrypoint {
            Some(e) => (Some(e.clone()), Some(spec.command.clone())),
            None => (
                None,
                (!spec.command.is_empty()).then(|| spec.command.clone()),
            ),
        };
        Ok(ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(c.image.clone()),
                    labels: Some(labels),
                    command,
                    args,
                    env: Some(env),
                    user: c.user.clone(),
                    read_only: Some(c.read_only),
                    mounts: (!mounts.is_empty()).then_some(mounts),
                    stop_grace_period: Some(spec.stop_timeout.as_nanos() as i64),
                    secrets: (!secrets.is_empty()).then_some(secrets),
                    // Our probes gate traffic, from where the proxy stands; an image's own
                    // HEALTHCHECK would hold the task in `starting` and have Swarm replace it
                    // behind the supervisor's back.
                    health_check: Some(bollard::models::HealthConfig {
                        test: Some(vec!["NONE".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: c.cpus.map(|n| (n * 1e9) as i64),
                        memory_bytes: c.memory_bytes.map(|m| m as i64),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(condition),
                    delay: Some(placement.restart_delay.as_nanos() as i64),
                    max_attempts: Some(i64::from(placement.restart_max_attempts)),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: (!placement.constraints.is_empty())
                        .then(|| placement.constraints.clone()),
                    preferences: (!placement.spread.is_empty()).then(|| {
                        placement
                            .spread
                            .iter()
                            .map(|d| TaskSpecPlacementPreferences {
                                spread: Some(TaskSpecPlacementSpread {
                                    spread_descriptor: Some(d.clone()),
                                }),
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(c.network.clone()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            // No VIP (this needs IPVS) and no ingress mesh: the proxy balances per task, on
            // the port each task publishes on its own node.
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(i64::from(c.container_port)),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        })
    }
}

/// A node's address: `Status.Addr`, or a manager's advertised address when that is 0.0.0.0
/// (as some engines report for managers).
/// A client of the engine at `endpoint` (`unix:///path`, a socket path, `tcp://` or `http://`).
fn engine_client(endpoint: &str) -> Result<Docker, bollard::errors::Error> {
    let timeout = crate::ENGINE_CALL_TIMEOUT.as_secs();
    if endpoint.starts_with("unix://") || endpoint.starts_with('/') {
        Docker::connect_with_unix(endpoint, timeout, bollard::API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_http(endpoint, timeout, bollard::API_DEFAULT_VERSION)
    }
}

fn node_address(node: &bollard::models::Node) -> Option<IpAddr> {
    let from_status = node
        .status
        .as_ref()
        .and_then(|s| s.addr.as_deref())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified());
    from_status.or_else(|| {
        let addr = node.manager_status.as_ref()?.addr.as_deref()?;
        addr.parse::<SocketAddr>().ok().map(|a| a.ip())
    })
}

fn spawn_error(spec: &InstanceSpec, e: String) -> RuntimeError {
    RuntimeError::Spawn {
        instance: spec.id.clone(),
        program: spec
            .container
            .as_ref()
            .map(|c| c.image.clone())
            .unwrap_or_default(),
        source: std::io::Error::other(e),
    }
}

async fn remove_service(docker: &Docker, name: &str) -> Result<(), SwarmError> {
    match docker.delete_service(name).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    // Its secrets are unused now that its spec is gone.
    let secrets = docker
        .list_secrets(Some(ListSecretsOptions {
            filters: Some(label_filter(LABEL_OWNER, name)),
        }))
        .await?;
    for s in secrets {
        if let Some(id) = s.id {
            let _ = docker.delete_secret(&id).await;
        }
    }
    Ok(())
}

/// Removes a Swarm service (and its secrets) when dropped while still armed.
struct RemoveOnDrop {
    docker: Option<Docker>,
    name: String,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(docker) = self.docker.take() {
            let name = std::mem::take(&mut self.name);
            tokio::spawn(async move {
                if let Err(e) = remove_service(&docker, &name).await {
                    tracing::warn!("cannot remove Swarm service {name}: {e}");
                }
            });
        }
    }
}

#[derive(Debug, Clone)]
struct RunningTask {
    id: String,
    /// Its container on its node, for the node's engine's stats.
    container_id: Option<String>,
    node_id: String,
    node_name: String,
    addr: SocketAddr,
}

struct SwarmTask {
    docker: Docker,
    /// The Swarm service this task belongs to (one per instance).
    service: String,
    task: RunningTask,
    /// The engine of the node it runs on, when known: where its CPU and memory are read.
    node_engine: Option<Docker>,
    changes: watch::Receiver<u64>,
    /// Set once the platform asked for the service to go.
    stopping: Arc<AtomicBool>,
    log_follower: tokio::task::JoinHandle<()>,
}

impl Drop for SwarmTask {
    fn drop(&mut self) {
        self.log_follower.abort();
    }
}

impl SwarmTask {
    fn remove_service(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let (docker, name) = (self.docker.clone(), self.service.clone());
        tokio::spawn(async move {
            if let Err(e) = remove_service(&docker, &name).await {
                tracing::warn!("cannot remove Swarm service {name}: {e}");
            }
        });
    }

    /// How the task ended, if it has: it is no longer meant to run (rescheduled, its node
    /// down, its service removed) or it stopped. Once the platform stops it, it has ended when
    /// its container is gone, or its node is down and cannot say.
    async fn ended(&self) -> Option<Exit> {
        let task = match self.docker.inspect_task(&self.task.id).await {
            Ok(t) => t,
            Err(e) if is_not_found(&e) => {
                return Some(Exit::Unknown("the task was removed".into()));
            }
            // The manager did not answer (a leader election, say): ask again later.
            Err(_) => return None,
        };
        let status = task.status.clone().unwrap_or_default();
        let exit = || match status.container_status.as_ref().and_then(|c| c.exit_code) {
            Some(code) if terminal(status.state) => Exit::Code(code as i32),
            _ => Exit::Unknown(format!(
                "task {} on {}: {}",
                status.state.map(|s| s.to_string()).unwrap_or_default(),
                self.task.node_name,
                status
                    .err
                    .clone()
                    .filter(|e| !e.is_empty())
                    .or(status.message.clone())
                    .unwrap_or_default()
            )),
        };
        if terminal(status.state) {
            return Some(exit());
        }
        if self.stopping.load(Ordering::SeqCst) {
            let node_down = self
                .docker
                .inspect_node(&self.task.node_id)
                .await
                .ok()
                .and_then(|n| n.status?.state)
                .is_some_and(|s| s != NodeState::READY);
            return node_down.then(exit);
        }
        if task.desired_state != Some(TaskState::RUNNING) {
            return Some(exit());
        }
        None
    }
}

impl Running for SwarmTask {
    fn identity(&self) -> Identity {
        // The task's process is on another machine: nothing here to signal or read in /proc.
        Identity {
            pid: 0,
            pgid: 0,
            start_ticks: None,
        }
    }

    /// Remove the instance's service: Swarm sends the task SIGTERM, then SIGKILL after its
    /// stop grace period (the service's `stop_timeout`).
    fn terminate(&self) {
        self.remove_service();
    }

    fn kill(&self) {
        self.remove_service();
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            loop {
                if let Some(exit) = self.ended().await {
                    return exit;
                }
                tokio::select! {
                    _ = tokio::time::sleep(TASK_RECHECK) => {}
                    changed = self.changes.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(TASK_RECHECK).await;
                        }
                    }
                }
            }
        })
    }

    fn address(&self) -> Option<SocketAddr> {
        Some(self.task.addr)
    }

    fn node(&self) -> Option<String> {
        Some(self.task.node_name.clone())
    }

    fn usage_probe(&self) -> Option<UsageProbe> {
        let engine = self.node_engine.clone()?;
        let container = self.task.container_id.clone()?;
        Some(Arc::new(move || {
            let (engine, container) = (engine.clone(), container.clone());
            Box::pin(async move { crate::container_usage(&engine, &container).await })
        }))
    }
}

impl Runtime for SwarmRuntime {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn uses_local_ports(&self) -> bool {
        false
    }

    /// The image must be on the manager we talk to: the only engine we can ask. (Each node
    /// needs it too; a node without it rejects the task, which a start reports.)
    fn check(&self, spec: &InstanceSpec) -> BoxFuture<'_, Result<(), String>> {
        let image = spec.container.as_ref().map(|c| c.image.clone());
        Box::pin(async move {
            let Some(image) = image else {
                return Err("no container settings".into());
            };
            match self.docker.inspect_image(&image).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Err(format!(
                    "image {image} is not present on the Swarm manager; load it on every node (no registry is used)"
                )),
                Err(e) => Err(format!("cannot check image {image} on the Swarm manager: {e}")),
            }
        })
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Box<dyn Running>, RuntimeError>> {
        Box::pin(async move {
            let Some(c) = spec.container.clone() else {
                return Err(spawn_error(&spec, "no container settings".into()));
            };
            let name = service_name(&self.platform, &spec.id);
            // The service may be there already: its task ended and Swarm started another (a
            // node went down, the process exited), or a previous daemon left it. A service of
            // the same version whose task is meant to run is followed; anything else is
            // replaced.
            let reuse = match self.docker.inspect_service(&name, None).await {
                Ok(existing) => {
                    let version = existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.labels.as_ref())
                        .and_then(|l| l.get(LABEL_VERSION).cloned());
                    if version.as_deref() == Some(spec.version.as_str()) {
                        true
                    } else {
                        remove_service(&self.docker, &name)
                            .await
                            .map_err(|e| spawn_error(&spec, e.to_string()))?;
                        false
                    }
                }
                Err(e) if is_not_found(&e) => false,
                Err(e) => return Err(spawn_error(&spec, e.to_string())),
            };
            // Nothing half-started is left behind: a failed start, or one given up on (the
            // supervisor was asked to stop meanwhile), removes the service.
            let mut guard = RemoveOnDrop {
                docker: Some(self.docker.clone()),
                name: name.clone(),
            };
            if !reuse {
                let service_spec = self
                    .service_spec(&name, &spec)
                    .await
                    .map_err(|e| spawn_error(&spec, e))?;
                self.docker
                    .create_service(service_spec, None)
                    .await
                    .map_err(|e| spawn_error(&spec, e.to_string()))?;
            }
            let task = self
                .running_task(&name, c.container_port, Instant::now() + TASK_START_TIMEOUT)
                .await
                .map_err(|e| spawn_error(&spec, e))?;
            let inst = self.attach(&name, task, &spec, true)?;
            guard.docker = None;
            Ok(Box::new(inst) as Box<dyn Running>)
        })
    }

    fn clean_up(&self, _left: Identity, _grace: Duration) -> BoxFuture<'_, bool> {
        // Swarm services are reconciled by label (see `find`), never by pid.
        Box::pin(async { false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_dns_labels() {
        assert_eq!(service_name("tcf", "api-blue-1"), "tcf-api-blue-1");
        assert_eq!(
            service_name("my_plat", "api_v2-green-3"),
            "my-plat-api-v2-green-3"
        );
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn a_task_address_is_its_node_and_its_published_port() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "Status": {"State": "running", "PortStatus": {"Ports": [
                {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 30001, "PublishMode": "host"},
                {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 30001, "PublishMode": "host"}
            ]}}
        }))
        .unwrap();
        assert_eq!(published_port(&task, 8080), Some(30001));
        assert_eq!(published_port(&task, 9090), None);
        let manager: bollard::models::Node = serde_json::from_value(serde_json::json!({
            "Status": {"State": "ready", "Addr": "0.0.0.0"},
            "ManagerStatus": {"Addr": "10.99.0.2:2377"}
        }))
        .unwrap();
        assert_eq!(node_address(&manager), "10.99.0.2".parse().ok());
        let worker: bollard::models::Node = serde_json::from_value(serde_json::json!({
            "Status": {"State": "ready", "Addr": "10.99.0.3"}
        }))
        .unwrap();
        assert_eq!(node_address(&worker), "10.99.0.3".parse().ok());
    }
}

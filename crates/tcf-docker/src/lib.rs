//! The Docker runtime: each instance is a container on a real Docker engine, driven through the
//! Engine API (bollard, over the local socket; `DOCKER_HOST` is respected).
//!
//! Containers carry labels (platform, service, version, colour, instance) so a restarted daemon
//! finds them; they publish their port on 127.0.0.1 only, on the port the daemon picked, so the
//! proxy routes to them exactly like to a process.

pub mod swarm;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tcf_runtime::logfile::open_instance_log;
use tcf_runtime::{
    procfs, BoxFuture, Exit, Identity, InstanceSpec, Running, Runtime, RuntimeError, StatusProbe,
};

/// The oldest Engine API we speak (Docker 19.03).
pub const MIN_API: (u32, u32) = (1, 40);

pub const LABEL_PLATFORM: &str = "tcf.platform";
pub const LABEL_SERVICE: &str = "tcf.service";
pub const LABEL_VERSION: &str = "tcf.version";
pub const LABEL_COLOUR: &str = "tcf.colour";
pub const LABEL_INSTANCE: &str = "tcf.instance";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine{}: {source}\nhint: start it (`dockerd`, or `systemctl start docker`) or point DOCKER_HOST at it; services {services} use runtime = \"docker\"", host.as_ref().map(|h| format!(" at {h}")).unwrap_or_default())]
    Unreachable {
        host: Option<String>,
        services: String,
        source: bollard::errors::Error,
    },
    #[error("the Docker engine speaks API {found}; tcf-platform needs {}.{} or newer\nhint: upgrade Docker (19.03 or later)", MIN_API.0, MIN_API.1)]
    TooOld { found: String },
    #[error("Docker engine error: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// A container left by an earlier daemon, found by its labels.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub service: String,
    pub version: String,
    pub colour: String,
    pub instance: String,
    pub running: bool,
    /// The loopback port it publishes.
    pub host_port: Option<u16>,
}

/// The longest any engine call may take to answer.
pub const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the HEALTHCHECK state lookup in the probe loop may take.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The CPU and memory of container `id` from its engine's stats (one sample); `None` when the
/// engine does not answer in time or reports no numbers.
pub async fn container_usage(docker: &Docker, id: &str) -> Option<tcf_runtime::Usage> {
    let mut stats = docker.stats(
        id,
        Some(bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        }),
    );
    let sample = tokio::time::timeout(STATUS_PROBE_TIMEOUT, stats.next())
        .await
        .ok()??
        .ok()?;
    usage_from_stats(&sample)
}

/// What `docker stats` shows: total CPU time, and memory without the page cache the kernel
/// can reclaim (`inactive_file` on cgroup v2, `total_inactive_file` on v1).
fn usage_from_stats(stats: &bollard::models::ContainerStatsResponse) -> Option<tcf_runtime::Usage> {
    let cpu_nanos = stats.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage?;
    let memory = stats.memory_stats.as_ref()?;
    let reclaimable = memory
        .stats
        .as_ref()
        .and_then(|s| {
            s.get("inactive_file")
                .or_else(|| s.get("total_inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    Some(tcf_runtime::Usage {
        cpu_micros: cpu_nanos / 1000,
        memory_bytes: memory.usage?.saturating_sub(reclaimable),
        // For a container without a limit, engines report the node's memory.
        memory_limit_bytes: memory.limit.filter(|l| *l > 0),
    })
}

/// A running container's settings that matter to security (`docker inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSecurity {
    pub name: String,
    /// Its `tcf.service` label.
    pub service: String,
    /// `Config.User`: the image's USER when the container sets none; empty is root.
    pub user: String,
    pub privileged: bool,
    pub network_mode: String,
    /// Host paths mounted into it.
    pub mounts: Vec<String>,
    /// Bytes; 0: no limit.
    pub memory: i64,
    pub read_only: bool,
    /// A HEALTHCHECK other than NONE.
    pub healthcheck: bool,
    /// (host IP, host port, container port/proto).
    pub published: Vec<(String, String, String)>,
}

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    platform: String,
}

fn parse_api(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl DockerRuntime {
    /// Connect, negotiate the API version and check the engine is recent enough.
    pub async fn connect(
        platform: &str,
        services: &[String],
    ) -> Result<DockerRuntime, DockerError> {
        let host = std::env::var("DOCKER_HOST").ok();
        let unreachable = |source| DockerError::Unreachable {
            host: host.clone(),
            services: services.join(", "),
            source,
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        // Every engine call is bounded (the response head; streams such as a container's wait
        // or logs go on): bollard's default of 120 s would stall a stop or a probe that long.
        let docker = docker
            .with_timeout(ENGINE_CALL_TIMEOUT)
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        let version = docker.version().await.map_err(unreachable)?;
        let api = version.api_version.unwrap_or_default();
        if parse_api(&api).is_none_or(|v| v < MIN_API) {
            return Err(DockerError::TooOld { found: api });
        }
        Ok(DockerRuntime {
            docker,
            platform: platform.to_string(),
        })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn platform_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_PLATFORM}={}", self.platform)],
        )])
    }

    /// The security-relevant settings of every running container of this platform, as
    /// `docker inspect` shows them (for `prod audit --comprehensive`).
    pub async fn inspect_security(&self) -> Result<Vec<ContainerSecurity>, DockerError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                filters: Some(self.platform_filter()),
                ..Default::default()
            }))
            .await?;
        let mut out = Vec::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            let c = match self.docker.inspect_container(&id, None).await {
                Ok(c) => c,
                // Gone between the list and the inspect: nothing runs there any more.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => return Err(e.into()),
            };
            let config = c.config.unwrap_or_default();
            let host = c.host_config.unwrap_or_default();
            let labels = config.labels.clone().unwrap_or_default();
            let published = host
                .port_bindings
                .unwrap_or_default()
                .into_iter()
                .flat_map(|(inner, bindings)| {
                    bindings.unwrap_or_default().into_iter().map(move |b| {
                        (
                            b.host_ip.unwrap_or_default(),
                            b.host_port.unwrap_or_default(),
                            inner.clone(),
                        )
                    })
                })
                .collect();
            out.push(ContainerSecurity {
                name: c
                    .name
                    .unwrap_or_else(|| id.clone())
                    .trim_start_matches('/')
                    .to_string(),
                service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                user: config.user.unwrap_or_default(),
                privileged: host.privileged.unwrap_or(false),
                network_mode: host.network_mode.unwrap_or_default(),
                mounts: c
                    .mounts
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| m.source)
                    .collect(),
                memory: host.memory.unwrap_or(0),
                read_only: host.readonly_rootfs.unwrap_or(false),
                healthcheck: config
                    .healthcheck
                    .and_then(|h| h.test)
                    .is_some_and(|t| !t.is_empty() && t[0] != "NONE"),
                published,
            });
        }
        Ok(out)
    }

    /// Every container of this platform, running or not.
    pub async fn find(&self) -> Result<Vec<Found>, DockerError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.platform_filter()),
                ..Default::default()
            }))
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
                Some(Found {
                    id: c.id?,
                    service: get(LABEL_SERVICE),
                    version: get(LABEL_VERSION),
                    colour: get(LABEL_COLOUR),
                    instance: get(LABEL_INSTANCE),
                    running: c.state.map(|s| s.to_string() == "running").unwrap_or(false),
                    host_port: c
                        .ports
                        .unwrap_or_default()
                        .iter()
                        .find(|p| p.ip.as_deref() == Some("127.0.0.1"))
                        .and_then(|p| p.public_port),
                })
            })
            .collect())
    }

    /// Remove a container whatever its state.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        self.docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await?;
        Ok(())
    }

    /// Create the platform's network unless it exists.
    pub async fn ensure_network(&self, name: &str) -> Result<(), DockerError> {
        let existing = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await?;
        if existing.iter().any(|n| n.name.as_deref() == Some(name)) {
            return Ok(());
        }
        self.docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.to_string(),
                labels: Some(HashMap::from([(
                    LABEL_PLATFORM.to_string(),
                    self.platform.clone(),
                )])),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Remove the networks this platform created.
    pub async fn remove_networks(&self) -> Result<(), DockerError> {
        let nets = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(self.platform_filter()),
            }))
            .await?;
        for n in nets {
            if let Some(id) = n.id {
                let _ = self.docker.remove_network(&id).await;
            }
        }
        Ok(())
    }

    /// Take over a running container found at startup, as the instance `spec` describes.
    pub async fn adopt(
        &self,
        found: &Found,
        spec: &InstanceSpec,
    ) -> Result<Box<dyn Running>, RuntimeError> {
        let pid = self.pid_of(&found.id).await;
        let running =
            DockerInstance::attach(self.docker.clone(), found.id.clone(), spec, pid, false)?;
        Ok(Box::new(running))
    }

    /// The host pid of a container's main process (for CPU and memory from /proc).
    async fn pid_of(&self, id: &str) -> u32 {
        self.docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|i| i.state?.pid)
            .unwrap_or(0) as u32
    }

    async fn image_present(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    async fn pull(&self, image: &str) -> Result<(), String> {
        let mut stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            item.map_err(|e| format!("cannot pull image {image}: {e}"))?;
        }
        Ok(())
    }
}

struct DockerInstance {
    docker: Docker,
    id: String,
    identity: Identity,
    exited: Arc<AtomicBool>,
}

impl DockerInstance {
    /// Follow the container's output into the instance's capped log file.
    fn attach(
        docker: Docker,
        id: String,
        spec: &InstanceSpec,
        pid: u32,
        from_start: bool,
    ) -> Result<DockerInstance, RuntimeError> {
        let log = open_instance_log(spec)?;
        let follower = docker.clone();
        let cid = id.clone();
        tokio::spawn(async move {
            let mut stream = follower.logs(
                &cid,
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
        Ok(DockerInstance {
            docker,
            id,
            identity: Identity {
                pid,
                pgid: pid,
                start_ticks: procfs::start_ticks(pid),
            },
            exited: Arc::new(AtomicBool::new(false)),
        })
    }

    fn signal(&self, signal: &str) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        let (docker, id, signal) = (self.docker.clone(), self.id.clone(), signal.to_string());
        tokio::spawn(async move {
            let _ = docker
                .kill_container(&id, Some(KillContainerOptions { signal }))
                .await;
        });
    }
}

impl Running for DockerInstance {
    fn identity(&self) -> Identity {
        self.identity
    }

    fn terminate(&self) {
        self.signal("SIGTERM");
    }

    fn kill(&self) {
        self.signal("SIGKILL");
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let mut stream = self.docker.wait_container(
                &self.id,
                Some(WaitContainerOptions {
                    condition: "not-running".into(),
                }),
            );
            let exit = match stream.next().await {
                Some(Ok(r)) => Exit::Code(r.status_code as i32),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Exit::Code(code as i32)
                }
                Some(Err(e)) => Exit::Unknown(e.to_string()),
                None => Exit::Unknown("the engine closed the wait".into()),
            };
            self.exited.store(true, Ordering::SeqCst);
            // A container is used once: what the platform created, it removes.
            let _ = self
                .docker
                .remove_container(
                    &self.id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
            exit
        })
    }

    fn status_probe(&self) -> Option<StatusProbe> {
        let (docker, id) = (self.docker.clone(), self.id.clone());
        Some(Arc::new(move || {
            let (docker, id) = (docker.clone(), id.clone());
            Box::pin(async move {
                // Runs in the probe loop: a slow engine must not hold up our own probes.
                let c =
                    tokio::time::timeout(STATUS_PROBE_TIMEOUT, docker.inspect_container(&id, None))
                        .await
                        .ok()?
                        .ok()?;
                let status = c.state?.health?.status?;
                Some(status.to_string())
            }) as BoxFuture<'static, Option<String>>
        }))
    }
}

impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn check(&self, spec: &InstanceSpec) -> BoxFuture<'_, Result<(), String>> {
        let spec = spec.clone();
        Box::pin(async move {
            let Some(c) = &spec.container else {
                return Err(format!("{} has no container settings", spec.id));
            };
            if self.image_present(&c.image).await {
                return Ok(());
            }
            if c.pull_missing {
                return self.pull(&c.image).await;
            }
            Err(format!(
                "image {} is not present on this Docker engine (pull = \"never\"); build or load it first (scripts/build-images builds the demo images)",
                c.image
            ))
        })
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Box<dyn Running>, RuntimeError>> {
        Box::pin(async move {
            let spawn_err = |e: String| RuntimeError::Spawn {
                instance: spec.id.clone(),
                program: spec
                    .container
                    .as_ref()
                    .map(|c| c.image.clone())
                    .unwrap_or_default(),
                source: std::io::Error::other(e),
            };
            let Some(c) = spec.container.clone() else {
                return Err(spawn_err("no container settings".into()));
            };
            self.check(&spec).await.map_err(spawn_err)?;
            let port_key = format!("{}/tcp", c.container_port);
            let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.push(format!("PORT={}", c.container_port));
            env.push(format!("TCF_SERVICE={}", spec.service));
            env.push(format!("TCF_VERSION={}", spec.version));
            env.push(format!("TCF_INSTANCE={}", spec.id));
            let labels = HashMap::from([
                (LABEL_PLATFORM.to_string(), self.platform.clone()),
                (LABEL_SERVICE.to_string(), spec.service.clone()),
                (LABEL_VERSION.to_string(), spec.version.clone()),
                (LABEL_COLOUR.to_string(), spec.colour.clone()),
                (LABEL_INSTANCE.to_string(), spec.id.clone()),
            ]);
            let host_config = HostConfig {
                port_bindings: Some(HashMap::from([(
                    port_key.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(spec.port.to_string()),
                    }]),
                )])),
                memory: c.memory_bytes.map(|m| m as i64),
                nano_cpus: c.cpus.map(|n| (n * 1e9) as i64),
                readonly_rootfs: Some(c.read_only),
                binds: (!c.volumes.is_empty()).then(|| c.volumes.clone()),
                network_mode: Some(c.network.clone()),
                ..Default::default()
            };
            let body = ContainerCreateBody {
                image: Some(c.image.clone()),
                cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
                entrypoint: c.entrypoint.clone(),
                env: Some(env),
                user: c.user.clone(),
                labels: Some(labels),
                exposed_ports: Some(vec![port_key]),
                stop_timeout: Some(spec.stop_timeout.as_secs() as i64),
                host_config: Some(host_config),
                ..Default::default()
            };
            // A container of the same name left from an earlier run is in the way: remove it.
            let name = format!("{}-{}", self.platform, spec.id);
            let _ = self.remove(&name).await;
            let created = self
                .docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name),
                        ..Default::default()
                    }),
                    body,
                )
                .await
                .map_err(|e| spawn_err(e.to_string()))?;
            if let Err(e) = self.docker.start_container(&created.id, None).await {
                let _ = self.remove(&created.id).await;
                return Err(spawn_err(e.to_string()));
            }
            let pid = self.pid_of(&created.id).await;
            let inst = DockerInstance::attach(self.docker.clone(), created.id, &spec, pid, true)?;
            Ok(Box::new(inst) as Box<dyn Running>)
        })
    }

    fn clean_up(&self, _left: Identity, _grace: Duration) -> BoxFuture<'_, bool> {
        // Containers are reconciled by label (see `find`), not by pid.
        Box::pin(async { false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    #[test]
    fn usage_is_cpu_time_and_memory_without_reclaimable_cache() {
        let mut stats = bollard::models::ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(2_500_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(50 << 20),
                limit: Some(256 << 20),
                stats: Some(HashMap::from([("inactive_file".to_string(), 8 << 20)])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let usage = usage_from_stats(&stats).unwrap();
        assert_eq!(usage.cpu_micros, 2_500_000);
        assert_eq!(usage.memory_bytes, 42 << 20);
        assert_eq!(usage.memory_limit_bytes, Some(256 << 20));
        // cgroup v1 names it differently.
        stats.memory_stats.as_mut().unwrap().stats = Some(HashMap::from([(
            "total_inactive_file".to_string(),
            2 << 20,
        )]));
        assert_eq!(usage_from_stats(&stats).unwrap().memory_bytes, 48 << 20);
        // A stopped container's stats carry no numbers.
        stats.cpu_stats = None;
        assert_eq!(usage_from_stats(&stats), None);
    }
}

//! A real three-node Docker Swarm on this machine for tests: `scripts/swarm-cluster` forms it
//! (three dockerd, each in its own network namespace, joined into one swarm), `SwarmCluster`
//! owns it and tears it down when dropped, however the test ends.
//!
//! ```ignore
//! if let Some(why) = SwarmCluster::unavailable() { eprintln!("skipped: {why}"); return; }
//! let cluster = SwarmCluster::up().expect("swarm cluster");
//! cluster.load(&["tcf/demo:v1"]).expect("images on every node");
//! // DOCKER_HOST of the manager: cluster.docker_host(); each node: cluster.node(2).address
//! cluster.kill_node(2).unwrap();     // a node's engine dies mid-run
//! cluster.start_node(2).unwrap();    // and comes back on the same data
//! cluster.down().unwrap();           // or let Drop do it
//! ```
//!
//! Every cluster has a state dir of its own (so tests and developers' clusters never meet) and
//! a slot: its names (`tcfswK-*` namespaces, `tcfswK-h` host interface, `tcf-swarm-K` cgroups)
//! and its addresses (`10.(192+K).0.0/16`; the host is `.0.1`, node N `.0.(10+N)`).

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct SwarmNode {
    /// 1, 2 or 3: what `stop_node`, `kill_node` and `start_node` take.
    pub number: usize,
    /// The node's hostname in the swarm (`docker node ls`, a task's node): `node1`...
    pub name: String,
    /// Its address, reachable from the host's network namespace (where the daemon and proxy
    /// run): host-mode published ports answer at `address:PublishedPort`.
    pub address: Ipv4Addr,
    /// `manager` or `worker`.
    pub role: String,
    /// This node's own engine (`unix://…/nodeN/docker.sock`), e.g. for its containers' stats.
    pub docker_host: String,
}

/// A running cluster; `Drop` tears it down completely.
pub struct SwarmCluster {
    state_dir: PathBuf,
    slot: u32,
    docker_host: String,
    nodes: Vec<SwarmNode>,
    torn_down: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/swarm-cluster")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// What went wrong when the script failed: its exit status and stderr.
fn failure(what: &str, out: &Output) -> anyhow::Error {
    anyhow::anyhow!(
        "scripts/swarm-cluster {what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

impl SwarmCluster {
    /// Why no cluster can be formed here (not root, no dockerd), or None. A test that gets
    /// Some prints it and returns; everywhere else (CI runs as root with docker.io) it runs.
    pub fn unavailable() -> Option<String> {
        if !is_root() {
            return Some("a swarm cluster needs root (network namespaces, mounts, cgroups)".into());
        }
        if !on_path("dockerd") {
            return Some("dockerd is not installed (apt-get install docker.io)".into());
        }
        None
    }

    /// Form a swarm of 1 manager (node1, the `docker_host`) and 2 workers.
    pub fn up() -> Result<Self> {
        Self::up_with_managers(1)
    }

    /// Form a swarm with 1 or 3 managers (3: any one node can be stopped and the other two
    /// keep a raft quorum; the endpoint is still node1's engine).
    pub fn up_with_managers(managers: u8) -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Short: the engines' unix sockets live below it (108-byte limit).
        let state_dir = std::env::temp_dir().join(format!(
            "tcf-swarm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let out = Command::new("bash")
            .arg(script())
            .args(["up", "--managers", &managers.to_string()])
            .env("TCF_SWARM_DIR", &state_dir)
            .output()
            .context("running scripts/swarm-cluster")?;
        // The script's timings and progress, for the test's output.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(failure("up", &out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let mut cluster = SwarmCluster {
            slot: std::fs::read_to_string(state_dir.join("slot"))
                .context("the cluster's slot file")?
                .trim()
                .parse()
                .context("the cluster's slot")?,
            state_dir,
            docker_host: String::new(),
            nodes: Vec::new(),
            torn_down: false,
        };
        cluster.docker_host = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("DOCKER_HOST="))
            .with_context(|| format!("no DOCKER_HOST=… as the last line of `up`:\n{stdout}"))?
            .to_string();
        for line in stdout.lines().filter(|l| l.starts_with("node")) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, address, role, docker_host] = fields[..] else {
                bail!("unexpected node line from `up`: {line}");
            };
            cluster.nodes.push(SwarmNode {
                number: name
                    .strip_prefix("node")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("node name {name}"))?,
                name: name.to_string(),
                address: address
                    .parse()
                    .with_context(|| format!("node address {address}"))?,
                role: role.to_string(),
                docker_host: docker_host.to_string(),
            });
        }
        if cluster.nodes.len() != 3 {
            bail!(
                "`up` listed {} nodes, not 3:\n{stdout}",
                cluster.nodes.len()
            );
        }
        Ok(cluster)
    }

    /// `DOCKER_HOST` of the manager the platform talks to (`unix://…/node1/docker.sock`).
    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }

    pub fn nodes(&self) -> &[SwarmNode] {
        &self.nodes
    }

    /// Node `n` (1, 2 or 3).
    pub fn node(&self, n: usize) -> &SwarmNode {
        &self.nodes[n - 1]
    }

    /// The node a swarm hostname (`node2`) names.
    pub fn node_named(&self, name: &str) -> Option<&SwarmNode> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The address the host has on the cluster's link (nodes reach the host's daemon there).
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 192 + self.slot as u8, 0, 1)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .env("TCF_SWARM_DIR", &self.state_dir)
            // Images come from the host's engine, whatever the caller's DOCKER_HOST says.
            .env_remove("DOCKER_HOST")
            .output()
            .context("running scripts/swarm-cluster")?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(failure(&args.join(" "), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Copy images from the host's engine to every node (`docker save | docker load`: the
    /// image ids stay the same). Services must then be created with `--no-resolve-image`
    /// (the engines prefer the local image; no registry is reachable).
    pub fn load(&self, images: &[&str]) -> Result<()> {
        let mut args = vec!["load"];
        args.extend_from_slice(images);
        self.run(&args).map(drop)
    }

    /// Stop node `n`'s engine with SIGTERM: it stops its containers (2 s grace) and tells the
    /// manager, which shows the node Down at once. Takes a few seconds.
    pub fn stop_node(&self, n: usize) -> Result<()> {
        self.run(&["stop-node", &n.to_string()]).map(drop)
    }

    /// SIGKILL node `n`'s engine with its containerd, shims and containers, like a power cut:
    /// the manager notices from missed heartbeats (2 s period: Down within ~6 s).
    pub fn kill_node(&self, n: usize) -> Result<()> {
        self.run(&["stop-node", &n.to_string(), "--kill"]).map(drop)
    }

    /// Start node `n`'s engine again on its data; returns once a manager sees it Ready.
    pub fn start_node(&self, n: usize) -> Result<()> {
        self.run(&["start-node", &n.to_string()]).map(drop)
    }

    /// `scripts/swarm-cluster status`: each node's engine and memory, then `docker node ls`.
    pub fn status(&self) -> Result<String> {
        self.run(&["status"])
    }

    /// The docker CLI against the manager; stdout.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        self.docker_at(&self.docker_host, args)
    }

    /// The docker CLI against one node's own engine; stdout.
    pub fn docker_on(&self, n: usize, args: &[&str]) -> Result<String> {
        self.docker_at(&self.node(n).docker_host, args)
    }

    fn docker_at(&self, host: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("docker")
            .arg("-H")
            .arg(host)
            .args(args)
            .output()
            .context("the docker CLI (apt-get install docker.io)")?;
        if !out.status.success() {
            bail!(
                "docker -H {host} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Each node's status as the manager sees it: hostname → `Ready`/`Down`/….
    pub fn node_states(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .docker(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])?
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(h, s)| (h.to_string(), s.to_string()))
            .collect())
    }

    /// Poll `ok` every 200 ms until it returns true; an error names `what` after `timeout`.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last = None;
        loop {
            match ok(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = Some(e),
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}{}",
                    last.map(|e| format!(" (last error: {e:#})"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What to look for on the host once the cluster is down (see `Traces::left`).
    pub fn traces(&self) -> Traces {
        Traces {
            slot: self.slot,
            state_dir: self.state_dir.clone(),
        }
    }

    /// Tear the cluster down now and say whether the script saw anything left.
    pub fn down(mut self) -> Result<()> {
        self.torn_down = true;
        self.run(&["down"]).map(drop)
    }
}

impl Drop for SwarmCluster {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = self.run(&["down"]) {
                eprintln!("tearing the swarm cluster down failed: {e:#}");
            }
        }
    }
}

/// The marks one cluster could leave on the host, to prove after `down` that none is left.
pub struct Traces {
    pub slot: u32,
    pub state_dir: PathBuf,
}

impl Traces {
    /// Everything of this cluster still on the host: its network namespaces, host interface,
    /// cgroups (any hierarchy), processes (named by the state dir, or in its cgroups), mounts,
    /// state dir and host iptables rules naming its addresses. Empty when the teardown was
    /// complete.
    pub fn left(&self) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = format!("tcfsw{}-", self.slot);
        let cgroup = format!("tcf-swarm-{}", self.slot);
        let subnet = format!("10.{}.", 192 + self.slot);
        let state = self.state_dir.to_string_lossy().to_string();

        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(&prefix) {
                    left.push(format!("network namespace {name}"));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(&prefix) {
                    left.push(format!("host interface {name}"));
                }
            }
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            let mount_point = line.split(' ').nth(4).unwrap_or("");
            if line.contains(&state) || line.contains(&prefix) {
                left.push(format!("mount {mount_point}"));
            }
            let fstype = line
                .split(" - ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next());
            if matches!(fstype, Some("cgroup" | "cgroup2"))
                && Path::new(mount_point).join(&cgroup).exists()
            {
                left.push(format!("cgroup {mount_point}/{cgroup}"));
            }
        }
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let pid = p.file_name().to_string_lossy().to_string();
                if !pid.bytes().all(|b| b.is_ascii_digit())
                    || !super::alive(pid.parse().unwrap_or(0))
                {
                    continue;
                }
                let cmdline = std::fs::read(p.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default();
                let cgroups = std::fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
                if cmdline.contains(&state) || cgroups.contains(&format!("/{cgroup}/")) {
                    left.push(format!("process {pid}: {}", cmdline.trim()));
                }
            }
        }
        if self.state_dir.exists() {
            left.push(format!("state dir {}", self.state_dir.display()));
        }
        for rule in IptablesRules::capture().lines {
            if rule.contains(&subnet) || rule.contains(&prefix) {
                left.push(format!("host iptables rule {rule}"));
            }
        }
        left
    }
}

/// The host's iptables and ip6tables rules (counters stripped), to compare before and after.
#[derive(Clone, Debug, Default)]
pub struct IptablesRules {
    pub lines: BTreeSet<String>,
}

impl IptablesRules {
    pub fn capture() -> Self {
        let mut lines = BTreeSet::new();
        for (family, tool) in [("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")] {
            let Ok(out) = Command::new(tool).output() else {
                continue;
            };
            let mut table = String::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with('#') || line == "COMMIT" {
                    continue;
                }
                if let Some(t) = line.strip_prefix('*') {
                    table = t.to_string();
                    continue;
                }
                // ":CHAIN POLICY [packets:bytes]" → without the counters.
                let line = match line.rfind(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                lines.insert(format!("{family} {table} {line}"));
            }
        }
        IptablesRules { lines }
    }

    /// Rules added or removed since `before` that the host's own engine did not make. Other
    /// tests may run containers on the host's engine meanwhile: their rules name its bridges
    /// (`docker0`, `br-…`) and are not counted.
    pub fn changes_since(&self, before: &IptablesRules) -> Vec<String> {
        let host_engine =
            |rule: &str| rule.contains("docker0") || rule.contains(" br-") || rule.contains("!br-");
        let added = self
            .lines
            .difference(&before.lines)
            .filter(|r| !host_engine(r))
            .map(|r| format!("added: {r}"));
        let removed = before
            .lines
            .difference(&self.lines)
            .filter(|r| !host_engine(r))
            .map(|r| format!("removed: {r}"));
        added.chain(removed).collect()
    }
}

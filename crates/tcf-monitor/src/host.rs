//! Host and process facts from /proc and statvfs: cheap reads, no subprocesses.

use std::path::Path;

/// Total and idle CPU time of the whole host in clock ticks (first line of /proc/stat).
pub fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// Busy share of the host's CPU between two `cpu_times` readings, in percent.
pub fn cpu_percent(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.0.checked_sub(before.0)?;
    let idle = after.1.checked_sub(before.1)?;
    (total > 0).then(|| (total.saturating_sub(idle)) as f64 / total as f64 * 100.0)
}

pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (used, total) memory in bytes; used = total − available, as `free` shows it.
pub fn memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total.saturating_sub(available), total))
}

/// (used, total) bytes of the filesystem holding `path`.
pub fn disk(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frag;
    let free = s.blocks_free() as u64 * frag;
    Some((total.saturating_sub(free), total))
}

/// Bytes received and sent by every interface but loopback, since boot.
pub fn network() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/dev").ok()?;
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    Some((rx, tx))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// What a container's cgroup says about all of its processes together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub memory_bytes: Option<u64>,
    /// None when unlimited.
    pub memory_limit: Option<u64>,
    /// CPU time used, in microseconds.
    pub cpu_micros: Option<u64>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Usage of the cgroup `pid` belongs to, cgroup v2 (unified) or v1 (memory, cpuacct). Only
/// meaningful for a process in its own cgroup, such as a container's main process.
pub fn cgroup_usage(pid: u32) -> Option<CgroupUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup_usage_from(&text, Path::new("/sys/fs/cgroup"))
}

/// The same, from a /proc/PID/cgroup text and the cgroup mount root (for tests).
pub fn cgroup_usage_from(proc_cgroup: &str, root: &Path) -> Option<CgroupUsage> {
    let mut usage = CgroupUsage::default();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: the root itself when pure v2, else the hybrid layout's "unified".
            let base = if root.join("cgroup.controllers").exists() {
                root.to_path_buf()
            } else {
                root.join("unified")
            };
            let dir = base.join(rel);
            usage.memory_bytes = usage
                .memory_bytes
                .or_else(|| read_u64(&dir.join("memory.current")));
            if usage.memory_limit.is_none() {
                usage.memory_limit = read_u64(&dir.join("memory.max"));
            }
            usage.cpu_micros = usage.cpu_micros.or_else(|| {
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()
            });
            continue;
        }
        let names: Vec<&str> = controllers.split(',').collect();
        let dirs = [root.join(controllers).join(rel)]
            .into_iter()
            .chain(names.iter().map(|n| root.join(n).join(rel)));
        for dir in dirs {
            if names.contains(&"memory") {
                if let Some(m) = read_u64(&dir.join("memory.usage_in_bytes")) {
                    usage.memory_bytes = Some(m);
                    // v1 writes "no limit" as a huge number.
                    usage.memory_limit =
                        read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < 1 << 60);
                }
            }
            if names.contains(&"cpuacct") {
                if let Some(ns) = read_u64(&dir.join("cpuacct.usage")) {
                    usage.cpu_micros = Some(ns / 1000);
                }
            }
        }
    }
    (usage != CgroupUsage::default()).then_some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host() {
        let a = cpu_times().unwrap();
        assert!(a.0 >= a.1);
        assert!(load1().unwrap() >= 0.0);
        let (used, total) = memory().unwrap();
        assert!(total > 0 && used <= total);
        let (used, total) = disk(Path::new("/")).unwrap();
        assert!(total > 0 && used <= total);
        assert!(network().is_some());
        let fds = open_fds(std::process::id()).unwrap();
        assert!(fds >= 3, "{fds}");
        assert_eq!(cpu_percent((100, 50), (200, 100)), Some(50.0));
        assert_eq!(cpu_percent((100, 50), (100, 50)), None);
    }

    #[test]
    fn cgroup_v1_and_v2_layouts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // v2 (pure): files in the root's hierarchy.
        std::fs::write(r.join("cgroup.controllers"), "cpu memory\n").unwrap();
        let c = r.join("system.slice/docker-abc.scope");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("memory.current"), "1048576\n").unwrap();
        std::fs::write(c.join("memory.max"), "max\n").unwrap();
        std::fs::write(c.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        assert_eq!(
            cgroup_usage_from("0::/system.slice/docker-abc.scope\n", r),
            Some(CgroupUsage {
                memory_bytes: Some(1_048_576),
                memory_limit: None,
                cpu_micros: Some(2500),
            })
        );
        // v1: per-controller hierarchies, "cpu,cpuacct" mounted together.
        let root1 = tempfile::tempdir().unwrap();
        let r1 = root1.path();
        let m = r1.join("memory/docker/abc");
        let cpu = r1.join("cpu,cpuacct/docker/abc");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(m.join("memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(m.join("memory.limit_in_bytes"), "268435456\n").unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "7000000\n").unwrap();
        let text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(
            cgroup_usage_from(text, r1),
            Some(CgroupUsage {
                memory_bytes: Some(4096),
                memory_limit: Some(268_435_456),
                cpu_micros: Some(7000),
            })
        );
        assert_eq!(cgroup_usage_from("0::/nowhere\n", r1), None);
    }
}

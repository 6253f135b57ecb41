//! What a process is and what it listens on, from procfs: its effective uid, and the TCP
//! sockets in LISTEN state among its file descriptors (read in its own network namespace).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

const TCP_LISTEN: &str = "0A";

/// The effective uid of `pid` (the second field of `Uid:` in /proc/PID/status).
pub fn effective_uid(pid: u32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no Uid line in /proc/{pid}/status")))
}

/// The inodes of the sockets among `pid`'s open file descriptors.
fn socket_inodes(pid: u32) -> io::Result<BTreeSet<u64>> {
    let mut inodes = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // An fd closed while we read the directory is simply gone.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// A kernel address from /proc/net/tcp{,6}: 32-bit words in host byte order, printed as hex.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A dual-stack socket bound to a v4 address shows it v4-mapped.
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

/// LISTEN sockets of one /proc/…/net/tcp{,6} table: (inode, address).
pub fn parse_table(text: &str) -> Vec<(u64, SocketAddr)> {
    parse_listen_rows(text)
        .into_iter()
        .map(|row| (row.inode, row.addr))
        .collect()
}

/// A socket in LISTEN state as /proc/net/tcp{,6} shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRow {
    pub addr: SocketAddr,
    /// The socket's owner (the uid of whoever created it).
    pub uid: u32,
    pub inode: u64,
}

/// LISTEN rows of one /proc/…/net/tcp{,6} table.
pub fn parse_listen_rows(text: &str) -> Vec<ListenRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&TCP_LISTEN) {
                return None;
            }
            let (ip, port) = fields.get(1)?.split_once(':')?;
            let addr = SocketAddr::new(parse_ip(ip)?, u16::from_str_radix(port, 16).ok()?);
            Some(ListenRow {
                addr,
                uid: fields.get(7)?.parse().ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Every LISTEN socket of this host (the audit's own network namespace), from
/// /proc/net/tcp and /proc/net/tcp6.
pub fn host_listen_rows() -> io::Result<Vec<ListenRow>> {
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => rows.extend(parse_listen_rows(&text)),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table.ends_with('6') => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rows)
}

/// Which processes hold each socket inode, for every process whose /proc/PID/fd this audit
/// may read (all of them as root; its own user's otherwise).
pub fn socket_holders() -> BTreeMap<u64, BTreeSet<u32>> {
    let mut holders: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return holders;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Another user's process, or one that exited meanwhile: not ours to see.
        let Ok(inodes) = socket_inodes(pid) else {
            continue;
        };
        for inode in inodes {
            holders.entry(inode).or_default().insert(pid);
        }
    }
    holders
}

/// The command name of `pid` (/proc/PID/comm, at most 15 characters).
pub fn command_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
        .filter(|c| !c.is_empty())
}

/// The TCP addresses `pid` listens on.
pub fn listening_addrs(pid: u32) -> io::Result<BTreeSet<SocketAddr>> {
    let inodes = socket_inodes(pid)?;
    let mut addrs = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound && Path::new(&path).ends_with("tcp6") => {
                continue
            }
            Err(e) => return Err(e),
        };
        addrs.extend(
            parse_table(&text)
                .into_iter()
                .filter(|(inode, _)| inodes.contains(inode))
                .map(|(_, addr)| addr),
        );
    }
    Ok(addrs)
}

/// Every TCP address this host listens on, in the audit's own network namespace.
pub fn host_listeners() -> io::Result<BTreeSet<SocketAddr>> {
    let mut addrs = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => addrs.extend(parse_table(&text).into_iter().map(|(_, a)| a)),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table.ends_with('6') => {}
            Err(e) => return Err(e),
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_rows_of_both_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0BB9 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 12346 1 0000000000000000 20 4 30 10 -1\n";
        let rows = parse_table(v4);
        if cfg!(target_endian = "little") {
            assert_eq!(rows, vec![(12345, "127.0.0.1:3000".parse().unwrap())]);
        }
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 998 1 0000000000000000 100 0 0 10 0\n";
        let rows = parse_table(v6);
        if cfg!(target_endian = "little") {
            assert_eq!(
                rows,
                vec![
                    (999, "[::]:8080".parse().unwrap()),
                    (998, "127.0.0.1:80".parse().unwrap())
                ]
            );
        }
    }

    #[test]
    fn listen_rows_carry_uid_and_inode() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0\n";
        let rows = parse_listen_rows(v4);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].uid, rows[0].inode), (1000, 12345));
        assert!(parse_listen_rows("header only\n").is_empty());
    }

    #[test]
    fn the_host_table_and_the_holders_name_our_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let row = host_listen_rows()
            .unwrap()
            .into_iter()
            .find(|r| r.addr == addr)
            .expect("our listener in /proc/net/tcp");
        let holders = socket_holders();
        assert!(
            holders
                .get(&row.inode)
                .is_some_and(|pids| pids.contains(&std::process::id())),
            "{:?}",
            holders.get(&row.inode)
        );
        assert!(command_name(std::process::id()).is_some());
    }

    #[test]
    fn finds_our_own_listener_and_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let addrs = listening_addrs(std::process::id()).unwrap();
        assert!(addrs.contains(&addr), "{addr} not in {addrs:?}");
        drop(listener);
        let addrs = listening_addrs(std::process::id()).unwrap();
        assert!(!addrs.contains(&addr));
        let uid = effective_uid(std::process::id()).unwrap();
        let meta = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(uid, std::os::unix::fs::MetadataExt::uid(&meta));
    }
}

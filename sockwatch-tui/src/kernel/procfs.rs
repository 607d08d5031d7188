//! What /proc says about sockets: the kernel's socket tables (`/proc/net/{tcp,udp}{,6}`) and
//! which process holds which socket on which fd (`/proc/PID/fd`).
//!
//! Used for what the probes cannot see: sockets open before sockwatch started, the local port of
//! accepted sockets, and the periodic check that tracked fds still name the same socket; and
//! what a process is beyond its pid (its cgroup's owner, its namespace pid).

use std::{
    collections::HashMap,
    fs, io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
};

use crate::socket::{Process, Proto};

/// TCP states as `/proc/net/tcp` prints them (`include/net/tcp_states.h`).
pub const TCP_LISTEN: u8 = 0x0a;
const TCP_TIME_WAIT: u8 = 0x06;
const TCP_CLOSE: u8 = 0x07;

/// One inet socket from the kernel's tables; an IPv4-mapped address as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InetSocket {
    pub inode: u64,
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TCP state number; for UDP 1 means connected.
    pub state: u8,
}

impl InetSocket {
    /// A socket with a peer: connected UDP, or TCP past the handshake and not yet gone.
    pub fn is_connected(&self) -> bool {
        self.remote.port() != 0 && !matches!(self.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE)
    }
}

/// Every inet socket the kernel lists (IPv4 and IPv6, TCP and UDP), by inode.
pub fn inet_sockets() -> HashMap<u64, InetSocket> {
    let mut sockets = HashMap::new();
    for (file, proto) in [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ] {
        // A kernel without IPv6 has no tcp6/udp6: nothing to add.
        if let Ok(text) = fs::read_to_string(file) {
            for socket in parse_table(&text, proto) {
                sockets.insert(socket.inode, socket);
            }
        }
    }
    sockets
}

/// Parses one `/proc/net/{tcp,udp}{,6}` table.
pub fn parse_table(text: &str, proto: Proto) -> Vec<InetSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = parse_endpoint(fields.get(1)?)?;
            let remote = parse_endpoint(fields.get(2)?)?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(InetSocket {
                inode,
                proto,
                local,
                remote,
                state,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address in host byte order. An IPv4-mapped address is IPv4, as rows show it.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for chunk in addr.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            IpAddr::V6(v6).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The socket inode behind `/proc/PID/fd/FD`: `Ok(None)` when the fd is not a socket,
/// `Err` when the fd (or the process) does not exist.
pub fn socket_inode(pid: u32, fd: u32) -> io::Result<Option<u64>> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))?;
    Ok(parse_socket_link(&link.to_string_lossy()))
}

/// `socket:[12345]` → 12345.
pub fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every (pid, fd, inode) of a socket held by any process.
pub fn socket_fds() -> Vec<(u32, u32, u64)> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we read: a vanished one is simply skipped.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd_entry in fds.flatten() {
            let Some(fd) = fd_entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(inode) = fs::read_link(fd_entry.path())
                .ok()
                .and_then(|link| parse_socket_link(&link.to_string_lossy()))
            {
                found.push((pid, fd, inode));
            }
        }
    }
    found
}

/// The lowest fd of process `pid` that holds socket `inode`, if any.
pub fn fd_of_socket(pid: u32, inode: u64) -> Option<u32> {
    fds_of_socket(pid, inode).into_iter().min()
}

/// Every fd of process `pid` that holds socket `inode`, lowest first.
pub fn fds_of_socket(pid: u32, inode: u64) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let link = fs::read_link(entry.path()).ok()?;
            (parse_socket_link(&link.to_string_lossy()) == Some(inode)).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The children of process `pid` (of each of its threads), from `/proc/PID/task/*/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

/// A process's name, as the kernel's `comm`.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// Its owner (unit, container) and namespace pid, from `/proc/PID/cgroup` and `status`;
/// `None` once the process is gone.
pub fn process(pid: u32) -> Option<Process> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    // A kernel without cgroups has no such file: every process is in the root.
    let cgroup = fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
    Some(Process::parse(pid, &cgroup, &status))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 20 4 0 10 -1
   1: 00000000000000000000000001000000:0016 00000000000000000000000001000000:D432 01 00000000:00000000 00:00000000 00000000     0        0 5252 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn parses_ipv4_rows() {
        let rows = parse_table(TCP, Proto::Tcp);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!((rows[0].state, rows[0].inode), (TCP_LISTEN, 4242));
        assert!(!rows[0].is_connected());
        assert_eq!(rows[1].remote, "127.0.0.1:8080".parse().expect("addr"));
        assert!(rows[1].is_connected());
    }

    #[test]
    fn parses_ipv6_rows_and_ipv4_mapped_ones_as_ipv4() {
        let rows = parse_table(TCP6, Proto::Tcp);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].local, "127.0.0.1:8081".parse().expect("addr"));
        assert_eq!(rows[0].remote.port(), 0xD431);
        assert_eq!(rows[1].local, "[::1]:22".parse().expect("addr"));
        assert_eq!(rows[1].remote, "[::1]:54322".parse().expect("addr"));
        assert!(rows[1].is_connected());
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn own_socket_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener) as u32;
        let inode = socket_inode(std::process::id(), fd)
            .expect("fd exists")
            .expect("a socket");
        let socket = inet_sockets()
            .remove(&inode)
            .expect("listed in /proc/net/tcp");
        assert_eq!((socket.local.port(), socket.state), (port, TCP_LISTEN));
        assert!(socket_fds().contains(&(std::process::id(), fd, inode)));
    }
}

//! TCP health as the kernel itself reports it: netlink `sock_diag`, the interface `ss -ti`
//! reads. One dump per network namespace per refresh gives every TCP socket's `struct
//! tcp_info`, queues and local port, keyed by inode, which is what a row already carries
//! ([`crate::socket::Socket::inode`]). No per-socket syscall, no program in the kernel.
//!
//! A dump only lists the sockets of the namespace its netlink socket was opened in; sockets of
//! a container live in another. So one netlink socket is kept per namespace a tracked process
//! lives in, opened from a short-lived thread that first joins that namespace (a netlink
//! socket stays bound to the namespace it was created in).

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    fs::File,
    io,
    mem::size_of,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

use crate::socket::{TcpDetail, TcpHealth, TcpReading};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_INFO: u16 = 2;
/// TCP states (`include/net/tcp_states.h`) a dump leaves out: listeners (no peer, no row) and
/// TIME_WAIT / NEW_SYN_RECV minisockets (no inode, no process).
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;
const ALL_STATES: u32 = (1 << 13) - 1;
const DUMPED_STATES: u32 =
    ALL_STATES & !(1 << TCP_TIME_WAIT) & !(1 << TCP_LISTEN) & !(1 << TCP_NEW_SYN_RECV);
/// `inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue, wqueue, uid,
/// inode.
const DIAG_MSG_LEN: usize = 72;
const NLMSG_HDR_LEN: usize = 16;
/// Large enough for a few hundred sockets per `recv`; the kernel fills it and keeps the rest.
const RECV_BUFFER: usize = 64 * 1024;

/// What one read of every namespace found: each socket's reading by inode (a fast hasher: a
/// reading of 100,000 sockets is built and looked up in whole), and the rest of the reading of
/// the one socket asked for (the details view's), when found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readings {
    pub by_inode: HashMap<u64, TcpReading, foldhash::fast::RandomState>,
    /// The rest of the reading of the socket asked for.
    pub detail: Option<TcpDetail>,
}

impl Readings {
    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }
}

/// Netlink sockets by network namespace, and which namespace each tracked process lives in.
pub struct Diag {
    own_netns: u64,
    sockets: HashMap<u64, OwnedFd>,
    netns_of_pid: HashMap<u32, u64>,
    buffer: Vec<u8>,
    seq: u32,
}

impl Diag {
    /// A netlink socket in sockwatch's own namespace: fails where the kernel has no
    /// `sock_diag` (`CONFIG_INET_DIAG`).
    pub fn open() -> io::Result<Self> {
        let own_netns = std::fs::metadata("/proc/self/ns/net")?.ino();
        let socket = netlink_socket()?;
        Ok(Self {
            own_netns,
            sockets: HashMap::from([(own_netns, socket)]),
            netns_of_pid: HashMap::new(),
            buffer: vec![0; RECV_BUFFER],
            seq: 0,
        })
    }

    /// Dumps the TCP sockets of every namespace the processes `pids` live in (and our own),
    /// with the whole reading of the socket `detail_of` (an inode) if it is among them.
    /// A namespace that cannot be read (its process gone) is skipped: its sockets show no
    /// health until the next read.
    pub fn read(
        &mut self,
        pids: impl IntoIterator<Item = u32>,
        detail_of: Option<u64>,
    ) -> Readings {
        let pids: HashSet<u32> = pids.into_iter().collect();
        self.netns_of_pid.retain(|pid, _| pids.contains(pid));
        let mut namespaces = HashSet::from([self.own_netns]);
        for pid in pids {
            if let Some(netns) = self.netns_of(pid) {
                namespaces.insert(netns);
            }
        }
        // Namespaces no tracked process lives in any more: their netlink sockets go.
        self.sockets
            .retain(|netns, _| namespaces.contains(netns) || *netns == self.own_netns);
        let mut readings = Readings::default();
        for netns in namespaces {
            let Some(socket) = self.sockets.get(&netns) else {
                continue;
            };
            let fd = socket.as_raw_fd();
            for family in [libc::AF_INET, libc::AF_INET6] {
                self.seq = self.seq.wrapping_add(1);
                if dump(
                    fd,
                    family,
                    self.seq,
                    &mut self.buffer,
                    &mut readings,
                    detail_of,
                )
                .is_err()
                {
                    // A dump cut short leaves the rest of its answer queued, and the kernel
                    // refuses another dump on that socket until it is read (EBUSY): the socket
                    // goes, and is opened afresh (another namespace's at its next read).
                    self.sockets.remove(&netns);
                    if netns == self.own_netns {
                        if let Ok(socket) = netlink_socket() {
                            self.sockets.insert(netns, socket);
                        }
                    }
                    break;
                }
            }
        }
        readings
    }

    /// The namespace `pid` lives in, with a netlink socket open in it; learned once per
    /// process.
    fn netns_of(&mut self, pid: u32) -> Option<u64> {
        if let Some(&netns) = self.netns_of_pid.get(&pid) {
            if self.sockets.contains_key(&netns) {
                return Some(netns);
            }
        }
        let path = format!("/proc/{pid}/ns/net");
        let file = File::open(&path).ok()?;
        let netns = file.metadata().ok()?.ino();
        self.netns_of_pid.insert(pid, netns);
        if let Entry::Vacant(vacant) = self.sockets.entry(netns) {
            vacant.insert(netlink_socket_in(&file).ok()?);
        }
        Some(netns)
    }
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // A dump is answered at once; the bound keeps a surprise from hanging the loop.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a valid timeval for the call's duration.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// A netlink socket created inside the namespace `netns` (an open `/proc/PID/ns/net`), from a
/// thread that joins it and ends: setns(2) of a network namespace applies to the calling
/// thread only, so the rest of the process stays where it was.
fn netlink_socket_in(netns: &File) -> io::Result<OwnedFd> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) on an open namespace file, for this thread alone.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                netlink_socket()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Asks for every TCP socket of `family` with its `tcp_info`, and reads the answer into
/// `readings`.
fn dump(
    fd: i32,
    family: i32,
    seq: u32,
    buffer: &mut [u8],
    readings: &mut Readings,
    detail_of: Option<u64>,
) -> io::Result<()> {
    let request = request(family, seq);
    // SAFETY: `request` is a valid buffer of its length; the kernel's address is the default
    // (pid 0) for an unbound netlink socket's send.
    let sent = unsafe { libc::send(fd, request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    loop {
        // SAFETY: `buffer` is writable for its length.
        let len = unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
        match parse_messages(&buffer[..len], seq, readings, detail_of)? {
            Parsed::More => {}
            Parsed::Done => return Ok(()),
        }
    }
}

/// `nlmsghdr` + `inet_diag_req_v2`.
fn request(family: i32, seq: u32) -> Vec<u8> {
    let mut message = Vec::with_capacity(NLMSG_HDR_LEN + 56);
    let len = (NLMSG_HDR_LEN + 56) as u32;
    message.extend_from_slice(&len.to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, extensions wanted, pad, states, then a zero sockid
    // (48 bytes: no filter by address).
    message.push(family as u8);
    message.push(libc::IPPROTO_TCP as u8);
    message.push(1 << (INET_DIAG_INFO - 1));
    message.push(0);
    message.extend_from_slice(&DUMPED_STATES.to_ne_bytes());
    message.extend_from_slice(&[0; 48]);
    message
}

enum Parsed {
    More,
    Done,
}

/// `N` bytes at `at`, if the message has them (a field past its end reads 0 below).
fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    bytes_at(bytes, at).map_or(0, u16::from_ne_bytes)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes_at(bytes, at).map_or(0, u32::from_ne_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    bytes_at(bytes, at).map_or(0, u64::from_ne_bytes)
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Parses one `recv`'s worth of netlink messages; the whole reading of the socket `detail_of`.
fn parse_messages(
    mut bytes: &[u8],
    seq: u32,
    readings: &mut Readings,
    detail_of: Option<u64>,
) -> io::Result<Parsed> {
    while bytes.len() >= NLMSG_HDR_LEN {
        let len = read_u32(bytes, 0) as usize;
        if len < NLMSG_HDR_LEN || len > bytes.len() {
            return Err(io::Error::other("a truncated netlink message"));
        }
        let kind = read_u16(bytes, 4);
        let message_seq = read_u32(bytes, 8);
        let payload = &bytes[NLMSG_HDR_LEN..len];
        bytes = &bytes[align4(len).min(bytes.len())..];
        if message_seq != seq {
            // The rest of an earlier dump that timed out: not ours.
            continue;
        }
        match i32::from(kind) {
            libc::NLMSG_DONE => return Ok(Parsed::Done),
            libc::NLMSG_ERROR => {
                let errno = read_u32(payload, 0).cast_signed();
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ if kind == SOCK_DIAG_BY_FAMILY => {
                if let Some((inode, reading, info)) = parse_socket(payload) {
                    if detail_of == Some(inode) {
                        readings.detail = Some(parse_tcp_detail(info));
                    }
                    readings.by_inode.insert(inode, reading);
                }
            }
            _ => {}
        }
    }
    Ok(Parsed::More)
}

/// One `inet_diag_msg` and its attributes: the socket's inode, its reading, and its
/// `tcp_info` (empty if the kernel sent none).
fn parse_socket(payload: &[u8]) -> Option<(u64, TcpReading, &[u8])> {
    if payload.len() < DIAG_MSG_LEN {
        return None;
    }
    let inode = u64::from(read_u32(payload, 68));
    if inode == 0 {
        return None;
    }
    let mut info: &[u8] = &[];
    let mut attrs = &payload[DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(read_u16(attrs, 0));
        let kind = read_u16(attrs, 2);
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == INET_DIAG_INFO {
            info = &attrs[4..len];
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    let u32_at = |at| read_u32(info, at);
    let health = TcpHealth {
        state: payload[1],
        recv_q: read_u32(payload, 56),
        send_q: read_u32(payload, 60),
        // Timer 4 is the zero-window probe timer: the peer advertises no room.
        zero_window: payload[2] == 4,
        rtt_us: u32_at(68),
        rttvar_us: u32_at(72),
        cwnd: u32_at(80),
        retrans: u32_at(100),
        // last_data_sent, last_data_recv.
        quiet_ms: u32_at(44).min(u32_at(52)),
        snd_wnd: (info.len() >= 232).then(|| u32_at(228)).into(),
    };
    let reading = TcpReading {
        health,
        // The sport is in network order.
        lport: u16::from_be(read_u16(payload, 4)),
    };
    Some((inode, reading, info))
}

/// The rest of `struct tcp_info` (include/uapi/linux/tcp.h); it only grows, and the kernel
/// sends as much of it as it has, so a field past the end reads 0.
fn parse_tcp_detail(info: &[u8]) -> TcpDetail {
    let u32_at = |at| read_u32(info, at);
    TcpDetail {
        probes: info.get(3).copied().unwrap_or(0),
        backoff: info.get(4).copied().unwrap_or(0),
        rto_us: u32_at(8),
        snd_mss: u32_at(16),
        unacked: u32_at(24),
        lost: u32_at(32),
        retrans_out: u32_at(36),
        ssthresh: u32_at(76),
        pacing_rate: read_u64(info, 104),
        bytes_acked: read_u64(info, 120),
        bytes_received: read_u64(info, 128),
        min_rtt_us: u32_at(148),
        delivery_rate: read_u64(info, 160),
        busy_us: read_u64(info, 168),
        rwnd_limited_us: read_u64(info, 176),
        sndbuf_limited_us: read_u64(info, 184),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let len = (NLMSG_HDR_LEN + payload.len()) as u32;
        bytes.extend_from_slice(&len.to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&0u16.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(align4(bytes.len()), 0);
        bytes
    }

    fn diag_msg(inode: u32, sport: u16, info: &[u8]) -> Vec<u8> {
        let mut msg = vec![0u8; DIAG_MSG_LEN];
        msg[0] = libc::AF_INET as u8;
        msg[1] = 1; // ESTABLISHED
        msg[2] = 4; // the zero-window probe timer
        msg[4..6].copy_from_slice(&sport.to_be_bytes());
        msg[56..60].copy_from_slice(&7u32.to_ne_bytes());
        msg[60..64].copy_from_slice(&9u32.to_ne_bytes());
        msg[68..72].copy_from_slice(&inode.to_ne_bytes());
        let attr_len = (4 + info.len()) as u16;
        msg.extend_from_slice(&attr_len.to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        msg.extend_from_slice(info);
        msg
    }

    #[test]
    fn a_dump_yields_each_socket_by_inode_with_its_tcp_info() {
        // A tcp_info as old kernels send it (104 bytes: up to total_retrans).
        let mut info = vec![0u8; 104];
        info[68..72].copy_from_slice(&1500u32.to_ne_bytes());
        info[72..76].copy_from_slice(&300u32.to_ne_bytes());
        info[80..84].copy_from_slice(&10u32.to_ne_bytes());
        info[100..104].copy_from_slice(&3u32.to_ne_bytes());
        let mut bytes = message(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(4242, 40000, &info));
        // Another dump's leftovers are ignored.
        bytes.extend(message(SOCK_DIAG_BY_FAMILY, 4, &diag_msg(1, 1, &info)));
        let mut readings = Readings::default();
        assert!(matches!(
            parse_messages(&bytes, 5, &mut readings, Some(4242)),
            Ok(Parsed::More)
        ));
        assert_eq!(readings.len(), 1);
        let reading = readings.by_inode[&4242];
        assert_eq!(reading.lport, 40000);
        let health = reading.health;
        assert_eq!((health.recv_q, health.send_q), (7, 9));
        assert_eq!((health.rtt_us, health.rttvar_us), (1500, 300));
        assert_eq!((health.cwnd, health.retrans), (10, 3));
        assert!(health.zero_window);
        assert_eq!(health.snd_wnd.get(), None, "not sent by this kernel");
        let detail = readings.detail.expect("the detail asked for");
        assert_eq!((detail.delivery_rate, detail.min_rtt_us), (0, 0));

        let done = message(libc::NLMSG_DONE as u16, 5, &[0; 4]);
        assert!(matches!(
            parse_messages(&done, 5, &mut readings, None),
            Ok(Parsed::Done)
        ));
        let mut error = (-libc::EPERM).to_ne_bytes().to_vec();
        error.extend_from_slice(&[0; 16]);
        let error = message(libc::NLMSG_ERROR as u16, 5, &error);
        let failed = parse_messages(&error, 5, &mut readings, None).err();
        assert_eq!(failed.and_then(|e| e.raw_os_error()), Some(libc::EPERM));
    }

    #[test]
    fn the_request_asks_for_tcp_info_of_connected_tcp_sockets() {
        let request = request(libc::AF_INET, 9);
        assert_eq!(request.len(), 72);
        assert_eq!(read_u32(&request, 0), 72);
        assert_eq!(read_u16(&request, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(request[17], libc::IPPROTO_TCP as u8);
        assert_eq!(request[18], 2, "INET_DIAG_INFO");
        let states = read_u32(&request, 20);
        assert_eq!(states & (1 << 1), 1 << 1, "ESTABLISHED");
        assert_eq!(states & (1 << 2), 1 << 2, "SYN_SENT");
        assert_eq!(states & (1 << TCP_LISTEN), 0);
    }

    /// The real kernel: a connected pair on 127.0.0.1 is in the dump, both ends, with the
    /// ports and inodes the sockets themselves report.
    #[test]
    fn the_kernel_lists_a_connected_pair() {
        let Ok(mut diag) = Diag::open() else {
            // Needs no privilege; a kernel without sock_diag cannot run this.
            panic!("sock_diag is not available");
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let inode = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .expect("fd")
                .ino()
        };
        let client_inode = inode(client.as_raw_fd());
        let readings = diag.read([std::process::id()], Some(client_inode));
        let client_reading = readings.by_inode[&client_inode];
        let server_reading = readings.by_inode[&inode(server.as_raw_fd())];
        assert_eq!(
            client_reading.lport,
            client.local_addr().expect("addr").port()
        );
        assert_eq!(
            server_reading.lport,
            listener.local_addr().expect("addr").port()
        );
        assert_eq!(client_reading.health.state, 1, "ESTABLISHED");
        assert!(client_reading.health.cwnd > 0);
        let detail = readings.detail.expect("the client's whole reading");
        assert!(detail.snd_mss > 0 && detail.rto_us > 0);
    }
}

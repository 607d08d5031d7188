//! A network namespace of the test's own, with faults on its loopback.
//!
//! A test that needs one runs again as a child process in a new network namespace
//! ([`run_in_new_netns`]); the child brings its loopback up, puts the fault injector on it
//! ([`Fault`]), and starts sockwatch back in the machine's own namespace
//! ([`super::Sockwatch::start_outside_netns`]), as a user watching a container would.
//! Traffic never leaves the namespace.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::Array,
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        SchedClassifier, TcAttachType,
    },
    Ebpf,
};

use super::process;

static CHILDREN: Mutex<()> = Mutex::new(());

/// Set in the child that runs a test's body inside its namespace.
const IN_NETNS: &str = "SOCKWATCH_TEST_IN_NETNS";
/// The whole child run: its sockwatch, traffic and checks.
const CHILD_TIMEOUT: Duration = Duration::from_secs(240);

/// The fault injector `build.rs` builds with the programs (`sockwatch-ebpf/src/fault.rs`).
static FAULT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockwatch-fault.bpf.o"));

/// True in the child, which then runs the test's body; in the parent, runs the test `name`
/// again in a child process in a new network namespace, passes its output on, fails if it
/// failed, and returns false.
pub fn run_in_new_netns(name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return true;
    }
    super::assert_root();
    // One child at a time: each runs a sockwatch that sees every socket of the machine, and
    // the children are processes of their own, which the in-process lock of `Sockwatch` does
    // not serialise.
    let _turn = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut command = Command::new(exe);
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null());
    // SAFETY: unshare(2) between fork and exec touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let output = process::output_within(&mut command, CHILD_TIMEOUT, name);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{name} failed in its network namespace ({})",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its network namespace"
    );
    false
}

/// Brings this namespace's loopback up (a new namespace's is down).
pub fn loopback_up() {
    // SAFETY: an ifreq for "lo" read and written back by SIOCGIFFLAGS/SIOCSIFFLAGS on a socket
    // this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut request: libc::ifreq = std::mem::zeroed();
        let name = CString::new("lo").expect("no NUL");
        for (to, from) in request.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
            *to = *from as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut request),
            0,
            "SIOCGIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw mut request),
            0,
            "SIOCSIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// The fault injector on this namespace's loopback: a clsact qdisc with the classifier on
/// ingress. A packet dropped there was sent as far as TCP knows, so it is lost and
/// retransmitted; one dropped on egress would only fail the send, and TCP would send it again
/// as new data, no retransmission.
pub struct Fault {
    ebpf: Ebpf,
}

impl Fault {
    pub fn attach() -> Self {
        assert!(
            !FAULT_OBJECT.is_empty(),
            "the fault injector was not built (a prebuilt SOCKWATCH_BPF_OBJECT without \
             sockwatch-fault beside it)"
        );
        let mut ebpf = Ebpf::load(FAULT_OBJECT).expect("loading the fault injector");
        // The namespace is new: no qdisc is there yet.
        tc::qdisc_add_clsact("lo").expect("adding the clsact qdisc to lo");
        let program: &mut SchedClassifier = ebpf
            .program_mut("drop_every_nth")
            .expect("drop_every_nth in the fault object")
            .try_into()
            .expect("a classifier");
        program.load().expect("loading drop_every_nth");
        // Through the clsact qdisc on every kernel (not tcx, 6.6+ only), as `tc` would.
        program
            .attach_with_options(
                "lo",
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .expect("attaching drop_every_nth to lo ingress");
        Self { ebpf }
    }

    /// Drops every `n`th data segment sent to `port` from now on (0: none).
    pub fn drop_every(&mut self, n: u32, port: u16) {
        let mut settings: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("FAULT_SETTINGS").expect("FAULT_SETTINGS"))
                .expect("an array");
        settings.set(1, u32::from(port), 0).expect("port");
        settings.set(0, n, 0).expect("every");
    }

    /// Data segments to the port seen, and of them dropped.
    pub fn counts(&self) -> (u64, u64) {
        let counts: Array<_, u64> =
            Array::try_from(self.ebpf.map("FAULT_COUNTS").expect("FAULT_COUNTS"))
                .expect("an array");
        (
            counts.get(&0, 0).expect("seen"),
            counts.get(&1, 0).expect("dropped"),
        )
    }
}

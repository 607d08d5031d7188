//! The built eBPF object against the syscall table, without loading anything (no root needed):
//! every syscall in `sockwatch_common::SYSCALLS` has the programs both backends attach, each of
//! the kind its loader expects, and the object holds no program the loader does not know of.
//!
//! Both sides come from one table (`sockwatch_common::for_each_syscall!`); this checks that the
//! macros on the kernel side really made every program the loader will ask for, by name.

use std::collections::BTreeMap;

use aya_obj::{Object, ProgramSection};
use sockwatch_common::SYSCALLS;

/// The object build.rs writes and the binary embeds (`src/probes`), read the same way.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockwatch.bpf.o"));

/// The program kinds the loader attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TracePoint,
    KProbe,
    KRetProbe,
    RawTracePoint,
    CgroupSockAddr,
    CgroupSock,
}

/// Every program the loader attaches, by name, as its two backends name them: tracepoints
/// `enter_<name>`/`exit_<name>`, kprobes `kp_<name>`/`kret_<name>` (no entry program for
/// exit-only syscalls), `sched_process_exit`, which every backend uses, and the socket
/// backend's raw tracepoints.
fn expected_programs() -> BTreeMap<String, Kind> {
    let mut programs = BTreeMap::new();
    for syscall in SYSCALLS {
        let name = syscall.name;
        if syscall.enter {
            programs.insert(format!("enter_{name}"), Kind::TracePoint);
            programs.insert(format!("kp_{name}"), Kind::KProbe);
        }
        programs.insert(format!("exit_{name}"), Kind::TracePoint);
        programs.insert(format!("kret_{name}"), Kind::KRetProbe);
    }
    programs.insert("sched_process_exit".to_owned(), Kind::TracePoint);
    // The syscall backends' mark of sockets used through io_uring.
    programs.insert(
        sockwatch_tui::kernel::loader::IO_URING_FILE_GET.to_owned(),
        Kind::TracePoint,
    );
    programs.insert(
        sockwatch_tui::kernel::loader::SCHED_PROCESS_FORK.to_owned(),
        Kind::RawTracePoint,
    );
    // The socket backend's counting and handshakes, on raw tracepoints; its connects and
    // releases, on cgroup hooks.
    for event in sockwatch_tui::kernel::loader::SOCKET_TRACEPOINTS {
        programs.insert(event.to_owned(), Kind::RawTracePoint);
    }
    // How connects go and who ends connections, every backend.
    for event in sockwatch_tui::kernel::loader::FATE_TRACEPOINTS {
        programs.insert(event.to_owned(), Kind::RawTracePoint);
    }
    for hook in sockwatch_tui::kernel::loader::SOCKET_CONNECT_HOOKS {
        programs.insert(hook.to_owned(), Kind::CgroupSockAddr);
    }
    programs.insert(
        sockwatch_tui::kernel::loader::SOCKET_RELEASE_HOOK.to_owned(),
        Kind::CgroupSock,
    );
    programs.insert(
        sockwatch_tui::kernel::loader::SCHED_PROCESS_EXEC.to_owned(),
        Kind::RawTracePoint,
    );
    programs
}

/// The object's programs, by name, with their kind (`None`: a kind the loader never attaches).
fn object_programs() -> BTreeMap<String, Option<Kind>> {
    let object = Object::parse(OBJECT).expect("the built eBPF object parses");
    object
        .programs
        .iter()
        .map(|(name, program)| {
            let kind = match program.section {
                ProgramSection::TracePoint => Some(Kind::TracePoint),
                ProgramSection::KProbe => Some(Kind::KProbe),
                ProgramSection::KRetProbe => Some(Kind::KRetProbe),
                ProgramSection::RawTracePoint => Some(Kind::RawTracePoint),
                ProgramSection::CgroupSockAddr { .. } => Some(Kind::CgroupSockAddr),
                ProgramSection::CgroupSock { .. } => Some(Kind::CgroupSock),
                _ => None,
            };
            (name.clone(), kind)
        })
        .collect()
}

#[test]
fn every_syscall_has_its_programs_and_no_program_is_unaccounted_for() {
    let expected = expected_programs();
    let found = object_programs();

    let missing: Vec<_> = expected
        .keys()
        .filter(|name| !found.contains_key(*name))
        .collect();
    let unaccounted: Vec<_> = found
        .keys()
        .filter(|name| !expected.contains_key(*name))
        .collect();
    let wrong_kind: Vec<_> = expected
        .iter()
        .filter_map(|(name, kind)| {
            let actual = found.get(name)?;
            (*actual != Some(*kind)).then(|| format!("{name}: {actual:?}, expected {kind:?}"))
        })
        .collect();

    assert!(
        missing.is_empty(),
        "programs missing from the object: {missing:?}"
    );
    assert!(
        unaccounted.is_empty(),
        "programs in the object that no SYSCALLS entry accounts for: {unaccounted:?}"
    );
    assert!(
        wrong_kind.is_empty(),
        "programs of the wrong kind: {wrong_kind:?}"
    );
}

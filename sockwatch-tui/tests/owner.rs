//! Who a socket's process belongs to: the systemd unit or the container its cgroup names, read
//! from a real process the test starts in a cgroup of its own (named as systemd and docker name
//! theirs).

mod support;

use support::{
    cgroup::Cgroup,
    load::{field, Load, LOAD_TIMEOUT},
    net, record_of, Sockwatch,
};

/// A unit's cgroup and a container's: the row's `owner` is the unit, or the runtime and the
/// container's short id; `cgroup` the path the test made; on the connect and on the close.
#[test]
fn a_process_in_a_units_or_a_containers_cgroup_shows_that_owner() {
    support::assert_root();
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let port = server.port.to_string();
    let me = std::process::id();
    let unit = format!("sockwatch-test-{me}.service");
    let id = format!("5e{me:062x}");
    let cases = [
        (unit.clone(), unit),
        (
            format!("sockwatch-test-{me}/docker-{id}.scope"),
            format!("docker:{}", &id[..12]),
        ),
    ];
    for (path, owner) in cases {
        let cgroup = Cgroup::create(&path);
        let mut load = Load::spawn_in(
            &cgroup,
            &["exit-without-close", "--port", &port, "--bytes", "1000"],
        );
        let line = load.line(LOAD_TIMEOUT);
        let (pid, fd) = (field(&line, "pid"), field(&line, "fd") as i32);
        let connect = sw.wait_for("the connect", record_of("connect", pid, fd));
        assert_eq!(connect["owner"], owner.as_str(), "{connect}");
        let cgroup_path = connect["cgroup"].as_str().unwrap_or_default();
        assert!(cgroup_path.ends_with(&format!("/{path}")), "{connect}");
        load.tell("go");
        let status = load.wait_exit(LOAD_TIMEOUT);
        assert!(status.success(), "sockwatch-load: {status}");
        let close = sw.wait_for("the close", record_of("close", pid, fd));
        assert_eq!(close["owner"], owner.as_str(), "{close}");
        assert_eq!(server.next_total(), 1000);
        drop(load);
        drop(cgroup);
    }
}

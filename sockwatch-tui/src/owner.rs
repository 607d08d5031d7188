//! Who a process belongs to, beyond its pid: the systemd unit or the container its cgroup
//! names, and its pid inside its own pid namespace. Parsed here from the text of
//! `/proc/PID/cgroup` and `/proc/PID/status` (read by `kernel::processes`, once per process).

use std::{fmt, num::NonZeroU32};

/// What a socket's row says of its process besides pid and name. Shared by every row of the
/// process (an `Arc` in [`crate::socket::Socket`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub owner: Owner,
    /// The cgroup path the owner was read from (`/system.slice/nginx.service`).
    pub cgroup: Box<str>,
    /// The pid inside the process's own pid namespace, where it differs from the host's.
    pub nspid: Option<NonZeroU32>,
}

impl Process {
    /// From the text of `/proc/PID/cgroup` and `/proc/PID/status`.
    pub fn parse(pid: u32, cgroup: &str, status: &str) -> Self {
        let cgroup = cgroup_path(cgroup);
        Self {
            owner: Owner::of_cgroup(&cgroup),
            cgroup: cgroup.into(),
            nspid: nspid(pid, status),
        }
    }
}

/// A container runtime, as its cgroup names give it away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A pod's container whose runtime the path does not say (cgroupfs driver).
    Kubernetes,
    Lxc,
    /// A container id with nothing around it saying whose.
    Unknown,
}

impl Runtime {
    pub fn label(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Kubernetes => "k8s",
            Self::Lxc => "lxc",
            Self::Unknown => "container",
        }
    }
}

/// Whom to call about a process: its container, its systemd unit, or failing both its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The innermost systemd unit (`nginx.service`, `session-3.scope`).
    Unit(Box<str>),
    Container {
        runtime: Runtime,
        /// The full id (64 hex digits for OCI runtimes; an LXC container's name).
        id: Box<str>,
        /// The Kubernetes pod's uid, for a pod's container.
        pod: Option<Box<str>>,
    },
    /// A cgroup that names neither (`/`, the root, for most processes without systemd).
    Cgroup(Box<str>),
}

/// How many characters of a container id name it in short (as `docker ps` does).
const SHORT_ID: usize = 12;

impl Owner {
    /// From a cgroup path: the innermost container or unit it names.
    pub fn of_cgroup(path: &str) -> Self {
        // A dying cgroup's path, as /proc shows it for its last processes.
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let pod = parts.iter().find_map(|p| pod_uid(p));
        for (i, part) in parts.iter().enumerate().rev() {
            let parent = i.checked_sub(1).map_or("", |p| parts[p]);
            if let Some((runtime, id)) = container(part, parent) {
                let runtime = match (runtime, &pod) {
                    (Runtime::Unknown, Some(_)) => Runtime::Kubernetes,
                    (runtime, _) => runtime,
                };
                return Self::Container {
                    runtime,
                    id: id.into(),
                    pod: pod.clone(),
                };
            }
        }
        match parts
            .iter()
            .rev()
            .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
        {
            Some(unit) => Self::Unit((*unit).into()),
            None => Self::Cgroup(if path.is_empty() { "/" } else { path }.into()),
        }
    }

    /// The container's id in short, if a container.
    pub fn short_id(&self) -> Option<&str> {
        match self {
            Self::Container { id, runtime, .. } if *runtime != Runtime::Lxc => {
                Some(id.get(..SHORT_ID).unwrap_or(id))
            }
            Self::Container { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// `nginx.service`, `docker:3f2a1b2c3d4e`, `/` (as the OWNER column shows it).
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unit(unit) => f.write_str(unit),
            Self::Container { runtime, .. } => {
                write!(f, "{}:{}", runtime.label(), self.short_id().unwrap_or(""))
            }
            Self::Cgroup(path) => f.write_str(path),
        }
    }
}

/// The cgroup path that says most about a process: the unified (v2) hierarchy's, unless it is
/// the root while a v1 one says more (a hybrid machine, where systemd or a container runtime
/// still places processes in v1: `name=systemd` first, then any controller's).
fn cgroup_path(text: &str) -> String {
    let mut v2 = None;
    let mut systemd = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers == "name=systemd" {
            systemd = Some(path);
        } else if v1.is_none() && path != "/" {
            v1 = Some(path);
        }
    }
    [v2, systemd, v1]
        .into_iter()
        .flatten()
        .find(|p| *p != "/")
        .or(v2)
        .or(systemd)
        .unwrap_or("/")
        .to_owned()
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A cgroup path component naming a container: `docker-ID.scope` (systemd driver), `ID` under
/// `docker` (cgroupfs driver), `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`,
/// a pod's `ID`, `lxc.payload.NAME`.
fn container<'a>(part: &'a str, parent: &str) -> Option<(Runtime, &'a str)> {
    if let Some(name) = part.strip_prefix("lxc.payload.") {
        return Some((Runtime::Lxc, name));
    }
    let scoped = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    if let Some(unit) = part.strip_suffix(".scope") {
        return scoped.iter().find_map(|(prefix, runtime)| {
            unit.strip_prefix(prefix)
                .filter(|id| is_container_id(id))
                .map(|id| (*runtime, id))
        });
    }
    // podman's cgroupfs manager: `libpod_parent/libpod-ID`.
    if let Some(id) = part
        .strip_prefix("libpod-")
        .filter(|id| is_container_id(id))
    {
        return Some((Runtime::Podman, id));
    }
    if is_container_id(part) {
        let runtime = match parent {
            "docker" => Runtime::Docker,
            "libpod_parent" => Runtime::Podman,
            _ => Runtime::Unknown,
        };
        return Some((runtime, part));
    }
    None
}

/// A Kubernetes pod's uid from its cgroup: `kubepods-burstable-pod<uid>.slice` (systemd
/// driver, with `_` for `-`) or `pod<uid>` (cgroupfs driver).
fn pod_uid(part: &str) -> Option<Box<str>> {
    let uid = match part.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods") => slice.rsplit_once("-pod")?.1,
        Some(_) => return None,
        None => part.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    // A UUID, or 32 hex digits (a static pod's uid is its manifest's hash).
    let hex = uid.bytes().filter(u8::is_ascii_hexdigit).count();
    let dashes = uid.bytes().filter(|&b| b == b'-').count();
    ((uid.len() == 36 && hex == 32 && dashes == 4) || (uid.len() == 32 && hex == 32))
        .then(|| uid.into())
}

/// The innermost of `NSpid:`'s pids, if not the host's.
fn nspid(pid: u32, status: &str) -> Option<NonZeroU32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let inner: u32 = line.split_whitespace().last()?.parse().ok()?;
    (inner != pid).then_some(inner).and_then(NonZeroU32::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";

    fn owner(path: &str) -> String {
        Owner::of_cgroup(path).to_string()
    }

    #[test]
    fn systemd_units_innermost_first() {
        assert_eq!(owner("/system.slice/nginx.service"), "nginx.service");
        assert_eq!(
            owner("/user.slice/user-1000.slice/session-3.scope"),
            "session-3.scope"
        );
        assert_eq!(
            owner("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            "foo.service"
        );
        assert_eq!(owner("/init.scope"), "init.scope");
    }

    #[test]
    fn container_runtimes_by_their_cgroup_names() {
        let cases = [
            (
                format!("/system.slice/docker-{ID}.scope"),
                "docker:3f2a1b2c3d4e",
            ),
            (format!("/docker/{ID}"), "docker:3f2a1b2c3d4e"),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                "podman:3f2a1b2c3d4e",
            ),
            (
                format!("/system.slice/crio-{ID}.scope"),
                "cri-o:3f2a1b2c3d4e",
            ),
            (
                "/lxc.payload.web/system.slice/nginx.service".to_owned(),
                "lxc:web",
            ),
        ];
        for (path, shown) in cases {
            assert_eq!(owner(&path), shown, "{path}");
        }
        assert_eq!(
            owner(&format!("/libpod_parent/libpod-{ID}")),
            "podman:3f2a1b2c3d4e"
        );
        assert_eq!(
            owner("/system.slice/nginx.service (deleted)"),
            "nginx.service"
        );
        // conmon, the monitor beside a podman container, is a unit of its own.
        let conmon = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(owner(&conmon), format!("libpod-conmon-{ID}.scope"));
    }

    #[test]
    fn a_pods_container_keeps_the_pod() {
        let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        let cgroupfs = format!("/kubepods/besteffort/pod{uid}/{ID}");
        for (path, runtime) in [
            (systemd, Runtime::Containerd),
            (cgroupfs, Runtime::Kubernetes),
        ] {
            assert_eq!(
                Owner::of_cgroup(&path),
                Owner::Container {
                    runtime,
                    id: ID.into(),
                    pod: Some(uid.into())
                },
                "{path}"
            );
        }
    }

    /// A static pod's uid is 32 hex digits without dashes.
    #[test]
    fn a_static_pods_uid() {
        let uid = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            Owner::of_cgroup(&format!("/kubepods/pod{uid}/{ID}")),
            Owner::Container {
                runtime: Runtime::Kubernetes,
                id: ID.into(),
                pod: Some(uid.into())
            }
        );
    }

    #[test]
    fn other_cgroups_are_shown_as_paths() {
        assert_eq!(owner("/"), "/");
        assert_eq!(owner(""), "/");
        assert_eq!(owner("/batch/job-7"), "/batch/job-7");
    }

    /// The unified hierarchy's path, unless it is the root and a v1 one says more.
    #[test]
    fn the_path_that_says_most() {
        let v2 = "0::/system.slice/redis.service\n";
        assert_eq!(cgroup_path(v2), "/system.slice/redis.service");
        let hybrid = "9:name=systemd:/system.slice/redis.service\n8:pids:/\n0::/\n";
        assert_eq!(cgroup_path(hybrid), "/system.slice/redis.service");
        let v1 = format!("12:memory:/docker/{ID}\n11:cpu:/docker/{ID}\n");
        assert_eq!(cgroup_path(&v1), format!("/docker/{ID}"));
        assert_eq!(cgroup_path("0::/\n"), "/");
        assert_eq!(cgroup_path(""), "/");
    }

    #[test]
    fn the_pid_inside_its_namespace_where_it_differs() {
        let status = "Name:\tnginx\nNSpid:\t4211\t12\n";
        let p = Process::parse(4211, "0::/\n", status);
        assert_eq!(p.nspid, NonZeroU32::new(12));
        assert_eq!(Process::parse(4211, "", "NSpid:\t4211\n").nspid, None);
        assert_eq!(Process::parse(4211, "", "").nspid, None);
    }
}

//! Cgroups a test makes for its child processes (as systemd or a container runtime would), in
//! whichever hierarchy the machine has: the unified one (v2) where mounted, else a v1 one; where
//! none is mounted (a bare VM), a v2 one mounted for the test. Removed when dropped.

use std::{
    ffi::CString,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

pub struct Cgroup {
    /// Its directory, where the hierarchy is mounted.
    dir: PathBuf,
    /// Directories made for it, innermost first (removed in that order).
    made: Vec<PathBuf>,
    /// A hierarchy mounted for it, unmounted last.
    mounted: Option<PathBuf>,
}

/// Where a cgroup hierarchy is mounted: the unified one first, then systemd's v1 one (the
/// path sockwatch reads first on a machine without the unified one), then any.
fn hierarchy() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts: Vec<(&str, &str, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or_default();
            Some((point, fstype, options))
        })
        .collect();
    let find = |wanted: &dyn Fn(&str, &str) -> bool| {
        mounts
            .iter()
            .find(|(_, fstype, options)| wanted(fstype, options))
            .map(|(point, _, _)| PathBuf::from(point))
    };
    find(&|fstype, _| fstype == "cgroup2")
        .or_else(|| find(&|fstype, options| fstype == "cgroup" && options.contains("name=systemd")))
        .or_else(|| find(&|fstype, _| fstype == "cgroup"))
}

impl Cgroup {
    /// A cgroup at `path` (`sockwatch-test-1.service`, `a/docker-ID.scope`) under the root of
    /// the hierarchy.
    pub fn create(path: &str) -> Self {
        let (root, mounted) = match hierarchy() {
            Some(root) => (root, None),
            None => {
                let root = PathBuf::from(format!("/tmp/sockwatch-cgroup2-{}", std::process::id()));
                fs::create_dir_all(&root).expect("making a mount point for cgroup2");
                let status = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&root)
                    .status()
                    .expect("running mount");
                assert!(status.success(), "mounting cgroup2 at {}", root.display());
                (root.clone(), Some(root))
            }
        };
        let mut made = Vec::new();
        let mut dir = root;
        for part in path.split('/') {
            dir = dir.join(part);
            if !dir.exists() {
                fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("making cgroup {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        made.reverse();
        Self { dir, made, mounted }
    }

    /// `command` made to start in this cgroup: the child moves itself in before it execs.
    pub fn run_in(&self, command: &mut Command) {
        let procs = CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("a path without NUL");
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on
        // memory allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
                Ok(())
            });
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty by now: the test's children in it are reaped (a `Load` is dropped before the
        // cgroup it runs in).
        for dir in &self.made {
            let _ = fs::remove_dir(dir);
        }
        if let Some(root) = &self.mounted {
            let _ = Command::new("umount").arg(root).status();
            let _ = fs::remove_dir(root);
        }
    }
}

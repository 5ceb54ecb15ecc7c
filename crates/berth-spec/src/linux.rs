//! The Linux parts of a default container: the system mounts (/proc, /dev, /sys and the
//! cgroup tree), the /proc and /sys paths hidden or made read-only, and the device rule
//! that denies what is not explicitly allowed.

use serde_json::{json, Value};

/// Paths masked (a null bind or an empty tmpfs) unless the container is privileged.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths remounted read-only unless the container is privileged.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// /proc, /dev, /dev/pts, /dev/mqueue, /sys and the cgroup tree, as containerd mounts them;
/// /sys and the cgroup tree are writable only for a privileged container. /dev/shm is the
/// caller's (a pod shares one; a lone container gets `shm_mount`).
pub fn system_mounts(privileged: bool) -> Vec<Value> {
    let sys = if privileged { "rw" } else { "ro" };
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", sys]}),
    ]
}

/// A container's own /dev/shm: a 64 MiB tmpfs, as Docker and containerd give one.
pub fn shm_mount() -> Value {
    json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
}

/// The device cgroup rule every unprivileged container starts from: nothing but what the
/// runtime adds for its default devices (null, zero, full, random, urandom, tty, ptmx).
pub fn deny_devices() -> Value {
    json!([{"allow": false, "access": "rwm"}])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_is_read_only_unless_privileged() {
        let opts = |p: bool| {
            system_mounts(p)
                .into_iter()
                .find(|m| m["destination"] == "/sys")
                .unwrap()["options"]
                .clone()
        };
        assert!(opts(false).as_array().unwrap().contains(&json!("ro")));
        assert!(opts(true).as_array().unwrap().contains(&json!("rw")));
        assert!(MASKED_PATHS.contains(&"/proc/kcore") && READONLY_PATHS.contains(&"/proc/sys"));
    }
}

//! Capabilities by name: containerd's default set, every capability this kernel knows,
//! and Docker's add/drop rules over them.

/// containerd's default capabilities.
pub const DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability this kernel knows (for privileged containers and "ALL").
pub fn all() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES
        .iter()
        .take(last as usize + 1)
        .map(|n| format!("CAP_{n}"))
        .collect()
}

pub fn name(c: &str) -> String {
    let c = c.to_ascii_uppercase();
    if c.starts_with("CAP_") {
        c
    } else {
        format!("CAP_{c}")
    }
}

/// The default set with `add` then `drop` applied, by Docker's rules: names with or
/// without `CAP_`, any case; "ALL" in `add` grants every capability, in `drop` clears.
pub fn with_changes(add: &[String], drop: &[String]) -> Vec<String> {
    let mut caps: Vec<String> = DEFAULT.iter().map(|s| (*s).to_owned()).collect();
    for a in add {
        if a.eq_ignore_ascii_case("ALL") {
            caps = all();
        } else if !caps.contains(&name(a)) {
            caps.push(name(a));
        }
    }
    for d in drop {
        if d.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else {
            caps.retain(|x| *x != name(d));
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_drop_follow_dockers_rules() {
        let c = with_changes(
            &["sys_admin".into()],
            &["CAP_NET_RAW".into(), "chown".into()],
        );
        assert!(c.contains(&"CAP_SYS_ADMIN".to_owned()));
        assert!(!c.contains(&"CAP_NET_RAW".to_owned()) && !c.contains(&"CAP_CHOWN".to_owned()));
        assert!(with_changes(&[], &["ALL".into()]).is_empty());
        assert_eq!(with_changes(&["ALL".into()], &[]), all());
        assert_eq!(with_changes(&[], &[]).len(), DEFAULT.len());
    }
}

//! Test fixtures for berth's end-to-end tests: a real docker-registry on loopback, a real
//! berthd on temporary directories, Debian's `ctr` as the client, and OCI images built
//! from /bin/busybox. Every fixture cleans up on drop, also when a test fails.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub mod cli;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod stream;
pub mod transfer;

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails the test (rather than skipping it quietly) when a required tool is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run .ci/run (or apt-get install the packages it lists)"
    );
}

/// A docker-registry (distribution) serving on 127.0.0.1 with storage in a temp dir.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(None, None)
    }

    /// A registry that wants basic authentication (htpasswd, bcrypt) for `user`.
    pub fn start_with_htpasswd(user: &str, password: &str) -> Self {
        require("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .unwrap();
        assert!(out.status.success());
        Self::start_with(Some(out.stdout), None)
    }

    /// A registry serving HTTPS with a certificate for 127.0.0.1 signed by `ca`.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(None, Some(ca))
    }

    fn start_with(htpasswd: Option<Vec<u8>>, tls: Option<&TestCa>) -> Self {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let mut extra = match htpasswd {
            Some(h) => {
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, h).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        if let Some(ca) = tls {
            // Under `http:`, so it goes first.
            extra.insert_str(
                0,
                &format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    ca.dir.path().join("server.pem").display(),
                    ca.dir.path().join("server.key").display()
                ),
            );
        }
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let a = addr.clone();
        wait_for("docker-registry", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&a).is_ok()
        });
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn target_dir() -> PathBuf {
    // The test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

pub fn berthd_binary() -> PathBuf {
    let p = target_dir().join("berthd");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// Removes the cgroup directory `name` (relative to each controller's root) and what is
/// below it, deepest first, where they are empty: runc removes a container's own cgroup
/// but not the namespace or pod parent it made above it. A cgroup still in use stays.
pub fn remove_cgroups(name: &str) {
    let name = name.trim_matches('/');
    if name.is_empty() || name.contains("..") {
        return;
    }
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten();
    for root in roots
        .map(|e| e.path())
        .chain([PathBuf::from("/sys/fs/cgroup")])
    {
        let top = root.join(name);
        if top.is_dir() && !top.join("cgroup.procs").exists() {
            continue; // not a cgroup (a controller directory of the same name)
        }
        rmdir_deepest_first(&top);
    }
}

fn rmdir_deepest_first(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_deepest_first(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A cgroup parent of a test's own (`/berth-e2e-PID-TAG`), as the kubelet makes one per
/// pod; removed with everything empty below it on drop.
pub struct CgroupParent(pub String);

impl CgroupParent {
    pub fn new(tag: &str) -> Self {
        CgroupParent(format!("/berth-e2e-{}-{tag}", std::process::id()))
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        remove_cgroups(&self.0);
    }
}

/// Daemons alive in this test process and the containerd namespaces they ran tasks in.
/// Namespace cgroups (`/NS`, made by runc for `ctr`'s `/NS/ID` paths) are shared between
/// tests, so they are removed only when the last daemon goes, under this lock, so that no
/// container of a parallel test is being created below them at that moment.
static LIVE: Mutex<(usize, BTreeSet<String>)> = Mutex::new((0, BTreeSet::new()));

/// Records that a test used containerd namespace `ns`, whose cgroup goes with the last
/// daemon of the process (berthd removes a namespace's bundle directory once it is empty).
pub fn note_namespace(ns: &str) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .1
        .insert(ns.to_owned());
}

/// A daemon (berthd or a peer) of this test process starts.
pub(crate) fn live_enter() {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
}

/// A daemon goes; the last one takes the namespace cgroups tests left with it.
pub(crate) fn live_leave() {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.0 -= 1;
    if live.0 == 0 {
        for ns in std::mem::take(&mut live.1) {
            remove_cgroups(&ns);
        }
    }
}

/// With `BERTH_E2E_SHIM=berth`, every berthd a test starts runs containers asked for with
/// runc's runtime name (`io.containerd.runc.v2`, what `ctr` and dockerd send) through
/// berth's own shim instead, so that whole suites run against it unchanged.
fn with_shim_under_test(config: &str) -> String {
    if std::env::var("BERTH_E2E_SHIM").as_deref() != Ok("berth") {
        return config.to_owned();
    }
    assert!(
        !config.contains("[runtimes]"),
        "a test's own [runtimes] table and BERTH_E2E_SHIM do not mix"
    );
    let shim = berthd_binary().with_file_name("containerd-shim-berth-v2");
    format!(
        "{config}\n[runtimes]\n\"io.containerd.runc.v2\" = {:?}\n",
        shim.display().to_string()
    )
}

/// Has `cmd`'s process start with a seccomp filter under which `openat2` answers ENOSYS (and
/// every other call is allowed); its children inherit it.
fn refuse_openat2(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    const NR_OPENAT2: u32 = 437;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter: &'static [libc::sock_filter] = Box::leak(Box::new([
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: NR_OPENAT2,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]));
    let program: &'static libc::sock_fprog = Box::leak(Box::new(libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    }));
    // An address, so that the closure is Send and Sync (the program holds a raw pointer).
    let program = program as *const libc::sock_fprog as usize;
    // SAFETY: between fork and exec the closure makes two prctl calls (async-signal-safe
    // system calls) on memory prepared before the fork and never freed.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A berthd on temporary root/state directories.
pub struct Berthd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    config: Option<PathBuf>,
    /// Started with `openat2` answering ENOSYS, as on a kernel older than 5.6.
    without_openat2: bool,
}

impl Berthd {
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// A berthd (and so its shims and runtimes) on which `openat2` answers ENOSYS, through a
    /// seccomp filter it inherits: what a kernel older than 5.6 does.
    pub fn start_without_openat2() -> Self {
        let mut d = Self::prepare("");
        d.without_openat2 = true;
        d.spawn();
        d
    }

    /// A berthd reading `config` (TOML) as its configuration file.
    pub fn start_with_config(config: &str) -> Self {
        let mut d = Self::prepare(config);
        d.spawn();
        d
    }

    fn prepare(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("berth.sock");
        let config = with_shim_under_test(config);
        let config = (!config.is_empty()).then(|| {
            let p = dir.path().join("berthd.toml");
            std::fs::write(&p, config).unwrap();
            p
        });
        live_enter();
        Berthd {
            child: None,
            dir,
            root,
            state,
            socket,
            config,
            without_openat2: false,
        }
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))
            .unwrap();
        let mut cmd = Command::new(berthd_binary());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if self.without_openat2 {
            refuse_openat2(&mut cmd);
        }
        let child = cmd
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("info,berthd=debug,berth_runtime=debug,berth_services=debug,berth_registry=debug,shim=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let s = self.socket.clone();
        wait_for("berthd socket", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&s).is_ok()
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berthd is running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("berthd is running");
        // SAFETY: sending a signal to our own child process by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    /// Runs `ctr -a SOCKET -n NS ARGS...`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Output {
        ctr_on(&self.socket, ns, args)
    }

    /// Like `ctr`, but fails the test with ctr's output (and berthd's log) when ctr fails.
    pub fn ctr_ok(&self, ns: &str, args: &[&str]) -> String {
        ctr_ok_on(&self.socket, ns, args, || self.log())
    }

    /// Kills whatever shims and containers this daemon's bundles still record, so that a
    /// failed test leaves no process, runc state or mount behind.
    fn reap_tasks(&self) {
        let base = self.state.join("io.containerd.runtime.v2.task");
        let Ok(namespaces) = std::fs::read_dir(&base) else {
            return;
        };
        for ns in namespaces.flatten() {
            for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let id = b.file_name().to_string_lossy().into_owned();
                // berth's shim keeps its container's init pid in the bundle.
                if let Some(pid) = std::fs::read_to_string(b.path().join("init.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    // SAFETY: signalling a process by pid; a stale pid only risks ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if let Some(pid) = std::fs::read_to_string(b.path().join("shim.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    // SAFETY: signalling a process by pid; a stale pid only risks ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(Path::new("/run/containerd/runc").join(ns.file_name()))
                    .args(["delete", "--force", &id])
                    .stderr(Stdio::null())
                    .status();
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(b.path().join("rootfs"))
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Mount points below this daemon's directories that are still mounted.
    pub fn leftover_mounts(&self) -> Vec<String> {
        mounts_below(self.dir.path())
    }
}

/// Kills berth shims serving the daemon at `socket` (`-address`), and the containers they
/// keep (the shim's process group holds neither, so by cgroup-free means: the shim's
/// children first).
pub fn kill_berth_shims(socket: &Path) {
    let pattern = format!("containerd-shim-berth-v2 .*-address {}", socket.display());
    let out = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for shim in out.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
            .unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            // SAFETY: signalling a process by pid; a stale pid only risks ESRCH.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(shim, libc::SIGKILL) };
    }
}

/// Removes the sockets of shims a daemon with `state` had (each bundle's `address`), once
/// those shims are killed: a killed shim cannot remove its own.
pub fn remove_shim_sockets(state: &Path) {
    let base = state.join("io.containerd.runtime.v2.task");
    for ns in std::fs::read_dir(base).into_iter().flatten().flatten() {
        for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Ok(address) = std::fs::read_to_string(b.path().join("address")) {
                let socket = address.trim().trim_start_matches("unix://").to_owned();
                if std::os::unix::net::UnixStream::connect(&socket).is_err() {
                    let _ = std::fs::remove_file(&socket);
                }
            }
        }
    }
}

/// Mount points at or below `base`, deepest first.
pub fn mounts_below(base: &Path) -> Vec<String> {
    let base = base.to_string_lossy().into_owned();
    let mut m: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&base))
        .map(str::to_owned)
        .collect();
    m.sort_by_key(|m| std::cmp::Reverse(m.len()));
    m
}

/// Lazily unmounts whatever is mounted at or below `base` (a fixture's directory).
pub fn unmount_below(base: &Path) {
    for m in mounts_below(base) {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.kill();
        self.reap_tasks();
        remove_shim_sockets(&self.state);
        unmount_below(self.dir.path());
        let tasks = self.state.join("io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            note_namespace(&ns.file_name().to_string_lossy());
        }
        live_leave();
    }
}

/// `ctr events` running against a daemon, collecting what it prints.
pub struct EventWatch(Child);

impl EventWatch {
    pub fn start(d: &Berthd) -> Self {
        Self::on_socket(&d.socket)
    }

    /// `ctr events` against any daemon's socket.
    pub fn on_socket(socket: &Path) -> Self {
        let child = Command::new("ctr")
            .arg("-a")
            .arg(socket)
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Give the subscription time to reach the daemon before anything happens.
        std::thread::sleep(Duration::from_millis(500));
        EventWatch(child)
    }

    /// Stops watching (after a moment for late events) and returns what was printed.
    pub fn finish(mut self) -> String {
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.0.kill();
        let mut text = String::new();
        if let Some(mut o) = self.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut text);
        }
        text
    }

    /// The topics printed, in order, that start with one of `prefixes`.
    pub fn topics(text: &str, prefixes: &[&str]) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
            .filter(|t| prefixes.iter().any(|p| t.starts_with(p)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A throwaway certificate authority and a server certificate for 127.0.0.1 it signed
/// (`ca.pem`, `server.pem`, `server.key` in `dir`), made with openssl.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        require("openssl");
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=berth test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TestCa { dir }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A container command that stops cleanly on SIGTERM (pid 1 ignores signals it does not
/// handle).
pub const TERMINABLE: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 1; done",
];

/// A command's stdout and stderr together, for assertions on messages.
pub fn out_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `ctr -a SOCKET -n NS ARGS...`, bounded in time so that a daemon that hangs fails the
/// test instead of stalling the suite.
pub fn ctr_on(socket: &Path, ns: &str, args: &[&str]) -> Output {
    require("ctr");
    note_namespace(ns);
    Command::new("timeout")
        .args(["-s", "KILL", "120", "ctr"])
        .arg("-a")
        .arg(socket)
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap()
}

/// Like `ctr_on`, but fails the test with ctr's output and the daemon's `log` when ctr fails.
pub fn ctr_ok_on(socket: &Path, ns: &str, args: &[&str], log: impl FnOnce() -> String) -> String {
    let out = ctr_on(socket, ns, args);
    assert!(
        out.status.success(),
        "ctr {args:?} failed: {}\n{}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A berthd with a busybox image pulled from a registry on loopback; returns the reference.
pub fn berthd_with_busybox(reg: &Registry, ns: &str) -> (Berthd, String) {
    let img = OciImage::build(&[busybox_layer()]);
    let reference = img.push(reg, "busybox");
    let d = Berthd::start();
    d.ctr_ok(ns, &["images", "pull", "--plain-http", &reference]);
    (d, reference)
}

/// One file system entry of a test layer.
pub enum Entry {
    Dir(&'static str, u32),
    File(String, Vec<u8>, u32),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Whiteout(&'static str),
    Opaque(&'static str),
    /// A regular file whose name is written byte for byte, for hostile layers.
    RawFile(&'static str, &'static [u8]),
}

/// Builds a tar stream from entries, owned by root with fixed times.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let head = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    };
    for e in entries {
        match e {
            Entry::Dir(p, mode) => b
                .append_data(&mut head(tar::EntryType::Directory, 0, *mode), p, &[][..])
                .unwrap(),
            Entry::File(p, data, mode) => b
                .append_data(
                    &mut head(tar::EntryType::Regular, data.len() as u64, *mode),
                    p,
                    &data[..],
                )
                .unwrap(),
            Entry::Symlink(p, t) => b
                .append_link(&mut head(tar::EntryType::Symlink, 0, 0o777), p, t)
                .unwrap(),
            Entry::Hardlink(p, t) => b
                .append_link(&mut head(tar::EntryType::Link, 0, 0o644), p, t)
                .unwrap(),
            Entry::Whiteout(p) => {
                let path = Path::new(p);
                let name = format!(".wh.{}", path.file_name().unwrap().to_string_lossy());
                let full = path
                    .parent()
                    .map(|d| d.join(&name))
                    .unwrap_or_else(|| name.into());
                b.append_data(&mut head(tar::EntryType::Regular, 0, 0o644), full, &[][..])
                    .unwrap()
            }
            Entry::RawFile(name, data) => {
                let mut h = head(tar::EntryType::Regular, data.len() as u64, 0o644);
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, *data).unwrap()
            }
            Entry::Opaque(dir) => b
                .append_data(
                    &mut head(tar::EntryType::Regular, 0, 0o644),
                    Path::new(dir).join(".wh..wh..opq"),
                    &[][..],
                )
                .unwrap(),
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// The busybox base layer: /bin/busybox plus the applets a shell needs as symlinks.
pub fn busybox_layer() -> Vec<Entry> {
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static) is required");
    let mut e = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox".into(), bb, 0o755),
    ];
    for applet in [
        "sh", "ls", "cat", "echo", "true", "sleep", "ps", "stty", "kill", "id", "env",
    ] {
        e.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    e.push(Entry::Dir("etc", 0o755));
    e.push(Entry::File(
        "etc/hostname".into(),
        b"berth\n".to_vec(),
        0o644,
    ));
    e
}

/// An OCI image layout on disk, built from layers, that skopeo can push.
pub struct OciImage {
    pub dir: tempfile::TempDir,
    pub manifest_digest: String,
    pub diff_ids: Vec<String>,
}

/// Writes a blob into an OCI layout's blob directory; returns its digest.
fn put_blob(blobs: &Path, data: &[u8]) -> String {
    let d = sha256(data);
    std::fs::write(blobs.join(&d[7..]), data).unwrap();
    d
}

/// Writes the layers, config and manifest of one image; returns (manifest digest, size, diff ids).
fn write_manifest(blobs: &Path, layers: &[Vec<Entry>], arch: &str) -> (String, usize, Vec<String>) {
    write_manifest_cmd(blobs, layers, arch, &["/bin/sh"])
}

fn write_manifest_cmd(
    blobs: &Path,
    layers: &[Vec<Entry>],
    arch: &str,
    cmd: &[&str],
) -> (String, usize, Vec<String>) {
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    for l in layers {
        let tar = layer_tar(l);
        diff_ids.push(sha256(&tar));
        let gz = gzip(&tar);
        let d = put_blob(blobs, &gz);
        layer_descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = put_blob(blobs, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    (put_blob(blobs, &manifest), manifest.len(), diff_ids)
}

impl OciImage {
    fn layout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        dir
    }

    fn finish(dir: &Path, media_type: &str, digest: &str, size: usize) {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": media_type, "digest": digest, "size": size,
                           "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// A single-platform (linux/amd64) image.
    pub fn build(layers: &[Vec<Entry>]) -> Self {
        Self::build_with_cmd(layers, &["/bin/sh"])
    }

    /// A single-platform image whose config runs `cmd`.
    pub fn build_with_cmd(layers: &[Vec<Entry>], cmd: &[&str]) -> Self {
        let dir = Self::layout();
        let (md, size, diff_ids) =
            write_manifest_cmd(&dir.path().join("blobs/sha256"), layers, "amd64", cmd);
        Self::finish(
            dir.path(),
            "application/vnd.oci.image.manifest.v1+json",
            &md,
            size,
        );
        OciImage {
            dir,
            manifest_digest: md,
            diff_ids,
        }
    }

    /// A multi-platform image: an OCI index with one manifest per (architecture, layers).
    /// `manifest_digest` is the index's digest; `diff_ids` are the first platform's.
    pub fn build_index(platforms: &[(&str, Vec<Vec<Entry>>)]) -> Self {
        let dir = Self::layout();
        let blobs = dir.path().join("blobs/sha256");
        let mut entries = Vec::new();
        let mut first_diff_ids = None;
        for (arch, layers) in platforms {
            let (md, size, diff_ids) = write_manifest(&blobs, layers, arch);
            first_diff_ids.get_or_insert(diff_ids);
            entries.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": size,
                "platform": {"os": "linux", "architecture": arch},
            }));
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
        .unwrap();
        let id = put_blob(&blobs, &index);
        Self::finish(
            dir.path(),
            "application/vnd.oci.image.index.v1+json",
            &id,
            index.len(),
        );
        OciImage {
            dir,
            manifest_digest: id,
            diff_ids: first_diff_ids.unwrap_or_default(),
        }
    }

    /// The layer blob digests of a single-platform image, in order.
    pub fn layer_digests(&self) -> Vec<String> {
        let blob = |d: &str| {
            let b = std::fs::read(self.dir.path().join("blobs/sha256").join(&d[7..])).unwrap();
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };
        blob(&self.manifest_digest)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Pushes the image (all its platforms) to `registry` as `repo:latest` with skopeo.
    pub fn push(&self, registry: &Registry, repo: &str) -> String {
        self.push_as(registry, repo, None)
    }

    /// Like `push`, with `user:password` for a registry that wants them.
    pub fn push_as(&self, registry: &Registry, repo: &str, creds: Option<&str>) -> String {
        require("skopeo");
        let reference = format!("{}/{repo}:latest", registry.addr);
        let mut c = Command::new("skopeo");
        c.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            c.arg("--dest-creds").arg(creds);
        }
        let out = c
            .arg(format!("oci:{}:latest", self.dir.path().display()))
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

/// What a `FaultyProxy` does to responses for blobs whose path contains its target.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Sends the headers and half of the body, then closes the connection.
    CutHalf,
    /// Answers 500 Internal Server Error.
    Fail500,
    /// Flips one byte of the body.
    Corrupt,
    /// Sends the headers and half of the body, then holds the connection open without
    /// sending more (counted by `Proxy::stalled`).
    StallHalf,
}

/// (request line, Range header) of each request a proxy saw.
type RequestLog = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// One request as a proxy saw it.
pub struct ProxiedRequest {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl ProxiedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a proxy does with a request.
pub enum Verdict {
    /// Forward upstream, damaging the response as the fault says.
    Forward(Option<Fault>),
    /// Answer with these bytes (a whole HTTP response) instead.
    Respond(Vec<u8>),
}

type Policy = dyn Fn(&ProxiedRequest) -> Verdict + Send + Sync;

/// An HTTP/1.1 proxy (GET and HEAD, one request per connection) in front of a registry on
/// loopback; a policy decides per request, and every request line and Range header is
/// recorded.
pub struct Proxy {
    pub addr: String,
    log: RequestLog,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    pub fn start(upstream: &str, policy: std::sync::Arc<Policy>) -> Self {
        use std::io::{BufRead, BufReader, Read};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let stalls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let (log2, stop2, stalls2) = (log.clone(), stop.clone(), stalls.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut client) = conn else { continue };
                let (upstream, log, policy) = (upstream.clone(), log2.clone(), policy.clone());
                let (stop, stalls) = (stop2.clone(), stalls2.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut lines = Vec::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        lines.push(line.clone());
                    }
                    let req = ProxiedRequest {
                        line: lines
                            .first()
                            .map(|l| l.trim().to_owned())
                            .unwrap_or_default(),
                        headers: lines
                            .iter()
                            .skip(1)
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                            .collect(),
                    };
                    log.lock()
                        .unwrap()
                        .push((req.line.clone(), req.header("range").map(str::to_owned)));
                    let fault = match policy(&req) {
                        Verdict::Respond(bytes) => {
                            let _ = client.write_all(&bytes);
                            return;
                        }
                        Verdict::Forward(f) => f,
                    };
                    if matches!(fault, Some(Fault::Fail500)) {
                        let _ = client.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return;
                    }
                    let mut up = std::net::TcpStream::connect(&upstream).unwrap();
                    let mut head: String = lines
                        .iter()
                        .filter(|l| {
                            let l = l.to_ascii_lowercase();
                            !l.starts_with("connection:") && !l.starts_with("authorization:")
                        })
                        .cloned()
                        .collect();
                    head.push_str("Connection: close\r\n\r\n");
                    up.write_all(head.as_bytes()).unwrap();
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp);
                    let split = resp
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(resp.len(), |p| p + 4);
                    let (headers, body) = resp.split_at(split);
                    let mut body = body.to_vec();
                    match fault {
                        Some(Fault::CutHalf) => body.truncate(body.len() / 2),
                        Some(Fault::Corrupt) if !body.is_empty() => {
                            let mid = body.len() / 2;
                            body[mid] ^= 0xff;
                        }
                        _ => {}
                    }
                    let headers = String::from_utf8_lossy(headers)
                        .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
                    let _ = client.write_all(headers.as_bytes());
                    if matches!(fault, Some(Fault::StallHalf)) {
                        let _ = client.write_all(&body[..body.len() / 2]);
                        let _ = client.flush();
                        stalls.fetch_add(1, Ordering::SeqCst);
                        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                        while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        return;
                    }
                    let _ = client.write_all(&body);
                });
            }
        });
        Proxy {
            addr,
            log,
            stop,
            stalls,
        }
    }

    /// How many responses were stalled halfway (`Fault::StallHalf`).
    pub fn stalled(&self) -> usize {
        self.stalls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A proxy that damages the first `times` responses for blobs whose path contains
    /// `target`.
    pub fn faulty(upstream: &str, target: &str, fault: Fault, times: usize) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let left = AtomicUsize::new(times);
        let target = target.to_owned();
        Self::start(
            upstream,
            std::sync::Arc::new(move |r: &ProxiedRequest| {
                let hit = r.line.contains("/blobs/")
                    && r.line.contains(&target)
                    && left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                Verdict::Forward(hit.then_some(fault))
            }),
        )
    }

    /// A registry front that wants bearer tokens, as Docker Hub does: `/v2/` requests without
    /// the token get a Bearer challenge pointing at this proxy's `/token`, which hands the
    /// token out for the right basic credentials.
    pub fn token_auth(upstream: &str, user: &str, password: &str) -> Self {
        use base64::Engine;
        let want_basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let addr_cell: std::sync::Arc<std::sync::OnceLock<String>> = Default::default();
        let cell = addr_cell.clone();
        let p = Self::start(
            upstream,
            std::sync::Arc::new(move |r: &ProxiedRequest| {
                let respond = |status: &str, extra: String, body: &str| {
                    Verdict::Respond(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes(),
                    )
                };
                if r.line.starts_with("GET /token") {
                    return if r.header("authorization") == Some(want_basic.as_str()) {
                        respond(
                            "200 OK",
                            String::new(),
                            r#"{"token":"berth-test-token","expires_in":300}"#,
                        )
                    } else {
                        respond(
                            "401 Unauthorized",
                            String::new(),
                            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                        )
                    };
                }
                if r.header("authorization") == Some("Bearer berth-test-token") {
                    return Verdict::Forward(None);
                }
                let addr = cell.get().cloned().unwrap_or_default();
                respond(
                    "401 Unauthorized",
                    format!(
                        "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"berth-test\"\r\n"
                    ),
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                )
            }),
        );
        let _ = addr_cell.set(p.addr.clone());
        p
    }

    /// (request line, Range header) of every request so far.
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().clone()
    }

    /// How many GETs asked for a path containing `needle`.
    pub fn gets(&self, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(l, _)| l.starts_with("GET ") && l.contains(needle))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the stop flag.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// `n` bytes that do not compress (xorshift), the same for the same seed.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

//! `berth`, the docker-compatible command line, tried as a new user would: against a real
//! berthd with berth's shim, a loopback registry, Debian's CNI plugins, in a tmux pane for
//! the terminal. These tests need root.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::cli::*;
use berth_e2e::*;

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Tmux(String);

impl Tmux {
    fn start(name: &str, width: u32, height: u32, command: &str) -> Tmux {
        require("tmux");
        let t = Tmux(format!("berth-e2e-{}-{name}", std::process::id()));
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &t.0,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
                command,
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        t
    }
    fn keys(&self, keys: &str) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0, keys, "Enter"])
            .status()
            .unwrap();
    }
    fn screen(&self) -> String {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0, "-S", "-100"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn resize(&self, width: u32, height: u32) {
        Command::new("tmux")
            .args([
                "resize-window",
                "-t",
                &self.0,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
            ])
            .status()
            .unwrap();
    }
    fn wait_for(&self, text: &str) -> String {
        let mut last = String::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            last = self.screen();
            if last.contains(text) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{text:?} never appeared; the pane shows:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn root_pull_shows_a_bar_per_layer_and_run_it_gives_a_terminal_in_tmux() {
    let reg = Registry::start();
    let img = three_layer_image();
    let reference = img.push(&reg, "web");
    let d = Berthd::start();
    let cli = BerthCli::new(&d, "cli-tty");
    let script = format!(
        "{pull}; {run}; echo EXIT=$?; sleep 60",
        pull = cli.shell_line(&format!("pull {reference}")),
        run = cli.shell_line(&format!("run -it --rm {reference} sh")),
    );
    let t = Tmux::start("tty", 100, 30, &script);
    let screen = t.wait_for("Status: Downloaded newer image");
    let complete = screen
        .lines()
        .filter(|l| l.ends_with(": Pull complete"))
        .count();
    assert_eq!(complete, 3, "one finished bar per layer:\n{screen}");
    for digest in img.layer_digests() {
        let short = &digest.trim_start_matches("sha256:")[..12];
        assert!(
            screen.contains(&format!("{short}: Pull complete")),
            "{short}:\n{screen}"
        );
    }
    assert!(screen.contains("latest: Pulling from web"), "{screen}");
    t.wait_for("/ #");
    t.keys("stty size");
    t.wait_for("30 100");
    t.resize(120, 40);
    std::thread::sleep(Duration::from_millis(300));
    t.keys("stty size");
    t.wait_for("40 120");
    t.keys("exit 3");
    t.wait_for("EXIT=3");
    // --rm: nothing is left.
    wait_until("the container's removal", Duration::from_secs(10), || {
        cli.ok(&["ps", "-aq"]).trim().is_empty()
    });
}

#[test]
fn root_a_published_web_server_answers_logs_follow_and_nothing_is_left_after_rm() {
    let reg = Registry::start();
    let reference = three_layer_image().push(&reg, "web");
    let d = Berthd::start();
    let cli = BerthCli::new(&d, "cli-web");
    let veths_before = count_veths();
    let port = free_port();
    let id = cli
        .ok(&[
            "run",
            "-d",
            "-p",
            &format!("{port}:80"),
            "--name",
            "web",
            &reference,
            "httpd",
            "-f",
            "-v",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64, "{id}");
    let mut body = None;
    wait_until("the server's answer", Duration::from_secs(10), || {
        body = http_get(port, "/index.html");
        body.is_some()
    });
    assert_eq!(body.unwrap(), "hello from berth\n");

    // logs -f follows the access log (httpd -v writes it to stderr) until the container stops.
    let mut follow = cli
        .command()
        .args(["logs", "-f", "web"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follow.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // busybox httpd logs the status of each request: a missing page is the 404 to wait for.
    http_get(port, "/followed").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("response:404")) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.push(
            rx.recv_timeout(left)
                .unwrap_or_else(|_| panic!("logs -f never showed the 404: {seen:?}")),
        );
    }

    let ps = cli.ok(&["ps"]);
    assert!(
        ps.contains(&format!("0.0.0.0:{port}->80/tcp")) && ps.contains(" web"),
        "{ps}"
    );
    assert_eq!(
        cli.ok(&["port", "web"]).trim(),
        format!("80/tcp -> 0.0.0.0:{port}")
    );
    assert_eq!(
        cli.ok(&["inspect", "-f", "{{.State.Status}} {{.Name}}", "web"])
            .trim(),
        "running /web"
    );
    assert!(cli.ok(&["top", "web"]).contains("httpd -f -v"));
    let top_lines = cli.ok(&["top", "web"]).lines().count();
    assert_eq!(top_lines, 2, "only the container's process is listed");
    assert_eq!(
        cli.ok(&["exec", "web", "cat", "/www/index.html"]),
        "hello from berth\n"
    );
    let x = cli.run(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(x.status.code(), Some(4));
    let stats = cli.ok(&["stats", "--no-stream", "web"]);
    assert!(
        stats.contains("MEM USAGE / LIMIT") && stats.contains("web"),
        "{stats}"
    );
    // cp both ways, and a link in the container cannot lead the copy out of it.
    let host = cli.data.path().join("page.txt");
    std::fs::write(&host, "copied in\n").unwrap();
    cli.ok(&["cp", host.to_str().unwrap(), "web:/www/page.txt"]);
    assert_eq!(http_get(port, "/page.txt").unwrap(), "copied in\n");
    let link = cli.data.path().join("escape");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    cli.ok(&["cp", link.to_str().unwrap(), "web:/escape"]);
    let out = cli.data.path().join("hostname-out");
    cli.ok(&["cp", "web:/escape/hostname", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("{}\n", &id[..12]),
        "the container's /etc/hostname, not the host's"
    );

    cli.ok(&["stop", "-t", "1", "web"]);
    wait_until("logs -f to end", Duration::from_secs(10), || {
        follow.try_wait().unwrap().is_some()
    });
    assert!(cli.ok(&["ps", "-a"]).contains("Exited (137)"));
    cli.ok(&["rm", "web"]);
    assert!(cli.ok(&["ps", "-aq"]).trim().is_empty());
    // Nothing is left: namespace, veth, iptables rule, mount, shim.
    assert!(!mounted_below(cli.data.path()) && !mounted_below(d.dir.path()));
    let netns = std::fs::read_dir(cli.data.path())
        .unwrap()
        .flatten()
        .map(|r| r.path().join("netns"))
        .next()
        .unwrap();
    assert_eq!(std::fs::read_dir(&netns).map(|r| r.count()).unwrap_or(0), 0);
    assert_eq!(count_veths(), veths_before);
    let rules = Command::new("iptables-save").output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules.contains(&id) && !rules.contains(&format!("--dport {port}")),
        "{rules}"
    );
    let shims = Command::new("pgrep").args(["-f", &id]).output().unwrap();
    assert!(shims.stdout.is_empty(), "a process of {id} is left");
}

fn count_veths() -> usize {
    let o = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).lines().count()
}

#[test]
fn root_networks_volumes_read_only_and_memory_limits_work_as_in_docker() {
    let reg = Registry::start();
    let reference = three_layer_image().push(&reg, "box");
    let d = Berthd::start();
    let cli = BerthCli::new(&d, "cli-net");
    cli.ok(&["pull", "-q", &reference]);

    // Two containers on a network of their own reach each other by address.
    cli.ok(&["network", "create", "front"]);
    assert!(cli.ok(&["network", "ls"]).contains("front"));
    cli.ok(&[
        "run",
        "-d",
        "--network",
        "front",
        "--name",
        "a",
        &reference,
        "sleep",
        "300",
    ]);
    let ip = cli
        .ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "a"])
        .trim()
        .to_owned();
    let subnet = cli.ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", "front"]);
    let prefix = ip.rsplit_once('.').unwrap().0.to_owned();
    assert!(subnet.contains(&prefix), "{ip} in {subnet}");
    let ping = cli.ok(&[
        "run",
        "--rm",
        "--network",
        "front",
        &reference,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        &ip,
    ]);
    assert!(ping.contains("1 packets received"), "{ping}");
    let busy = cli.run(&["network", "rm", "front"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        stderr_of(&busy).contains("container a"),
        "{}",
        stderr_of(&busy)
    );
    cli.ok(&["rm", "-f", "a"]);
    let bridge = cli
        .bridges()
        .into_iter()
        .find(|b| b.starts_with("br-"))
        .unwrap();
    cli.ok(&["network", "rm", "front"]);
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge {bridge} left"
    );

    // A named volume written by one container is read by the next.
    cli.ok(&["volume", "create", "data"]);
    cli.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/d",
        &reference,
        "sh",
        "-c",
        "echo kept > /d/f",
    ]);
    assert_eq!(
        cli.ok(&["run", "--rm", "-v", "data:/d:ro", &reference, "cat", "/d/f"]),
        "kept\n"
    );
    let ro = cli.run(&[
        "run",
        "--rm",
        "-v",
        "data:/d:ro",
        &reference,
        "sh",
        "-c",
        "echo x > /d/g",
    ]);
    assert_ne!(ro.status.code(), Some(0));
    let busy = cli.run(&[
        "run", "-d", "--name", "user", "-v", "data:/d", &reference, "sleep", "300",
    ]);
    assert!(busy.status.success());
    let rm = cli.run(&["volume", "rm", "data"]);
    assert!(
        stderr_of(&rm).contains("in use by container user"),
        "{}",
        stderr_of(&rm)
    );
    cli.ok(&["rm", "-f", "user"]);
    cli.ok(&["volume", "rm", "data"]);

    // --read-only refuses writes to the root.
    let w = cli.run(&[
        "run",
        "--rm",
        "--read-only",
        &reference,
        "sh",
        "-c",
        "echo x > /f",
    ]);
    assert_ne!(w.status.code(), Some(0));
    assert!(
        stderr_of(&w).contains("Read-only file system"),
        "{}",
        stderr_of(&w)
    );

    // --memory reaches the cgroup; going past it is an OOM kill, reported.
    let limit = cli.ok(&[
        "run",
        "--rm",
        "-m",
        "32m",
        &reference,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert_eq!(limit.trim(), "33554432");
    let oom = cli.run(&[
        "run",
        "--name",
        "hog",
        "-m",
        "32m",
        &reference,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert_eq!(oom.status.code(), Some(137), "{}", stderr_of(&oom));
    assert_eq!(
        cli.ok(&[
            "inspect",
            "-f",
            "{{.State.OOMKilled}} {{.State.ExitCode}} {{.HostConfig.Memory}}",
            "hog"
        ])
        .trim(),
        "true 137 33554432"
    );
    cli.ok(&["rm", "hog"]);
}

#[test]
fn root_save_load_push_with_login_and_errors_are_named_with_dockers_exit_codes() {
    let reg = Registry::start();
    let reference = three_layer_image().push(&reg, "box");
    let auth = Registry::start_with_htpasswd("alice", "s3cret");
    let d = Berthd::start();
    let cli = BerthCli::new(&d, "cli-img");
    cli.ok(&["pull", "-q", &reference]);

    // save → load into another namespace, and it runs there.
    let archive = cli.data.path().join("box.tar");
    cli.ok(&["save", "-o", archive.to_str().unwrap(), &reference]);
    let loaded = cli.ok(&[
        "--namespace",
        "cli-img2",
        "load",
        "-i",
        archive.to_str().unwrap(),
    ]);
    note_namespace("cli-img2");
    assert!(
        loaded.contains(&format!("Loaded image: {reference}")),
        "{loaded}"
    );
    assert_eq!(
        cli.ok(&[
            "--namespace",
            "cli-img2",
            "run",
            "--rm",
            &reference,
            "echo",
            "round trip"
        ]),
        "round trip\n"
    );

    // push to a registry with basic auth: refused without login, then with the wrong
    // password, then done.
    let target = format!("{}/app:v1", auth.addr);
    cli.ok(&["tag", &reference, &target]);
    let denied = cli.run(&["push", &target]);
    assert_eq!(denied.status.code(), Some(125));
    assert!(
        stderr_of(&denied).contains("access denied"),
        "{}",
        stderr_of(&denied)
    );
    let wrong = cli.run(&["login", "-u", "alice", "-p", "wrong", &auth.addr]);
    assert_eq!(wrong.status.code(), Some(125));
    assert!(
        stderr_of(&wrong).contains("incorrect username or password"),
        "{}",
        stderr_of(&wrong)
    );
    assert!(!cli.docker_config.join("config.json").exists());
    let mut login = cli.command();
    login
        .args(["login", "-u", "alice", "--password-stdin", &auth.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = login.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"));
    cli.ok(&["push", &target]);
    cli.ok(&["rmi", &target]);
    cli.ok(&["pull", "-q", &target]);
    cli.ok(&["logout", &auth.addr]);
    // Its last other name goes, so that the in-use check below is about the last one.
    cli.ok(&["rmi", &target]);

    // Docker's exit codes and errors that name the thing.
    assert_eq!(
        cli.run(&["run", "--rm", &reference, "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let missing = cli.run(&["run", "--rm", &reference, "nosuchcmd"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stderr_of(&missing));
    assert!(stderr_of(&missing).contains("nosuchcmd"));
    let not_exec = cli.run(&["run", "--rm", &reference, "/etc/passwd"]);
    assert_eq!(
        not_exec.status.code(),
        Some(126),
        "{}",
        stderr_of(&not_exec)
    );
    let nope = cli.run(&["logs", "nope"]);
    assert_eq!(nope.status.code(), Some(125));
    assert_eq!(stderr_of(&nope).trim(), "Error: no such container: nope");
    let tag = format!("{}/box:nope", reg.addr);
    let no_tag = cli.run(&["pull", &tag]);
    assert_eq!(no_tag.status.code(), Some(125));
    assert!(
        stderr_of(&no_tag).contains(&format!("manifest for {tag} not found")),
        "{}",
        stderr_of(&no_tag)
    );
    let dup = cli.run(&["run", "--name", "twice", &reference, "true"]);
    assert!(dup.status.success());
    let again = cli.run(&["run", "--name", "twice", &reference, "true"]);
    assert!(
        stderr_of(&again).contains("\"/twice\" is already in use"),
        "{}",
        stderr_of(&again)
    );
    let in_use = cli.run(&["rmi", &reference]);
    assert!(
        stderr_of(&in_use).contains("container twice is using"),
        "{}",
        stderr_of(&in_use)
    );
    // A create that fails after its network was made (a bind source that does not exist)
    // names the path and leaves no container, namespace or files behind.
    let netns_count = || {
        std::fs::read_dir(cli.data.path())
            .unwrap()
            .flatten()
            .map(|r| {
                std::fs::read_dir(r.path().join("netns"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum::<usize>()
    };
    let (containers_before, netns_before) = (cli.ok(&["ps", "-aq"]), netns_count());
    let bad = cli.run(&[
        "run",
        "--mount",
        "type=bind,source=/nonexistent-berth-src,target=/x",
        &reference,
        "true",
    ]);
    assert_eq!(bad.status.code(), Some(125));
    assert!(
        stderr_of(&bad).contains("/nonexistent-berth-src"),
        "{}",
        stderr_of(&bad)
    );
    assert_eq!(cli.ok(&["ps", "-aq"]), containers_before);
    assert_eq!(netns_count(), netns_before);
    let bad = cli.run(&["run", "--restart", "sometimes", &reference, "true"]);
    assert!(
        stderr_of(&bad).contains("invalid restart policy \"sometimes\""),
        "{}",
        stderr_of(&bad)
    );

    // system prune takes the stopped containers and, with -a, the images none uses.
    let pruned = cli.ok(&["system", "prune", "-a", "-f"]);
    assert!(
        pruned.contains("Deleted Containers") && pruned.contains("Total reclaimed space"),
        "{pruned}"
    );
    assert!(cli.ok(&["ps", "-aq"]).trim().is_empty());
    assert_eq!(cli.ok(&["images", "-q"]).trim(), "");
    let gone = Command::new(berth_binary())
        .args(["--address", "/nonexistent/berth.sock", "ps"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(125));
    assert!(stderr_of(&gone).contains("cannot connect to berthd at /nonexistent/berth.sock"));
}

#[test]
fn root_logs_and_containers_survive_a_berthd_restart_and_detached_rm_removes() {
    let reg = Registry::start();
    let reference = three_layer_image().push(&reg, "box");
    let mut d = Berthd::start();
    let cli = BerthCli::new(&d, "cli-restart");
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        &reference,
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    ]);
    wait_until("a first line", Duration::from_secs(10), || {
        cli.ok(&["logs", "ticker"]).contains("tick 1")
    });
    d.kill();
    std::thread::sleep(Duration::from_millis(800));
    d.spawn();
    let before = cli.ok(&["logs", "ticker"]).lines().count();
    wait_until(
        "more lines after the restart",
        Duration::from_secs(10),
        || cli.ok(&["logs", "ticker"]).lines().count() > before + 3,
    );
    assert_eq!(
        cli.ok(&["exec", "ticker", "echo", "still here"]),
        "still here\n"
    );
    let tail = cli.ok(&["logs", "--tail", "2", "-t", "ticker"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.contains("Z tick ")), "{tail}");
    cli.ok(&["pause", "ticker"]);
    assert!(cli.ok(&["ps"]).contains("(Paused)"));
    cli.ok(&["unpause", "ticker"]);
    cli.ok(&["rename", "ticker", "tocker"]);
    cli.ok(&["kill", "tocker"]);
    assert_eq!(cli.ok(&["wait", "tocker"]).trim(), "137");
    cli.ok(&["start", "tocker"]);
    assert!(cli.ok(&["ps"]).contains("tocker"));
    cli.ok(&["rm", "-f", "tocker"]);

    // --restart is kept by berthd: always until stopped, on-failure:N at most N times.
    cli.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "again",
        &reference,
        "sh",
        "-c",
        "echo started; sleep 0.3; exit 1",
    ]);
    wait_until("two restarts", Duration::from_secs(20), || {
        cli.ok(&["logs", "again"]).matches("started").count() >= 3
    });
    let count: u32 = cli
        .ok(&["inspect", "-f", "{{.RestartCount}}", "again"])
        .trim()
        .parse()
        .unwrap();
    assert!(count >= 2, "{count}");
    assert_eq!(
        cli.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}",
            "again"
        ])
        .trim(),
        "always"
    );
    cli.ok(&["stop", "-t", "1", "again"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !cli.ok(&["ps"]).contains("again"),
        "a stopped container stays stopped"
    );
    cli.ok(&["rm", "again"]);
    cli.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "--name",
        "flaky",
        &reference,
        "sh",
        "-c",
        "echo try; exit 3",
    ]);
    wait_until("two restarts", Duration::from_secs(20), || {
        cli.ok(&["inspect", "-f", "{{.RestartCount}}", "flaky"])
            .trim()
            == "2"
    });
    wait_until("the last try to end", Duration::from_secs(10), || {
        cli.ok(&["ps", "-a"]).contains("Exited (3)")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cli.ok(&["logs", "flaky"]).matches("try").count(), 3);
    let conflict = cli.run(&["run", "--rm", "--restart", "always", &reference, "true"]);
    assert!(
        stderr_of(&conflict).contains("conflicting options"),
        "{}",
        stderr_of(&conflict)
    );

    // -d --rm: gone once it exits, with nobody waiting in the foreground.
    cli.ok(&[
        "run", "-d", "--rm", "--name", "brief", &reference, "sleep", "1",
    ]);
    wait_until(
        "the detached --rm container's removal",
        Duration::from_secs(15),
        || !cli.ok(&["ps", "-a"]).contains("brief"),
    );
}

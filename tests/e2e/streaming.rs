//! CRI streaming end to end: CRI Exec, Attach and PortForward return URLs on berthd's
//! streaming server; the clients in `berth_e2e::stream` then speak Kubernetes' protocols
//! to them over SPDY/3.1 and WebSocket, against real containers in a real pod (runc,
//! Debian's CNI plugins). Root only.

use std::time::{Duration, Instant};

use berth_e2e::cri::{container_config, pod_config, v1 as cri, CniNet, Cri};
use berth_e2e::stream::{ws_forward, Session, SpdyForward, Transport, Want, TRANSPORTS};
use berth_e2e::*;
use containerd_client::tonic::Code;

const T: Duration = Duration::from_secs(20);

struct Pod {
    _reg: Registry,
    _net: CniNet,
    d: Berthd,
    c: Cri,
    pod_id: String,
    logs: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Pod {
    /// A pod with the given containers (name, script, stdin, stdin_once, tty), started.
    fn start(tag: u8, containers: &[(&str, &str, bool, bool, bool)]) -> (Pod, Vec<String>) {
        Self::start_with(tag, containers, "")
    }

    /// The same, with more lines for berthd's `[cri]` table.
    fn start_with(
        tag: u8,
        containers: &[(&str, &str, bool, bool, bool)],
        cri_extra: &str,
    ) -> (Pod, Vec<String>) {
        let reg = Registry::start();
        let image = OciImage::build(&[busybox_layer()]).push(&reg, "busybox");
        let net = CniNet::new(tag, None);
        let d = Berthd::start_with_config(&format!("{}{cri_extra}", net.berthd_config()));
        let mut c = Cri::connect(&d.socket);
        c.pull(&image)
            .unwrap_or_else(|e| panic!("pull: {e:?}\n{}", d.log()));
        let logs = tempfile::tempdir().unwrap();
        let pod = pod_config("stream", logs.path(), "");
        let pod_id = c
            .run_pod(pod.clone())
            .unwrap_or_else(|e| panic!("run pod: {e:?}\n{}", d.log()));
        let mut ids = Vec::new();
        for (name, script, stdin, once, tty) in containers {
            let mut cfg = container_config(name, &image, script);
            cfg.stdin = *stdin;
            cfg.stdin_once = *once;
            cfg.tty = *tty;
            let id = c
                .create(&pod_id, cfg, &pod)
                .unwrap_or_else(|e| panic!("create {name}: {e:?}\n{}", d.log()));
            c.start(&id)
                .unwrap_or_else(|e| panic!("start {name}: {e:?}\n{}", d.log()));
            ids.push(id);
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        (
            Pod {
                _reg: reg,
                _net: net,
                d,
                c,
                pod_id,
                logs,
                rt,
            },
            ids,
        )
    }

    fn exec_url(&mut self, id: &str, cmd: &[&str], want: Want) -> String {
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            tty: want.tty,
            stdin: want.stdin,
            stdout: want.stdout,
            stderr: want.stderr,
        };
        let url = self
            .c
            .call(|c| c.runtime.exec(req))
            .unwrap_or_else(|e| panic!("Exec: {e:?}"))
            .url;
        url
    }

    fn attach_url(&mut self, id: &str, want: Want) -> String {
        let req = cri::AttachRequest {
            container_id: id.into(),
            tty: want.tty,
            stdin: want.stdin,
            stdout: want.stdout,
            stderr: want.stderr,
        };
        self.c
            .call(|c| c.runtime.attach(req))
            .unwrap_or_else(|e| panic!("Attach: {e:?}"))
            .url
    }

    fn port_forward_url(&mut self, ports: &[i32]) -> String {
        let req = cri::PortForwardRequest {
            pod_sandbox_id: self.pod_id.clone(),
            port: ports.to_vec(),
        };
        self.c
            .call(|c| c.runtime.port_forward(req))
            .unwrap_or_else(|e| panic!("PortForward: {e:?}"))
            .url
    }
}

const OUT: Want = Want {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};

#[test]
fn root_exec_over_spdy_and_websocket() {
    let (mut p, ids) = Pod::start(11, &[("sh", "exec sleep 3600", false, false, false)]);
    let sh = ids[0].clone();
    for tr in TRANSPORTS {
        // echo hi → "hi", success.
        let url = p.exec_url(&sh, &["echo", "hi"], OUT);
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let out = p.rt.block_on(async {
            let s = Session::open(&url, tr, OUT).await.unwrap();
            s.finish(T).await
        });
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{tr:?}");
        assert_eq!(out.status()["status"], "Success", "{tr:?}: {}", out.error);

        // A non-zero exit, with stderr kept apart.
        let url = p.exec_url(&sh, &["sh", "-c", "echo oops >&2; exit 7"], OUT);
        let out =
            p.rt.block_on(async { Session::open(&url, tr, OUT).await.unwrap().finish(T).await });
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n", "{tr:?}");
        let st = out.status();
        assert_eq!(st["status"], "Failure");
        assert_eq!(st["reason"], "NonZeroExitCode", "{tr:?}: {}", out.error);
        assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(st["details"]["causes"][0]["message"], "7");

        // A used token, and one never given → 404, never a stream.
        let err =
            p.rt.block_on(Session::open(&url, tr, OUT))
                .err()
                .expect("a second use is refused");
        assert_eq!(err.0, 404, "{tr:?}: {}", err.1);
        let bogus = format!("{}/exec/AAAAAAAA", url.rsplitn(3, '/').nth(2).unwrap());
        let err = p.rt.block_on(Session::open(&bogus, tr, OUT)).err().unwrap();
        assert_eq!(err.0, 404, "{tr:?}");
    }

    // An interactive shell on a TTY follows resizes.
    for tr in TRANSPORTS {
        let want = Want {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let url = p.exec_url(&sh, &["sh"], want);
        let out = p.rt.block_on(async {
            let mut s = Session::open(&url, tr, want).await.unwrap();
            s.resize(100, 30).await;
            // The resize travels on its own stream: give it a moment before asking.
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.send(b"stty size\n").await;
            s.read_until("30 100", T).await;
            s.resize(120, 50).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.send(b"stty size\n").await;
            s.read_until("50 120", T).await;
            s.send(b"echo typed-$((6*7))\n").await;
            s.read_until("typed-42", T).await;
            s.send(b"exit 3\n").await;
            s.finish(T).await
        });
        let st = out.status();
        assert_eq!(st["reason"], "NonZeroExitCode", "{tr:?}: {}", out.error);
        assert_eq!(st["details"]["causes"][0]["message"], "3");
    }

    // 10 MB of random bytes through cat come back byte-identical (transports that can
    // close stdin on its own: SPDY and WebSocket v5).
    let mut data = vec![0u8; 10 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for tr in [
        Transport::Spdy("v4.channel.k8s.io"),
        Transport::WebSocket("v5.channel.k8s.io"),
    ] {
        let want = Want {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let url = p.exec_url(&sh, &["cat"], want);
        let t = Instant::now();
        let out = p.rt.block_on(async {
            let s = Session::open(&url, tr, want).await.unwrap();
            // Written from a task of its own while this one reads, as a client does.
            let (input, data) = (s.input(), data.clone());
            let writer = tokio::spawn(async move {
                input.send(&data).await;
                input.close_stdin().await;
            });
            let out = s.finish(Duration::from_secs(60)).await;
            writer.await.unwrap();
            out
        });
        assert_eq!(out.stdout.len(), data.len(), "{tr:?}: {}", out.error);
        assert!(out.stdout == data, "{tr:?}: the bytes differ");
        assert_eq!(out.status()["status"], "Success");
        eprintln!("{tr:?}: 10 MiB through cat in {:?}", t.elapsed());
    }
}

#[test]
fn root_attach_and_port_forward() {
    let (mut p, ids) = Pod::start(
        12,
        &[
            (
                "counter",
                "i=0; while true; do echo count-$i; i=$((i+1)); sleep 0.1; done",
                false,
                false,
                false,
            ),
            ("reader", "while read l; do echo got-$l; done; echo stdin-closed", true, true, false),
            ("term", "exec sh", true, false, true),
            (
                "web",
                "busybox mkdir -p /a /b && echo page-80 > /a/index.html && echo page-8080 > /b/index.html && busybox httpd -p 80 -h /a && exec busybox httpd -f -p 8080 -h /b",
                false,
                false,
                false,
            ),
        ],
    );
    let (counter, reader, term) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    // Attach receives the counter while the log keeps receiving it too.
    for tr in TRANSPORTS {
        let url = p.attach_url(&counter, OUT);
        let seen = p.rt.block_on(async {
            let mut s = Session::open(&url, tr, OUT).await.unwrap();
            s.read_until("count-", T).await;
            let first = String::from_utf8_lossy(&s.stdout).into_owned();
            let n = first.matches("count-").count();
            s.read_until_n("count-", n + 3, T).await;
            let later = String::from_utf8_lossy(&s.stdout).into_owned();
            assert!(later.len() > first.len(), "the counter keeps coming");
            later
        });
        let last = seen
            .lines()
            .rfind(|l| l.starts_with("count-"))
            .unwrap()
            .to_owned();
        let log = p.logs.path().join("counter/0.log");
        wait_until(&format!("{last} in the log"), T, || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!(" stdout F {last}\n"))
        });
    }
    // Two clients attached at once both receive the output.
    let (u1, u2) = (p.attach_url(&counter, OUT), p.attach_url(&counter, OUT));
    p.rt.block_on(async {
        let mut a = Session::open(&u1, TRANSPORTS[0], OUT).await.unwrap();
        let mut b = Session::open(&u2, TRANSPORTS[1], OUT).await.unwrap();
        tokio::join!(
            a.read_until_n("count-", 3, T),
            b.read_until_n("count-", 3, T)
        );
    });
    // The attach clients left; the container runs on.
    assert_eq!(
        p.c.status(&counter).state,
        cri::ContainerState::ContainerRunning as i32
    );

    // Stdin reaches a container that asked for it; StdinOnce closes it when the first
    // attach ends.
    let want = Want {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let url = p.attach_url(&reader, want);
    let out = p.rt.block_on(async {
        let mut s = Session::open(&url, Transport::Spdy("v4.channel.k8s.io"), want)
            .await
            .unwrap();
        s.send(b"one\n").await;
        s.read_until("got-one", T).await;
        s.close_stdin().await;
        s.finish(T).await
    });
    assert_eq!(out.status()["status"], "Success", "{}", out.error);
    wait_until("the reader saw its stdin close", T, || {
        p.c.status(&reader).state == cri::ContainerState::ContainerExited as i32
    });
    let log = std::fs::read_to_string(p.logs.path().join("reader/0.log")).unwrap();
    assert!(log.contains("stdout F stdin-closed"), "{log}");

    // Attach to a shell on a TTY (`kubectl attach -it`): keystrokes reach it, resizes too,
    // on both transports; detaching leaves it running.
    let tty = Want {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    for (i, tr) in [TRANSPORTS[0], TRANSPORTS[1]].into_iter().enumerate() {
        let url = p.attach_url(&term, tty);
        let (w, h) = (70 + i as u16, 20 + i as u16);
        p.rt.block_on(async {
            let mut s = Session::open(&url, tr, tty).await.unwrap();
            s.resize(w, h).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.send(b"stty size; echo tty-$((40+2))\n").await;
            s.read_until("tty-42", T).await;
            let out = String::from_utf8_lossy(&s.stdout).into_owned();
            assert!(out.contains(&format!("{h} {w}")), "{tr:?}: {out}");
        });
    }
    assert_eq!(
        p.c.status(&term).state,
        cri::ContainerState::ContainerRunning as i32
    );

    // Port forward over SPDY: a page, two ports at once on one connection, and a port
    // nobody listens on, which fails alone.
    let url = p.port_forward_url(&[80]);
    let url2 = p.port_forward_url(&[80, 8080]);
    let get = b"GET / HTTP/1.0\r\n\r\n";
    p.rt.block_on(async {
        let mut f = SpdyForward::connect(&url).await.unwrap();
        let t = Instant::now();
        loop {
            let (page, err) = f.request(80, get).await;
            if String::from_utf8_lossy(&page).contains("page-80") {
                break;
            }
            assert!(t.elapsed() < T, "no page from port 80: {err}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (dead, err) = f.request(9, get).await;
        assert!(dead.is_empty());
        assert!(
            err.contains("error forwarding port 9") && err.contains("connect"),
            "{err}"
        );
        let mut g = SpdyForward::connect(&url2).await.unwrap();
        let (a, b) = {
            // Two forwards at once, over the same connection.
            let s80 = g.open_data(80).await;
            let s8080 = g.open_data(8080).await;
            let go = |mut s: berth_cri::streaming::spdy::Stream| async move {
                s.tx.send(get).await.unwrap();
                let mut v = Vec::new();
                while let Some(b) = s.rx.recv().await {
                    v.extend_from_slice(&b);
                }
                String::from_utf8_lossy(&v).into_owned()
            };
            tokio::join!(go(s80), go(s8080))
        };
        assert!(a.contains("page-80"), "{a}");
        assert!(b.contains("page-8080"), "{b}");
        // The first connection still works after the failed port.
        let (page, _) = f.request(80, get).await;
        assert!(String::from_utf8_lossy(&page).contains("page-80"));
        f.close().await;
        g.close().await;
    });

    // Port forward over WebSocket, two ports; a token works once.
    for proto in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let url = p.port_forward_url(&[80, 8080]);
        let got =
            p.rt.block_on(ws_forward(&url, proto, &[80, 8080], &[get, get], T))
                .unwrap();
        assert!(
            String::from_utf8_lossy(&got[0].0).contains("page-80"),
            "{got:?}"
        );
        assert!(
            String::from_utf8_lossy(&got[1].0).contains("page-8080"),
            "{got:?}"
        );
        let again =
            p.rt.block_on(ws_forward(&url, proto, &[80], &[get], T))
                .expect_err("used token");
        assert_eq!(again.0, 404);
    }
}

/// The same clients against containerd 1.6's CRI, whose streaming server is the kubelet's
/// Go code (spdystream, x/net websocket): berth's SPDY framing and header compression,
/// and the WebSocket channel framing, interoperate with the implementations Kubernetes
/// runs.
#[test]
fn root_the_clients_speak_to_containerds_go_streaming_server() {
    let reg = Registry::start();
    let image = OciImage::build(&[busybox_layer()]).push(&reg, "busybox");
    let pause =
        OciImage::build_with_cmd(&[busybox_layer()], &["/bin/busybox", "sleep", "2147483647"])
            .push(&reg, "pause");
    let net = CniNet::new(15, None);
    let ctrd = berth_e2e::containerd::ContainerdCri::start(&net, &pause, &reg.addr);
    let mut c = Cri::connect(&ctrd.socket);
    c.pull(&image)
        .unwrap_or_else(|e| panic!("pull: {e:?}\n{}", ctrd.log()));
    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("peer", logs.path(), "");
    let pod_id = c
        .run_pod(pod.clone())
        .unwrap_or_else(|e| panic!("run pod: {e:?}\n{}", ctrd.log()));
    let web = container_config(
        "web",
        &image,
        "busybox mkdir -p /a && echo page-peer > /a/index.html && exec busybox httpd -f -p 80 -h /a",
    );
    let id = c
        .create(&pod_id, web, &pod)
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", ctrd.log()));
    c.start(&id).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for tr in [
        Transport::Spdy("v4.channel.k8s.io"),
        Transport::WebSocket("v4.channel.k8s.io"),
        Transport::WebSocket("v4.base64.channel.k8s.io"),
    ] {
        for (cmd, code) in [
            (vec!["echo", "hi"], None),
            (vec!["sh", "-c", "exit 7"], Some("7")),
        ] {
            let req = cri::ExecRequest {
                container_id: id.clone(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            let url = c.call(|c| c.runtime.exec(req)).unwrap().url;
            let out =
                rt.block_on(async { Session::open(&url, tr, OUT).await.unwrap().finish(T).await });
            match code {
                None => {
                    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{tr:?}");
                    assert_eq!(out.status()["status"], "Success", "{tr:?}");
                }
                Some(code) => {
                    assert_eq!(out.status()["reason"], "NonZeroExitCode", "{tr:?}");
                    assert_eq!(out.status()["details"]["causes"][0]["message"], code);
                }
            }
        }
    }
    // A terminal: the shell runs on a TTY, and a resize reaches it.
    let want = Want {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let req = cri::ExecRequest {
        container_id: id.clone(),
        cmd: vec!["sh".into()],
        tty: true,
        stdin: true,
        stdout: true,
        stderr: false,
    };
    let url = c.call(|c| c.runtime.exec(req)).unwrap().url;
    rt.block_on(async {
        let mut s = Session::open(&url, Transport::Spdy("v4.channel.k8s.io"), want)
            .await
            .unwrap();
        s.resize(90, 33).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.send(b"stty size\n").await;
        s.read_until("33 90", T).await;
        s.send(b"exit\n").await;
        s.finish(T).await
    });
    // Port forward over SPDY.
    let req = cri::PortForwardRequest {
        pod_sandbox_id: pod_id.clone(),
        port: vec![80],
    };
    let url = c.call(|c| c.runtime.port_forward(req)).unwrap().url;
    rt.block_on(async {
        let mut f = SpdyForward::connect(&url).await.unwrap();
        let t = Instant::now();
        loop {
            let (page, err) = f.request(80, b"GET / HTTP/1.0\r\n\r\n").await;
            if String::from_utf8_lossy(&page).contains("page-peer") {
                break;
            }
            assert!(
                t.elapsed() < T,
                "no page through containerd's forward: {err}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        f.close().await;
    });
    drop(c); // pods go before the daemon
}

#[test]
fn root_exec_over_tls() {
    let ca = TestCa::new();
    let cfg = format!(
        "stream_tls_cert_file = \"{}\"\nstream_tls_key_file = \"{}\"\n",
        ca.dir.path().join("server.pem").display(),
        ca.dir.path().join("server.key").display()
    );
    let (mut p, ids) = Pod::start_with(14, &[("sh", "exec sleep 3600", false, false, false)], &cfg);
    let url = p.exec_url(&ids[0], &["echo", "over-tls"], OUT);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca_pem = ca.dir.path().join("ca.pem");
    let out = p.rt.block_on(async {
        Session::open_with(&url, TRANSPORTS[0], OUT, Some(&ca_pem))
            .await
            .unwrap()
            .finish(T)
            .await
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over-tls\n");
    assert_eq!(out.status()["status"], "Success");
    // Plain HTTP to the TLS port gets no stream.
    let url = p.exec_url(&ids[0], &["true"], OUT);
    let plain = url.replacen("https://", "http://", 1);
    assert!(p
        .rt
        .block_on(Session::open(&plain, TRANSPORTS[0], OUT))
        .is_err());
}

#[test]
fn root_an_idle_stream_is_closed_and_its_exec_killed() {
    let (mut p, ids) = Pod::start_with(
        16,
        &[("sh", "exec sleep 3600", false, false, false)],
        "stream_idle_timeout_secs = 1\n",
    );
    for (i, tr) in [TRANSPORTS[0], TRANSPORTS[1]].into_iter().enumerate() {
        let marker = format!(
            "{}",
            800_000 + (std::process::id() % 10_000) * 10 + i as u32
        );
        let url = p.exec_url(&ids[0], &["sleep", &marker], OUT);
        let t = Instant::now();
        let out = p.rt.block_on(async {
            Session::open(&url, tr, OUT)
                .await
                .unwrap()
                .finish(Duration::from_secs(10))
                .await
        });
        // The server hung up on the quiet connection: no status, and well before the
        // command would have ended.
        assert!(out.error.is_empty(), "{tr:?}: {}", out.error);
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "{tr:?}: {:?}",
            t.elapsed()
        );
        wait_until(&format!("{tr:?}: the idle exec is killed"), T, || {
            processes_with(&marker) == 0
        });
    }
}

/// The status code of a raw HTTP/1.1 request to `url` with `headers`.
fn http_status(url: &str, headers: &[&str]) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

#[test]
fn root_streaming_refuses_bad_requests_by_name() {
    let (mut p, ids) = Pod::start(
        17,
        &[
            ("sh", "exec sleep 3600", false, false, false),
            ("done", "exit 0", false, false, false),
        ],
    );
    let (sh, done) = (ids[0].clone(), ids[1].clone());
    let exec = |id: &str, tty: bool, stderr: bool, stdout: bool| cri::ExecRequest {
        container_id: id.into(),
        cmd: vec!["true".into()],
        tty,
        stdin: false,
        stdout,
        stderr,
    };
    let e =
        p.c.call(|c| c.runtime.exec(exec("nosuchcontainer", false, true, true)))
            .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nosuchcontainer"), "{e:?}");
    let e =
        p.c.call(|c| c.runtime.exec(exec(&sh, true, true, true)))
            .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("tty and stderr"), "{e:?}");
    let e =
        p.c.call(|c| c.runtime.exec(exec(&sh, false, false, false)))
            .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    wait_until("the short-lived container exits", T, || {
        p.c.status(&done).state == cri::ContainerState::ContainerExited as i32
    });
    let e =
        p.c.call(|c| c.runtime.exec(exec(&done, false, true, true)))
            .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(&done) && e.message().contains("not running"),
        "{e:?}"
    );
    let e =
        p.c.call(|c| {
            c.runtime.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: "nosuchpod".into(),
                port: vec![80],
            })
        })
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nosuchpod"), "{e:?}");
    assert_eq!(
        streaming_info(&mut p.c)["pendingTokens"],
        0,
        "no URL was handed out"
    );

    // Upgrades that cannot be served: no stream, a status that says why.
    let url = p.exec_url(&sh, &["true"], OUT);
    let (code, body) = http_status(&url, &[]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("missing upgrade headers"), "{body}");
    let url = p.exec_url(&sh, &["true"], OUT);
    let (code, body) = http_status(
        &url,
        &[
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
            "X-Stream-Protocol-Version: v9.channel.k8s.io",
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("v9.channel.k8s.io"), "{body}");
    let url = p.exec_url(&sh, &["true"], OUT);
    let (code, body) = http_status(
        &url,
        &[
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol: v9.channel.k8s.io",
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("v9.channel.k8s.io"), "{body}");
    // An exec token on the attach path, and the token is spent by trying.
    let url = p.exec_url(&sh, &["true"], OUT);
    assert_eq!(
        http_status(&url.replacen("/exec/", "/attach/", 1), &[]).0,
        404
    );
    assert_eq!(http_status(&url, &[]).0, 404);
    wait_until("nothing open on the streaming server", T, || {
        let i = streaming_info(&mut p.c);
        i["activeSessions"] == 0 && i["pendingTokens"] == 0
    });
}

/// A TLS setting that cannot work stops berthd at start, naming what is missing.
#[test]
fn root_a_half_tls_setting_stops_berthd_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("berthd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cri]\nstream_tls_cert_file = \"{}\"\n",
            dir.path().join("cert.pem").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(berthd_binary())
        .arg("--config")
        .arg(&cfg)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(dir.path().join("berth.sock"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > T {
            let _ = child.kill();
            panic!("berthd started with a certificate and no key");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("certificate and a key"), "{err}");
}

/// What CRI Status (verbose) says of the streaming server.
fn streaming_info(c: &mut Cri) -> serde_json::Value {
    let st = c
        .call(|c| c.runtime.status(cri::StatusRequest { verbose: true }))
        .unwrap();
    serde_json::from_str(&st.info["streaming"]).unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Processes on the host whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn root_a_vanished_client_leaves_nothing_behind() {
    let (mut p, ids) = Pod::start(13, &[("sh", "exec sleep 3600", false, false, false)]);
    let sh = ids[0].clone();
    let pid = p.d.pid();
    // One exec first, so that lazily made things (the listener's tasks, the shim
    // connection) exist before counting.
    let url = p.exec_url(&sh, &["true"], OUT);
    p.rt.block_on(async {
        Session::open(&url, TRANSPORTS[0], OUT)
            .await
            .unwrap()
            .finish(T)
            .await
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = fds(pid);
    let tasks_before = streaming_info(&mut p.c)["runtimeTasks"].as_u64().unwrap();
    let fifos_before = std::fs::read_dir(
        p.d.state
            .join("io.containerd.grpc.v1.cri/containers")
            .join(&sh),
    )
    .map(|d| d.count())
    .unwrap_or(0);
    for (i, tr) in TRANSPORTS.into_iter().enumerate() {
        // A duration no other process on the machine is sleeping for.
        let marker = format!(
            "{}",
            900_000 + (std::process::id() % 10_000) * 10 + i as u32
        );
        let want = Want {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let script = format!("echo started; exec sleep {marker}");
        let url = p.exec_url(&sh, &["sh", "-c", &script], want);
        p.rt.block_on(async {
            let mut s = Session::open(&url, tr, want).await.unwrap();
            s.read_until("started", T).await;
            // The client vanishes: the session and its connection are dropped.
            drop(s);
        });
        assert!(processes_with(&marker) <= 1);
        wait_until(&format!("{tr:?}: the exec'd process is gone"), T, || {
            processes_with(&marker) == 0
        });
    }
    wait_until("no streaming session left, nor a task of one", T, || {
        let i = streaming_info(&mut p.c);
        i["activeSessions"] == 0 && i["runtimeTasks"].as_u64().unwrap() <= tasks_before
    });
    wait_until("berthd's descriptors back to where they were", T, || {
        fds(pid) <= before
    });
    let files = |sh: &str| {
        std::fs::read_dir(
            p.d.state
                .join("io.containerd.grpc.v1.cri/containers")
                .join(sh),
        )
        .map(|d| d.count())
        .unwrap_or(0)
    };
    wait_until("the exec fifos are removed", T, || {
        files(&sh) == fifos_before
    });
    // The container itself was not touched.
    assert_eq!(
        p.c.status(&sh).state,
        cri::ContainerState::ContainerRunning as i32
    );
    let _ = &mut p;
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

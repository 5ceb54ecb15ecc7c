//! Each command carried out with libcontainer. A container's state lives under
//! `<root>/<id>`, as runc keeps it under its own root.

use std::path::{Path, PathBuf};

use libcontainer::{
    container::{builder::ContainerBuilder, Container},
    signal::Signal,
    syscall::syscall::SyscallType,
    workload::default::DefaultExecutor,
};

use crate::args::{Command, Invocation};

type Result<T> = std::result::Result<T, String>;

pub fn run(invocation: &Invocation) -> Result<()> {
    let root = &invocation.globals.root;
    match &invocation.command {
        Command::Create {
            id,
            bundle,
            pid_file,
            console_socket,
            no_pivot,
        } => {
            std::fs::create_dir_all(root)
                .map_err(|e| format!("create runtime root {}: {e}", root.display()))?;
            let bundle = std::path::absolute(bundle)
                .map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
            drop_false_no_new_privileges(&bundle.join("config.json"), &["process"])?;
            builder(root, id, pid_file, console_socket)?
                .validate_id()
                .map_err(|e| format!("container id {id:?}: {e}"))?
                .as_init(&bundle)
                .with_systemd(invocation.globals.systemd_cgroup)
                .with_detach(true)
                .with_no_pivot(*no_pivot)
                .build()
                .map_err(|e| format!("create container {id:?} from {}: {e}", bundle.display()))?;
            Ok(())
        }
        Command::Start { id } => load(root, id)?
            .start()
            .map_err(|e| format!("start container {id:?}: {e}")),
        Command::Exec {
            id,
            process,
            pid_file,
            console_socket,
        } => {
            load(root, id)?;
            drop_false_no_new_privileges(process, &[])?;
            builder(root, id, pid_file, console_socket)?
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process.clone()))
                .build()
                .map_err(|e| format!("exec in container {id:?}: {e}"))?;
            Ok(())
        }
        Command::Kill { id, signal, all } => {
            let signal = parse_signal(signal)?;
            load(root, id)?
                .kill(signal, *all)
                .map_err(|e| format!("kill container {id:?}: {e}"))
        }
        Command::Pause { id } => load(root, id)?
            .pause()
            .map_err(|e| format!("pause container {id:?}: {e}")),
        Command::Resume { id } => load(root, id)?
            .resume()
            .map_err(|e| format!("resume container {id:?}: {e}")),
        Command::Delete { id, force } => {
            let dir = container_dir(root, id);
            if !dir.exists() {
                // runc answers the same way; the shim treats it as already deleted.
                return Err(format!("container {id:?} does not exist"));
            }
            load(root, id)?
                .delete(*force)
                .map_err(|e| format!("delete container {id:?}: {e}"))
        }
    }
}

/// libcontainer 0.7 loads a seccomp filter early, while the process may still raise it
/// without no_new_privs, only when `noNewPrivileges` is absent; written out as `false` (as
/// the kubelet's containers have it) it loads the filter after dropping CAP_SYS_ADMIN, which
/// the kernel refuses. `false` and absent mean the same, so an explicit `false` is removed
/// from the JSON object at `path` (the process under `pointer`) before libcontainer reads it.
fn drop_false_no_new_privileges(file: &Path, pointer: &[&str]) -> Result<()> {
    let text = std::fs::read(file).map_err(|e| format!("read {}: {e}", file.display()))?;
    let mut doc: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    let mut process = &mut doc;
    for key in pointer {
        match process.get_mut(*key) {
            Some(inner) => process = inner,
            None => return Ok(()),
        }
    }
    let Some(object) = process.as_object_mut() else {
        return Ok(());
    };
    if object.get("noNewPrivileges") != Some(&serde_json::Value::Bool(false)) {
        return Ok(());
    }
    object.remove("noNewPrivileges");
    let tmp = file.with_extension("json.berth-tmp");
    std::fs::write(&tmp, doc.to_string()).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("replace {}: {e}", file.display()))
}

/// What creating a container and execing into one share: where the state is, where the pid
/// goes, the console socket, and the executor.
fn builder(
    root: &Path,
    id: &str,
    pid_file: &Option<PathBuf>,
    console_socket: &Option<PathBuf>,
) -> Result<ContainerBuilder> {
    Ok(ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(root.to_path_buf())
        .map_err(|e| format!("runtime root {}: {e}", root.display()))?
        .with_pid_file(pid_file.clone())
        .map_err(|e| format!("pid file: {e}"))?
        .with_console_socket(console_socket.clone())
        .with_executor(DefaultExecutor {}))
}

fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

fn load(root: &Path, id: &str) -> Result<Container> {
    let dir = container_dir(root, id);
    if !dir.join("state.json").exists() {
        return Err(format!(
            "container {id:?} does not exist under {}",
            root.display()
        ));
    }
    Container::load(dir).map_err(|e| format!("load container {id:?}: {e}"))
}

/// A signal as runc takes it: a number, or a name with or without `SIG`.
fn parse_signal(signal: &str) -> Result<Signal> {
    if let Ok(number) = signal.parse::<i32>() {
        return Signal::try_from(number).map_err(|e| format!("signal {signal}: {e}"));
    }
    let name = signal.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    Signal::try_from(name.as_str()).map_err(|e| format!("signal {signal}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        let name = |s: &str| format!("{:?}", parse_signal(s).unwrap());
        assert_eq!(name("9"), "Signal(SIGKILL)");
        assert_eq!(name("KILL"), "Signal(SIGKILL)");
        assert_eq!(name("sigterm"), "Signal(SIGTERM)");
        assert!(parse_signal("NOPE").unwrap_err().contains("NOPE"));
        assert!(parse_signal("4096").is_err());
    }

    #[test]
    fn an_explicit_false_no_new_privileges_is_dropped() {
        let dir = std::env::temp_dir().join(format!("berth-nnp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            r#"{"process":{"noNewPrivileges":false,"args":["sh"]}}"#,
        )
        .unwrap();
        drop_false_no_new_privileges(&config, &["process"]).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"process": {"args": ["sh"]}}));
        let process = dir.join("process.json");
        std::fs::write(&process, r#"{"noNewPrivileges":true,"args":["sh"]}"#).unwrap();
        drop_false_no_new_privileges(&process, &[]).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&process).unwrap()).unwrap();
        assert_eq!(v["noNewPrivileges"], true);
        std::fs::write(&process, "not json").unwrap();
        assert!(drop_false_no_new_privileges(&process, &[]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_container_is_named() {
        let e = load(Path::new("/nonexistent-berth-root"), "c9")
            .err()
            .unwrap();
        assert!(e.contains("\"c9\"") && e.contains("does not exist"), "{e}");
    }
}

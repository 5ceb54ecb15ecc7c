//! containerd.services.tasks.v1: tasks of containers, run through shim v2. Each call finds
//! the task in the runtime's book and passes the request to its shim; the shim's own
//! answers (a runc refusal, a process that does not exist) reach the client unchanged.

use std::sync::Arc;

use berth_core::containers::Containers;
use berth_core::filters::{Filter, Filterable};
use berth_core::metadata::Timestamp;
use berth_core::mount::Mount;
use berth_core::Namespace;
use berth_runtime::{CreateTask, ProcessState, ShimManager, Stdio, TaskClient, TaskKey};
use tonic::{Request, Response, Status};

use crate::api::{
    CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest, CreateTaskRequest,
    CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest,
    ExecProcessRequest, GetRequest, GetResponse, KillRequest, ListPidsRequest, ListPidsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, PauseTaskRequest,
    ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use crate::server::tasks_server;
use crate::status::{any_in, any_out, blocking, namespace, runtime_status, timestamp, to_status};
use crate::types::v1::{Process, ProcessInfo};
use crate::types::Metric;

/// The runtime a container that names none runs with: berth's own shim (containerd's is
/// `io.containerd.runc.v2`, which stays selectable by name).
pub const DEFAULT_RUNTIME: &str = "io.containerd.berth.v2";

pub struct TasksService {
    pub containers: Arc<Containers>,
    pub runtime: Arc<ShimManager>,
}

/// containerd fills `id` with the process id: the task's own id for its init process.
fn process_out(p: ProcessState) -> Process {
    Process {
        id: if p.exec_id.is_empty() {
            p.container_id.clone()
        } else {
            p.exec_id
        },
        container_id: p.container_id,
        pid: p.pid,
        status: p.status as i32,
        stdin: p.stdio.stdin,
        stdout: p.stdio.stdout,
        stderr: p.stdio.stderr,
        terminal: p.stdio.terminal,
        exit_status: p.exit_status,
        exited_at: p.exited_at.and_then(timestamp),
    }
}

fn exit_out(id: String, e: berth_runtime::Exit) -> DeleteResponse {
    DeleteResponse {
        id,
        pid: e.pid,
        exit_status: e.status,
        exited_at: timestamp(e.at),
    }
}

fn exec_id_valid(exec_id: &str) -> Result<(), Status> {
    berth_runtime::bundle::validate_id(exec_id).map_err(runtime_status)
}

struct TaskFields<'a> {
    ns: &'a str,
    state: &'a ProcessState,
}

impl Filterable for TaskFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("id" | "container_id") => Some(self.state.container_id.clone()),
            Some("namespace") => Some(self.ns.to_owned()),
            Some("status") => Some(self.state.status.name().to_owned()),
            Some("pid") => Some(self.state.pid.to_string()),
            _ => None,
        }
    }
}

type R<T> = Result<Response<T>, Status>;

/// The task of container `id`, by its typed key.
fn task_key(ns: &Namespace, id: &str) -> Result<TaskKey, Status> {
    Ok(TaskKey {
        namespace: ns.clone(),
        id: berth_core::ContainerId::new(id).map_err(to_status)?,
    })
}

impl TasksService {
    /// The shim of a live task, for calls that go straight to it.
    fn shim(&self, ns: &Namespace, id: &str) -> Result<Arc<dyn TaskClient>, Status> {
        let task = self
            .runtime
            .get(&task_key(ns, id)?)
            .map_err(runtime_status)?;
        task.shim().map_err(runtime_status)
    }
}

#[tonic::async_trait]
impl tasks_server::Tasks for TasksService {
    async fn create(&self, req: Request<CreateTaskRequest>) -> R<CreateTaskResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.checkpoint.is_some() {
            return Err(Status::unimplemented(format!(
                "restoring task {:?} from a checkpoint is not implemented in berthd",
                r.container_id
            )));
        }
        let (containers, n, id) = (self.containers.clone(), ns.clone(), r.container_id.clone());
        let c = blocking(move || containers.get(&n, &id)).await?;
        let spec = c.spec.ok_or_else(|| {
            Status::failed_precondition(format!("container {:?} has no runtime spec", c.id))
        })?;
        let runtime = if c.runtime_name.is_empty() {
            DEFAULT_RUNTIME.to_owned()
        } else {
            c.runtime_name
        };
        let task = self
            .runtime
            .create(CreateTask {
                key: task_key(&ns, &r.container_id)?,
                runtime,
                runtime_path: (!r.runtime_path.is_empty()).then(|| r.runtime_path.into()),
                runtime_options: c.runtime_options,
                task_options: r.options.map(any_in).filter(|a| !a.type_url.is_empty()),
                spec: spec.value,
                rootfs: r
                    .rootfs
                    .into_iter()
                    .map(|m| Mount {
                        kind: m.r#type,
                        source: m.source,
                        target: m.target,
                        options: m.options,
                    })
                    .collect(),
                stdio: Stdio {
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    terminal: r.terminal,
                },
            })
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(CreateTaskResponse {
            container_id: r.container_id,
            pid: task.pid,
        }))
    }

    async fn start(&self, req: Request<StartRequest>) -> R<StartResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let pid = self
            .shim(&ns, &r.container_id)?
            .start(&r.exec_id)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(StartResponse { pid }))
    }

    async fn delete(&self, req: Request<DeleteTaskRequest>) -> R<DeleteResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let exit = self
            .runtime
            .delete(&task_key(&ns, &r.container_id)?)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(exit_out(r.container_id, exit)))
    }

    async fn delete_process(&self, req: Request<DeleteProcessRequest>) -> R<DeleteResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "delete process needs an exec id; delete the task to remove its init process",
            ));
        }
        let exit = self
            .shim(&ns, &r.container_id)?
            .delete(&r.exec_id)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(exit_out(r.exec_id, exit)))
    }

    async fn get(&self, req: Request<GetRequest>) -> R<GetResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let task = self
            .runtime
            .get(&task_key(&ns, &r.container_id)?)
            .map_err(runtime_status)?;
        let state = task.state(&r.exec_id).await.map_err(runtime_status)?;
        Ok(Response::new(GetResponse {
            process: Some(process_out(state)),
        }))
    }

    async fn list(&self, req: Request<ListTasksRequest>) -> R<ListTasksResponse> {
        let ns = namespace(&req)?;
        let filters: Vec<String> = Some(req.get_ref().filter.clone())
            .filter(|f| !f.is_empty())
            .into_iter()
            .collect();
        let filter = Filter::parse_all(&filters).map_err(to_status)?;
        let mut tasks = Vec::new();
        for t in self.runtime.list(&ns) {
            let state = match t.state("").await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(task = %t.key, "state: {e}");
                    ProcessState::unknown(t.id(), t.pid)
                }
            };
            if filter.matches(&TaskFields {
                ns: ns.as_str(),
                state: &state,
            }) {
                tasks.push(process_out(state));
            }
        }
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<KillRequest>) -> R<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.shim(&ns, &r.container_id)?
            .kill(&r.exec_id, r.signal, r.all)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<ExecProcessRequest>) -> R<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        exec_id_valid(&r.exec_id)?;
        let spec = r.spec.map(any_in).ok_or_else(|| {
            Status::invalid_argument(format!("exec {:?} needs a process spec", r.exec_id))
        })?;
        let stdio = Stdio {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            terminal: r.terminal,
        };
        self.shim(&ns, &r.container_id)?
            .exec(&r.exec_id, &stdio, &spec)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, req: Request<ResizePtyRequest>) -> R<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.shim(&ns, &r.container_id)?
            .resize_pty(&r.exec_id, r.width, r.height)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<CloseIoRequest>) -> R<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        tracing::debug!(task = %r.container_id, exec = %r.exec_id, stdin = r.stdin, "close io");
        self.shim(&ns, &r.container_id)?
            .close_io(&r.exec_id, r.stdin)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<PauseTaskRequest>) -> R<()> {
        let ns = namespace(&req)?;
        let id = &req.get_ref().container_id;
        self.shim(&ns, id)?.pause().await.map_err(runtime_status)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<ResumeTaskRequest>) -> R<()> {
        let ns = namespace(&req)?;
        let id = &req.get_ref().container_id;
        self.shim(&ns, id)?.resume().await.map_err(runtime_status)?;
        Ok(Response::new(()))
    }

    async fn list_pids(&self, req: Request<ListPidsRequest>) -> R<ListPidsResponse> {
        let ns = namespace(&req)?;
        let id = &req.get_ref().container_id;
        let pids = self.shim(&ns, id)?.pids().await.map_err(runtime_status)?;
        Ok(Response::new(ListPidsResponse {
            processes: pids
                .into_iter()
                .map(|(pid, info)| ProcessInfo {
                    pid,
                    info: info.map(any_out),
                })
                .collect(),
        }))
    }

    async fn checkpoint(&self, req: Request<CheckpointTaskRequest>) -> R<CheckpointTaskResponse> {
        Err(Status::unimplemented(format!(
            "checkpoint of task {:?} is not implemented in berthd yet",
            req.get_ref().container_id
        )))
    }

    async fn update(&self, req: Request<UpdateTaskRequest>) -> R<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.shim(&ns, &r.container_id)?
            .update(r.resources.map(any_in).as_ref(), r.annotations)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(()))
    }

    async fn metrics(&self, req: Request<MetricsRequest>) -> R<MetricsResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters).map_err(to_status)?;
        let mut metrics = Vec::new();
        for t in self.runtime.list(&ns) {
            let Ok(shim) = t.shim() else { continue };
            let state = ProcessState::unknown(t.id(), t.pid);
            if !filter.matches(&TaskFields {
                ns: ns.as_str(),
                state: &state,
            }) {
                continue;
            }
            match shim.stats().await {
                Ok(data) => metrics.push(Metric {
                    timestamp: timestamp(Timestamp::now()),
                    id: t.id().to_owned(),
                    data: data.map(any_out),
                }),
                Err(e) => tracing::warn!(task = %t.key, "metrics: {e}"),
            }
        }
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> R<WaitResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let task = self
            .runtime
            .get(&task_key(&ns, &r.container_id)?)
            .map_err(runtime_status)?;
        let exit = task.wait(&r.exec_id).await.map_err(runtime_status)?;
        Ok(Response::new(WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
        }))
    }
}

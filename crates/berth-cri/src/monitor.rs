//! How CRI learns that containers ended: task exits and OOM kills from berth's event bus
//! (what shims forward and what berthd raises for dead shims), and, when berthd starts or
//! falls behind on events, a pass over every container that should be running.

use std::sync::Arc;

use berth_core::events::Event;
use berth_runtime::TaskStatus;
use tokio::sync::broadcast::error::RecvError;

use crate::containers::{state_of, task_status, CriContainers};
use crate::store::NAMESPACE;

/// Follows the event bus for as long as berthd runs.
pub async fn follow_exits(containers: Arc<CriContainers>) {
    let mut rx = containers.context().bus.subscribe();
    loop {
        match rx.recv().await {
            Ok(env) if env.namespace == NAMESPACE => match &env.event {
                Event::TaskExit {
                    container_id,
                    id,
                    exit_status,
                    exited_at,
                    ..
                } if container_id == id => {
                    let at = exited_at.map(|t| t.0).unwrap_or(0);
                    let (c, cid, status) = (containers.clone(), container_id.clone(), *exit_status);
                    // Off this loop: deleting the task waits for the shim.
                    tokio::spawn(async move { c.record_exit(&cid, Some((status, at))).await });
                }
                Event::TaskOom { container_id } => {
                    containers
                        .context()
                        .oom_killed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(container_id.clone());
                }
                _ => {}
            },
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("CRI fell {n} events behind; checking every container");
                reconcile(&containers).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Brings every started, unfinished container in line with its task: a running task gets
/// its log copied again, a stopped or vanished one is recorded as ended.
pub async fn reconcile(containers: &Arc<CriContainers>) {
    let all = match containers.all().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("list CRI containers: {e}");
            return;
        }
    };
    let ctx = containers.context().clone();
    for r in all {
        if state_of(&r) != k8s_cri::v1::ContainerState::ContainerRunning {
            continue;
        }
        match task_status(&ctx, &r.id).await {
            Some((TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing, _, _)) => {
                let has_log = ctx
                    .logs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&r.id);
                if !has_log {
                    if let Err(e) = containers.attach_logs(&r).await {
                        tracing::warn!(container = %r.id, "reattach log: {e}");
                    }
                }
            }
            Some((TaskStatus::Stopped, code, at)) => {
                containers.record_exit(&r.id, Some((code, at))).await;
            }
            // No task, or a shim that cannot say: the container's end was not seen.
            _ => containers.record_exit(&r.id, None).await,
        }
    }
}

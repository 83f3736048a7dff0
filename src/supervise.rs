//! The background tasks of `pulse serve`, supervised.
//!
//! Each task (health probe, key reload, fold, maintenance jobs, alert feed,
//! alert evaluator) runs until shutdown. One that ends before that, by
//! returning or by panicking, would leave the process serving without it:
//! stale health, keys never revoked, rollups never folded, alerts never
//! evaluated. Every task is essential, so the first one to end early is
//! logged, counted in `pulse_background_task_exits_total{task}`, and shuts
//! the process down with an error (exit code 1), so the supervisor of the
//! process (systemd, Docker, Kubernetes) restarts it whole.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::{Id, JoinSet};

use crate::telemetry::{TaskLabels, Telemetry};

/// Background tasks, each with a name for logs and metrics.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub task: &'static str,
    /// The panic message, or None when the task returned.
    pub panic: Option<String>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.panic {
            Some(message) => write!(f, "background task {} panicked: {message}", self.task),
            None => write!(f, "background task {} ended before shutdown", self.task),
        }
    }
}

impl Tasks {
    pub fn spawn(&mut self, task: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(work);
        self.names.insert(handle.id(), task);
    }

    /// Waits for the next task to end; pending forever when none is left.
    pub async fn next_exit(&mut self) -> Exit {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, panic) = match joined {
            Ok((id, ())) => (id, None),
            Err(error) => {
                let id = error.id();
                let message = if error.is_panic() {
                    let payload = error.into_panic();
                    payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".to_owned())
                } else {
                    "cancelled".to_owned()
                };
                (id, Some(message))
            }
        };
        let task = self.names.remove(&id).unwrap_or("unknown");
        Exit { task, panic }
    }

    /// Waits for the first task to end early, logs and counts it.
    pub async fn first_failure(&mut self, telemetry: &Arc<Telemetry>) -> Exit {
        let exit = self.next_exit().await;
        tracing::error!(
            task = exit.task,
            panic = exit.panic.as_deref(),
            "{exit}; shutting down"
        );
        telemetry
            .background_task_exits
            .get_or_create(&TaskLabels {
                task: exit.task.to_owned(),
            })
            .inc();
        exit
    }

    /// Waits for every remaining task (after shutdown was signalled);
    /// a panic met here is logged.
    pub async fn join_all(mut self) {
        while !self.set.is_empty() {
            let exit = self.next_exit().await;
            if exit.panic.is_some() {
                tracing::error!(task = exit.task, "{exit}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_reported_by_name_and_counted() {
        let telemetry = Telemetry::new();
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("fold", async { panic!("bitmap exploded") });
        let exit = tasks.first_failure(&telemetry).await;
        assert_eq!(exit.task, "fold");
        assert_eq!(exit.panic.as_deref(), Some("bitmap exploded"));
        tasks.spawn("keys", async {});
        let exit = tasks.first_failure(&telemetry).await;
        assert_eq!(
            exit,
            Exit {
                task: "keys",
                panic: None
            }
        );
        let text = telemetry.render();
        assert!(
            text.contains(r#"pulse_background_task_exits_total{task="fold"} 1"#),
            "{text}"
        );
    }
}

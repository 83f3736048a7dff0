//! Background jobs that run inside `pulse serve` until shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::db::{PgPool, connection, rollups};
use crate::telemetry::Metrics;

/// Folds rollup deltas every `interval`. Safe on every instance: a fold
/// that finds another instance folding skips its turn.
pub async fn fold_rollups(
    pool: PgPool,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        let started = Instant::now();
        let result = async {
            let mut conn = connection(&pool).await?;
            let outcome = rollups::fold(&mut conn).await?;
            if outcome.delta_rows > 0 {
                rollups::vacuum_deltas(&mut conn).await?;
            }
            Ok::<_, crate::error::Error>(outcome)
        }
        .await;
        match result {
            Ok(outcome) if outcome.ran => {
                metrics
                    .rollup_fold_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics.rollup_folded_rows.inc_by(outcome.delta_rows);
                if outcome.delta_rows > 0 {
                    tracing::debug!(
                        rows = outcome.delta_rows,
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "folded rollup deltas"
                    );
                }
            }
            Ok(_) => {}
            Err(error) => {
                metrics.rollup_fold_failures.inc();
                tracing::warn!(%error, "rollup fold failed; retrying next interval");
            }
        }
    }
}

//! Background jobs that run inside `pulse serve` until shutdown.
//!
//! * The rollup fold runs on every instance; a fold that finds another
//!   folding skips its turn (transaction-scoped advisory lock).
//! * The maintenance jobs (retention of raw events, `VACUUM (ANALYZE)`)
//!   run every interval on whichever instance takes the job's session-level
//!   advisory lock first; the others count the run as `skipped`. Each run
//!   logs what it did and is counted in `pulse_job_*` on `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use diesel_async::AsyncPgConnection;
use tokio_util::sync::CancellationToken;

use crate::config::MaintenanceSettings;
use crate::db::maintenance::{self, Deleted, RETENTION_LOCK, VACUUM_LOCK};
use crate::db::{PgPool, connection, rollups};
use crate::domain::metric::floor_to;
use crate::error::Result;
use crate::telemetry::{JobLabels, JobNameLabels, TableLabels, Telemetry};

/// Folds rollup deltas every `interval`. Safe on every instance: a fold
/// that finds another instance folding skips its turn.
pub async fn fold_rollups(
    pool: PgPool,
    telemetry: Arc<Telemetry>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // A fold moves at most `FOLD_BATCH` rows per delta table; when it moved
    // that many, more are waiting (a backlog): fold again at once.
    let mut backlog = false;
    let mut last_shrink = Instant::now();
    loop {
        if backlog {
            if shutdown.is_cancelled() {
                return;
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
        backlog = false;
        let started = Instant::now();
        let result = async {
            let mut conn = connection(&pool).await?;
            let outcome = rollups::fold(&mut conn).await?;
            if outcome.delta_rows > 0 {
                rollups::vacuum_deltas(&mut conn).await?;
            }
            // Once a backlog is gone, give its file space back (at most
            // every 30 s: the check is cheap, the shrink is rare).
            if outcome.ran && last_shrink.elapsed() > Duration::from_secs(30) {
                last_shrink = Instant::now();
                rollups::shrink_deltas(&mut conn).await?;
            }
            Ok::<_, crate::error::Error>(outcome)
        }
        .await;
        match result {
            Ok(outcome) if outcome.ran => {
                telemetry
                    .rollup_fold_duration
                    .observe(started.elapsed().as_secs_f64());
                telemetry.rollup_folded_rows.inc_by(outcome.delta_rows);
                backlog = outcome.delta_rows >= rollups::FOLD_BATCH as u64;
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
                telemetry.rollup_fold_failures.inc();
                tracing::warn!(%error, "rollup fold failed; retrying next interval");
            }
        }
    }
}

/// Schedules the maintenance jobs that `settings` turns on; returns when
/// `shutdown` is cancelled and every job has stopped.
pub async fn maintenance(
    database_url: String,
    settings: MaintenanceSettings,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    tokio::join!(
        retention(&database_url, &settings, &telemetry, &shutdown),
        vacuum(&database_url, &settings, &telemetry, &shutdown),
    );
    // With both jobs off the task still lives until shutdown: ending
    // earlier would read as a failure (`supervise`).
    shutdown.cancelled().await;
}

/// Deletes expired raw events every `retention_interval`, if retention is on.
async fn retention(
    database_url: &str,
    settings: &MaintenanceSettings,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) {
    if settings.retention_days == 0 || settings.retention_interval.is_zero() {
        return;
    }
    let keep = TimeDelta::days(i64::from(settings.retention_days));
    let batch = i64::from(settings.retention_batch.max(1));
    while wait(settings.retention_interval, shutdown).await {
        let started = Instant::now();
        let run = async {
            let Some(mut conn) = job_session(database_url, "retention", RETENTION_LOCK).await?
            else {
                return Ok(false);
            };
            retention_run(&mut conn, keep, batch, telemetry, shutdown).await?;
            Ok(true)
        };
        // Not raced with shutdown: the run stops itself after the current
        // batch (one short statement), so it can log what it did.
        record("retention", started, run.await, telemetry);
    }
}

/// `VACUUM (ANALYZE)` of the hot tables every `vacuum_interval`, unless 0.
async fn vacuum(
    database_url: &str,
    settings: &MaintenanceSettings,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) {
    if settings.vacuum_interval.is_zero() {
        return;
    }
    while wait(settings.vacuum_interval, shutdown).await {
        let started = Instant::now();
        let run = async {
            let Some(mut conn) = job_session(database_url, "vacuum", VACUUM_LOCK).await? else {
                return Ok(false);
            };
            maintenance::vacuum_hot_tables(&mut conn).await?;
            tracing::info!(
                job = "vacuum",
                ms = started.elapsed().as_secs_f64() * 1e3,
                "vacuumed and analyzed the hot tables"
            );
            Ok(true)
        };
        tokio::select! {
            result = run => record("vacuum", started, result, telemetry),
            () = shutdown.cancelled() => {
                tracing::info!(job = "vacuum", "VACUUM cut short by shutdown");
                return;
            }
        }
    }
}

/// Sleeps one interval; false at shutdown.
async fn wait(interval: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(interval) => true,
        () = shutdown.cancelled() => false,
    }
}

/// A session of its own holding the job's lock, or `None` when another
/// instance holds it. Dropping the session releases the lock, whatever
/// happened during the run.
async fn job_session(
    database_url: &str,
    job: &str,
    lock: i64,
) -> Result<Option<AsyncPgConnection>> {
    let mut conn = maintenance::open_job_session(database_url, job).await?;
    if maintenance::try_lock(&mut conn, lock).await? {
        Ok(Some(conn))
    } else {
        Ok(None)
    }
}

/// Records one run: its outcome, and for a run that did its work the
/// duration and the time of success.
fn record(job: &'static str, started: Instant, result: Result<bool>, telemetry: &Telemetry) {
    let outcome = match result {
        Ok(true) => {
            let name = JobNameLabels {
                job: job.to_owned(),
            };
            telemetry
                .job_duration
                .get_or_create(&name)
                .observe(started.elapsed().as_secs_f64());
            telemetry
                .job_last_success
                .get_or_create(&name)
                .set(Utc::now().timestamp());
            "ok"
        }
        Ok(false) => {
            tracing::debug!(job, "another instance runs this job now; skipped");
            "skipped"
        }
        Err(error) => {
            tracing::warn!(job, %error, "maintenance job failed; retrying next interval");
            "failed"
        }
    };
    telemetry
        .job_runs
        .get_or_create(&JobLabels {
            job: job.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Deletes raw events older than `keep` (whole minutes only, so every
/// minute keeps all its raw events or none) in batches of `batch` events,
/// one transaction each, pausing after each batch as long as it took, until
/// none is left or shutdown.
async fn retention_run(
    conn: &mut AsyncPgConnection,
    keep: TimeDelta,
    batch: i64,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> Result<()> {
    let started = Instant::now();
    let cutoff = floor_to(Utc::now() - keep, 60);
    let mut total = Deleted::default();
    let mut batches = 0u64;
    loop {
        let batch_started = Instant::now();
        let deleted = maintenance::delete_expired_batch(conn, cutoff, batch).await?;
        batches += 1;
        for (table, rows) in [
            ("events", deleted.events),
            ("pageviews", deleted.pageviews),
            ("purchases", deleted.purchases),
        ] {
            if rows > 0 {
                telemetry
                    .retention_deleted_rows
                    .get_or_create(&TableLabels {
                        table: table.to_owned(),
                    })
                    .inc_by(rows as u64);
            }
        }
        total += deleted;
        if deleted.events < batch || shutdown.is_cancelled() {
            break;
        }
        // Rest as long as the batch took: a backlog (retention just turned
        // on or shortened) is worked off at half speed, leaving the rest of
        // the database's time to ingest.
        tokio::select! {
            () = tokio::time::sleep(batch_started.elapsed()) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tracing::info!(
        job = "retention",
        %cutoff,
        events = total.events,
        pageviews = total.pageviews,
        purchases = total.purchases,
        batches,
        ms = started.elapsed().as_secs_f64() * 1e3,
        stopped_by_shutdown = shutdown.is_cancelled(),
        "deleted raw events older than the retention period"
    );
    Ok(())
}

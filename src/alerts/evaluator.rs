//! The evaluator loop: every `interval`, on exactly one instance, evaluate
//! every enabled rule and store the transitions.
//!
//! * **Leadership.** An instance evaluates only while it holds a
//!   session-level advisory lock on a connection of its own. PostgreSQL
//!   releases the lock when that session ends, at once when the process
//!   dies or shuts down, within seconds when its host vanishes (keepalives,
//!   `db::alerts::prepare_lock_session`); the other instances retry every
//!   tick, so one of them takes over within a tick of that. The leader
//!   pings its lock connection every tick and steps down when it fails.
//!   Correctness does not rest on the lock: transitions are
//!   compare-and-set writes (`db::alerts::apply_tick`), so even two
//!   overlapping evaluators cannot notify one transition twice.
//! * **A tick** reads the clock once, loads every rule and state in one
//!   snapshot (so rule changes are picked up within a tick), computes each
//!   distinct (metric, filter, window) once with GetMetrics' own query code,
//!   all of them in one batch in one read snapshot (`Engine::answer_batch`:
//!   a few live statements for a thousand rules; per-user rules use the
//!   user index), plans the transitions (`domain::alert::plan`) and
//!   applies them in one transaction. Nothing is kept between ticks but the
//!   last value seen per rule, so a new leader needs no warm-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::SharedClock;
use crate::db::{self, PgPool, connection};
use crate::domain::alert::{self, EvalKey, Evaluation, NotificationState, StateCounts};
use crate::error::{Error, Result};
use crate::query::Engine;
use crate::telemetry::{StateLabels, Telemetry};

/// Longest wait for the lock connection to answer before stepping down.
const LOCK_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the evaluator needs besides the pool.
#[derive(Clone, Debug)]
pub struct EvaluatorSettings {
    /// For the lock connection, which is not from the pool.
    pub database_url: String,
    /// Time between the starts of two ticks.
    pub interval: Duration,
    pub clock: SharedClock,
}

/// Runs until `shutdown`. Dropping the lock connection on return ends the
/// session, which releases the lock for another instance.
pub async fn run(
    settings: EvaluatorSettings,
    pool: PgPool,
    cache: Arc<Engine>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lock: Option<AsyncPgConnection> = None;
    let mut leader = false;
    let mut last_seen: HashMap<Uuid, (i64, Evaluation)> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        if !leader {
            leader = acquire(&settings.database_url, &mut lock).await;
            if !leader {
                continue;
            }
            tracing::info!("this instance now evaluates alert rules");
            telemetry.alert_evaluator_leader.set(1);
            last_seen.clear();
        } else if !still_held(&mut lock).await {
            tracing::warn!("alert evaluator lock connection lost; stepping down");
            leader = false;
            lock = None;
            step_down(&telemetry);
            continue;
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = tick(&pool, &cache, &settings.clock, &telemetry, &mut last_seen) => outcome,
            () = shutdown.cancelled() => break,
        };
        telemetry
            .alert_evaluation_duration
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = outcome {
            telemetry.alert_evaluation_failures.inc();
            tracing::warn!(%error, "alert evaluation tick failed; retrying next tick");
        }
    }
    step_down(&telemetry);
    drop(lock);
}

/// Takes the lock if it is free, opening the lock connection if needed.
async fn acquire(url: &str, lock: &mut Option<AsyncPgConnection>) -> bool {
    let attempt = async {
        if lock.is_none() {
            let mut conn = AsyncPgConnection::establish(url)
                .await
                .map_err(|e| Error::unavailable("cannot connect to PostgreSQL", e))?;
            db::alerts::prepare_lock_session(&mut conn).await?;
            *lock = Some(conn);
        }
        match lock.as_mut() {
            Some(conn) => db::alerts::try_lock_evaluator(conn).await,
            None => Ok(false),
        }
    };
    match tokio::time::timeout(LOCK_PING_TIMEOUT * 2, attempt).await {
        Ok(Ok(held)) => held,
        Ok(Err(error)) => {
            // The health probe reports an unreachable database; this is
            // retried every tick, so it is not worth a warning each time.
            tracing::debug!(%error, "cannot try the alert evaluator lock");
            *lock = None;
            false
        }
        Err(_) => {
            *lock = None;
            false
        }
    }
}

async fn still_held(lock: &mut Option<AsyncPgConnection>) -> bool {
    let Some(conn) = lock.as_mut() else {
        return false;
    };
    matches!(
        tokio::time::timeout(LOCK_PING_TIMEOUT, db::server::ping(conn)).await,
        Ok(Ok(()))
    )
}

fn step_down(telemetry: &Telemetry) {
    telemetry.alert_evaluator_leader.set(0);
    set_counts(telemetry, StateCounts::default());
}

fn set_counts(telemetry: &Telemetry, counts: StateCounts) {
    for (state, n) in [
        ("inactive", counts.inactive),
        ("pending", counts.pending),
        ("firing", counts.firing),
        ("disabled", counts.disabled),
    ] {
        telemetry
            .alert_rules
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .set(n as i64);
    }
}

/// One evaluation of every rule at the clock's current time.
async fn tick(
    pool: &PgPool,
    cache: &Engine,
    clock: &SharedClock,
    telemetry: &Telemetry,
    last_seen: &mut HashMap<Uuid, (i64, Evaluation)>,
) -> Result<()> {
    // The only clock read of the tick (see `clock.rs`).
    let now = clock.now();
    let (rules, states) = {
        let mut conn = connection(pool).await?;
        db::alerts::load_for_tick(&mut conn).await?
    };

    let mut groups: HashMap<EvalKey, Vec<Uuid>> = HashMap::new();
    for rule in rules.iter().filter(|r| r.spec.enabled) {
        groups.entry(rule.spec.key()).or_default().push(rule.id);
    }
    let results = evaluate_all(pool, cache, groups, now).await?;
    let mut values = HashMap::new();
    let mut failed = 0u64;
    let mut first_error = None;
    for (ids, result) in results {
        match result {
            Ok(evaluation) => values.extend(ids.into_iter().map(|id| (id, evaluation))),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    telemetry.alert_evaluations.inc_by(values.len() as u64);
    if let Some(error) = first_error {
        telemetry.alert_evaluation_failures.inc_by(failed);
        tracing::warn!(%error, queries = failed, "alert rules could not be evaluated; their state is kept this tick");
    }

    let plan = alert::plan(&rules, states, &values, last_seen, now);
    let revisions: HashMap<Uuid, i64> = rules.iter().map(|r| (r.id, r.revision)).collect();
    last_seen.retain(|id, _| revisions.contains_key(id));
    for (id, evaluation) in &values {
        if let Some(revision) = revisions.get(id) {
            last_seen.insert(*id, (*revision, *evaluation));
        }
    }

    let stored = {
        let mut conn = connection(pool).await?;
        db::alerts::apply_tick(&mut conn, &plan.writes).await?
    };
    for n in &stored {
        let state = match n.state {
            NotificationState::Firing => "firing",
            NotificationState::Resolved => "resolved",
        };
        telemetry
            .alert_notifications
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .inc();
        tracing::info!(
            notification_id = n.id,
            rule_id = %n.rule_id,
            rule = %n.rule_name,
            state,
            value = n.value,
            threshold = n.threshold,
            "alert notification stored"
        );
    }
    set_counts(telemetry, plan.counts);
    Ok(())
}

/// The value of each distinct (metric, filter, window) over its window
/// ending `now`, with the rules that share it. All of them in one batch, in
/// one read-only snapshot ([`Engine::answer_batch`]): their live parts are
/// read by a few statements, their buckets mostly from the cache.
async fn evaluate_all(
    pool: &PgPool,
    cache: &Engine,
    groups: HashMap<EvalKey, Vec<Uuid>>,
    now: DateTime<Utc>,
) -> Result<Vec<(Vec<Uuid>, Result<Evaluation>)>> {
    let mut results = Vec::with_capacity(groups.len());
    let mut batch = Vec::with_capacity(groups.len());
    let mut queries = Vec::with_capacity(groups.len());
    for (key, ids) in groups {
        match key.query(now) {
            Ok(query) => {
                batch.push((key, ids));
                queries.push(query);
            }
            Err(error) => results.push((ids, Err(error))),
        }
    }
    // One snapshot for the whole tick: every rule sees the same state, and
    // no bucket is read in another fold generation than the live parts. A
    // statement that fails aborts the snapshot: the rules not yet answered
    // fail with it and keep their state until the next tick.
    let answers = connection(pool)
        .await?
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run::<_, Error, _>(async |conn| Ok(cache.answer_batch(conn, &queries).await))
        .await?;
    for ((key, ids), answer) in batch.into_iter().zip(answers) {
        let evaluation = answer.map(|answer| {
            // An ungrouped TOTAL answer is one zero-filled series.
            let value = answer.series.first().map_or(0.0, |s| s.total);
            let (window_start, window_end) = key.window(now);
            Evaluation {
                value,
                window_start,
                window_end,
            }
        });
        results.push((ids, evaluation));
    }
    Ok(results)
}

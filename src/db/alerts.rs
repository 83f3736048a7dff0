//! Alert storage: rule CRUD, the evaluator's state rows and their
//! transitions, the notification log, and the evaluator's leader lock.
//!
//! Invariants this module keeps:
//! * **Notification ids are committed in id order.** Every insert into
//!   `alert_notifications` happens in [`apply_tick`], inside a transaction
//!   that first takes the transaction-scoped advisory lock
//!   [`NOTIFICATIONS_LOCK`]. Identity values are drawn after the lock and the
//!   lock is released only after the commit is visible, so a reader that has
//!   seen id N never later sees a new row below N. (Without the lock, two
//!   concurrent writers could commit ids 8 then 7, and a subscriber that
//!   had read up to 8 would skip 7.) Today one evaluator writes at a time
//!   (the leader lock), but the lock keeps this true even when a deposed
//!   leader's last tick overlaps the new leader's first.
//! * **A transition and its notifications commit together**, guarded by a
//!   compare-and-set on `alert_states.seq`: if another writer changed the
//!   row first, the write and its notifications are skipped, so no
//!   transition is ever notified twice.
//! * After each commit that stored notifications, `NOTIFY pulse_alerts`
//!   carries the highest new id; listeners read the rows from the table,
//!   so payload size never matters and a missed NOTIFY loses nothing.
//!
//! Diesel's DSL is used for everything but the advisory locks, LISTEN and
//! NOTIFY, which are constant SQL texts with bind parameters.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use uuid::Uuid;

use super::schema::{alert_notifications, alert_rules, alert_states};
use crate::domain::alert::{
    AlertRule, Comparison, Evaluation, NewNotification, Notification, NotificationState, Phase,
    RuleSpec, RuleState, StateWrite, StoredState,
};
use crate::domain::metric::{Filter, Metric};
use crate::error::{Error, Result};

/// The channel NOTIFY and LISTEN use; the payload is a notification id.
pub const CHANNEL: &str = "pulse_alerts";
/// Serialises notification inserts (see the module doc). Any constant
/// unique to Pulse; the fold lock of `db/rollups.rs` is `…6501`.
const NOTIFICATIONS_LOCK: i64 = 0x5075_6c73_6502;
/// Held for the whole session by the one evaluating instance.
const EVALUATOR_LOCK: i64 = 0x5075_6c73_6503;

/// Most rules one database holds: the evaluator computes every rule at
/// least once per tick. Checked before the insert, so concurrent creates may
/// overshoot it by a few.
pub const MAX_RULES: i64 = 10_000;

#[derive(Queryable, Selectable)]
#[diesel(table_name = alert_rules, check_for_backend(diesel::pg::Pg))]
struct RuleRow {
    rule_id: Uuid,
    name: String,
    metric: String,
    filter_event_types: Vec<Option<String>>,
    filter_page_url: Option<String>,
    filter_product_id: Option<String>,
    filter_user_id: Option<String>,
    window_seconds: i32,
    comparison: String,
    threshold: f64,
    for_seconds: i32,
    enabled: bool,
    revision: i64,
}

/// The columns a client sets.
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = alert_rules, treat_none_as_null = true)]
struct RuleValues<'a> {
    name: &'a str,
    metric: &'static str,
    filter_event_types: Vec<Option<&'a str>>,
    filter_page_url: Option<&'a str>,
    filter_product_id: Option<&'a str>,
    filter_user_id: Option<&'a str>,
    window_seconds: i32,
    comparison: &'static str,
    threshold: f64,
    for_seconds: i32,
    enabled: bool,
}

impl<'a> From<&'a RuleSpec> for RuleValues<'a> {
    fn from(spec: &'a RuleSpec) -> Self {
        Self {
            name: &spec.name,
            metric: spec.metric.as_str(),
            filter_event_types: spec
                .filter
                .event_types
                .iter()
                .map(|t| Some(t.as_str()))
                .collect(),
            filter_page_url: spec.filter.page_url.as_deref(),
            filter_product_id: spec.filter.product_id.as_deref(),
            filter_user_id: spec.filter.user_id.as_deref(),
            // Bounded by RuleSpec::parse far below i32::MAX.
            window_seconds: spec.window_seconds as i32,
            comparison: spec.comparison.as_str(),
            threshold: spec.threshold,
            for_seconds: spec.for_seconds as i32,
            enabled: spec.enabled,
        }
    }
}

impl TryFrom<RuleRow> for AlertRule {
    type Error = Error;

    fn try_from(row: RuleRow) -> Result<Self> {
        let seconds = |v: i32, what: &str| {
            u32::try_from(v)
                .map_err(|_| Error::Internal(format!("stored {what} {v} is negative").into()))
        };
        Ok(AlertRule {
            id: row.rule_id,
            revision: row.revision,
            spec: RuleSpec {
                name: row.name,
                metric: stored(Metric::parse(&row.metric), "metric", &row.metric)?,
                filter: Filter {
                    event_types: row.filter_event_types.into_iter().flatten().collect(),
                    page_url: row.filter_page_url,
                    product_id: row.filter_product_id,
                    user_id: row.filter_user_id,
                },
                window_seconds: seconds(row.window_seconds, "window_seconds")?,
                comparison: stored(
                    Comparison::parse(&row.comparison),
                    "comparison",
                    &row.comparison,
                )?,
                threshold: row.threshold,
                for_seconds: seconds(row.for_seconds, "for_seconds")?,
                enabled: row.enabled,
            },
        })
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = alert_states, check_for_backend(diesel::pg::Pg))]
struct StateRow {
    rule_id: Uuid,
    revision: i64,
    state: String,
    since: DateTime<Utc>,
    seq: i64,
    rule_name: String,
    threshold: f64,
    value: f64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
}

impl StateRow {
    fn new(state: &RuleState, seq: i64) -> Self {
        Self {
            rule_id: state.rule_id,
            revision: state.revision,
            state: state.phase.as_str().to_owned(),
            since: state.since,
            seq,
            rule_name: state.rule_name.clone(),
            threshold: state.threshold,
            value: state.last.value,
            window_start: state.last.window_start,
            window_end: state.last.window_end,
        }
    }
}

impl TryFrom<StateRow> for StoredState {
    type Error = Error;

    fn try_from(row: StateRow) -> Result<Self> {
        let phase = stored(Phase::parse(&row.state), "state", &row.state)?;
        Ok(StoredState {
            seq: row.seq,
            state: RuleState {
                rule_id: row.rule_id,
                revision: row.revision,
                phase,
                since: row.since,
                rule_name: row.rule_name,
                threshold: row.threshold,
                last: Evaluation {
                    value: row.value,
                    window_start: row.window_start,
                    window_end: row.window_end,
                },
            },
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = alert_notifications, check_for_backend(diesel::pg::Pg))]
struct NotificationRow {
    notification_id: i64,
    rule_id: Uuid,
    rule_name: String,
    state: String,
    value: f64,
    threshold: f64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    fired_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = alert_notifications)]
struct NewNotificationRow<'a> {
    rule_id: Uuid,
    rule_name: &'a str,
    state: &'static str,
    value: f64,
    threshold: f64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    fired_at: DateTime<Utc>,
}

impl TryFrom<NotificationRow> for Notification {
    type Error = Error;

    fn try_from(row: NotificationRow) -> Result<Self> {
        let state = stored(
            NotificationState::parse(&row.state),
            "notification state",
            &row.state,
        )?;
        Ok(Notification {
            id: row.notification_id,
            rule_id: row.rule_id,
            rule_name: row.rule_name,
            state,
            value: row.value,
            threshold: row.threshold,
            window_start: row.window_start,
            window_end: row.window_end,
            fired_at: row.fired_at,
        })
    }
}

/// A value read back from a `text` column the schema constrains to the
/// enum's names: anything else is a corrupt row.
fn stored<T>(parsed: Option<T>, what: &str, text: &str) -> Result<T> {
    parsed.ok_or_else(|| Error::Internal(format!("unknown stored {what} `{text}`").into()))
}

fn rule_not_found(id: Uuid) -> Error {
    Error::NotFound(format!("alert rule {id} does not exist"))
}

/// Stores a new rule under a fresh id. Refuses a rule beyond [`MAX_RULES`].
pub async fn create_rule(conn: &mut AsyncPgConnection, spec: &RuleSpec) -> Result<AlertRule> {
    let rules: i64 = alert_rules::table.count().get_result(conn).await?;
    if rules >= MAX_RULES {
        return Err(Error::ResourceExhausted(format!(
            "{rules} alert rules exist; the limit is {MAX_RULES}: delete some first"
        )));
    }
    let row: RuleRow = diesel::insert_into(alert_rules::table)
        .values((
            alert_rules::rule_id.eq(Uuid::now_v7()),
            RuleValues::from(spec),
        ))
        .returning(RuleRow::as_returning())
        .get_result(conn)
        .await?;
    row.try_into()
}

/// One rule, or `NotFound`.
pub async fn get_rule(conn: &mut AsyncPgConnection, id: Uuid) -> Result<AlertRule> {
    let row: Option<RuleRow> = alert_rules::table
        .find(id)
        .select(RuleRow::as_select())
        .first(conn)
        .await
        .optional()?;
    row.ok_or_else(|| rule_not_found(id))?.try_into()
}

/// Every rule, oldest first.
pub async fn list_rules(conn: &mut AsyncPgConnection) -> Result<Vec<AlertRule>> {
    let rows: Vec<RuleRow> = alert_rules::table
        .order(alert_rules::rule_id.asc())
        .select(RuleRow::as_select())
        .load(conn)
        .await?;
    rows.into_iter().map(AlertRule::try_from).collect()
}

/// Replaces a rule's definition. The revision is bumped only when the new
/// definition evaluates differently (a rename keeps the alert's state).
pub async fn update_rule(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    spec: &RuleSpec,
) -> Result<AlertRule> {
    conn.transaction::<_, Error, _>(async |conn| {
        let current: Option<RuleRow> = alert_rules::table
            .find(id)
            .select(RuleRow::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let current = AlertRule::try_from(current.ok_or_else(|| rule_not_found(id))?)?;
        let revision = if current.spec.evaluates_like(spec) {
            current.revision
        } else {
            current.revision + 1
        };
        let row: RuleRow = diesel::update(alert_rules::table.find(id))
            .set((
                RuleValues::from(spec),
                alert_rules::revision.eq(revision),
                alert_rules::updated_at.eq(diesel::dsl::now),
            ))
            .returning(RuleRow::as_returning())
            .get_result(conn)
            .await?;
        row.try_into()
    })
    .await
}

/// Deletes a rule, or `NotFound`. Its state row stays until the evaluator
/// has resolved a firing alert (see [`apply_tick`]).
pub async fn delete_rule(conn: &mut AsyncPgConnection, id: Uuid) -> Result<()> {
    let deleted = diesel::delete(alert_rules::table.find(id))
        .execute(conn)
        .await?;
    if deleted == 0 {
        return Err(rule_not_found(id));
    }
    Ok(())
}

/// Every rule and every state row, read in one snapshot.
pub async fn load_for_tick(
    conn: &mut AsyncPgConnection,
) -> Result<(Vec<AlertRule>, Vec<StoredState>)> {
    conn.build_transaction()
        .read_only()
        .repeatable_read()
        .run::<_, Error, _>(async |conn| {
            let rules = list_rules(conn).await?;
            let states: Vec<StateRow> = alert_states::table
                .select(StateRow::as_select())
                .load(conn)
                .await?;
            let states = states
                .into_iter()
                .map(StoredState::try_from)
                .collect::<Result<_>>()?;
            Ok((rules, states))
        })
        .await
}

/// Applies a tick's writes in one transaction and returns the stored
/// notifications, in id order. A write whose compare-and-set fails (another
/// evaluator got there first) is skipped with its notifications.
pub async fn apply_tick(
    conn: &mut AsyncPgConnection,
    writes: &[StateWrite],
) -> Result<Vec<Notification>> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    conn.transaction::<_, Error, _>(async |conn| {
        if writes.iter().any(|w| !w.notifications.is_empty()) {
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<BigInt, _>(NOTIFICATIONS_LOCK)
                .execute(conn)
                .await?;
        }
        let mut stored = Vec::new();
        for write in writes {
            let applied = match (write.expected_seq, &write.new) {
                (None, Some(state)) => {
                    diesel::insert_into(alert_states::table)
                        .values(StateRow::new(state, 1))
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await?
                }
                (Some(seq), Some(state)) => {
                    let row = StateRow::new(state, seq + 1);
                    diesel::update(
                        alert_states::table
                            .filter(alert_states::rule_id.eq(write.rule_id))
                            .filter(alert_states::seq.eq(seq)),
                    )
                    .set((
                        alert_states::revision.eq(row.revision),
                        alert_states::state.eq(row.state),
                        alert_states::since.eq(row.since),
                        alert_states::seq.eq(row.seq),
                        alert_states::rule_name.eq(row.rule_name),
                        alert_states::threshold.eq(row.threshold),
                        alert_states::value.eq(row.value),
                        alert_states::window_start.eq(row.window_start),
                        alert_states::window_end.eq(row.window_end),
                    ))
                    .execute(conn)
                    .await?
                }
                (Some(seq), None) => {
                    diesel::delete(
                        alert_states::table
                            .filter(alert_states::rule_id.eq(write.rule_id))
                            .filter(alert_states::seq.eq(seq)),
                    )
                    .execute(conn)
                    .await?
                }
                (None, None) => 0,
            };
            if applied != 1 {
                tracing::debug!(rule_id = %write.rule_id, "state changed under the evaluator; transition skipped");
                continue;
            }
            for n in &write.notifications {
                stored.push(insert_notification(conn, n).await?);
            }
        }
        if let Some(last) = stored.last() {
            diesel::sql_query("SELECT pg_notify($1, $2)")
                .bind::<Text, _>(CHANNEL)
                .bind::<Text, _>(last.id.to_string())
                .execute(conn)
                .await?;
        }
        Ok(stored)
    })
    .await
}

async fn insert_notification(
    conn: &mut AsyncPgConnection,
    n: &NewNotification,
) -> Result<Notification> {
    let row: NotificationRow = diesel::insert_into(alert_notifications::table)
        .values(NewNotificationRow {
            rule_id: n.rule_id,
            rule_name: &n.rule_name,
            state: n.state.as_str(),
            value: n.value,
            threshold: n.threshold,
            window_start: n.window_start,
            window_end: n.window_end,
            fired_at: n.fired_at,
        })
        .returning(NotificationRow::as_returning())
        .get_result(conn)
        .await?;
    row.try_into()
}

/// Up to `limit` stored notifications with an id above `after`, in id
/// order, only of `rule_ids` unless it is empty.
pub async fn notifications_after(
    conn: &mut AsyncPgConnection,
    after: i64,
    rule_ids: &[Uuid],
    limit: i64,
) -> Result<Vec<Notification>> {
    let mut query = alert_notifications::table
        .filter(alert_notifications::notification_id.gt(after))
        .order(alert_notifications::notification_id.asc())
        .limit(limit)
        .select(NotificationRow::as_select())
        .into_boxed();
    if !rule_ids.is_empty() {
        query = query.filter(alert_notifications::rule_id.eq_any(rule_ids));
    }
    let rows: Vec<NotificationRow> = query.load(conn).await?;
    rows.into_iter().map(Notification::try_from).collect()
}

/// The highest notification id stored, 0 when there is none.
pub async fn last_notification_id(conn: &mut AsyncPgConnection) -> Result<i64> {
    let max: Option<i64> = alert_notifications::table
        .select(diesel::dsl::max(alert_notifications::notification_id))
        .first(conn)
        .await?;
    Ok(max.unwrap_or(0))
}

/// Subscribes this connection to [`CHANNEL`].
pub async fn listen(conn: &mut AsyncPgConnection) -> Result<()> {
    // LISTEN takes an identifier, not a bind parameter; CHANNEL is a constant.
    conn.batch_execute("LISTEN pulse_alerts").await?;
    Ok(())
}

/// Tries to take the evaluator's session lock on this connection. It is
/// held until the connection closes, which PostgreSQL notices at once when
/// the process dies (and within the keepalive settings of
/// [`prepare_lock_session`] when its host does).
pub async fn try_lock_evaluator(conn: &mut AsyncPgConnection) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let row: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(EVALUATOR_LOCK)
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

/// Session settings of the evaluator's lock connection: a name operators
/// can find in `pg_stat_activity`, and server-side TCP keepalives so a lock
/// held by a vanished host is released within seconds.
pub async fn prepare_lock_session(conn: &mut AsyncPgConnection) -> Result<()> {
    conn.batch_execute(
        "SET application_name = 'pulse-alert-evaluator';
         SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3",
    )
    .await?;
    Ok(())
}

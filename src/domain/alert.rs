//! Alert rules, their state machine, and the plan of one evaluator tick.
//!
//! Pure: no I/O, no clock. Every function that depends on time takes `now`,
//! so tests (and the evaluator, which reads an injected clock once per tick)
//! decide what time it is.
//!
//! Invariants:
//! * a [`RuleSpec`] can always be evaluated cheaply: its window and
//!   `for_seconds` are bounded, its threshold is finite, and its metric and
//!   filter can match some event, and it is read from rollups or, for one
//!   user, through the per-user index (see [`RuleSpec::parse`]);
//! * a rule's state moves inactive → pending → firing → inactive, and only
//!   the moves into and out of firing notify, so the notifications of one
//!   rule alternate FIRING, RESOLVED, FIRING, … starting with FIRING — also
//!   across edits, disabling and deletion, which resolve a firing alert
//!   ([`plan`]).

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::metric::{Dimension, Filter, Granularity, Metric, MetricQuery, Source};
use crate::error::{Error, Result};

/// Longest rule name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;
/// Longest window: 31 days (day rollups keep any window cheap).
pub const MAX_WINDOW_SECONDS: u32 = 31 * 86_400;
/// Longest pending period: 7 days.
pub const MAX_FOR_SECONDS: u32 = 7 * 86_400;

named_enum! {
    /// How a value is compared with the threshold.
    pub enum Comparison {
        GreaterThan = "greater_than",
        GreaterOrEqual = "greater_or_equal",
        LessThan = "less_than",
        LessOrEqual = "less_or_equal",
    }
}

impl Comparison {
    /// Whether `value` meets the condition. A NaN value never does.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterThan => value > threshold,
            Comparison::GreaterOrEqual => value >= threshold,
            Comparison::LessThan => value < threshold,
            Comparison::LessOrEqual => value <= threshold,
        }
    }
}

/// A rule definition as a client sends it, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRule {
    pub name: String,
    pub metric: Metric,
    /// Already validated by [`Filter::new`] at the edge.
    pub filter: Filter,
    pub window_seconds: u32,
    pub comparison: Comparison,
    pub threshold: f64,
    pub for_seconds: u32,
    pub enabled: bool,
}

/// A validated rule definition (everything but the id). Build it with
/// [`RuleSpec::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    pub metric: Metric,
    pub filter: Filter,
    pub window_seconds: u32,
    pub comparison: Comparison,
    pub threshold: f64,
    pub for_seconds: u32,
    pub enabled: bool,
}

/// What rules evaluated together share: one metric query per key per tick.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EvalKey {
    pub metric: Metric,
    pub filter: Filter,
    pub window_seconds: u32,
}

impl EvalKey {
    /// The window `[now − window_seconds, now)`.
    pub fn window(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        (
            now - TimeDelta::seconds(i64::from(self.window_seconds)),
            now,
        )
    }

    /// The GetMetrics query of the window ending at `now`: one TOTAL bucket,
    /// so the value has exactly GetMetrics' semantics.
    pub fn query(&self, now: DateTime<Utc>) -> Result<MetricQuery> {
        let (start, end) = self.window(now);
        MetricQuery::new(
            self.metric,
            start,
            end,
            Granularity::Total,
            self.filter.clone(),
            Dimension::None,
            0,
        )
    }
}

impl RuleSpec {
    /// Validates a rule; the error names the wrong field (`rule.<field>`).
    pub fn parse(raw: RawRule) -> Result<Self> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        let name = raw.name.trim().to_owned();
        if name.is_empty() {
            return invalid("rule.name is required".into());
        }
        if name.len() > MAX_NAME_BYTES {
            return invalid(format!(
                "rule.name is {} bytes long; the limit is {MAX_NAME_BYTES}",
                name.len()
            ));
        }
        if name.contains('\0') {
            return invalid("rule.name holds a NUL character".into());
        }
        if raw.window_seconds == 0 || raw.window_seconds > MAX_WINDOW_SECONDS {
            return invalid(format!(
                "rule.window_seconds must be between 1 and {MAX_WINDOW_SECONDS} (31 days), not {}",
                raw.window_seconds
            ));
        }
        if raw.for_seconds > MAX_FOR_SECONDS {
            return invalid(format!(
                "rule.for_seconds must be at most {MAX_FOR_SECONDS} (7 days), not {}",
                raw.for_seconds
            ));
        }
        if !raw.threshold.is_finite() {
            return invalid(format!(
                "rule.threshold must be a finite number, not {}",
                raw.threshold
            ));
        }
        let spec = Self {
            name,
            metric: raw.metric,
            filter: raw.filter,
            window_seconds: raw.window_seconds,
            comparison: raw.comparison,
            threshold: raw.threshold,
            for_seconds: raw.for_seconds,
            enabled: raw.enabled,
        };
        // The query of an arbitrary instant tells what the rule would read.
        let probe = spec
            .key()
            .query(DateTime::UNIX_EPOCH + TimeDelta::days(365))?;
        match probe.source() {
            Source::Empty => invalid(format!(
                "rule.filter: {} matches no event that {:?} counts, so the rule could never change state",
                filter_field(&spec.filter, spec.metric),
                spec.metric
            )),
            _ => Ok(spec),
        }
    }

    /// What this rule is evaluated from.
    pub fn key(&self) -> EvalKey {
        EvalKey {
            metric: self.metric,
            filter: self.filter.clone(),
            window_seconds: self.window_seconds,
        }
    }

    /// True when `other` evaluates exactly like `self`: every field but the
    /// name. An update that changes any of them resets the rule's state.
    pub fn evaluates_like(&self, other: &RuleSpec) -> bool {
        self.metric == other.metric
            && self.filter == other.filter
            && self.window_seconds == other.window_seconds
            && self.comparison == other.comparison
            && self.threshold.to_bits() == other.threshold.to_bits()
            && self.for_seconds == other.for_seconds
            && self.enabled == other.enabled
    }

    /// Whether `value` meets the rule's condition.
    pub fn holds(&self, value: f64) -> bool {
        self.comparison.holds(value, self.threshold)
    }
}

/// The filter field that makes a rule match nothing, for the error message.
fn filter_field(filter: &Filter, metric: Metric) -> &'static str {
    match metric {
        _ if filter.page_url.is_some() && filter.product_id.is_some() => "page_url with product_id",
        Metric::Pageviews if filter.product_id.is_some() => "product_id",
        Metric::Purchases | Metric::Revenue | Metric::Quantity if filter.page_url.is_some() => {
            "page_url"
        }
        _ => "event_types",
    }
}

/// A stored rule: its id, the revision of its definition, the definition.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub id: Uuid,
    /// Bumped by every update that changes how the rule evaluates.
    pub revision: i64,
    pub spec: RuleSpec,
}

named_enum! {
    /// Where a rule is in its state machine.
    pub enum Phase {
        /// The condition does not hold (or the rule is disabled).
        Inactive = "inactive",
        /// The condition holds, for less than `for_seconds` so far.
        Pending = "pending",
        /// The condition has held for `for_seconds`; a FIRING was sent.
        Firing = "firing",
    }
}

/// One evaluation: the metric's value over `[window_start, window_end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub value: f64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
}

/// A rule's persisted state: enough to resume after a restart and to
/// resolve a firing alert whose rule was edited or deleted meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleState {
    pub rule_id: Uuid,
    /// The [`AlertRule::revision`] this state belongs to.
    pub revision: i64,
    pub phase: Phase,
    /// When the rule entered `phase`; for `Firing`, when it fired.
    pub since: DateTime<Utc>,
    pub rule_name: String,
    pub threshold: f64,
    /// The evaluation that caused the state.
    pub last: Evaluation,
}

/// What the state machine does with one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to write.
    None,
    /// Inactive → pending: the condition started to hold.
    Pending,
    /// Pending → inactive before `for_seconds` elapsed: no notification.
    Cleared,
    /// → firing: notify FIRING.
    Fired,
    /// Firing → inactive: notify RESOLVED.
    Resolved,
}

/// The state machine: where a rule in `phase` since `since` goes when its
/// condition `holds` at `now`. A clock that went backwards counts as no time
/// elapsed.
pub fn advance(
    phase: Phase,
    since: DateTime<Utc>,
    holds: bool,
    for_seconds: u32,
    now: DateTime<Utc>,
) -> Change {
    let held_long_enough = |from: DateTime<Utc>| {
        (now - from).max(TimeDelta::zero()) >= TimeDelta::seconds(i64::from(for_seconds))
    };
    match (phase, holds) {
        (Phase::Inactive, true) if for_seconds == 0 => Change::Fired,
        (Phase::Inactive, true) => Change::Pending,
        (Phase::Pending, true) if held_long_enough(since) => Change::Fired,
        (Phase::Pending, false) => Change::Cleared,
        (Phase::Firing, false) => Change::Resolved,
        _ => Change::None,
    }
}

named_enum! {
    /// FIRING or RESOLVED.
    pub enum NotificationState {
        Firing = "firing",
        Resolved = "resolved",
    }
}

/// A notification before storage gives it an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub rule_id: Uuid,
    pub rule_name: String,
    pub state: NotificationState,
    pub value: f64,
    pub threshold: f64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// When the alert started firing: the same in a FIRING and in the
    /// RESOLVED that ends it.
    pub fired_at: DateTime<Utc>,
}

/// A stored notification. `id` strictly increases in commit order.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub state: NotificationState,
    pub value: f64,
    pub threshold: f64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
}

/// A stored state and its version, for compare-and-set.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    pub state: RuleState,
    /// Incremented by every write of the row.
    pub seq: i64,
}

/// One write of a tick: replace the row at version `expected_seq` (insert
/// when `None`) with `new` (delete when `None`), and store `notifications`
/// only if that compare-and-set succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    pub rule_id: Uuid,
    pub expected_seq: Option<i64>,
    pub new: Option<RuleState>,
    pub notifications: Vec<NewNotification>,
}

/// How many rules end a tick in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub inactive: u64,
    pub pending: u64,
    pub firing: u64,
    pub disabled: u64,
}

/// What one tick writes, and the resulting counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickPlan {
    /// Sorted by rule id, so concurrent writers lock rows in one order.
    pub writes: Vec<StateWrite>,
    pub counts: StateCounts,
}

/// Plans one evaluator tick at `now`.
///
/// * `values` holds this tick's evaluation of each enabled rule; a rule
///   missing from it (its query failed) keeps its state: a failed query is
///   never read as "no events", which would fire every less-than rule.
/// * `last_seen` holds earlier evaluations by rule id (with the revision
///   they belong to): a RESOLVED caused by an edit, by disabling or by
///   deletion carries the last value seen, or the stored one.
///
/// Semantics decided here (and documented in docs/internals.md "Alerts"):
/// * a state of another revision (the rule was edited, enabled or
///   disabled) is reset: a firing alert is RESOLVED, a pending one cleared;
///   the rule then starts over from inactive in the same tick;
/// * a disabled rule is not evaluated and ends inactive;
/// * a deleted rule's state is removed, resolving a firing alert.
pub fn plan(
    rules: &[AlertRule],
    states: Vec<StoredState>,
    values: &HashMap<Uuid, Evaluation>,
    last_seen: &HashMap<Uuid, (i64, Evaluation)>,
    now: DateTime<Utc>,
) -> TickPlan {
    let mut states: HashMap<Uuid, StoredState> =
        states.into_iter().map(|s| (s.state.rule_id, s)).collect();
    let mut writes = Vec::new();
    let mut counts = StateCounts::default();

    for rule in rules {
        let stored = states.remove(&rule.id);
        let evaluation = values.get(&rule.id);
        if let Some(write) = plan_rule(rule, stored, evaluation, last_seen, now, &mut counts) {
            writes.push(write);
        }
    }

    // States left over belong to deleted rules.
    for (rule_id, stored) in states {
        let mut notifications = Vec::new();
        if stored.state.phase == Phase::Firing {
            let last = last_evaluation(&stored.state, last_seen);
            notifications.push(resolution(&stored.state, &stored.state.rule_name, last));
        }
        writes.push(StateWrite {
            rule_id,
            expected_seq: Some(stored.seq),
            new: None,
            notifications,
        });
    }
    writes.sort_by_key(|w| w.rule_id);
    TickPlan { writes, counts }
}

/// Plans one existing rule (see [`plan`]): counts the state it ends the
/// tick in, and returns the write, if any, that stores it.
fn plan_rule(
    rule: &AlertRule,
    stored: Option<StoredState>,
    evaluation: Option<&Evaluation>,
    last_seen: &HashMap<Uuid, (i64, Evaluation)>,
    now: DateTime<Utc>,
    counts: &mut StateCounts,
) -> Option<StateWrite> {
    let expected_seq = stored.as_ref().map(|s| s.seq);
    let mut step = RuleStep::start(rule, stored, last_seen, now);
    if rule.spec.enabled {
        if let Some(evaluation) = evaluation {
            step.evaluate(rule, evaluation, now);
        }
        counts.count(step.current.phase);
    } else {
        step.disable(rule, now);
        counts.disabled += 1;
    }
    // Every notification comes with a state change (`dirty`); an
    // inactive rule that never had a row needs none.
    let RuleStep {
        current,
        notifications,
        dirty,
    } = step;
    if dirty && !(expected_seq.is_none() && current.phase == Phase::Inactive) {
        Some(StateWrite {
            rule_id: rule.id,
            expected_seq,
            new: Some(current),
            notifications,
        })
    } else {
        None
    }
}

impl StateCounts {
    /// Counts one enabled rule in `phase`.
    fn count(&mut self, phase: Phase) {
        match phase {
            Phase::Inactive => self.inactive += 1,
            Phase::Pending => self.pending += 1,
            Phase::Firing => self.firing += 1,
        }
    }
}

/// One rule's way through a tick: the state it is in, the notifications
/// sent on the way there, and whether the state changed (`dirty`).
struct RuleStep {
    current: RuleState,
    notifications: Vec<NewNotification>,
    dirty: bool,
}

impl RuleStep {
    /// The state `rule` starts this tick from: its stored state, reset to
    /// inactive when it belongs to another revision (resolving a firing
    /// alert), or inactive when there is none.
    fn start(
        rule: &AlertRule,
        stored: Option<StoredState>,
        last_seen: &HashMap<Uuid, (i64, Evaluation)>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut notifications = Vec::new();
        let mut dirty = false;
        let current = match stored {
            Some(s) if s.state.revision == rule.revision => s.state,
            Some(s) => {
                dirty = true;
                if s.state.phase == Phase::Firing {
                    let last = last_evaluation(&s.state, last_seen);
                    notifications.push(resolution(&s.state, &rule.spec.name, last));
                }
                inactive(rule, s.state.last, now)
            }
            None => inactive(rule, empty_evaluation(now), now),
        };
        Self {
            current,
            notifications,
            dirty,
        }
    }

    /// A disabled rule is not evaluated and ends inactive.
    fn disable(&mut self, rule: &AlertRule, now: DateTime<Utc>) {
        if self.current.phase != Phase::Inactive {
            // Only reachable if a revision bump was missed; reset anyway.
            if self.current.phase == Phase::Firing {
                self.notifications.push(resolution(
                    &self.current,
                    &rule.spec.name,
                    self.current.last,
                ));
            }
            self.current = inactive(rule, self.current.last, now);
            self.dirty = true;
        }
    }

    /// Moves the state machine by this tick's `evaluation`, notifying a
    /// FIRING or a RESOLVED on the way.
    fn evaluate(&mut self, rule: &AlertRule, evaluation: &Evaluation, now: DateTime<Utc>) {
        let holds = rule.spec.holds(evaluation.value);
        let change = advance(
            self.current.phase,
            self.current.since,
            holds,
            rule.spec.for_seconds,
            now,
        );
        let phase = match change {
            Change::None => return,
            Change::Pending => Phase::Pending,
            Change::Fired => Phase::Firing,
            Change::Cleared | Change::Resolved => Phase::Inactive,
        };
        self.dirty = true;
        let next = RuleState {
            rule_id: rule.id,
            revision: rule.revision,
            phase,
            since: now,
            rule_name: rule.spec.name.clone(),
            threshold: rule.spec.threshold,
            last: *evaluation,
        };
        match change {
            Change::Fired => self.notifications.push(notification(
                &next,
                NotificationState::Firing,
                *evaluation,
                now,
            )),
            Change::Resolved => {
                self.notifications
                    .push(resolution(&self.current, &rule.spec.name, *evaluation));
            }
            _ => {}
        }
        self.current = next;
    }
}

fn inactive(rule: &AlertRule, last: Evaluation, now: DateTime<Utc>) -> RuleState {
    RuleState {
        rule_id: rule.id,
        revision: rule.revision,
        phase: Phase::Inactive,
        since: now,
        rule_name: rule.spec.name.clone(),
        threshold: rule.spec.threshold,
        last,
    }
}

fn empty_evaluation(now: DateTime<Utc>) -> Evaluation {
    Evaluation {
        value: 0.0,
        window_start: now,
        window_end: now,
    }
}

/// The freshest evaluation known for the revision `state` belongs to.
fn last_evaluation(state: &RuleState, last_seen: &HashMap<Uuid, (i64, Evaluation)>) -> Evaluation {
    match last_seen.get(&state.rule_id) {
        Some((revision, evaluation))
            if *revision == state.revision && evaluation.window_end >= state.last.window_end =>
        {
            *evaluation
        }
        _ => state.last,
    }
}

/// The RESOLVED that ends the alert `firing` (its threshold and fired_at).
fn resolution(firing: &RuleState, name: &str, evaluation: Evaluation) -> NewNotification {
    NewNotification {
        rule_name: name.to_owned(),
        ..notification(
            firing,
            NotificationState::Resolved,
            evaluation,
            firing.since,
        )
    }
}

fn notification(
    state: &RuleState,
    kind: NotificationState,
    evaluation: Evaluation,
    fired_at: DateTime<Utc>,
) -> NewNotification {
    NewNotification {
        rule_id: state.rule_id,
        rule_name: state.rule_name.clone(),
        state: kind,
        value: evaluation.value,
        threshold: state.threshold,
        window_start: evaluation.window_start,
        window_end: evaluation.window_end,
        fired_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap() + TimeDelta::seconds(s)
    }

    fn raw() -> RawRule {
        RawRule {
            name: "too many errors".into(),
            metric: Metric::Events,
            filter: Filter::default(),
            window_seconds: 60,
            comparison: Comparison::GreaterThan,
            threshold: 10.0,
            for_seconds: 0,
            enabled: true,
        }
    }

    fn rule(for_seconds: u32, comparison: Comparison) -> AlertRule {
        AlertRule {
            id: Uuid::from_u128(7),
            revision: 1,
            spec: RuleSpec::parse(RawRule {
                comparison,
                for_seconds,
                ..raw()
            })
            .unwrap(),
        }
    }

    fn eval(value: f64, now: DateTime<Utc>) -> Evaluation {
        Evaluation {
            value,
            window_start: now - TimeDelta::seconds(60),
            window_end: now,
        }
    }

    /// Runs `plan` for one rule over a sequence of (second, value) ticks,
    /// applying every write, and returns the notifications in order.
    fn run(rule: &AlertRule, ticks: &[(i64, f64)]) -> Vec<(i64, NotificationState)> {
        let mut stored: Option<StoredState> = None;
        let mut out = Vec::new();
        for &(s, value) in ticks {
            let now = t(s);
            let values = HashMap::from([(rule.id, eval(value, now))]);
            let p = plan(
                std::slice::from_ref(rule),
                stored.clone().into_iter().collect(),
                &values,
                &HashMap::new(),
                now,
            );
            for w in p.writes {
                assert_eq!(w.expected_seq, stored.as_ref().map(|s| s.seq));
                out.extend(w.notifications.iter().map(|n| (s, n.state)));
                stored = w.new.map(|state| StoredState {
                    state,
                    seq: stored.as_ref().map_or(1, |s| s.seq + 1),
                });
            }
        }
        out
    }

    #[test]
    fn every_comparison_fires_and_resolves_once() {
        use NotificationState::*;
        let cases = [
            (Comparison::GreaterThan, 11.0, 10.0),
            (Comparison::GreaterOrEqual, 10.0, 9.0),
            (Comparison::LessThan, 9.0, 10.0),
            (Comparison::LessOrEqual, 10.0, 11.0),
        ];
        for (comparison, on, off) in cases {
            let r = rule(0, comparison);
            let got = run(&r, &[(0, off), (1, on), (2, on), (3, off), (4, off)]);
            assert_eq!(got, vec![(1, Firing), (3, Resolved)], "{comparison:?}");
        }
    }

    #[test]
    fn pending_must_hold_for_seconds_and_clears_silently() {
        use NotificationState::*;
        let r = rule(30, Comparison::GreaterThan);
        // Holds from 0 to 20, drops: never fires.
        assert_eq!(
            run(&r, &[(0, 11.0), (20, 11.0), (25, 0.0), (40, 0.0)]),
            vec![]
        );
        // Holds from 0 through 30: fires at 30, not before.
        assert_eq!(
            run(
                &r,
                &[(0, 11.0), (29, 11.0), (30, 11.0), (31, 11.0), (32, 1.0)]
            ),
            vec![(30, Firing), (32, Resolved)]
        );
    }

    #[test]
    fn state_machine_edges() {
        let now = t(100);
        assert_eq!(advance(Phase::Inactive, now, false, 0, now), Change::None);
        assert_eq!(advance(Phase::Inactive, now, true, 5, now), Change::Pending);
        assert_eq!(advance(Phase::Pending, t(96), true, 5, now), Change::None);
        assert_eq!(advance(Phase::Pending, t(95), true, 5, now), Change::Fired);
        // A clock set back does not fire a pending rule early.
        assert_eq!(advance(Phase::Pending, t(200), true, 5, now), Change::None);
        assert_eq!(advance(Phase::Firing, t(0), true, 5, now), Change::None);
        assert_eq!(
            advance(Phase::Firing, t(0), false, 5, now),
            Change::Resolved
        );
        assert!(!Comparison::LessThan.holds(f64::NAN, 1.0));
    }

    #[test]
    fn edits_disabling_and_deletion_resolve_a_firing_alert() {
        let r = rule(0, Comparison::GreaterThan);
        let fired = StoredState {
            state: RuleState {
                rule_id: r.id,
                revision: 1,
                phase: Phase::Firing,
                since: t(0),
                rule_name: "old name".into(),
                threshold: 10.0,
                last: eval(50.0, t(0)),
            },
            seq: 3,
        };
        let seen = HashMap::from([(r.id, (1, eval(42.0, t(5))))]);

        // Disabled (revision bumped): RESOLVED with the last value seen, then inactive.
        let mut disabled = r.clone();
        disabled.revision = 2;
        disabled.spec.enabled = false;
        let p = plan(
            &[disabled],
            vec![fired.clone()],
            &HashMap::new(),
            &seen,
            t(6),
        );
        assert_eq!(p.counts.disabled, 1);
        let [w] = p.writes.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!(w.expected_seq, Some(3));
        assert_eq!(w.new.as_ref().unwrap().phase, Phase::Inactive);
        assert_eq!(w.new.as_ref().unwrap().revision, 2);
        let [n] = w.notifications.as_slice() else {
            panic!("{w:?}")
        };
        assert_eq!(n.state, NotificationState::Resolved);
        assert_eq!((n.value, n.fired_at, n.threshold), (42.0, t(0), 10.0));

        // Edited and still holding: RESOLVED then FIRING again, in that order.
        let mut edited = r.clone();
        edited.revision = 2;
        edited.spec.threshold = 20.0;
        let values = HashMap::from([(r.id, eval(50.0, t(6)))]);
        let p = plan(&[edited], vec![fired.clone()], &values, &seen, t(6));
        let states: Vec<_> = p.writes[0].notifications.iter().map(|n| n.state).collect();
        assert_eq!(
            states,
            vec![NotificationState::Resolved, NotificationState::Firing]
        );
        assert_eq!(p.writes[0].notifications[1].threshold, 20.0);

        // Deleted: RESOLVED under the stored name, and the row goes.
        let p = plan(
            &[],
            vec![fired.clone()],
            &HashMap::new(),
            &HashMap::new(),
            t(6),
        );
        let [w] = p.writes.as_slice() else {
            panic!("{p:?}")
        };
        assert!(w.new.is_none());
        assert_eq!(w.notifications[0].rule_name, "old name");
        assert_eq!(w.notifications[0].value, 50.0);

        // A rename alone keeps the state (same revision): nothing to write.
        let mut renamed = r.clone();
        renamed.spec.name = "new".into();
        let values = HashMap::from([(r.id, eval(50.0, t(6)))]);
        let p = plan(&[renamed], vec![fired], &values, &seen, t(6));
        assert!(p.writes.is_empty());
        assert_eq!(p.counts.firing, 1);
    }

    #[test]
    fn a_failed_evaluation_changes_nothing_and_quiet_rules_write_nothing() {
        let r = rule(0, Comparison::LessThan);
        let p = plan(
            std::slice::from_ref(&r),
            vec![],
            &HashMap::new(),
            &HashMap::new(),
            t(0),
        );
        assert!(p.writes.is_empty(), "no value, no change: {p:?}");
        let r = rule(0, Comparison::GreaterThan);
        let values = HashMap::from([(r.id, eval(0.0, t(0)))]);
        let p = plan(&[r], vec![], &values, &HashMap::new(), t(0));
        assert!(p.writes.is_empty());
        assert_eq!(p.counts.inactive, 1);
    }

    #[test]
    fn validation_names_the_wrong_field() {
        let bad = |raw: RawRule| RuleSpec::parse(raw).unwrap_err().to_string();
        assert!(
            bad(RawRule {
                name: " ".into(),
                ..raw()
            })
            .contains("rule.name")
        );
        assert!(
            bad(RawRule {
                name: "x".repeat(201),
                ..raw()
            })
            .contains("rule.name")
        );
        assert!(
            bad(RawRule {
                window_seconds: 0,
                ..raw()
            })
            .contains("rule.window_seconds")
        );
        assert!(
            bad(RawRule {
                window_seconds: MAX_WINDOW_SECONDS + 1,
                ..raw()
            })
            .contains("rule.window_seconds")
        );
        assert!(
            bad(RawRule {
                for_seconds: MAX_FOR_SECONDS + 1,
                ..raw()
            })
            .contains("rule.for_seconds")
        );
        assert!(
            bad(RawRule {
                threshold: f64::NAN,
                ..raw()
            })
            .contains("rule.threshold")
        );
        assert!(
            bad(RawRule {
                threshold: f64::INFINITY,
                ..raw()
            })
            .contains("rule.threshold")
        );
        let page = Filter {
            page_url: Some("/x".into()),
            ..Filter::default()
        };
        let e = bad(RawRule {
            metric: Metric::Revenue,
            filter: page.clone(),
            ..raw()
        });
        assert!(e.contains("rule.filter: page_url"), "{e}");
        let e = bad(RawRule {
            metric: Metric::Purchases,
            filter: Filter {
                event_types: vec!["click".into()],
                ..Filter::default()
            },
            ..raw()
        });
        assert!(e.contains("rule.filter: event_types"), "{e}");
        // Unique users of one page are served by its stored sets: allowed.
        assert!(
            RuleSpec::parse(RawRule {
                metric: Metric::UniqueUsers,
                filter: page,
                ..raw()
            })
            .is_ok()
        );
        // A per-user rule is served by the user index: allowed.
        let user = Filter {
            user_id: Some("ann".into()),
            ..Filter::default()
        };
        assert!(
            RuleSpec::parse(RawRule {
                metric: Metric::UniqueUsers,
                filter: user,
                ..raw()
            })
            .is_ok()
        );
        assert_eq!(RuleSpec::parse(raw()).unwrap().name, "too many errors");
    }

    #[test]
    fn only_evaluation_fields_count_as_an_edit() {
        let a = RuleSpec::parse(raw()).unwrap();
        let renamed = RuleSpec {
            name: "other".into(),
            ..a.clone()
        };
        assert!(a.evaluates_like(&renamed));
        let disabled = RuleSpec {
            enabled: false,
            ..a.clone()
        };
        assert!(!a.evaluates_like(&disabled));
    }
}

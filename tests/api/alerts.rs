//! AlertService: rules, the evaluator's state machine under a manual clock,
//! WatchAlerts replay/live/catch-up, several instances on one database, and
//! many subscribers.
//!
//! Time: every server here evaluates with a [`ManualClock`] every 20 ms;
//! a test sets the clock, then `settle`s: waits (bounded) until a whole tick
//! has run at that time. Events are ingested with explicit timestamps in the
//! clock's frame, so each window's content is known exactly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pulse::alerts::clock::ManualClock;
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::alert_service_client::AlertServiceClient;
use pulse::grpc::proto::*;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase};
use crate::ingest::{click, ingest, message, purchase};

/// The longest any bounded wait here lasts.
const WAIT: Duration = Duration::from_secs(15);

type Watch = tonic::Streaming<AlertNotification>;

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    base() + TimeDelta::seconds(seconds)
}

/// A server on `db` whose evaluator reads `clock` every 20 ms.
async fn spawn_on(
    db: TestDatabase,
    clock: &Arc<ManualClock>,
    adjust: impl FnOnce(&mut pulse::config::ServeSettings),
) -> TestApp {
    let clock = clock.clone();
    TestApp::spawn_on(db, move |s| {
        s.alert_interval = Duration::from_millis(20);
        s.alert_clock = clock.into();
        adjust(s);
    })
    .await
}

async fn spawn() -> (TestApp, Arc<ManualClock>) {
    let clock = ManualClock::new(base());
    let app = spawn_on(TestDatabase::migrated().await, &clock, |_| {}).await;
    (app, clock)
}

/// Another handle on `db` for a second server: dropping it leaves the
/// database alone (its name names no database), so only the original
/// drops it, at the end of the test.
fn alias(db: &TestDatabase) -> TestDatabase {
    TestDatabase {
        name: format!("{}_alias", db.name),
        url: db.url.clone(),
    }
}

/// Sets the clock and waits until a whole tick has run at that time.
async fn settle_at(clock: &ManualClock, t: DateTime<Utc>) {
    clock.set(t);
    tokio::time::timeout(WAIT, clock.settle())
        .await
        .expect("the evaluator ticks at the new time");
}

fn rule(name: &str, metric: Metric, comparison: Comparison, threshold: f64) -> AlertRule {
    AlertRule {
        id: String::new(),
        name: name.into(),
        metric: metric as i32,
        filter: None,
        window_seconds: 60,
        comparison: comparison as i32,
        threshold,
        for_seconds: 0,
        enabled: true,
    }
}

async fn create(app: &TestApp, rule: AlertRule) -> AlertRule {
    app.alerts()
        .create_alert_rule(CreateAlertRuleRequest { rule: Some(rule) })
        .await
        .expect("CreateAlertRule")
        .into_inner()
        .rule
        .expect("a rule")
}

async fn update(app: &TestApp, rule: AlertRule) -> AlertRule {
    app.alerts()
        .update_alert_rule(UpdateAlertRuleRequest { rule: Some(rule) })
        .await
        .expect("UpdateAlertRule")
        .into_inner()
        .rule
        .expect("a rule")
}

async fn watch_on(channel: Channel, after_id: u64, rule_ids: &[&str]) -> Watch {
    AlertServiceClient::new(channel)
        .watch_alerts(WatchAlertsRequest {
            rule_ids: rule_ids
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            after_id,
        })
        .await
        .expect("WatchAlerts")
        .into_inner()
}

async fn watch(app: &TestApp, after_id: u64) -> Watch {
    watch_on(app.channel.clone(), after_id, &[]).await
}

async fn next(stream: &mut Watch) -> AlertNotification {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a notification in time")
        .expect("the stream has no error")
        .expect("the stream is open")
}

async fn take(stream: &mut Watch, n: usize) -> Vec<AlertNotification> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(stream).await);
    }
    out
}

/// (rule name, state) of each notification, for compact assertions.
fn names(notifications: &[AlertNotification]) -> Vec<(String, AlertState)> {
    notifications
        .iter()
        .map(|n| (n.rule_name.clone(), n.state()))
        .collect()
}

fn assert_increasing(notifications: &[AlertNotification]) {
    for pair in notifications.windows(2) {
        assert!(pair[0].id < pair[1].id, "ids not increasing: {pair:?}");
    }
}

/// Every stored notification as (id, rule id, state), in id order.
async fn stored(db: &TestDatabase) -> Vec<(i64, Uuid, String)> {
    use pulse::db::schema::alert_notifications::dsl::*;
    let mut conn = db.connect().await;
    alert_notifications
        .select((notification_id, rule_id, state))
        .order(notification_id.asc())
        .load(&mut conn)
        .await
        .expect("read notifications")
}

/// The evaluator's stored state of a rule, if it has a row.
async fn state_of(db: &TestDatabase, id: &str) -> Option<String> {
    use pulse::db::schema::alert_states::dsl::*;
    let mut conn = db.connect().await;
    alert_states
        .filter(rule_id.eq(Uuid::parse_str(id).expect("uuid")))
        .select(state)
        .first(&mut conn)
        .await
        .optional()
        .expect("read state")
}

async fn clicks_at(app: &TestApp, n: usize, t: DateTime<Utc>) {
    let events = (0..n)
        .map(|_| {
            let mut e = click(Uuid::now_v7(), "u");
            e.timestamp = Some(to_timestamp(t));
            e
        })
        .collect();
    let response = ingest(app, vec![message(events)]).await.expect("ingest");
    assert_eq!(response.accepted, n as u64);
}

/// Polls `/metrics` until `line` (a whole series line) appears.
async fn wait_for_metric(app: &TestApp, line: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = app.http_get("/metrics").await;
        if body.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{line}` never appeared in /metrics:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn is_leader(app: &TestApp) -> bool {
    let (_, body) = app.http_get("/metrics").await;
    body.lines().any(|l| l == "pulse_alert_evaluator_leader 1")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_comparison_fires_and_resolves_once_per_crossing() {
    let (app, clock) = spawn().await;
    let mut feed = watch(&app, 0).await;
    for (name, comparison) in [
        ("gt", Comparison::GreaterThan),
        ("ge", Comparison::GreaterOrEqual),
        ("lt", Comparison::LessThan),
        ("le", Comparison::LessOrEqual),
    ] {
        create(&app, rule(name, Metric::Events, comparison, 2.0)).await;
    }
    use AlertState::{Firing as F, Resolved as R};
    let sorted = |mut v: Vec<(String, AlertState)>| {
        v.sort();
        v
    };

    // Silence: 0 events. Less-than rules fire with no events at all.
    settle_at(&clock, at(0)).await;
    let silence = take(&mut feed, 2).await;
    assert_eq!(
        sorted(names(&silence)),
        vec![("le".into(), F), ("lt".into(), F)]
    );
    let lt_fired = silence.iter().find(|n| n.rule_name == "lt").unwrap();
    assert_eq!(lt_fired.value, 0.0);
    assert_eq!(lt_fired.threshold, 2.0);
    assert_eq!(lt_fired.window_start, Some(to_timestamp(at(-60))));
    assert_eq!(lt_fired.window_end, Some(to_timestamp(at(0))));
    assert_eq!(lt_fired.fired_at, Some(to_timestamp(at(0))));

    // 2 events: exactly the threshold.
    clicks_at(&app, 2, at(5)).await;
    settle_at(&clock, at(10)).await;
    let two = take(&mut feed, 2).await;
    assert_eq!(
        sorted(names(&two)),
        vec![("ge".into(), F), ("lt".into(), R)]
    );
    let lt_resolved = two.iter().find(|n| n.rule_name == "lt").unwrap();
    assert_eq!(lt_resolved.value, 2.0);
    assert_eq!(
        lt_resolved.fired_at, lt_fired.fired_at,
        "RESOLVED names the firing it ends"
    );
    assert_eq!(lt_resolved.window_end, Some(to_timestamp(at(10))));

    // 3 events: above it.
    clicks_at(&app, 1, at(12)).await;
    settle_at(&clock, at(15)).await;
    let three = take(&mut feed, 2).await;
    assert_eq!(
        sorted(names(&three)),
        vec![("gt".into(), F), ("le".into(), R)]
    );
    assert_eq!(
        three.iter().find(|n| n.rule_name == "gt").unwrap().value,
        3.0
    );

    // The events leave the window: [20, 80) is empty again.
    settle_at(&clock, at(80)).await;
    let empty = take(&mut feed, 4).await;
    assert_eq!(
        sorted(names(&empty)),
        vec![
            ("ge".into(), R),
            ("gt".into(), R),
            ("le".into(), F),
            ("lt".into(), F)
        ]
    );

    // Nothing else was stored, and what was sent is what was stored.
    settle_at(&clock, at(81)).await;
    let all: Vec<_> = [silence, two, three, empty].concat();
    assert_increasing(&all);
    let rows = stored(&app.db).await;
    assert_eq!(
        rows.iter().map(|r| r.0 as u64).collect::<Vec<_>>(),
        all.iter().map(|n| n.id).collect::<Vec<_>>()
    );
    wait_for_metric(&app, "pulse_alert_notifications_total{state=\"firing\"} 6").await;
    wait_for_metric(&app, "pulse_alert_rules{state=\"firing\"} 2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_that_clears_before_for_seconds_never_fires() {
    let (app, clock) = spawn().await;
    let created = create(
        &app,
        AlertRule {
            for_seconds: 30,
            ..rule("busy", Metric::Events, Comparison::GreaterThan, 0.0)
        },
    )
    .await;
    clicks_at(&app, 1, at(1)).await;
    settle_at(&clock, at(2)).await;
    assert_eq!(
        state_of(&app.db, &created.id).await.as_deref(),
        Some("pending")
    );
    settle_at(&clock, at(20)).await;
    assert_eq!(
        state_of(&app.db, &created.id).await.as_deref(),
        Some("pending")
    );
    // The event leaves the 60 s window before 30 s of holding: cleared.
    settle_at(&clock, at(62)).await;
    assert_eq!(
        state_of(&app.db, &created.id).await.as_deref(),
        Some("inactive")
    );
    assert!(
        stored(&app.db).await.is_empty(),
        "a cleared pending rule notifies nothing"
    );

    // Held for the full 30 s: fires, once, at the end of them.
    clicks_at(&app, 1, at(100)).await;
    settle_at(&clock, at(101)).await;
    settle_at(&clock, at(130)).await;
    assert!(stored(&app.db).await.is_empty(), "29 s is not 30 s");
    settle_at(&clock, at(131)).await;
    let mut feed = watch(&app, 0).await;
    let fired = next(&mut feed).await;
    assert_eq!(fired.state(), AlertState::Firing);
    assert_eq!(fired.fired_at, Some(to_timestamp(at(131))));
    settle_at(&clock, at(140)).await;
    assert_eq!(stored(&app.db).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn less_than_fires_on_silence_and_a_restart_neither_refires_nor_forgets() {
    let db = TestDatabase::migrated().await;
    let clock = ManualClock::new(base());
    let app = spawn_on(alias(&db), &clock, |_| {}).await;
    let created = create(
        &app,
        AlertRule {
            window_seconds: 300,
            ..rule("no sales", Metric::Revenue, Comparison::LessThan, 10.0)
        },
    )
    .await;
    settle_at(&clock, at(0)).await;
    let mut feed = watch(&app, 0).await;
    let fired = next(&mut feed).await;
    assert_eq!((fired.state(), fired.value), (AlertState::Firing, 0.0));
    app.shutdown().await.expect("clean shutdown");

    // A new process on the same database: still firing, not again.
    let app = spawn_on(alias(&db), &clock, |_| {}).await;
    settle_at(&clock, at(1)).await;
    settle_at(&clock, at(2)).await;
    assert_eq!(stored(&app.db).await.len(), 1, "a restart re-fired");
    assert_eq!(
        state_of(&app.db, &created.id).await.as_deref(),
        Some("firing")
    );

    // And it resolves when sales come back.
    let mut sale = purchase(Uuid::now_v7(), "ann", "sku-1", 1, "25.00");
    sale.timestamp = Some(to_timestamp(at(3)));
    ingest(&app, vec![message(vec![sale])])
        .await
        .expect("ingest");
    settle_at(&clock, at(4)).await;
    let mut feed = watch(&app, fired.id).await;
    let resolved = next(&mut feed).await;
    assert_eq!(resolved.state(), AlertState::Resolved);
    assert_eq!(resolved.value, 25.0);
    assert_eq!(resolved.fired_at, fired.fired_at);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_a_firing_rule_resolves_it_and_disabled_rules_never_fire() {
    let (app, clock) = spawn().await;
    let quiet = create(
        &app,
        rule("quiet", Metric::Events, Comparison::LessThan, 5.0),
    )
    .await;
    let off = create(
        &app,
        AlertRule {
            enabled: false,
            ..rule("off", Metric::Events, Comparison::LessThan, 5.0)
        },
    )
    .await;
    settle_at(&clock, at(0)).await;
    let mut feed = watch(&app, 0).await;
    assert_eq!(
        names(&[next(&mut feed).await]),
        vec![("quiet".into(), AlertState::Firing)]
    );

    // Disabled while firing: the alert is resolved (subscribers never keep
    // a FIRING that nothing will end), carrying the last value evaluated.
    update(
        &app,
        AlertRule {
            enabled: false,
            ..quiet.clone()
        },
    )
    .await;
    settle_at(&clock, at(1)).await;
    let resolved = next(&mut feed).await;
    assert_eq!(
        (
            resolved.rule_name.as_str(),
            resolved.state(),
            resolved.value
        ),
        ("quiet", AlertState::Resolved, 0.0)
    );
    settle_at(&clock, at(2)).await;
    assert_eq!(stored(&app.db).await.len(), 2, "disabled rules stay silent");
    assert_eq!(state_of(&app.db, &off.id).await, None, "never evaluated");

    // Enabled again: evaluated from scratch, fires again. (The clock moves
    // first, so no tick at the old time sees the change.)
    clock.set(at(3));
    update(&app, quiet.clone()).await;
    settle_at(&clock, at(3)).await;
    let again = next(&mut feed).await;
    assert_eq!(
        (again.rule_name.as_str(), again.state()),
        ("quiet", AlertState::Firing)
    );
    assert_eq!(again.fired_at, Some(to_timestamp(at(3))));
    wait_for_metric(&app, "pulse_alert_rules{state=\"disabled\"} 1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_a_rule_resets_its_state_but_renaming_does_not() {
    let (app, clock) = spawn().await;
    let created = create(
        &app,
        rule("silence", Metric::Events, Comparison::LessThan, 1.0),
    )
    .await;
    settle_at(&clock, at(0)).await;
    let mut feed = watch(&app, 0).await;
    let first = next(&mut feed).await;
    assert_eq!(first.state(), AlertState::Firing);

    // A rename keeps the alert as it is.
    let renamed = update(
        &app,
        AlertRule {
            name: "total silence".into(),
            ..created.clone()
        },
    )
    .await;
    settle_at(&clock, at(1)).await;
    assert_eq!(stored(&app.db).await.len(), 1);

    // A new threshold ends the old alert and starts over: it still holds,
    // so it fires again under the new definition, in the same tick.
    clock.set(at(2));
    let edited = update(
        &app,
        AlertRule {
            threshold: 0.5,
            ..renamed.clone()
        },
    )
    .await;
    settle_at(&clock, at(2)).await;
    let [resolved, refired] =
        <[AlertNotification; 2]>::try_from(take(&mut feed, 2).await).expect("two notifications");
    assert_eq!(
        (resolved.state(), resolved.threshold, resolved.fired_at),
        (AlertState::Resolved, 1.0, first.fired_at)
    );
    assert_eq!(resolved.rule_name, "total silence");
    assert_eq!(
        (refired.state(), refired.threshold, refired.fired_at),
        (AlertState::Firing, 0.5, Some(to_timestamp(at(2))))
    );

    // Adding for_seconds resets to pending, not firing.
    clock.set(at(3));
    update(
        &app,
        AlertRule {
            for_seconds: 60,
            ..edited
        },
    )
    .await;
    settle_at(&clock, at(3)).await;
    assert_eq!(
        next(&mut feed).await.state(),
        AlertState::Resolved,
        "the reset ends the firing alert"
    );
    assert_eq!(
        state_of(&app.db, &created.id).await.as_deref(),
        Some("pending")
    );

    // Deleting a firing rule resolves it too.
    settle_at(&clock, at(63)).await;
    assert_eq!(next(&mut feed).await.state(), AlertState::Firing);
    app.alerts()
        .delete_alert_rule(DeleteAlertRuleRequest {
            id: created.id.clone(),
        })
        .await
        .expect("delete");
    settle_at(&clock, at(64)).await;
    let gone = next(&mut feed).await;
    assert_eq!(
        (gone.state(), gone.rule_id.as_str()),
        (AlertState::Resolved, created.id.as_str())
    );
    assert_eq!(state_of(&app.db, &created.id).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_validates_each_field_and_answers_not_found() {
    let (app, _clock) = spawn().await;
    let mut client = app.alerts();
    let good = rule(
        "checkout errors",
        Metric::Events,
        Comparison::GreaterThan,
        10.0,
    );
    let created = create(
        &app,
        AlertRule {
            filter: Some(Filter {
                event_types: vec!["purchase".into(), "click".into()],
                ..Filter::default()
            }),
            ..good.clone()
        },
    )
    .await;
    Uuid::parse_str(&created.id).expect("the id is a UUID");
    assert_eq!(
        created.filter.as_ref().unwrap().event_types,
        vec!["click", "purchase"],
        "filters are normalised"
    );
    let got = client
        .get_alert_rule(GetAlertRuleRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .rule;
    assert_eq!(got.as_ref(), Some(&created));
    let second = create(&app, good.clone()).await;
    let listed = client
        .list_alert_rules(ListAlertRulesRequest {})
        .await
        .expect("list")
        .into_inner()
        .rules;
    assert_eq!(
        listed,
        vec![created.clone(), second.clone()],
        "oldest first"
    );
    let updated = update(
        &app,
        AlertRule {
            threshold: 20.0,
            name: "renamed".into(),
            ..created.clone()
        },
    )
    .await;
    assert_eq!(
        (updated.threshold, updated.name.as_str()),
        (20.0, "renamed")
    );
    assert_eq!(updated.id, created.id);

    let invalid = |mutate: fn(&mut AlertRule), field: &'static str| (mutate, field);
    let cases = [
        invalid(|r| r.name.clear(), "rule.name"),
        invalid(|r| r.metric = 0, "rule.metric"),
        invalid(|r| r.metric = 99, "rule.metric"),
        invalid(|r| r.comparison = 0, "rule.comparison"),
        invalid(|r| r.window_seconds = 0, "rule.window_seconds"),
        invalid(|r| r.window_seconds = 40 * 86_400, "rule.window_seconds"),
        invalid(|r| r.for_seconds = 8 * 86_400, "rule.for_seconds"),
        invalid(|r| r.threshold = f64::NAN, "rule.threshold"),
        invalid(
            |r| {
                r.filter = Some(Filter {
                    event_types: vec!["Not A Type".into()],
                    ..Filter::default()
                });
            },
            "rule.filter.event_type",
        ),
        invalid(
            |r| {
                r.metric = Metric::Revenue as i32;
                r.filter = Some(Filter {
                    page_url: "/home".into(),
                    ..Filter::default()
                });
            },
            "rule.filter: page_url",
        ),
        invalid(
            |r| {
                r.metric = Metric::Purchases as i32;
                r.filter = Some(Filter {
                    event_types: vec!["click".into()],
                    product_id: "sku-1".into(),
                    ..Filter::default()
                });
            },
            "rule.filter",
        ),
        invalid(|r| r.id = Uuid::now_v7().to_string(), "rule.id"),
    ];
    for (mutate, field) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        let status = client
            .create_alert_rule(CreateAlertRuleRequest {
                rule: Some(bad.clone()),
            })
            .await
            .expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = client
        .create_alert_rule(CreateAlertRuleRequest { rule: None })
        .await
        .expect_err("no rule");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Update validates too, and needs an id.
    let status = client
        .update_alert_rule(UpdateAlertRuleRequest {
            rule: Some(AlertRule {
                window_seconds: 0,
                ..created.clone()
            }),
        })
        .await
        .expect_err("bad update");
    assert!(status.message().starts_with("rule.window_seconds"));
    let status = client
        .update_alert_rule(UpdateAlertRuleRequest {
            rule: Some(good.clone()),
        })
        .await
        .expect_err("no id");
    assert!(
        status.message().starts_with("rule.id is required"),
        "{}",
        status.message()
    );

    // Unknown and malformed ids.
    let unknown = Uuid::now_v7().to_string();
    let not_found = client
        .get_alert_rule(GetAlertRuleRequest {
            id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(not_found.code(), tonic::Code::NotFound);
    assert!(not_found.message().contains(&unknown));
    let status = client
        .update_alert_rule(UpdateAlertRuleRequest {
            rule: Some(AlertRule {
                id: unknown.clone(),
                ..good.clone()
            }),
        })
        .await
        .expect_err("update of an unknown rule");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .delete_alert_rule(DeleteAlertRuleRequest { id: unknown })
        .await
        .expect_err("delete of an unknown rule");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let malformed = client
        .get_alert_rule(GetAlertRuleRequest { id: "42".into() })
        .await
        .expect_err("malformed");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    assert!(malformed.message().starts_with("id `42` is not a UUID"));
    let status = client
        .watch_alerts(WatchAlertsRequest {
            rule_ids: vec!["nope".into()],
            after_id: 0,
        })
        .await
        .expect_err("bad watch");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("rule_ids[0]"));

    // Delete, then it is gone.
    client
        .delete_alert_rule(DeleteAlertRuleRequest {
            id: created.id.clone(),
        })
        .await
        .expect("delete");
    let status = client
        .get_alert_rule(GetAlertRuleRequest { id: created.id })
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

/// Moves the clock `flips` times between 10 s after the click of
/// [`flipping_rules`] (in their window: they fire) and 100 s after it (out
/// of it: they resolve), starting with the first if `first_on`. The clock
/// may go back: the evaluator only compares windows.
async fn flip(clock: &ManualClock, flips: usize, first_on: bool) {
    for i in 0..flips {
        let on = (i % 2 == 0) == first_on;
        settle_at(clock, if on { at(10) } else { at(100) }).await;
    }
}

/// `n` rules of one shape (a click in the last 10 s), named `r0`, `r1`, …
async fn flipping_rules(app: &TestApp, n: usize) -> Vec<AlertRule> {
    clicks_at(app, 1, at(5)).await;
    let mut rules = Vec::new();
    for i in 0..n {
        rules.push(
            create(
                app,
                AlertRule {
                    window_seconds: 10,
                    ..rule(
                        &format!("r{i}"),
                        Metric::Events,
                        Comparison::GreaterThan,
                        0.0,
                    )
                },
            )
            .await,
        );
    }
    rules
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_with_after_id_gets_exactly_the_missed_notifications_in_order() {
    let (app, clock) = spawn().await;
    let rules = flipping_rules(&app, 3).await;
    settle_at(&clock, at(100)).await;
    let mut feed = watch(&app, 0).await;
    flip(&clock, 2, true).await;
    let seen = take(&mut feed, 4).await;
    drop(feed);

    // Missed while disconnected: 4 flips of 3 rules.
    flip(&clock, 4, true).await;
    let mut feed = watch(&app, seen.last().unwrap().id).await;
    let replayed = take(&mut feed, 2 + 12).await;
    let rows = stored(&app.db).await;
    assert_eq!(rows.len(), 18);
    assert_eq!(
        replayed.iter().map(|n| n.id as i64).collect::<Vec<_>>(),
        rows[4..].iter().map(|r| r.0).collect::<Vec<_>>(),
        "exactly the missed ones, in order"
    );
    // Then live ones follow with no duplicate at the switch.
    flip(&clock, 1, true).await;
    let live = take(&mut feed, 3).await;
    assert_eq!(live[0].id as i64, stored(&app.db).await[18].0);
    assert!(live.iter().all(|n| n.state() == AlertState::Firing));
    assert_increasing(&[seen, replayed, live].concat());

    // A filtered watch replays only its rule.
    let mut one = watch_on(app.channel.clone(), 0, &[&rules[1].id]).await;
    let mine = take(&mut one, 7).await;
    assert!(mine.iter().all(|n| n.rule_id == rules[1].id));
    let states: Vec<_> = mine
        .iter()
        .map(pulse::grpc::proto::AlertNotification::state)
        .collect();
    use AlertState::{Firing as F, Resolved as R};
    assert_eq!(
        states,
        vec![F, R, F, R, F, R, F],
        "alternating, from FIRING"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_subscriber_is_caught_up_from_the_table_and_slows_nobody() {
    let clock = ManualClock::new(base());
    // A live feed of 4: any subscriber more than 4 behind is caught up.
    let app = spawn_on(TestDatabase::migrated().await, &clock, |s| {
        s.alert_feed_capacity = 4;
    })
    .await;
    const RULES: usize = 20;
    const FLIPS: usize = 30;
    flipping_rules(&app, RULES).await;
    settle_at(&clock, at(100)).await;

    // The slow subscriber's connection lets ~1 KiB through until it reads.
    let slow_channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .expect("connect");
    let mut slow = watch_on(slow_channel, 0, &[]).await;
    let mut fast = watch(&app, 0).await;

    let mut fast_seen = Vec::new();
    for i in 0..FLIPS {
        flip(&clock, 1, i % 2 == 0).await;
        // The fast subscriber gets each flip while the slow one reads nothing.
        fast_seen.extend(take(&mut fast, RULES).await);
        if i == FLIPS / 2 {
            // Ingestion is not held up either.
            clicks_at(&app, 100, at(1000)).await;
        }
    }
    assert_eq!(fast_seen.len(), RULES * FLIPS);
    assert_increasing(&fast_seen);
    wait_for_metric(&app, "pulse_alert_subscribers 2").await;
    let (_, body) = app.http_get("/metrics").await;
    let catchups: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("pulse_alert_subscriber_catchups_total "))
        .and_then(|v| v.parse().ok())
        .expect("catch-up counter");
    assert!(
        catchups > 0,
        "the slow subscriber never fell behind the feed:\n{body}"
    );

    // Now it reads: everything, in order, once.
    let slow_seen = take(&mut slow, RULES * FLIPS).await;
    assert_eq!(
        slow_seen.iter().map(|n| n.id).collect::<Vec<_>>(),
        fast_seen.iter().map(|n| n.id).collect::<Vec<_>>()
    );
    // Per rule the states alternate, starting with FIRING.
    let mut last: HashMap<String, AlertState> = HashMap::new();
    for n in &slow_seen {
        let expected = match last.get(&n.rule_id) {
            None | Some(AlertState::Resolved) => AlertState::Firing,
            _ => AlertState::Resolved,
        };
        assert_eq!(n.state(), expected, "{n:?}");
        last.insert(n.rule_id.clone(), n.state());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_notify_once_deliver_everywhere_and_fail_over() {
    let db = TestDatabase::migrated().await;
    let clock = ManualClock::new(base());
    let first = spawn_on(alias(&db), &clock, |_| {}).await;
    let second = spawn_on(alias(&db), &clock, |_| {}).await;
    // Exactly one of them evaluates.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (leader, follower) = loop {
        match (is_leader(&first).await, is_leader(&second).await) {
            (true, false) => break (first, second),
            (false, true) => break (second, first),
            (true, true) => panic!("two instances evaluate at once"),
            (false, false) => {
                assert!(tokio::time::Instant::now() < deadline, "nobody evaluates");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let rules = flipping_rules(&follower, 1).await;
    settle_at(&clock, at(100)).await;
    let mut on_follower = watch(&follower, 0).await;
    let mut on_leader = watch(&leader, 0).await;
    flip(&clock, 3, true).await;
    let got = take(&mut on_follower, 3).await;
    assert_eq!(
        got.iter()
            .map(pulse::grpc::proto::AlertNotification::state)
            .collect::<Vec<_>>(),
        vec![AlertState::Firing, AlertState::Resolved, AlertState::Firing]
    );
    assert_eq!(take(&mut on_leader, 3).await, got);
    settle_at(&clock, at(10)).await;
    assert_eq!(
        stored(&db).await.len(),
        3,
        "one notification per transition in total"
    );

    // The evaluating instance stops: the other takes over and notifies.
    leader.shutdown().await.expect("clean shutdown");
    wait_for_metric(&follower, "pulse_alert_evaluator_leader 1").await;
    settle_at(&clock, at(100)).await;
    let resolved = next(&mut on_follower).await;
    assert_eq!(
        (
            resolved.state(),
            resolved.rule_id.as_str(),
            resolved.fired_at
        ),
        (AlertState::Resolved, rules[0].id.as_str(), got[2].fired_at),
        "the new evaluator resumes the stored state"
    );
    assert!(resolved.id > got[2].id);
    assert_eq!(stored(&db).await.len(), 4);
    drop(follower);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_evaluating_process_moves_evaluation_to_the_other() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let db = TestDatabase::migrated().await;
    // Instance A: the real binary, on the system clock, started first.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--alert-interval",
            "100ms",
        ])
        .env("DATABASE_URL", &db.url)
        .env("PULSE_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pulse");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let http_addr: std::net::SocketAddr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            let record: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if record["message"] == "pulse serving" {
                return record["http_addr"]
                    .as_str()
                    .expect("http_addr")
                    .parse()
                    .expect("addr");
            }
        }
        panic!("pulse exited before serving");
    })
    .await
    .expect("pulse serves in time");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let deadline = tokio::time::Instant::now() + WAIT;
    while !crate::helpers::http_get(http_addr, "/metrics")
        .await
        .1
        .lines()
        .any(|l| l == "pulse_alert_evaluator_leader 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the process never evaluates"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Instance B, in this process: not evaluating, yet it delivers.
    let b = TestApp::spawn_on(alias(&db), |s| {
        s.alert_interval = Duration::from_millis(100);
    })
    .await;
    assert!(!is_leader(&b).await, "two evaluators");
    let mut feed = watch(&b, 0).await;
    create(
        &b,
        rule("silence", Metric::Events, Comparison::LessThan, 1.0),
    )
    .await;
    assert_eq!(next(&mut feed).await.state(), AlertState::Firing);

    // SIGKILL: no shutdown code runs; PostgreSQL drops the session's lock.
    child.start_kill().expect("kill");
    child.wait().await.expect("reaped");
    wait_for_metric(&b, "pulse_alert_evaluator_leader 1").await;
    let response = ingest(&b, vec![message(vec![click(Uuid::now_v7(), "u")])])
        .await
        .expect("ingest");
    assert_eq!(response.accepted, 1);
    let resolved = next(&mut feed).await;
    assert_eq!(resolved.state(), AlertState::Resolved);
    assert_eq!(
        stored(&db).await.len(),
        2,
        "one notification per transition"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_and_the_evaluator_recover_from_losing_their_connections() {
    let (app, clock) = spawn().await;
    flipping_rules(&app, 1).await;
    settle_at(&clock, at(100)).await;
    let mut feed = watch(&app, 0).await;
    let terminate = async |name: &str| {
        #[derive(QueryableByName)]
        struct Killed {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = app.db.connect().await;
        let killed: Killed = diesel::sql_query(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result(&mut conn)
        .await
        .expect("terminate");
        assert_eq!(killed.n, 1, "one {name} connection");
    };

    // The LISTEN connection dies: what is stored meanwhile is caught up.
    terminate("pulse-alert-feed").await;
    flip(&clock, 2, true).await;
    let got = take(&mut feed, 2).await;
    assert_eq!(
        got.iter()
            .map(pulse::grpc::proto::AlertNotification::state)
            .collect::<Vec<_>>(),
        vec![AlertState::Firing, AlertState::Resolved]
    );

    // The evaluator's lock connection dies: it steps down, takes the lock
    // again and goes on from the stored state.
    terminate("pulse-alert-evaluator").await;
    flip(&clock, 1, true).await;
    assert_eq!(next(&mut feed).await.state(), AlertState::Firing);
    assert_eq!(stored(&app.db).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_subscribers_all_get_the_notification_and_leave_nothing_behind() {
    let (app, clock) = spawn().await;
    flipping_rules(&app, 1).await;
    settle_at(&clock, at(100)).await;
    let rss_before = rss_kib();
    // 10 connections of 100 streams each.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(
            Endpoint::from_shared(format!("http://{}", app.grpc_addr))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect"),
        );
    }
    let mut streams: Vec<Watch> =
        futures::future::join_all((0..1000).map(|i| watch_on(channels[i % 10].clone(), 0, &[])))
            .await;
    wait_for_metric(&app, "pulse_alert_subscribers 1000").await;
    flip(&clock, 1, true).await;
    let received =
        futures::future::join_all(streams.iter_mut().map(|s| async move { next(s).await.id }))
            .await;
    let first = received[0];
    assert!(received.iter().all(|id| *id == first));
    eprintln!(
        "1,000 subscribers: test process RSS {} KiB before, {} KiB with them (client and server in one process)",
        rss_before,
        rss_kib()
    );
    drop(streams);
    // Gone clients free their subscriber tasks at once.
    wait_for_metric(&app, "pulse_alert_subscribers 0").await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_end_cleanly_at_shutdown() {
    let (mut app, _clock) = spawn().await;
    let mut feed = watch(&app, 0).await;
    app.begin_shutdown();
    let end = tokio::time::timeout(WAIT, feed.message())
        .await
        .expect("the stream ends before the grace period");
    assert!(matches!(end, Ok(None)), "ended with {end:?}");
    app.wait_stopped().await.expect("clean shutdown");
}

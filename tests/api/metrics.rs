//! QueryService: hand-computed answers, a property test against brute force,
//! concurrency, freshness, and the plans that dashboard queries use.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::helpers::TestApp;
use crate::ingest::{click, ingest, message, pageview, purchase};

fn at(day: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, h, m, s).unwrap()
}

fn stamped(mut e: Event, t: DateTime<Utc>) -> Event {
    e.timestamp = Some(to_timestamp(t));
    e
}

#[allow(clippy::too_many_arguments)]
fn request(
    metric: Metric,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    granularity: Granularity,
    filter: Option<Filter>,
    group_by: Dimension,
    limit: u32,
) -> GetMetricsRequest {
    GetMetricsRequest {
        metric: metric as i32,
        start: Some(to_timestamp(start)),
        end: Some(to_timestamp(end)),
        granularity: granularity as i32,
        filter,
        group_by: group_by as i32,
        limit,
    }
}

async fn get(app: &TestApp, request: GetMetricsRequest) -> GetMetricsResponse {
    app.query()
        .get_metrics(request)
        .await
        .expect("GetMetrics")
        .into_inner()
}

/// (group, [values], total) of an answer, for compact assertions.
fn shape(response: &GetMetricsResponse) -> Vec<(String, Vec<f64>, f64)> {
    response
        .series
        .iter()
        .map(|s| {
            (
                s.group.clone(),
                s.points.iter().map(|p| p.value).collect(),
                s.total,
            )
        })
        .collect()
}

async fn fold(app: &TestApp) {
    let mut conn = app.db.connect().await;
    pulse::db::rollups::fold(&mut conn).await.expect("fold");
}

/// A small day of traffic whose answers are computed by hand below.
async fn seed_fixed(app: &TestApp) {
    let events = vec![
        stamped(pageview(Uuid::now_v7(), "ann", "/home"), at(5, 10, 0, 0)),
        stamped(pageview(Uuid::now_v7(), "bob", "/home"), at(5, 10, 0, 30)),
        stamped(
            pageview(Uuid::now_v7(), "ann", "/pricing"),
            at(5, 10, 1, 59),
        ),
        stamped(click(Uuid::now_v7(), "ann"), at(5, 10, 2, 0)),
        stamped(click(Uuid::now_v7(), ""), at(5, 10, 2, 10)),
        stamped(
            purchase(Uuid::now_v7(), "bob", "sku-1", 2, "19.99"),
            at(5, 10, 2, 20),
        ),
        stamped(
            purchase(Uuid::now_v7(), "cy", "sku-2", 1, "5.01"),
            at(5, 11, 30, 0),
        ),
        stamped(
            purchase(Uuid::now_v7(), "ann", "sku-1", 3, "0.02"),
            at(5, 23, 59, 59),
        ),
        // Exactly at the end of the usual range: excluded.
        stamped(click(Uuid::now_v7(), "dan"), at(6, 0, 0, 0)),
    ];
    let response = ingest(app, vec![message(events)]).await.expect("seed");
    assert_eq!(response.accepted, 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_computed_answers_before_and_after_folding() {
    let app =
        TestApp::spawn_with(|s| s.rollup_interval = std::time::Duration::from_secs(3600)).await;
    seed_fixed(&app).await;
    for folded in [false, true] {
        if folded {
            fold(&app).await;
        }
        let day = (at(5, 0, 0, 0), at(6, 0, 0, 0));
        let r = get(
            &app,
            request(
                Metric::Events,
                day.0,
                day.1,
                Granularity::Total,
                None,
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![(String::new(), vec![8.0], 8.0)],
            "folded={folded}"
        );
        assert!(!r.approximate);

        // Minute buckets 10:00..10:04, zero-filled.
        let r = get(
            &app,
            request(
                Metric::Events,
                at(5, 10, 0, 0),
                at(5, 10, 4, 0),
                Granularity::Minute,
                None,
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![(String::new(), vec![2.0, 1.0, 3.0, 0.0], 6.0)],
            "folded={folded}"
        );
        let starts: Vec<i64> = r.series[0]
            .points
            .iter()
            .map(|p| p.bucket_start.unwrap().seconds)
            .collect();
        assert_eq!(
            starts,
            (0..4)
                .map(|i| at(5, 10, i, 0).timestamp())
                .collect::<Vec<_>>()
        );

        // Unaligned range: [10:00:15, 10:02:15) keeps bob's pageview, ann's two events, and the anonymous click.
        let r = get(
            &app,
            request(
                Metric::Events,
                at(5, 10, 0, 15),
                at(5, 10, 2, 15),
                Granularity::Minute,
                None,
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![(String::new(), vec![1.0, 1.0, 2.0], 4.0)],
            "folded={folded}"
        );

        let r = get(
            &app,
            request(
                Metric::Events,
                day.0,
                day.1,
                Granularity::Total,
                None,
                Dimension::EventType,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![
                ("pageview".into(), vec![3.0], 3.0),
                ("purchase".into(), vec![3.0], 3.0),
                ("click".into(), vec![2.0], 2.0),
            ],
            "folded={folded}"
        );

        let r = get(
            &app,
            request(
                Metric::Revenue,
                day.0,
                day.1,
                Granularity::Hour,
                None,
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        let values = &shape(&r)[0].1;
        assert_eq!(values.len(), 24);
        assert!(
            (values[10] - 19.99).abs() < 1e-9
                && (values[11] - 5.01).abs() < 1e-9
                && (values[23] - 0.02).abs() < 1e-9,
            "folded={folded} {values:?}"
        );
        assert!((r.series[0].total - 25.02).abs() < 1e-9);

        let r = get(
            &app,
            request(
                Metric::Quantity,
                day.0,
                day.1,
                Granularity::Total,
                None,
                Dimension::ProductId,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![
                ("sku-1".into(), vec![5.0], 5.0),
                ("sku-2".into(), vec![1.0], 1.0)
            ]
        );

        let r = get(
            &app,
            request(
                Metric::Pageviews,
                day.0,
                day.1,
                Granularity::Total,
                None,
                Dimension::PageUrl,
                1,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![("/home".into(), vec![2.0], 2.0)],
            "limit 1 keeps the top page"
        );

        let home = Filter {
            page_url: "/home".into(),
            ..Default::default()
        };
        let r = get(
            &app,
            request(
                Metric::Events,
                day.0,
                day.1,
                Granularity::Total,
                Some(home),
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        assert_eq!(shape(&r), vec![(String::new(), vec![2.0], 2.0)]);

        let sku1 = Filter {
            product_id: "sku-1".into(),
            ..Default::default()
        };
        let r = get(
            &app,
            request(
                Metric::Purchases,
                day.0,
                day.1,
                Granularity::Day,
                Some(sku1),
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        assert_eq!(shape(&r), vec![(String::new(), vec![2.0], 2.0)]);

        let clicks = Filter {
            event_types: vec!["click".into()],
            ..Default::default()
        };
        let r = get(
            &app,
            request(
                Metric::Revenue,
                day.0,
                day.1,
                Granularity::Total,
                Some(clicks.clone()),
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![(String::new(), vec![0.0], 0.0)],
            "clicks have no revenue"
        );

        // Unique users: ann, bob, cy (the anonymous click is nobody).
        let r = get(
            &app,
            request(
                Metric::UniqueUsers,
                day.0,
                day.1,
                Granularity::Hour,
                None,
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        let s = &shape(&r)[0];
        assert_eq!(
            (s.1[10], s.1[11], s.1[23], s.2),
            (2.0, 1.0, 1.0, 3.0),
            "folded={folded}"
        );
        assert!(!r.approximate);
        let r = get(
            &app,
            request(
                Metric::UniqueUsers,
                day.0,
                day.1,
                Granularity::Total,
                None,
                Dimension::EventType,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![
                ("purchase".into(), vec![3.0], 3.0),
                ("pageview".into(), vec![2.0], 2.0),
                ("click".into(), vec![1.0], 1.0),
            ]
        );
        let ann = Filter {
            user_id: "ann".into(),
            ..Default::default()
        };
        let r = get(
            &app,
            request(
                Metric::Events,
                day.0,
                day.1,
                Granularity::Total,
                Some(ann),
                Dimension::EventType,
                0,
            ),
        )
        .await;
        assert_eq!(
            shape(&r),
            vec![
                ("pageview".into(), vec![2.0], 2.0),
                ("click".into(), vec![1.0], 1.0),
                ("purchase".into(), vec![1.0], 1.0),
            ]
        );
    }
}

/// A range shorter than a minute that crosses a minute boundary has two
/// edges: each event lands in its own minute, before and after folding.
#[tokio::test(flavor = "multi_thread")]
async fn a_range_under_a_minute_across_a_boundary_puts_each_event_in_its_minute() {
    let app = TestApp::spawn().await;
    let t = at(5, 10, 0, 0);
    let events = [(-20, "u1"), (-5, "u2"), (10, "u1"), (40, "u3")]
        .map(|(s, user)| stamped(click(Uuid::new_v4(), user), t + TimeDelta::seconds(s)));
    ingest(&app, vec![message(events.to_vec())])
        .await
        .expect("ingest");
    let (start, end) = (t - TimeDelta::seconds(30), t + TimeDelta::seconds(30));
    for _ in 0..2 {
        for (metric, total) in [(Metric::Events, 3.0), (Metric::UniqueUsers, 2.0)] {
            let req = request(
                metric,
                start,
                end,
                Granularity::Minute,
                None,
                Dimension::Unspecified,
                0,
            );
            assert_eq!(
                shape(&get(&app, req).await),
                vec![(String::new(), vec![2.0, 1.0], total)],
                "{metric:?}"
            );
        }
        fold(&app).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn late_events_land_in_their_bucket_and_duplicates_never_count() {
    let app = TestApp::spawn().await;
    seed_fixed(&app).await;
    fold(&app).await;
    let late = stamped(click(Uuid::now_v7(), "eve"), at(5, 3, 0, 0));
    let dup_id = Uuid::now_v7();
    let first = stamped(click(dup_id, "eve"), at(5, 4, 0, 0));
    let again = stamped(click(dup_id, "eve"), at(5, 5, 0, 0));
    ingest(&app, vec![message(vec![late, first]), message(vec![again])])
        .await
        .expect("ok");
    let r = get(
        &app,
        request(
            Metric::Events,
            at(5, 0, 0, 0),
            at(6, 0, 0, 0),
            Granularity::Hour,
            None,
            Dimension::Unspecified,
            0,
        ),
    )
    .await;
    let values = &shape(&r)[0].1;
    assert_eq!((values[3], values[4], values[5]), (1.0, 1.0, 0.0));
    assert_eq!(r.series[0].total, 10.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_invalid_argument() {
    let app = TestApp::spawn().await;
    let (s, e) = (at(5, 0, 0, 0), at(6, 0, 0, 0));
    let cases = vec![
        (
            "reversed range",
            request(
                Metric::Events,
                e,
                s,
                Granularity::Hour,
                None,
                Dimension::Unspecified,
                0,
            ),
            "before end",
        ),
        (
            "empty range",
            request(
                Metric::Events,
                s,
                s,
                Granularity::Hour,
                None,
                Dimension::Unspecified,
                0,
            ),
            "before end",
        ),
        (
            "no metric",
            request(
                Metric::Unspecified,
                s,
                e,
                Granularity::Hour,
                None,
                Dimension::Unspecified,
                0,
            ),
            "metric is required",
        ),
        (
            "no granularity",
            request(
                Metric::Events,
                s,
                e,
                Granularity::Unspecified,
                None,
                Dimension::Unspecified,
                0,
            ),
            "granularity is required",
        ),
        (
            "too many buckets",
            request(
                Metric::Events,
                s - TimeDelta::days(30),
                e,
                Granularity::Minute,
                None,
                Dimension::Unspecified,
                0,
            ),
            "buckets",
        ),
        (
            "too many points",
            request(
                Metric::Events,
                s - TimeDelta::days(6),
                e,
                Granularity::Minute,
                None,
                Dimension::PageUrl,
                100,
            ),
            "points",
        ),
        (
            "huge limit",
            request(
                Metric::Events,
                s,
                e,
                Granularity::Total,
                None,
                Dimension::PageUrl,
                5000,
            ),
            "limit",
        ),
        (
            "bad type",
            request(
                Metric::Events,
                s,
                e,
                Granularity::Total,
                Some(Filter {
                    event_types: vec!["DROP TABLE".into()],
                    ..Default::default()
                }),
                Dimension::Unspecified,
                0,
            ),
            "event_type",
        ),
        (
            "unknown metric",
            GetMetricsRequest {
                metric: 99,
                ..request(
                    Metric::Events,
                    s,
                    e,
                    Granularity::Total,
                    None,
                    Dimension::Unspecified,
                    0,
                )
            },
            "not a known Metric",
        ),
        (
            "missing start",
            GetMetricsRequest {
                start: None,
                ..request(
                    Metric::Events,
                    s,
                    e,
                    Granularity::Total,
                    None,
                    Dimension::Unspecified,
                    0,
                )
            },
            "start is required",
        ),
    ];
    for (name, req, needle) in cases {
        let status = app.query().get_metrics(req).await.expect_err(name);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(
            status.message().contains(needle),
            "{name}: {}",
            status.message()
        );
    }
}

/// One stored event, as the brute force sees it.
#[derive(Clone, Debug)]
struct Truth {
    ts: DateTime<Utc>,
    event_type: String,
    user: Option<String>,
    page: Option<String>,
    product: Option<String>,
    quantity: f64,
    amount: f64,
}

fn brute_force(events: &[Truth], req: &GetMetricsRequest) -> Vec<(String, Vec<f64>, f64)> {
    let start = pulse::grpc::convert::timestamp(req.start.as_ref().unwrap()).unwrap();
    let end = pulse::grpc::convert::timestamp(req.end.as_ref().unwrap()).unwrap();
    let width = match Granularity::try_from(req.granularity).unwrap() {
        Granularity::Minute => Some(60),
        Granularity::Hour => Some(3600),
        Granularity::Day => Some(86400),
        _ => None,
    };
    let first = width.map_or(start.timestamp(), |w| start.timestamp().div_euclid(w) * w);
    let buckets = width.map_or(1, |w| {
        ((end.timestamp() + i64::from(end.timestamp_subsec_nanos() > 0) - first + w - 1) / w)
            as usize
    });
    let filter = req.filter.clone().unwrap_or_default();
    let metric = Metric::try_from(req.metric).unwrap();
    let dim = Dimension::try_from(req.group_by).unwrap();
    let mut sums: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut sets: BTreeMap<String, (Vec<BTreeSet<String>>, BTreeSet<String>)> = BTreeMap::new();
    for e in events {
        if e.ts < start || e.ts >= end {
            continue;
        }
        if !filter.event_types.is_empty() && !filter.event_types.contains(&e.event_type) {
            continue;
        }
        if !filter.page_url.is_empty() && e.page.as_deref() != Some(&filter.page_url) {
            continue;
        }
        if !filter.product_id.is_empty() && e.product.as_deref() != Some(&filter.product_id) {
            continue;
        }
        if !filter.user_id.is_empty() && e.user.as_deref() != Some(&filter.user_id) {
            continue;
        }
        let group = match dim {
            Dimension::Unspecified => String::new(),
            Dimension::EventType => e.event_type.clone(),
            Dimension::PageUrl => match &e.page {
                Some(p) => p.clone(),
                None => continue,
            },
            Dimension::ProductId => match &e.product {
                Some(p) => p.clone(),
                None => continue,
            },
        };
        let i = width.map_or(0, |w| ((e.ts.timestamp() - first).div_euclid(w)) as usize);
        let value = match metric {
            Metric::Events => 1.0,
            Metric::Pageviews if e.page.is_some() => 1.0,
            Metric::Purchases if e.product.is_some() => 1.0,
            Metric::Revenue => e.amount,
            Metric::Quantity => e.quantity,
            Metric::UniqueUsers => {
                if let Some(u) = &e.user {
                    let cell = sets
                        .entry(group)
                        .or_insert_with(|| (vec![BTreeSet::new(); buckets], BTreeSet::new()));
                    cell.0[i].insert(u.clone());
                    cell.1.insert(u.clone());
                }
                continue;
            }
            _ => 0.0,
        };
        if value != 0.0 || matches!(metric, Metric::Events) {
            sums.entry(group).or_insert_with(|| vec![0.0; buckets])[i] += value;
        }
    }
    let mut out: Vec<(String, Vec<f64>, f64)> = if metric == Metric::UniqueUsers {
        sets.into_iter()
            .map(|(g, (b, t))| {
                (
                    g,
                    b.iter().map(|s| s.len() as f64).collect(),
                    t.len() as f64,
                )
            })
            .collect()
    } else {
        sums.into_iter()
            .map(|(g, v)| {
                let t = v.iter().sum();
                (g, v, t)
            })
            .collect()
    };
    if dim == Dimension::Unspecified {
        return vec![
            out.pop()
                .unwrap_or_else(|| (String::new(), vec![0.0; buckets], 0.0)),
        ];
    }
    out.retain(|s| s.2 != 0.0);
    out.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    out.truncate(if req.limit == 0 {
        10
    } else {
        req.limit as usize
    });
    out
}

fn close(a: &[(String, Vec<f64>, f64)], b: &[(String, Vec<f64>, f64)]) -> bool {
    let near = |x: f64, y: f64| (x - y).abs() <= 1e-6 * (1.0 + x.abs());
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.0 == y.0
                && near(x.2, y.2)
                && x.1.len() == y.1.len()
                && x.1.iter().zip(&y.1).all(|(p, q)| near(*p, *q))
        })
}

/// A random event at `ts` (any type of `types`; a page, a product and a
/// user or none) and what brute force knows of it.
fn random_event(rng: &mut StdRng, id: Uuid, ts: DateTime<Utc>, types: &[&str]) -> (Event, Truth) {
    let user = if rng.random_bool(0.15) {
        String::new()
    } else {
        format!("user-{}", rng.random_range(0..25))
    };
    let t = types[rng.random_range(0..types.len())];
    let (event, page, product, quantity, amount) = match t {
        "pageview" => {
            let page = format!("/page/{}", rng.random_range(0..8));
            (pageview(id, &user, &page), Some(page), None, 0.0, 0.0)
        }
        "purchase" => {
            let product = format!("sku-{}", rng.random_range(0..6));
            let q = rng.random_range(1..5);
            let cents = rng.random_range(1..100_000);
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            (
                purchase(id, &user, &product, q, &amount),
                None,
                Some(product),
                f64::from(q),
                f64::from(cents) / 100.0,
            )
        }
        other => (
            Event {
                event_type: other.into(),
                ..click(id, &user)
            },
            None,
            None,
            0.0,
            0.0,
        ),
    };
    let fact = Truth {
        ts,
        event_type: t.into(),
        user: (!user.is_empty()).then_some(user),
        page,
        product,
        quantity,
        amount,
    };
    (stamped(event, ts), fact)
}

/// A random request over `[base − 12 h, base + span + 12 h]`: any metric,
/// granularity, filter, grouping and limit.
fn random_request(
    rng: &mut StdRng,
    base: DateTime<Utc>,
    span: i64,
    types: &[&str],
) -> GetMetricsRequest {
    let metric = [
        Metric::Events,
        Metric::UniqueUsers,
        Metric::Pageviews,
        Metric::Purchases,
        Metric::Revenue,
        Metric::Quantity,
    ][rng.random_range(0..6)];
    let granularity = [
        Granularity::Minute,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Total,
    ][rng.random_range(0..4)];
    let max_len = if granularity == Granularity::Minute {
        6 * 3600
    } else {
        span + 86400
    };
    let start = base - TimeDelta::hours(12) + TimeDelta::seconds(rng.random_range(0..span + 43200));
    let start = if rng.random_bool(0.3) {
        start - TimeDelta::seconds(start.timestamp() % 3600)
    } else {
        start
    };
    let end = start + TimeDelta::seconds(rng.random_range(1..max_len));
    let mut filter = Filter::default();
    if rng.random_bool(0.3) {
        filter.event_types = types
            .iter()
            .filter(|_| rng.random_bool(0.5))
            .map(std::string::ToString::to_string)
            .collect();
    }
    if rng.random_bool(0.15) {
        filter.page_url = format!("/page/{}", rng.random_range(0..8));
    }
    if rng.random_bool(0.15) {
        filter.product_id = format!("sku-{}", rng.random_range(0..6));
    }
    if rng.random_bool(0.1) {
        filter.user_id = format!("user-{}", rng.random_range(0..25));
    }
    let group_by = [
        Dimension::Unspecified,
        Dimension::EventType,
        Dimension::PageUrl,
        Dimension::ProductId,
    ][rng.random_range(0..4)];
    let limit = rng.random_range(0..6);
    request(
        metric,
        start,
        end,
        granularity,
        Some(filter),
        group_by,
        limit,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn property_rollups_match_brute_force_over_random_events_and_requests() {
    let app =
        TestApp::spawn_with(|s| s.rollup_interval = std::time::Duration::from_secs(3600)).await;
    let seed: u64 = std::env::var("PULSE_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("property test seed: {seed} (rerun with PULSE_PROPTEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    // Three days that straddle the minute horizon of pages and products
    // (26 h before now): older minutes of those dimensions are answered
    // from raw events, newer ones from minute rollups; both are checked.
    let now = Utc::now();
    let base =
        DateTime::from_timestamp(now.timestamp() / 3600 * 3600, 0).unwrap() - TimeDelta::hours(50);
    let span = 3 * 86400;
    let types = [
        "pageview",
        "click",
        "purchase",
        "sign_up",
        "checkout.step-2",
    ];
    let mut truth: HashMap<Uuid, Truth> = HashMap::new();
    let mut sent: Vec<Uuid> = Vec::new();

    for round in 0..4 {
        let mut messages = Vec::new();
        for _ in 0..5 {
            let mut events = Vec::new();
            for _ in 0..60 {
                // Some resends of stored ids, with another timestamp and type.
                let id = if !sent.is_empty() && rng.random_bool(0.1) {
                    sent[rng.random_range(0..sent.len())]
                } else {
                    Uuid::new_v4()
                };
                let ts = base + TimeDelta::milliseconds(rng.random_range(0..span * 1000));
                let (event, fact) = random_event(&mut rng, id, ts, &types);
                events.push(event);
                if let std::collections::hash_map::Entry::Vacant(v) = truth.entry(id) {
                    // The first stored version is the truth; resends are duplicates.
                    v.insert(fact);
                    sent.push(id);
                }
            }
            messages.push(message(events));
        }
        ingest(&app, messages).await.expect("ingest");
        if round % 2 == 1 {
            fold(&app).await; // half the data in rollups, half in deltas
        }
    }
    let events: Vec<Truth> = truth.into_values().collect();

    for i in 0..150 {
        let req = random_request(&mut rng, base, span, &types);
        let got = shape(&get(&app, req.clone()).await);
        // The same request again is answered from the cache: same answer.
        let again = shape(&get(&app, req.clone()).await);
        assert_eq!(got, again, "cached answer differs for {req:?}");
        let want = brute_force(&events, &req);
        if !close(&got, &want) {
            let brief = |s: &[(String, Vec<f64>, f64)]| -> Vec<String> {
                s.iter()
                    .map(|(g, v, t)| {
                        let nonzero: Vec<String> = v
                            .iter()
                            .enumerate()
                            .filter(|(_, x)| **x != 0.0)
                            .map(|(i, x)| format!("{i}:{x}"))
                            .collect();
                        format!("{g:?} total={t} [{}]", nonzero.join(" "))
                    })
                    .collect()
            };
            panic!(
                "request #{i} (seed {seed}) {req:?}\n got  {:#?}\n want {:#?}",
                brief(&got),
                brief(&want)
            );
        }
    }

    // The alert evaluator's batch: many requests ending at one instant
    // (windows shared by several filters, nested, sub-minute and longer),
    // answered together by a fresh engine, cold and then from its cache.
    let end = base
        + TimeDelta::seconds(rng.random_range(7200..span))
        + TimeDelta::milliseconds(rng.random_range(0..1000));
    // Dense traffic around `end`, left pending: the batch's shared deltas
    // and end edge hold every value, each query must take only its own.
    let mut near = Vec::new();
    let mut events = events;
    for _ in 0..400 {
        let ts = end - TimeDelta::milliseconds(rng.random_range(-30_000..150_000));
        let (event, fact) = random_event(&mut rng, Uuid::new_v4(), ts, &types);
        near.push(event);
        events.push(fact);
    }
    ingest(&app, vec![message(near)]).await.expect("ingest");
    let requests: Vec<GetMetricsRequest> = (0..80)
        .map(|_| {
            let mut req = random_request(&mut rng, base, span, &types);
            let longest = if req.granularity == Granularity::Minute as i32 {
                6 * 3600
            } else {
                30 * 3600
            };
            // Shared windows; windows a few seconds apart, whose start
            // edges nest in one minute; any window.
            let window = match rng.random_range(0..3) {
                0 => [30, 60, 90, 3600][rng.random_range(0..4)],
                1 => rng.random_range(120..180),
                _ => rng.random_range(1..longest),
            };
            req.end = Some(to_timestamp(end));
            req.start = Some(to_timestamp(end - TimeDelta::seconds(window)));
            req
        })
        .collect();
    let queries: Vec<_> = requests
        .iter()
        .map(|r| pulse::grpc::convert::metric_query(r.clone(), 1024).expect("a valid request"))
        .collect();
    let engine = pulse::query::Engine::new(32 << 20, 48 << 20);
    let mut conn = app.db.connect().await;
    for pass in ["cold", "cached"] {
        let answers = engine.answer_batch(&mut conn, &queries).await;
        for (req, answer) in requests.iter().zip(answers) {
            let got: Vec<(String, Vec<f64>, f64)> = answer
                .expect("a batch answer")
                .series
                .into_iter()
                .map(|s| (s.group, s.values, s.total))
                .collect();
            let want = brute_force(&events, req);
            assert!(
                close(&got, &want),
                "batch ({pass}, seed {seed}) {req:?}\n got  {got:?}\n want {want:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_on_the_same_buckets_count_exactly() {
    let app =
        TestApp::spawn_with(|s| s.rollup_interval = std::time::Duration::from_millis(50)).await;
    let minute = at(7, 12, 0, 0);
    let streams: Vec<_> = (0..6)
        .map(|s| {
            (0..10)
                .map(|_| {
                    message(
                        (0..50)
                            .map(|i| {
                                stamped(
                                    purchase(
                                        Uuid::now_v7(),
                                        &format!("u{}", (s + i) % 7),
                                        "sku-hot",
                                        1,
                                        "1.50",
                                    ),
                                    minute + TimeDelta::seconds(i % 60),
                                )
                            })
                            .collect(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let results = futures::future::join_all(streams.into_iter().map(|m| ingest(&app, m))).await;
    for r in results {
        assert_eq!(r.expect("stream").accepted, 500);
    }
    // Whatever the folder did meanwhile, the answer is exact.
    let r = get(
        &app,
        request(
            Metric::Revenue,
            minute,
            minute + TimeDelta::minutes(1),
            Granularity::Minute,
            None,
            Dimension::ProductId,
            0,
        ),
    )
    .await;
    assert_eq!(shape(&r), vec![("sku-hot".into(), vec![4500.0], 4500.0)]);
    let r = get(
        &app,
        request(
            Metric::UniqueUsers,
            minute,
            minute + TimeDelta::minutes(1),
            Granularity::Total,
            None,
            Dimension::Unspecified,
            0,
        ),
    )
    .await;
    assert_eq!(shape(&r)[0].2, 7.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_event_is_counted_by_the_next_query() {
    let app = TestApp::spawn().await;
    let now = Utc::now();
    let range = (now - TimeDelta::hours(1), now + TimeDelta::minutes(1));
    for n in 1..=5 {
        ingest(&app, vec![message(vec![click(Uuid::now_v7(), "fresh")])])
            .await
            .expect("ok");
        let r = get(
            &app,
            request(
                Metric::Events,
                range.0,
                range.1,
                Granularity::Total,
                None,
                Dimension::Unspecified,
                0,
            ),
        )
        .await;
        assert_eq!(r.series[0].total, f64::from(n));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_queries_read_rollups_not_raw_events() {
    let app = TestApp::spawn().await;
    seed_fixed(&app).await;
    fold(&app).await;
    // The statement GetMetrics runs for "events per minute by type over 24 h"
    // (minute-aligned) touches no raw table; EXPLAIN shows the plan.
    let mut conn = app.db.connect().await;
    let plan = pulse::db::metrics::explain_bucket_read(&mut conn, at(4, 10, 0, 0), at(5, 10, 0, 0))
        .await
        .expect("explain");
    assert!(plan.contains("rollup_counts"), "{plan}");
    assert!(!plan.contains(" on events"), "{plan}");
    // The live part of an aligned request: pending deltas, and raw edges
    // that are empty ranges, so any scan of events is a never-executed
    // branch or finds nothing.
    let plan = pulse::db::metrics::explain_live_read(&mut conn, at(4, 10, 0, 0), at(5, 10, 0, 0))
        .await
        .expect("explain");
    assert!(plan.contains("rollup_count_deltas"), "{plan}");
    for line in plan
        .lines()
        .filter(|l| l.contains(" on events") || l.contains(" on pageviews"))
    {
        assert!(
            line.contains("never executed") || line.contains("rows=0"),
            "raw scan ran: {line}\n{plan}"
        );
    }
}

async fn cache_count(app: &TestApp, outcome: &str) -> u64 {
    let (_, body) = app.http_get("/metrics").await;
    let needle = format!("pulse_query_cache_lookups_total{{outcome=\"{outcome}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().expect("a counter"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_query_cache_is_never_stale() {
    let app =
        TestApp::spawn_with(|s| s.rollup_interval = std::time::Duration::from_secs(3600)).await;
    seed_fixed(&app).await;
    fold(&app).await;
    let day = request(
        Metric::Events,
        at(5, 0, 0, 0),
        at(6, 0, 0, 0),
        Granularity::Hour,
        None,
        Dimension::EventType,
        0,
    );
    let total = |r: &GetMetricsResponse| r.series.iter().map(|s| s.total).sum::<f64>();

    assert_eq!(total(&get(&app, day.clone()).await), 8.0);
    assert_eq!(
        (
            cache_count(&app, "miss").await,
            cache_count(&app, "hit").await
        ),
        (1, 0)
    );
    assert_eq!(total(&get(&app, day.clone()).await), 8.0);
    assert_eq!(
        cache_count(&app, "hit").await,
        1,
        "the second answer reuses the rollup part"
    );

    // A new event, not folded yet: the cached rollup part is still valid and
    // the live part carries the event.
    ingest(
        &app,
        vec![message(vec![stamped(
            click(Uuid::now_v7(), "zed"),
            at(5, 12, 0, 0),
        )])],
    )
    .await
    .unwrap();
    assert_eq!(total(&get(&app, day.clone()).await), 9.0);
    assert_eq!(cache_count(&app, "hit").await, 2);

    // After a fold the generation changes: the cache is bypassed, the answer stays exact.
    fold(&app).await;
    assert_eq!(total(&get(&app, day.clone()).await), 9.0);
    assert_eq!(cache_count(&app, "miss").await, 2);
    assert_eq!(total(&get(&app, day.clone()).await), 9.0);
    assert_eq!(cache_count(&app, "hit").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_recomputes_rollups_from_raw_events() {
    let app =
        TestApp::spawn_with(|s| s.rollup_interval = std::time::Duration::from_secs(3600)).await;
    seed_fixed(&app).await;
    fold(&app).await;
    // Rows written around Pulse (as `psql \copy` would) have no rollups yet.
    let mut conn = app.db.connect().await;
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        "INSERT INTO events (event_id, \"timestamp\", event_type_id)
         VALUES ('00000000-0000-4000-8000-000000000001', '2026-01-05 15:00:00+00', 2)",
    )
    .await
    .unwrap();
    let day = request(
        Metric::Events,
        at(5, 0, 0, 0),
        at(6, 0, 0, 0),
        Granularity::Total,
        None,
        Dimension::Unspecified,
        0,
    );
    assert_eq!(get(&app, day.clone()).await.series[0].total, 8.0);
    let mut days = Vec::new();
    let rows = pulse::db::rollups::rebuild(&mut conn, &mut |d, _| days.push(d))
        .await
        .expect("rebuild");
    assert!(rows > 0);
    assert_eq!(days.len(), 2, "5 and 6 January");
    assert_eq!(get(&app, day.clone()).await.series[0].total, 9.0);
    let users = request(
        Metric::UniqueUsers,
        at(5, 0, 0, 0),
        at(6, 0, 0, 0),
        Granularity::Total,
        None,
        Dimension::Unspecified,
        0,
    );
    assert_eq!(get(&app, users).await.series[0].total, 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_filter_reads_the_user_index() {
    let app = TestApp::spawn().await;
    seed_fixed(&app).await;
    let mut conn = app.db.connect().await;
    // Make the planner see a realistic table, not 9 rows.
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        "INSERT INTO users (external_id) SELECT 'bulk-' || g FROM generate_series(1, 2000) g;
         INSERT INTO events (event_id, \"timestamp\", user_id, event_type_id)
         SELECT gen_random_uuid(), timestamptz '2026-01-01' + g * interval '1 second', 5 + g % 2000, 2
         FROM generate_series(1, 200000) g;
         ANALYZE events;",
    )
    .await
    .unwrap();
    let q = pulse::domain::metric::MetricQuery::new(
        pulse::domain::metric::Metric::Events,
        at(5, 0, 0, 0),
        at(6, 0, 0, 0),
        pulse::domain::metric::Granularity::Hour,
        pulse::domain::metric::Filter {
            user_id: Some("ann".into()),
            ..Default::default()
        },
        pulse::domain::metric::Dimension::None,
        0,
    )
    .unwrap();
    let plan = pulse::db::metrics::explain_raw(&mut conn, &q)
        .await
        .expect("explain");
    assert!(plan.contains("events_user_id_timestamp"), "{plan}");
    assert!(!plan.contains("Seq Scan on events"), "{plan}");
}

/// 20,000 pages, one view each, spread over 20 hours, plus two hot pages.
async fn seed_wide_pages(app: &TestApp, day: DateTime<Utc>) {
    let mut events = Vec::new();
    for i in 0..20_000u32 {
        let t = day + TimeDelta::seconds(i64::from(i) * 3600 / 1000);
        events.push(stamped(
            pageview(Uuid::now_v7(), "u", &format!("/p/{i:05}")),
            t,
        ));
    }
    for (page, n) in [("/hot", 50), ("/warm", 30)] {
        for k in 0..n {
            events.push(stamped(
                pageview(Uuid::now_v7(), "u", page),
                day + TimeDelta::minutes(k),
            ));
        }
    }
    for chunk in events.chunks(5_000) {
        ingest(app, vec![message(chunk.to_vec())])
            .await
            .expect("seed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_memory_budget_is_refused_and_a_wide_top_10_fits_the_default() {
    let day = at(20, 0, 0, 0);
    let range = (day, day + TimeDelta::hours(24));
    let top_per_minute = || {
        request(
            Metric::Pageviews,
            range.0,
            range.1,
            Granularity::Minute,
            None,
            Dimension::PageUrl,
            10,
        )
    };

    let small = TestApp::spawn_with(|s| {
        s.rollup_interval = std::time::Duration::from_secs(3600);
        s.query_memory_bytes = 128 * 1024;
    })
    .await;
    seed_wide_pages(&small, day).await;
    fold(&small).await;
    let status = small
        .query()
        .get_metrics(top_per_minute())
        .await
        .expect_err("over the budget");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--query-memory-bytes"),
        "{}",
        status.message()
    );
    // A narrow question on the same server still answers.
    let hot = Filter {
        page_url: "/hot".into(),
        ..Filter::default()
    };
    let r = get(
        &small,
        request(
            Metric::Pageviews,
            range.0,
            range.1,
            Granularity::Total,
            Some(hot),
            Dimension::Unspecified,
            0,
        ),
    )
    .await;
    assert_eq!(r.series[0].total, 50.0);

    let default = TestApp::spawn_with(|s| {
        s.rollup_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    seed_wide_pages(&default, day).await;
    fold(&default).await;
    let r = get(&default, top_per_minute()).await;
    let groups: Vec<(&str, f64)> = r
        .series
        .iter()
        .map(|s| (s.group.as_str(), s.total))
        .collect();
    // The hot pages, then ties at 1 view broken by name.
    let mut expected = vec![("/hot", 50.0), ("/warm", 30.0)];
    let names: Vec<String> = (0..8).map(|i| format!("/p/{i:05}")).collect();
    expected.extend(names.iter().map(|n| (n.as_str(), 1.0)));
    assert_eq!(groups, expected);
    assert_eq!(r.series[0].points.len(), 1440);
    assert_eq!(r.series[0].points[0].value, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_table_left_large_by_a_backlog_is_shrunk_once_folded() {
    use diesel_async::RunQueryDsl;
    let app =
        TestApp::spawn_with(|s| s.rollup_interval = std::time::Duration::from_secs(3600)).await;
    let mut conn = app.db.connect().await;
    // A backlog: 400,000 pending set deltas (about 20 MB of heap).
    diesel::sql_query(
        "INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
         SELECT TIMESTAMPTZ '2026-01-05 00:00:00+00' + (i % 1000) * interval '1 minute', 0, 0, 1, i
         FROM generate_series(1, 400000) AS i",
    )
    .execute(&mut conn)
    .await
    .expect("backlog");
    let size = async |conn: &mut diesel_async::AsyncPgConnection| -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Size {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            bytes: i64,
        }
        let s: Size = diesel::sql_query("SELECT pg_relation_size('rollup_set_deltas') AS bytes")
            .get_result(conn)
            .await
            .expect("size");
        s.bytes
    };
    assert!(size(&mut conn).await > 16 << 20);
    // Still holding rows: nothing is shrunk (the rows would be copied).
    pulse::db::rollups::shrink_deltas(&mut conn)
        .await
        .expect("shrink");
    assert!(size(&mut conn).await > 16 << 20);
    while pulse::db::rollups::fold(&mut conn)
        .await
        .expect("fold")
        .delta_rows
        > 0
    {}
    pulse::db::rollups::shrink_deltas(&mut conn)
        .await
        .expect("shrink");
    assert!(size(&mut conn).await < 1 << 20, "{}", size(&mut conn).await);
    // The folded users are all there.
    let r = get(
        &app,
        request(
            Metric::UniqueUsers,
            at(5, 0, 0, 0),
            at(6, 0, 0, 0),
            Granularity::Total,
            None,
            Dimension::Unspecified,
            0,
        ),
    )
    .await;
    assert_eq!(r.series[0].total, 400_000.0);

    // A smaller file (a few MB) that is full is left alone: steady traffic
    // keeps it so, and it is not scanned in vain.
    let fill = "INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
         SELECT TIMESTAMPTZ '2026-01-06 00:00:00+00', 0, 0, 1, i FROM generate_series(1, 40000) AS i";
    diesel::sql_query(fill)
        .execute(&mut conn)
        .await
        .expect("fill");
    let full = size(&mut conn).await;
    assert!(full > 1 << 20, "{full}");
    pulse::db::rollups::shrink_deltas(&mut conn)
        .await
        .expect("shrink");
    assert_eq!(size(&mut conn).await, full);
    // Once it is nearly empty, it is shrunk: every read of pending deltas
    // scans the whole file.
    diesel::sql_query("DELETE FROM rollup_set_deltas WHERE user_id > 5")
        .execute(&mut conn)
        .await
        .expect("empty it");
    pulse::db::rollups::shrink_deltas(&mut conn)
        .await
        .expect("shrink");
    assert!(
        size(&mut conn).await < 64 << 10,
        "{}",
        size(&mut conn).await
    );
}

//! The deterministic event generator.
//!
//! Event `i` of a run is a pure function of the seed, `i` and the run's
//! [`GeneratorConfig`]: [`Generator::event`] seeds a private SplitMix64
//! stream from `(seed, i)` and draws everything from it. So two runs with the
//! same settings produce the same rows, workers may generate any index in any
//! order, a retried batch is regenerated identically, and `--write-csv`
//! writes exactly the rows that the gRPC run sends. Nothing here depends on
//! the `rand` crate's algorithms, which may change between its versions.
//!
//! The mix: ~60 % `pageview`, 25 % `click`, 10 % `purchase`, 5 % `sign_up`;
//! users, pages and products are drawn from Zipf distributions (rank 0 is
//! the most popular, so `user-000000`, page 0 (`/`) and `sku-00000` are the
//! hottest); every event carries 100–200 bytes of `data`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, TimeDelta, Utc};
use prost_types::value::Kind as ValueKind;
use uuid::Uuid;

use crate::grpc::convert::to_timestamp;
use crate::grpc::proto;

/// Which kind of UUID event ids are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UuidKind {
    /// Time-ordered (RFC 9562 version 7): the millisecond of the event's
    /// timestamp, then random bits. Index-friendly.
    V7,
    /// Fully random (version 4): every insert lands on a random index page.
    V4,
}

/// The event types the generator emits, with the ids the core migration
/// seeds into `event_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Pageview,
    Click,
    Purchase,
    SignUp,
}

impl EventKind {
    /// Every kind, in `event_type_id` order.
    pub const ALL: [EventKind; 4] = [
        EventKind::Pageview,
        EventKind::Click,
        EventKind::Purchase,
        EventKind::SignUp,
    ];

    /// The `event_type` string of the API.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Pageview => "pageview",
            EventKind::Click => "click",
            EventKind::Purchase => "purchase",
            EventKind::SignUp => "sign_up",
        }
    }

    /// `event_types.event_type_id` as seeded by the core schema migration.
    pub fn type_id(self) -> i16 {
        match self {
            EventKind::Pageview => 1,
            EventKind::Click => 2,
            EventKind::Purchase => 3,
            EventKind::SignUp => 4,
        }
    }
}

/// How event timestamps are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimePlan {
    /// No timestamp: the sender stamps each event with the moment its
    /// message is sent. UUIDv7 ids take their millisecond from
    /// `id_base + index µs`.
    Now { id_base: DateTime<Utc> },
    /// Event `i` happens at `base + i µs` (a "now-ish" run with explicit,
    /// reproducible timestamps).
    Sequence { base: DateTime<Utc> },
    /// `events` events spread uniformly over `[end − span, end)`, in
    /// index order: event `i` falls at a random point of its own slot of
    /// `span / events`, so rows are nearly sorted by time, as live
    /// traffic is.
    Spread {
        end: DateTime<Utc>,
        span: TimeDelta,
        events: u64,
    },
}

/// Everything an event depends on besides its index.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub seed: u64,
    pub users: u64,
    pub pages: u64,
    pub products: u64,
    /// Exponent `s` of the Zipf distributions (weight of rank `k` ∝ `1/k^s`).
    pub zipf_exponent: f64,
    pub uuid: UuidKind,
    pub time: TimePlan,
}

/// A generated event, before it becomes a proto message or CSV rows.
#[derive(Debug, Clone, PartialEq)]
pub struct GenEvent {
    pub index: u64,
    pub event_id: Uuid,
    pub kind: EventKind,
    /// `None` under [`TimePlan::Now`]: stamped when sent.
    pub timestamp: Option<DateTime<Utc>>,
    /// The user number (0-based); see [`user_external_id`].
    pub user: u64,
    /// `data` as string fields, sorted by key.
    pub data: Vec<(&'static str, String)>,
    pub detail: GenDetail,
    /// For a click under [`Generator::with_shape`]'s extra types: it is sent
    /// as `click_<n>` instead.
    pub custom_type: Option<u64>,
}

/// The detail of a generated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenDetail {
    None,
    Pageview {
        page: u64,
    },
    Purchase {
        product: u64,
        quantity: i32,
        amount_cents: u64,
    },
}

/// The API's user id of user number `n`: `user-000123`.
pub fn user_external_id(n: u64) -> String {
    format!("user-{n:06}")
}

/// The product id of product number `n`: `sku-00042`.
pub fn product_id(n: u64) -> String {
    format!("sku-{n:05}")
}

/// The URL of page number `n`: `/` for page 0, then `/products/{n}` and
/// `/blog/{slug}-{n}` pages.
pub fn page_url(n: u64) -> String {
    const WORDS: [&str; 16] = [
        "fast",
        "rust",
        "analytics",
        "guide",
        "pricing",
        "release",
        "notes",
        "tips",
        "dashboard",
        "metrics",
        "alerts",
        "teams",
        "growth",
        "launch",
        "story",
        "update",
    ];
    if n == 0 {
        "/".to_owned()
    } else if n % 3 == 2 {
        let a = WORDS[(mix64(n) % 16) as usize];
        let b = WORDS[(mix64(n ^ 0x5bd1_e995) % 16) as usize];
        format!("/blog/{a}-{b}-{n}")
    } else {
        format!("/products/{n}")
    }
}

/// The unit price of product `n`, in cents (X.99 between 0.99 and 199.99):
/// a product always costs the same.
pub fn unit_price_cents(n: u64) -> u64 {
    (mix64(n.wrapping_add(0x0bad_cafe)) % 200) * 100 + 99
}

/// A money amount in cents as the API's decimal string, e.g. `"19.99"`.
pub fn amount_string(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Draws ranks `0..n` with probability ∝ `1/(rank+1)^s`, by binary search in
/// a precomputed cumulative distribution.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n` must be at least 1.
    pub fn new(n: u64, exponent: f64) -> Self {
        let n = n.max(1) as usize;
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += (k as f64).powf(-exponent);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    /// The rank for a uniform draw `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> u64 {
        let rank = self.cdf.partition_point(|&c| c <= u);
        rank.min(self.cdf.len() - 1) as u64
    }
}

/// SplitMix64: small, fast, and fully specified here, so the generated rows
/// never change with a dependency upgrade.
#[derive(Debug, Clone)]
struct SplitMix(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix {
    fn for_event(seed: u64, index: u64) -> Self {
        SplitMix(mix64(
            seed.wrapping_mul(GOLDEN) ^ mix64(index.wrapping_add(GOLDEN)),
        ))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        out
    }

    /// One of `choices`, by weight.
    fn weighted<T: Copy>(&mut self, choices: &[(T, u32)]) -> T {
        let total: u32 = choices.iter().map(|(_, w)| w).sum();
        let mut pick = self.below(u64::from(total)) as u32;
        for &(value, weight) in choices {
            if pick < weight {
                return value;
            }
            pick -= weight;
        }
        choices[choices.len() - 1].0
    }
}

const BROWSERS: [(&str, u32); 5] = [
    ("Chrome", 64),
    ("Safari", 19),
    ("Edge", 6),
    ("Firefox", 6),
    ("Samsung Internet", 5),
];
const OSES: [(&str, u32); 5] = [
    ("Android", 40),
    ("Windows", 28),
    ("iOS", 18),
    ("macOS", 9),
    ("Linux", 5),
];
const LOCALES: [(&str, u32); 6] = [
    ("en-US", 45),
    ("en-GB", 10),
    ("de-DE", 12),
    ("fr-FR", 10),
    ("es-ES", 13),
    ("ja-JP", 10),
];
const REFERRERS: [(&str, u32); 7] = [
    ("(direct)", 35),
    ("https://www.google.com/", 30),
    ("https://duckduckgo.com/", 5),
    ("https://news.ycombinator.com/", 6),
    ("https://t.co/", 8),
    ("https://www.linkedin.com/", 6),
    ("https://mail.example.com/", 10),
];
const SCREENS: [(&str, u32); 5] = [
    ("390x844", 30),
    ("1920x1080", 30),
    ("1440x900", 15),
    ("2560x1440", 10),
    ("412x915", 15),
];
const ELEMENTS: [(&str, u32); 5] = [
    ("#add-to-cart", 30),
    ("a.nav", 30),
    ("#checkout", 10),
    ("a.related", 20),
    ("#subscribe", 10),
];
const PLANS: [(&str, u32); 3] = [("free", 70), ("team", 25), ("enterprise", 5)];

/// Generates events. Cheap to share between tasks (`&self` only).
#[derive(Debug, Clone)]
pub struct Generator {
    config: GeneratorConfig,
    users: Zipf,
    pages: Zipf,
    products: Zipf,
    /// Distinct `click_<n>` types that clicks are spread over (0: none).
    extra_types: u64,
    /// Bytes of `data` each event is padded to (0: as generated).
    data_bytes: usize,
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Self {
        Self {
            users: Zipf::new(config.users, config.zipf_exponent),
            pages: Zipf::new(config.pages, config.zipf_exponent),
            products: Zipf::new(config.products, config.zipf_exponent),
            config,
            extra_types: 0,
            data_bytes: 0,
        }
    }

    /// Stress shapes for memory benchmarks: clicks spread over
    /// `extra_types` distinct types `click_<n>`, and `data` padded to about
    /// `data_bytes` bytes. Draws happen after every other draw, so events
    /// are otherwise the same as without.
    pub fn with_shape(mut self, extra_types: u64, data_bytes: usize) -> Self {
        self.extra_types = extra_types;
        self.data_bytes = data_bytes;
        self
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Event number `index` of the run.
    ///
    /// The draws from `rng` happen in a fixed order (kind, user, timestamp,
    /// id, context, detail, extra type): changing it changes every event.
    pub fn event(&self, index: u64) -> GenEvent {
        let mut rng = SplitMix::for_event(self.config.seed, index);
        let kind = draw_kind(&mut rng);
        let user = self.users.sample(rng.next_f64());
        let timestamp = self.timestamp(&mut rng, index);
        let event_id = self.event_id(&mut rng, index, timestamp);
        let mut data = context_data(&mut rng, kind);
        let detail = self.detail(&mut rng, kind, &mut data);
        let custom_type =
            (kind == EventKind::Click && self.extra_types > 0).then(|| rng.below(self.extra_types));
        if self.data_bytes > 0 {
            let used: usize = data.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
            data.push((
                "padding",
                "x".repeat(self.data_bytes.saturating_sub(used + 14)),
            ));
        }
        data.sort_unstable_by_key(|(key, _)| *key);

        GenEvent {
            index,
            event_id,
            kind,
            timestamp,
            user,
            data,
            detail,
            custom_type,
        }
    }

    /// Event `index`'s timestamp under the run's [`TimePlan`] (`None`: stamped
    /// when sent).
    fn timestamp(&self, rng: &mut SplitMix, index: u64) -> Option<DateTime<Utc>> {
        match self.config.time {
            TimePlan::Now { .. } => None,
            TimePlan::Sequence { base } => Some(base + micros(index as i64)),
            TimePlan::Spread { end, span, events } => {
                let span_us = span.num_microseconds().unwrap_or(i64::MAX) as f64;
                let slot = (index as f64 + rng.next_f64()) / events.max(1) as f64;
                let offset = (span_us * slot.min(1.0)) as i64;
                Some(end - span + micros(offset))
            }
        }
    }

    /// Event `index`'s id; a UUIDv7 takes its millisecond from `timestamp`,
    /// or from `id_base + index µs` when the event has none.
    fn event_id(&self, rng: &mut SplitMix, index: u64, timestamp: Option<DateTime<Utc>>) -> Uuid {
        match self.config.uuid {
            UuidKind::V4 => uuid::Builder::from_random_bytes(rng.bytes::<16>()).into_uuid(),
            UuidKind::V7 => {
                let at = match (timestamp, self.config.time) {
                    (Some(t), _) => t,
                    (None, TimePlan::Now { id_base }) => id_base + micros(index as i64),
                    (None, _) => unreachable!("only TimePlan::Now leaves timestamps out"),
                };
                let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
                uuid::Builder::from_unix_timestamp_millis(millis, &rng.bytes::<10>()).into_uuid()
            }
        }
    }

    /// The detail of an event of `kind`; a click's and a sign-up's go into
    /// `data` instead.
    fn detail(
        &self,
        rng: &mut SplitMix,
        kind: EventKind,
        data: &mut Vec<(&'static str, String)>,
    ) -> GenDetail {
        match kind {
            EventKind::Pageview => GenDetail::Pageview {
                page: self.pages.sample(rng.next_f64()),
            },
            EventKind::Purchase => {
                let product = self.products.sample(rng.next_f64());
                let quantity = rng.weighted(&[(1, 50), (2, 25), (3, 12), (4, 8), (5, 5)]);
                GenDetail::Purchase {
                    product,
                    quantity,
                    amount_cents: unit_price_cents(product) * quantity as u64,
                }
            }
            EventKind::Click => {
                data.push(("element", rng.weighted(&ELEMENTS).to_owned()));
                data.push(("page", page_url(self.pages.sample(rng.next_f64()))));
                GenDetail::None
            }
            EventKind::SignUp => {
                data.push(("plan", rng.weighted(&PLANS).to_owned()));
                GenDetail::None
            }
        }
    }
}

/// The event's kind: ~60 % pageview, 25 % click, 10 % purchase, 5 % sign-up.
fn draw_kind(rng: &mut SplitMix) -> EventKind {
    match rng.below(100) {
        0..60 => EventKind::Pageview,
        60..85 => EventKind::Click,
        85..95 => EventKind::Purchase,
        _ => EventKind::SignUp,
    }
}

/// The `data` every event has (browser, locale, OS, referrer, session; a
/// screen but for clicks), unsorted.
fn context_data(rng: &mut SplitMix, kind: EventKind) -> Vec<(&'static str, String)> {
    let mut session = String::with_capacity(16);
    let _ = write!(session, "{:016x}", rng.next_u64());
    let mut data = vec![
        ("browser", rng.weighted(&BROWSERS).to_owned()),
        ("locale", rng.weighted(&LOCALES).to_owned()),
        ("os", rng.weighted(&OSES).to_owned()),
        ("referrer", rng.weighted(&REFERRERS).to_owned()),
        ("session_id", session),
    ];
    if kind != EventKind::Click {
        data.push(("screen", rng.weighted(&SCREENS).to_owned()));
    }
    data
}

fn micros(us: i64) -> TimeDelta {
    TimeDelta::microseconds(us)
}

impl GenEvent {
    /// The API's user id.
    pub fn user_external_id(&self) -> String {
        user_external_id(self.user)
    }

    /// `data` as a `google.protobuf.Struct` of string values.
    pub fn data_struct(&self) -> prost_types::Struct {
        let fields: BTreeMap<String, prost_types::Value> = self
            .data
            .iter()
            .map(|(key, value)| {
                (
                    (*key).to_owned(),
                    prost_types::Value {
                        kind: Some(ValueKind::StringValue(value.clone())),
                    },
                )
            })
            .collect();
        prost_types::Struct { fields }
    }

    /// `data` as compact JSON, as the server stores it.
    pub fn data_json(&self) -> String {
        let mut out = String::with_capacity(192);
        out.push('{');
        for (i, (key, value)) in self.data.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Keys and values are plain strings; serde_json escapes them.
            out.push_str(&serde_json::to_string(key).unwrap_or_default());
            out.push(':');
            out.push_str(&serde_json::to_string(value).unwrap_or_default());
        }
        out.push('}');
        out
    }

    /// The event as the API's message. Under [`TimePlan::Now`] the timestamp
    /// is left out for the sender to fill in.
    pub fn to_proto(&self) -> proto::Event {
        let detail = match &self.detail {
            GenDetail::None => None,
            GenDetail::Pageview { page } => Some(proto::event::Detail::Pageview(proto::Pageview {
                page_url: page_url(*page),
            })),
            GenDetail::Purchase {
                product,
                quantity,
                amount_cents,
            } => Some(proto::event::Detail::Purchase(proto::Purchase {
                product_id: product_id(*product),
                quantity: *quantity,
                amount: amount_string(*amount_cents),
            })),
        };
        proto::Event {
            event_id: self.event_id.to_string(),
            event_type: match self.custom_type {
                Some(n) => format!("click_{n}"),
                None => self.kind.name().to_owned(),
            },
            timestamp: self.timestamp.map(to_timestamp),
            user_id: self.user_external_id(),
            data: Some(self.data_struct()),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;

    use super::*;
    use crate::grpc::convert::struct_to_json;

    fn config(seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            seed,
            users: 100_000,
            pages: 1_000,
            products: 500,
            zipf_exponent: 1.0,
            uuid: UuidKind::V7,
            time: TimePlan::Spread {
                end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
                span: TimeDelta::days(7),
                events: 100_000,
            },
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let a = Generator::new(config(7));
        let b = Generator::new(config(7));
        let c = Generator::new(config(8));
        for i in [0, 1, 2, 999, 54_321, 99_999] {
            assert_eq!(a.event(i), b.event(i));
            assert_eq!(a.event(i).to_proto(), b.event(i).to_proto());
            assert_ne!(a.event(i).event_id, c.event(i).event_id);
        }
        // Order of generation does not matter.
        let forward: Vec<_> = (0..100).map(|i| a.event(i)).collect();
        let backward: Vec<_> = (0..100).rev().map(|i| b.event(i)).collect();
        assert!(forward.iter().eq(backward.iter().rev()));
    }

    #[test]
    fn v4_ids_are_deterministic_too() {
        let cfg = GeneratorConfig {
            uuid: UuidKind::V4,
            ..config(3)
        };
        let a = Generator::new(cfg.clone()).event(42);
        let b = Generator::new(cfg).event(42);
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.event_id.get_version_num(), 4);
    }

    #[test]
    fn the_type_mix_is_as_documented() {
        let generator = Generator::new(config(1));
        let n = 100_000;
        let mut counts: HashMap<EventKind, u64> = HashMap::new();
        for i in 0..n {
            *counts.entry(generator.event(i).kind).or_default() += 1;
        }
        for (kind, expected) in [
            (EventKind::Pageview, 0.60),
            (EventKind::Click, 0.25),
            (EventKind::Purchase, 0.10),
            (EventKind::SignUp, 0.05),
        ] {
            let share = counts[&kind] as f64 / n as f64;
            assert!(
                (share - expected).abs() < 0.01,
                "{kind:?}: {share} instead of {expected}"
            );
        }
    }

    #[test]
    fn users_are_zipf_skewed() {
        let generator = Generator::new(config(1));
        let mut per_user: HashMap<u64, u64> = HashMap::new();
        for i in 0..100_000 {
            *per_user.entry(generator.event(i).user).or_default() += 1;
        }
        let top = per_user.get(&0).copied().unwrap_or(0);
        let mut counts: Vec<u64> = (0..100_000)
            .map(|u| per_user.get(&u).copied().unwrap_or(0))
            .collect();
        counts.sort_unstable();
        let median = counts[counts.len() / 2];
        // s = 1 over 100k users: the top user has ~8 % of all events.
        assert!(top > 5_000, "top user has only {top} events");
        assert!(median <= 1, "median user has {median} events");
        assert!(per_user[&0] > per_user[&1] && per_user[&1] > per_user[&10]);
    }

    #[test]
    fn zipf_sampling_covers_the_range() {
        let zipf = Zipf::new(10, 1.0);
        assert_eq!(zipf.sample(0.0), 0);
        assert_eq!(zipf.sample(0.999_999_999), 9);
        let one = Zipf::new(1, 1.0);
        assert_eq!(one.sample(0.5), 0);
    }

    #[test]
    fn events_are_valid_and_their_data_is_100_to_200_bytes() {
        let generator = Generator::new(config(5));
        let end = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let mut last = None;
        for i in 0..10_000 {
            let event = generator.event(i);
            let json = event.data_json();
            assert!(
                (100..=200).contains(&json.len()),
                "{} bytes: {json}",
                json.len()
            );
            // The CSV's JSON is exactly what the server stores for the Struct.
            let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(parsed, struct_to_json(event.data_struct()).unwrap());

            let ts = event.timestamp.unwrap();
            assert!(ts < end && ts >= end - TimeDelta::days(7));
            assert!(last.is_none_or(|l| l <= ts), "timestamps go back in time");
            last = Some(ts);
            assert_eq!(event.event_id.get_version_num(), 7);
            assert_eq!(
                event.event_id.get_timestamp().unwrap().to_unix().0 as i64,
                ts.timestamp()
            );

            let message = event.to_proto();
            match (event.kind, &message.detail) {
                (EventKind::Pageview, Some(proto::event::Detail::Pageview(p))) => {
                    assert!(p.page_url.starts_with('/'));
                }
                (EventKind::Purchase, Some(proto::event::Detail::Purchase(p))) => {
                    assert!((1..=5).contains(&p.quantity));
                    crate::domain::event::parse_amount(&p.amount).unwrap();
                    let (_, cents) = p.amount.split_once('.').unwrap();
                    assert_eq!(cents.len(), 2);
                    assert!(p.product_id.starts_with("sku-"));
                }
                (EventKind::Click | EventKind::SignUp, None) => {}
                (kind, detail) => panic!("{kind:?} with {detail:?}"),
            }
            assert!(message.user_id.starts_with("user-"));
        }
    }

    #[test]
    fn now_and_sequence_plans() {
        let base = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let now = Generator::new(GeneratorConfig {
            time: TimePlan::Now { id_base: base },
            ..config(1)
        });
        assert_eq!(now.event(5).timestamp, None);
        assert!(now.event(5).to_proto().timestamp.is_none());
        let seq = Generator::new(GeneratorConfig {
            time: TimePlan::Sequence { base },
            ..config(1)
        });
        assert_eq!(seq.event(5).timestamp, Some(base + micros(5)));
        // Same seed, same id millisecond: the same ids.
        assert_eq!(now.event(5).event_id, seq.event(5).event_id);
    }

    #[test]
    fn names_look_right() {
        assert_eq!(user_external_id(123), "user-000123");
        assert_eq!(product_id(42), "sku-00042");
        assert_eq!(page_url(0), "/");
        assert_eq!(page_url(1), "/products/1");
        assert!(page_url(2).starts_with("/blog/") && page_url(2).ends_with("-2"));
        assert_eq!(amount_string(1999), "19.99");
        assert_eq!(amount_string(5), "0.05");
        assert_eq!(unit_price_cents(7) % 100, 99);
    }
}

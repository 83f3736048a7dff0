//! The ingest write path: one batch of validated events into `events`,
//! `pageviews` and `purchases`, with users registered on first sight and
//! event types registered, before the batch, by [`register_types`].
//!
//! The event-type registry is bounded: `events.event_type_id` is a
//! `smallint` (2 bytes on a table of millions of rows), so at most 32,767
//! types can ever exist, and `--max-event-types` caps them lower. Ids come
//! from no sequence: [`register_types`] takes a transaction-scoped advisory
//! lock, counts the types, and gives the new names the lowest free ids, so a
//! conflict, a rollback or a race spends no id, and concurrent streams (on
//! any instance) can never pass the cap together. Names past the cap are
//! refused one by one; the caller rejects their events alone.
//!
//! A batch costs one statement in the common case: the users and types of a
//! warm stream come from [`IdCache`], and the events with their details are
//! written by a single data-modifying CTE over `unnest`ed arrays, so the
//! batch is atomic without an explicit transaction and takes one round trip.
//!
//! Concurrency: rows are inserted in `event_id` (and `external_id`) order,
//! so two batches that share new ids lock them in the same order and cannot
//! deadlock; the second waits for the first and then sees a duplicate.
//! `ON CONFLICT DO NOTHING` makes a resent event a duplicate whatever its
//! timestamp.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Int2, Int4, Int8, Jsonb, Nullable, Numeric, Text, Timestamptz,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{event_types, users};
use crate::domain::event::{Detail, ValidEvent};
use crate::domain::user::UserUpsert;
use crate::error::{Error, Result};

/// Most event types the schema can hold: `event_type_id` is a positive
/// `smallint` (0 stands for "any type" in `rollup_user_sets`).
pub const MAX_EVENT_TYPE_IDS: usize = i16::MAX as usize;

/// Serialises event-type registration across sessions and instances.
const EVENT_TYPES_LOCK: i64 = 0x5075_6c73_6506;

/// Process-wide caches of the surrogate keys of users and event types.
///
/// Only ids read back from committed rows enter the cache, and those rows are
/// never deleted, so a cached id is always valid. The user cache is bounded:
/// when full it is cleared and refills from the database.
pub struct IdCache {
    types: RwLock<HashMap<String, i16>>,
    users: Mutex<HashMap<String, i64>>,
    max_users: usize,
    /// `dimension_values` ids by (dimension, value); bounded like users.
    values: Mutex<HashMap<(i16, String), i32>>,
}

impl IdCache {
    pub fn new(max_users: usize) -> Self {
        Self {
            types: RwLock::default(),
            users: Mutex::default(),
            max_users,
            values: Mutex::default(),
        }
    }

    /// The id of a registered type, if this process has seen it.
    pub fn type_id(&self, name: &str) -> Option<i16> {
        self.types.read().ok()?.get(name).copied()
    }

    fn user_id(&self, external_id: &str) -> Option<i64> {
        self.users.lock().ok()?.get(external_id).copied()
    }

    fn remember_types(&self, found: &[(i16, String)]) {
        if let Ok(mut types) = self.types.write() {
            for (id, name) in found {
                types.insert(name.clone(), *id);
            }
        }
    }

    fn value_id(&self, dimension: i16, value: &str) -> Option<i32> {
        // The key is owned; a lookup by borrowed parts would need a
        // custom key type for a cost that does not show.
        self.values
            .lock()
            .ok()?
            .get(&(dimension, value.to_owned()))
            .copied()
    }

    fn remember_values(&self, dimension: i16, found: &[(i32, String)]) {
        if let Ok(mut values) = self.values.lock() {
            if values.len() + found.len() > self.max_users {
                values.clear();
            }
            for (id, value) in found {
                values.insert((dimension, value.clone()), *id);
            }
        }
    }

    fn remember_users(&self, found: &[(i64, String)]) {
        if let Ok(mut users) = self.users.lock() {
            if users.len() + found.len() > self.max_users {
                users.clear();
            }
            for (id, external) in found {
                users.insert(external.clone(), *id);
            }
        }
    }
}

/// What happened to a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events stored by this batch.
    pub inserted: Vec<Uuid>,
}

#[derive(QueryableByName)]
struct InsertedRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    event_id: Uuid,
}

/// Writes one batch. `events` must hold distinct event ids. Returns the ids
/// that were new; the others were already stored (duplicates).
pub async fn write_events(
    conn: &mut AsyncPgConnection,
    cache: &IdCache,
    events: &mut [ValidEvent],
) -> Result<BatchOutcome> {
    if events.is_empty() {
        return Ok(BatchOutcome::default());
    }
    // A fixed lock order across concurrent batches: no deadlocks.
    events.sort_unstable_by_key(|e| e.event_id);
    let events: &[ValidEvent] = events;

    let ids = BatchIds::resolve(conn, cache, events).await?;
    let columns = BatchColumns::new(events, &ids);
    insert_batch(conn, &columns).await
}

/// Surrogate keys of everything one batch refers to, by name.
struct BatchIds<'a> {
    types: HashMap<String, i16>,
    users: HashMap<String, i64>,
    pages: HashMap<&'a str, i32>,
    products: HashMap<&'a str, i32>,
}

impl<'a> BatchIds<'a> {
    /// Resolves (registering what is new) the batch's types, users, pages
    /// and products, in that order.
    async fn resolve(
        conn: &mut AsyncPgConnection,
        cache: &IdCache,
        events: &'a [ValidEvent],
    ) -> Result<Self> {
        let types = resolve_types(conn, cache, events).await?;
        let users = resolve_users(conn, cache, events).await?;
        let pages = resolve_values(
            conn,
            cache,
            PAGES,
            events.iter().filter_map(|e| match &e.detail {
                Detail::Pageview { page_url } => Some(page_url.as_str()),
                _ => None,
            }),
        )
        .await?;
        let products = resolve_values(
            conn,
            cache,
            PRODUCTS,
            events.iter().filter_map(|e| match &e.detail {
                Detail::Purchase { product_id, .. } => Some(product_id.as_str()),
                _ => None,
            }),
        )
        .await?;
        Ok(Self {
            types,
            users,
            pages,
            products,
        })
    }
}

/// The batch as the column arrays [`INSERT_EVENTS`] `unnest`s: events
/// (`$1..$5`), pageviews (`$6..$7`, `$12`) and purchases (`$8..$11`, `$13`).
#[derive(Default)]
struct BatchColumns<'a> {
    ids: Vec<Uuid>,
    times: Vec<DateTime<Utc>>,
    user_refs: Vec<Option<i64>>,
    types: Vec<i16>,
    data: Vec<Option<serde_json::Value>>,
    pv_ids: Vec<Uuid>,
    pv_urls: Vec<&'a str>,
    pv_values: Vec<i32>,
    pu_ids: Vec<Uuid>,
    pu_products: Vec<&'a str>,
    pu_values: Vec<i32>,
    pu_quantities: Vec<i32>,
    pu_amounts: Vec<&'a BigDecimal>,
}

impl<'a> BatchColumns<'a> {
    /// Lays out `events` in order, with their ids from `ids`.
    fn new(events: &'a [ValidEvent], ids: &BatchIds) -> Self {
        let n = events.len();
        let mut columns = Self {
            ids: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            user_refs: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            ..Self::default()
        };
        for event in events {
            columns.ids.push(event.event_id);
            columns.times.push(event.timestamp);
            columns
                .user_refs
                .push(event.user_id.as_ref().map(|u| ids.users[u.as_str()]));
            columns.types.push(ids.types[event.event_type.as_str()]);
            columns.data.push(event.data.clone());
            columns.push_detail(event, ids);
        }
        columns
    }

    /// Adds the pageview or purchase row of `event`, if it has one.
    fn push_detail(&mut self, event: &'a ValidEvent, ids: &BatchIds) {
        match &event.detail {
            Detail::None => {}
            Detail::Pageview { page_url } => {
                self.pv_ids.push(event.event_id);
                self.pv_urls.push(page_url);
                self.pv_values.push(ids.pages[page_url.as_str()]);
            }
            Detail::Purchase {
                product_id,
                quantity,
                amount,
            } => {
                self.pu_ids.push(event.event_id);
                self.pu_products.push(product_id);
                self.pu_values.push(ids.products[product_id.as_str()]);
                self.pu_quantities.push(*quantity);
                self.pu_amounts.push(amount);
            }
        }
    }
}

/// Runs [`INSERT_EVENTS`] over the batch, up to three times while it fails
/// on a serialization failure or a deadlock.
async fn insert_batch(conn: &mut AsyncPgConnection, c: &BatchColumns<'_>) -> Result<BatchOutcome> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = diesel::sql_query(INSERT_EVENTS)
            .bind::<Array<diesel::sql_types::Uuid>, _>(&c.ids)
            .bind::<Array<Timestamptz>, _>(&c.times)
            .bind::<Array<Nullable<Int8>>, _>(&c.user_refs)
            .bind::<Array<Int2>, _>(&c.types)
            .bind::<Array<Nullable<Jsonb>>, _>(&c.data)
            .bind::<Array<diesel::sql_types::Uuid>, _>(&c.pv_ids)
            .bind::<Array<Text>, _>(&c.pv_urls)
            .bind::<Array<diesel::sql_types::Uuid>, _>(&c.pu_ids)
            .bind::<Array<Text>, _>(&c.pu_products)
            .bind::<Array<Int4>, _>(&c.pu_quantities)
            .bind::<Array<Numeric>, _>(&c.pu_amounts)
            .bind::<Array<Int4>, _>(&c.pv_values)
            .bind::<Array<Int4>, _>(&c.pu_values)
            .load::<InsertedRow>(conn)
            .await;
        match result {
            Ok(rows) => {
                return Ok(BatchOutcome {
                    inserted: rows.into_iter().map(|r| r.event_id).collect(),
                });
            }
            Err(e) if attempt < 3 && is_retryable(&e) => {
                tracing::warn!(error = %e, attempt, "retrying an ingest batch");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The batch statement. `$1..$5` are the events, `$6..$7` the pageviews
/// with `$12` their page ids, `$8..$11` the purchases with `$13` their
/// product ids (`dimension_values.value_id`). Everything downstream of `ins`
/// sees only the events that were new, so a duplicate leaves no trace:
/// details are inserted for them alone, and the rollup deltas (see
/// `db/rollups.rs`) count them alone, in the same statement and so the
/// same transaction.
const INSERT_EVENTS: &str = r#"
WITH ins AS (
    INSERT INTO events (event_id, "timestamp", user_id, event_type_id, data)
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::int8[], $4::int2[], $5::jsonb[])
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, user_id, date_trunc('minute', "timestamp", 'UTC') AS minute, event_type_id
), pv_new AS (
    SELECT d.event_id, d.page_url, d.value_id, ins.user_id, ins.minute, ins.event_type_id
    FROM unnest($6::uuid[], $7::text[], $12::int4[]) AS d(event_id, page_url, value_id)
    JOIN ins USING (event_id)
), pu_new AS (
    SELECT d.event_id, d.product_id, d.quantity, d.amount, d.value_id, ins.user_id, ins.minute, ins.event_type_id
    FROM unnest($8::uuid[], $9::text[], $10::int4[], $11::numeric[], $13::int4[])
        AS d(event_id, product_id, quantity, amount, value_id)
    JOIN ins USING (event_id)
), pv AS (
    INSERT INTO pageviews (event_id, user_id, page_url)
    SELECT event_id, user_id, page_url FROM pv_new
), pu AS (
    INSERT INTO purchases (event_id, user_id, product_id, quantity, amount)
    SELECT event_id, user_id, product_id, quantity, amount FROM pu_new
), count_deltas AS (
    INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
    SELECT ins.minute, 0, 0, ins.event_type_id, count(*), coalesce(sum(p.quantity), 0), coalesce(sum(p.amount), 0)
    FROM ins LEFT JOIN pu_new p USING (event_id) GROUP BY ins.minute, ins.event_type_id
    UNION ALL
    SELECT minute, 1, value_id, event_type_id, count(*), 0, 0 FROM pv_new GROUP BY minute, value_id, event_type_id
    UNION ALL
    SELECT minute, 2, value_id, event_type_id, count(*), sum(quantity), sum(amount)
    FROM pu_new GROUP BY minute, value_id, event_type_id
), set_deltas AS (
    INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
    SELECT DISTINCT minute, 0, 0, event_type_id, user_id FROM ins WHERE user_id IS NOT NULL
    UNION ALL
    SELECT DISTINCT minute, 1, value_id, event_type_id, user_id FROM pv_new WHERE user_id IS NOT NULL
    UNION ALL
    SELECT DISTINCT minute, 2, value_id, event_type_id, user_id FROM pu_new WHERE user_id IS NOT NULL
)
SELECT event_id FROM ins
"#;

fn is_retryable(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as E};
    match error {
        E::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        E::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}

#[derive(QueryableByName)]
struct TypeRow {
    #[diesel(sql_type = Int2)]
    event_type_id: i16,
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Makes sure every name of `names` is a registered event type, as long as
/// the registry holds fewer than `max_types`; returns the names refused
/// because it was full. Registered ids enter `cache`.
pub async fn register_types(
    conn: &mut AsyncPgConnection,
    cache: &IdCache,
    names: &[&str],
    max_types: usize,
) -> Result<HashSet<String>> {
    let missing = uncached_types(cache, names);
    if missing.is_empty() {
        return Ok(HashSet::new());
    }
    let cap = max_types.min(MAX_EVENT_TYPE_IDS) as i64;
    let (found, refused) = conn
        .transaction::<_, Error, _>(async |conn| register_locked(conn, &missing, cap).await)
        .await?;
    let found: Vec<(i16, String)> = found
        .into_iter()
        .map(|t| (t.event_type_id, t.name))
        .collect();
    cache.remember_types(&found);
    Ok(refused)
}

/// The distinct names of `names` that `cache` does not know, sorted.
fn uncached_types<'a>(cache: &IdCache, names: &[&'a str]) -> Vec<&'a str> {
    let mut missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| cache.type_id(name).is_none())
        .collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// The body of [`register_types`]' transaction: takes the advisory lock,
/// then registers the names of `missing` not yet registered while the
/// registry holds fewer than `cap` types. Returns the rows of `missing`
/// now registered and the names refused.
async fn register_locked(
    conn: &mut AsyncPgConnection,
    missing: &[&str],
    cap: i64,
) -> Result<(Vec<TypeRow>, HashSet<String>)> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(EVENT_TYPES_LOCK)
        .execute(conn)
        .await?;
    // Under the lock: what another stream or instance registered
    // meanwhile, and how many types exist.
    let mut found: Vec<TypeRow> =
        diesel::sql_query("SELECT event_type_id, name FROM event_types WHERE name = ANY($1)")
            .bind::<Array<Text>, _>(missing)
            .load(conn)
            .await?;
    let known: HashSet<&str> = found.iter().map(|t| t.name.as_str()).collect();
    let new: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|name| !known.contains(name))
        .collect();
    let existing: Count = diesel::sql_query("SELECT count(*) AS n FROM event_types")
        .get_result(conn)
        .await?;
    let room = usize::try_from((cap - existing.n).max(0)).unwrap_or(0);
    let (admitted, refused) = new.split_at(room.min(new.len()));
    if !admitted.is_empty() {
        found.extend(insert_types(conn, admitted).await?);
    }
    let refused: HashSet<String> = refused.iter().map(|n| (*n).to_owned()).collect();
    Ok((found, refused))
}

/// Registers the new names `admitted` under the lowest free ids, in name
/// order: no sequence, so nothing is spent by a conflict or a rollback.
async fn insert_types(conn: &mut AsyncPgConnection, admitted: &[&str]) -> Result<Vec<TypeRow>> {
    let inserted: Vec<TypeRow> = diesel::sql_query(
                    "INSERT INTO event_types (event_type_id, name)
                     SELECT free.id::int2, names.name
                     FROM (SELECT name, row_number() OVER (ORDER BY name) AS k
                           FROM unnest($1::text[]) AS name) AS names
                     JOIN (SELECT id, row_number() OVER (ORDER BY id) AS k
                           FROM generate_series(1, $2::int) AS id
                           WHERE NOT EXISTS (SELECT 1 FROM event_types t WHERE t.event_type_id = id)) AS free
                       USING (k)
                     RETURNING event_type_id, name",
    )
    .bind::<Array<Text>, _>(admitted)
    .bind::<Int4, _>(MAX_EVENT_TYPE_IDS as i32)
    .load(conn)
    .await?;
    if inserted.len() != admitted.len() {
        return Err(Error::Internal(
            format!(
                "registered {} of {} event types: no free id left",
                inserted.len(),
                admitted.len()
            )
            .into(),
        ));
    }
    Ok(inserted)
}

/// Ids of the batch's event types. Every type was registered by
/// [`register_types`] before the batch was formed, so this only reads.
async fn resolve_types(
    conn: &mut AsyncPgConnection,
    cache: &IdCache,
    events: &[ValidEvent],
) -> Result<HashMap<String, i16>> {
    let mut resolved = HashMap::new();
    let mut missing: Vec<&str> = Vec::new();
    for event in events {
        if resolved.contains_key(&event.event_type) || missing.contains(&event.event_type.as_str())
        {
            continue;
        }
        match cache.type_id(&event.event_type) {
            Some(id) => {
                resolved.insert(event.event_type.clone(), id);
            }
            None => missing.push(&event.event_type),
        }
    }
    if missing.is_empty() {
        return Ok(resolved);
    }
    let found: Vec<(i16, String)> = event_types::table
        .filter(event_types::name.eq_any(&missing))
        .select((event_types::event_type_id, event_types::name))
        .load(conn)
        .await?;
    if found.len() != missing.len() {
        return Err(Error::Internal(
            "a batch holds an event type that was never registered".into(),
        ));
    }
    cache.remember_types(&found);
    resolved.extend(found.into_iter().map(|(id, name)| (name, id)));
    Ok(resolved)
}

/// The `dimension_values` codes of pages and products (see
/// `domain::metric::Dimension::rollup_code`).
const PAGES: i16 = 1;
const PRODUCTS: i16 = 2;

/// Dictionary ids of the batch's values of one dimension, registering new
/// ones (in sorted order, without spending identity values on conflicts).
async fn resolve_values<'a>(
    conn: &mut AsyncPgConnection,
    cache: &IdCache,
    dimension: i16,
    values: impl Iterator<Item = &'a str>,
) -> Result<HashMap<&'a str, i32>> {
    let (mut resolved, mut missing) = cached_values(cache, dimension, values);
    if missing.is_empty() {
        return Ok(resolved);
    }
    missing.sort_unstable();
    missing.dedup();
    let found = register_values(conn, dimension, &missing).await?;
    cache.remember_values(dimension, &found);
    let by_value: HashMap<&str, i32> = found.iter().map(|(id, v)| (v.as_str(), *id)).collect();
    for value in missing {
        let id = by_value.get(value).copied().ok_or_else(|| {
            Error::Internal("a dimension value vanished while being registered".into())
        })?;
        resolved.insert(value, id);
    }
    Ok(resolved)
}

/// Splits `values` into those `cache` knows, with their ids, and the
/// others (in order of first sight).
fn cached_values<'a>(
    cache: &IdCache,
    dimension: i16,
    values: impl Iterator<Item = &'a str>,
) -> (HashMap<&'a str, i32>, Vec<&'a str>) {
    let mut resolved: HashMap<&str, i32> = HashMap::new();
    let mut missing: Vec<&str> = Vec::new();
    for value in values {
        if resolved.contains_key(value) {
            continue;
        }
        match cache.value_id(dimension, value) {
            Some(id) => {
                resolved.insert(value, id);
            }
            None => missing.push(value),
        }
    }
    (resolved, missing)
}

/// Inserts the sorted, distinct `missing` values of a dimension that are
/// not yet stored, then reads back the ids of all of them.
async fn register_values(
    conn: &mut AsyncPgConnection,
    dimension: i16,
    missing: &[&str],
) -> Result<Vec<(i32, String)>> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Int4)]
        value_id: i32,
        #[diesel(sql_type = Text)]
        value: String,
    }
    diesel::sql_query(
        "INSERT INTO dimension_values (dimension, value)
         SELECT $1, x FROM unnest($2::text[]) AS x
         WHERE NOT EXISTS (SELECT 1 FROM dimension_values v WHERE v.dimension = $1 AND v.value = x)
         ORDER BY x
         ON CONFLICT (dimension, value) DO NOTHING",
    )
    .bind::<Int2, _>(dimension)
    .bind::<Array<Text>, _>(missing)
    .execute(conn)
    .await?;
    let found: Vec<Found> = diesel::sql_query(
        "SELECT value_id, value FROM dimension_values WHERE dimension = $1 AND value = ANY($2)",
    )
    .bind::<Int2, _>(dimension)
    .bind::<Array<Text>, _>(missing)
    .load(conn)
    .await?;
    if found.len() != missing.len() {
        return Err(Error::Internal(
            "a dimension value vanished while being registered".into(),
        ));
    }
    Ok(found.into_iter().map(|f| (f.value_id, f.value)).collect())
}

/// Surrogate keys of the batch's users, registering unknown ones.
async fn resolve_users(
    conn: &mut AsyncPgConnection,
    cache: &IdCache,
    events: &[ValidEvent],
) -> Result<HashMap<String, i64>> {
    let mut resolved: HashMap<String, i64> = HashMap::new();
    let mut missing: Vec<&str> = Vec::new();
    for user in events.iter().filter_map(|e| e.user_id.as_deref()) {
        if resolved.contains_key(user) {
            continue;
        }
        match cache.user_id(user) {
            Some(id) => {
                resolved.insert(user.to_owned(), id);
            }
            None => missing.push(user),
        }
    }
    if missing.is_empty() {
        return Ok(resolved);
    }
    missing.sort_unstable();
    missing.dedup();
    diesel::sql_query(
        "INSERT INTO users (external_id)
         SELECT x FROM unnest($1::text[]) AS x
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.external_id = x)
         ORDER BY x
         ON CONFLICT (external_id) DO NOTHING",
    )
    .bind::<Array<Text>, _>(&missing)
    .execute(conn)
    .await?;
    let found: Vec<(i64, String)> = users::table
        .filter(users::external_id.eq_any(&missing))
        .select((users::user_id, users::external_id))
        .load(conn)
        .await?;
    if found.len() != missing.len() {
        return Err(Error::Internal(
            "a user vanished while being registered".into(),
        ));
    }
    cache.remember_users(&found);
    resolved.extend(found.into_iter().map(|(id, external)| (external, id)));
    Ok(resolved)
}

/// What `UpsertUsers` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpsertOutcome {
    pub created: u64,
    pub updated: u64,
}

#[derive(QueryableByName)]
struct UpsertRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    created: bool,
}

/// Creates users or fills in their username and email. A `None` field leaves
/// the stored value unchanged; a row whose values do not change is neither
/// created nor updated. `users` must hold distinct user ids.
pub async fn upsert_users(
    conn: &mut AsyncPgConnection,
    users: &mut [UserUpsert],
) -> Result<UpsertOutcome> {
    users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    let names: Vec<Option<&str>> = users.iter().map(|u| u.username.as_deref()).collect();
    let emails: Vec<Option<&str>> = users.iter().map(|u| u.email.as_deref()).collect();
    let rows: Vec<UpsertRow> = diesel::sql_query(
        "INSERT INTO users AS u (external_id, username, email)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
         ON CONFLICT (external_id) DO UPDATE
            SET username = COALESCE(EXCLUDED.username, u.username),
                email = COALESCE(EXCLUDED.email, u.email)
            WHERE (u.username, u.email) IS DISTINCT FROM
                  (COALESCE(EXCLUDED.username, u.username), COALESCE(EXCLUDED.email, u.email))
         RETURNING (xmax = 0) AS created",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<Nullable<Text>>, _>(&names)
    .bind::<Array<Nullable<Text>>, _>(&emails)
    .load(conn)
    .await?;
    let created = rows.iter().filter(|r| r.created).count() as u64;
    Ok(UpsertOutcome {
        created,
        updated: rows.len() as u64 - created,
    })
}

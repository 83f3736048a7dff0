//! API key storage: create, list, revoke, the active set servers load, and
//! the throttled `last_used_at` update. Diesel's DSL only (bind parameters).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::api_keys;
use crate::domain::key::{KeyHash, Scope};
use crate::error::{Error, Result};

/// One key as `pulse keys list` shows it (never its hash).
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key a server accepts: its id, scope and hash.
pub struct ActiveKey {
    pub id: Uuid,
    pub scope: Scope,
    pub hash: KeyHash,
}

/// Stores a new key (its hash only) and returns its id.
pub async fn create(
    conn: &mut AsyncPgConnection,
    name: &str,
    scope: Scope,
    hash: &KeyHash,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::id.eq(id),
            api_keys::name.eq(name),
            api_keys::scope.eq(scope.as_str()),
            api_keys::key_hash.eq(hash.as_slice()),
        ))
        .execute(conn)
        .await?;
    Ok(id)
}

/// Every key, oldest first.
pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<KeyInfo>> {
    Ok(api_keys::table
        .select(KeyInfo::as_select())
        .order(api_keys::id)
        .load(conn)
        .await?)
}

/// Revokes key `id`. `NotFound` if there is no such key; revoking a
/// revoked key keeps its first revocation time.
pub async fn revoke(conn: &mut AsyncPgConnection, id: Uuid) -> Result<KeyInfo> {
    diesel::update(
        api_keys::table
            .find(id)
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    api_keys::table
        .find(id)
        .select(KeyInfo::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("no API key with id {id}")))
}

/// The keys servers accept: every key not revoked.
pub async fn active(conn: &mut AsyncPgConnection) -> Result<Vec<ActiveKey>> {
    let rows: Vec<(Uuid, String, Vec<u8>)> = api_keys::table
        .filter(api_keys::revoked_at.is_null())
        .select((api_keys::id, api_keys::scope, api_keys::key_hash))
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|(id, scope, hash)| {
            let hash: KeyHash = hash.try_into().map_err(|_| {
                Error::Internal(format!("api key {id} has a malformed hash").into())
            })?;
            Ok(ActiveKey {
                id,
                scope: Scope::from_name(&scope)?,
                hash,
            })
        })
        .collect()
}

/// Sets `last_used_at` to now for `ids`.
pub async fn touch(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    diesel::update(api_keys::table.filter(api_keys::id.eq_any(ids)))
        .set(api_keys::last_used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

//! API-key authentication shared by the gRPC layer (`grpc/auth.rs`) and the
//! dashboard API (`http/mod.rs`): the in-memory set of accepted keys, kept
//! fresh from `api_keys`, and the one decision both transports ask for.
//!
//! Invariants:
//! * **Auth is on as soon as one key exists.** With no non-revoked key in the
//!   database every call is let through, which is only allowed on loopback
//!   listeners ([`check_exposure`] refuses to start otherwise). A server
//!   listening beyond loopback requires a key even if every key is later
//!   revoked: it never falls open.
//! * **Fresh within seconds.** [`KeySet::run`] reloads the whole set every
//!   refresh interval (a few hundred rows at most), so a new or revoked key
//!   takes effect on every instance within about that long. A failed reload
//!   keeps the previous set.
//! * **Only hashes.** The set is keyed by SHA-256 of the key; a presented key
//!   is hashed and looked up. Keys are never logged; error messages name the
//!   key's id or scope, never the key.
//! * **`last_used_at` at most once a minute** per key and instance: uses are
//!   noted in memory and written by the refresh loop.
//! * **Revocation ends streams too.** Each reload is published on a watch
//!   channel; [`KeySet::revoked`] resolves once a key is no longer in the
//!   set, and the streaming handlers (IngestEvents, WatchAlerts) end their
//!   call with [`revoked_status`] then, within a refresh interval.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{self, PgPool};
use crate::domain::key::{KeyHash, Scope, hash_key};
use crate::error::{Error, Result};

/// How often a key's `last_used_at` is written, at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Who made an authenticated call; in the request's extensions for handlers
/// (rate limits are per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Uuid,
    pub scope: Scope,
}

#[derive(Default)]
struct Touches {
    /// When each key's use was last queued for writing.
    last: HashMap<Uuid, Instant>,
    /// Keys used since the last write.
    pending: Vec<Uuid>,
}

/// One reload's keys.
#[derive(Default)]
struct Snapshot {
    by_hash: HashMap<KeyHash, Caller>,
    /// The ids in `by_hash`, for revocation watchers.
    ids: HashSet<Uuid>,
}

impl Snapshot {
    fn new(by_hash: HashMap<KeyHash, Caller>) -> Self {
        let ids = by_hash.values().map(|c| c.key_id).collect();
        Self { by_hash, ids }
    }
}

/// The keys this instance accepts.
pub struct KeySet {
    /// Accepted keys; replaced whole by each reload, which wakes the
    /// revocation watchers.
    keys: watch::Sender<Arc<Snapshot>>,
    /// A key is required even when none exists (a listener is not loopback).
    always_required: bool,
    touches: Mutex<Touches>,
}

impl KeySet {
    /// An empty set (auth off unless `always_required`): for tests of the
    /// pure logic and for tools that never serve.
    pub fn empty(always_required: bool) -> Self {
        Self {
            keys: watch::Sender::new(Arc::default()),
            always_required,
            touches: Mutex::default(),
        }
    }

    /// Loads the current keys from the database.
    pub async fn load(pool: &PgPool, always_required: bool) -> Result<Arc<Self>> {
        let set = Arc::new(Self::empty(always_required));
        set.refresh(pool).await?;
        Ok(set)
    }

    /// True when no key exists (auth is then off on loopback servers).
    pub fn is_empty(&self) -> bool {
        self.snapshot().by_hash.is_empty()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.keys.borrow().clone()
    }

    fn replace(&self, keys: HashMap<KeyHash, Caller>) {
        self.keys.send_replace(Arc::new(Snapshot::new(keys)));
    }

    /// Resolves once `key_id` is no longer an accepted key (revoked, as
    /// seen by a reload); at once if it is not one now. Never resolves for
    /// a key that stays, even if the set is dropped.
    pub fn revoked(&self, key_id: Uuid) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut updates = self.keys.subscribe();
        async move {
            if updates
                .wait_for(|snapshot| !snapshot.ids.contains(&key_id))
                .await
                .is_err()
            {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Replaces the set with the database's keys and writes the queued
    /// `last_used_at` updates.
    pub async fn refresh(&self, pool: &PgPool) -> Result<()> {
        let mut conn = db::connection(pool).await?;
        let active = db::keys::active(&mut conn).await?;
        let keys: HashMap<KeyHash, Caller> = active
            .into_iter()
            .map(|k| {
                (
                    k.hash,
                    Caller {
                        key_id: k.id,
                        scope: k.scope,
                    },
                )
            })
            .collect();
        self.replace(keys);
        let used = std::mem::take(
            &mut self
                .touches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pending,
        );
        db::keys::touch(&mut conn, &used).await
    }

    /// Reloads every `interval` until `stop`.
    pub async fn run(self: Arc<Self>, pool: PgPool, interval: Duration, stop: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.refresh(&pool).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("API keys reloaded again");
                }
                // Logged once per outage; the previous keys stay in force.
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot reload API keys; keeping the previous set");
                }
                Ok(()) | Err(_) => {}
            }
        }
    }

    /// Decides a call that needs `required`, given its `authorization`
    /// header. `Ok(None)`: auth is off (no keys, loopback only).
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        required: Scope,
    ) -> Result<Option<Caller>> {
        let keys = self.snapshot();
        if keys.by_hash.is_empty() && !self.always_required {
            return Ok(None);
        }
        let header = authorization.ok_or_else(|| {
            Error::Unauthenticated("missing `authorization: Bearer <API key>`".into())
        })?;
        let key = bearer_token(header)?;
        let caller = *keys
            .by_hash
            .get(&hash_key(key))
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked API key".into()))?;
        if !caller.scope.allows(required) {
            return Err(Error::PermissionDenied(format!(
                "API key {} has scope `{}`; this call needs `{}`",
                caller.key_id,
                caller.scope.as_str(),
                required.as_str()
            )));
        }
        self.note_use(caller.key_id);
        Ok(Some(caller))
    }

    fn note_use(&self, id: Uuid) {
        let now = Instant::now();
        let mut touches = self
            .touches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = touches
            .last
            .get(&id)
            .is_none_or(|last| now.duration_since(*last) >= TOUCH_EVERY);
        if due {
            touches.last.insert(id, now);
            touches.pending.push(id);
        }
    }
}

/// The key of an `authorization: Bearer <key>` header value.
fn bearer_token(header: &[u8]) -> Result<&str> {
    let text = std::str::from_utf8(header)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(|| Error::Unauthenticated("the authorization header is not ASCII".into()))?;
    match text.trim().split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Ok(key.trim())
        }
        _ => Err(Error::Unauthenticated(
            "the authorization header must be `Bearer <API key>`".into(),
        )),
    }
}

/// How a stream of a revoked key ends.
pub fn revoked_status(key_id: Uuid) -> tonic::Status {
    Error::Unauthenticated(format!(
        "API key {key_id} was revoked: this stream is ended; reconnect with a valid key"
    ))
    .into()
}

/// Refuses to serve beyond loopback while no key exists (SPEC §6).
pub fn check_exposure(keys: &KeySet, addrs: &[SocketAddr]) -> Result<()> {
    let exposed: Vec<String> = addrs
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if exposed.is_empty() || !keys.is_empty() {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "refusing to listen on {} without API keys: anyone could read and write your data. \
         Create a key first with `pulse keys create --scope admin --name ops` \
         (same --database-url), or listen on a loopback address such as 127.0.0.1",
        exposed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(scope: Scope) -> (KeySet, String) {
        let set = KeySet::empty(false);
        let key = "pulse_test".to_owned();
        let caller = Caller {
            key_id: Uuid::now_v7(),
            scope,
        };
        set.replace(HashMap::from([(hash_key(&key), caller)]));
        (set, key)
    }

    #[tokio::test]
    async fn revocation_is_announced_to_watchers() {
        let (set, key) = set_with(Scope::Ingest);
        let caller = set
            .authorize(Some(format!("Bearer {key}").as_bytes()), Scope::Ingest)
            .unwrap()
            .unwrap();
        let revoked = tokio::spawn(set_revoked(&set, caller.key_id));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!revoked.is_finished(), "a live key is not revoked");
        // A reload that keeps the key changes nothing.
        set.replace(set.snapshot().by_hash.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!revoked.is_finished());
        set.replace(HashMap::new());
        tokio::time::timeout(Duration::from_secs(1), revoked)
            .await
            .expect("the watcher wakes")
            .unwrap();
        // Already gone: resolves at once.
        tokio::time::timeout(Duration::from_millis(100), set.revoked(caller.key_id))
            .await
            .expect("at once");
    }

    fn set_revoked(set: &KeySet, id: Uuid) -> impl Future<Output = ()> + Send + 'static {
        set.revoked(id)
    }

    #[test]
    fn no_keys_means_open_unless_required() {
        assert_eq!(
            KeySet::empty(false).authorize(None, Scope::Admin).unwrap(),
            None
        );
        let err = KeySet::empty(true)
            .authorize(None, Scope::Query)
            .unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)));
    }

    #[test]
    fn keys_are_checked_for_presence_validity_and_scope() {
        let (set, key) = set_with(Scope::Query);
        let bearer = format!("Bearer {key}");
        assert!(matches!(
            set.authorize(None, Scope::Query),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            set.authorize(Some(b"Bearer pulse_other"), Scope::Query),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            set.authorize(Some(key.as_bytes()), Scope::Query),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            set.authorize(Some(b"Bearer \xff\xfe"), Scope::Query),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            set.authorize(Some(bearer.as_bytes()), Scope::Ingest),
            Err(Error::PermissionDenied(_))
        ));
        let caller = set
            .authorize(Some(bearer.as_bytes()), Scope::Query)
            .unwrap();
        assert_eq!(caller.map(|c| c.scope), Some(Scope::Query));
        let lower = format!("bearer {key}");
        assert!(set.authorize(Some(lower.as_bytes()), Scope::Query).is_ok());
    }

    #[test]
    fn uses_are_queued_once_a_minute() {
        let (set, key) = set_with(Scope::Admin);
        let bearer = format!("Bearer {key}");
        for _ in 0..5 {
            set.authorize(Some(bearer.as_bytes()), Scope::Ingest)
                .unwrap();
        }
        assert_eq!(set.touches.lock().unwrap().pending.len(), 1);
    }

    #[test]
    fn exposure_needs_a_key() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(check_exposure(&KeySet::empty(false), &[loopback, loopback]).is_ok());
        let err = check_exposure(&KeySet::empty(false), &[any, loopback]).unwrap_err();
        assert!(
            err.to_string()
                .contains("pulse keys create --scope admin --name ops")
        );
        let (set, _) = set_with(Scope::Ingest);
        assert!(check_exposure(&set, &[any]).is_ok());
    }
}

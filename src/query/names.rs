//! Names of event types and dimension values, cached per process.
//!
//! Rollups store ids; answers show names. Ids never change meaning
//! (`event_types` and `dimension_values` rows are never deleted or
//! updated), so a cached pair is valid forever. Only positive lookups are
//! cached: a name unknown now may be registered a moment later, and an
//! event acknowledged before a request must be counted by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use diesel_async::AsyncPgConnection;

use crate::db::metrics as sql;
use crate::error::Result;

/// Dimension values kept before the cache starts over.
const MAX_VALUES: usize = 200_000;

/// Event types by id and by name.
#[derive(Debug, Default, Clone)]
pub struct TypeNames {
    pub by_id: HashMap<i16, String>,
    pub by_name: HashMap<String, i16>,
}

#[derive(Default)]
pub struct Names {
    types: RwLock<Arc<TypeNames>>,
    values: Mutex<HashMap<i32, Arc<str>>>,
    value_ids: Mutex<HashMap<(i16, String), i32>>,
}

impl Names {
    /// Every event type, reloaded when `names` holds one not known yet.
    pub async fn types_with(
        &self,
        conn: &mut AsyncPgConnection,
        names: &[String],
        ids: &[i16],
    ) -> Result<Arc<TypeNames>> {
        let current = self.types.read().map(|t| t.clone()).unwrap_or_default();
        let complete = names.iter().all(|n| current.by_name.contains_key(n))
            && ids.iter().all(|i| current.by_id.contains_key(i))
            && !current.by_id.is_empty();
        if complete {
            return Ok(current);
        }
        let rows = sql::event_types(conn).await?;
        let loaded = Arc::new(TypeNames {
            by_id: rows.iter().map(|(i, n)| (*i, n.clone())).collect(),
            by_name: rows.into_iter().map(|(i, n)| (n, i)).collect(),
        });
        if let Ok(mut slot) = self.types.write() {
            *slot = loaded.clone();
        }
        Ok(loaded)
    }

    /// Every event type known to this process (loaded at first use).
    pub async fn types(&self, conn: &mut AsyncPgConnection) -> Result<Arc<TypeNames>> {
        self.types_with(conn, &[], &[]).await
    }

    /// The id of a dimension value, if any event carried it.
    pub async fn value_id(
        &self,
        conn: &mut AsyncPgConnection,
        dimension: i16,
        value: &str,
    ) -> Result<Option<i32>> {
        let key = (dimension, value.to_owned());
        if let Some(id) = self
            .value_ids
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
        {
            return Ok(Some(id));
        }
        let id = sql::value_id(conn, dimension, value).await?;
        if let (Some(id), Ok(mut map)) = (id, self.value_ids.lock()) {
            if map.len() >= MAX_VALUES {
                map.clear();
            }
            map.insert(key, id);
        }
        Ok(id)
    }

    /// The strings of dimension values (ids never seen are left out).
    pub async fn values(
        &self,
        conn: &mut AsyncPgConnection,
        ids: &[i32],
    ) -> Result<HashMap<i32, Arc<str>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        if let Ok(map) = self.values.lock() {
            for id in ids {
                match map.get(id) {
                    Some(name) => {
                        out.insert(*id, name.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let found = sql::value_names(conn, &missing).await?;
        let mut map = self.values.lock().ok();
        for (id, name) in found {
            let name: Arc<str> = name.into();
            if let Some(map) = map.as_mut() {
                if map.len() >= MAX_VALUES {
                    map.clear();
                }
                map.insert(id, name.clone());
            }
            out.insert(id, name);
        }
        Ok(out)
    }
}

//! Questions about the PostgreSQL server itself (does a database exist,
//! does it answer), which Diesel's DSL has no table for.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::error::Result;

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// Whether a database of that name exists on the server.
pub async fn database_exists(conn: &mut AsyncPgConnection, name: &str) -> Result<bool> {
    let row: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(name)
            .get_result(conn)
            .await?;
    Ok(row.exists)
}

/// A cheap round trip that proves the database answers.
pub async fn ping(conn: &mut AsyncPgConnection) -> Result<()> {
    diesel::sql_query("SELECT 1").execute(conn).await?;
    Ok(())
}

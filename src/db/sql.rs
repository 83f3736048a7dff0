//! Constant SQL with bind parameters that each connection prepares once.
//!
//! Diesel's `sql_query` marks itself unsafe to cache, so diesel-async
//! prepares it anew on every call: a Parse round trip, then the statement is
//! analysed and planned again. The hot statements of GetMetrics are large
//! (a dozen `UNION ALL` branches): that preparation cost more than running
//! them. [`Sql`] is the same idea (a constant text with `$1`…`$n`) as a
//! query diesel-async caches per connection, keyed by its text.
//!
//! Each `$k` in the text becomes a bind of the k-th value, so a value used
//! twice is sent twice. Only text written in this crate goes here: `$`
//! followed by digits must mean a parameter (no dollar quoting).

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

trait Bind: Send {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Value<ST, T> {
    value: T,
    sql_type: PhantomData<fn() -> ST>,
}

impl<ST, T> Bind for Value<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg> + Send,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.value)
    }
}

/// A constant SQL text and its bind values, prepared once per connection.
pub struct Sql<'a> {
    text: &'a str,
    binds: Vec<Box<dyn Bind + 'a>>,
}

impl<'a> Sql<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            binds: Vec::new(),
        }
    }

    /// Binds the next parameter (`$1`, then `$2`, …).
    pub fn bind<ST, T>(mut self, value: T) -> Self
    where
        Pg: HasSqlType<ST>,
        T: ToSql<ST, Pg> + Send + 'a,
        ST: 'a,
    {
        self.binds.push(Box::new(Value::<ST, T> {
            value,
            sql_type: PhantomData,
        }));
        self
    }
}

impl QueryFragment<Pg> for Sql<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.text;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits == 0 {
                out.push_sql(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
            out.push_sql(&rest[..at]);
            let k: usize = rest[at + 1..at + 1 + digits].parse().unwrap_or(0);
            let bind = k
                .checked_sub(1)
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!("${k} has no bound value").into(),
                    )
                })?;
            bind.push(&mut out)?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl QueryId for Sql<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Sql<'_> {
    type SqlType = Untyped;
}

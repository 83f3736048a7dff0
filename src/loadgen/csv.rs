//! `pulse loadgen --write-csv DIR`: the generated rows as CSV files for
//! `psql \copy` into the core schema, streamed through buffered writers.
//!
//! | file | columns | load with |
//! |---|---|---|
//! | `users.csv` | `external_id` | `\copy users (external_id) FROM 'users.csv' (FORMAT csv, HEADER)` |
//! | `events.csv` | `event_id,timestamp,user_id,event_type_id,data` | `\copy events FROM 'events.csv' (FORMAT csv, HEADER)` |
//! | `pageviews.csv` | `event_id,user_id,page_url` | `\copy pageviews (event_id, user_id, page_url) FROM …` |
//! | `purchases.csv` | `event_id,user_id,product_id,quantity,amount` | `\copy purchases (event_id, user_id, product_id, quantity, amount) FROM …` |
//!
//! **Assumption**: `user_id` in the fact files is the surrogate key
//! `users.user_id`, taken to be *user number + 1*. That holds when
//! `users.csv` (every user `0..--users`, in number order) is the first thing
//! loaded into an empty `users` table of a freshly migrated database, whose
//! identity column then counts 1, 2, 3, … A server that sees these users over
//! gRPC afterwards finds them by `external_id` and uses the same keys.
//! `event_type_id` is 1 = pageview, 2 = click, 3 = purchase, 4 = sign_up, as
//! the core migration seeds them.
//!
//! `data` is the JSON the server would store for the same
//! `google.protobuf.Struct`, so a `\copy` and an `IngestEvents` run of the same
//! seed produce the same rows (the server shifts timestamps by the
//! transmission delay when it corrects clock skew with `sent_at`; nothing
//! else differs). Each file is written as `NAME.tmp` and renamed when
//! complete, so a present file is always a whole one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::generate::user_external_id;
use super::generate::{
    EventKind, GenDetail, GenEvent, Generator, amount_string, page_url, product_id,
};
use crate::error::{Error, Result};

/// Rows written per file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CsvSummary {
    pub users: u64,
    pub events: u64,
    pub pageviews: u64,
    pub purchases: u64,
    pub seconds: f64,
}

impl CsvSummary {
    pub fn print(&self, dir: &Path) {
        println!(
            "wrote {} users, {} events, {} pageviews, {} purchases to {} in {:.1} s",
            self.users,
            self.events,
            self.pageviews,
            self.purchases,
            dir.display(),
            self.seconds
        );
    }
}

/// A CSV file being written to `NAME.tmp`.
struct CsvFile {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
}

fn io_error(path: &Path, error: std::io::Error) -> Error {
    Error::Internal(format!("writing {}: {error}", path.display()).into())
}

impl CsvFile {
    fn create(dir: &Path, name: &str, header: &str) -> Result<Self> {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        writeln!(out, "{header}").map_err(|e| io_error(&tmp, e))?;
        Ok(Self { path, tmp, out })
    }

    fn finish(self) -> Result<()> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_error(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io_error(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io_error(&self.path, e))
    }
}

/// Writes `value` as one CSV field, quoted when it holds a quote, comma or
/// line break. (An unquoted empty field is NULL to PostgreSQL; no generated
/// value is empty.)
fn field(out: &mut impl Write, value: &str) -> std::io::Result<()> {
    if value.contains(['"', ',', '\n', '\r']) {
        out.write_all(b"\"")?;
        out.write_all(value.replace('"', "\"\"").as_bytes())?;
        out.write_all(b"\"")
    } else {
        out.write_all(value.as_bytes())
    }
}

/// Writes users `0..users` and events `0..events` of `generator` into `dir`
/// (created if missing).
pub fn write_all(generator: &Generator, dir: &Path, events: u64, users: u64) -> Result<CsvSummary> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let mut summary = CsvSummary::default();

    let users_csv = write_users(dir, users)?;
    summary.users = users;

    let mut facts = FactFiles::create(dir)?;
    for index in 0..events {
        facts.write(&generator.event(index), &mut summary)?;
    }

    users_csv.finish()?;
    facts.finish()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// `users.csv` with users `0..users`, written but not yet finished.
fn write_users(dir: &Path, users: u64) -> Result<CsvFile> {
    let mut users_csv = CsvFile::create(dir, "users.csv", "external_id")?;
    for n in 0..users {
        writeln!(users_csv.out, "{}", user_external_id(n))
            .map_err(|e| io_error(&users_csv.tmp, e))?;
    }
    Ok(users_csv)
}

/// The files of the fact tables: an event's row goes to `events.csv`, and
/// a pageview's or purchase's detail to its own file.
struct FactFiles {
    events: CsvFile,
    pageviews: CsvFile,
    purchases: CsvFile,
}

impl FactFiles {
    /// Creates the three files with their headers.
    fn create(dir: &Path) -> Result<Self> {
        let events = CsvFile::create(
            dir,
            "events.csv",
            "event_id,timestamp,user_id,event_type_id,data",
        )?;
        let pageviews = CsvFile::create(dir, "pageviews.csv", "event_id,user_id,page_url")?;
        let purchases = CsvFile::create(
            dir,
            "purchases.csv",
            "event_id,user_id,product_id,quantity,amount",
        )?;
        Ok(Self {
            events,
            pageviews,
            purchases,
        })
    }

    /// Writes `event`'s rows and counts them in `summary`.
    fn write(&mut self, event: &GenEvent, summary: &mut CsvSummary) -> Result<()> {
        let Some(timestamp) = event.timestamp else {
            return Err(Error::Internal(
                "CSV rows need explicit timestamps (a --days or --base-time plan)".into(),
            ));
        };
        // The surrogate key: user number + 1 (see the module docs).
        let user_id = event.user + 1;
        let id = event.event_id;
        {
            let out = &mut self.events.out;
            write!(
                out,
                "{id},{},{user_id},{},",
                timestamp.format("%Y-%m-%d %H:%M:%S%.6f+00"),
                event.kind.type_id()
            )
            .and_then(|()| field(out, &event.data_json()))
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| io_error(&self.events.tmp, e))?;
        }
        summary.events += 1;
        match (&event.detail, event.kind) {
            (GenDetail::Pageview { page }, EventKind::Pageview) => {
                let out = &mut self.pageviews.out;
                write!(out, "{id},{user_id},")
                    .and_then(|()| field(out, &page_url(*page)))
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| io_error(&self.pageviews.tmp, e))?;
                summary.pageviews += 1;
            }
            (
                GenDetail::Purchase {
                    product,
                    quantity,
                    amount_cents,
                },
                EventKind::Purchase,
            ) => {
                let out = &mut self.purchases.out;
                write!(out, "{id},{user_id},")
                    .and_then(|()| field(out, &product_id(*product)))
                    .and_then(|()| writeln!(out, ",{quantity},{}", amount_string(*amount_cents)))
                    .map_err(|e| io_error(&self.purchases.tmp, e))?;
                summary.purchases += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// Finishes `events.csv`, `pageviews.csv` and `purchases.csv`, in that order.
    fn finish(self) -> Result<()> {
        self.events.finish()?;
        self.pageviews.finish()?;
        self.purchases.finish()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::loadgen::generate::{GeneratorConfig, TimePlan, UuidKind};

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        field(&mut out, "/products/1").unwrap();
        out.push(b'|');
        field(&mut out, r#"{"a":"b","c":"d"}"#).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"/products/1|"{""a"":""b"",""c"":""d""}""#
        );
    }

    #[test]
    fn files_hold_one_row_per_event_and_detail() {
        let dir = std::env::temp_dir().join(format!("pulse-loadgen-csv-{}", std::process::id()));
        let generator = Generator::new(GeneratorConfig {
            seed: 9,
            users: 50,
            pages: 10,
            products: 5,
            zipf_exponent: 1.0,
            uuid: UuidKind::V7,
            time: TimePlan::Sequence {
                base: Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
            },
        });
        let summary = write_all(&generator, &dir, 1_000, 50).unwrap();
        let lines = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .lines()
                .count() as u64
        };
        assert_eq!(lines("users.csv"), 51);
        assert_eq!(lines("events.csv"), 1_001);
        assert_eq!(lines("pageviews.csv"), summary.pageviews + 1);
        assert_eq!(lines("purchases.csv"), summary.purchases + 1);
        assert!(summary.pageviews > 500 && summary.purchases > 50);
        let events = std::fs::read_to_string(dir.join("events.csv")).unwrap();
        let first = events.lines().nth(1).unwrap();
        let event = generator.event(0);
        assert!(first.starts_with(&format!(
            "{},2026-12-01 12:00:00.000000+00,{},{},\"{{",
            event.event_id,
            event.user + 1,
            event.kind.type_id()
        )));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

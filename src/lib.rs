//! Pulse: real-time product analytics over gRPC and PostgreSQL.
//!
//! Backend services stream events in (`IngestService`), internal tools read
//! metrics out (`QueryService`), and on-call people watch alerts
//! (`AlertService`). See `ARCHITECTURE.md` for the data flow and the reasons
//! behind each choice.
//!
//! # Layout
//!
//! * [`cli`] parses the command line; [`config`] declares every setting once.
//! * [`app`] wires a server: database, pool, listeners, services, shutdown.
//! * [`grpc`] is the gRPC transport (generated code, handlers, the one
//!   proto ⇄ domain conversion module, the health watcher); [`http`] serves
//!   the dashboard, its JSON API and `/metrics`.
//! * [`domain`] holds validated types and rules, with no I/O.
//! * [`db`] is storage: the pool, migrations, and one function per query.
//! * [`query`] answers metric queries for every transport: [`query::Queries`]
//!   (budget, replica routing), the plan, the bucket cache, the merge into
//!   ranked series.
//! * [`bench`] is `pulse bench-queries`, the GetMetrics latency benchmark.
//! * [`jobs`] are background loops of `serve` (rollup folding, retention,
//!   VACUUM); [`supervise`] stops the process when one of them ends early.
//! * [`alerts`] runs alerting inside `serve`: the evaluator (one instance
//!   at a time) and the hub that streams notifications to subscribers.
//! * [`auth`] is API-key authentication and [`quota`] the per-key rate
//!   and stream limits, shared by both transports.
//! * [`tls`] reads and checks the optional TLS certificate and key;
//!   [`listen`] caps each listener's connections and closes those that
//!   never finish a handshake or sit idle.
//! * [`error`] is the error policy; [`telemetry`] is logging and Pulse's own
//!   Prometheus counters (not the product metrics);
//!   [`text`] escapes client text for logs and terminal tables;
//!   [`redact`] keeps passwords in database URLs out of what is printed.
//! * [`loadgen`] is `pulse loadgen`: a deterministic event generator that
//!   drives `IngestEvents` or writes the same rows as CSV for `psql \copy`.
//! * [`demo`] is `pulse demo`: a server plus synthetic traffic and alert
//!   rules, so the dashboard comes alive with one command.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod jobs;
pub mod listen;
pub mod loadgen;
pub mod query;
pub mod quota;
pub mod redact;
pub mod supervise;
pub mod telemetry;
pub mod text;
pub mod tls;

//! Alerting at run time, inside `pulse serve`.
//!
//! * [`evaluator`]: on exactly one instance at a time (a PostgreSQL session
//!   lock), evaluates every enabled rule each tick and stores transitions
//!   with their notifications.
//! * [`hub`]: on every instance, LISTENs for stored notifications and
//!   delivers them to this instance's `WatchAlerts` subscribers, replaying
//!   from the table whatever a subscriber has not seen.
//! * [`clock`]: the evaluator's time, injected so tests control it.
//!
//! The rules themselves (validation, the state machine, what a tick writes)
//! are pure code in `domain/alert.rs`; storage is `db/alerts.rs`.

pub mod clock;
pub mod evaluator;
pub mod hub;

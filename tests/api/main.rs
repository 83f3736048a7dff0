//! Black-box tests: each test gets a fresh database cloned from a migrated
//! template and a Pulse server on port 0, and talks to it over a real socket.

// A test is one scenario read top to bottom; splitting it would scatter it.
#![allow(clippy::too_many_lines)]

mod abuse;
mod alerts;
mod cli;
mod connections;
mod dashboard;
mod docs;
mod faults;
mod foundation;
mod hardening;
mod health;
mod helpers;
mod hostile;
mod ingest;
mod isolation;
mod maintenance;
mod metrics;
mod registry;
mod replica;
mod security;
mod tls;

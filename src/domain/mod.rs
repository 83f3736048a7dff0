//! Domain types and rules: validated values and pure functions, no I/O, no
//! tonic, no diesel. Transport code converts into these at the edge
//! (`grpc/convert.rs`), storage code takes only these.

#[macro_use]
pub mod names;

pub mod alert;
pub mod event;
pub mod key;
pub mod metric;
pub mod user;

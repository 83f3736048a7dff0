//! The error policy: one error type, [`Error`], that every request path
//! returns upward, and one mapping from it to a gRPC code, an HTTP status
//! and the code's name.
//!
//! * Domain code (`domain/`) reports invalid input as [`Error::InvalidArgument`]
//!   with a message a person can act on; it never sees tonic or diesel.
//! * Storage code (`db/`) converts diesel and pool errors with `From`,
//!   classified by what diesel knows of the SQLSTATE (below): a missing row
//!   becomes `NotFound`, a lost connection or a server going down becomes
//!   `Unavailable` (the client may retry), anything else `Internal`. The
//!   database error stays attached as the [`source`](std::error::Error::source).
//! * Transport code (`grpc/`, `http/`) converts [`Error`] into `tonic::Status`
//!   or an HTTP response at the last moment and logs nothing itself: the
//!   per-RPC log line records the status once, where the call ends.
//! * Start-up and the CLI (`main.rs`, `commands.rs`, `app.rs`) use
//!   `anyhow` with context ("connecting to …: …"), since what fails there is
//!   reported to a person once and never mapped to a status.
//!
//! `Internal` hides its detail from clients; [`Error::log_internal`] logs it
//! server-side with its whole chain of causes.
//!
//! SQLSTATE: diesel-async 0.9 keeps the SQLSTATE of eight classes as a
//! [`DatabaseErrorKind`] (unique, foreign-key, not-null and check
//! violations, serialization failure, read-only transaction, …) and
//! reports a connection that no longer answers as `ClosedConnection` or
//! `UnableToSendCommand`; every other code arrives as `Unknown` with only
//! PostgreSQL's message. For those, [`is_transient_message`] is the one
//! place that reads text (the server's messages for shutdown, recovery and
//! deadlock, in the server's `lc_messages`, English by default); the query
//! budget does not depend on it (`query/service.rs` decides by its own
//! timer).

use std::fmt;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::quota::Exceeded;

/// A boxed cause, kept for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A message for people and, where there is one, the error behind it.
pub struct Cause {
    message: String,
    source: Option<BoxError>,
}

impl Cause {
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// The message, then each cause: "reading x: connection reset".
impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        let mut next = self.source.as_deref().map(|e| e as &dyn std::error::Error);
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cause")
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

/// What went wrong, by what the caller can do about it.
#[derive(Debug)]
pub enum Error {
    /// The request is wrong and retrying it unchanged will not help.
    InvalidArgument(String),
    /// The named thing does not exist.
    NotFound(String),
    /// A limit was hit (size, budget); the message says which.
    ResourceExhausted(String),
    /// A per-key rate or concurrency limit was hit: `RESOURCE_EXHAUSTED`
    /// with how long to wait (gRPC `retry-after`/`retry-after-ms` metadata,
    /// HTTP `Retry-After`).
    Throttled(Exceeded),
    /// The database is unreachable or overloaded; retrying later may work.
    Unavailable(Cause),
    /// No valid API key came with the call (missing, unknown or revoked).
    Unauthenticated(String),
    /// The API key is valid but its scope does not cover the call.
    PermissionDenied(String),
    /// The system is not in a state the operation needs (e.g. serving beyond
    /// loopback with no API key).
    FailedPrecondition(String),
    /// The RPC exists in the contract but this version does not serve it.
    Unimplemented(String),
    /// A bug or an unexpected database answer; details stay in the logs.
    Internal(Cause),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::ResourceExhausted(m)
            | Error::Unauthenticated(m)
            | Error::PermissionDenied(m)
            | Error::FailedPrecondition(m)
            | Error::Unimplemented(m) => f.write_str(m),
            Error::Throttled(exceeded) => f.write_str(&exceeded.message),
            Error::Unavailable(cause) => f.write_str(&cause.message),
            Error::Internal(cause) => write!(f, "internal error: {}", cause.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unavailable(cause) | Error::Internal(cause) => cause
                .source
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            _ => None,
        }
    }
}

impl Error {
    /// An internal error with its cause: "`context`: `source`" in the log.
    pub fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Internal(Cause::new(context, source))
    }

    /// A retryable failure with its cause.
    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable(Cause::new(context, source))
    }

    /// Logs an `Internal` error's detail and causes (once, where the call
    /// ends); other errors are the client's to read.
    pub fn log_internal(&self) {
        if let Error::Internal(cause) = self {
            tracing::error!(error = %cause, "internal error");
        }
    }

    /// The message a client may read: `Internal` details stay in the log.
    pub fn client_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error (details are in the server log)".to_owned(),
            other => client_message(other.to_string()),
        }
    }

    /// The gRPC code's canonical name, which the JSON API uses too.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::ResourceExhausted(_) | Error::Throttled(_) => "RESOURCE_EXHAUSTED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Error::Unimplemented(_) => "UNIMPLEMENTED",
            Error::Internal(_) => "INTERNAL",
        }
    }
}

/// The shorthand every layer uses.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::ResourceExhausted(_) | Error::Throttled(_) => tonic::Code::ResourceExhausted,
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::Unimplemented(_) => tonic::Code::Unimplemented,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The HTTP status of this error, for the dashboard's JSON API.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Error::InvalidArgument(_) => http::StatusCode::BAD_REQUEST,
            Error::NotFound(_) => http::StatusCode::NOT_FOUND,
            Error::ResourceExhausted(_) | Error::Throttled(_) => {
                http::StatusCode::TOO_MANY_REQUESTS
            }
            Error::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Error::Unauthenticated(_) => http::StatusCode::UNAUTHORIZED,
            Error::PermissionDenied(_) => http::StatusCode::FORBIDDEN,
            Error::FailedPrecondition(_) => http::StatusCode::PRECONDITION_FAILED,
            Error::Unimplemented(_) => http::StatusCode::NOT_IMPLEMENTED,
            Error::Internal(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        error.log_internal();
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Error::Throttled(exceeded) = &error {
            metadata.insert("retry-after", exceeded.retry_after_seconds().into());
            let millis = u64::try_from(exceeded.retry_after.as_millis()).unwrap_or(u64::MAX);
            metadata.insert("retry-after-ms", millis.into());
        }
        tonic::Status::with_metadata(error.grpc_code(), error.client_message(), metadata)
    }
}

impl From<Exceeded> for Error {
    fn from(exceeded: Exceeded) -> Self {
        Error::Throttled(exceeded)
    }
}

/// Longest error message sent to a client. Messages may quote the input
/// (`id `…` is not a UUID`); a 100 KB id must not become a 100 KB
/// `grpc-message` header, which the client would refuse to read.
pub const MAX_CLIENT_MESSAGE: usize = 1024;

/// `message`, cut to [`MAX_CLIENT_MESSAGE`] bytes on a character boundary.
pub fn client_message(message: String) -> String {
    if message.len() <= MAX_CLIENT_MESSAGE {
        return message;
    }
    format!("{}…", crate::text::truncate(&message, MAX_CLIENT_MESSAGE))
}

impl From<DieselError> for Error {
    fn from(error: DieselError) -> Self {
        let context = match &error {
            DieselError::NotFound => return Error::NotFound("not found".into()),
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => Some("database connection lost"),
            // 25006: a replica (or a primary being demoted) refuses writes.
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => {
                Some("database is read-only")
            }
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
                if is_transient_message(info.message()) =>
            {
                Some("database unavailable")
            }
            _ => None,
        };
        match context {
            Some(context) => Error::unavailable(context, error),
            None => Error::internal("database error", error),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for Error {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        use deadpool::managed::PoolError;
        match error {
            PoolError::Timeout(_) => {
                Error::Unavailable("no database connection free in time; retry later".into())
            }
            PoolError::Closed => Error::Unavailable("server is shutting down".into()),
            other => Error::unavailable("database unreachable", other),
        }
    }
}

/// PostgreSQL's messages for the SQLSTATEs diesel-async reports as
/// `Unknown` that are worth a retry, not a bug report: 57P01–57P03
/// (shutdown, crash, not yet accepting connections), 57014 by
/// `statement_timeout`, 40P01 (deadlock), and a connection the driver saw
/// close.
fn is_transient_message(message: &str) -> bool {
    const TRANSIENT: [&str; 6] = [
        "terminating connection",
        "connection closed",
        "the database system is",
        "server closed the connection",
        "canceling statement due to statement timeout",
        "deadlock detected",
    ];
    TRANSIENT.iter().any(|needle| message.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_policy() {
        assert_eq!(
            Error::InvalidArgument("x".into()).grpc_code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Error::Unavailable("x".into()).grpc_code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            Error::ResourceExhausted("x".into()).http_status(),
            http::StatusCode::TOO_MANY_REQUESTS
        );
        let status: tonic::Status = Error::Internal("secret detail".into()).into();
        assert!(!status.message().contains("secret"));
        assert_eq!(Error::NotFound("x".into()).code_name(), "NOT_FOUND");
    }

    #[test]
    fn diesel_errors_map_to_the_right_class() {
        assert!(matches!(
            Error::from(DieselError::NotFound),
            Error::NotFound(_)
        ));
        assert!(matches!(
            Error::from(DieselError::RollbackTransaction),
            Error::Internal(_)
        ));
        let lost = Error::from(DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("gone".to_owned()),
        ));
        assert!(matches!(lost, Error::Unavailable(_)));
        // The database error stays attached, for the log.
        assert!(std::error::Error::source(&lost).is_some());
        let Error::Unavailable(cause) = &lost else {
            unreachable!()
        };
        assert!(cause.to_string().contains("gone"), "{cause}");
    }
}

//! The error policy: one error type, [`Error`], that every layer returns
//! upward, and one mapping from it to a gRPC code and an HTTP status.
//!
//! * Domain code (`domain/`) reports invalid input as [`Error::InvalidArgument`]
//!   with a message a person can act on; it never sees tonic or diesel.
//! * Storage code (`db/`) converts diesel and pool errors with `From`: a
//!   missing row becomes `NotFound`, a pool timeout or a closed connection
//!   becomes `Unavailable` (the client may retry), anything else `Internal`.
//! * Transport code (`grpc/`, `http/`) converts [`Error`] into `tonic::Status`
//!   or an HTTP response at the last moment and logs nothing itself: the
//!   per-RPC log line records the status once, where the call ends.
//!
//! `Internal` hides its detail from clients (it is logged server-side).

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What went wrong, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong and retrying it unchanged will not help.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A limit was hit (size, rate, concurrency); the message says which.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The database is unreachable or overloaded; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// No valid API key came with the call (missing, unknown or revoked).
    #[error("{0}")]
    Unauthenticated(String),
    /// The API key is valid but its scope does not cover the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// The system is not in a state the operation needs (e.g. serving beyond
    /// loopback with no API key).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The RPC exists in the contract but this version does not serve it.
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected database answer; details stay in the logs.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The shorthand every layer uses.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
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
            Error::ResourceExhausted(_) => http::StatusCode::TOO_MANY_REQUESTS,
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
        match &error {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                tonic::Status::internal("internal error (details are in the server log)")
            }
            other => tonic::Status::new(other.grpc_code(), client_message(other.to_string())),
        }
    }
}

/// Longest error message sent to a client. Messages may quote the input
/// (`id `…` is not a UUID`); a 100 KB id must not become a 100 KB
/// `grpc-message` header, which the client would refuse to read.
pub const MAX_CLIENT_MESSAGE: usize = 1024;

/// `message`, cut to [`MAX_CLIENT_MESSAGE`] bytes on a character boundary.
pub fn client_message(mut message: String) -> String {
    if message.len() > MAX_CLIENT_MESSAGE {
        let mut end = MAX_CLIENT_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

impl From<DieselError> for Error {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::NotFound => Error::NotFound("not found".into()),
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Error::Unavailable(format!("database connection lost: {}", info.message()))
            }
            DieselError::DatabaseError(DatabaseErrorKind::UnableToSendCommand, info) => {
                Error::Unavailable(format!("database unreachable: {}", info.message()))
            }
            DieselError::DatabaseError(_, ref info) if is_transient_message(info.message()) => {
                Error::Unavailable(format!("database unavailable: {}", info.message()))
            }
            other => Error::Internal(other.to_string()),
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
            other => Error::Unavailable(format!("database unreachable: {other}")),
        }
    }
}

/// Messages PostgreSQL and the driver give while the server restarts or
/// drops connections; they are worth a retry, not a bug report.
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
    }
}

//! A tower layer that honours the client's deadline (`grpc-timeout`) with
//! `DEADLINE_EXCEEDED`.
//!
//! tonic already drops a handler whose `grpc-timeout` has passed, but
//! answers `CANCELLED`. This layer, inside tonic's, ends the call a little
//! earlier ([`MARGIN`], at most a tenth of the timeout) with
//! `DEADLINE_EXCEEDED`, so the client learns why, and the handler's work
//! (its queries, its pool connection) is dropped the same way. It covers
//! what a handler does before its response starts: all of a unary or
//! client-streaming call; a server stream (`WatchAlerts`) runs until the
//! client, which holds the same deadline, goes away.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

/// How much earlier than the client's deadline the call is ended, so the
/// status reaches the client before its own timer fires.
pub const MARGIN: Duration = Duration::from_millis(20);

/// Parses a `grpc-timeout` value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The layer; add it inside the observing layer.
#[derive(Clone, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_timeout(v.as_bytes()));
        let future = self.inner.call(request);
        let Some(timeout) = timeout else {
            return Box::pin(future);
        };
        let fire_after = timeout.saturating_sub(MARGIN.min(timeout / 10));
        Box::pin(async move {
            match tokio::time::timeout(fire_after, future).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the client's deadline ({} ms) passed before the call completed",
                    timeout.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_by_the_grpc_spec() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_timeout(b"123456789m"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b"-1S"), None);
        assert_eq!(parse_timeout(b""), None);
    }
}

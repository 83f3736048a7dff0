//! A tower layer that gives tonic's own request-decoding failures the codes
//! of the contract.
//!
//! tonic rejects a request it cannot decode before any handler runs, as a
//! trailers-only response: a message over `--max-message-bytes` as
//! `OUT_OF_RANGE` (the contract says `RESOURCE_EXHAUSTED`), and a body that
//! is not valid protobuf (invalid UTF-8 in a string, nesting past prost's
//! recursion limit) as `INTERNAL` (it is the client's input:
//! `INVALID_ARGUMENT`). This layer rewrites exactly those two statuses in
//! response headers; everything else passes untouched. (Streams decode in
//! the handler; `grpc/ingest.rs` maps the same errors there.)

use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

/// The status a decoding failure should have had, if `status` is one.
pub fn contract_status(status: &tonic::Status) -> Option<tonic::Status> {
    match status.code() {
        tonic::Code::OutOfRange if status.message().contains("too large") => {
            Some(tonic::Status::resource_exhausted(format!(
                "{}; the limit is PULSE_MAX_MESSAGE_BYTES",
                status.message()
            )))
        }
        tonic::Code::Internal if status.message().starts_with("failed to decode") => {
            Some(tonic::Status::invalid_argument(format!(
                "the request is not a valid protobuf message ({}); strings must be UTF-8 and nesting is limited",
                truncate(status.message(), 200)
            )))
        }
        _ => None,
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The layer; add it inside the observing layer so the log shows the
/// corrected code.
#[derive(Clone, Default)]
pub struct DecodeErrorsLayer;

impl<S> Layer<S> for DecodeErrorsLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DecodeErrors { inner }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct DecodeErrors<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for DecodeErrors<S>
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
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let fixed = tonic::Status::from_header_map(response.headers())
                .as_ref()
                .and_then(contract_status);
            Ok(match fixed {
                Some(status) => status.into_http(),
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decoding_failures_are_rewritten() {
        let big = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
        );
        assert_eq!(
            contract_status(&big).map(|s| s.code()),
            Some(tonic::Code::ResourceExhausted)
        );
        let bad = tonic::Status::internal(
            "failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded",
        );
        assert_eq!(
            contract_status(&bad).map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(contract_status(&tonic::Status::internal("a bug")).is_none());
        assert!(contract_status(&tonic::Status::out_of_range("other")).is_none());
    }
}

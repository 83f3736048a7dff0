//! A tower layer that gives tonic's own length check the code of the
//! contract.
//!
//! tonic rejects a request over `--max-message-bytes` before any handler
//! runs, as a trailers-only `OUT_OF_RANGE` response; the contract says
//! `RESOURCE_EXHAUSTED`. The status is recognised by its code alone: in
//! tonic 0.14 only the message-length checks (`codec/decode.rs`,
//! `codec/encode.rs`) answer `OUT_OF_RANGE`, and no Pulse handler does
//! (the `ingest::whole_stream_limits_answer_with_status_codes` test pins
//! this against the tonic in use).
//! Everything else passes untouched. Invalid protobuf is refused where it
//! is decoded, by [`ContractCodec`](super::codec::ContractCodec). (Streams
//! decode in the handler; `grpc/ingest.rs` maps the same status there.)

use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

/// The status a length-limit failure should have had, if `status` is one.
pub fn contract_status(status: &tonic::Status) -> Option<tonic::Status> {
    (status.code() == tonic::Code::OutOfRange).then(|| {
        tonic::Status::resource_exhausted(format!(
            "{}; the limit is PULSE_MAX_MESSAGE_BYTES",
            crate::text::truncate(status.message(), 200)
        ))
    })
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
    fn only_length_failures_are_rewritten() {
        let big = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
        );
        assert_eq!(
            contract_status(&big).map(|s| s.code()),
            Some(tonic::Code::ResourceExhausted)
        );
        assert!(contract_status(&tonic::Status::internal("a bug")).is_none());
        assert!(contract_status(&tonic::Status::invalid_argument("bad")).is_none());
    }
}

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

use tower::util::MapResponseLayer;

/// The status a length-limit failure should have had, if `status` is one.
pub fn contract_status(status: &tonic::Status) -> Option<tonic::Status> {
    (status.code() == tonic::Code::OutOfRange).then(|| {
        tonic::Status::resource_exhausted(format!(
            "{}; the limit is PULSE_MAX_MESSAGE_BYTES",
            crate::text::truncate(status.message(), 200)
        ))
    })
}

/// `response`, with a length-limit status in its headers rewritten.
fn rewrite<B: Default>(response: http::Response<B>) -> http::Response<B> {
    match tonic::Status::from_header_map(response.headers())
        .as_ref()
        .and_then(contract_status)
    {
        Some(status) => status.into_http(),
        None => response,
    }
}

/// The layer, for responses with body `B`; add it inside the observing
/// layer so the log shows the corrected code.
pub fn layer<B: Default>() -> MapResponseLayer<fn(http::Response<B>) -> http::Response<B>> {
    MapResponseLayer::new(rewrite::<B>)
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

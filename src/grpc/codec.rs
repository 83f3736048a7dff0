//! The codec of Pulse's own services: prost's, except that a message that
//! is not valid protobuf (invalid UTF-8 in a string, nesting past prost's
//! recursion limit, a truncated field) is the client's input and answers
//! `INVALID_ARGUMENT`, where tonic would say `INTERNAL`. The error is made
//! where decoding fails, so nothing downstream reads message texts to
//! classify it. `build.rs` names this codec for every generated service.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

/// [`ProstCodec`] with decoding failures as `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct ContractCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for ContractCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = ContractDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ContractDecoder(self.0.decoder())
    }
}

/// Wraps prost's decoder.
#[derive(Debug)]
pub struct ContractDecoder<D>(D);

impl<D: Decoder<Error = Status>> Decoder for ContractDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message ({}); strings must be UTF-8 and nesting is limited",
                crate::text::truncate(status.message(), 200)
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

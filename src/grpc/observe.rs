//! A tower layer that observes every gRPC call: one log line with its
//! method, status and duration, and the Prometheus request counter and
//! latency histogram.
//!
//! A gRPC status travels either in the response headers (a "trailers-only"
//! error) or in the trailers after the body, so the layer wraps the response
//! body and records the call when the trailers pass by, or when the body is
//! dropped without them (the client went away: `Cancelled`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::telemetry::{RpcLabels, Telemetry};

/// Paths recorded under their own label; anything else is `unknown`, so a
/// client cannot grow the label set without bound.
const KNOWN_PREFIXES: [&str; 5] = [
    "/pulse.v1.IngestService/",
    "/pulse.v1.QueryService/",
    "/pulse.v1.AlertService/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
];

fn method_label(path: &str) -> String {
    let known = path.len() <= 96
        && KNOWN_PREFIXES.iter().any(|prefix| path.starts_with(prefix))
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'.' || b == b'_');
    if known {
        path.to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// The layer; clone it into the tonic server builder.
#[derive(Clone)]
pub struct ObserveLayer {
    telemetry: Arc<Telemetry>,
}

impl ObserveLayer {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

/// Records one call exactly once: when its status is known, or on drop.
struct CallRecord {
    telemetry: Arc<Telemetry>,
    method: String,
    started: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: tonic::Code, message: &str) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.started.elapsed();
        let labels = RpcLabels {
            method: self.method.clone(),
            code: format!("{code:?}"),
        };
        self.telemetry.rpc_requests.get_or_create(&labels).inc();
        self.telemetry
            .rpc_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        match code {
            tonic::Code::Ok => {
                tracing::info!(method = %self.method, code = ?code, duration_ms, "rpc");
            }
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                tracing::error!(method = %self.method, code = ?code, duration_ms, status_message = message, "rpc");
            }
            _ => {
                tracing::warn!(method = %self.method, code = ?code, duration_ms, status_message = message, "rpc");
            }
        }
    }

    fn finish_from(&mut self, headers: &http::HeaderMap) -> bool {
        // `from_header_map` also percent-decodes `grpc-message`.
        match tonic::Status::from_header_map(headers) {
            Some(status) => {
                self.finish(status.code(), status.message());
                true
            }
            None => false,
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(
            tonic::Code::Cancelled,
            "response dropped before its status was sent",
        );
    }
}

pin_project! {
    /// The response body, watched for its trailers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        record: Option<CallRecord>,
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(record) = this.record.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        record.finish_from(trailers);
                    }
                }
                Poll::Ready(Some(Err(_))) => record.finish(tonic::Code::Internal, "body error"),
                Poll::Ready(None) => record.finish(tonic::Code::Ok, ""),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut record = CallRecord {
            telemetry: self.telemetry.clone(),
            method: method_label(request.uri().path()),
            started: Instant::now(),
            done: false,
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let finished = record.finish_from(response.headers());
            let (parts, inner) = response.into_parts();
            let record = if finished { None } else { Some(record) };
            Ok(http::Response::from_parts(
                parts,
                ObservedBody { inner, record },
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(
            method_label("/pulse.v1.IngestService/IngestEvents"),
            "/pulse.v1.IngestService/IngestEvents"
        );
        assert_eq!(method_label("/evil.Service/x"), "unknown");
        assert_eq!(
            method_label(&format!("/pulse.v1.QueryService/{}", "a".repeat(200))),
            "unknown"
        );
    }
}

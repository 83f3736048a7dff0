//! A tower layer that checks the API key of every gRPC call before it
//! reaches a service (the decision itself is [`KeySet::authorize`]).
//!
//! Which scope a call needs follows from its path: `IngestService` needs
//! `ingest`, `QueryService` needs `query`, `AlertService` (rules and
//! `WatchAlerts`) needs `admin`; health and reflection are open. Unknown
//! paths need `admin`, so probing them without a key learns nothing. A
//! refused call is answered with a trailers-only status
//! (`UNAUTHENTICATED` or `PERMISSION_DENIED`) without touching the service;
//! an accepted one carries its [`Caller`] in the request extensions.
//! `QueryService` calls with a key also take one query from the key's
//! rate budget here ([`Quotas::take_query`]) and one of its concurrent
//! query slots ([`Quotas::start_query`]) until the answer is ready;
//! ingest limits are metered
//! in the ingest handler, which knows how many events a message holds.
//!
//! A key checked here may be revoked while its call still runs: server
//! streams are wrapped in [`UntilRevoked`], which ends them with
//! `UNAUTHENTICATED` when the key set drops the key.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::{Either, Ready, ready};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use uuid::Uuid;

use crate::auth::{Caller, KeySet, revoked_status};
use crate::domain::key::Scope;
use crate::quota::Quotas;

/// The scope a gRPC path needs; `None` for the open services.
pub fn required_scope(path: &str) -> Option<Scope> {
    if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        None
    } else if path.starts_with("/pulse.v1.IngestService/") {
        Some(Scope::Ingest)
    } else if path.starts_with("/pulse.v1.QueryService/") {
        Some(Scope::Query)
    } else {
        Some(Scope::Admin)
    }
}

/// The layer; add it inside the observing layer so refusals are counted.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<KeySet>,
    limits: Arc<Quotas>,
}

impl AuthLayer {
    pub fn new(keys: Arc<KeySet>, limits: Arc<Quotas>) -> Self {
        Self { keys, limits }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            keys: self.keys.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<KeySet>,
    limits: Arc<Quotas>,
}

/// A call let through: the inner future, holding the caller's query slot
/// (if any) until it completes.
type Admitted<F> = Either<F, Pin<Box<dyn Future<Output = <F as Future>::Output> + Send>>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Admitted<S::Future>, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(required) = required_scope(request.uri().path()) else {
            return Either::Left(Either::Left(self.inner.call(request)));
        };
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let refuse = |status: tonic::Status| Either::Right(ready(Ok(status.into_http())));
        match self.keys.authorize(header, required) {
            Ok(Some(caller)) if required == Scope::Query => {
                // Queries: one from the key's rate, and a slot among its
                // concurrent queries, held until the answer is ready. The
                // handler's future does nothing until polled, so it only
                // starts once the slot is taken.
                if let Err(exceeded) = self.limits.take_query(caller.key_id) {
                    return refuse(tonic::Status::from(crate::error::Error::from(exceeded)));
                }
                request.extensions_mut().insert::<Caller>(caller);
                let call = self.inner.call(request);
                let limits = self.limits.clone();
                Either::Left(Either::Right(Box::pin(async move {
                    match limits.start_query(caller.key_id).await {
                        Ok(_slot) => call.await,
                        Err(exceeded) => Ok(tonic::Status::from(crate::error::Error::from(
                            exceeded,
                        ))
                        .into_http()),
                    }
                })))
            }
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert::<Caller>(caller);
                }
                Either::Left(Either::Left(self.inner.call(request)))
            }
            Err(error) => refuse(tonic::Status::from(error)),
        }
    }
}

pin_project! {
    /// A server stream that ends with `UNAUTHENTICATED` once the key it was
    /// opened with is revoked ([`KeySet::revoked`]); otherwise the inner
    /// stream, item for item.
    pub struct UntilRevoked<S> {
        #[pin]
        inner: S,
        revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
        key_id: Uuid,
        ended: bool,
    }
}

impl<S> UntilRevoked<S> {
    pub fn new(inner: S, key_id: Uuid, revoked: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            inner,
            revoked: Box::pin(revoked),
            key_id,
            ended: false,
        }
    }
}

impl<S, T> Stream for UntilRevoked<S>
where
    S: Stream<Item = Result<T, tonic::Status>>,
{
    type Item = Result<T, tonic::Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if this.revoked.as_mut().poll(cx).is_ready() {
            *this.ended = true;
            return Poll::Ready(Some(Err(revoked_status(*this.key_id))));
        }
        this.inner.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_ends_with_unauthenticated_at_revocation() {
        use futures::StreamExt;
        let (revoke, revoked) = tokio::sync::oneshot::channel::<()>();
        let key = Uuid::now_v7();
        let items = futures::stream::iter([Ok::<_, tonic::Status>(1), Ok(2)])
            .chain(futures::stream::pending());
        let mut stream = UntilRevoked::new(items, key, async move {
            let _ = revoked.await;
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
        revoke.send(()).unwrap();
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains(&key.to_string()));
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn paths_map_to_scopes() {
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_scope("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_scope("/pulse.v1.IngestService/IngestEvents"),
            Some(Scope::Ingest)
        );
        assert_eq!(
            required_scope("/pulse.v1.QueryService/GetMetrics"),
            Some(Scope::Query)
        );
        assert_eq!(
            required_scope("/pulse.v1.AlertService/WatchAlerts"),
            Some(Scope::Admin)
        );
        assert_eq!(required_scope("/evil.Service/x"), Some(Scope::Admin));
    }
}

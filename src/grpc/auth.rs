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
//! rate budget here ([`KeyLimits::take_query`]); ingest limits are metered
//! in the ingest handler, which knows how many events a message holds.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::auth::{Caller, KeySet};
use crate::domain::key::Scope;
use crate::limits::KeyLimits;

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
    limits: Arc<KeyLimits>,
}

impl AuthLayer {
    pub fn new(keys: Arc<KeySet>, limits: Arc<KeyLimits>) -> Self {
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
    limits: Arc<KeyLimits>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(required) = required_scope(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match self.keys.authorize(header, required) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    if required == Scope::Query
                        && let Err(exceeded) = self.limits.take_query(caller.key_id)
                    {
                        return Either::Right(ready(Ok(exceeded.into_status().into_http())));
                    }
                    request.extensions_mut().insert::<Caller>(caller);
                }
                Either::Left(self.inner.call(request))
            }
            Err(error) => Either::Right(ready(Ok(tonic::Status::from(error).into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! `pulse.v1.IngestService`.

use tonic::{Request, Response, Status, Streaming};

use super::not_built_yet;
use super::proto::ingest_service_server::IngestService;
use super::proto::*;

/// Receives events and users.
#[derive(Clone)]
pub struct IngestApi {}

impl IngestApi {
    pub fn new() -> Self {
        Self {}
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn ingest_events(
        &self,
        _request: Request<Streaming<IngestEventsRequest>>,
    ) -> Result<Response<IngestEventsResponse>, Status> {
        Err(not_built_yet("IngestEvents"))
    }

    async fn upsert_users(
        &self,
        _request: Request<UpsertUsersRequest>,
    ) -> Result<Response<UpsertUsersResponse>, Status> {
        Err(not_built_yet("UpsertUsers"))
    }
}

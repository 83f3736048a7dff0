//! `pulse.v1.QueryService`.

use tonic::{Request, Response, Status};

use super::proto::query_service_server::QueryService;
use super::proto::{GetMetricsRequest, GetMetricsResponse};

/// Serves metric queries.
#[derive(Clone, Default)]
pub struct QueryApi {}

#[tonic::async_trait]
impl QueryService for QueryApi {
    async fn get_metrics(
        &self,
        _request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        Err(super::not_built_yet("GetMetrics"))
    }
}

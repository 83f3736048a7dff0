//! `pulse.v1.QueryService`: converts `GetMetricsRequest` into a
//! [`MetricQuery`](crate::domain::metric::MetricQuery) (`convert.rs`) and
//! answers it through [`Queries`], the path the dashboard's JSON API takes
//! too (budget, cache, replica routing: see `query/service.rs`).

use tonic::{Request, Response, Status};

use super::convert;
use super::proto::query_service_server::QueryService;
use super::proto::{GetMetricsRequest, GetMetricsResponse, Point, Series};
use crate::query::Queries;

#[tonic::async_trait]
impl QueryService for Queries {
    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let query = convert::metric_query(request.into_inner(), self.max_string_bytes())?;
        let (series, approximate) = self.answer(&query).await?;
        let starts: Vec<prost_types::Timestamp> = query
            .bucket_starts()
            .into_iter()
            .map(convert::to_timestamp)
            .collect();
        let series = series
            .into_iter()
            .map(|s| Series {
                group: s.group,
                points: starts
                    .iter()
                    .zip(s.values)
                    .map(|(start, value)| Point {
                        bucket_start: Some(*start),
                        value,
                    })
                    .collect(),
                total: s.total,
            })
            .collect();
        Ok(Response::new(GetMetricsResponse {
            series,
            approximate,
        }))
    }
}

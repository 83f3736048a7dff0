//! `pulse.v1.AlertService`.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::not_built_yet;
use super::proto::alert_service_server::AlertService;
use super::proto::*;

/// Serves alert rules and notification streams.
#[derive(Clone, Default)]
pub struct AlertApi {}

type NotificationStream = Pin<Box<dyn Stream<Item = Result<AlertNotification, Status>> + Send>>;

#[tonic::async_trait]
impl AlertService for AlertApi {
    async fn create_alert_rule(
        &self,
        _request: Request<CreateAlertRuleRequest>,
    ) -> Result<Response<CreateAlertRuleResponse>, Status> {
        Err(not_built_yet("CreateAlertRule"))
    }

    async fn get_alert_rule(
        &self,
        _request: Request<GetAlertRuleRequest>,
    ) -> Result<Response<GetAlertRuleResponse>, Status> {
        Err(not_built_yet("GetAlertRule"))
    }

    async fn list_alert_rules(
        &self,
        _request: Request<ListAlertRulesRequest>,
    ) -> Result<Response<ListAlertRulesResponse>, Status> {
        Err(not_built_yet("ListAlertRules"))
    }

    async fn update_alert_rule(
        &self,
        _request: Request<UpdateAlertRuleRequest>,
    ) -> Result<Response<UpdateAlertRuleResponse>, Status> {
        Err(not_built_yet("UpdateAlertRule"))
    }

    async fn delete_alert_rule(
        &self,
        _request: Request<DeleteAlertRuleRequest>,
    ) -> Result<Response<DeleteAlertRuleResponse>, Status> {
        Err(not_built_yet("DeleteAlertRule"))
    }

    type WatchAlertsStream = NotificationStream;

    async fn watch_alerts(
        &self,
        _request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        Err(not_built_yet("WatchAlerts"))
    }
}

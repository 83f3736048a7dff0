//! `pulse.v1.AlertService`: rule CRUD and `WatchAlerts`.
//!
//! Requests are converted into domain values here (`rule.<field>` names the
//! wrong field in INVALID_ARGUMENT); the evaluator picks rule changes up on
//! its next tick. `WatchAlerts` is a stream fed by this instance's
//! [`Hub`]: replay after `after_id`, then live, no gap or duplicate. A
//! stream opened with an API key ends with `UNAUTHENTICATED` once that key
//! is revoked ([`UntilRevoked`]).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::UntilRevoked;
use super::convert::{self, FromProto, to_timestamp};
use super::proto::alert_service_server::AlertService;
use super::proto::{
    self, AlertNotification, CreateAlertRuleRequest, CreateAlertRuleResponse,
    DeleteAlertRuleRequest, DeleteAlertRuleResponse, GetAlertRuleRequest, GetAlertRuleResponse,
    ListAlertRulesRequest, ListAlertRulesResponse, UpdateAlertRuleRequest, UpdateAlertRuleResponse,
    WatchAlertsRequest,
};
use crate::alerts::hub::Hub;
use crate::auth::{Caller, KeySet};
use crate::db::{PgPool, alerts as store, connection};
use crate::domain::alert::{self as domain, Comparison, Notification, RawRule};
use crate::domain::metric::Metric;
use crate::error::Error;

/// Most rule ids one WatchAlerts request may filter on.
pub const MAX_WATCHED_RULES: usize = 1_000;

/// Serves alert rules and notification streams.
#[derive(Clone)]
pub struct AlertApi {
    pool: PgPool,
    hub: Hub,
    /// Longest `filter.page_url` accepted (the ingest limit).
    max_string_bytes: usize,
    /// The API keys, watched so that a revoked key's streams end.
    keys: Arc<KeySet>,
}

impl AlertApi {
    pub fn new(pool: PgPool, hub: Hub, max_string_bytes: usize, keys: Arc<KeySet>) -> Self {
        Self {
            pool,
            hub,
            max_string_bytes,
            keys,
        }
    }
}

type NotificationStream = Pin<Box<dyn Stream<Item = Result<AlertNotification, Status>> + Send>>;

/// Prefixes an INVALID_ARGUMENT message with the path of its message.
fn within(prefix: &str, error: Error) -> Error {
    match error {
        Error::InvalidArgument(message) => Error::InvalidArgument(format!("{prefix}{message}")),
        other => other,
    }
}

/// A rule id from the API.
fn parse_id(field: &str, text: &str) -> Result<Uuid, Error> {
    if text.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    Uuid::try_parse(text)
        .map_err(|_| Error::InvalidArgument(format!("{field} `{text}` is not a UUID")))
}

/// Converts and validates a rule at the edge (the id is handled by the caller).
pub(crate) fn rule_spec(
    rule: proto::AlertRule,
    max_string_bytes: usize,
) -> Result<domain::RuleSpec, Error> {
    let metric = Metric::from_proto("rule.metric", rule.metric)?;
    let filter = convert::filter(rule.filter, max_string_bytes).map_err(|e| within("rule.", e))?;
    domain::RuleSpec::parse(RawRule {
        name: rule.name,
        metric,
        filter,
        window_seconds: rule.window_seconds,
        comparison: Comparison::from_proto("rule.comparison", rule.comparison)?,
        threshold: rule.threshold,
        for_seconds: rule.for_seconds,
        enabled: rule.enabled,
    })
}

impl From<domain::AlertRule> for proto::AlertRule {
    fn from(rule: domain::AlertRule) -> Self {
        let spec = rule.spec;
        proto::AlertRule {
            id: rule.id.to_string(),
            name: spec.name,
            metric: proto::Metric::from(spec.metric) as i32,
            filter: Some(spec.filter.into()),
            window_seconds: spec.window_seconds,
            comparison: proto::Comparison::from(spec.comparison) as i32,
            threshold: spec.threshold,
            for_seconds: spec.for_seconds,
            enabled: spec.enabled,
        }
    }
}

impl From<&Notification> for AlertNotification {
    fn from(n: &Notification) -> Self {
        let state = proto::AlertState::from(n.state);
        AlertNotification {
            // Identity values start at 1, so the cast never wraps.
            id: n.id as u64,
            rule_id: n.rule_id.to_string(),
            rule_name: n.rule_name.clone(),
            state: state as i32,
            value: n.value,
            threshold: n.threshold,
            window_start: Some(to_timestamp(n.window_start)),
            window_end: Some(to_timestamp(n.window_end)),
            fired_at: Some(to_timestamp(n.fired_at)),
        }
    }
}

#[tonic::async_trait]
impl AlertService for AlertApi {
    async fn create_alert_rule(
        &self,
        request: Request<CreateAlertRuleRequest>,
    ) -> Result<Response<CreateAlertRuleResponse>, Status> {
        let rule = request
            .into_inner()
            .rule
            .ok_or_else(|| Error::InvalidArgument("rule is required".into()))?;
        if !rule.id.is_empty() {
            return Err(Error::InvalidArgument(
                "rule.id is assigned by the server: leave it empty (use UpdateAlertRule to change a rule)".into(),
            )
            .into());
        }
        let spec = rule_spec(rule, self.max_string_bytes)?;
        let mut conn = connection(&self.pool).await?;
        let rule = store::create_rule(&mut conn, &spec).await?;
        Ok(Response::new(CreateAlertRuleResponse {
            rule: Some(rule.into()),
        }))
    }

    async fn get_alert_rule(
        &self,
        request: Request<GetAlertRuleRequest>,
    ) -> Result<Response<GetAlertRuleResponse>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        let mut conn = connection(&self.pool).await?;
        let rule = store::get_rule(&mut conn, id).await?;
        Ok(Response::new(GetAlertRuleResponse {
            rule: Some(rule.into()),
        }))
    }

    async fn list_alert_rules(
        &self,
        _request: Request<ListAlertRulesRequest>,
    ) -> Result<Response<ListAlertRulesResponse>, Status> {
        let mut conn = connection(&self.pool).await?;
        let rules = store::list_rules(&mut conn).await?;
        Ok(Response::new(ListAlertRulesResponse {
            rules: rules.into_iter().map(Into::into).collect(),
        }))
    }

    async fn update_alert_rule(
        &self,
        request: Request<UpdateAlertRuleRequest>,
    ) -> Result<Response<UpdateAlertRuleResponse>, Status> {
        let rule = request
            .into_inner()
            .rule
            .ok_or_else(|| Error::InvalidArgument("rule is required".into()))?;
        let id = parse_id("rule.id", &rule.id)?;
        let spec = rule_spec(rule, self.max_string_bytes)?;
        let mut conn = connection(&self.pool).await?;
        let rule = store::update_rule(&mut conn, id, &spec).await?;
        Ok(Response::new(UpdateAlertRuleResponse {
            rule: Some(rule.into()),
        }))
    }

    async fn delete_alert_rule(
        &self,
        request: Request<DeleteAlertRuleRequest>,
    ) -> Result<Response<DeleteAlertRuleResponse>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        let mut conn = connection(&self.pool).await?;
        store::delete_rule(&mut conn, id).await?;
        Ok(Response::new(DeleteAlertRuleResponse {}))
    }

    type WatchAlertsStream = NotificationStream;

    async fn watch_alerts(
        &self,
        request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let caller = request.extensions().get::<Caller>().copied();
        let request = request.into_inner();
        let after_id = i64::try_from(request.after_id).map_err(|_| {
            Error::InvalidArgument(format!(
                "after_id {} is above the largest notification id",
                request.after_id
            ))
        })?;
        if request.rule_ids.len() > MAX_WATCHED_RULES {
            return Err(Error::InvalidArgument(format!(
                "rule_ids holds {} ids; the limit is {MAX_WATCHED_RULES}",
                request.rule_ids.len()
            ))
            .into());
        }
        let mut rule_ids = request
            .rule_ids
            .iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("rule_ids[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        rule_ids.sort();
        rule_ids.dedup();
        // Unknown ids are allowed: a deleted rule's history stays
        // replayable, and a rule may be created after the watch starts.
        let items = ReceiverStream::new(self.hub.watch(after_id, rule_ids)).map(|item| {
            item.map(|n| AlertNotification::from(n.as_ref()))
                .map_err(Status::from)
        });
        Ok(Response::new(match caller {
            Some(caller) => Box::pin(UntilRevoked::new(
                items,
                caller.key_id,
                self.keys.revoked(caller.key_id),
            )),
            None => Box::pin(items),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> proto::AlertRule {
        proto::AlertRule {
            id: String::new(),
            name: "n".into(),
            metric: proto::Metric::Events as i32,
            filter: None,
            window_seconds: 60,
            comparison: proto::Comparison::GreaterThan as i32,
            threshold: 1.0,
            for_seconds: 0,
            enabled: true,
        }
    }

    fn error(rule: proto::AlertRule) -> String {
        rule_spec(rule, 2048).unwrap_err().to_string()
    }

    #[test]
    fn edge_errors_name_the_rule_field() {
        assert!(
            error(proto::AlertRule {
                metric: 0,
                ..rule()
            })
            .starts_with("rule.metric is required")
        );
        assert!(
            error(proto::AlertRule {
                comparison: 0,
                ..rule()
            })
            .starts_with("rule.comparison is required")
        );
        assert!(
            error(proto::AlertRule {
                filter: Some(proto::Filter {
                    event_types: vec!["Bad Type".into()],
                    ..Default::default()
                }),
                ..rule()
            })
            .starts_with("rule.filter.")
        );
        assert!(
            parse_id("id", "nope")
                .unwrap_err()
                .to_string()
                .contains("not a UUID")
        );
        let spec = rule_spec(rule(), 2048).unwrap();
        let back = proto::AlertRule::from(domain::AlertRule {
            id: Uuid::nil(),
            revision: 1,
            spec,
        });
        assert_eq!(
            back,
            proto::AlertRule {
                id: Uuid::nil().to_string(),
                filter: Some(proto::Filter::default()),
                ..rule()
            }
        );
    }
}

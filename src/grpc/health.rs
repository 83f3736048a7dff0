//! Watches the database and publishes its reachability to the gRPC health
//! service (`grpc.health.v1`, served by tonic-health) and to `/metrics`.
//! Transport code: the probe itself is `db::server::ping`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::db::server;
use crate::telemetry::Telemetry;

/// The services whose status follows the database. The empty name is the
/// server as a whole.
pub const HEALTH_SERVICES: [&str; 4] = [
    "",
    "pulse.v1.IngestService",
    "pulse.v1.QueryService",
    "pulse.v1.AlertService",
];

/// Probes the database every `interval` until `shutdown`; flips every
/// service to NOT_SERVING when a probe fails and back when one succeeds.
///
/// The probe holds its own connection rather than one from the pool, so a
/// pool busy with load does not read as a database that is down.
pub async fn watch_database(
    database_url: String,
    reporter: HealthReporter,
    telemetry: Arc<Telemetry>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last: Option<bool> = None;
    let mut conn: Option<AsyncPgConnection> = None;
    loop {
        let timeout = interval.max(Duration::from_millis(500));
        let up = probe(&database_url, &mut conn, timeout).await;
        if last != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in HEALTH_SERVICES {
                reporter.set_service_status(service, status).await;
            }
            telemetry.db_up.set(i64::from(up));
            if up {
                tracing::info!("database reachable: health SERVING");
            } else {
                tracing::warn!("database unreachable: health NOT_SERVING");
            }
            last = Some(up);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
    for service in HEALTH_SERVICES {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}

async fn probe(url: &str, conn: &mut Option<AsyncPgConnection>, timeout: Duration) -> bool {
    let attempt = async {
        if conn.is_none() {
            *conn = Some(AsyncPgConnection::establish(url).await.ok()?);
        }
        server::ping(conn.as_mut()?).await.ok()
    };
    let up = matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(())));
    if !up {
        // Reconnect from scratch next time: the old connection may be dead.
        *conn = None;
    }
    up
}

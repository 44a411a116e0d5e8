//! `GET /v1/metrics`: what `/v1/health` says, and the fleet's size, as OpenMetrics text
//! for Prometheus (a reader's token, like every other read). Made per scrape from the
//! live figures, so nothing is counted twice or kept beside them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ApiError;
use crate::Conductor;

/// What Prometheus asks for and gets.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(get, path = "/v1/metrics", tag = "conductor", responses((status = 200, description = "OpenMetrics text: tandem_intake_lag_seconds, tandem_intake_waiting, tandem_feed_backlog, tandem_intake_replaced_total, tandem_instances, tandem_sets, tandem_workflows_active, tandem_broker_connected", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(c): State<Arc<Conductor>>) -> Result<impl IntoResponse, ApiError> {
    let intake = c.intake.state();
    let mut registry = Registry::with_prefix("tandem");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g: Gauge = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    };
    let lag: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    lag.set(intake.lag.as_secs_f64());
    registry.register(
        "intake_lag_seconds",
        "How long the last status report processed had waited in the conductor",
        lag,
    );
    gauge(
        &mut registry,
        "intake_waiting",
        "Status reports waiting to be processed (at most one per instance)",
        intake.waiting as i64,
    );
    gauge(
        &mut registry,
        "feed_backlog",
        "Status reports waiting in the broker for this conductor, not yet received (asked once a second)",
        intake.backlog as i64,
    );
    let replaced: Counter = Counter::default();
    replaced.inc_by(intake.replaced);
    registry.register(
        "intake_replaced",
        "Status reports replaced by a newer one of their instance before being processed",
        replaced,
    );
    gauge(
        &mut registry,
        "instances",
        "Instances whose agent has reported",
        c.registry.count() as i64,
    );
    gauge(
        &mut registry,
        "sets",
        "Replica sets",
        c.store.sets()?.len() as i64,
    );
    gauge(
        &mut registry,
        "workflows_active",
        "Workflows running or rolling back",
        c.store.active_workflows()?.len() as i64,
    );
    gauge(
        &mut registry,
        "broker_connected",
        "1 while the conductor is connected to the broker",
        i64::from(c.agents.is_connected()),
    );
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| {
        ApiError::new(
            tandem_api::ErrorKind::Internal,
            format!("encoding the metrics: {e}"),
        )
    })?;
    Ok(([(CONTENT_TYPE, OPENMETRICS)], text))
}

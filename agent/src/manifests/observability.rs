//! Optional objects for Prometheus Operator and Grafana: a ServiceMonitor
//! for the metrics Service, and a dashboard in a ConfigMap that Grafana's
//! sidecar picks up by its `grafana_dashboard` label.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Options, labels, metadata};

/// Prometheus Operator's `monitoring.coreos.com/v1` ServiceMonitor: a
/// custom resource, so not in k8s-openapi; only the fields used here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub port: String,
    pub interval: String,
}

pub fn service_monitor(options: &Options) -> ServiceMonitor {
    ServiceMonitor {
        api_version: "monitoring.coreos.com/v1".to_owned(),
        kind: "ServiceMonitor".to_owned(),
        metadata: metadata("reflektor", options, "agent"),
        spec: ServiceMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(labels("agent")),
                ..LabelSelector::default()
            },
            endpoints: vec![Endpoint {
                port: "metrics".to_owned(),
                interval: "30s".to_owned(),
            }],
        },
    }
}

/// One time-series panel.
fn panel(id: u32, title: &str, expr: &str, unit: &str, x: u32, y: u32) -> serde_json::Value {
    json!({
        "id": id,
        "type": "timeseries",
        "title": title,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"expr": expr, "legendFormat": "{{instance}} {{source}}{{cache}}"}],
    })
}

pub fn dashboard(options: &Options) -> ConfigMap {
    let dashboard = json!({
        "title": "reflektor",
        "uid": "reflektor",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
        }]},
        "panels": [
            panel(1, "Bytes served, by source", "sum by (source) (rate(reflektor_served_bytes_total[5m]))", "Bps", 0, 0),
            panel(2, "Requests for content this node lacks", "sum by (cache) (rate(reflektor_mirror_requests_total[5m]))", "reqps", 12, 0),
            panel(3, "Peers per node", "reflektor_peers", "short", 0, 8),
            panel(4, "Provider lookup, p99", "histogram_quantile(0.99, sum by (le) (rate(reflektor_resolve_duration_seconds_bucket[5m])))", "s", 12, 8),
            panel(5, "Keys advertised, by kind", "sum by (kind) (reflektor_advertised_keys)", "short", 0, 16),
            panel(6, "Requests, by status", "sum by (status) (rate(reflektor_http_requests_total[5m]))", "reqps", 12, 16),
        ],
    });
    let mut meta = metadata("reflektor-dashboard", options, "dashboard");
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert("grafana_dashboard".to_owned(), "1".to_owned());
    }
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(
            "reflektor.json".to_owned(),
            serde_json::to_string_pretty(&dashboard).expect("a JSON value serialises"),
        )])),
        ..ConfigMap::default()
    }
}

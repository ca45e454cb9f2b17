//! Kubernetes `v1 Service`: what Istio learns about a service from it (its ports and their
//! protocols). Only the fields that change routing are read; the rest of a Service (selector,
//! clusterIP, sessionAffinity, ...) is what the cluster does with it, and is skipped.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub external_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u32,
    /// TCP, UDP or SCTP.
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

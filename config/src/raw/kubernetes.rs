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
    // What the cluster does with the Service: the Pods behind its name are reached through
    // DNS, whatever these say.
    pub selector: Skipped,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Skipped,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Skipped,
    pub session_affinity: Skipped,
    pub session_affinity_config: Skipped,
    pub ip_families: Skipped,
    pub ip_family_policy: Skipped,
    pub external_traffic_policy: Skipped,
    pub internal_traffic_policy: Skipped,
    #[serde(rename = "externalIPs")]
    pub external_ips: Skipped,
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Skipped,
    pub load_balancer_source_ranges: Skipped,
    pub load_balancer_class: Skipped,
    pub allocate_load_balancer_node_ports: Skipped,
    pub health_check_node_port: Skipped,
    pub publish_not_ready_addresses: Skipped,
    pub traffic_distribution: Skipped,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u32,
    /// TCP, UDP or SCTP.
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
    /// Where kube-proxy sends the port: the cluster's business; meshgate connects to the
    /// Service's port.
    pub target_port: Skipped,
    pub node_port: Skipped,
}

/// A Kubernetes field that changes nothing meshgate does: read and skipped.
type Skipped = Option<serde::de::IgnoredAny>;

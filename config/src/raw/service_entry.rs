//! `networking.istio.io ServiceEntry`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Labels, Unsupported};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    pub location: Option<String>,
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<WorkloadSelector>,
    pub addresses: Unsupported,
    pub export_to: Option<Vec<String>>,
    pub subject_alt_names: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub target_port: Option<u32>,
}

/// `workloadSelector`: the WorkloadEntries (same namespace) whose labels include these.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: Labels,
}

/// A ServiceEntry endpoint, and the spec of a `WorkloadEntry` resource.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// What DestinationRule subsets select by.
    #[serde(default)]
    pub labels: Labels,
    pub weight: Unsupported,
    pub network: Unsupported,
    pub locality: Unsupported,
    pub service_account: Unsupported,
}

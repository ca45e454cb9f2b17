//! `networking.istio.io DestinationRule`. Parsed so that its kind is recognised; upstream TLS
//! origination is tracked in issue 3 and every DestinationRule is reported as not implemented.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct DestinationRuleSpec {
    pub host: Option<String>,
}

//! RequestAuthentications: skipped with a warning unless one asks this proxy to validate JWTs,
//! which meshgate does not implement (an error: Istio would refuse requests with a bad token
//! here, and meshgate would let them through).

use super::authorization_policy::Workload;
use super::Origin;
use crate::error::ConfigError;
use crate::raw::request_authentication::RequestAuthenticationSpec;
use crate::warning::{Code, Warning};

pub(crate) fn compile(
    found: &[(Origin, RequestAuthenticationSpec)],
    workload: &Workload<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    for (o, spec) in found {
        let why = if spec.target_ref.is_some() || spec.target_refs.is_some() {
            Some("its targetRef names a Kubernetes Gateway API resource or Service, not this proxy")
        } else if !workload.selects(o, spec.selector.as_ref().map(|s| &s.match_labels)) {
            Some("it selects no workload of this proxy")
        } else if spec.jwt_rules.is_empty() {
            Some("it has no jwtRules: it validates nothing")
        } else {
            None
        };
        match why {
            Some(why) => {
                warnings.push(o.warn(Code::ResourceSkipped, None, format!("skipped: {why}")))
            }
            None => errors.push(o.error(
                "spec.jwtRules",
                "JWT validation is not implemented by meshgate, and this RequestAuthentication \
                 applies to this proxy: Istio would refuse requests with an invalid token here",
            )),
        }
    }
}

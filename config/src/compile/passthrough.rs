//! `AUTO_PASSTHROUGH` listeners: the services they expose, by the SNI Istio's sidecars send.
//!
//! A sidecar reaching a service behind an east-west gateway keeps its mTLS end to end and
//! names the service in the SNI: `outbound_.<port>_.<subset>_.<host>`, `_` for no subset (as
//! Istio's `BuildDNSSrvSubsetKey` writes it). The gateway reads it without terminating and
//! forwards the bytes. Exposed are the declared service ports (ServiceEntry and Service ports
//! of any protocol: the bytes are opaque here) whose host a server's `hosts` admits, each
//! without subset and with every subset its DestinationRule defines.

use super::destination_rule::Rules;
use super::service_entry::Backends;
use super::Origin;
use crate::error::ConfigError;
use crate::model::authz::Policies;
use crate::model::{Listener, ListenerProtocol};
use crate::raw::authorization_policy::AuthorizationPolicySpec;
use crate::warning::{Code, Warning};

/// Istio's SNI for (host, port, subset).
pub fn sni(host: &str, port: u16, subset: Option<&str>) -> String {
    format!(
        "outbound_.{port}_.{}_.{}",
        subset.unwrap_or(""),
        host.to_ascii_lowercase()
    )
}

pub(crate) fn expose(
    listeners: &mut [Listener],
    backends: &mut Backends,
    rules: &Rules,
    warnings: &mut Vec<Warning>,
) {
    let declared = backends.declared_all();
    for listener in listeners
        .iter_mut()
        .filter(|l| l.protocol == ListenerProtocol::AutoPassthrough)
    {
        for (host, port, namespace) in &declared {
            let exposed = listener
                .servers
                .iter()
                .any(|s| s.namespace.admits(namespace) && s.host.matches(host));
            if !exposed {
                continue;
            }
            let subsets = rules.subset_names(host);
            let all = std::iter::once(None).chain(subsets.into_iter().map(Some));
            for subset in all {
                let name = sni(host, *port, subset);
                if listener.passthrough.contains_key(&name) {
                    continue;
                }
                match backends.passthrough(host, *port, subset, rules) {
                    Ok(backend) => {
                        listener.passthrough.insert(name, backend);
                    }
                    Err(why) => warnings.push(Warning::global(
                        Code::NotExposed,
                        format!(
                            "listener {} does not forward `{name}`: {why}",
                            listener.name
                        ),
                    )),
                }
            }
        }
    }
}

/// An `AUTO_PASSTHROUGH` listener terminates nothing: a policy rule that can reach its port may
/// only use what a connection shows before any byte is decrypted (addresses, ports, the SNI).
/// A rule naming an identity or an HTTP field there is an error, not a rule that silently never
/// (or always) matches.
pub(crate) fn check_policies(
    found: &[(Origin, AuthorizationPolicySpec)],
    policies: &Policies,
    listeners: &[Listener],
    errors: &mut Vec<ConfigError>,
) {
    let ports: Vec<u16> = listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::AutoPassthrough)
        .map(|l| l.port)
        .collect();
    if ports.is_empty() {
        return;
    }
    let all = [
        &policies.deny,
        &policies.allow,
        &policies.audit,
        &policies.dry_run.deny,
        &policies.dry_run.allow,
    ];
    for policy in all.into_iter().flatten() {
        let Some((o, _)) = found.iter().find(|(o, _)| o.resource() == policy.name) else {
            continue;
        };
        for (i, rule) in policy.rules.iter().enumerate() {
            let (Some(field), Some(port)) = (
                rule.request_field(),
                ports.iter().find(|p| rule.reaches_port(**p)),
            ) else {
                continue;
            };
            errors.push(o.error(
                format!("spec.rules[{i}]"),
                format!(
                    "{field} needs a terminated connection, but port {port} passes TLS through \
                     (AUTO_PASSTHROUGH): there only ipBlocks, remoteIpBlocks, ports and the \
                     source.ip, remote.ip, destination.ip, destination.port and connection.sni \
                     conditions apply; scope this rule to other ports with to.operation.ports, \
                     or leave the identity check to the destination's sidecar"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn istio_writes_the_sni_so() {
        assert_eq!(
            super::sni("Reviews.default.svc.cluster.local", 9080, Some("v1")),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        assert_eq!(super::sni("a.b", 80, None), "outbound_.80_._.a.b");
    }
}

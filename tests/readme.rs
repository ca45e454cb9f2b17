//! The README's reference tables are kept true by the lists compiled into meshgate.

use meshgate_config::fields::{Support, FIELDS};
use meshgate_config::model::authz::SUPPORTED_FIELDS;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_readme_lists_every_policy_field() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### AuthorizationPolicy")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("an AuthorizationPolicy section");
    for field in SUPPORTED_FIELDS {
        let name = field.rsplit_once('.').map_or(*field, |(_, n)| n);
        let key = field.strip_prefix("when.").unwrap_or(name);
        assert!(
            section.contains(&format!("`{key}`")),
            "README's AuthorizationPolicy section does not name `{key}` ({field})"
        );
    }
}

/// The networking fields table, as it must read.
fn fields_table() -> String {
    let mut out = String::from("| kind | field | meshgate |\n|---|---|---|\n");
    for f in FIELDS {
        let support = match f.support {
            Support::Supported => "supported".to_string(),
            Support::Refused(None) => "refused".to_string(),
            Support::Refused(Some(advice)) => format!("refused: {advice}"),
        };
        out.push_str(&format!("| {} | `{}` | {support} |\n", f.kind, f.path));
    }
    out
}

#[test]
fn the_readme_table_of_networking_fields_is_the_compiled_in_list() {
    let readme = readme();
    let table = readme
        .split("<!-- networking-fields:start -->\n")
        .nth(1)
        .and_then(|s| s.split("<!-- networking-fields:end -->").next())
        .expect("the README's networking-fields markers");
    let want = fields_table();
    assert!(
        table == want,
        "the README's table of networking fields is out of date; it should read:\n{want}"
    );
}

#[test]
fn the_readme_limits_shown_as_defaults_are_the_defaults() {
    let readme = readme();
    let block = readme
        .split("  limits:                               # defaults shown")
        .nth(1)
        .expect("the README's limits block");
    // The block's `key: value` lines, up to the next key of `spec`.
    let settings: Vec<String> = block
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .filter(|l| !l.trim().starts_with('#'))
        .filter_map(|l| {
            let (key, rest) = l.trim().split_once(':')?;
            let value = rest.split('#').next()?.trim();
            Some(format!("{key}: {value}"))
        })
        .collect();
    assert_eq!(settings.len(), 11, "{settings:?}");
    let yaml = |limits: &str| {
        format!(
            "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  labels: {{istio: ingressgateway}}\n{limits}"
        )
    };
    let written = meshgate_config::load_str(
        "README.md",
        &yaml(&format!("  limits: {{{}}}\n", settings.join(", "))),
    )
    .unwrap();
    let defaults = meshgate_config::load_str("README.md", &yaml("")).unwrap();
    assert_eq!(written.proxy.limits, defaults.proxy.limits);
    // And the table says the same.
    let d = &defaults.proxy.limits;
    let idle = d.idle_timeout.expect("an idle timeout by default");
    for row in [
        format!(
            "| `handshakeTimeout` | {} s |",
            d.handshake_timeout.as_secs()
        ),
        format!(
            "| `requestHeaderTimeout` | {} s |",
            d.request_header_timeout.as_secs()
        ),
        format!("| `idleTimeout` | {} h |", idle.as_secs() / 3600),
        format!(
            "| `streamIdleTimeout` | {} min |",
            d.stream_idle_timeout
                .expect("a stream idle timeout")
                .as_secs()
                / 60
        ),
        format!(
            "| `requestTimeout` | {} |",
            match d.request_timeout {
                None => "0s: never".to_string(),
                Some(t) => format!("{t:?}"),
            }
        ),
        format!(
            "| `streamWriteBufferBytes` | {} |",
            d.stream_write_buffer_bytes
        ),
        format!(
            "| `maxRequestHeaderBytes` | {} |",
            d.max_request_header_bytes
        ),
        format!(
            "| `maxConnectionsPerListener` | {},{:03} |",
            d.max_connections_per_listener.unwrap() / 1000,
            d.max_connections_per_listener.unwrap() % 1000
        ),
        format!(
            "| `http2MaxConcurrentStreams` | {} |",
            d.http2_max_concurrent_streams
        ),
        format!(
            "| `maxCertificateChainLength` | {} |",
            d.max_certificate_chain_length
        ),
        format!("| `trustDomainLabels` | {} |", d.trust_domain_labels),
    ] {
        assert!(
            readme.contains(&row),
            "the Limits and timeouts table lacks `{row}`"
        );
    }
}

#[test]
fn the_readme_explains_every_handshake_refusal_reason() {
    let readme = readme();
    let section = readme
        .split("**Why was my client refused.**")
        .nth(1)
        .and_then(|s| s.split("\n\n**").next())
        .expect("the README's refusal reasons");
    for reason in meshgate_proxy::identity::PeerError::REASONS {
        assert!(
            section.contains(&format!("| `{reason}` |")),
            "the README does not explain the handshake refusal `{reason}`"
        );
    }
}

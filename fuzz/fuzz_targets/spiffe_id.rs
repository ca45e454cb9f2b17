//! `SpiffeId::parse` and `TrustDomain::new` on arbitrary text.
//!
//! Checks: neither panics; an accepted ID displays as exactly the text it was parsed from and
//! parses again to an equal value (parse -> display -> parse); its parts (trust domain, path,
//! principal, namespace) are slices that put the ID back together; its trust domain is itself a
//! valid `TrustDomain`; and the length limits of the specification hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_spiffe::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(td) = TrustDomain::new(text) {
        assert_eq!(td.to_string(), text);
        assert!(text.len() <= 255);
        assert_eq!(td.is_cluster_local(), text == "cluster.local");
    }
    let Ok(id) = SpiffeId::parse(text) else {
        return;
    };
    let shown = id.to_string();
    assert_eq!(shown, text, "display changed the ID");
    assert_eq!(id.as_str(), text);
    let again = SpiffeId::parse(&shown).expect("a displayed ID parses again");
    assert_eq!(again, id);
    assert!(text.len() <= 2048);

    let td = id.trust_domain();
    let path = id.path();
    assert_eq!(format!("spiffe://{td}{path}"), text);
    assert_eq!(id.principal(), format!("{td}{path}"));
    assert!(
        path.starts_with('/') && path.len() > 1,
        "workload IDs have a path"
    );
    let domain = TrustDomain::new(td).expect("the trust domain of an ID is valid");
    assert_eq!(domain.as_str(), td);
    for segment in path[1..].split('/') {
        assert!(!segment.is_empty() && segment != "." && segment != "..");
    }
    if let Some(ns) = id.namespace() {
        assert!(path.starts_with(&format!("/ns/{ns}/sa/")));
    }
});

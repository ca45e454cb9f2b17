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

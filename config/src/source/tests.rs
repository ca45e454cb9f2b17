//! Documents as the YAML parser cuts them: line numbers kept, empty documents dropped, block
//! scalars left whole, `kind: List` unwrapped, syntax errors reported and skipped, and linear
//! time in the number of documents.

use super::*;

fn docs(text: &str) -> (Vec<Document>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let docs = split(Path::new("f.yaml"), text, &mut errors);
    (docs, errors)
}

#[test]
fn documents_keep_their_line_and_empty_ones_go() {
    let (d, e) = docs("---\na: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n...\n---\n~\n");
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].line, 1);
    assert!(d[0].text.contains("a: 1"));
    assert_eq!(d[1].line, 5);
    assert_eq!(d[1].text.lines().nth(1), Some("b: 2"));
    assert_eq!(d[1].index, 1);
}

#[test]
fn a_separator_inside_a_block_scalar_is_text() {
    let text =
        "kind: ConfigMap\ndata:\n  script: |\n    echo a\n---\n    echo b\n---\nkind: Second\n";
    let (d, e) = docs(text);
    // `---` at column 0 ends the block scalar in YAML; but indented it is text.
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(d.len(), 3, "{d:?}");
    let text =
        "kind: ConfigMap\ndata:\n  script: |\n    echo a\n    ---\n    echo b\n---\nkind: Second\n";
    let (d, e) = docs(text);
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0].text.contains("echo b"));
    assert_eq!(d[1].line, 7);
}

#[test]
fn lists_are_unwrapped_with_their_positions() {
    let text = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\nkind: List\nmetadata:\n  resourceVersion: \"\"\n";
    let (d, e) = docs(text);
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0].item, Some(0));
    assert_eq!(d[0].line, 3);
    assert!(
        d[0].text.starts_with("  apiVersion: v1\n  kind: ConfigMap"),
        "{:?}",
        d[0].text
    );
    assert!(!d[0].text.contains("kind: List"), "{:?}", d[0].text);
    assert_eq!(d[1].line, 6);
    assert!(
        d[1].text.trim_start().starts_with("{apiVersion"),
        "{:?}",
        d[1].text
    );
    assert_eq!(d[1].describe(), "document 1, items[1]");
}

#[test]
fn a_syntax_error_is_reported_and_the_next_document_still_loads() {
    let (d, e) = docs("a: [1, 2\n---\nb: 2\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].position.is_some());
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].text.contains("b: 2"));
    assert_eq!(d[0].line, 2);
}

#[test]
fn locate_finds_keys_by_path() {
    let (d, _) = docs("---\n---\na: 1\nspec:\n  servers:\n  - port: 1\n  - port: 2\n    tlz: {}\n");
    let path = [
        PathSegment::Key("spec".into()),
        PathSegment::Key("servers".into()),
        PathSegment::Index(1),
        PathSegment::Key("tlz".into()),
    ];
    assert_eq!(locate(&d[0], &path), Some((8, 5)));
}

#[test]
fn blanking_an_entry_keeps_every_other_position() {
    let key = |k: &str| PathSegment::Key(k.into());
    let text = "spec:\n  port:\n    number: x\n    name: y\n  hosts: [a]\n";
    let out = blank_entry(text, &[key("spec"), key("port")]).unwrap();
    assert_eq!(
        out,
        "spec:\n       \n             \n           \n  hosts: [a]\n"
    );
    let out = null_value(text, &[key("spec"), key("port")]).unwrap();
    assert_eq!(
        out,
        "spec:\n  port: ~\n             \n           \n  hosts: [a]\n"
    );
    // A block sequence as indented as its key: the null goes after the colon.
    let text = "spec:\n  ports:\n  - number: x\n  hosts: [a]\n";
    let out = null_value(text, &[key("spec"), key("ports")]).unwrap();
    assert_eq!(out, "spec:\n  ports: ~\n             \n  hosts: [a]\n");
    assert!(Parser::new_from_str(&out).all(|e| e.is_ok()), "{out}");
    // Flow style, as JSON files are: the comma goes with the entry, and the rest still parses.
    let text = "{\"spec\": {\"a\": [1, 2], \"b\": 3}}";
    let out = blank_entry(text, &[key("spec"), key("a")]).unwrap();
    assert_eq!(out, "{\"spec\": {             \"b\": 3}}");
    let out = blank_entry(text, &[key("spec"), key("b")]).unwrap();
    assert_eq!(out, "{\"spec\": {\"a\": [1, 2],       }}");
    for out in [out, blank_entry(text, &[key("spec")]).unwrap()] {
        assert!(Parser::new_from_str(&out).all(|e| e.is_ok()), "{out}");
    }
    let out = null_value(text, &[key("spec"), key("a")]).unwrap();
    assert_eq!(out, "{\"spec\": {\"a\": ~     , \"b\": 3}}");
    assert_eq!(blank_entry(text, &[key("spec"), key("c")]), None);
}

#[test]
fn twenty_thousand_documents_load_in_linear_time() {
    let one = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n";
    let time = |n: usize| {
        let text = one.repeat(n);
        let start = std::time::Instant::now();
        let (d, e) = docs(&text);
        assert!(e.is_empty());
        assert_eq!(d.len(), n);
        // Each document holds its own text only: no padding to its line.
        assert!(d.iter().map(|d| d.text.len()).sum::<usize>() <= text.len());
        assert_eq!(d[n - 1].line as usize, 4 * (n - 1));
        start.elapsed()
    };
    let small = time(2_000);
    let large = time(20_000);
    // Ten times the documents: linear is about 10x; quadratic would be about 100x.
    assert!(
        large < small * 40 + std::time::Duration::from_millis(200),
        "2,000 documents: {small:?}; 20,000: {large:?}"
    );
}

#[test]
fn a_configuration_over_the_cap_is_refused_before_it_is_read() {
    let dir = std::env::temp_dir().join(format!("meshgate-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let small = dir.join("a.yaml");
    std::fs::write(
        &small,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    // Sparse: its size says it is too large; reading it would take 64 MiB of zeros.
    let huge = dir.join("b.yaml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(MAX_CONFIG_BYTES)
        .unwrap();
    let mut errors = Vec::new();
    let read = read(std::slice::from_ref(&dir), &mut errors);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(read.documents.len(), 1, "the first file is read");
    let [e] = errors.as_slice() else {
        panic!("{errors:?}")
    };
    assert!(
        e.to_string().ends_with(
            "b.yaml: the configuration would be 64 MiB or more with this file, over the 64 MiB \
             meshgate reads: is this the right file?"
        ),
        "{e}"
    );
}

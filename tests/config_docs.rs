//! docs/configuration.md documents every setting, with its environment name.

#[test]
fn every_key_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    for (key, _, _) in walvault::config::KEYS {
        let env = walvault::config::env_name(key);
        let row = format!("| `{key}` | `{env}` |");
        assert!(
            doc.contains(&row),
            "docs/configuration.md lacks the row for {key} ({env})"
        );
    }
    let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        walvault::config::KEYS.len(),
        "a documented key that does not exist"
    );
}

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

/// examples/walvault.toml names every setting, is valid, and loads.
#[test]
fn example_config_names_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/walvault.toml");
    let text = std::fs::read_to_string(path).unwrap();
    for (key, _, _) in walvault::config::KEYS {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{leaf} ="))),
            "examples/walvault.toml lacks {key}"
        );
    }
    let cfg = walvault::config::Config::load(
        walvault::config::Source::Explicit(std::path::Path::new(path)),
        &Default::default(),
    )
    .unwrap();
    // The values it shows are the defaults.
    let empty = std::env::temp_dir().join(format!("walvault-empty-{}.toml", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let defaults = walvault::config::Config::load(
        walvault::config::Source::Explicit(&empty),
        &Default::default(),
    )
    .unwrap();
    std::fs::remove_file(&empty).unwrap();
    assert_eq!(format!("{cfg:?}"), format!("{defaults:?}"));
}

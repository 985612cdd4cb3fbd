//! docs/configuration.md documents every setting, with its environment name.

#[test]
fn every_key_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    use walvault::setting::{Accepts, Kind};
    for k in walvault::config::keys() {
        let key = k.name;
        let env = walvault::config::env_name(key);
        let row = format!("| `{key}` | `{env}` |");
        let line = doc.lines().find(|l| l.starts_with(&row));
        let Some(line) = line else {
            panic!("docs/configuration.md lacks the row for {key} ({env})");
        };
        // The type column says the declared type.
        let cols: Vec<&str> = line.split(" | ").collect();
        let want = match k.kind {
            Kind::Str => "string",
            Kind::Int => "integer",
            Kind::Bool => "bool",
            Kind::List => "list",
        };
        assert!(
            cols[2].starts_with(want),
            "{key}: type column '{}', declared {want}",
            cols[2]
        );
        // The row names every value a choice accepts.
        if let Accepts::OneOf(values) = k.accepts {
            for v in values {
                assert!(
                    line.contains(v),
                    "{key}: the row does not name the value {v}"
                );
            }
        }
    }
    let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        walvault::config::keys().count(),
        "a documented key that does not exist"
    );
}

/// examples/walvault.toml names every setting, is valid, and loads.
#[test]
fn example_config_names_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/walvault.toml");
    let text = std::fs::read_to_string(path).unwrap();
    for k in walvault::config::keys() {
        let key = k.name;
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
    assert_eq!(format!("{cfg:?}"), format!("{:?}", defaults("example")));
}

/// The default column says each key's default as the code declares it: the
/// value in backticks, or words (none, AWS chain, ...) for a key unset by default.
#[test]
fn documented_defaults_are_the_declared_ones() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let table = toml::Value::try_from(defaults("docs")).unwrap();
    let mut wrong = Vec::new();
    for k in walvault::config::keys() {
        let row = format!("| `{}` |", k.name);
        let line = doc.lines().find(|l| l.starts_with(&row)).unwrap();
        let column = line.split(" | ").nth(3).unwrap().trim();
        let value = k.name.split('.').try_fold(&table, |v, part| v.get(part));
        let want = match value {
            None => None,
            // The system temporary directory is documented as its usual place.
            Some(toml::Value::String(s)) if std::path::Path::new(s) == std::env::temp_dir() => {
                Some("`/tmp`".to_string())
            }
            Some(toml::Value::String(s)) => Some(format!("`{s}`")),
            Some(toml::Value::Array(a)) if a.is_empty() => Some("empty".to_string()),
            Some(v) => Some(format!("`{v}`")),
        };
        match want {
            Some(want) if column != want && !column.starts_with(&format!("{want} ")) => {
                wrong.push(format!("{}: docs say {column}, the code {want}", k.name))
            }
            None if column.starts_with('`') => wrong.push(format!(
                "{}: docs say {column}, the code leaves it unset",
                k.name
            )),
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "defaults:\n{}", wrong.join("\n"));
}

/// The configuration an empty file loads to: every key at its default.
fn defaults(test: &str) -> walvault::config::Config {
    let empty = std::env::temp_dir().join(format!("walvault-{test}-{}.toml", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let cfg = walvault::config::Config::load(
        walvault::config::Source::Explicit(&empty),
        &Default::default(),
    )
    .unwrap();
    std::fs::remove_file(&empty).unwrap();
    cfg
}

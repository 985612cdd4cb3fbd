//! A setting's declaration: its TOML path, type, the values it accepts and
//! one line of description. The modules that own settings (config.rs for
//! most, each store backend for its own) declare them once; validation, the
//! environment names and the documentation check follow from the declarations.

use anyhow::{bail, Result};
use toml::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    /// A list; in the environment, comma-separated.
    List,
}

/// What a value must be, beyond its type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Accepts {
    Any,
    /// An integer from the first to the second, both included.
    Range(i64, i64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
}

#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The TOML path: `s3.part_size_mb`.
    pub name: &'static str,
    pub kind: Kind,
    pub accepts: Accepts,
    pub doc: &'static str,
}

/// A setting of any value of its type.
pub const fn key(name: &'static str, kind: Kind, doc: &'static str) -> Key {
    Key {
        name,
        kind,
        accepts: Accepts::Any,
        doc,
    }
}

/// An integer setting within `lo..=hi`.
pub const fn range(name: &'static str, lo: i64, hi: i64, doc: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Int,
        accepts: Accepts::Range(lo, hi),
        doc,
    }
}

/// A string setting that is one of `values`.
pub const fn one_of(name: &'static str, values: &'static [&'static str], doc: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Str,
        accepts: Accepts::OneOf(values),
        doc,
    }
}

impl Key {
    /// The value's type, then what it accepts; the error names the key.
    pub fn check(&self, v: &Value) -> Result<()> {
        let key = self.name;
        let typed = match self.kind {
            Kind::Str => v.is_str(),
            Kind::Int => v.is_integer(),
            Kind::Bool => v.is_bool(),
            Kind::List => v.as_array().is_some_and(|a| a.iter().all(Value::is_str)),
        };
        if !typed {
            let want = match self.kind {
                Kind::Str => "a string",
                Kind::Int => "an integer",
                Kind::Bool => "true or false",
                Kind::List => "a list of strings",
            };
            bail!("config key {key}: expected {want}, found {v}");
        }
        match self.accepts {
            Accepts::Any => {}
            Accepts::Range(lo, hi) => {
                let n = v.as_integer().expect("checked above");
                if !(lo..=hi).contains(&n) {
                    bail!("config key {key}: {n} is out of range, use {lo} to {hi}");
                }
            }
            Accepts::OneOf(values) => {
                let s = v.as_str().expect("checked above");
                if !values.contains(&s) {
                    bail!("config key {key}: '{s}' is not {}", either(values));
                }
            }
        }
        Ok(())
    }
}

/// A settings section with every key at its default: serde's defaults, which
/// are written once, beside the section's fields.
pub fn defaults<T: serde::de::DeserializeOwned>() -> T {
    Value::Table(toml::Table::new())
        .try_into()
        .expect("every key of a section has a default")
}

/// `impl Default` for config sections, from their serde defaults ([`defaults`]).
#[macro_export]
#[doc(hidden)]
macro_rules! __default_from_serde {
    ($($section:ty),+) => {
        $(impl Default for $section {
            fn default() -> Self {
                $crate::setting::defaults()
            }
        })+
    };
}
pub use __default_from_serde as default_from_serde;

/// `a or b`, `a, b or c`.
fn either(values: &[&str]) -> String {
    match values.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_type_range_and_choice() {
        let r = range("s3.part_size_mb", 5, 5120, "");
        assert!(r.check(&Value::Integer(5)).is_ok());
        let e = r.check(&Value::Integer(4)).unwrap_err().to_string();
        assert_eq!(
            e,
            "config key s3.part_size_mb: 4 is out of range, use 5 to 5120"
        );
        let e = r.check(&Value::String("5".into())).unwrap_err().to_string();
        assert!(e.contains("expected an integer"), "{e}");
        let c = one_of("s3.sse", &["AES256", "aws:kms"], "");
        assert!(c.check(&Value::String("aws:kms".into())).is_ok());
        let e = c
            .check(&Value::String("kms".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "config key s3.sse: 'kms' is not AES256 or aws:kms");
        let l = one_of("log_level", &["error", "warn", "info"], "");
        let e = l.check(&Value::String("x".into())).unwrap_err().to_string();
        assert!(e.ends_with("'x' is not error, warn or info"), "{e}");
    }
}

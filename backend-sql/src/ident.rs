//! SQL identifiers for schema and table names.
//!
//! Statements are plain text with `{table}`-style placeholders, filled in
//! once when a store is built. Only identifiers that passed [`Ident::new`]
//! are ever pasted, always double-quoted; every value is a bound parameter.

use std::fmt;

use lockstore_api::LockError;

/// A validated SQL identifier: `^[A-Za-z_][A-Za-z0-9_]{0,62}$`.
///
/// The character set leaves nothing to escape, and 63 bytes is PostgreSQL's
/// limit (longer names would be silently truncated, so two tables could
/// collide). Case is kept: the identifier is always used quoted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Ident(String);

impl Ident {
    /// The longest identifier, in bytes.
    pub(crate) const MAX_LEN: usize = 63;

    /// Validates `name` as the `what` of a store ("schema", "table").
    pub(crate) fn new(
        backend: &'static str,
        what: &str,
        name: &str,
        max_len: usize,
    ) -> Result<Self, LockError> {
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if first_ok && rest_ok && name.len() <= max_len {
            Ok(Self(name.to_owned()))
        } else {
            Err(LockError::config(
                backend,
                format!(
                    "invalid {what} name {name:?}: use 1 to {max_len} ASCII letters, digits or \
                     underscores, not starting with a digit"
                ),
            ))
        }
    }

    /// The bare name.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with `suffix` appended (the caller keeps it within limits).
    pub(crate) fn with_suffix(&self, suffix: &str) -> Self {
        Self(format!("{}{suffix}", self.0))
    }

    /// The name of an object derived from this one (an index of this
    /// table): `<name><suffix>` when that fits in [`Ident::MAX_LEN`]
    /// bytes, else `<name, cut>_<hash><suffix>`, the hash (8 hex digits)
    /// taken over the whole `<name><suffix>`. PostgreSQL would cut a long
    /// name itself, silently, and two derived names that differ only past
    /// byte 63 would become one object: the second `CREATE … IF NOT EXISTS`
    /// would find the first and create nothing. Names that fit are kept as
    /// they are, so the objects of existing tables keep their names.
    /// `suffix` must be shorter than 54 bytes.
    pub(crate) fn derived(&self, suffix: &str) -> Self {
        let full = format!("{}{suffix}", self.0);
        if full.len() <= Self::MAX_LEN {
            return Self(full);
        }
        // FNV-1a: fixed for all time, unlike std's hasher. Identifiers are
        // ASCII, so any byte cut is a character boundary.
        let hash = full.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
        let keep = Self::MAX_LEN - 9 - suffix.len();
        Self(format!("{}_{hash:08x}{suffix}", &self.0[..keep]))
    }

    /// The name, double-quoted for SQL.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// Fills the `{name}` placeholders of a statement template.
pub(crate) fn render(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |sql, (name, value)| {
            sql.replace(&format!("{{{name}}}"), value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["a", "_", "locks", "Lock_Table_2", &"x".repeat(63)] {
            assert!(Ident::new("postgres", "table", ok, 63).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_anything_that_would_need_escaping() {
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            "é",
            &"x".repeat(64),
        ] {
            let err = Ident::new("postgres", "table", bad, 63).unwrap_err();
            assert!(matches!(err, LockError::Config { .. }), "{bad}");
        }
    }

    #[test]
    fn derived_names_fit_and_stay_distinct() {
        let short = Ident::new("postgres", "table", "locks", 63).unwrap();
        assert_eq!(short.derived("_runs_status").as_str(), "locks_runs_status");
        let long = Ident::new("postgres", "table", &"t".repeat(57), 63).unwrap();
        let status = long.derived("_runs_status");
        let updated = long.derived("_runs_updated");
        assert_eq!(status.as_str().len(), 63);
        assert_eq!(updated.as_str().len(), 63);
        assert_ne!(status.as_str(), updated.as_str());
        assert!(
            status.as_str().ends_with("_runs_status"),
            "{}",
            status.as_str()
        );
        assert!(updated.as_str().ends_with("_runs_updated"));
        // Still a valid identifier.
        assert!(Ident::new("postgres", "index", status.as_str(), 63).is_ok());
    }

    #[test]
    fn renders_placeholders() {
        let sql = render(
            "SELECT {a} FROM {b} WHERE {a}",
            &[("a", "1"), ("b", "\"t\"")],
        );
        assert_eq!(sql, "SELECT 1 FROM \"t\" WHERE 1");
    }
}

//! Lock keys: the validated name of a lock.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::LockError;

/// The name of a lock: UTF-8, 1 to [`LockKey::MAX_LEN`] bytes, no NUL.
///
/// Keys are validated once, here, so that no backend ever sees a key it could
/// store differently (Redis and PostgreSQL disagree about NUL bytes) and so
/// that bad input is a typed error before any request is sent.
///
/// Cloning is cheap (a reference count).
///
/// ```
/// use lockstore_api::LockKey;
///
/// let key = LockKey::new("etl/2026-11-23")?;
/// assert_eq!(key.as_str(), "etl/2026-11-23");
/// assert!(LockKey::new("").is_err());
/// # Ok::<(), lockstore_api::LockError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey(Arc<str>);

impl LockKey {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Validates `key` and wraps it.
    ///
    /// # Errors
    /// [`LockError::InvalidKey`] when the key is empty, longer than
    /// [`LockKey::MAX_LEN`] bytes, or contains a NUL byte.
    pub fn new(key: impl AsRef<str>) -> Result<Self, LockError> {
        let key = key.as_ref();
        Self::check(key)?;
        Ok(Self(Arc::from(key)))
    }

    fn check(key: &str) -> Result<(), LockError> {
        let reason = if key.is_empty() {
            "a key must not be empty"
        } else if key.len() > Self::MAX_LEN {
            "a key must be at most 1024 bytes of UTF-8"
        } else if key.as_bytes().contains(&0) {
            "a key must not contain a NUL byte"
        } else {
            return Ok(());
        };
        Err(LockError::InvalidKey {
            key: preview(key),
            reason,
        })
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short, printable form of rejected input for error messages: an oversized
/// key must not turn into an oversized log line.
pub(crate) fn preview(input: &str) -> String {
    const MAX: usize = 64;
    let escaped: String = input.escape_debug().collect();
    if escaped.len() <= MAX {
        escaped
    } else {
        let mut end = MAX;
        while !escaped.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &escaped[..end], input.len())
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockKey({:?})", &*self.0)
    }
}

impl AsRef<str> for LockKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for LockKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for LockKey {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for LockKey {
    type Error = LockError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for LockKey {
    type Error = LockError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::check(&value)?;
        Ok(Self(Arc::from(value)))
    }
}

impl TryFrom<&String> for LockKey {
    type Error = LockError;

    fn try_from(value: &String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&LockKey> for LockKey {
    type Error = LockError;

    fn try_from(value: &LockKey) -> Result<Self, Self::Error> {
        Ok(value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_boundaries() {
        assert!(LockKey::new("a").is_ok());
        assert!(LockKey::new("é".repeat(512)).is_ok()); // 1024 bytes
    }

    #[test]
    fn rejects_bad_keys_with_reasons() {
        for (input, reason) in [
            (String::new(), "empty"),
            ("x".repeat(1025), "1024 bytes"),
            ("a\0b".to_string(), "NUL"),
        ] {
            let err = LockKey::new(&input).unwrap_err();
            assert!(matches!(err, LockError::InvalidKey { .. }));
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn oversized_key_is_previewed_not_echoed() {
        let err = LockKey::new("y".repeat(5000)).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
        assert!(err.to_string().contains("5000 bytes"));
    }
}

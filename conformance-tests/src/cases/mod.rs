//! The example cases, one per promise of the contract.

/// Expands the case list; see [`crate::suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($backend:ident, $harness:expr) => {};
}

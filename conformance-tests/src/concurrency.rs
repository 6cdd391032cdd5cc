//! The concurrent safety test.

//! The proptest model-based test.

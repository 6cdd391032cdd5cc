//! PostgreSQL and SQLite lockstore backends (work in progress).
#![forbid(unsafe_code)]

//! The shared conformance suite, against a real PostgreSQL server and a real
//! SQLite file.

mod support;

use support::{PostgresHarness, SqliteHarness};

lockstore_conformance::suite!(postgres, PostgresHarness::default());
lockstore_conformance::suite!(sqlite, SqliteHarness);
lockstore_conformance::ledger_suite!(postgres_ledger, PostgresHarness::default());
lockstore_conformance::ledger_suite!(sqlite_ledger, SqliteHarness);
lockstore_conformance::semaphore_suite!(postgres_semaphore, PostgresHarness::default());
lockstore_conformance::semaphore_suite!(sqlite_semaphore, SqliteHarness);

//! Store decorators for tests: counting requests and cutting renewals.

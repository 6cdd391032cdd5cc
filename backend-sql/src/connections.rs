//! Connections kept checked out of the pool while they are busy, so that an
//! operation costs one round trip and not two.
//!
//! sqlx's pool tests every connection as it comes back: dropping a
//! `PoolConnection` spawns a task that sends a `Sync` and waits for the
//! server's answer before the connection is idle again (sqlx 0.8,
//! `return_to_pool`). That ping protects the pool from a connection left
//! mid-reply by a cancelled query, and it costs the server a second message
//! per statement: on PostgreSQL an acquire + release cycle took 4.2 round
//! trips instead of 2, and the server's CPU spent on pings is CPU a hot key
//! does not get (see the bench's uncontended and contention tables).
//!
//! [`Connections`] keeps the connections of statements that *finished* in a
//! short list of its own and hands them out again, most recently used first,
//! without giving them back to the pool in between. A connection goes back
//! to the pool (and through its ping) when
//!
//! * its statement failed with the server's own error (the connection is
//!   in step), so the pool's ping checks it as before;
//! * it sat unused for [`IDLE_FOR`] (a sweeper task looks every
//!   [`IDLE_FOR`]), so an idle store holds no connection and the pool's
//!   idle timeout applies;
//! * the pool has no idle connection and no room to open one, so nobody
//!   waiting for the pool waits on a connection this list holds;
//! * it has been out of the pool for [`OUT_AT_MOST`], so the pool's
//!   `max_lifetime` and health check still see every connection regularly;
//! * the pool was closed (the sweeper hears it at once, so `Pool::close`
//!   does not wait for connections this list holds).
//!
//! A connection whose statement was cancelled mid-flight (the future
//! dropped: the checkout never heard that it finished) or failed on the
//! network is closed instead, with a time limit, where the pool's ping has
//! none (see [`Checkout::finished`]). And none is kept at all from a pool
//! that tests connections before handing them out (see
//! [`Connections::new`]).
//!
//! A finished statement leaves sqlx's connection ready for the next one
//! (a reply it did not read is drained before the next statement is sent),
//! which is what lets a connection run many statements in a row, as a
//! transaction or `PgAdvisoryLock`'s held connection does.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::time::Instant;

/// How long a finished connection waits in the list for its next statement
/// before it goes back to the pool.
pub(crate) const IDLE_FOR: Duration = Duration::from_secs(1);

/// How long a connection may stay out of the pool in all, busy or not.
pub(crate) const OUT_AT_MOST: Duration = Duration::from_secs(60);

/// A pool, and the connections this store keeps out of it while busy.
pub(crate) struct Connections<DB: Database> {
    pool: Pool<DB>,
    ready: Arc<Ready<DB>>,
    /// False: every connection goes straight back to the pool (SQLite).
    keep: bool,
    /// True: a connection whose statement was cancelled, or failed on the
    /// network, is closed rather than given back to the pool (see
    /// [`Checkout::finished`]).
    close_when_unsure: bool,
}

/// Finished connections, oldest use first.
struct Ready<DB: Database> {
    list: Mutex<Vec<Kept<DB>>>,
}

struct Kept<DB: Database> {
    connection: PoolConnection<DB>,
    /// When it came out of the pool.
    out_since: Instant,
    /// When its last statement finished.
    used_at: Instant,
}

impl<DB: Database> Connections<DB> {
    /// Wraps `pool` and starts the sweeper, which ends with the last clone
    /// of the store. Needs a tokio runtime (the stores are built in one).
    ///
    /// A pool that tests each connection before handing it out (sqlx's
    /// default, `test_before_acquire`; the store's own pool does not) gets
    /// every connection back at once, as from `&pool`: its owner asked for
    /// a check before every use, which a kept connection would skip (one
    /// that went silent would then hang its next statement instead of
    /// failing the check).
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        if pool.options().get_test_before_acquire() {
            return Connections {
                close_when_unsure: true,
                ..Self::returned_at_once(pool)
            };
        }
        Self::idle_for(pool, IDLE_FOR)
    }

    /// [`Connections::new`] with another idle time (tests).
    fn idle_for(pool: Pool<DB>, idle_for: Duration) -> Self {
        let ready = Arc::new(Ready {
            list: Mutex::new(Vec::new()),
        });
        tokio::spawn(sweep(pool.clone(), Arc::downgrade(&ready), idle_for));
        Connections {
            pool,
            ready,
            keep: true,
            close_when_unsure: true,
        }
    }

    /// Every connection straight back to the pool, as `&pool` would do.
    ///
    /// SQLite's: its pool's test is a message to the connection's own
    /// worker thread, not a network round trip, so there is little to win.
    /// And with SQLite connections kept, the shared suite's contended cases
    /// failed with busy errors (releases and ledger finishes): most likely
    /// a `fetch_optional` that stops after its first row leaves SQLite's
    /// statement un-reset, its write transaction open, until the
    /// connection's next command, which the pool's return sends at once.
    /// PostgreSQL ends the statement's transaction at its `Sync`, whether
    /// or not the client reads the rest of the reply.
    pub(crate) fn returned_at_once(pool: Pool<DB>) -> Self {
        Connections {
            pool,
            ready: Arc::new(Ready {
                list: Mutex::new(Vec::new()),
            }),
            keep: false,
            close_when_unsure: false,
        }
    }

    /// The pool: for the schema's DDL, transactions, and the store's
    /// `pool()`.
    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// A connection for one statement: the most recently finished one, or
    /// one from the pool. Pass the statement's result to
    /// [`Checkout::finished`]; a checkout dropped without it was cancelled
    /// (see its `Drop`).
    pub(crate) async fn checkout(&self) -> Result<Checkout<'_, DB>, sqlx::Error> {
        if self.pool.is_closed() {
            drop(self.ready.take_all());
        } else if let Some(kept) = self.ready.take_newest() {
            return Ok(Checkout {
                connection: Some(kept.connection),
                out_since: kept.out_since,
                owner: self,
            });
        }
        let connection = self.pool.acquire().await?;
        Ok(Checkout {
            connection: Some(connection),
            out_since: Instant::now(),
            owner: self,
        })
    }
}

impl<DB: Database> Ready<DB> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept<DB>>> {
        // Nothing panics while holding it; a poisoned list is still a list.
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_newest(&self) -> Option<Kept<DB>> {
        self.lock().pop()
    }

    fn take_all(&self) -> Vec<Kept<DB>> {
        std::mem::take(&mut *self.lock())
    }

    /// Takes the connections unused since `before` (the oldest are first).
    fn take_unused_since(&self, before: Instant) -> Vec<Kept<DB>> {
        let mut list = self.lock();
        let stale = list.partition_point(|kept| kept.used_at < before);
        list.drain(..stale).collect()
    }
}

/// Gives idle connections back to the pool, every `idle_for`, and all of
/// them when the pool is closed, until the store is gone (the list then
/// drops with it, and so do its connections).
async fn sweep<DB: Database>(pool: Pool<DB>, ready: Weak<Ready<DB>>, idle_for: Duration) {
    let mut tick = tokio::time::interval(idle_for);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = std::pin::pin!(pool.close_event());
    loop {
        let closing = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut closed => true,
        };
        let Some(ready) = ready.upgrade() else {
            return;
        };
        // Dropped outside the lock: each drop spawns the pool's ping.
        let going = if closing {
            ready.take_all()
        } else {
            ready.take_unused_since(Instant::now() - idle_for)
        };
        drop(ready);
        drop(going);
        if closing {
            // A checkout after this finds the pool closed and keeps nothing.
            return;
        }
    }
}

/// A connection out for one statement (see [`Connections::checkout`]).
pub(crate) struct Checkout<'a, DB: Database> {
    connection: Option<PoolConnection<DB>>,
    out_since: Instant,
    owner: &'a Connections<DB>,
}

/// A checkout dropped before [`Checkout::finished`]: its statement was
/// cancelled, perhaps mid-reply. Where the store closes unsure connections,
/// it is closed (bounded) rather than tested by the pool (unbounded on a
/// silent connection); else the pool tests it, as it would from `&pool`.
impl<DB: Database> Drop for Checkout<'_, DB> {
    fn drop(&mut self) {
        if let Some(connection) = &mut self.connection
            && self.owner.close_when_unsure
        {
            connection.close_on_drop();
        }
    }
}

impl<DB: Database> Checkout<'_, DB> {
    /// The connection, to run the statement on.
    pub(crate) fn connection(&mut self) -> &mut DB::Connection {
        self.connection
            .as_deref_mut()
            .expect("a checkout holds its connection until it is finished")
    }

    /// The statement finished: a success keeps the connection for the next
    /// statement; an error sends it back to the pool, which tests it.
    ///
    /// A success sends it back too when it has been out too long, or when
    /// the pool has neither an idle connection nor room to open one: then
    /// somebody (a checkout of this store, or the application sharing the
    /// pool) may be waiting for one, and a kept connection would make them
    /// wait until this store next runs a statement or the sweep.
    ///
    /// A failure of the network or the protocol (no answer, a reset, bytes
    /// out of step) closes the connection instead, as a cancelled statement
    /// does (see `Drop`): the pool's test of a connection that went silent
    /// waits for an answer with no time limit, holding one of the pool's
    /// slots for good (sqlx 0.8, sqlx issue 4349), and a close is
    /// bounded. The server's own errors leave the connection in step, and
    /// it goes back to the pool.
    pub(crate) fn finished<T>(mut self, result: &Result<T, sqlx::Error>) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let owner = self.owner;
        if owner.close_when_unsure
            && matches!(
                result,
                Err(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_))
            )
        {
            connection.close_on_drop();
            return;
        }
        let pool = &owner.pool;
        let now = Instant::now();
        let pool_has_room =
            pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections();
        if owner.keep
            && result.is_ok()
            && pool_has_room
            && now.duration_since(self.out_since) < OUT_AT_MOST
        {
            owner.ready.lock().push(Kept {
                connection,
                out_since: self.out_since,
                used_at: now,
            });
        }
    }
}

/// Runs one sqlx statement on a connection from `$connections` (a
/// [`Connections`]): `run!(connections, fetch_optional, query)` is
/// `query.fetch_optional(&pool)` without the pool's ping after it. The
/// value is the statement's `Result<_, sqlx::Error>`; a failure to get a
/// connection is the pool's error, as before.
macro_rules! run {
    ($connections:expr, $method:ident, $query:expr) => {{
        let query = $query;
        match $connections.checkout().await {
            Ok(mut checkout) => {
                let result = query.$method(checkout.connection()).await;
                checkout.finished(&result);
                result
            }
            Err(err) => Err(err),
        }
    }};
}
pub(crate) use run;

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use sqlx::Sqlite;
    use sqlx::sqlite::SqlitePoolOptions;

    async fn pool(size: u32) -> Pool<Sqlite> {
        SqlitePoolOptions::new()
            .max_connections(size)
            .test_before_acquire(false)
            .connect("sqlite::memory:")
            .await
            .unwrap()
    }

    /// The pool counts a connection as idle only once it is back.
    #[tokio::test]
    async fn a_finished_statement_keeps_its_connection_out_of_the_pool() {
        let connections = Connections::new(pool(2).await);
        let one: Result<i64, sqlx::Error> =
            run!(connections, fetch_one, sqlx::query_scalar("SELECT 1"));
        assert_eq!(one.unwrap(), 1);
        assert_eq!(connections.ready.lock().len(), 1, "kept for the next");
        assert_eq!(connections.pool().num_idle(), 0, "not back in the pool");
        // The next statement takes the same connection: still one open.
        let _: i64 = run!(connections, fetch_one, sqlx::query_scalar("SELECT 2")).unwrap();
        assert_eq!(connections.pool.size(), 1);
        assert_eq!(connections.ready.lock().len(), 1);
    }

    /// With the pool full, a finished connection goes to whoever waits for
    /// the pool, not into the list (the sweep would take an hour here).
    #[tokio::test]
    async fn a_full_pool_gets_its_connection_back_for_its_waiters() {
        let pool = pool(1).await;
        let connections = Arc::new(Connections::idle_for(pool, Duration::from_secs(3600)));
        let first = connections.checkout().await.unwrap();
        let waiter = {
            let connections = connections.clone();
            tokio::spawn(async move {
                let two: Result<i64, sqlx::Error> =
                    run!(connections, fetch_one, sqlx::query_scalar("SELECT 2"));
                two
            })
        };
        // The waiter is blocked on the pool: its only connection is out.
        tokio::task::yield_now().await;
        first.finished(&Ok::<(), sqlx::Error>(()));
        let two = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("the waiter got the connection back from the pool")
            .unwrap();
        assert_eq!(two.unwrap(), 2);
    }

    /// A cancelled statement's connection is closed, not tested by the pool
    /// (which could wait forever on a silent one): the pool ends up with no
    /// connection at all, where a returned one would sit there idle.
    #[tokio::test]
    async fn a_cancelled_statement_closes_its_connection() {
        let pool = pool(2).await;
        let connections = Connections::new(pool.clone());
        let checkout = connections.checkout().await.unwrap();
        assert_eq!(pool.size(), 1);
        drop(checkout); // as a cancelled future drops it
        assert!(
            eventually(|| pool.size() == 0).await,
            "closed, not returned: {} open, {} idle",
            pool.size(),
            pool.num_idle()
        );
    }

    #[tokio::test]
    async fn returned_at_once_keeps_nothing() {
        let connections = Connections::returned_at_once(pool(2).await);
        let _: i64 = run!(connections, fetch_one, sqlx::query_scalar("SELECT 1")).unwrap();
        assert_eq!(connections.ready.lock().len(), 0);
    }

    #[tokio::test]
    async fn a_pool_that_tests_before_acquire_gets_every_connection_back() {
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(true)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let connections = Connections::new(pool);
        let _: i64 = run!(connections, fetch_one, sqlx::query_scalar("SELECT 1")).unwrap();
        assert_eq!(connections.ready.lock().len(), 0);
    }

    #[tokio::test]
    async fn a_failed_or_cancelled_statement_is_not_kept() {
        let connections = Connections::new(pool(2).await);
        let failed: Result<i64, sqlx::Error> = run!(
            connections,
            fetch_one,
            sqlx::query_scalar("SELECT nonsense")
        );
        assert!(failed.is_err());
        assert_eq!(connections.ready.lock().len(), 0, "a failure is not kept");

        let checkout = connections.checkout().await.unwrap();
        drop(checkout); // as a cancelled future drops it
        assert_eq!(
            connections.ready.lock().len(),
            0,
            "a cancelled one is not kept"
        );
    }

    /// Polls `done` for up to 30 s: the sweeper runs on its own schedule.
    async fn eventually(done: impl Fn() -> bool) -> bool {
        for _ in 0..300 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done()
    }

    #[tokio::test]
    async fn idle_connections_go_back_to_the_pool() {
        let connections = Connections::new(pool(2).await);
        let _: i64 = run!(connections, fetch_one, sqlx::query_scalar("SELECT 1")).unwrap();
        assert_eq!(connections.ready.lock().len(), 1);
        assert!(
            eventually(|| connections.ready.lock().is_empty()).await,
            "an unused connection is given back"
        );
        assert!(
            eventually(|| connections.pool().num_idle() == 1).await,
            "and is idle in the pool"
        );
    }

    #[tokio::test]
    async fn closing_the_pool_takes_the_kept_connections_back() {
        let pool = pool(2).await;
        // Never idle long enough for the sweep: only the close can do it.
        let connections = Connections::idle_for(pool.clone(), Duration::from_secs(3600));
        let _: i64 = run!(connections, fetch_one, sqlx::query_scalar("SELECT 1")).unwrap();
        assert_eq!(connections.ready.lock().len(), 1);
        // Close waits for every connection out of the pool: ours too.
        tokio::time::timeout(Duration::from_secs(30), pool.close())
            .await
            .expect("the pool closes: the kept connection went back");
        let after: Result<i64, sqlx::Error> =
            run!(connections, fetch_one, sqlx::query_scalar("SELECT 1"));
        assert!(
            matches!(after, Err(sqlx::Error::PoolClosed)),
            "a closed pool's store fails: {after:?}"
        );
    }
}

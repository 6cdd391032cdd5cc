//! A run's success as one item of the caller's own `TransactWriteItems`:
//! the business writes and the "done" mark commit together, or neither
//! does.
//!
//! [`DynamoDbStore::succeed_item`] takes the run out of its guard
//! ([`RunGuard::detach`]: its lease is no longer renewed) and gives the
//! `Update` that [`LedgerStore::finish`](lockstore_api::ledger::LedgerStore::finish) would send for its success, with
//! the same condition — the record is still `running` under the run's
//! lease id — as a [`TransactWriteItem`]. Add it to the transaction that
//! writes the effects; [`RunSuccessItem::check`] reads the reply:
//!
//! ```no_run
//! # use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
//! # async fn demo(store: lockstore_dynamodb::DynamoDbStore, client: aws_sdk_dynamodb::Client, run: lockstore_api::ledger::RunGuard) -> Result<(), Box<dyn std::error::Error>> {
//! let effect = TransactWriteItem::builder()
//!     .put(
//!         Put::builder()
//!             .table_name("facts")
//!             .item("day", AttributeValue::S("2026-11-23".into()))
//!             .item("fence", AttributeValue::N(run.fence().get().to_string()))
//!             .build()?,
//!     )
//!     .build();
//! let success = store.succeed_item(run, None)?;
//! let reply = client
//!     .transact_write_items()
//!     .transact_items(effect)
//!     .transact_items(success.item().clone()) // position 1
//!     .send()
//!     .await;
//! success.check(reply, 1)?; // LeaseLost if the run was taken over: nothing was written
//! # Ok(()) }
//! ```
//!
//! DynamoDB holds no lock while a transaction is prepared: the lease
//! condition is checked atomically with the caller's writes. A takeover
//! that commits first makes the condition fail and cancels the whole
//! transaction (`LeaseLost`, nothing written); a transaction that commits
//! first leaves the record `succeeded`, and the takeover's `begin` finds it
//! so. A write racing the transaction on the same item is refused by
//! DynamoDB with `TransactionConflict` (a retryable error). A transaction
//! cancelled for any reason leaves the run `running` until its lease
//! expires (it is not renewed after `succeed_item`), then it is taken over
//! as after a crash.
//!
//! Emulators: moto runs `TransactWriteItems` with condition checks and
//! cancellation reasons (the tests run there); dynalite has no
//! `TransactWriteItems` at all and answers `UnknownOperationException`,
//! which `check` reports as a permanent backend error (tested too).
//! DynamoDB Local supports transactions.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use lockstore_api::LockError;
use lockstore_api::ledger::{DetachedRun, MAX_RESULT_BYTES, RunGuard, RunStatus};

use super::{Item, Values, s};
use crate::error::map_sdk_error;
use crate::ledger_expressions as lx;
use crate::{BACKEND, DynamoDbStore};

/// A run's success as a [`TransactWriteItem`], from
/// [`DynamoDbStore::succeed_item`].
#[derive(Clone, Debug)]
pub struct RunSuccessItem {
    item: TransactWriteItem,
    run: DetachedRun,
    table: String,
    partition_key: String,
}

impl RunSuccessItem {
    /// The item to add to the caller's `TransactWriteItems`.
    pub fn item(&self) -> &TransactWriteItem {
        &self.item
    }

    /// The run it finishes.
    pub fn run(&self) -> &DetachedRun {
        &self.run
    }

    /// Reads the transaction's reply, given the position (from 0) of
    /// [`RunSuccessItem::item`] among its items.
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when the run's condition failed (another
    /// run took the key over): the transaction was cancelled and nothing
    /// was written. Any other failure (a condition of the caller's, a
    /// `TransactionConflict`, throttling, a network error) is a
    /// [`LockError::Backend`], retryable where DynamoDB says so; the run's
    /// success was not recorded either.
    pub fn check(
        &self,
        reply: Result<TransactWriteItemsOutput, SdkError<TransactWriteItemsError, HttpResponse>>,
        position: usize,
    ) -> Result<TransactWriteItemsOutput, LockError> {
        let error = match reply {
            Ok(output) => return Ok(output),
            Err(error) => error,
        };
        if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
            error.as_service_error()
        {
            let ours = cancelled
                .cancellation_reasons()
                .get(position)
                .and_then(|reason| reason.code());
            if ours == Some("ConditionalCheckFailed") {
                return Err(self.run.lease_lost());
            }
        }
        Err(map_sdk_error(
            error,
            &format!("transaction with the success of run {}", self.run.key()),
            &self.table,
            &self.partition_key,
        ))
    }
}

impl DynamoDbStore {
    /// The run's success with `result` (at most
    /// [`MAX_RESULT_BYTES`]) as an item for the caller's own
    /// `TransactWriteItems`, conditioned on the run's lease as
    /// [`RunGuard::succeed`] is. The run's lease is no longer renewed from
    /// this call on. See the [module docs](self) for what happens while the
    /// transaction is under way.
    ///
    /// # Errors
    /// [`LockError::ResultTooLarge`]; [`LockError::Config`] on a skew-free
    /// store or with a [`ledger_retention`](crate::DynamoDbStoreBuilder::ledger_retention)
    /// (a finish under a retention may need a second write, which a
    /// transaction cannot make); [`LockError::InvalidArgument`] for a key
    /// too long for the ledger. Before any of these the guard is dropped
    /// and records the attempt as abandoned.
    pub fn succeed_item(
        &self,
        run: RunGuard,
        result: Option<Vec<u8>>,
    ) -> Result<RunSuccessItem, LockError> {
        let size = result.as_ref().map_or(0, Vec::len);
        if size > MAX_RESULT_BYTES {
            return Err(LockError::ResultTooLarge {
                size,
                limit: MAX_RESULT_BYTES,
            });
        }
        if self.config().ledger_retention.is_some() {
            return Err(LockError::config(
                BACKEND,
                "a run's success inside a transaction needs a store without ledger_retention: \
                 the finish under a retention may need a second write; use a second store on \
                 the same table without it for transactional finishes",
            ));
        }
        let pk = self.run_key(run.key())?;
        let now = self.now()?;
        let run = run.detach();
        let mut values = self.base_values(run.key(), now);
        values.push(":lease_id", s(run.lease_id().to_string()));
        values.push(":state", s(RunStatus::Succeeded.as_str()));
        values.push(
            ":index_pk",
            s(self.index_pk(RunStatus::Succeeded, run.key())),
        );
        let mut update = lx::FINISH_SET.to_owned();
        let mut remove = lx::REMOVE_LEASE.to_owned();
        match result {
            Some(bytes) => {
                values.push(
                    ":result",
                    aws_sdk_dynamodb::types::AttributeValue::B(Blob::new(bytes)),
                );
                update.push_str(", #exec_result = :result");
            }
            None => remove.push_str(", #exec_result"),
        }
        update.push_str(" REMOVE ");
        update.push_str(&remove);
        let item = self.transact_update(&pk, lx::HELD, &update, &values)?;
        let config = self.config();
        Ok(RunSuccessItem {
            item,
            run,
            table: config.table.clone(),
            partition_key: config.partition_key.clone(),
        })
    }

    fn transact_update(
        &self,
        pk: &str,
        condition: &str,
        update: &str,
        values: &Values,
    ) -> Result<TransactWriteItem, LockError> {
        let c = self.config();
        let names = lx::names_for(&[condition, update], &c.partition_key, &c.cleanup_attribute);
        let used = crate::expressions::placeholders(&[condition, update], ':');
        let values: Item = values
            .0
            .iter()
            .filter(|(name, _)| used.contains(name))
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        let update = Update::builder()
            .table_name(&c.table)
            .key(&c.partition_key, s(pk))
            .condition_expression(condition)
            .update_expression(update)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|err| {
                LockError::permanent(BACKEND, "building the run's transaction item", err)
            })?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

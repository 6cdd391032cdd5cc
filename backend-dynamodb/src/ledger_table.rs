//! The ledger's status index: created by `create_table`, verified by
//! `check_table`.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::operation::update_table::UpdateTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ProvisionedThroughput, ScalarAttributeType, TableDescription,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use lockstore_api::{LockError, UnexpectedReply};

use crate::error::map_sdk_error;
use crate::layout::RESERVED_STATUS_INDEX;
use crate::{BACKEND, DynamoDbStore};

/// The index's partition and sort attributes.
pub(crate) const INDEX_PARTITION: &str = "exec_status";
pub(crate) const INDEX_SORT: &str = "exec_sort";

/// How long `create_table` waits for the index to become active.
const INDEX_TIMEOUT: Duration = Duration::from_secs(300);

fn build_err(e: impl std::error::Error + Send + Sync + 'static) -> LockError {
    LockError::permanent(BACKEND, "building UpdateTable", e)
}

/// The index's throughput: none on an on-demand table (DynamoDB refuses
/// it there), the table's own on a provisioned one — and on servers that do
/// not report a billing mode (dynalite), which require it.
fn index_throughput(table: &TableDescription) -> Result<Option<ProvisionedThroughput>, LockError> {
    let on_demand = table
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .is_some_and(|m| *m == BillingMode::PayPerRequest);
    if on_demand {
        return Ok(None);
    }
    let table_units = table.provisioned_throughput();
    units(
        table_units
            .and_then(|u| u.read_capacity_units())
            .unwrap_or(0)
            .max(1),
        table_units
            .and_then(|u| u.write_capacity_units())
            .unwrap_or(0)
            .max(1),
    )
    .map(Some)
}

fn units(read: i64, write: i64) -> Result<ProvisionedThroughput, LockError> {
    ProvisionedThroughput::builder()
        .read_capacity_units(read)
        .write_capacity_units(write)
        .build()
        .map_err(build_err)
}

impl DynamoDbStore {
    /// What is wrong with the table's ledger index, in words, or `None`.
    pub(crate) fn ledger_index_problem(&self, table: &TableDescription) -> Option<String> {
        let Some(index) = table
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(RESERVED_STATUS_INDEX))
        else {
            return Some(format!(
                "has no global secondary index {RESERVED_STATUS_INDEX:?}, which the execution \
                 ledger's query and purge need (locks work without it); create_table() adds it, \
                 or: aws dynamodb update-table --table-name {t} --attribute-definitions \
                 AttributeName={INDEX_PARTITION},AttributeType=S \
                 AttributeName={INDEX_SORT},AttributeType=S --global-secondary-index-updates \
                 '[{{\"Create\":{{\"IndexName\":\"{RESERVED_STATUS_INDEX}\",\"KeySchema\":\
                 [{{\"AttributeName\":\"{INDEX_PARTITION}\",\"KeyType\":\"HASH\"}},\
                 {{\"AttributeName\":\"{INDEX_SORT}\",\"KeyType\":\"RANGE\"}}],\
                 \"Projection\":{{\"ProjectionType\":\"ALL\"}}}}}}]'",
                t = self.config().table
            ));
        };
        let key = |kind: KeyType| {
            index
                .key_schema()
                .iter()
                .find(|k| *k.key_type() == kind)
                .map(|k| k.attribute_name().to_owned())
        };
        let mut wrong = Vec::new();
        if key(KeyType::Hash).as_deref() != Some(INDEX_PARTITION) {
            wrong.push(format!(
                "its partition key is {:?}, not {INDEX_PARTITION:?}",
                key(KeyType::Hash).unwrap_or_default()
            ));
        }
        if key(KeyType::Range).as_deref() != Some(INDEX_SORT) {
            wrong.push(format!(
                "its sort key is {:?}, not {INDEX_SORT:?}",
                key(KeyType::Range).unwrap_or_else(|| "missing".into())
            ));
        }
        let projection = index.projection().and_then(|p| p.projection_type());
        if projection != Some(&ProjectionType::All) {
            wrong.push(format!(
                "it projects {}, not ALL attributes",
                projection.map_or("nothing", |p| p.as_str())
            ));
        }
        (!wrong.is_empty()).then(|| {
            format!(
                "has an index {RESERVED_STATUS_INDEX:?} the ledger cannot use: {}; delete it \
                 (aws dynamodb update-table --global-secondary-index-updates \
                 '[{{\"Delete\":{{\"IndexName\":\"{RESERVED_STATUS_INDEX}\"}}}}]') and run \
                 create_table() again",
                wrong.join(", ")
            )
        })
    }

    /// The index and its attribute definitions, for a new table's
    /// `CreateTable` (on-demand, so no throughput).
    pub(crate) fn ledger_index_for_new_table(
        &self,
    ) -> Result<(Vec<AttributeDefinition>, GlobalSecondaryIndex), LockError> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_err)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_err)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(RESERVED_STATUS_INDEX)
            .key_schema(key(INDEX_PARTITION, KeyType::Hash)?)
            .key_schema(key(INDEX_SORT, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(build_err)?;
        Ok((
            vec![attribute(INDEX_PARTITION)?, attribute(INDEX_SORT)?],
            index,
        ))
    }

    async fn send_index_create(
        &self,
        throughput: Option<ProvisionedThroughput>,
    ) -> Result<(), aws_sdk_dynamodb::error::SdkError<UpdateTableError, HttpResponse>> {
        let c = self.config();
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type are set")
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("name and key type are set")
        };
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(RESERVED_STATUS_INDEX)
            .key_schema(key(INDEX_PARTITION, KeyType::Hash))
            .key_schema(key(INDEX_SORT, KeyType::Range))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .set_provisioned_throughput(throughput)
            .build()
            .expect("name and key schema are set");
        self.client()
            .update_table()
            .table_name(&c.table)
            // The table's own key too: some servers (moto) replace the
            // table's definitions with the ones sent here.
            .attribute_definitions(attribute(&c.partition_key))
            .attribute_definitions(attribute(INDEX_PARTITION))
            .attribute_definitions(attribute(INDEX_SORT))
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder().create(create).build(),
            )
            .send()
            .await
            .map(|_| ())
    }

    /// Adds the ledger index to `table` if it has none, and waits until it
    /// is active. A wrong existing index is a config error.
    pub(crate) async fn ensure_ledger_index(
        &self,
        table: &TableDescription,
    ) -> Result<(), LockError> {
        let c = self.config();
        let has_index = table
            .global_secondary_indexes()
            .iter()
            .any(|i| i.index_name() == Some(RESERVED_STATUS_INDEX));
        if has_index {
            if let Some(problem) = self.ledger_index_problem(table) {
                return Err(LockError::config(
                    BACKEND,
                    format!("table {:?} {problem}", c.table),
                ));
            }
        } else {
            let throughput = index_throughput(table)?;
            let mut created = self.send_index_create(throughput.clone()).await;
            // dynalite reports an on-demand table yet insists on index
            // throughput: give it the smallest.
            if throughput.is_none()
                && created
                    .as_ref()
                    .err()
                    .and_then(|e| e.as_service_error())
                    .is_some_and(|e| {
                        e.meta().code() == Some("ValidationException")
                            && e.meta()
                                .message()
                                .is_some_and(|m| m.contains("provisionedThroughput"))
                    })
            {
                created = self.send_index_create(Some(units(1, 1)?)).await;
            }
            match created {
                Ok(_) => {}
                // Another creator added it at the same moment (or the table
                // is busy with it): wait for it below.
                Err(e)
                    if e.as_service_error().is_some_and(|e| {
                        e.is_resource_in_use_exception() || e.is_limit_exceeded_exception()
                    }) => {}
                Err(e) => {
                    return Err(map_sdk_error(
                        e,
                        "create ledger index",
                        &c.table,
                        &c.partition_key,
                    ));
                }
            }
        }
        let started = Instant::now();
        loop {
            let out = self
                .client()
                .describe_table()
                .table_name(&c.table)
                .send()
                .await
                .map_err(|e| map_sdk_error(e, "describe table", &c.table, &c.partition_key))?;
            let status = out.table().and_then(|t| {
                t.global_secondary_indexes()
                    .iter()
                    .find(|i| i.index_name() == Some(RESERVED_STATUS_INDEX))
                    .map(|i| i.index_status().cloned())
            });
            match status {
                // Emulators may not report an index status at all.
                Some(Some(IndexStatus::Active) | None) => return Ok(()),
                // The update was accepted, yet there is no index at all: the
                // server cannot add one to an existing table (dynalite).
                None => {
                    return Err(LockError::config(
                        BACKEND,
                        format!(
                            "table {:?}: the server accepted adding index {RESERVED_STATUS_INDEX:?} but \
                             the table has none (dynalite cannot add an index to an existing \
                             table); delete the table and run create_table() again, which \
                             creates it with the index",
                            c.table
                        ),
                    ));
                }
                _ if started.elapsed() > INDEX_TIMEOUT => {
                    return Err(LockError::retryable(
                        BACKEND,
                        format!(
                            "index {RESERVED_STATUS_INDEX:?} of table {:?} did not become active \
                             within {INDEX_TIMEOUT:?}",
                            c.table
                        ),
                        UnexpectedReply("index still not ACTIVE".into()),
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

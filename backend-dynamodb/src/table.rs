//! Creating and checking the lock table.

use std::fmt;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    ScalarAttributeType, TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use lockstore_api::{LockError, UnexpectedReply};

use crate::error::{map_sdk_error, missing_table_message};
use crate::{BACKEND, DynamoDbStore};

/// How long [`DynamoDbStore::create_table`] waits for a new table to become
/// active.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Something wrong with the lock table, in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableProblem {
    /// The table does not exist in this account and region.
    Missing {
        /// The table name.
        table: String,
        /// The partition-key attribute the store expects.
        partition_key: String,
    },
    /// The table is being created, updated or deleted.
    NotActive {
        /// The table name.
        table: String,
        /// Its status as DynamoDB reports it.
        status: String,
    },
    /// The key schema differs from the store's configuration.
    WrongKeySchema {
        /// The table name.
        table: String,
        /// What the store expects.
        expected: String,
        /// What the table has.
        found: String,
    },
    /// DynamoDB TTL is off, so released and abandoned lock items are kept
    /// forever (harmless for correctness, but they cost storage).
    TtlDisabled {
        /// The table name.
        table: String,
        /// The attribute TTL should be enabled on.
        attribute: String,
    },
    /// The execution ledger's status index is missing or unusable (locks
    /// work without it).
    LedgerIndex {
        /// The table name.
        table: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The server has no TTL operations at all (dynalite answers
    /// `UnknownOperationException` to `UpdateTimeToLive`), so TTL cleanup is
    /// off and cannot be turned on: idle lock items, purged ledger records'
    /// tombstones and (with a ledger retention) finished records stay until
    /// deleted. Locks and the ledger still work (fencing
    /// does not depend on TTL), which is why this is the one problem
    /// [`check_table`](DynamoDbStore::check_table) reports without failing;
    /// see [`TableProblem::is_advisory`]. Only emulators lack TTL; real
    /// DynamoDB never reports this.
    TtlUnsupported {
        /// The table name.
        table: String,
        /// The attribute TTL would be enabled on.
        attribute: String,
    },
    /// DynamoDB TTL is on, but on another attribute than the store writes.
    TtlOnOtherAttribute {
        /// The table name.
        table: String,
        /// The attribute the store writes cleanup times to.
        expected: String,
        /// The attribute TTL is enabled on.
        found: String,
    },
}

impl TableProblem {
    /// Whether the store works fully despite this problem, so
    /// [`check_table`](DynamoDbStore::check_table) logs it (a `tracing`
    /// warning) instead of failing: only [`TableProblem::TtlUnsupported`],
    /// a server without TTL operations, where nothing can be fixed.
    pub fn is_advisory(&self) -> bool {
        matches!(self, Self::TtlUnsupported { .. })
    }
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing {
                table,
                partition_key,
            } => f.write_str(&missing_table_message(table, partition_key)),
            Self::NotActive { table, status } => write!(
                f,
                "table {table:?} is {status}, not ACTIVE; wait until it is active and try again"
            ),
            Self::WrongKeySchema {
                table,
                expected,
                found,
            } => write!(
                f,
                "table {table:?} has {found}, but this store expects {expected}; either point \
                 the store at the table's key with .partition_key(\"<attribute>\") (only a \
                 string partition key and no sort key work), or use another table"
            ),
            Self::LedgerIndex { table, problem } => write!(f, "table {table:?} {problem}"),
            Self::TtlDisabled { table, attribute } => write!(
                f,
                "table {table:?} has DynamoDB TTL disabled, so idle lock items are never \
                 deleted; enable it on attribute {attribute:?}: aws dynamodb \
                 update-time-to-live --table-name {table} --time-to-live-specification \
                 Enabled=true,AttributeName={attribute}"
            ),
            Self::TtlUnsupported { table, attribute } => write!(
                f,
                "table {table:?}: this server has no TTL operations (UpdateTimeToLive is unknown \
                 to it, as on dynalite), so TTL cleanup on attribute {attribute:?} is off: idle \
                 lock items and finished ledger records are kept until deleted; locks and the \
                 ledger work regardless (real DynamoDB supports TTL)"
            ),
            Self::TtlOnOtherAttribute {
                table,
                expected,
                found,
            } => write!(
                f,
                "table {table:?} has DynamoDB TTL on attribute {found:?}, but this store writes \
                 cleanup times to {expected:?}; set .cleanup_attribute({found:?}) on the \
                 builder (a table has only one TTL attribute)"
            ),
        }
    }
}

/// The table [`DynamoDbStore::create_table`] makes — key, attributes, the
/// ledger's status index, on-demand billing, TTL — as the SDK values it
/// sends, for infrastructure as code: [`TableDefinition::to_cloudformation`]
/// renders it as an `AWS::DynamoDB::Table` resource.
#[derive(Clone, Debug, PartialEq)]
pub struct TableDefinition {
    table: String,
    attributes: Vec<AttributeDefinition>,
    key_schema: Vec<KeySchemaElement>,
    index: GlobalSecondaryIndex,
    billing_mode: BillingMode,
    time_to_live: TimeToLiveSpecification,
}

impl TableDefinition {
    /// The table name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The table as a CloudFormation `AWS::DynamoDB::Table` resource, in
    /// JSON (the property names are DynamoDB's own, so a Terraform
    /// `aws_dynamodb_table` or a CDK `CfnTable` maps one to one).
    pub fn to_cloudformation(&self) -> serde_json::Value {
        use serde_json::json;
        let key_schema = |keys: &[KeySchemaElement]| {
            keys.iter()
                .map(|key| {
                    json!({ "AttributeName": key.attribute_name(), "KeyType": key.key_type().as_str() })
                })
                .collect::<Vec<_>>()
        };
        let attributes: Vec<_> = self
            .attributes
            .iter()
            .map(|attribute| {
                json!({
                    "AttributeName": attribute.attribute_name(),
                    "AttributeType": attribute.attribute_type().as_str(),
                })
            })
            .collect();
        let projection = self
            .index
            .projection()
            .and_then(|projection| projection.projection_type())
            .map(|kind| kind.as_str());
        json!({
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "TableName": self.table,
                "BillingMode": self.billing_mode.as_str(),
                "AttributeDefinitions": attributes,
                "KeySchema": key_schema(&self.key_schema),
                "GlobalSecondaryIndexes": [{
                    "IndexName": self.index.index_name(),
                    "KeySchema": key_schema(self.index.key_schema()),
                    "Projection": { "ProjectionType": projection },
                }],
                "TimeToLiveSpecification": {
                    "AttributeName": self.time_to_live.attribute_name(),
                    "Enabled": self.time_to_live.enabled(),
                },
            }
        })
    }
}

impl DynamoDbStore {
    /// The table [`create_table`](Self::create_table) makes for this
    /// store's configuration, built by the code that sends it; no request.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lockstore_api::LockError> {
    /// let store = lockstore_dynamodb::DynamoDbStore::builder("Locks").build().await?;
    /// let resource = store.table_definition()?.to_cloudformation();
    /// println!("{}", serde_json::to_string_pretty(&resource).unwrap_or_default());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`LockError::Config`] when the configured names make no valid
    /// definition (the SDK's builders refuse them).
    pub fn table_definition(&self) -> Result<TableDefinition, LockError> {
        let c = self.config();
        let build_err = |e| LockError::permanent(BACKEND, "building the table definition", e);
        let attribute = AttributeDefinition::builder()
            .attribute_name(&c.partition_key)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_err)?;
        let key = KeySchemaElement::builder()
            .attribute_name(&c.partition_key)
            .key_type(KeyType::Hash)
            .build()
            .map_err(build_err)?;
        let (index_attributes, index) = self.ledger_index_for_new_table()?;
        let time_to_live = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(&c.cleanup_attribute)
            .build()
            .map_err(build_err)?;
        Ok(TableDefinition {
            table: c.table.clone(),
            attributes: [vec![attribute], index_attributes].concat(),
            key_schema: vec![key],
            index,
            billing_mode: BillingMode::PayPerRequest,
            time_to_live,
        })
    }

    /// Lists what is wrong with the table for this store: missing, not
    /// active, a wrong key schema, DynamoDB TTL off, on another attribute or
    /// not supported by the server, the execution ledger's status index
    /// missing or unusable. Empty when all is well.
    ///
    /// # Errors
    /// When DynamoDB cannot be asked (network, credentials, throttling).
    pub async fn table_problems(&self) -> Result<Vec<TableProblem>, LockError> {
        let c = self.config();
        let Some(table) = self.describe().await? else {
            return Ok(vec![TableProblem::Missing {
                table: c.table.clone(),
                partition_key: c.partition_key.clone(),
            }]);
        };
        let mut problems = Vec::new();
        if let Some(problem) = self.schema_problem(&table) {
            problems.push(problem);
        }
        match table.table_status() {
            Some(TableStatus::Active) | None => {}
            Some(status) => problems.push(TableProblem::NotActive {
                table: c.table.clone(),
                status: status.as_str().to_owned(),
            }),
        }
        if let Some(problem) = self.ttl_problem().await? {
            problems.push(problem);
        }
        if let Some(problem) = self.ledger_index_problem(&table) {
            problems.push(TableProblem::LedgerIndex {
                table: c.table.clone(),
                problem,
            });
        }
        Ok(problems)
    }

    /// Checks the table at start-up.
    ///
    /// An [advisory](TableProblem::is_advisory) problem (a server without
    /// TTL operations, such as dynalite) is logged as a `tracing` warning
    /// and does not fail the check; call
    /// [`table_problems`](Self::table_problems) to see it.
    ///
    /// # Errors
    /// [`LockError::Config`] listing every other [`TableProblem`], each
    /// saying what to do; or a backend error when DynamoDB cannot be asked.
    pub async fn check_table(&self) -> Result<(), LockError> {
        let (advisory, problems): (Vec<_>, Vec<_>) = self
            .table_problems()
            .await?
            .into_iter()
            .partition(TableProblem::is_advisory);
        for problem in &advisory {
            tracing::warn!(table = %self.config().table, "{problem}");
        }
        if problems.is_empty() {
            return Ok(());
        }
        let words: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(LockError::config(BACKEND, words.join("; also, ")))
    }

    /// Creates the table if it does not exist (on-demand billing, a string
    /// partition key named as configured), waits until it is active, and
    /// enables DynamoDB TTL on the cleanup attribute if it is off. It also
    /// adds the execution ledger's index `exec_status-index` (partition
    /// `exec_status`, sort `exec_sort`, all attributes) when the table has
    /// none, and waits until it is active.
    ///
    /// Calling it on a table that is already right changes nothing.
    ///
    /// On a server without TTL operations (dynalite) the table is still
    /// created and usable, but TTL cleanup stays off: a `tracing` warning
    /// says so, and [`table_problems`](Self::table_problems) keeps listing
    /// [`TableProblem::TtlUnsupported`].
    ///
    /// # Errors
    /// [`LockError::Config`] when an existing table has another key schema
    /// or TTL on another attribute; backend errors as usual.
    pub async fn create_table(&self) -> Result<(), LockError> {
        let c = self.config();
        if self.describe().await?.is_none() {
            let definition = self.table_definition()?;
            let created = self
                .client()
                .create_table()
                .table_name(&definition.table)
                .set_attribute_definitions(Some(definition.attributes))
                .set_key_schema(Some(definition.key_schema))
                .global_secondary_indexes(definition.index)
                .billing_mode(definition.billing_mode)
                .send()
                .await;
            match created {
                Ok(_) => {}
                // Someone else created it at the same moment: fine.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_in_use_exception()) => {}
                Err(e) => return Err(map_sdk_error(e, "create table", &c.table, &c.partition_key)),
            }
        }
        let table = self.wait_active().await?;
        if let Some(problem) = self.schema_problem(&table) {
            return Err(LockError::config(BACKEND, problem.to_string()));
        }
        self.ensure_ledger_index(&table).await?;
        match self.ttl_problem().await? {
            None => Ok(()),
            Some(TableProblem::TtlDisabled { .. }) => self.enable_ttl().await,
            Some(problem @ TableProblem::TtlUnsupported { .. }) => {
                tracing::warn!(table = %c.table, "{problem}");
                Ok(())
            }
            Some(problem) => Err(LockError::config(BACKEND, problem.to_string())),
        }
    }

    async fn describe(&self) -> Result<Option<TableDescription>, LockError> {
        let c = self.config();
        match self
            .client()
            .describe_table()
            .table_name(&c.table)
            .send()
            .await
        {
            Ok(out) => Ok(out.table),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(map_sdk_error(
                e,
                "describe table",
                &c.table,
                &c.partition_key,
            )),
        }
    }

    async fn wait_active(&self) -> Result<TableDescription, LockError> {
        let c = self.config();
        let started = Instant::now();
        loop {
            if let Some(table) = self.describe().await?
                && matches!(table.table_status(), Some(TableStatus::Active) | None)
            {
                return Ok(table);
            }
            if started.elapsed() > CREATE_TIMEOUT {
                return Err(LockError::retryable(
                    BACKEND,
                    format!(
                        "table {:?} did not become active within {CREATE_TIMEOUT:?}",
                        c.table
                    ),
                    UnexpectedReply("table still not ACTIVE".into()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn schema_problem(&self, table: &TableDescription) -> Option<TableProblem> {
        let c = self.config();
        let type_of = |name: &str| {
            table
                .attribute_definitions()
                .iter()
                .find(|a| a.attribute_name() == name)
                .map_or("?", |a| a.attribute_type().as_str())
                .to_owned()
        };
        let keys: Vec<String> = table
            .key_schema()
            .iter()
            .map(|k| {
                let role = if *k.key_type() == KeyType::Hash {
                    "partition key"
                } else {
                    "sort key"
                };
                format!(
                    "{role} {:?} ({})",
                    k.attribute_name(),
                    type_of(k.attribute_name())
                )
            })
            .collect();
        let expected = format!("partition key {:?} (S) and no sort key", c.partition_key);
        let right = table.key_schema().len() == 1
            && table.key_schema()[0].attribute_name() == c.partition_key
            && *table.key_schema()[0].key_type() == KeyType::Hash
            && type_of(&c.partition_key) == "S";
        (!right).then(|| TableProblem::WrongKeySchema {
            table: c.table.clone(),
            expected,
            found: if keys.is_empty() {
                "no key schema".to_owned()
            } else {
                keys.join(" and ")
            },
        })
    }

    fn ttl_unsupported(&self) -> TableProblem {
        let c = self.config();
        TableProblem::TtlUnsupported {
            table: c.table.clone(),
            attribute: c.cleanup_attribute.clone(),
        }
    }

    async fn ttl_problem(&self) -> Result<Option<TableProblem>, LockError> {
        let c = self.config();
        let out = match self
            .client()
            .describe_time_to_live()
            .table_name(&c.table)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_unknown_operation(&e) => return Ok(Some(self.ttl_unsupported())),
            Err(e) => {
                return Err(map_sdk_error(
                    e,
                    "describe time to live",
                    &c.table,
                    &c.partition_key,
                ));
            }
        };
        let description = out.time_to_live_description();
        let status = description.and_then(|d| d.time_to_live_status());
        let attribute = description.and_then(|d| d.attribute_name());
        Ok(match status {
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => match attribute {
                Some(found) if found != c.cleanup_attribute => {
                    Some(TableProblem::TtlOnOtherAttribute {
                        table: c.table.clone(),
                        expected: c.cleanup_attribute.clone(),
                        found: found.to_owned(),
                    })
                }
                _ => None,
            },
            _ if !self.ttl_operations_exist().await => Some(self.ttl_unsupported()),
            _ => Some(TableProblem::TtlDisabled {
                table: c.table.clone(),
                attribute: c.cleanup_attribute.clone(),
            }),
        })
    }

    /// Whether the server knows `UpdateTimeToLive`. dynalite answers
    /// `DescribeTimeToLive` with "DISABLED" but has no `UpdateTimeToLive`,
    /// so "disabled" alone cannot tell "turn it on" from "cannot be had".
    /// The probe names a table that cannot exist (a `:` is not allowed in
    /// table names), so it can never change anything: DynamoDB refuses it
    /// as invalid, a server without the operation as unknown. Any answer
    /// but "unknown operation" (a network error or a denied permission
    /// included) counts as "exists", which keeps the usual advice.
    async fn ttl_operations_exist(&self) -> bool {
        let Ok(spec) = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(&self.config().cleanup_attribute)
            .build()
        else {
            return true;
        };
        let probe = self
            .client()
            .update_time_to_live()
            .table_name("lockstore:ttl-probe")
            .time_to_live_specification(spec)
            .send()
            .await;
        !probe.as_ref().is_err_and(is_unknown_operation)
    }

    async fn enable_ttl(&self) -> Result<(), LockError> {
        let c = self.config();
        let spec = self.table_definition()?.time_to_live;
        match self
            .client()
            .update_time_to_live()
            .table_name(&c.table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_unknown_operation(&e) => {
                tracing::warn!(table = %c.table, "{}", self.ttl_unsupported());
                Ok(())
            }
            Err(e) => Err(map_sdk_error(
                e,
                "enable time to live",
                &c.table,
                &c.partition_key,
            )),
        }
    }
}

/// The server does not implement the operation at all (emulators).
fn is_unknown_operation<E: ProvideErrorMetadata>(
    error: &aws_sdk_dynamodb::error::SdkError<E, HttpResponse>,
) -> bool {
    error
        .as_service_error()
        .is_some_and(|e| e.code() == Some("UnknownOperationException"))
}

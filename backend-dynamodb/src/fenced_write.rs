//! Fenced writes on DynamoDB: the condition that makes an item refuse a
//! write from a fence no higher than the one stored on it.
//!
//! A lease's fencing token protects a resource only if the resource checks
//! it. For an item of the caller's own table, [`FencedCondition`] adds
//! `attribute_not_exists(fence) OR fence < :fence` to the caller's
//! `UpdateItem` or `PutItem`, and the fence itself to what it writes, so a
//! paused holder that wakes after its lease was taken over cannot overwrite
//! its successor's item. One request; a refusal is DynamoDB's
//! `ConditionalCheckFailedException` ([`is_stale_update`], [`is_stale_put`]).
//!
//! ```no_run
//! use aws_sdk_dynamodb::types::AttributeValue;
//! use lockstore_dynamodb::fenced_write::{FencedCondition, is_stale_update};
//! # async fn demo(client: aws_sdk_dynamodb::Client, run: lockstore_api::ledger::RunGuard) -> Result<(), Box<dyn std::error::Error>> {
//! let fenced = FencedCondition::new(run.fence());
//! let reply = fenced
//!     .update(
//!         client
//!             .update_item()
//!             .table_name("reports")
//!             .key("day", AttributeValue::S("2026-11-23".into()))
//!             .update_expression(format!("SET row_count = :rows, {}", fenced.set_fence()))
//!             .expression_attribute_values(":rows", AttributeValue::N("42".into())),
//!     )
//!     .send()
//!     .await;
//! match reply {
//!     Ok(_) => run.succeed(None).await?,
//!     Err(err) if is_stale_update(&err) => println!("a newer run wrote this day: ours is stale"),
//!     Err(err) => return Err(err.into()),
//! }
//! # Ok(()) }
//! ```
//!
//! The condition replaces the request's `ConditionExpression`; to combine it
//! with a condition of your own, join [`FencedCondition::expression`] to it
//! with `AND` (in parentheses). Its placeholders (`#lockstore_fence`,
//! `:lockstore_fence`) do not collide with the caller's.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use lockstore_api::FencingToken;

const NAME: &str = "#lockstore_fence";
const VALUE: &str = ":lockstore_fence";

/// The fenced-write condition for one write with `fence`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedCondition {
    fence: FencingToken,
    attribute: String,
}

impl FencedCondition {
    /// The condition for a write with `fence`, kept in the attribute
    /// `fence` (see [`FencedCondition::attribute`]).
    pub fn new(fence: FencingToken) -> Self {
        Self {
            fence,
            attribute: "fence".to_owned(),
        }
    }

    /// Keeps the fence in `name` instead of `fence`.
    pub fn attribute(mut self, name: impl Into<String>) -> Self {
        self.attribute = name.into();
        self
    }

    /// `attribute_not_exists(#lockstore_fence) OR #lockstore_fence < :lockstore_fence`.
    pub fn expression(&self) -> &'static str {
        "(attribute_not_exists(#lockstore_fence) OR #lockstore_fence < :lockstore_fence)"
    }

    /// The assignment that stores the fence, for the caller's
    /// `UpdateExpression`'s `SET` list: `#lockstore_fence = :lockstore_fence`.
    pub fn set_fence(&self) -> &'static str {
        "#lockstore_fence = :lockstore_fence"
    }

    /// The fence as the number attribute a `PutItem`'s item carries (under
    /// [`FencedCondition::attribute_name`]).
    pub fn fence_value(&self) -> AttributeValue {
        AttributeValue::N(self.fence.get().to_string())
    }

    /// The attribute the fence is kept in.
    pub fn attribute_name(&self) -> &str {
        &self.attribute
    }

    /// Adds the condition and its placeholders to an `UpdateItem`, whose
    /// `UpdateExpression` must also store the fence
    /// ([`FencedCondition::set_fence`]).
    pub fn update(&self, request: UpdateItemFluentBuilder) -> UpdateItemFluentBuilder {
        request
            .condition_expression(self.expression())
            .expression_attribute_names(NAME, &self.attribute)
            .expression_attribute_values(VALUE, self.fence_value())
    }

    /// Adds the condition, its placeholders and the fence attribute to a
    /// `PutItem`.
    pub fn put(&self, request: PutItemFluentBuilder) -> PutItemFluentBuilder {
        request
            .item(&self.attribute, self.fence_value())
            .condition_expression(self.expression())
            .expression_attribute_names(NAME, &self.attribute)
            .expression_attribute_values(VALUE, self.fence_value())
    }
}

/// Whether an `UpdateItem` sent with a [`FencedCondition`] was refused as
/// stale (its condition failed: the item holds the same or a higher fence).
pub fn is_stale_update<R>(error: &SdkError<UpdateItemError, R>) -> bool {
    matches!(
        error.as_service_error(),
        Some(UpdateItemError::ConditionalCheckFailedException(_))
    )
}

/// Whether a `PutItem` sent with a [`FencedCondition`] was refused as stale.
pub fn is_stale_put<R>(error: &SdkError<PutItemError, R>) -> bool {
    matches!(
        error.as_service_error(),
        Some(PutItemError::ConditionalCheckFailedException(_))
    )
}

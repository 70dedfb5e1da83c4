//! The error shape of SPEC §1, shared by every transport: a machine code, a sentence a
//! person or model can act on, the request id, and `retry_after` where it applies.

use schemars::JsonSchema;
use serde::Serialize;

use crate::store::StoreError;

/// How long a caller waits before retrying a call the exhausted pool turned away.
pub const POOL_RETRY_AFTER_SECS: u64 = 2;

/// Machine-readable error codes. Every failure a caller can see maps to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    PendingApproval,
    Internal,
}

/// The error object returned as structured content of a tool result with `isError: true`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub error_description: String,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// With `pending_approval`: the held action, for `get_pending_action`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<uuid::Uuid>,
}

/// Errors raised by tool handlers. Mapped to [`ErrorBody`] in exactly one place
/// ([`ToolError::to_body`]); internal details are logged, never returned.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// A rate limit: the message, and seconds until a retry can succeed.
    #[error("{0}")]
    RateLimited(String, u64),
    /// Held by the tenant's approval policy: nothing changed; a person decides the action.
    #[error("{message}")]
    PendingApproval {
        action_id: uuid::Uuid,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
    /// The call ran but its audit record could not be made durable: an internal error whose
    /// text the caller sees, since retrying blindly could do the work twice.
    #[error("{0}")]
    Unrecorded(String),
    /// The server cannot take the call now (the database is down, the process is shutting
    /// down): nothing was done; retry after the seconds given.
    #[error("{0}")]
    Unavailable(String, u64),
    /// Not a failure: the tool needs an answer from the client first (protocol
    /// 2026-07-28); the client calls again with it.
    #[error("the client must answer first")]
    NeedsInput(Box<rmcp::model::InputRequiredResult>),
}

impl ToolError {
    /// The call refused because the database is known to be down.
    pub fn database_down(down: crate::store::health::Down) -> ToolError {
        ToolError::Unavailable(
            format!(
                "The database is unavailable (for {} s so far); nothing was done. Retry in {} s.",
                down.for_secs, down.retry_after
            ),
            down.retry_after,
        )
    }
}

impl From<crate::store::page::PageError> for ToolError {
    fn from(error: crate::store::page::PageError) -> ToolError {
        ToolError::InvalidRequest(error.to_string())
    }
}

impl ToolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ToolError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ToolError::NotFound(_) => ErrorCode::NotFound,
            ToolError::Forbidden(_) => ErrorCode::Forbidden,
            ToolError::Conflict(_) => ErrorCode::Conflict,
            ToolError::RateLimited(..) => ErrorCode::RateLimited,
            ToolError::PendingApproval { .. } => ErrorCode::PendingApproval,
            ToolError::Store(_)
            | ToolError::Internal(_)
            | ToolError::Unrecorded(_)
            | ToolError::Unavailable(..)
            | ToolError::NeedsInput(_) => ErrorCode::Internal,
        }
    }

    /// Every connection of the process's pool stayed in use for the pool's whole wait:
    /// a load to retry, not a fault.
    fn pool_exhausted(&self) -> bool {
        matches!(
            self,
            ToolError::Store(StoreError::Database(sqlx::Error::PoolTimedOut))
        )
    }

    pub fn to_body(&self, request_id: &str) -> ErrorBody {
        let error_description = match self {
            error if error.pool_exhausted() => format!(
                "The server's database connections were all in use for as long as a call waits \
                 for one (--db-max-connections, --db-acquire-timeout-secs); the step that needed \
                 one did not run. Retry in {POOL_RETRY_AFTER_SECS} s; if the call writes, check \
                 first whether an earlier step took effect (request id {request_id})."
            ),
            ToolError::Store(_) | ToolError::Internal(_) | ToolError::NeedsInput(_) => format!(
                "The server could not complete this request. Retry later; if it persists, \
                 report request id {request_id} to the operator."
            ),
            other => other.to_string(),
        };
        ErrorBody {
            error: self.code(),
            error_description,
            request_id: request_id.to_owned(),
            retry_after: match self {
                ToolError::RateLimited(_, seconds) | ToolError::Unavailable(_, seconds) => {
                    Some(*seconds)
                }
                error if error.pool_exhausted() => Some(POOL_RETRY_AFTER_SECS),
                _ => None,
            },
            action_id: match self {
                ToolError::PendingApproval { action_id, .. } => Some(*action_id),
                _ => None,
            },
        }
    }
}

//! What a tool handler learns about the call it serves.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

use super::filter::ToolFilter;
use crate::access::Principal;
use crate::access::policy::Policy;
use crate::app::App;
use crate::error::ToolError;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Stdio,
    Http,
    /// A step of a workflow execution.
    Workflow,
    /// A tool call of a prompt agent's run.
    Agent,
    /// A held call, run once a person approved it.
    Approval,
    /// A tool call of the model in a conversation, as the sender.
    Conversation,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
            Transport::Workflow => "workflow",
            Transport::Agent => "agent",
            Transport::Approval => "approval",
            Transport::Conversation => "conversation",
        }
    }

    /// Who is on the other end, in a sentence.
    pub fn describe(self) -> &'static str {
        match self {
            Transport::Stdio | Transport::Http => "this client",
            Transport::Workflow => "a workflow run",
            Transport::Agent => "an agent run",
            Transport::Approval => "an approved action",
            Transport::Conversation => "a conversation's model",
        }
    }
}

impl ToolCtx {
    /// The caller's field rules, row conditions and grants, for the policy API.
    pub async fn policy(&self) -> Result<Arc<Policy>, ToolError> {
        Ok(
            Policy::load_cached(self.app.store.pool(), &self.app.auth_cache, &self.principal)
                .await?,
        )
    }

    /// A transaction for the tool's writes, to end with [`ToolCtx::commit`].
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ToolError> {
        Ok(self
            .app
            .store
            .pool()
            .begin()
            .await
            .map_err(StoreError::from)?)
    }

    /// Commits a tool's transaction with what the call records alongside (its [`Seal`]).
    /// A workflow step whose execution another process holds now writes nothing.
    pub async fn commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), ToolError> {
        if let Some((run_id, owner)) = self.seal.step {
            let sealed = sqlx::query(
                "UPDATE workflow_step_runs r SET committed_at = now()
                 FROM workflow_executions e
                 WHERE r.id = $1 AND e.id = r.execution_id AND e.lease_owner = $2
                   AND r.status = 'running'",
            )
            .bind(run_id)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            if sealed.rows_affected() != 1 {
                tx.rollback().await.map_err(StoreError::from)?;
                return Err(ToolError::Conflict(
                    "this workflow step's execution is held by another process now; nothing \
                     was written"
                        .into(),
                ));
            }
        }
        let audit = self.seal.copy_audit().map(|mut event| {
            event.duration_ms = self
                .seal
                .started
                .map(|started| started.elapsed().as_secs_f64() * 1000.0);
            event
        });
        if let Some(event) = &audit
            && let Err(error) = crate::access::audit::insert_one(&mut tx, event).await
        {
            // The record goes the usual way, after the call.
            tracing::warn!(%error, "could not write an audit record with the call's writes");
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(StoreError::from(error).into());
        }
        match tx.commit().await {
            Ok(()) => {
                if audit.is_some() {
                    self.seal
                        .audited
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(())
            }
            Err(error) => Err(StoreError::from(error).into()),
        }
    }
}

#[derive(Clone)]
pub struct ToolCtx {
    pub app: Arc<App>,
    pub transport: Transport,
    /// Who is calling; every query a tool makes is scoped by `principal.tenant_id`.
    pub principal: Principal,
    /// Unique per tool call; returned in errors and logged, so a report can be traced.
    pub request_id: String,
    /// The MCP session, on HTTP sessions of protocol versions that have them.
    pub session_id: Option<String>,
    /// The filter in force for this request (configuration narrowed by request headers).
    pub filter: Arc<ToolFilter>,
    /// Where to send progress notifications, when the client asked for them.
    pub progress: Option<Progress>,
    /// The tool being called and its arguments as sent: what the approval hook stores.
    pub tool: &'static str,
    pub arguments: Arc<rmcp::model::JsonObject>,
    /// Set only by `decide_pending_action` when it runs an approved action: the approval
    /// hook lets that one call through. No argument of a call can set it.
    pub approved_action: Option<uuid::Uuid>,
    /// The client on the other end, for tools that ask it something (sampling); absent in
    /// workflow runs and approved actions.
    pub client: Option<ClientSide>,
    /// What commits with the tool's own writes (see [`ToolCtx::commit`]).
    pub seal: Arc<Seal>,
}

/// What a call records in the same transaction as its own writes, when the tool commits
/// through [`ToolCtx::commit`]: its audit record (a call that changed data is never left
/// without one), and, for a workflow step, the mark that its effects committed (fenced on
/// the execution's lease, so a process that lost the lease writes nothing).
#[derive(Default)]
pub struct Seal {
    audit: std::sync::Mutex<Option<crate::access::audit::AuditEvent>>,
    audited: std::sync::atomic::AtomicBool,
    started: Option<std::time::Instant>,
    /// A workflow step attempt, and the lease holder it runs under.
    step: Option<(i64, uuid::Uuid)>,
}

impl Seal {
    pub fn new(audit: crate::access::audit::AuditEvent, step: Option<(i64, uuid::Uuid)>) -> Seal {
        Seal {
            audit: std::sync::Mutex::new(Some(audit)),
            audited: Default::default(),
            started: Some(std::time::Instant::now()),
            step,
        }
    }

    /// Whether the call's audit record committed with its writes.
    pub fn audited(&self) -> bool {
        self.audited.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The call's event, for the call path once the tool is done (whether or not it was
    /// committed with the tool's writes).
    pub fn take_audit(&self) -> Option<crate::access::audit::AuditEvent> {
        match self.audit.lock() {
            Ok(mut audit) => audit.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// A copy to commit with a tool's writes, unless one already committed (a call has one
    /// record, however many transactions its tool commits). The event stays for the call
    /// path, which records it after all if the call fails after its writes committed.
    fn copy_audit(&self) -> Option<crate::access::audit::AuditEvent> {
        if self.audited() {
            return None;
        }
        match self.audit.lock() {
            Ok(audit) => audit.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// What a tool may ask of the calling client.
#[derive(Clone)]
pub struct ClientSide {
    pub peer: rmcp::Peer<rmcp::RoleServer>,
    /// Protocol 2026-07-28: questions go back as an input-required result, and their
    /// answers come with the next call (`answers`).
    pub modern: bool,
    pub capabilities: Option<rmcp::model::ClientCapabilities>,
    pub answers: Option<rmcp::model::InputResponses>,
}

/// A client's progress token and the connection to notify it on.
#[derive(Clone)]
pub struct Progress {
    pub peer: rmcp::Peer<rmcp::RoleServer>,
    pub token: rmcp::model::ProgressToken,
}

impl Progress {
    /// Best effort: a client that went away does not fail the work.
    pub async fn report(&self, done: u64, total: u64, message: String) {
        let mut param =
            rmcp::model::ProgressNotificationParam::new(self.token.clone(), done as f64)
                .with_total(total as f64);
        param.message = Some(message);
        if let Err(error) = self.peer.notify_progress(param).await {
            tracing::debug!(%error, "progress notification not delivered");
        }
    }
}

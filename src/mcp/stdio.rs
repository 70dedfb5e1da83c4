//! MCP over stdio: stdout carries only protocol messages (logs go to stderr).

use std::sync::Arc;

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use super::server::AgentCrm;
use crate::access::Principal;
use crate::app::App;

/// Serves one client until it closes stdin or `shutdown` is cancelled.
pub async fn serve(
    app: Arc<App>,
    principal: Principal,
    shutdown: CancellationToken,
) -> Result<(), rmcp::service::ServerInitializeError> {
    let server = AgentCrm::stdio(app, principal);
    let running = tokio::select! {
        running = server.serve(rmcp::transport::io::stdio_pipes()) => running?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let cancel = running.cancellation_token();
    tokio::select! {
        outcome = running.waiting() => {
            if let Err(error) = outcome {
                tracing::warn!(%error, "stdio session ended with an error");
            }
        }
        _ = shutdown.cancelled() => cancel.cancel(),
    }
    Ok(())
}

//! Process-wide state shared by both transports.

use std::sync::Arc;

use crate::mcp::catalog::Catalog;
use crate::mcp::filter::ToolFilter;
use crate::store::{Store, Tenant};

pub struct App {
    pub store: Store,
    pub catalog: &'static Catalog,
    /// The tools configuration enables; requests can only narrow it.
    pub filter: Arc<ToolFilter>,
    /// The tenant of the local owner (the embedded default's only tenant).
    pub local_tenant: Tenant,
}

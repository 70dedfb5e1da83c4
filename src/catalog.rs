//! The catalog of every tool this server has, assembled from each toolset's declarations:
//! the one place that knows every domain, so the tool kit and the MCP layer need not.

use std::sync::OnceLock;

use crate::toolkit::catalog::Catalog;

/// The built-in catalog, built once per process, in a stable order.
pub fn builtin() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut tools = crate::account::tools();
        tools.extend(crate::admin::tools());
        tools.extend(crate::crm::tools());
        tools.extend(crate::handoff::tools());
        tools.extend(crate::workflows::tools());
        tools.extend(crate::agents::tools());
        tools.extend(crate::connections::tools());
        tools.extend(crate::mcp::discovery::tools());
        Catalog::new(tools)
    })
}

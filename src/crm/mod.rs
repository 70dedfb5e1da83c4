//! The `crm` toolset: customers, interactions and annotations (search, bulk, reports,
//! products, invoices, quotes and webhooks in their own modules).

pub mod bulk;
pub mod customers;
pub mod export;
pub mod interactions;
pub mod invoices;
pub mod quotes;
pub mod reports;
pub mod search;
pub mod webhooks;

use crate::toolkit::catalog::RegisteredTool;

pub fn tools() -> Vec<RegisteredTool> {
    let mut tools = customers::tools();
    tools.extend(interactions::tools());
    tools.extend(search::tools());
    tools.extend(bulk::tools());
    tools.extend(export::tools());
    tools.extend(invoices::tools());
    tools.extend(quotes::tools());
    tools.extend(reports::tools());
    tools.extend(webhooks::tools());
    tools
}

//! The `crm` toolset: customers (interactions, search, invoices and the rest follow).

pub mod customers;

use crate::mcp::catalog::RegisteredTool;

pub fn tools() -> Vec<RegisteredTool> {
    customers::tools()
}

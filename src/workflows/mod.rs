//! The `workflows` toolset: multi-step tool chains. `model` is what a workflow is and how
//! it is checked, `expr` its references and conditions, `definitions` the tools that save
//! and test them.

pub mod definitions;
pub mod expr;
pub mod model;

use crate::mcp::catalog::RegisteredTool;

pub fn tools() -> Vec<RegisteredTool> {
    definitions::tools()
}

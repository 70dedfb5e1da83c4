//! The `workflows` toolset: multi-step tool chains. `model` is what a workflow is and how
//! it is checked, `expr` its references and conditions, `definitions` the tools that save
//! and test them.

pub mod definitions;
pub mod draft;
pub mod engine;
pub mod executions;
pub mod expr;
pub mod model;
pub mod schedule;
pub mod sessions;
pub mod templates;
pub mod triggers;

use crate::toolkit::catalog::RegisteredTool;

pub fn tools() -> Vec<RegisteredTool> {
    let mut tools = definitions::tools();
    tools.extend(executions::tools());
    tools.extend(templates::tools());
    tools.extend(sessions::tools());
    tools.extend(draft::tools());
    tools
}

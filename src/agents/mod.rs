//! The `agents` toolset: runnable agents on top of the agent identities of `access`
//! (`config`, `manage`), their runs (`runner`, `runs`), schedules and chains
//! (`schedules`), signed callbacks (`callbacks`), built-in templates (`templates`), and
//! conversations with a model (`conversations`).

pub mod callbacks;
pub mod config;
pub mod conversations;
pub mod manage;
pub mod runner;
pub mod runs;
pub mod schedules;
pub mod templates;

use crate::toolkit::catalog::RegisteredTool;

pub fn tools() -> Vec<RegisteredTool> {
    let mut tools = manage::tools();
    tools.extend(runs::tools());
    tools.extend(schedules::tools());
    tools.extend(templates::tools());
    tools.extend(conversations::tools());
    tools
}

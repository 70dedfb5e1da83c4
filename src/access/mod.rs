//! The access layer: principals, credentials, scopes and the audit trail. Every tool call
//! passes through it; no toolset has auth code of its own.

pub mod approval;
pub mod audit;
pub mod cache;
pub mod delegation;
pub mod federation;
pub mod identity;
pub mod oauth;
pub mod policy;
pub mod principal;
pub mod ratelimit;
pub mod scopes;
pub mod secrets;
pub mod signin;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod vault;

pub use principal::{Principal, PrincipalKind, Role};
pub use scopes::Scopes;

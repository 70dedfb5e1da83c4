//! Turning credentials into a principal: API keys (HTTP `X-Api-Key` or bearer, stdio
//! `AGENTCRM_API_KEY`) and agent client credentials (stdio `AGENTCRM_CLIENT_ID`/`SECRET`).

use sqlx::PgPool;

use super::principal::Principal;
use super::secrets::API_KEY_PREFIX;
use super::store::{self, ClientRefusal};
use super::throttle::{self, Throttle};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials were given")]
    Missing,
    /// Deliberately vague: which part was wrong is logged, never told.
    #[error("the credentials are invalid, revoked or disabled")]
    Invalid,
    /// Too many failed attempts for this client id or source address: try again later.
    #[error("too many failed attempts; retry in {0} s")]
    Throttled(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub enum Credential<'a> {
    ApiKey(&'a str),
    Client { id: &'a str, secret: &'a str },
}

impl<'a> Credential<'a> {
    /// A bearer value: API keys are recognisable by their prefix.
    pub fn from_bearer(token: &'a str) -> Option<Credential<'a>> {
        token
            .starts_with(API_KEY_PREFIX)
            .then_some(Credential::ApiKey(token))
    }
}

pub async fn authenticate(
    pool: &PgPool,
    credential: Credential<'_>,
) -> Result<Principal, AuthError> {
    authenticate_from(pool, credential, None).await
}

/// [`authenticate`], counting failed client authentications against the client id and the
/// source address (see `throttle`).
pub async fn authenticate_from(
    pool: &PgPool,
    credential: Credential<'_>,
    source: Option<std::net::IpAddr>,
) -> Result<Principal, AuthError> {
    match credential {
        Credential::ApiKey(key) => store::principal_for_api_key(pool, key)
            .await?
            .ok_or(AuthError::Invalid),
        Credential::Client { id, secret } => {
            let throttle = Throttle::global();
            let keys = throttle::keys(id, source);
            throttle.check(&keys).map_err(AuthError::Throttled)?;
            match store::principal_for_client(pool, id, secret).await? {
                Ok(principal) => {
                    throttle.succeeded(&keys[0]);
                    Ok(principal)
                }
                Err(refusal) => {
                    throttle.failed(&keys);
                    let reason = match refusal {
                        ClientRefusal::UnknownClient => "unknown client id",
                        ClientRefusal::WrongSecret => "wrong client secret",
                        ClientRefusal::Disabled => "agent disabled",
                    };
                    tracing::info!(reason, "client credentials refused");
                    Err(AuthError::Invalid)
                }
            }
        }
    }
}

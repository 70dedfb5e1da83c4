//! OAuth2 tokens: HS256 JWT access tokens (one hour), opaque refresh tokens that rotate on
//! use, and revocation shared by every process through PostgreSQL.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::principal::{Principal, PrincipalKind, Role};
use super::scopes::Scopes;
use super::secrets;
use crate::store::StoreError;

pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);
const REFRESH_TOKEN_DAYS: i64 = 30;
pub const REFRESH_TOKEN_PREFIX: &str = "acrt_";

/// JWT claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The agent.
    pub sub: Uuid,
    /// The agent's tenant.
    pub tid: Uuid,
    /// Space-separated scopes granted to this token.
    pub scope: String,
    pub client_id: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    /// `user` for a person who signed in through a client (authorization code grant);
    /// absent for an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The `kind` claim of a person's token.
pub const USER_TOKEN: &str = "user";

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// This server's base URL (the authorization server).
    pub issuer: String,
    /// The protected resource: `<issuer>/mcp`.
    pub audience: String,
    /// How long an access token lives (an hour unless the operator says otherwise).
    pub ttl: Duration,
    /// Tokens this process verified, until they expire: a client sends the same token on
    /// every call, and checking its signature and decoding it each time cost more than the
    /// rest of authentication. Keyed by the whole token, so only that exact text hits.
    verified: std::sync::Mutex<std::collections::HashMap<Box<str>, Claims>>,
}

/// Verified tokens kept at most; past that, the expired are dropped, or all if none is.
const MAX_VERIFIED: usize = 4096;

impl TokenKeys {
    pub fn new(secret: &[u8], public_url: &str) -> TokenKeys {
        install_jwt_provider();
        let issuer = public_url.trim_end_matches('/').to_owned();
        let audience = format!("{issuer}/mcp");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer,
            audience,
            ttl: ACCESS_TOKEN_TTL,
            verified: Default::default(),
        }
    }

    /// Access tokens that live `ttl` instead of an hour.
    pub fn with_ttl(mut self, ttl: Duration) -> TokenKeys {
        self.ttl = ttl;
        self
    }

    /// A signed access token for `agent` (or a signed-in person) carrying `scopes`.
    pub fn mint(
        &self,
        agent: &Principal,
        client_id: &str,
        scopes: Scopes,
    ) -> Result<(String, Claims), jsonwebtoken::errors::Error> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: agent.id.unwrap_or_default(),
            tid: agent.tenant_id,
            scope: scopes.names().join(" "),
            client_id: client_id.to_owned(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: Uuid::now_v7(),
            kind: (agent.kind == PrincipalKind::User).then(|| USER_TOKEN.to_owned()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// Signature, issuer, audience and expiry all checked.
    /// A token verified earlier is taken as it was until its `exp` (without the leeway,
    /// which only a full check grants); revocation is not decided here but by the caller,
    /// per `jti`, on every call.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let now = Utc::now().timestamp();
        if let Some(claims) = self.verified().get(token).filter(|c| c.exp > now) {
            return Some(claims.clone());
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .ok()?;
        let mut verified = self.verified();
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, c| c.exp > now);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
        Some(claims)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<str>, Claims>> {
        // Holds only copies of verified claims, never across an await: a poisoned lock
        // (a panic elsewhere) still holds consistent data.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signature checked, expiry not: for revoking a token that may have just expired.
    pub fn verify_ignoring_expiry(&self, token: &str) -> Option<Claims> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .ok()
    }
}

/// Makes `jsonwebtoken` sign and verify with [`hs256`]; for anything in the process that
/// uses the crate (tests that forge tokens too). Installing it twice is harmless.
pub fn install_jwt_provider() {
    let _ = hs256::PROVIDER.install_default();
}

/// HS256 for `jsonwebtoken`, with the `hmac` and `sha2` already in the tree. Its own
/// `rust_crypto` backend would bring `rsa` 0.9 (RUSTSEC-2023-0071), the elliptic curves and
/// a second generation of the digest crates only to sign HS256. Any other algorithm is
/// refused, whatever a token's header says.
mod hs256 {
    use hmac::{Hmac, KeyInit, Mac};
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{ErrorKind, Result};
    use jsonwebtoken::signature::{self, Signer, Verifier};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
    use sha2::Sha256;

    struct Hs256(Hmac<Sha256>);

    impl Hs256 {
        fn new(algorithm: &Algorithm, secret: &[u8]) -> Result<Hs256> {
            if *algorithm != Algorithm::HS256 {
                return Err(ErrorKind::InvalidAlgorithm.into());
            }
            Hmac::<Sha256>::new_from_slice(secret)
                .map(Hs256)
                .map_err(|_| ErrorKind::InvalidKeyFormat.into())
        }

        fn mac(&self, message: &[u8]) -> Hmac<Sha256> {
            let mut mac = self.0.clone();
            mac.update(message);
            mac
        }
    }

    impl Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            Ok(self.mac(message).finalize().into_bytes().to_vec())
        }
    }

    impl Verifier<Vec<u8>> for Hs256 {
        fn verify(
            &self,
            message: &[u8],
            signature: &Vec<u8>,
        ) -> std::result::Result<(), signature::Error> {
            // Constant-time comparison.
            self.mac(message)
                .verify_slice(signature)
                .map_err(|_| signature::Error::new())
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
        Ok(Box::new(Hs256::new(algorithm, key.as_bytes())?))
    }

    fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
        Ok(Box::new(Hs256::new(algorithm, key.try_get_as_bytes()?)?))
    }

    pub static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: signer,
        verifier_factory: verifier,
        key_utils: KeyUtils::new_unimplemented(),
    };
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    name: String,
    enabled: bool,
    scopes: Vec<String>,
    client_id: String,
}

/// The agent a token stands for, as it is now: disabled agents, revoked tokens and a
/// tenant that does not match are refused; scopes are the token's within the agent's
/// current ones. One round trip. A person's token: see [`person_for_token`].
pub async fn principal_for_token(
    pool: &PgPool,
    claims: &Claims,
) -> Result<Option<Principal>, StoreError> {
    if claims.kind.as_deref() == Some(USER_TOKEN) {
        return person_for_token(
            pool,
            claims.tid,
            claims.sub,
            &claims.client_id,
            &claims.scope,
            Some(claims.jti),
        )
        .await;
    }
    let row: Option<(String, bool, Vec<String>, bool)> = sqlx::query_as(
        "SELECT a.name, a.enabled, a.scopes,
                EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = $3) AS revoked
         FROM agents a WHERE a.id = $1 AND a.tenant_id = $2",
    )
    .bind(claims.sub)
    .bind(claims.tid)
    .bind(claims.jti)
    .fetch_optional(pool)
    .await?;
    let Some((name, enabled, scopes, revoked)) = row else {
        return Ok(None);
    };
    if !enabled || revoked {
        return Ok(None);
    }
    let granted: Vec<&str> = claims.scope.split_whitespace().collect();
    let scopes = Scopes::parse(&granted)
        .unwrap_or_default()
        .intersect(Scopes::parse(&scopes).unwrap_or_default());
    Ok(Some(agent_principal(claims.sub, claims.tid, name, scopes)))
}

/// The person a token (access or refresh) stands for, as they are now: their consent to the
/// client must still stand (revoking it ends its tokens at once) and the access token must
/// not be revoked; scopes are the token's within what the person's role allows today.
async fn person_for_token(
    pool: &PgPool,
    tenant_id: Uuid,
    user_id: Uuid,
    client_id: &str,
    granted: &str,
    jti: Option<Uuid>,
) -> Result<Option<Principal>, StoreError> {
    let row: Option<(String, String, Vec<String>, bool)> = sqlx::query_as(
        "SELECT u.name, u.role, u.scopes,
                EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = $4) AS revoked
         FROM users u
         JOIN oauth_consents c ON c.tenant_id = u.tenant_id AND c.user_id = u.id AND c.client_id = $3
         WHERE u.id = $1 AND u.tenant_id = $2",
    )
    .bind(user_id)
    .bind(tenant_id)
    .bind(client_id)
    .bind(jti)
    .fetch_optional(pool)
    .await?;
    let Some((name, role, scopes, revoked)) = row else {
        return Ok(None);
    };
    if revoked {
        return Ok(None);
    }
    let role = Role::parse(&role).unwrap_or(Role::Member);
    let allowed = Principal::human_scopes(role, Scopes::parse(&scopes).unwrap_or(Scopes::NONE));
    let granted: Vec<&str> = granted.split_whitespace().collect();
    Ok(Some(Principal {
        tenant_id,
        kind: PrincipalKind::User,
        id: Some(user_id),
        name,
        role: Some(role),
        on_behalf_of: None,
        scopes: Scopes::parse(&granted)
            .unwrap_or_default()
            .intersect(allowed),
        delegation: None,
    }))
}

fn agent_principal(id: Uuid, tenant_id: Uuid, name: String, scopes: Scopes) -> Principal {
    Principal {
        tenant_id,
        kind: PrincipalKind::Agent,
        id: Some(id),
        name,
        role: None,
        on_behalf_of: None,
        scopes,
        delegation: None,
    }
}

/// A new refresh token for an agent, or for a person through `client_id`, valid 30 days,
/// stored only as a digest.
pub async fn issue_refresh_token(
    pool: &PgPool,
    holder: &Principal,
    client_id: &str,
    scopes: Scopes,
) -> Result<String, StoreError> {
    let (key, _, _) = secrets::new_api_key();
    let token = format!(
        "{REFRESH_TOKEN_PREFIX}{}",
        &key[secrets::API_KEY_PREFIX.len()..]
    );
    let person = holder.kind == PrincipalKind::User;
    sqlx::query(
        "INSERT INTO refresh_tokens (tenant_id, agent_id, user_id, client_id, token_hash, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7))",
    )
    .bind(holder.tenant_id)
    .bind(holder.id.filter(|_| !person))
    .bind(holder.id.filter(|_| person))
    .bind(person.then_some(client_id))
    .bind(secrets::digest(&token))
    .bind(scopes.to_strings())
    .bind(REFRESH_TOKEN_DAYS as i32)
    .execute(pool)
    .await?;
    Ok(token)
}

/// Uses up a refresh token (each works once) and returns the agent it was issued to,
/// with the token's scopes within the agent's current ones; `None` for an unknown,
/// used, revoked or expired token, or a disabled agent.
pub async fn redeem_refresh_token(
    pool: &PgPool,
    token: &str,
) -> Result<Option<(Principal, String)>, StoreError> {
    type Redeemed = (
        Option<Uuid>,
        Option<Uuid>,
        Option<String>,
        Uuid,
        Vec<String>,
    );
    let row: Option<Redeemed> = sqlx::query_as(
        "UPDATE refresh_tokens SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
         RETURNING agent_id, user_id, client_id, tenant_id, scopes",
    )
    .bind(secrets::digest(token))
    .fetch_optional(pool)
    .await?;
    let (agent_id, tenant_id, granted) = match row {
        Some((Some(agent_id), _, _, tenant_id, granted)) => (agent_id, tenant_id, granted),
        Some((None, Some(user_id), Some(client_id), tenant_id, granted)) => {
            let person = person_for_token(
                pool,
                tenant_id,
                user_id,
                &client_id,
                &granted.join(" "),
                None,
            )
            .await?;
            return Ok(person.map(|p| (p, client_id)));
        }
        _ => return Ok(None),
    };
    let agent = sqlx::query_as::<_, AgentRow>(
        "SELECT name, enabled, scopes, client_id FROM agents WHERE id = $1 AND tenant_id = $2",
    )
    .bind(agent_id)
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?;
    let Some(agent) = agent.filter(|a| a.enabled) else {
        return Ok(None);
    };
    let scopes = Scopes::parse(&granted)
        .unwrap_or_default()
        .intersect(Scopes::parse(&agent.scopes).unwrap_or_default());
    Ok(Some((
        agent_principal(agent_id, tenant_id, agent.name, scopes),
        agent.client_id,
    )))
}

/// Revokes whatever `token` is (access or refresh). Returns the tenant it belonged to.
pub async fn revoke(
    pool: &PgPool,
    keys: Option<&TokenKeys>,
    token: &str,
) -> Result<Option<Uuid>, StoreError> {
    if token.starts_with(REFRESH_TOKEN_PREFIX) {
        let tenant: Option<Uuid> = sqlx::query_scalar(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL
             RETURNING tenant_id",
        )
        .bind(secrets::digest(token))
        .fetch_optional(pool)
        .await?;
        return Ok(tenant);
    }
    let Some(claims) = keys.and_then(|k| k.verify_ignoring_expiry(token)) else {
        return Ok(None);
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, tenant_id, expires_at) VALUES ($1, $2, to_timestamp($3))
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(claims.jti)
    .bind(claims.tid)
    .bind(claims.exp as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(claims.tid))
}

/// Token issues and refreshes by `agent` in the last hour, and when the oldest of them
/// leaves the window (seconds from now).
pub async fn recent_issues(
    pool: &PgPool,
    agent_id: Uuid,
) -> Result<(i64, Option<f64>), StoreError> {
    let (count, retry): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*),
                extract(epoch FROM (min(at) + interval '1 hour' - now()))::float8
         FROM audit_events
         WHERE principal_id = $1 AND action IN ('token.issued', 'token.refreshed')
           AND outcome = 'ok' AND at > now() - interval '1 hour'",
    )
    .bind(agent_id)
    .fetch_one(pool)
    .await?;
    Ok((count, retry))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, KeyInit, Mac};

    use super::*;

    fn agent() -> Principal {
        Principal {
            kind: PrincipalKind::Agent,
            id: Some(Uuid::now_v7()),
            tenant_id: Uuid::now_v7(),
            name: "bot".into(),
            role: None,
            on_behalf_of: None,
            scopes: Scopes::EVERY,
            delegation: None,
        }
    }

    /// The token with its header replaced and signed again with `sign`.
    fn resigned(token: &str, header: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let payload = token.split('.').nth(1).unwrap();
        let message = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header));
        let signature = URL_SAFE_NO_PAD.encode(sign(message.as_bytes()));
        format!("{message}.{signature}")
    }

    #[test]
    fn hs256_tokens_verify_and_nothing_else_does() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let keys = TokenKeys::new(secret, "https://crm.example");
        let (token, claims) = keys.mint(&agent(), "client", Scopes::EVERY).unwrap();
        assert_eq!(keys.verify(&token).unwrap().jti, claims.jti);
        assert!(token.starts_with(&URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"HS256"}"#)));

        let other = TokenKeys::new(
            b"another secret, as long as the first",
            "https://crm.example",
        );
        assert!(other.verify(&token).is_none(), "another key's signature");
        let mut tampered = token.clone();
        tampered.replace_range(tampered.len() - 2.., "AA");
        assert!(keys.verify(&tampered).is_none());
        let hs512 = resigned(&token, r#"{"alg":"HS512","typ":"JWT"}"#, |m| {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            mac.update(m);
            mac.finalize().into_bytes().to_vec()
        });
        assert!(keys.verify(&hs512).is_none(), "HS512, validly signed");
        let none = resigned(&token, r#"{"alg":"none","typ":"JWT"}"#, |_| Vec::new());
        assert!(keys.verify(&none).is_none(), "alg none");
    }

    /// Verified tokens are kept until their expiry, by their exact text: what is kept is
    /// only ever what a full check passed, and it stops counting at `exp`.
    #[test]
    fn verified_tokens_are_kept_by_their_text_until_they_expire() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef", "https://crm.example");
        let (token, claims) = keys.mint(&agent(), "client", Scopes::EVERY).unwrap();
        assert_eq!(keys.verify(&token).unwrap().jti, claims.jti);
        assert_eq!(keys.verified().len(), 1);
        assert_eq!(
            keys.verify(&token).unwrap().jti,
            claims.jti,
            "from the cache"
        );
        let mut tampered = token.clone();
        tampered.replace_range(tampered.len() - 2.., "AA");
        assert!(
            keys.verify(&tampered).is_none(),
            "another text is checked in full"
        );

        // Kept claims past their expiry do not count: the token is checked in full again
        // (here, text that was never validly signed, so it is refused).
        let mut expired = claims.clone();
        expired.exp = Utc::now().timestamp() - 1;
        keys.verified().insert("not.a.token".into(), expired);
        assert!(keys.verify("not.a.token").is_none());

        // Full: the expired go first, then everything.
        {
            let mut kept = keys.verified();
            kept.clear();
            for i in 0..MAX_VERIFIED {
                let mut c = claims.clone();
                c.exp = if i % 2 == 0 { 0 } else { i64::MAX };
                kept.insert(format!("t{i}").into(), c);
            }
        }
        let (fresh, _) = keys.mint(&agent(), "client", Scopes::EVERY).unwrap();
        assert!(keys.verify(&fresh).is_some());
        assert_eq!(keys.verified().len(), MAX_VERIFIED / 2 + 1);
    }
}

-- People sign in from remote MCP clients: OAuth 2.1 authorization code grant with PKCE,
-- registered clients, consent, sign-in sessions, local passwords.

-- argon2id PHC string; NULL: this person cannot sign in with a password.
ALTER TABLE users ADD COLUMN password_hash text;

-- Clients people connect: registered through Dynamic Client Registration (RFC 7591), or
-- known by a Client ID Metadata Document (the client_id is an HTTPS URL, fetched and cached).
-- Public clients: they prove themselves with PKCE, never with a secret.
CREATE TABLE oauth_clients (
    client_id      text        PRIMARY KEY CHECK (length(client_id) BETWEEN 1 AND 2048),
    kind           text        NOT NULL CHECK (kind IN ('registered', 'metadata_document')),
    client_name    text        NOT NULL CHECK (length(client_name) BETWEEN 1 AND 200),
    client_uri     text,
    redirect_uris  text[]      NOT NULL,
    -- Who registered it (DCR), for the per-address rate limit.
    registered_from inet,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- A metadata document is fetched again after a day.
    fetched_at     timestamptz,
    -- Registrations unused for 30 days are removed.
    last_used_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_clients_registered_from ON oauth_clients (registered_from, created_at);

-- A person's consent to a client: what it may do for them. Revoking it ends the client's
-- refresh tokens for that person.
CREATE TABLE oauth_consents (
    tenant_id    uuid        NOT NULL,
    user_id      uuid        NOT NULL,
    client_id    text        NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    scopes       text[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, client_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

-- Authorization codes: one use, ten minutes, stored as a digest.
CREATE TABLE authorization_codes (
    code_hash      bytea       PRIMARY KEY,
    tenant_id      uuid        NOT NULL,
    user_id        uuid        NOT NULL,
    client_id      text        NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    redirect_uri   text        NOT NULL,
    code_challenge text        NOT NULL,
    scopes         text[]      NOT NULL,
    resource       text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

-- Signed-in browsers: the cookie carries the id, stored as a digest.
CREATE TABLE signin_sessions (
    id_hash     bytea       PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

-- Refresh tokens are issued to people's clients too.
ALTER TABLE refresh_tokens ALTER COLUMN agent_id DROP NOT NULL;
ALTER TABLE refresh_tokens ADD COLUMN user_id uuid;
ALTER TABLE refresh_tokens ADD COLUMN client_id text;
ALTER TABLE refresh_tokens ADD COLUMN resource text;
ALTER TABLE refresh_tokens ADD CONSTRAINT refresh_tokens_holder
    CHECK ((agent_id IS NULL) <> (user_id IS NULL));
ALTER TABLE refresh_tokens ADD CONSTRAINT refresh_tokens_user
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE;
CREATE INDEX refresh_tokens_user_client ON refresh_tokens (user_id, client_id) WHERE user_id IS NOT NULL;

-- Withdrawing a consent ends the client's access tokens at their next use, in every process.
CREATE TRIGGER oauth_consents_auth_changed AFTER UPDATE OR DELETE ON oauth_consents
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();

-- Federation: a tenant's people may sign in through its OpenID Connect provider.
CREATE TABLE identity_providers (
    tenant_id      uuid        PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    issuer         text        NOT NULL CHECK (length(issuer) BETWEEN 1 AND 2048),
    client_id      text        NOT NULL CHECK (length(client_id) BETWEEN 1 AND 500),
    -- Sealed with the server's encryption key (access::vault), bound to the tenant.
    client_secret  bytea       NOT NULL,
    display_name   text        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    -- People the provider vouches for but who have no user yet become members on first sign-in.
    create_members boolean     NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- A sign-in in flight at the provider: what to check when it comes back, and the
-- authorization request to resume.
CREATE TABLE federated_logins (
    state_hash   bytea       PRIMARY KEY,
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    nonce        text        NOT NULL,
    verifier     text        NOT NULL,
    resume       text        NOT NULL,
    expires_at   timestamptz NOT NULL
);

-- Invitations: a one-time link to set one's password, valid seven days.
CREATE TABLE invites (
    token_hash  bytea       PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

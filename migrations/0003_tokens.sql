-- OAuth2: refresh tokens (rotated on use) and revoked access tokens, shared by every process.

CREATE TABLE refresh_tokens (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id    uuid        NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    token_hash  bytea       NOT NULL UNIQUE,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    -- Set when rotated (used once) or revoked; either way it is dead.
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_agent ON refresh_tokens (agent_id);

CREATE TABLE revoked_tokens (
    jti         uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- After this the token is expired anyway and the row can go.
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now()
);

-- Sliding windows over auth events (token issuing is rate limited per agent).
CREATE INDEX audit_events_principal_action_at ON audit_events (principal_id, action, at DESC);

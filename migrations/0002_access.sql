-- Principals: human users, agents, API keys; and the audit trail of everything they do.

CREATE TABLE users (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email       text        NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role        text        NOT NULL CHECK (role IN ('admin', 'member')),
    -- Members hold these scopes; admins hold every scope.
    scopes      text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email),
    UNIQUE (tenant_id, id)
);

CREATE TABLE agents (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description  text        NOT NULL DEFAULT '',
    client_id    text        NOT NULL UNIQUE,
    -- argon2id PHC string; the secret itself is shown once and never stored.
    secret_hash  text        NOT NULL,
    kind         text        NOT NULL DEFAULT 'external' CHECK (kind IN ('internal', 'external')),
    enabled      boolean     NOT NULL DEFAULT true,
    scopes       text[]      NOT NULL DEFAULT '{}',
    created_by   uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_keys (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL,
    owner_user_id uuid        NOT NULL,
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- The first characters of the key, so a person can tell keys apart.
    prefix        text        NOT NULL,
    key_hash      bytea       NOT NULL UNIQUE,
    -- A subset of the owner's scopes; empty inherits the owner's permissions.
    scopes        text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    FOREIGN KEY (tenant_id, owner_user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE audit_events (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    -- Null only for refused authentication that named no known tenant.
    tenant_id     uuid        REFERENCES tenants (id) ON DELETE CASCADE,
    kind          text        NOT NULL CHECK (kind IN ('tool', 'auth')),
    action        text        NOT NULL,
    principal_kind text,
    principal_id  uuid,
    principal_name text,
    on_behalf_of  uuid,
    arguments     jsonb,
    outcome       text        NOT NULL,
    error_code    text,
    duration_ms   double precision,
    transport     text,
    session_id    text,
    request_id    text
);
CREATE INDEX audit_events_tenant_at ON audit_events (tenant_id, at DESC);

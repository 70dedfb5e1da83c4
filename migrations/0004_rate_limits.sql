-- Sliding-window counters shared by every process (one row per principal, class and
-- bucket of 1/60 of the window), and per-tenant / per-agent overrides of the defaults.

CREATE TABLE rate_counters (
    principal_key text        NOT NULL,
    class         text        NOT NULL,
    bucket        timestamptz NOT NULL,
    count         bigint      NOT NULL,
    PRIMARY KEY (principal_key, class, bucket)
);

CREATE TABLE rate_limits (
    id             uuid   PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Null: the tenant-wide override.
    agent_id       uuid   REFERENCES agents (id) ON DELETE CASCADE,
    class          text   NOT NULL CHECK (class IN ('calls', 'search', 'bulk')),
    max_calls      bigint NOT NULL CHECK (max_calls >= 0),
    window_seconds bigint NOT NULL CHECK (window_seconds BETWEEN 1 AND 86400)
);
CREATE UNIQUE INDEX rate_limits_one_per_class
    ON rate_limits (tenant_id, coalesce(agent_id, '00000000-0000-0000-0000-000000000000'::uuid), class);

-- Long operations run as tasks: their progress and outcome outlive the call that began them.
CREATE TABLE tasks (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind         text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    total        bigint      NOT NULL DEFAULT 0,
    done         bigint      NOT NULL DEFAULT 0,
    result       jsonb,
    error        text,
    principal_id uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX tasks_tenant ON tasks (tenant_id, created_at DESC);

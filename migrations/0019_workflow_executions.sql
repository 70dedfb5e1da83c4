-- Workflow executions: durable runs on a PostgreSQL queue. A process claims a due
-- execution with FOR UPDATE SKIP LOCKED and holds a lease it renews while it runs; every
-- step result is written as it happens, so a process that dies leaves the execution to be
-- resumed from the last completed step by whichever process claims it next.
CREATE TABLE workflow_executions (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    workflow_id       uuid        NOT NULL,
    workflow_name     text        NOT NULL,
    workflow_version  integer     NOT NULL,
    -- What runs: the workflow's trigger, variables and steps when the execution began.
    definition        jsonb       NOT NULL,
    input             jsonb       NOT NULL DEFAULT '{}',
    status            text        NOT NULL DEFAULT 'queued'
                                  CHECK (status IN ('queued', 'running', 'waiting_approval', 'succeeded', 'failed', 'cancelled')),
    source            text        NOT NULL CHECK (source IN ('manual', 'event', 'schedule')),
    trigger_event_id  bigint,
    -- Who it runs as; never with more than these scopes.
    started_by_kind   text        NOT NULL,
    started_by_id     uuid,
    started_by_name   text        NOT NULL,
    scopes            text[]      NOT NULL,
    -- The index of the next step to run, and each finished step's {status, output, error}.
    next_step         integer     NOT NULL DEFAULT 0,
    results           jsonb       NOT NULL DEFAULT '{}',
    output            jsonb,
    error             text,
    waiting_action_id uuid,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    lease_owner       uuid,
    lease_until       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (tenant_id, id),
    UNIQUE (workflow_id, trigger_event_id),
    FOREIGN KEY (tenant_id, workflow_id) REFERENCES workflows (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX workflow_executions_due ON workflow_executions (created_at)
    WHERE status IN ('queued', 'running');
CREATE INDEX workflow_executions_waiting ON workflow_executions (waiting_action_id)
    WHERE status = 'waiting_approval';
CREATE INDEX workflow_executions_tenant ON workflow_executions (tenant_id, workflow_id, created_at DESC);

-- Every attempt of every step, written when it starts and when it ends.
CREATE TABLE workflow_step_runs (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id uuid        NOT NULL REFERENCES workflow_executions (id) ON DELETE CASCADE,
    step_index   integer     NOT NULL,
    step_id      text        NOT NULL,
    tool         text        NOT NULL,
    attempt      integer     NOT NULL,
    status       text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'waiting_approval', 'interrupted')),
    arguments    jsonb,
    output       jsonb,
    error        text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX workflow_step_runs_execution ON workflow_step_runs (execution_id, id);

-- How far event triggers have read the outbox (one row).
CREATE TABLE workflow_event_cursor (
    id            integer PRIMARY KEY CHECK (id = 1),
    last_event_id bigint  NOT NULL
);
INSERT INTO workflow_event_cursor (id, last_event_id) SELECT 1, coalesce(max(id), 0) FROM events;

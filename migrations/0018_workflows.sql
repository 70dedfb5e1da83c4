-- Workflows: ordered tool calls with references, conditions and error policies.
CREATE TABLE workflows (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name              text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description       text        NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    status            text        NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'paused')),
    -- Increases with every change of what the workflow does (steps, trigger, variables).
    version           integer     NOT NULL DEFAULT 1,
    trigger_type      text        NOT NULL DEFAULT 'manual' CHECK (trigger_type IN ('manual', 'schedule', 'event')),
    trigger_config    jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(trigger_config) = 'object'),
    variables         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(variables) = 'object'),
    steps             jsonb       NOT NULL CHECK (jsonb_typeof(steps) = 'array'),
    workflow_metadata jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(workflow_metadata) = 'object'),
    -- Schedule triggers: when it runs next (set when it becomes active or changes).
    next_run_at       timestamptz,
    created_by_kind   text        NOT NULL,
    created_by_id     uuid,
    created_by_name   text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, name)
);
CREATE INDEX workflows_tenant ON workflows (tenant_id, created_at DESC);
-- Event-triggered active workflows, looked up per event.
CREATE INDEX workflows_event_trigger ON workflows (tenant_id, (trigger_config ->> 'event'))
    WHERE status = 'active' AND trigger_type = 'event';
-- Active schedules, looked up by due time.
CREATE INDEX workflows_schedule_due ON workflows (next_run_at)
    WHERE status = 'active' AND trigger_type = 'schedule';

-- Connections: the outside services the server calls for a tenant (LLM providers, remote
-- MCP servers, outgoing HTTP). Settings a caller may see are in `config`; credentials (API
-- keys, bearer tokens, header values) are one JSON object sealed by the vault with the
-- row's id as associated data, never returned.
CREATE TABLE connections (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Also the prefix of its tools in the catalog (`<name>__<tool>`), hence the alphabet.
    name             text        NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,39}$'),
    platform         text        NOT NULL CHECK (platform IN ('openai', 'anthropic', 'mcp', 'http')),
    description      text        NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    config           jsonb       NOT NULL DEFAULT '{}',
    secret_encrypted bytea,
    status           text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'error', 'expired')),
    status_error     text,
    last_tested_at   timestamptz,
    -- Remote MCP servers: when their tools were last imported into the catalog.
    catalog_refreshed_at timestamptz,
    created_by_kind  text,
    created_by_id    uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

-- Tools imported from remote MCP servers, refreshed periodically and on request.
CREATE TABLE tool_catalog (
    tenant_id     uuid        NOT NULL,
    connection_id uuid        NOT NULL,
    name          text        NOT NULL,
    remote_name   text        NOT NULL,
    title         text,
    description   text        NOT NULL DEFAULT '',
    input_schema  jsonb       NOT NULL,
    output_schema jsonb,
    -- The remote server's hints; untrusted, shown for information. Unknown means the worst.
    read_only     boolean     NOT NULL DEFAULT false,
    destructive   boolean     NOT NULL DEFAULT true,
    idempotent    boolean     NOT NULL DEFAULT false,
    refreshed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name),
    FOREIGN KEY (tenant_id, connection_id) REFERENCES connections (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX tool_catalog_connection ON tool_catalog (connection_id);

-- Runnable agents: what an agent identity runs when asked (a prompt and an LLM connection,
-- or a workflow), the design-time definition and the runtime overrides on top of it.
CREATE TABLE agent_runnables (
    agent_id        uuid        PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    tenant_id       uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind            text        NOT NULL CHECK (kind IN ('prompt', 'workflow')),
    definition      jsonb       NOT NULL,
    overrides       jsonb       NOT NULL DEFAULT '{}',
    -- Paused agents are not started by schedules or chains.
    paused          boolean     NOT NULL DEFAULT false,
    updated_by_name text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_runnables_tenant ON agent_runnables (tenant_id, created_at);

-- Schedules: cron in a time zone, an interval, one run at a time, or after another agent's
-- run ends with a given status. `next_run_at` moves under a row lock: the process that
-- moves it queues that due time's run, once.
CREATE TABLE agent_schedules (
    id                        uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                 uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id                  uuid        NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    kind                      text        NOT NULL CHECK (kind IN ('cron', 'interval', 'once', 'after')),
    cron                      text,
    timezone                  text        NOT NULL DEFAULT 'UTC',
    interval_seconds          integer     CHECK (interval_seconds >= 60),
    run_at                    timestamptz,
    start_at                  timestamptz,
    after_agent_id            uuid        REFERENCES agents (id) ON DELETE CASCADE,
    after_status              text        CHECK (after_status IN ('success', 'error', 'timeout', 'any')),
    enabled                   boolean     NOT NULL DEFAULT true,
    prompt                    text        NOT NULL DEFAULT '',
    callback_url              text,
    callback_secret_encrypted bytea,
    next_run_at               timestamptz,
    last_run_at               timestamptz,
    created_by_kind           text        NOT NULL,
    created_by_id             uuid,
    created_by_name           text        NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX agent_schedules_due ON agent_schedules (next_run_at) WHERE enabled AND next_run_at IS NOT NULL;
CREATE INDEX agent_schedules_agent ON agent_schedules (tenant_id, agent_id);
CREATE INDEX agent_schedules_after ON agent_schedules (after_agent_id) WHERE kind = 'after';

-- Agent runs: the queue of runs to do and the log of runs done. A run is claimed under a
-- renewed lease; its transcript is written after every model turn and tool call, so a run
-- whose process died resumes where it stopped.
CREATE TABLE agent_runs (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id          uuid        REFERENCES agents (id) ON DELETE SET NULL,
    agent_name        text        NOT NULL,
    agent_kind        text        NOT NULL CHECK (agent_kind IN ('prompt', 'workflow')),
    run_type          text        NOT NULL CHECK (run_type IN ('design', 'dynamic')),
    source            text        NOT NULL CHECK (source IN ('stdio', 'http', 'schedule', 'workflow', 'agent')),
    triggered_by_kind text,
    triggered_by_id   uuid,
    triggered_by_name text        NOT NULL,
    schedule_id       uuid        REFERENCES agent_schedules (id) ON DELETE SET NULL,
    due_at            timestamptz,
    parent_run_id     uuid        REFERENCES agent_runs (id) ON DELETE SET NULL,
    -- Runs started by chaining on runs started by chaining: bounded, so a cycle of agents
    -- chained on each other stops.
    chain_depth       integer     NOT NULL DEFAULT 0,
    prompt            text        NOT NULL DEFAULT '',
    input             jsonb       NOT NULL DEFAULT '{}',
    -- The effective configuration the run uses (design plus overrides when it was queued).
    config            jsonb       NOT NULL,
    status            text        NOT NULL DEFAULT 'queued'
                                  CHECK (status IN ('queued', 'running', 'success', 'error', 'timeout')),
    output            jsonb,
    error             text,
    transcript        jsonb       NOT NULL DEFAULT '[]',
    tool_calls        jsonb       NOT NULL DEFAULT '[]',
    tool_call_count   integer     NOT NULL DEFAULT 0,
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    total_tokens      bigint      NOT NULL DEFAULT 0,
    log               jsonb       NOT NULL DEFAULT '[]',
    -- A workflow agent's run is a workflow execution.
    execution_id      uuid,
    duration_ms       bigint,
    deadline          timestamptz,
    lease_owner       uuid,
    lease_until       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    UNIQUE (tenant_id, id),
    -- One run per due time of a schedule, however many processes saw it due.
    UNIQUE (schedule_id, due_at)
);
CREATE INDEX agent_runs_due ON agent_runs (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX agent_runs_agent ON agent_runs (tenant_id, agent_id, created_at DESC);
CREATE INDEX agent_runs_tenant ON agent_runs (tenant_id, created_at DESC, id DESC);

-- Callbacks: a finished scheduled run's result POSTed to the schedule's URL, signed,
-- retried with backoff under a lease like webhook deliveries.
CREATE TABLE agent_callbacks (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    run_id           uuid        NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    url              text        NOT NULL,
    -- The schedule's secret sealed again for this callback (the run id is the associated data).
    secret_encrypted bytea       NOT NULL,
    body             bytea       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX agent_callbacks_due ON agent_callbacks (next_attempt_at) WHERE status = 'pending';
CREATE INDEX agent_callbacks_leased ON agent_callbacks (lease_until) WHERE status = 'delivering';
CREATE INDEX agent_callbacks_run ON agent_callbacks (run_id);

CREATE TABLE agent_callback_attempts (
    callback_id bigint      NOT NULL REFERENCES agent_callbacks (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    status_code integer,
    error       text,
    PRIMARY KEY (callback_id, attempt)
);

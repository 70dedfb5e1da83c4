-- Human in the loop (SPEC §4): handoff tickets, the tenant's approval policy, and agent
-- operations held for a person.

-- Which operations by agents are held. Absent row: the defaults of
-- src/access/approval.rs (delete_customer, bulk over 100, invoices and discounts over a
-- threshold). The JSON is validated by the server before it is stored.
CREATE TABLE approval_policies (
    tenant_id       uuid        PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    policy          jsonb       NOT NULL CHECK (jsonb_typeof(policy) = 'object'),
    updated_by_name text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A request for a person: from an agent (or a human) about a customer.
CREATE TABLE handoffs (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    customer_id       uuid,
    -- Kept when the customer is deleted, so the ticket still reads.
    customer_name     text,
    reason            text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    priority          text        NOT NULL DEFAULT 'normal'
                                  CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    context           text        NOT NULL DEFAULT '' CHECK (length(context) <= 20000),
    state             text        NOT NULL DEFAULT 'pending'
                                  CHECK (state IN ('pending', 'approved', 'rejected', 'escalated')),
    requested_by_kind text        NOT NULL,
    requested_by_id   uuid,
    requested_by_name text        NOT NULL,
    assignee_id       uuid,
    assignee_name     text,
    -- [{at, by, action, state, note}], appended under the row lock of each change.
    history           jsonb       NOT NULL DEFAULT '[]',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE SET NULL (customer_id),
    FOREIGN KEY (tenant_id, assignee_id) REFERENCES users (tenant_id, id) ON DELETE SET NULL (assignee_id)
);
CREATE INDEX handoffs_tenant_state ON handoffs (tenant_id, state, created_at DESC);
CREATE INDEX handoffs_requester ON handoffs (tenant_id, requested_by_id, created_at DESC);

-- An agent's call held by the approval policy: everything needed to run it later, as the
-- agent, once a person approves. `state` moves pending/escalated -> approved -> executed or
-- failed, or -> rejected; the move to approved is one conditional UPDATE, so two people
-- approving at once run the operation once.
CREATE TABLE pending_actions (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    tool             text        NOT NULL,
    -- The call's arguments as validated when it was held (secrets never reach held tools).
    arguments        jsonb       NOT NULL,
    summary          text        NOT NULL,
    -- Which rule of the approval policy held it.
    hold_reason      text        NOT NULL,
    customer_id      uuid,
    customer_name    text,
    agent_id         uuid,
    agent_name       text        NOT NULL,
    -- The scopes the held call was made with: approval never runs it with more.
    scopes           text[]      NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'approved', 'rejected', 'escalated', 'executed', 'failed')),
    decided_by_id    uuid,
    decided_by_name  text,
    decided_at       timestamptz,
    decision_note    text,
    result           jsonb,
    error            text,
    executed_at      timestamptz,
    history          jsonb       NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE SET NULL (customer_id),
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE SET NULL
);
CREATE INDEX pending_actions_tenant_state ON pending_actions (tenant_id, state, created_at DESC);
CREATE INDEX pending_actions_agent ON pending_actions (tenant_id, agent_id, created_at DESC);

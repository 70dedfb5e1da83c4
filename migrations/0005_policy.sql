-- Per-agent policy: field rules (only these fields of a resource), row conditions (only
-- rows matching), and grants (explicit permissions, with object exceptions).

CREATE TABLE field_rules (
    id             uuid   PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id       uuid   NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    resource       text   NOT NULL,
    allowed_fields text[] NOT NULL,
    UNIQUE (agent_id, resource)
);

CREATE TABLE row_conditions (
    id         uuid  PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid  NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id   uuid  NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    resource   text  NOT NULL,
    field      text  NOT NULL,
    op         text  NOT NULL CHECK (op IN ('eq', 'ne', 'in')),
    value      jsonb NOT NULL
);
CREATE INDEX row_conditions_agent ON row_conditions (agent_id);

CREATE TABLE grants (
    id         uuid   PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id   uuid   NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    scope      text   NOT NULL,
    -- Null: every object; otherwise only these.
    only_ids   uuid[],
    except_ids uuid[] NOT NULL DEFAULT '{}',
    UNIQUE (agent_id, scope)
);

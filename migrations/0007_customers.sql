-- Customers: the CRM's central record. `version` increases with every update
-- (optimistic concurrency: an update names the version it read).
CREATE TABLE customers (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    first_name    text        NOT NULL DEFAULT '' CHECK (length(first_name) <= 200),
    last_name     text        NOT NULL DEFAULT '' CHECK (length(last_name) <= 200),
    email         text        CHECK (length(email) BETWEEN 3 AND 320),
    phone         text        CHECK (length(phone) <= 50),
    company       text        CHECK (length(company) <= 200),
    status        text        NOT NULL DEFAULT 'lead'
                              CHECK (status IN ('lead', 'prospect', 'hot_lead', 'customer', 'inactive', 'churned')),
    assigned_to   text        CHECK (length(assigned_to) <= 200),
    tags          text[]      NOT NULL DEFAULT '{}',
    custom_fields jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom_fields) = 'object'),
    version       integer     NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE UNIQUE INDEX customers_email ON customers (tenant_id, lower(email)) WHERE email IS NOT NULL;
CREATE INDEX customers_tenant_created ON customers (tenant_id, created_at DESC, id);
CREATE INDEX customers_tenant_status ON customers (tenant_id, status);
CREATE INDEX customers_tags ON customers USING gin (tags);

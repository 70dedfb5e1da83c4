-- The outbox: every change event, written in the same transaction as the change
-- (webhook deliveries and event-triggered workflows read it).
CREATE TABLE events (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    type           text        NOT NULL,
    subject_id     uuid,
    payload        jsonb       NOT NULL,
    principal_kind text,
    principal_id   uuid,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant ON events (tenant_id, id);

-- What happened with a customer: emails, calls, meetings, chats, texts and notes.
CREATE TABLE interactions (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    type         text        NOT NULL CHECK (type IN ('email', 'call', 'meeting', 'chat', 'sms', 'note')),
    direction    text        CHECK (direction IN ('inbound', 'outbound')),
    subject      text        NOT NULL DEFAULT '' CHECK (length(subject) <= 500),
    notes        text        NOT NULL DEFAULT '' CHECK (length(notes) <= 20000),
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    metadata     jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_by_kind text,
    created_by_id   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX interactions_customer ON interactions (tenant_id, customer_id, occurred_at DESC);
CREATE INDEX interactions_tenant_occurred ON interactions (tenant_id, occurred_at DESC, id);

-- Notes pinned to a customer by people or agents.
CREATE TABLE annotations (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    text         text        NOT NULL CHECK (length(text) BETWEEN 1 AND 10000),
    tags         text[]      NOT NULL DEFAULT '{}',
    created_by_kind text,
    created_by_id   uuid,
    created_by_name text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX annotations_customer ON annotations (tenant_id, customer_id, created_at DESC);

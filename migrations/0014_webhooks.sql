-- Webhook subscriptions: events of a tenant POSTed to a URL, signed with a secret that is
-- stored encrypted (the server needs it back to sign; see src/access/vault.rs).
CREATE TABLE webhooks (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url              text        NOT NULL CHECK (length(url) <= 2000),
    -- Event types, or '*' for every event.
    events           text[]      NOT NULL CHECK (cardinality(events) > 0),
    description      text        NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    secret_encrypted bytea       NOT NULL,
    created_by_kind  text,
    created_by_id    uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, created_at DESC);

-- One row per (event, subscribed webhook). Workers claim due rows with FOR UPDATE SKIP
-- LOCKED and hold a lease while the attempt runs; a lease that expires (the process died)
-- makes the row due again, so no delivery is lost and no attempt is made twice.
CREATE TABLE webhook_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    webhook_id      uuid        NOT NULL,
    event_id        bigint      NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    event_type      text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    FOREIGN KEY (tenant_id, webhook_id) REFERENCES webhooks (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (lease_until)
    WHERE status = 'delivering';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (tenant_id, webhook_id, id DESC);

-- Every attempt, whatever its outcome.
CREATE TABLE webhook_attempts (
    delivery_id bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    status_code integer,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Fan-out in the transaction that wrote the events: a delivery exists exactly when its
-- event committed. Statement-level, so a bulk change of 10,000 customers costs one join.
CREATE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queued bigint;
BEGIN
    INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event_type)
    SELECT e.tenant_id, w.id, e.id, e.type
    FROM new_events e
    JOIN webhooks w ON w.tenant_id = e.tenant_id AND (e.type = ANY (w.events) OR '*' = ANY (w.events));
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM pg_notify('agentcrm_webhooks', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_webhook_fan_out AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_fan_out();

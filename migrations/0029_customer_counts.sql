-- Customers per tenant and status, kept by statement triggers in the writer's transaction:
-- list_customers reads its `total` here instead of counting a million rows when it narrows
-- only by status (its filter, the caller's row conditions) and excluded ids. Each change
-- lands in one of 16 slots picked at random, so concurrent writers of one tenant rarely
-- wait on one row; an update that keeps the status writes nothing. No foreign key: a
-- tenant's cascaded delete counts its customers out after the tenant row is gone.
CREATE TABLE customer_counts (
    tenant_id uuid     NOT NULL,
    status    text     NOT NULL,
    slot      smallint NOT NULL,
    n         bigint   NOT NULL,
    PRIMARY KEY (tenant_id, status, slot)
);

CREATE FUNCTION customer_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_counts (tenant_id, status, slot, n)
    SELECT tenant_id, status, floor(random() * 16)::smallint, count(*)
    FROM new_rows GROUP BY 1, 2
    ON CONFLICT (tenant_id, status, slot) DO UPDATE SET n = customer_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION customer_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_counts (tenant_id, status, slot, n)
    SELECT tenant_id, status, floor(random() * 16)::smallint, -count(*)
    FROM old_rows GROUP BY 1, 2
    ON CONFLICT (tenant_id, status, slot) DO UPDATE SET n = customer_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

-- Transition tables cannot go with a column list: every update runs this, and writes only
-- when a status (or tenant) moved.
CREATE FUNCTION customer_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_counts (tenant_id, status, slot, n)
    SELECT tenant_id, status, floor(random() * 16)::smallint, sum(n)
    FROM (SELECT tenant_id, status, -1 AS n FROM old_rows
          UNION ALL
          SELECT tenant_id, status, 1 FROM new_rows) moved
    GROUP BY 1, 2 HAVING sum(n) <> 0
    ON CONFLICT (tenant_id, status, slot) DO UPDATE SET n = customer_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

-- Writers wait while the counts are taken, so none is missed or counted twice.
LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER customer_counts_inserted AFTER INSERT ON customers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION customer_counts_inserted();
CREATE TRIGGER customer_counts_deleted AFTER DELETE ON customers
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION customer_counts_deleted();
CREATE TRIGGER customer_counts_updated AFTER UPDATE ON customers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION customer_counts_updated();

INSERT INTO customer_counts (tenant_id, status, slot, n)
SELECT tenant_id, status, 0, count(*) FROM customers GROUP BY 1, 2;

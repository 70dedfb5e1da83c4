-- Products, and invoices with line items. Money is integer minor units (cents) with an
-- ISO 4217 currency; totals are computed by the server, tax-free.
CREATE TABLE products (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text        NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    sku         text        CHECK (length(sku) BETWEEN 1 AND 100),
    unit_price  bigint      NOT NULL CHECK (unit_price BETWEEN 0 AND 100000000000),
    currency    text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    active      boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, sku),
    UNIQUE (tenant_id, id)
);

CREATE TABLE invoices (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    status       text        NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'sent', 'paid', 'void')),
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal     bigint      NOT NULL CHECK (subtotal >= 0),
    -- Basis points: 1250 = 12.5 %.
    discount_bps integer     NOT NULL DEFAULT 0 CHECK (discount_bps BETWEEN 0 AND 10000),
    discount     bigint      NOT NULL CHECK (discount >= 0),
    total        bigint      NOT NULL CHECK (total >= 0),
    due_date     date,
    notes        text        NOT NULL DEFAULT '' CHECK (length(notes) <= 5000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    paid_at      timestamptz,
    voided_at    timestamptz,
    UNIQUE (tenant_id, id),
    -- Invoices outlive nothing: a customer with invoices cannot be deleted.
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE RESTRICT
);
CREATE INDEX invoices_tenant_created ON invoices (tenant_id, created_at DESC, id);
CREATE INDEX invoices_customer ON invoices (tenant_id, customer_id);

CREATE TABLE invoice_lines (
    id          uuid    PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid    NOT NULL,
    invoice_id  uuid    NOT NULL,
    position    integer NOT NULL,
    product_id  uuid,
    description text    NOT NULL CHECK (length(description) BETWEEN 1 AND 500),
    quantity    integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    unit_price  bigint  NOT NULL CHECK (unit_price BETWEEN 0 AND 100000000000),
    amount      bigint  NOT NULL,
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (invoice_id, position)
);

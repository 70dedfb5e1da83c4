-- Quotes: priced like invoices; an accepted quote converts into exactly one invoice.
CREATE TABLE quotes (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    status       text        NOT NULL DEFAULT 'draft'
                             CHECK (status IN ('draft', 'sent', 'accepted', 'rejected', 'converted')),
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal     bigint      NOT NULL CHECK (subtotal >= 0),
    discount_bps integer     NOT NULL DEFAULT 0 CHECK (discount_bps BETWEEN 0 AND 10000),
    discount     bigint      NOT NULL CHECK (discount >= 0),
    total        bigint      NOT NULL CHECK (total >= 0),
    valid_until  date,
    notes        text        NOT NULL DEFAULT '' CHECK (length(notes) <= 5000),
    invoice_id   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices (tenant_id, id)
);
CREATE INDEX quotes_tenant_created ON quotes (tenant_id, created_at DESC, id);

CREATE TABLE quote_lines (
    id          uuid    PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid    NOT NULL,
    quote_id    uuid    NOT NULL,
    position    integer NOT NULL,
    product_id  uuid,
    description text    NOT NULL CHECK (length(description) BETWEEN 1 AND 500),
    quantity    integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    unit_price  bigint  NOT NULL CHECK (unit_price BETWEEN 0 AND 100000000000),
    amount      bigint  NOT NULL,
    FOREIGN KEY (tenant_id, quote_id) REFERENCES quotes (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (quote_id, position)
);

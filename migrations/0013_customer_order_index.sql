-- list_customers' default order is (created_at DESC, id DESC): an index in exactly that
-- order answers a page without sorting the tenant's customers.
DROP INDEX customers_tenant_created;
CREATE INDEX customers_tenant_created ON customers (tenant_id, created_at DESC, id DESC);

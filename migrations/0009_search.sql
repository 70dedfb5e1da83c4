-- Full-text search (generated tsvectors, GIN) and typo/prefix-tolerant matching of names
-- and emails (pg_trgm, a trusted extension since PostgreSQL 13).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE customers ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', first_name || ' ' || last_name), 'A')
    || setweight(to_tsvector('simple', coalesce(email, '') || ' ' || coalesce(company, '')), 'B')
    || setweight(to_tsvector('simple', coalesce(phone, '') || ' ' || coalesce(assigned_to, '')), 'C')
) STORED;
CREATE INDEX customers_search ON customers USING gin (search);
CREATE INDEX customers_names_trgm ON customers
    USING gin ((lower(first_name || ' ' || last_name || ' ' || coalesce(email, ''))) gin_trgm_ops);

ALTER TABLE interactions ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english', subject), 'A') || setweight(to_tsvector('english', notes), 'B')
) STORED;
CREATE INDEX interactions_search ON interactions USING gin (search);

-- Typo/prefix matching on names and the email's local part only: every email of a tenant
-- shares its domain's trigrams (e.g. "com"), which made the old index match nearly every
-- row for queries naming a company or domain.
DROP INDEX customers_names_trgm;
CREATE INDEX customers_names_local_trgm ON customers
    USING gin ((lower(first_name || ' ' || last_name || ' ' || split_part(coalesce(email, ''), '@', 1))) gin_trgm_ops);

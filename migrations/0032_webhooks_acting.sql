-- A webhook reads events for whoever made it: the chain its creating call acted for (a
-- person, an API key, an agent, or work on someone's behalf), so each delivery is checked
-- against what they may read when it is sent. Null for webhooks made before this: their
-- creator (created_by_kind, created_by_id) stands alone.
ALTER TABLE webhooks ADD COLUMN acting jsonb;

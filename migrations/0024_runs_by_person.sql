-- The execution log by person: a run records the person who started it (the user, or the
-- owner of the API key used; a scheduled run, the schedule's creator), and keeps its
-- agent's id after the agent is deleted (`agent_id` is cleared then), so the runs of a
-- deleted agent stay filterable.
ALTER TABLE agent_runs
    ADD COLUMN user_id   uuid,
    ADD COLUMN agent_ref uuid;
UPDATE agent_runs SET agent_ref = agent_id;
UPDATE agent_runs r SET user_id = (
    SELECT (m->>'person')::uuid FROM jsonb_array_elements(r.chain) m
    WHERE m->>'person' IS NOT NULL LIMIT 1);
CREATE INDEX agent_runs_user ON agent_runs (tenant_id, user_id, created_at DESC);
CREATE INDEX agent_runs_agent_ref ON agent_runs (tenant_id, agent_ref, created_at DESC);

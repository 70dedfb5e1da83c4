-- Work done on someone's behalf acts for a chain of principals (SPEC §1): who started it,
-- the owner of the workflow or agent, whoever last changed its behaviour, the agent
-- identity. A member is `{"kind", "id", "name", "person"}` (`person`: the user behind a
-- user, the local owner or an API key). Its permissions are the intersection over the
-- chain, evaluated at every call.

-- Workflows: who owns one (a person, or an agent) and who last changed what it does.
ALTER TABLE workflows ADD COLUMN owner jsonb, ADD COLUMN behaviour_by jsonb;
UPDATE workflows w SET
    behaviour_by = jsonb_build_object('kind', w.created_by_kind, 'id', w.created_by_id,
        'name', w.created_by_name,
        'person', CASE WHEN w.created_by_kind IN ('user', 'local_owner') THEN w.created_by_id
                       WHEN w.created_by_kind = 'api_key' THEN
                           (SELECT k.owner_user_id FROM api_keys k WHERE k.id = w.created_by_id)
                  END),
    owner = CASE
        WHEN w.created_by_kind = 'api_key' THEN
            (SELECT jsonb_build_object('kind', 'user', 'id', u.id, 'name', u.name, 'person', u.id)
             FROM api_keys k JOIN users u ON u.tenant_id = k.tenant_id AND u.id = k.owner_user_id
             WHERE k.id = w.created_by_id)
        ELSE jsonb_build_object('kind', w.created_by_kind, 'id', w.created_by_id,
            'name', w.created_by_name,
            'person', CASE WHEN w.created_by_kind IN ('user', 'local_owner') THEN w.created_by_id END)
    END;
-- A creator that is gone leaves the workflow to admins.
UPDATE workflows SET owner = behaviour_by WHERE owner IS NULL;
ALTER TABLE workflows ALTER COLUMN owner SET NOT NULL, ALTER COLUMN behaviour_by SET NOT NULL;

-- Executions and runs: the chain they act for (the identity first), and how deep in a
-- cause chain (work started by work) they are.
ALTER TABLE workflow_executions
    ADD COLUMN chain jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(chain) = 'array'),
    ADD COLUMN cause jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(cause) = 'object');
UPDATE workflow_executions SET chain = jsonb_build_array(jsonb_build_object(
    'kind', started_by_kind, 'id', started_by_id, 'name', started_by_name))
WHERE started_by_id IS NOT NULL;

ALTER TABLE agent_runs
    ADD COLUMN chain jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(chain) = 'array'),
    ADD COLUMN cause jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(cause) = 'object');
UPDATE agent_runs SET chain = jsonb_build_array(jsonb_build_object(
    'kind', 'agent', 'id', agent_id, 'name', agent_name))
WHERE agent_id IS NOT NULL;

-- Runnable agents: who owns the definition and who last changed it. No owner: admins only.
ALTER TABLE agent_runnables ADD COLUMN owner jsonb, ADD COLUMN behaviour_by jsonb;
UPDATE agent_runnables r SET owner = (
    SELECT jsonb_build_object('kind', 'user', 'id', u.id, 'name', u.name, 'person', u.id)
    FROM agents a JOIN users u ON u.id = a.created_by WHERE a.id = r.agent_id);
UPDATE agent_runnables SET behaviour_by = owner;

-- Schedules: their creator as a chain member.
ALTER TABLE agent_schedules ADD COLUMN creator jsonb;
UPDATE agent_schedules s SET creator = jsonb_build_object('kind', s.created_by_kind,
    'id', s.created_by_id, 'name', s.created_by_name,
    'person', CASE WHEN s.created_by_kind IN ('user', 'local_owner') THEN s.created_by_id
                   WHEN s.created_by_kind = 'api_key' THEN
                       (SELECT k.owner_user_id FROM api_keys k WHERE k.id = s.created_by_id)
              END)
WHERE s.created_by_id IS NOT NULL;

-- Held calls: the chain the call acted for; approval runs it for the same chain.
ALTER TABLE pending_actions
    ADD COLUMN chain jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(chain) = 'array');
UPDATE pending_actions SET chain = jsonb_build_array(jsonb_build_object(
    'kind', 'agent', 'id', agent_id, 'name', agent_name))
WHERE agent_id IS NOT NULL;

-- Events: what caused them (`{"depth", "workflows"}`), so that
-- triggered work never re-triggers a workflow of its own cause chain and chains stay short.
ALTER TABLE events ADD COLUMN cause jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(cause) = 'object');

-- The audit trail names the chain a call acted for (null for a direct call).
ALTER TABLE audit_events ADD COLUMN chain jsonb;

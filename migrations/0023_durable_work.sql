-- Background tasks (bulk updates) go on the same lease queue as workflow executions and
-- agent runs: a task lives with the process holding its lease, and another process takes it
-- up where it stopped once the lease expires. What it needs to go on is stored with it: who
-- it acts for (chain, cause, scopes when it began), its targets and changes, and which
-- batches have committed (each batch records itself in its own transaction).
ALTER TABLE tasks
    ADD COLUMN lease_owner  uuid,
    ADD COLUMN lease_until  timestamptz,
    ADD COLUMN started_at   timestamptz,
    ADD COLUMN chain        jsonb  NOT NULL DEFAULT '[]',
    ADD COLUMN cause        jsonb  NOT NULL DEFAULT '{}',
    ADD COLUMN scopes       text[] NOT NULL DEFAULT '{}',
    ADD COLUMN targets      uuid[] NOT NULL DEFAULT '{}',
    ADD COLUMN changes      jsonb  NOT NULL DEFAULT '{}',
    ADD COLUMN batches_done int[]  NOT NULL DEFAULT '{}',
    ADD COLUMN resumed      int    NOT NULL DEFAULT 0;
CREATE INDEX tasks_due ON tasks (created_at) WHERE status = 'running';

-- A workflow step attempt whose tool committed its writes marks itself in that same
-- transaction (fenced on the execution's lease): a process that dies after the commit and
-- before it records the step's success leaves a step known to have taken effect, which a
-- resumed run does not repeat.
ALTER TABLE workflow_step_runs ADD COLUMN committed_at timestamptz;

-- Traces (issue 21): work queued by a call keeps the W3C traceparent of that call, so the
-- work joins the caller's trace in whichever process runs it; an event keeps the one of the
-- call that caused it (its webhook deliveries and triggered executions join that trace).
-- NULL when traces are off. Nullable columns without a default: no table rewrite.
ALTER TABLE events ADD COLUMN traceparent text;
ALTER TABLE workflow_executions ADD COLUMN traceparent text;
ALTER TABLE agent_runs ADD COLUMN traceparent text;
ALTER TABLE tasks ADD COLUMN traceparent text;

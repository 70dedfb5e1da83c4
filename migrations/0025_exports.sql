-- Customer exports: a task (kind `export_customers`) on the lease queue of background
-- work, its parameters in `tasks.changes`, its content written chunk by chunk, each chunk
-- in the transaction that records the task's progress (fenced on its lease). A process
-- that dies leaves the chunks written; another goes on after the last one's `last_id`.
CREATE TABLE export_chunks (
    task_id uuid    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    -- The last customer id in the chunk: the next one starts after it.
    last_id uuid    NOT NULL,
    rows    integer NOT NULL,
    content text    NOT NULL,
    PRIMARY KEY (task_id, seq)
);
CREATE INDEX tasks_kind_created ON tasks (kind, created_at);

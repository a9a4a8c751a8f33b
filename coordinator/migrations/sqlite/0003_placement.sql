-- Hivemind coordinator schema, version 3 (SQLite): resource-aware placement.

-- What a task's subtasks need from a worker: their memory limit and the worker labels they require.
ALTER TABLE tasks ADD COLUMN memory INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN requires TEXT NOT NULL DEFAULT '{}';
UPDATE tasks SET memory = COALESCE(json_extract(limits, '$.memory_bytes'), 0);

-- When the recorded attempt started on its worker (microseconds, the worker's clock), and when the
-- subtask last entered the queue (for the queue-wait histogram).
ALTER TABLE subtasks ADD COLUMN started_at_us INTEGER;
ALTER TABLE subtasks ADD COLUMN queued_at INTEGER;

-- The worker's resource monitor: its last reading, as JSON.
ALTER TABLE workers ADD COLUMN resources TEXT NOT NULL DEFAULT '{}';

-- Modules each live worker holds compiled (reported at registration, added when it leases a subtask of the
-- module): the scheduler prefers these workers.
CREATE TABLE worker_modules (
    worker_id  TEXT NOT NULL,
    module_id  TEXT NOT NULL,
    PRIMARY KEY (worker_id, module_id)
) WITHOUT ROWID;

-- Queued subtasks of one task in FIFO order, for leasing when only some tasks fit the asking worker.
CREATE INDEX subtasks_queued_by_task ON subtasks(task_id, id) WHERE state = 'queued';

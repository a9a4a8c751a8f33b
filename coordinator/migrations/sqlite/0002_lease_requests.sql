-- Hivemind coordinator schema, version 2 (SQLite): the lease request that leased each subtask, so a worker
-- whose lease answer was lost can ask again and get the same subtasks.

ALTER TABLE subtasks ADD COLUMN lease_id TEXT;

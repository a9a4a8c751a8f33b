-- Hivemind coordinator schema, version 4 (SQLite): the tenant a task belongs to (NULL: no tenant).
ALTER TABLE tasks ADD COLUMN tenant TEXT;
CREATE INDEX tasks_by_tenant ON tasks(tenant, seq) WHERE tenant IS NOT NULL;

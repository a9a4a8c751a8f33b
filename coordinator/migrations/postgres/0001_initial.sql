-- Hivemind coordinator schema, version 1 (PostgreSQL): the same tables as the SQLite schema after its
-- migration 3, shared by every coordinator of a cluster. Millisecond timestamps and byte counts are BIGINT.

CREATE TABLE modules (
    id          TEXT PRIMARY KEY,          -- sha256:<hex>
    kind        TEXT NOT NULL,             -- command | component
    size        BIGINT NOT NULL,
    bytes       BYTEA NOT NULL,            -- here, so every coordinator can serve every module
    created_at  BIGINT NOT NULL
);

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    seq              BIGSERIAL UNIQUE,          -- submission order
    module_id        TEXT NOT NULL REFERENCES modules(id),
    state            TEXT NOT NULL,             -- queued | running | succeeded | failed | cancelled
    phase            TEXT NOT NULL,             -- split | map | reduce | done
    priority         INTEGER NOT NULL,
    limits           TEXT NOT NULL,             -- JSON of the resolved limits
    memory           BIGINT NOT NULL,           -- the memory limit, for placement
    requires         TEXT NOT NULL,             -- JSON object of required worker labels
    max_attempts     INTEGER NOT NULL,
    retry_on_error   BOOLEAN NOT NULL,
    split            BOOLEAN NOT NULL,
    reduce           BOOLEAN NOT NULL,
    labels           TEXT NOT NULL,             -- JSON object
    idempotency_key  TEXT UNIQUE,
    deadline_at      BIGINT,
    map_total        BIGINT NOT NULL,
    map_succeeded    BIGINT NOT NULL DEFAULT 0,
    -- subtask counts by state (every phase), maintained with each transition
    n_queued         BIGINT NOT NULL DEFAULT 0,
    n_leased         BIGINT NOT NULL DEFAULT 0,
    n_succeeded      BIGINT NOT NULL DEFAULT 0,
    n_failed         BIGINT NOT NULL DEFAULT 0,
    n_cancelled      BIGINT NOT NULL DEFAULT 0,
    fuel             BIGINT NOT NULL DEFAULT 0,
    wall_us          BIGINT NOT NULL DEFAULT 0,
    peak_memory      BIGINT NOT NULL DEFAULT 0,
    error            TEXT,
    result           BYTEA,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX tasks_by_state ON tasks(state, seq);
CREATE INDEX tasks_active ON tasks(id) WHERE state IN ('queued', 'running') AND n_queued > 0;
CREATE INDEX tasks_deadline ON tasks(deadline_at) WHERE state IN ('queued', 'running') AND deadline_at IS NOT NULL;

CREATE TABLE subtasks (
    id             BIGSERIAL PRIMARY KEY,      -- global FIFO order within a priority
    task_id        TEXT NOT NULL,
    phase          TEXT NOT NULL,              -- split | map | reduce
    idx            BIGINT NOT NULL,
    state          TEXT NOT NULL,              -- queued | leased | succeeded | failed | cancelled
    priority       INTEGER NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0, -- number of the current (or last) attempt
    worker_id      TEXT,
    lease_id       TEXT,                       -- the lease request that leased it (retries get it again)
    not_before     BIGINT,                     -- retry backoff
    queued_at      BIGINT,                     -- when it last entered the queue
    input          BYTEA NOT NULL,
    output         BYTEA,
    error_kind     TEXT,
    error          TEXT,
    log            BYTEA,
    fuel           BIGINT,
    peak_memory    BIGINT,
    wall_us        BIGINT,
    started_at_us  BIGINT,                     -- when the recorded attempt started (worker's clock)
    cancel_sent    BOOLEAN NOT NULL DEFAULT TRUE, -- false while a running cancelled subtask awaits its notice
    finished_at    BIGINT
);
CREATE UNIQUE INDEX subtasks_by_task ON subtasks(task_id, phase, idx);
CREATE INDEX subtasks_queue ON subtasks(priority DESC, id) WHERE state = 'queued';
CREATE INDEX subtasks_queued_by_task ON subtasks(task_id, id) WHERE state = 'queued';
CREATE INDEX subtasks_leased ON subtasks(worker_id) WHERE state = 'leased';
CREATE INDEX subtasks_cancel ON subtasks(worker_id) WHERE NOT cancel_sent;

-- Every finished attempt that did not produce the recorded result (retries, lost workers).
CREATE TABLE attempts (
    subtask_id   BIGINT NOT NULL,
    attempt      INTEGER NOT NULL,
    worker_id    TEXT,
    error_kind   TEXT NOT NULL,
    error        TEXT NOT NULL,
    finished_at  BIGINT NOT NULL,
    PRIMARY KEY (subtask_id, attempt)
);

CREATE TABLE workers (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    state           TEXT NOT NULL,             -- alive | dead | left
    slots           INTEGER NOT NULL,
    memory          BIGINT NOT NULL,
    cores           INTEGER NOT NULL,
    labels          TEXT NOT NULL,
    resources       TEXT NOT NULL DEFAULT '{}', -- the resource monitor's last reading, JSON
    running         INTEGER NOT NULL DEFAULT 0,
    registered_at   BIGINT NOT NULL,
    registered_seq  BIGSERIAL,
    last_heartbeat  BIGINT NOT NULL,
    completed       BIGINT NOT NULL DEFAULT 0,
    failed          BIGINT NOT NULL DEFAULT 0,
    fuel            BIGINT NOT NULL DEFAULT 0,
    wall_us         BIGINT NOT NULL DEFAULT 0,
    peak_memory     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workers_alive ON workers(last_heartbeat) WHERE state = 'alive';

-- Modules each live worker holds compiled: the scheduler prefers these workers.
CREATE TABLE worker_modules (
    worker_id  TEXT NOT NULL,
    module_id  TEXT NOT NULL,
    PRIMARY KEY (worker_id, module_id)
);

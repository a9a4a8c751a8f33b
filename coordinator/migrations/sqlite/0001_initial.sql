-- Hivemind coordinator schema, version 1 (SQLite).

CREATE TABLE modules (
    id          TEXT PRIMARY KEY,          -- sha256:<hex>
    kind        TEXT NOT NULL,             -- command | component
    size        INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    seq              INTEGER NOT NULL UNIQUE,   -- submission order
    module_id        TEXT NOT NULL REFERENCES modules(id),
    state            TEXT NOT NULL,             -- queued | running | succeeded | failed | cancelled
    phase            TEXT NOT NULL,             -- split | map | reduce | done
    priority         INTEGER NOT NULL,
    limits           TEXT NOT NULL,             -- JSON of the resolved limits
    max_attempts     INTEGER NOT NULL,
    retry_on_error   INTEGER NOT NULL,
    split            INTEGER NOT NULL,
    reduce           INTEGER NOT NULL,
    labels           TEXT NOT NULL,             -- JSON object
    idempotency_key  TEXT UNIQUE,
    deadline_at      INTEGER,
    map_total        INTEGER NOT NULL,
    map_succeeded    INTEGER NOT NULL DEFAULT 0,
    -- subtask counts by state (every phase), maintained with each transition
    n_queued         INTEGER NOT NULL DEFAULT 0,
    n_leased         INTEGER NOT NULL DEFAULT 0,
    n_succeeded      INTEGER NOT NULL DEFAULT 0,
    n_failed         INTEGER NOT NULL DEFAULT 0,
    n_cancelled      INTEGER NOT NULL DEFAULT 0,
    fuel             INTEGER NOT NULL DEFAULT 0,
    wall_us          INTEGER NOT NULL DEFAULT 0,
    peak_memory      INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    result           BLOB,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX tasks_by_state ON tasks(state, seq);

CREATE TABLE subtasks (
    id             INTEGER PRIMARY KEY,        -- global FIFO order within a priority
    task_id        TEXT NOT NULL,
    phase          TEXT NOT NULL,              -- split | map | reduce
    idx            INTEGER NOT NULL,
    state          TEXT NOT NULL,              -- queued | leased | succeeded | failed | cancelled
    priority       INTEGER NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0, -- number of the current (or last) attempt
    worker_id      TEXT,
    not_before     INTEGER,                    -- retry backoff
    input          BLOB NOT NULL,
    output         BLOB,
    error_kind     TEXT,
    error          TEXT,
    log            BLOB,
    fuel           INTEGER,
    peak_memory    INTEGER,
    wall_us        INTEGER,
    cancel_sent    INTEGER NOT NULL DEFAULT 1, -- 0 while a running cancelled subtask awaits its worker's notice
    finished_at    INTEGER
);
CREATE UNIQUE INDEX subtasks_by_task ON subtasks(task_id, phase, idx);
CREATE INDEX subtasks_queue ON subtasks(priority DESC, id) WHERE state = 'queued';
CREATE INDEX subtasks_leased ON subtasks(worker_id) WHERE state = 'leased';
CREATE INDEX subtasks_cancel ON subtasks(worker_id) WHERE cancel_sent = 0;

-- Every finished attempt that did not produce the recorded result (retries, lost workers).
CREATE TABLE attempts (
    subtask_id   INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    worker_id    TEXT,
    error_kind   TEXT NOT NULL,
    error        TEXT NOT NULL,
    finished_at  INTEGER NOT NULL,
    PRIMARY KEY (subtask_id, attempt)
);

CREATE TABLE workers (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    state           TEXT NOT NULL,             -- alive | dead | left
    slots           INTEGER NOT NULL,
    memory          INTEGER NOT NULL,
    cores           INTEGER NOT NULL,
    labels          TEXT NOT NULL,
    running         INTEGER NOT NULL DEFAULT 0,
    registered_at   INTEGER NOT NULL,
    last_heartbeat  INTEGER NOT NULL,
    completed       INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    fuel            INTEGER NOT NULL DEFAULT 0,
    wall_us         INTEGER NOT NULL DEFAULT 0,
    peak_memory     INTEGER NOT NULL DEFAULT 0
);

-- 1: jobs and requests, each request carrying its lease and outcome.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    settings TEXT,
    input_hash TEXT,
    error TEXT,
    total INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX jobs_input_hash ON jobs(input_hash);
CREATE TABLE requests (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    lease_owner TEXT,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    response TEXT,
    error TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL,
    finished_at REAL,
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, id)
);
CREATE INDEX requests_status ON requests(job_id, status);

-- 3: provider batches ("chunks") holding requests set aside as `batched`.
ALTER TABLE requests ADD COLUMN chunk INTEGER;
ALTER TABLE jobs ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0;
CREATE INDEX requests_chunk ON requests(job_id, chunk) WHERE status = 'batched';
CREATE TABLE chunks (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    chunk INTEGER NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    batch_id TEXT,
    file_id TEXT,
    remote_status TEXT,
    requests INTEGER NOT NULL,
    intent_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, chunk)
);

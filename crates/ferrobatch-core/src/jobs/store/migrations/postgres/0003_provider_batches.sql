-- 3: provider batches ("chunks") holding requests set aside as `batched`.
ALTER TABLE ferrobatch_requests ADD COLUMN chunk bigint;
ALTER TABLE ferrobatch_jobs ADD COLUMN chunks bigint NOT NULL DEFAULT 0;
CREATE INDEX ferrobatch_requests_chunk ON ferrobatch_requests (job_id, chunk)
    WHERE status = 'batched';
CREATE TABLE ferrobatch_chunks (
    job_id text NOT NULL REFERENCES ferrobatch_jobs (id) ON DELETE CASCADE,
    chunk bigint NOT NULL,
    provider text NOT NULL,
    state text NOT NULL,
    owner text,
    batch_id text,
    file_id text,
    remote_status text,
    requests bigint NOT NULL,
    intent_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, chunk)
);

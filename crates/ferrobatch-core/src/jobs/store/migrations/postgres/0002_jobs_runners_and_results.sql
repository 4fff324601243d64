-- 2: jobs, requests, runners with heartbeats, outcomes in their own insert-only table and
-- a job's counters on its row (PostgreSQL stores begin at version 2: version 1 was SQLite's
-- first layout).
CREATE TABLE ferrobatch_jobs (
    id text PRIMARY KEY,
    name text,
    status text NOT NULL,
    endpoint text NOT NULL,
    settings text,
    input_hash text,
    error text,
    total bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cost double precision
);
CREATE INDEX ferrobatch_jobs_input_hash ON ferrobatch_jobs (input_hash);
CREATE TABLE ferrobatch_requests (
    job_id text NOT NULL REFERENCES ferrobatch_jobs (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    id text NOT NULL,
    body text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    runner text,
    attempt integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, id)
);
CREATE INDEX ferrobatch_requests_pending ON ferrobatch_requests (job_id, seq)
    WHERE status = 'pending';
CREATE INDEX ferrobatch_requests_running ON ferrobatch_requests (job_id, runner)
    WHERE status = 'running';
CREATE TABLE ferrobatch_results (
    job_id text NOT NULL,
    seq bigint NOT NULL,
    attempt integer NOT NULL,
    runner text,
    ok boolean NOT NULL,
    response text,
    error text,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cost double precision,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq, attempt)
);
CREATE TABLE ferrobatch_runners (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid bigint NOT NULL,
    lease interval NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

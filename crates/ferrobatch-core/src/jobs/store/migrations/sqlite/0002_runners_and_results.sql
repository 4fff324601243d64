-- 2: runners with heartbeats, claims fenced by (runner, attempt), outcomes in their own
-- insert-only table, a job's counters on its row.
ALTER TABLE jobs ADD COLUMN succeeded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cost REAL;
CREATE TABLE results (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    runner TEXT,
    ok INTEGER NOT NULL,
    response TEXT,
    error TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost REAL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (job_id, seq, attempt)
);
INSERT INTO results
    SELECT job_id, seq, attempts, NULL, status = 'succeeded', response, error, input_tokens,
           output_tokens, cost, COALESCE(finished_at, 0)
    FROM requests WHERE status IN ('succeeded', 'failed');
UPDATE jobs SET
    succeeded = (SELECT count(*) FROM requests r WHERE r.job_id = jobs.id AND r.status = 'succeeded'),
    failed = (SELECT count(*) FROM requests r WHERE r.job_id = jobs.id AND r.status = 'failed'),
    cancelled = (SELECT count(*) FROM requests r WHERE r.job_id = jobs.id AND r.status = 'cancelled'),
    input_tokens = (SELECT COALESCE(SUM(input_tokens), 0) FROM requests r WHERE r.job_id = jobs.id),
    output_tokens = (SELECT COALESCE(SUM(output_tokens), 0) FROM requests r WHERE r.job_id = jobs.id),
    cost = (SELECT SUM(cost) FROM requests r WHERE r.job_id = jobs.id);
UPDATE requests SET status = 'pending', lease_owner = NULL WHERE status = 'running';
DROP INDEX requests_status;
ALTER TABLE requests DROP COLUMN lease_expires;
ALTER TABLE requests DROP COLUMN response;
ALTER TABLE requests DROP COLUMN error;
ALTER TABLE requests DROP COLUMN input_tokens;
ALTER TABLE requests DROP COLUMN output_tokens;
ALTER TABLE requests DROP COLUMN cost;
ALTER TABLE requests DROP COLUMN finished_at;
ALTER TABLE requests RENAME COLUMN lease_owner TO runner;
ALTER TABLE requests RENAME COLUMN attempts TO attempt;
CREATE INDEX requests_status ON requests(job_id, status, seq);
CREATE INDEX requests_running ON requests(runner) WHERE status = 'running';
CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    lease REAL NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

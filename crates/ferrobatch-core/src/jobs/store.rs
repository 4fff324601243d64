//! `Store`: batch jobs and their requests in one SQLite file (WAL mode), so that a job
//! survives the death of the process running it.
//!
//! - A job and all its requests are written in one transaction before `create_job` returns.
//! - A runner *claims* pending requests: each claimed request carries a lease (its owner and an
//!   expiry). A request whose lease expired (its runner died) can be claimed again; a live
//!   lease keeps every other runner off it, so two runners never send the same request at once.
//! - Each result is committed on its own as it arrives, and only by the lease holder: a result
//!   that lost its lease is discarded, so every request ends exactly once.
//! - The schema is versioned (`PRAGMA user_version`) and migrated on open.
//! - No API key is ever written: request bodies and a job's non-secret settings only.

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::Error;

/// The schema, one migration per version; `MIGRATIONS[i]` moves version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Submitted, not started.
    Pending,
    /// Requests are being sent.
    Processing,
    /// Every request ended (some may carry an error).
    Completed,
    /// A job-level error stopped it (authentication, the server gone too long).
    Failed,
    /// Cancelled: pending requests were never sent.
    Cancelled,
}

impl JobStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status of a stored name.
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "processing" => JobStatus::Processing,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job can still change by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A request to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    /// The user's id, unique within the job.
    pub id: String,
    /// The request body as JSON text.
    pub body: String,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Its id.
    pub id: String,
    /// The user's name for it.
    pub name: Option<String>,
    /// Its state.
    pub status: JobStatus,
    /// The API path its requests go to, such as `/v1/chat/completions`.
    pub endpoint: String,
    /// Non-secret settings as JSON text (base URL, model, the name of the key's variable).
    pub settings: Option<String>,
    /// A hash of the input it came from, to find it again on a rerun.
    pub input_hash: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How many requests it holds.
    pub total: u64,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds.
    pub updated_at: f64,
}

/// A request handed to a runner under a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Its position in the job.
    pub seq: i64,
    /// The user's id.
    pub id: String,
    /// The body as JSON text.
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Whether it succeeded.
    pub ok: bool,
    /// The response body as JSON text.
    pub response: Option<String>,
    /// The error as JSON text.
    pub error: Option<String>,
    /// Tokens it used.
    pub input_tokens: u64,
    /// Tokens it produced.
    pub output_tokens: u64,
    /// Its cost in USD, when known.
    pub cost: Option<f64>,
}

/// Counts of a job's requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Requests in the job.
    pub total: u64,
    /// Not yet claimed.
    pub pending: u64,
    /// Claimed, result not yet committed.
    pub running: u64,
    /// Ended with a response.
    pub succeeded: u64,
    /// Ended with an error.
    pub failed: u64,
    /// Never sent because the job was cancelled.
    pub cancelled: u64,
    /// Input tokens of ended requests.
    pub input_tokens: u64,
    /// Output tokens of ended requests.
    pub output_tokens: u64,
    /// Cost of ended requests, when known.
    pub cost: Option<f64>,
}

/// One request's outcome, in submit order.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Its position in the job.
    pub seq: i64,
    /// The user's id.
    pub id: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// The response body as JSON text.
    pub response: Option<String>,
    /// The error as JSON text.
    pub error: Option<String>,
}

/// The job store: one SQLite connection behind a lock. Open one per process (or more: SQLite
/// locking keeps them consistent).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Store {
        operation,
        message: e.to_string(),
    }
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let status: String = r.get(2)?;
    Ok(JobRow {
        id: r.get(0)?,
        name: r.get(1)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        endpoint: r.get(3)?,
        settings: r.get(4)?,
        input_hash: r.get(5)?,
        error: r.get(6)?,
        total: r.get::<_, i64>(7)? as u64,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

const JOB_COLUMNS: &str =
    "id, name, status, endpoint, settings, input_hash, error, total, created_at, updated_at";

impl Store {
    /// Open (creating if needed) the store at `path`; `":memory:"` keeps it in memory.
    pub fn open(path: &str) -> Result<Store, Error> {
        let conn = Connection::open(path).map_err(db("opening the store"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(db("setting the busy timeout"))?;
        if path != ":memory:" {
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(db("switching to WAL mode"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::Store {
                    operation: "switching to WAL mode",
                    message: format!("the journal mode stayed {mode:?}"),
                });
            }
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(db("setting pragmas"))?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("migrating"))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db("reading the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Store {
                operation: "migrating",
                message: format!(
                    "the store has schema version {version}, newer than this ferrobatch ({SCHEMA_VERSION})"
                ),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(db("migrating"))?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(db("migrating"))?;
        }
        tx.commit().map_err(db("migrating"))
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<i64, Error> {
        self.lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db("reading the schema version"))
    }

    /// Write a job and every request in one transaction; ids must be unique.
    #[allow(clippy::too_many_arguments)]
    pub fn create_job(
        &self,
        job_id: &str,
        name: Option<&str>,
        endpoint: &str,
        settings: Option<&str>,
        input_hash: Option<&str>,
        requests: &[NewRequest],
        now: f64,
    ) -> Result<(), Error> {
        let mut seen = std::collections::HashMap::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if let Some(first) = seen.insert(r.id.as_str(), i) {
                return Err(Error::DuplicateRequestId {
                    id: r.id.clone(),
                    index: i,
                    first,
                });
            }
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("creating a job"))?;
        tx.execute(
            "INSERT INTO jobs (id, name, status, endpoint, settings, input_hash, total, created_at, updated_at)
             VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?7)",
            params![job_id, name, endpoint, settings, input_hash, requests.len() as i64, now],
        )
        .map_err(db("creating a job"))?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO requests (job_id, seq, id, body, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
                )
                .map_err(db("storing requests"))?;
            for (i, r) in requests.iter().enumerate() {
                stmt.execute(params![job_id, i as i64, r.id, r.body])
                    .map_err(db("storing requests"))?;
            }
        }
        tx.commit().map_err(db("creating a job"))
    }

    /// One job.
    pub fn job(&self, job_id: &str) -> Result<JobRow, Error> {
        self.lock()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [job_id],
                job_row,
            )
            .optional()
            .map_err(db("reading a job"))?
            .ok_or_else(|| Error::JobNotFound {
                job: job_id.to_string(),
            })
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRow>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at, id"
            ))
            .map_err(db("listing jobs"))?;
        let rows = stmt
            .query_map([], job_row)
            .map_err(db("listing jobs"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("listing jobs"));
        rows
    }

    /// The newest job made from the input with this hash.
    pub fn find_by_input(&self, input_hash: &str) -> Result<Option<JobRow>, Error> {
        self.lock()
            .query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE input_hash = ?1 ORDER BY created_at DESC LIMIT 1"
                ),
                [input_hash],
                job_row,
            )
            .optional()
            .map_err(db("finding a job"))
    }

    /// Set a job's status (and error).
    pub fn set_status(
        &self,
        job_id: &str,
        status: JobStatus,
        error: Option<&str>,
        now: f64,
    ) -> Result<(), Error> {
        let n = self
            .lock()
            .execute(
                "UPDATE jobs SET status = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
                params![job_id, status.as_str(), error, now],
            )
            .map_err(db("updating a job"))?;
        if n == 0 {
            return Err(Error::JobNotFound {
                job: job_id.to_string(),
            });
        }
        Ok(())
    }

    /// Lease up to `limit` requests to `owner` until `now + lease`: pending ones first in
    /// submit order, then running ones whose lease expired (their runner died).
    pub fn claim(
        &self,
        job_id: &str,
        owner: &str,
        limit: usize,
        lease: Duration,
        now: f64,
    ) -> Result<Vec<Claimed>, Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("claiming requests"))?;
        let claimed = {
            let mut stmt = tx
                .prepare(
                    "SELECT seq, id, body, attempts FROM requests
                     WHERE job_id = ?1 AND (status = 'pending' OR (status = 'running' AND lease_expires <= ?2))
                     ORDER BY seq LIMIT ?3",
                )
                .map_err(db("claiming requests"))?;
            let rows = stmt
                .query_map(params![job_id, now, limit as i64], |r| {
                    Ok(Claimed {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        body: r.get(2)?,
                        attempts: r.get::<_, i64>(3)? as u32 + 1,
                    })
                })
                .map_err(db("claiming requests"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("claiming requests"))?;
            let mut update = tx
                .prepare(
                    "UPDATE requests SET status = 'running', lease_owner = ?3, lease_expires = ?4,
                     attempts = attempts + 1 WHERE job_id = ?1 AND seq = ?2",
                )
                .map_err(db("claiming requests"))?;
            let expires = now + lease.as_secs_f64();
            for c in &rows {
                update
                    .execute(params![job_id, c.seq, owner, expires])
                    .map_err(db("claiming requests"))?;
            }
            rows
        };
        tx.commit().map_err(db("claiming requests"))?;
        Ok(claimed)
    }

    /// Extend every lease `owner` holds in the job; how many.
    pub fn renew(
        &self,
        job_id: &str,
        owner: &str,
        lease: Duration,
        now: f64,
    ) -> Result<usize, Error> {
        self.lock()
            .execute(
                "UPDATE requests SET lease_expires = ?3
                 WHERE job_id = ?1 AND status = 'running' AND lease_owner = ?2",
                params![job_id, owner, now + lease.as_secs_f64()],
            )
            .map_err(db("renewing leases"))
    }

    /// Commit a request's outcome if `owner` still holds its lease; false when the lease was
    /// lost (the result is then discarded: another runner owns the request).
    pub fn complete(
        &self,
        job_id: &str,
        seq: i64,
        owner: &str,
        done: &Completion,
        now: f64,
    ) -> Result<bool, Error> {
        let n = self
            .lock()
            .execute(
                "UPDATE requests SET status = ?4, response = ?5, error = ?6, input_tokens = ?7,
                 output_tokens = ?8, cost = ?9, finished_at = ?10, lease_owner = NULL, lease_expires = NULL
                 WHERE job_id = ?1 AND seq = ?2 AND status = 'running' AND lease_owner = ?3",
                params![
                    job_id,
                    seq,
                    owner,
                    if done.ok { "succeeded" } else { "failed" },
                    done.response,
                    done.error,
                    done.input_tokens as i64,
                    done.output_tokens as i64,
                    done.cost,
                    now
                ],
            )
            .map_err(db("committing a result"))?;
        Ok(n == 1)
    }

    /// Hand back every lease `owner` holds in the job (their requests become pending).
    pub fn release(&self, job_id: &str, owner: &str) -> Result<usize, Error> {
        self.lock()
            .execute(
                "UPDATE requests SET status = 'pending', lease_owner = NULL, lease_expires = NULL
                 WHERE job_id = ?1 AND status = 'running' AND lease_owner = ?2",
                params![job_id, owner],
            )
            .map_err(db("releasing leases"))
    }

    /// Cancel a job: its pending requests will never be sent; running ones may finish.
    /// How many requests were cancelled.
    pub fn cancel(&self, job_id: &str, now: f64) -> Result<usize, Error> {
        let job = self.job(job_id)?;
        if job.status.is_terminal() && job.status != JobStatus::Cancelled {
            return Ok(0);
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("cancelling"))?;
        let n = tx
            .execute(
                "UPDATE requests SET status = 'cancelled', finished_at = ?2 WHERE job_id = ?1 AND status = 'pending'",
                params![job_id, now],
            )
            .map_err(db("cancelling"))?;
        tx.execute(
            "UPDATE jobs SET status = 'cancelled', updated_at = ?2 WHERE id = ?1",
            params![job_id, now],
        )
        .map_err(db("cancelling"))?;
        tx.commit().map_err(db("cancelling"))?;
        Ok(n)
    }

    /// Put failed (and, with `cancelled`, cancelled) requests back to pending; how many.
    pub fn reset_failed(&self, job_id: &str, cancelled: bool) -> Result<usize, Error> {
        let sql = if cancelled {
            "UPDATE requests SET status = 'pending', error = NULL, response = NULL
             WHERE job_id = ?1 AND status IN ('failed', 'cancelled')"
        } else {
            "UPDATE requests SET status = 'pending', error = NULL, response = NULL
             WHERE job_id = ?1 AND status = 'failed'"
        };
        self.lock()
            .execute(sql, [job_id])
            .map_err(db("resetting failed requests"))
    }

    /// Running requests whose live lease belongs to another owner.
    pub fn leased_by_others(&self, job_id: &str, owner: &str, now: f64) -> Result<u64, Error> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND status = 'running'
                 AND lease_owner != ?2 AND lease_expires > ?3",
                params![job_id, owner, now],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db("counting leases"))
    }

    /// Counts, tokens and cost of a job.
    pub fn progress(&self, job_id: &str) -> Result<Progress, Error> {
        let job = self.job(job_id)?;
        let conn = self.lock();
        let mut p = Progress {
            total: job.total,
            ..Progress::default()
        };
        let mut stmt = conn
            .prepare(
                "SELECT status, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost)
                 FROM requests WHERE job_id = ?1 GROUP BY status",
            )
            .map_err(db("reading progress"))?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                    r.get::<_, Option<f64>>(4)?,
                ))
            })
            .map_err(db("reading progress"))?;
        for row in rows {
            let (status, n, input, output, cost) = row.map_err(db("reading progress"))?;
            match status.as_str() {
                "pending" => p.pending = n,
                "running" => p.running = n,
                "succeeded" => p.succeeded = n,
                "failed" => p.failed = n,
                "cancelled" => p.cancelled = n,
                _ => {}
            }
            p.input_tokens += input;
            p.output_tokens += output;
            if let Some(c) = cost {
                p.cost = Some(p.cost.unwrap_or(0.0) + c);
            }
        }
        Ok(p)
    }

    /// Every request's outcome, in submit order.
    pub fn results(&self, job_id: &str) -> Result<Vec<ResultRow>, Error> {
        self.job(job_id)?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT seq, id, status, response, error FROM requests WHERE job_id = ?1 ORDER BY seq",
            )
            .map_err(db("reading results"))?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok(ResultRow {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    status: r.get(2)?,
                    response: r.get(3)?,
                    error: r.get(4)?,
                })
            })
            .map_err(db("reading results"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("reading results"));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    fn reqs(n: usize) -> Vec<NewRequest> {
        (0..n)
            .map(|i| NewRequest {
                id: format!("r{i}"),
                body: format!("{{\"i\": {i}}}"),
            })
            .collect()
    }

    fn store_with_job(n: usize) -> Store {
        let s = Store::open(":memory:").unwrap();
        s.create_job(
            "j",
            Some("name"),
            "/v1/chat/completions",
            None,
            Some("h"),
            &reqs(n),
            1.0,
        )
        .unwrap();
        s
    }

    fn ok() -> Completion {
        Completion {
            ok: true,
            response: Some("{}".into()),
            error: None,
            input_tokens: 3,
            output_tokens: 2,
            cost: Some(0.5),
        }
    }

    #[test]
    fn duplicate_ids_are_refused_and_nothing_is_written() {
        let s = Store::open(":memory:").unwrap();
        let mut r = reqs(3);
        r[2].id = "r0".into();
        let e = s
            .create_job("j", None, "/e", None, None, &r, 1.0)
            .unwrap_err();
        assert_eq!(
            e,
            Error::DuplicateRequestId {
                id: "r0".into(),
                index: 2,
                first: 0
            }
        );
        assert!(matches!(s.job("j"), Err(Error::JobNotFound { .. })));
    }

    #[test]
    fn claims_are_exclusive_until_the_lease_expires() {
        let s = store_with_job(5);
        let a = s.claim("j", "A", 3, LEASE, 100.0).unwrap();
        assert_eq!(a.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        let b = s.claim("j", "B", 10, LEASE, 101.0).unwrap();
        assert_eq!(b.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert!(s.claim("j", "B", 10, LEASE, 105.0).unwrap().is_empty());
        assert_eq!(s.leased_by_others("j", "B", 105.0).unwrap(), 3);
        // A dies; after its lease, B takes its requests over (attempt 2).
        let again = s.claim("j", "B", 10, LEASE, 110.5).unwrap();
        assert_eq!(
            again.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(again.iter().all(|c| c.attempts == 2));
        // A's late result is discarded; B's is kept.
        assert!(!s.complete("j", 0, "A", &ok(), 111.0).unwrap());
        assert!(s.complete("j", 0, "B", &ok(), 111.0).unwrap());
        assert!(!s.complete("j", 0, "B", &ok(), 112.0).unwrap(), "ends once");
    }

    #[test]
    fn renew_keeps_a_lease_alive() {
        let s = store_with_job(1);
        s.claim("j", "A", 1, LEASE, 0.0).unwrap();
        assert_eq!(s.renew("j", "A", LEASE, 9.0).unwrap(), 1);
        assert!(s.claim("j", "B", 1, LEASE, 15.0).unwrap().is_empty());
        assert_eq!(s.claim("j", "B", 1, LEASE, 19.5).unwrap().len(), 1);
    }

    #[test]
    fn progress_cancel_reset_and_results() {
        let s = store_with_job(4);
        let c = s.claim("j", "A", 2, LEASE, 0.0).unwrap();
        s.complete("j", c[0].seq, "A", &ok(), 1.0).unwrap();
        let fail = Completion {
            ok: false,
            response: None,
            error: Some("{\"message\": \"x\"}".into()),
            input_tokens: 0,
            output_tokens: 0,
            cost: None,
        };
        s.complete("j", c[1].seq, "A", &fail, 1.0).unwrap();
        let p = s.progress("j").unwrap();
        assert_eq!((p.total, p.pending, p.succeeded, p.failed), (4, 2, 1, 1));
        assert_eq!((p.input_tokens, p.output_tokens, p.cost), (3, 2, Some(0.5)));
        assert_eq!(s.cancel("j", 2.0).unwrap(), 2);
        assert_eq!(s.job("j").unwrap().status, JobStatus::Cancelled);
        assert!(s.claim("j", "A", 10, LEASE, 3.0).unwrap().is_empty());
        let r = s.results("j").unwrap();
        let statuses: Vec<&str> = r.iter().map(|x| x.status.as_str()).collect();
        assert_eq!(statuses, ["succeeded", "failed", "cancelled", "cancelled"]);
        assert_eq!(r[1].error.as_deref(), Some("{\"message\": \"x\"}"));
        assert_eq!(s.reset_failed("j", false).unwrap(), 1);
        assert_eq!(s.reset_failed("j", true).unwrap(), 2);
        assert_eq!(s.progress("j").unwrap().pending, 3);
    }

    #[test]
    fn release_hands_leases_back() {
        let s = store_with_job(2);
        s.claim("j", "A", 2, LEASE, 0.0).unwrap();
        assert_eq!(s.release("j", "A").unwrap(), 2);
        assert_eq!(s.claim("j", "B", 2, LEASE, 1.0).unwrap().len(), 2);
    }

    #[test]
    fn a_file_store_is_shared_between_connections_and_versioned() {
        let dir = std::env::temp_dir().join(format!("ferrobatch-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.db");
        let path = path.to_str().unwrap();
        let _ = std::fs::remove_file(path);
        let a = Store::open(path).unwrap();
        assert_eq!(a.schema_version().unwrap(), SCHEMA_VERSION);
        a.create_job("j", None, "/e", Some("{}"), Some("hash"), &reqs(3), 1.0)
            .unwrap();
        let b = Store::open(path).unwrap();
        assert_eq!(b.find_by_input("hash").unwrap().unwrap().id, "j");
        let ca = a.claim("j", "A", 2, LEASE, 0.0).unwrap();
        let cb = b.claim("j", "B", 2, LEASE, 0.0).unwrap();
        assert_eq!((ca.len(), cb.len()), (2, 1));
        assert_eq!(b.jobs().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

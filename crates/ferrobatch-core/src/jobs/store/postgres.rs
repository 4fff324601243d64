//! `PgStore`: the shared job store in PostgreSQL, for runners on many hosts (tokio-postgres on
//! a deadpool pool, TLS through rustls when the DSN asks for it).
//!
//! The way the well-kept Postgres queues do it:
//! - a claim is one statement: a materialized CTE picks pending rows `FOR UPDATE SKIP LOCKED`
//!   and the update marks them `RETURNING` them, so concurrent runners never wait on each
//!   other and never get the same row;
//! - every time comparison uses the database's `now()`, never a host's clock;
//! - runners heartbeat into `ferrobatch_runners`; each heartbeat also hands back the requests
//!   of runners whose heartbeat lapsed (no leader, no reaper process). A heartbeat counts from
//!   the database's start at the earliest (`pg_postmaster_start_time()`): a restart, which
//!   no runner can beat through, never makes every runner look dead at once;
//! - outcomes go in groups to the insert-only `ferrobatch_results`, fenced by (runner,
//!   attempt) in the same statement that counts them on the job's row;
//! - every statement is its own short transaction, except a job's creation;
//! - migrations are versioned in `ferrobatch_schema` and run under an advisory lock.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::postgres::describe;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::ledger::{self, progress_of, Tally};
use super::{check_unique, check_version, redact, Store, StoreFuture, SCHEMA_VERSION};
use crate::error::Error;
use crate::jobs::model::{
    BatchLimits, Claimed, Completion, Finished, JobRow, JobStatus, NewJob, NewRequest, Progress,
    ProviderBatchRow, ProviderBatchState, ProviderBatchUpdate, ResultRow, RunnerInfo, Settled,
};

/// The schema: `(version, SQL)`, each moving the store from the version before it. One
/// version sequence for both engines: PostgreSQL stores begin at version 2.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        2,
        include_str!("migrations/postgres/0002_jobs_runners_and_results.sql"),
    ),
    (
        3,
        include_str!("migrations/postgres/0003_provider_batches.sql"),
    ),
];

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

/// Serializes migrations of concurrent first opens (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6665_7272_6f62;

/// Requests written per `COPY` when a job is created.
const JOB_COLUMNS: &str = "id, name, status, endpoint, settings, input_hash, error, total, \
     extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8";

fn pg(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| Error::Store {
        operation,
        message: describe(&e),
    }
}

fn job_row(r: &Row) -> JobRow {
    let status: String = r.get(2);
    JobRow {
        id: r.get(0),
        name: r.get(1),
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        endpoint: r.get(3),
        settings: r.get(4),
        input_hash: r.get(5),
        error: r.get(6),
        total: r.get::<_, i64>(7) as u64,
        created_at: r.get(8),
        updated_at: r.get(9),
    }
}

fn status_of(r: &Row) -> JobStatus {
    JobStatus::parse(r.get(0)).unwrap_or(JobStatus::Failed)
}

/// The shared store: a pool of connections to one database.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    location: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish()
    }
}

impl PgStore {
    /// Connect to the database of a `postgresql://` DSN and migrate it.
    pub async fn open(dsn: &str) -> Result<PgStore, Error> {
        let location = redact(dsn);
        let pool = crate::postgres::pool(dsn, 8).map_err(|message| Error::Store {
            operation: "opening the store",
            message,
        })?;
        let store = PgStore { pool, location };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(|e| Error::Store {
            operation: "connecting",
            message: format!("{}: {e}", self.location),
        })
    }

    async fn migrate(&self) -> Result<(), Error> {
        let mut c = self.client().await?;
        c.batch_execute("CREATE TABLE IF NOT EXISTS ferrobatch_schema (version bigint NOT NULL)")
            .await
            .map_err(pg("migrating"))?;
        let tx = c.transaction().await.map_err(pg("migrating"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg("migrating"))?;
        let version: i64 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM ferrobatch_schema",
                &[],
            )
            .await
            .map_err(pg("reading the schema version"))?
            .get(0);
        let version = if version == 1 || version == 2 {
            // Stores written before the engines shared one version sequence counted 1 and 2
            // for what is now 2 and 3: the tables say which it is.
            let row = tx
                .query_one("SELECT to_regclass('ferrobatch_chunks') IS NOT NULL", &[])
                .await
                .map_err(pg("reading the schema version"))?;
            if row.get::<_, bool>(0) {
                3
            } else {
                2
            }
        } else {
            version
        };
        check_version(version, SCHEMA_VERSION)?;
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
            tx.batch_execute(sql).await.map_err(pg("migrating"))?;
            tx.execute("INSERT INTO ferrobatch_schema (version) VALUES ($1)", &[v])
                .await
                .map_err(pg("migrating"))?;
        }
        tx.execute(
            // A store of the old numbering whose tables were current records today's number.
            "INSERT INTO ferrobatch_schema (version) SELECT $1::bigint
             WHERE (SELECT max(version) FROM ferrobatch_schema) < $1::bigint",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(pg("migrating"))?;
        tx.commit().await.map_err(pg("migrating"))
    }

    async fn one(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(pg(op))?;
        c.query_opt(&stmt, params).await.map_err(pg(op))
    }

    async fn many(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(pg(op))?;
        c.query(&stmt, params).await.map_err(pg(op))
    }

    async fn count(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, Error> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(pg(op))?;
        c.execute(&stmt, params).await.map_err(pg(op))
    }

    /// Whether the runner is registered with a lease that has not lapsed.
    async fn live(&self, runner_id: &str) -> Result<bool, Error> {
        let row = self
            .one(
                "claiming requests",
                "SELECT EXISTS (SELECT 1 FROM ferrobatch_runners
                                WHERE id = $1 AND GREATEST(heartbeat_at, pg_postmaster_start_time()) + lease >= now())",
                &[&runner_id],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    }

    /// The job's provider batches (only the unsettled ones `owner` holds, when given), in order.
    async fn read_chunks(
        &self,
        job_id: &str,
        owner: Option<&str>,
    ) -> Result<Vec<ProviderBatchRow>, Error> {
        let rows = self
            .many(
                "reading provider batches",
                "SELECT chunk, provider, state, batch_id, file_id, remote_status, requests,
                     extract(epoch FROM intent_at)::float8, owner
                 FROM ferrobatch_chunks
                 WHERE job_id = $1 AND ($2::text IS NULL OR (owner = $2 AND state != 'settled'))
                 ORDER BY chunk",
                &[&job_id, &owner],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ProviderBatchRow {
                job_id: job_id.to_string(),
                number: r.get(0),
                provider: r.get(1),
                state: ProviderBatchState::parse(r.get(2)),
                batch_id: r.get(3),
                file_id: r.get(4),
                remote_status: r.get(5),
                requests: r.get::<_, i64>(6) as u64,
                intent_at: r.get(7),
                owner: r.get(8),
            })
            .collect())
    }

    async fn status(&self, op: &'static str, sql: &str, job_id: &str) -> Result<JobStatus, Error> {
        let row = self.one(op, sql, &[&job_id]).await?;
        row.map(|r| status_of(&r))
            .ok_or_else(|| Error::JobNotFound {
                job: job_id.to_string(),
            })
    }
}

impl Store for PgStore {
    fn engine(&self) -> &'static str {
        "postgresql"
    }

    fn schema_version(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let row = self
                .one(
                    "reading the schema version",
                    "SELECT COALESCE(max(version), 0) FROM ferrobatch_schema",
                    &[],
                )
                .await?;
            Ok(row.map_or(0, |r| r.get(0)))
        })
    }

    fn create_job(&self, job: NewJob, requests: Vec<NewRequest>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            check_unique(&requests)?;
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg("creating a job"))?;
            tx.execute(
                "INSERT INTO ferrobatch_jobs (id, name, status, endpoint, settings, input_hash, total)
                 VALUES ($1, $2, 'pending', $3, $4, $5, $6)",
                &[&job.id, &job.name, &job.endpoint, &job.settings, &job.input_hash, &(requests.len() as i64)],
            )
            .await
            .map_err(pg("creating a job"))?;
            let sink = tx
                .copy_in("COPY ferrobatch_requests (job_id, seq, id, body) FROM STDIN BINARY")
                .await
                .map_err(pg("storing requests"))?;
            let writer =
                BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT]);
            let mut writer = std::pin::pin!(writer);
            for (i, r) in requests.iter().enumerate() {
                writer
                    .as_mut()
                    .write(&[&job.id, &(i as i64), &r.id, &r.body])
                    .await
                    .map_err(pg("storing requests"))?;
            }
            writer.finish().await.map_err(pg("storing requests"))?;
            tx.commit().await.map_err(pg("creating a job"))
        })
    }

    fn job(&self, job_id: String) -> StoreFuture<'_, JobRow> {
        Box::pin(async move {
            let sql = format!("SELECT {JOB_COLUMNS} FROM ferrobatch_jobs WHERE id = $1");
            let row = self.one("reading a job", &sql, &[&job_id]).await?;
            row.map(|r| job_row(&r))
                .ok_or(Error::JobNotFound { job: job_id })
        })
    }

    fn jobs(&self) -> StoreFuture<'_, Vec<JobRow>> {
        Box::pin(async move {
            let sql = format!("SELECT {JOB_COLUMNS} FROM ferrobatch_jobs ORDER BY created_at, id");
            let rows = self.many("listing jobs", &sql, &[]).await?;
            Ok(rows.iter().map(job_row).collect())
        })
    }

    fn find_by_input(&self, input_hash: String) -> StoreFuture<'_, Option<JobRow>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM ferrobatch_jobs WHERE input_hash = $1
                 ORDER BY created_at DESC LIMIT 1"
            );
            let row = self.one("finding a job", &sql, &[&input_hash]).await?;
            Ok(row.map(|r| job_row(&r)))
        })
    }

    fn set_status(
        &self,
        job_id: String,
        status: JobStatus,
        error: Option<String>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let n = self
                .count(
                    "updating a job",
                    "UPDATE ferrobatch_jobs SET status = $2, error = $3, updated_at = now() WHERE id = $1",
                    &[&job_id, &status.as_str(), &error],
                )
                .await?;
            if n == 0 {
                return Err(Error::JobNotFound { job: job_id });
            }
            Ok(())
        })
    }

    fn start(&self, job_id: String) -> StoreFuture<'_, JobStatus> {
        Box::pin(async move {
            self.count(
                "starting a job",
                "UPDATE ferrobatch_jobs SET status = 'processing', updated_at = now()
                 WHERE id = $1 AND status = 'pending'",
                &[&job_id],
            )
            .await?;
            self.status(
                "starting a job",
                "SELECT status FROM ferrobatch_jobs WHERE id = $1",
                &job_id,
            )
            .await
        })
    }

    fn fail(&self, job_id: String, error: String) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let n = self
                .count(
                    "failing a job",
                    "UPDATE ferrobatch_jobs SET status = 'failed', error = $2, updated_at = now()
                     WHERE id = $1 AND status IN ('pending', 'processing')",
                    &[&job_id, &error],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn finish_if_done(&self, job_id: String) -> StoreFuture<'_, JobStatus> {
        Box::pin(async move {
            self.count(
                "completing a job",
                "UPDATE ferrobatch_jobs j SET status = 'completed', updated_at = now()
                 WHERE j.id = $1 AND j.status = 'processing'
                   AND NOT EXISTS (SELECT 1 FROM ferrobatch_requests
                                   WHERE job_id = $1
                                     AND status IN ('pending', 'running', 'batched'))",
                &[&job_id],
            )
            .await?;
            self.status(
                "completing a job",
                "SELECT status FROM ferrobatch_jobs WHERE id = $1",
                &job_id,
            )
            .await
        })
    }

    fn register(&self, runner: RunnerInfo) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.count(
                "registering a runner",
                "INSERT INTO ferrobatch_runners (id, host, pid, lease)
                 VALUES ($1, $2, $3, make_interval(secs => $4))
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
                &[
                    &runner.id,
                    &runner.host,
                    &i64::from(runner.pid),
                    &runner.lease.as_secs_f64(),
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn heartbeat(&self, runner_id: String) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let row = self
                .one(
                    "sending a heartbeat",
                    "WITH me AS (
                         UPDATE ferrobatch_runners SET heartbeat_at = now()
                         WHERE id = $1 AND GREATEST(heartbeat_at, pg_postmaster_start_time()) + lease >= now() RETURNING id),
                     dead AS (
                         DELETE FROM ferrobatch_runners WHERE GREATEST(heartbeat_at, pg_postmaster_start_time()) + lease < now() RETURNING id),
                     freed AS (
                         UPDATE ferrobatch_requests r SET status = 'pending', runner = NULL
                         WHERE r.status = 'running'
                           AND NOT EXISTS (SELECT 1 FROM ferrobatch_runners w
                                           WHERE w.id = r.runner AND GREATEST(w.heartbeat_at, pg_postmaster_start_time()) + w.lease >= now())
                         RETURNING 1)
                     SELECT (SELECT count(*) FROM me) + 0 * (SELECT count(*) FROM dead) + 0 * (SELECT count(*) FROM freed)",
                    &[&runner_id],
                )
                .await?;
            Ok(row.is_some_and(|r| r.get::<_, i64>(0) == 1))
        })
    }

    fn runners(&self) -> StoreFuture<'_, Vec<RunnerInfo>> {
        Box::pin(async move {
            let rows = self
                .many(
                    "listing runners",
                    "SELECT id, host, pid, extract(epoch FROM lease)::float8
                     FROM ferrobatch_runners ORDER BY started_at",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| RunnerInfo {
                    id: r.get(0),
                    host: r.get(1),
                    pid: u32::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                    lease: Duration::from_secs_f64(r.get::<_, f64>(3).max(0.0)),
                })
                .collect())
        })
    }

    fn unregister(&self, runner_id: String) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let row = self
                .one(
                    "removing a runner",
                    "WITH gone AS (DELETE FROM ferrobatch_runners WHERE id = $1 RETURNING id),
                     back AS (
                         UPDATE ferrobatch_requests SET status = 'pending', runner = NULL
                         WHERE status = 'running' AND runner = $1 RETURNING 1),
                     chunks AS (
                         UPDATE ferrobatch_chunks SET owner = NULL WHERE owner = $1 RETURNING 1)
                     SELECT (SELECT count(*) FROM back) + 0 * (SELECT count(*) FROM gone)
                          + 0 * (SELECT count(*) FROM chunks)",
                    &[&runner_id],
                )
                .await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }

    fn claim(
        &self,
        job_id: String,
        runner_id: String,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Claimed>> {
        Box::pin(async move {
            let rows = self
                .many(
                    "claiming requests",
                    "WITH me AS MATERIALIZED (
                         SELECT id FROM ferrobatch_runners
                         WHERE id = $2 AND GREATEST(heartbeat_at, pg_postmaster_start_time()) + lease >= now() FOR SHARE),
                     picked AS MATERIALIZED (
                         SELECT job_id, seq FROM ferrobatch_requests
                         WHERE job_id = $1 AND status = 'pending' AND EXISTS (SELECT 1 FROM me)
                         ORDER BY seq LIMIT $3
                         FOR UPDATE SKIP LOCKED)
                     UPDATE ferrobatch_requests r
                     SET status = 'running', runner = $2, attempt = r.attempt + 1
                     FROM picked WHERE r.job_id = picked.job_id AND r.seq = picked.seq
                     RETURNING r.seq, r.id, r.body, r.attempt",
                    &[&job_id, &runner_id, &(limit as i64)],
                )
                .await?;
            let mut out: Vec<Claimed> = rows
                .iter()
                .map(|r| Claimed {
                    job_id: job_id.clone(),
                    seq: r.get(0),
                    id: r.get(1),
                    body: r.get(2),
                    attempt: i64::from(r.get::<_, i32>(3)),
                })
                .collect();
            if out.is_empty() && !self.live(&runner_id).await? {
                return Err(Error::LeaseLost { runner: runner_id });
            }
            out.sort_by_key(|c| c.seq);
            Ok(out)
        })
    }

    fn record(&self, runner_id: String, done: Arc<Vec<Finished>>) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let jobs: Vec<&str> = done.iter().map(|f| f.job_id.as_str()).collect();
            let seqs: Vec<i64> = done.iter().map(|f| f.seq).collect();
            let attempts: Vec<i32> = done.iter().map(|f| f.attempt as i32).collect();
            let oks: Vec<bool> = done.iter().map(|f| f.outcome.ok).collect();
            let responses: Vec<Option<&str>> =
                done.iter().map(|f| f.outcome.response.as_deref()).collect();
            let errors: Vec<Option<&str>> =
                done.iter().map(|f| f.outcome.error.as_deref()).collect();
            let inputs: Vec<i64> = done.iter().map(|f| f.outcome.input_tokens as i64).collect();
            let outputs: Vec<i64> = done
                .iter()
                .map(|f| f.outcome.output_tokens as i64)
                .collect();
            let costs: Vec<Option<f64>> = done.iter().map(|f| f.outcome.cost).collect();
            let row = self
                .one(
                    "recording results",
                    "WITH d AS (
                         SELECT DISTINCT ON (job_id, seq, attempt) * FROM unnest($2::text[], $3::bigint[], $4::int[], $5::bool[],
                                              $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                                              $10::float8[])
                             AS d(job_id, seq, attempt, ok, response, error, input_tokens,
                                  output_tokens, cost)
                         ORDER BY job_id, seq, attempt),
                     fenced AS (
                         UPDATE ferrobatch_requests r
                         SET status = CASE WHEN d.ok THEN 'succeeded' ELSE 'failed' END, runner = NULL
                         FROM d
                         WHERE r.job_id = d.job_id AND r.seq = d.seq AND r.attempt = d.attempt
                           AND r.runner = $1 AND r.status = 'running'
                         RETURNING r.job_id, r.seq, r.attempt),
                     kept AS (
                         INSERT INTO ferrobatch_results (job_id, seq, attempt, runner, ok, response,
                                                         error, input_tokens, output_tokens, cost)
                         SELECT d.job_id, d.seq, d.attempt, $1, d.ok, d.response, d.error,
                                d.input_tokens, d.output_tokens, d.cost
                         FROM d JOIN fenced f
                           ON f.job_id = d.job_id AND f.seq = d.seq AND f.attempt = d.attempt
                         RETURNING job_id, ok, input_tokens, output_tokens, cost),
                     counted AS (
                         UPDATE ferrobatch_jobs j
                         SET succeeded = j.succeeded + c.s, failed = j.failed + c.f,
                             input_tokens = j.input_tokens + c.i,
                             output_tokens = j.output_tokens + c.o,
                             cost = CASE WHEN c.cost IS NULL THEN j.cost
                                         ELSE COALESCE(j.cost, 0) + c.cost END,
                             updated_at = now()
                         FROM (SELECT job_id, count(*) FILTER (WHERE ok) AS s,
                                      count(*) FILTER (WHERE NOT ok) AS f,
                                      sum(input_tokens)::bigint AS i,
                                      sum(output_tokens)::bigint AS o, sum(cost) AS cost
                               FROM kept GROUP BY job_id) c
                         WHERE j.id = c.job_id
                         RETURNING 1)
                     SELECT (SELECT count(*) FROM kept) + 0 * (SELECT count(*) FROM counted)",
                    &[&runner_id, &jobs, &seqs, &attempts, &oks, &responses, &errors, &inputs, &outputs, &costs],
                )
                .await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }

    fn release(&self, job_id: String, runner_id: String) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.count(
                "releasing requests",
                "UPDATE ferrobatch_requests SET status = 'pending', runner = NULL
                 WHERE job_id = $1 AND status = 'running' AND runner = $2",
                &[&job_id, &runner_id],
            )
            .await
        })
    }

    fn cancel(&self, job_id: String) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg("cancelling"))?;
            let row = tx
                .query_opt(
                    "SELECT status FROM ferrobatch_jobs WHERE id = $1 FOR UPDATE",
                    &[&job_id],
                )
                .await
                .map_err(pg("cancelling"))?
                .ok_or_else(|| Error::JobNotFound {
                    job: job_id.clone(),
                })?;
            if matches!(status_of(&row), JobStatus::Completed | JobStatus::Failed) {
                return Ok(0);
            }
            let n = tx
                .execute(
                    "UPDATE ferrobatch_requests SET status = 'cancelled'
                     WHERE job_id = $1 AND status = 'pending'",
                    &[&job_id],
                )
                .await
                .map_err(pg("cancelling"))?;
            tx.execute(
                "UPDATE ferrobatch_jobs SET status = 'cancelled', cancelled = cancelled + $2,
                     updated_at = now() WHERE id = $1",
                &[&job_id, &(n as i64)],
            )
            .await
            .map_err(pg("cancelling"))?;
            tx.commit().await.map_err(pg("cancelling"))?;
            Ok(n)
        })
    }

    fn reset_failed(&self, job_id: String, cancelled: bool) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let row = self
                .one(
                    "resetting failed requests",
                    "WITH back AS (
                         UPDATE ferrobatch_requests SET status = 'pending'
                         WHERE job_id = $1 AND (status = 'failed' OR ($2 AND status = 'cancelled'))
                         RETURNING status = 'failed' AS was_failed),
                     -- Every part sees the rows as they were: count the old statuses.
                     old AS (
                         SELECT count(*) FILTER (WHERE status = 'failed') AS f,
                                count(*) FILTER (WHERE $2 AND status = 'cancelled') AS c
                         FROM ferrobatch_requests WHERE job_id = $1),
                     counted AS (
                         UPDATE ferrobatch_jobs j SET failed = j.failed - old.f,
                             cancelled = j.cancelled - old.c, updated_at = now()
                         FROM old WHERE j.id = $1 RETURNING old.f + old.c AS n)
                     SELECT n + 0 * (SELECT count(*) FROM back) FROM counted",
                    &[&job_id, &cancelled],
                )
                .await?;
            row.map(|r| r.get::<_, i64>(0) as u64)
                .ok_or(Error::JobNotFound { job: job_id })
        })
    }

    fn progress(&self, job_id: String) -> StoreFuture<'_, Progress> {
        Box::pin(async move {
            let row = self
                .one(
                    "reading progress",
                    "SELECT total, succeeded, failed, cancelled, input_tokens, output_tokens, cost,
                         (SELECT count(*) FROM ferrobatch_requests
                          WHERE job_id = $1 AND status IN ('running', 'batched'))
                     FROM ferrobatch_jobs WHERE id = $1",
                    &[&job_id],
                )
                .await?
                .ok_or(Error::JobNotFound { job: job_id })?;
            Ok(progress_of((
                row.get(0),
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get(6),
                row.get(7),
            )))
        })
    }

    fn results(&self, job_id: String) -> StoreFuture<'_, Vec<ResultRow>> {
        Box::pin(async move {
            self.job(job_id.clone()).await?;
            let rows = self
                .many(
                    "reading results",
                    "SELECT q.seq, q.id,
                         CASE q.status WHEN 'batched' THEN 'running' ELSE q.status END,
                         r.response, r.error FROM ferrobatch_requests q
                     LEFT JOIN ferrobatch_results r ON q.status IN ('succeeded', 'failed')
                         AND r.job_id = q.job_id AND r.seq = q.seq AND r.attempt = q.attempt
                     WHERE q.job_id = $1 ORDER BY q.seq",
                    &[&job_id],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| ResultRow {
                    seq: r.get(0),
                    id: r.get(1),
                    status: r.get(2),
                    response: r.get(3),
                    error: r.get(4),
                })
                .collect())
        })
    }

    fn claim_provider_batch(
        &self,
        job_id: String,
        runner_id: String,
        provider: String,
        limits: BatchLimits,
    ) -> StoreFuture<'_, Option<(ProviderBatchRow, Vec<Claimed>)>> {
        Box::pin(async move {
            let op = "setting aside a provider batch";
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg(op))?;
            // The runner's row is locked for the transaction: a heartbeat of another runner
            // cannot remove it between this check and the commit.
            let live = tx
                .query_opt(
                    "SELECT 1 FROM ferrobatch_runners
                     WHERE id = $1 AND GREATEST(heartbeat_at, pg_postmaster_start_time()) + lease >= now() FOR SHARE",
                    &[&runner_id],
                )
                .await
                .map_err(pg(op))?;
            if live.is_none() {
                return Err(Error::LeaseLost { runner: runner_id });
            }
            let rows = tx
                .query(
                    "SELECT seq, id, body, attempt FROM ferrobatch_requests
                     WHERE job_id = $1 AND status = 'pending' ORDER BY seq LIMIT $2
                     FOR UPDATE SKIP LOCKED",
                    &[&job_id, &(limits.requests.max(1) as i64)],
                )
                .await
                .map_err(pg(op))?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut taken: Vec<Claimed> = rows
                .iter()
                .map(|r| Claimed {
                    job_id: job_id.clone(),
                    seq: r.get(0),
                    id: r.get(1),
                    body: r.get(2),
                    attempt: i64::from(r.get::<_, i32>(3)) + 1,
                })
                .collect();
            taken.truncate(crate::jobs::model::cut(&limits, &taken));
            let seqs: Vec<i64> = taken.iter().map(|c| c.seq).collect();
            let chunk: i64 = tx
                .query_one(
                    "UPDATE ferrobatch_jobs SET chunks = chunks + 1 WHERE id = $1 RETURNING chunks",
                    &[&job_id],
                )
                .await
                .map_err(pg(op))?
                .get(0);
            tx.execute(
                "UPDATE ferrobatch_requests SET status = 'batched', chunk = $3,
                     attempt = attempt + 1, runner = NULL
                 WHERE job_id = $1 AND seq = ANY($2)",
                &[&job_id, &seqs, &chunk],
            )
            .await
            .map_err(pg(op))?;
            tx.execute(
                "INSERT INTO ferrobatch_chunks (job_id, chunk, provider, state, owner, requests)
                 VALUES ($1, $2, $3, 'planned', $4, $5)",
                &[
                    &job_id,
                    &chunk,
                    &provider,
                    &runner_id,
                    &(taken.len() as i64),
                ],
            )
            .await
            .map_err(pg(op))?;
            tx.commit().await.map_err(pg(op))?;
            let row = ProviderBatchRow {
                job_id,
                number: chunk,
                provider,
                state: ProviderBatchState::Planned,
                batch_id: None,
                file_id: None,
                remote_status: None,
                requests: taken.len() as u64,
                intent_at: None,
                owner: Some(runner_id),
            };
            Ok(Some((row, taken)))
        })
    }

    fn take_provider_batches(
        &self,
        job_id: String,
        runner_id: String,
    ) -> StoreFuture<'_, Vec<ProviderBatchRow>> {
        Box::pin(async move {
            self.count(
                "taking provider batches",
                "UPDATE ferrobatch_chunks c SET owner = $2, updated_at = now()
                 WHERE c.job_id = $1 AND c.state != 'settled'
                   AND (c.owner IS NULL OR c.owner = $2 OR NOT EXISTS (
                        SELECT 1 FROM ferrobatch_runners w
                        WHERE w.id = c.owner AND GREATEST(w.heartbeat_at, pg_postmaster_start_time()) + w.lease >= now()))",
                &[&job_id, &runner_id],
            )
            .await?;
            self.read_chunks(&job_id, Some(&runner_id)).await
        })
    }

    fn provider_batches(&self, job_id: String) -> StoreFuture<'_, Vec<ProviderBatchRow>> {
        Box::pin(async move { self.read_chunks(&job_id, None).await })
    }

    fn provider_batch_requests(&self, job_id: String, chunk: i64) -> StoreFuture<'_, Vec<Claimed>> {
        Box::pin(async move {
            let rows = self
                .many(
                    "reading a provider batch",
                    "SELECT seq, id, body, attempt FROM ferrobatch_requests
                     WHERE job_id = $1 AND chunk = $2 AND status = 'batched' ORDER BY seq",
                    &[&job_id, &chunk],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Claimed {
                    job_id: job_id.clone(),
                    seq: r.get(0),
                    id: r.get(1),
                    body: r.get(2),
                    attempt: i64::from(r.get::<_, i32>(3)),
                })
                .collect())
        })
    }

    fn update_provider_batch(
        &self,
        job_id: String,
        chunk: i64,
        runner_id: String,
        update: ProviderBatchUpdate,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let n = self
                .count(
                    "updating a provider batch",
                    "UPDATE ferrobatch_chunks SET state = $4, batch_id = COALESCE($5, batch_id),
                         file_id = COALESCE($6, file_id),
                         remote_status = COALESCE($7, remote_status),
                         intent_at = CASE WHEN $4 = 'creating' THEN COALESCE(intent_at, now())
                                          ELSE intent_at END,
                         updated_at = now()
                     WHERE job_id = $1 AND chunk = $2 AND owner = $3 AND state != 'settled'",
                    &[
                        &job_id,
                        &chunk,
                        &runner_id,
                        &update.state.as_str(),
                        &update.batch_id,
                        &update.file_id,
                        &update.remote_status,
                    ],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn settle_provider_batch(
        &self,
        job_id: String,
        chunk: i64,
        runner_id: String,
        settled: Vec<Settled>,
    ) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg(SETTLING))?;
            let mut steps = PgSettle {
                tx: &tx,
                job_id: &job_id,
                chunk,
                runner_id: &runner_id,
            };
            let n = ledger::settle(&mut steps, &settled).await?;
            tx.commit().await.map_err(pg(SETTLING))?;
            Ok(n)
        })
    }

    fn held_by(&self, job_id: String) -> StoreFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let rows = self
                .many(
                    "counting claims",
                    "SELECT runner, count(*) FROM ferrobatch_requests
                     WHERE job_id = $1 AND status = 'running' GROUP BY runner ORDER BY runner",
                    &[&job_id],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
    }
}

const SETTLING: &str = "settling a provider batch";

/// Settling a provider batch in PostgreSQL (inside one transaction).
struct PgSettle<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    job_id: &'a str,
    chunk: i64,
    runner_id: &'a str,
}

impl ledger::SettleSteps for PgSettle<'_> {
    async fn take_batch(&mut self) -> Result<bool, Error> {
        let n = self
            .tx
            .execute(
                "UPDATE ferrobatch_chunks SET state = 'settled', updated_at = now()
                 WHERE job_id = $1 AND chunk = $2 AND owner = $3 AND state != 'settled'",
                &[&self.job_id, &self.chunk, &self.runner_id],
            )
            .await
            .map_err(pg(SETTLING))?;
        Ok(n > 0)
    }

    async fn job_cancelled(&mut self) -> Result<bool, Error> {
        let row = self
            .tx
            .query_one(
                "SELECT status FROM ferrobatch_jobs WHERE id = $1 FOR UPDATE",
                &[&self.job_id],
            )
            .await
            .map_err(pg(SETTLING))?;
        Ok(status_of(&row) == JobStatus::Cancelled)
    }

    async fn record(&mut self, seq: i64, o: &Completion) -> Result<bool, Error> {
        let status = if o.ok { "succeeded" } else { "failed" };
        let fence = self
            .tx
            .prepare_cached(
                "UPDATE ferrobatch_requests SET status = $4, chunk = NULL
                 WHERE job_id = $1 AND seq = $2 AND chunk = $3 AND status = 'batched'
                 RETURNING attempt",
            )
            .await
            .map_err(pg(SETTLING))?;
        let Some(row) = self
            .tx
            .query_opt(&fence, &[&self.job_id, &seq, &self.chunk, &status])
            .await
            .map_err(pg(SETTLING))?
        else {
            return Ok(false);
        };
        let attempt: i32 = row.get(0);
        let insert = self
            .tx
            .prepare_cached(
                "INSERT INTO ferrobatch_results (job_id, seq, attempt, runner, ok, response,
                     error, input_tokens, output_tokens, cost)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .await
            .map_err(pg(SETTLING))?;
        self.tx
            .execute(
                &insert,
                &[
                    &self.job_id,
                    &seq,
                    &attempt,
                    &self.runner_id,
                    &o.ok,
                    &o.response,
                    &o.error,
                    &(o.input_tokens as i64),
                    &(o.output_tokens as i64),
                    &o.cost,
                ],
            )
            .await
            .map_err(pg(SETTLING))?;
        Ok(true)
    }

    async fn hand_back(&mut self, cancelled: bool) -> Result<i64, Error> {
        let n = self
            .tx
            .execute(
                "UPDATE ferrobatch_requests SET status = $3, chunk = NULL
                 WHERE job_id = $1 AND chunk = $2 AND status = 'batched'",
                &[
                    &self.job_id,
                    &self.chunk,
                    &(if cancelled { "cancelled" } else { "pending" }),
                ],
            )
            .await
            .map_err(pg(SETTLING))?;
        Ok(n as i64)
    }

    async fn count(&mut self, t: &Tally, cancelled: i64) -> Result<(), Error> {
        self.tx
            .execute(
                "UPDATE ferrobatch_jobs SET succeeded = succeeded + $2, failed = failed + $3,
                     cancelled = cancelled + $4, input_tokens = input_tokens + $5,
                     output_tokens = output_tokens + $6,
                     cost = CASE WHEN $7::float8 IS NULL THEN cost ELSE COALESCE(cost, 0) + $7 END,
                     updated_at = now()
                 WHERE id = $1",
                &[
                    &self.job_id,
                    &t.succeeded,
                    &t.failed,
                    &cancelled,
                    &t.input_tokens,
                    &t.output_tokens,
                    &t.cost,
                ],
            )
            .await
            .map_err(pg(SETTLING))?;
        Ok(())
    }
}

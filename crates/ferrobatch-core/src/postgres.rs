//! Connecting to PostgreSQL, the one way the project does it for the job store and the result
//! cache: telling a DSN from a file path, hiding its password, and a deadpool pool of
//! tokio-postgres connections (TLS through rustls when the DSN asks for it).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

/// Whether a location names a PostgreSQL database.
pub fn is_postgres(location: &str) -> bool {
    location.starts_with("postgresql://") || location.starts_with("postgres://")
}

/// A DSN with its password replaced, for messages and reprs.
pub fn redact(location: &str) -> String {
    if !is_postgres(location) {
        return location.to_string();
    }
    // scheme://user:password@host/...: hide what sits between the first ':' after the scheme
    // and the '@'.
    let (scheme, rest) = location.split_once("://").unwrap_or(("", location));
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(a) = auth {
        match a.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:***@")),
            None => out.push_str(&format!("{a}@")),
        }
    }
    // A password may also come as a query parameter.
    let host = match host.split_once('?') {
        Some((h, q)) => {
            let params: Vec<String> = q
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{h}?{}", params.join("&"))
        }
        None => host.to_string(),
    };
    out.push_str(&host);
    out
}

fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// A pool of at most `max_size` connections to the database of `dsn`. Nothing connects
/// until the first connection is asked for. The error names the DSN with its password hidden.
pub(crate) fn pool(dsn: &str, max_size: usize) -> Result<Pool, String> {
    let location = redact(dsn);
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e| format!("{location} is not a valid PostgreSQL DSN: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("ferrobatch");
    let manager = Manager::from_config(
        config,
        tls(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| e.to_string())
}

/// A driver error with the server's own message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("/tmp/jobs.db"), "/tmp/jobs.db");
        assert_eq!(
            redact("postgresql://bob:s3cret@db:5432/jobs"),
            "postgresql://bob:***@db:5432/jobs"
        );
        assert_eq!(
            redact("postgresql://bob@db/jobs"),
            "postgresql://bob@db/jobs"
        );
        assert_eq!(
            redact("postgres://db/jobs?user=a&password=s3cret&sslmode=require"),
            "postgres://db/jobs?user=a&password=***&sslmode=require"
        );
    }
}

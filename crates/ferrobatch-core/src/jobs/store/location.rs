//! Where a store is: telling a PostgreSQL DSN from a SQLite path, and hiding a DSN's password.

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

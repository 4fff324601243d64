use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

fn heard() -> (Listener, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    (
        Arc::new(move |m: &str| l.lock().unwrap().push(m.to_string())),
        log,
    )
}

fn cache(
    location: Location,
    ttl: Option<Duration>,
    max: Option<u64>,
) -> (Cache, Arc<Mutex<Vec<String>>>) {
    let (listener, log) = heard();
    let config = CacheConfig {
        location,
        ttl,
        namespace: None,
        max_entries: max,
    };
    (Cache::open(config, listener).unwrap(), log)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_envelope_tells_damage_from_answers() {
    let sealed = encode(b"payload");
    assert_eq!(decode(&sealed), Some(&b"payload"[..]));
    let mut flipped = sealed.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(decode(&flipped), None, "a changed byte");
    assert_eq!(decode(&sealed[..sealed.len() - 1]), None, "cut short");
    assert_eq!(decode(b"FBC"), None);
    let mut other = sealed;
    other[3] = FORMAT_VERSION + 1;
    assert_eq!(decode(&other), None, "another format version");
}

#[test]
fn keys_separate_every_field_and_hold_no_text() {
    let k = embedding_key(
        "",
        "openai",
        "https://api.openai.com/v1",
        "m",
        None,
        "base64",
    );
    assert_ne!(k.key("ab"), k.key("a"));
    let other_model = embedding_key(
        "",
        "openai",
        "https://api.openai.com/v1",
        "m2",
        None,
        "base64",
    );
    assert_ne!(k.key("ab"), other_model.key("ab"));
    let dims = embedding_key(
        "",
        "openai",
        "https://api.openai.com/v1",
        "m",
        Some(8),
        "base64",
    );
    assert_ne!(k.key("ab"), dims.key("ab"));
    let ns = embedding_key(
        "team",
        "openai",
        "https://api.openai.com/v1",
        "m",
        None,
        "base64",
    );
    assert_ne!(k.key("ab"), ns.key("ab"));
    // Fields do not run together: ("a", "bc") and ("ab", "c") differ.
    let a = KeyBuilder::new("x", "").field("a", "bc").key("");
    let b = KeyBuilder::new("x", "").field("ab", "c").key("");
    assert_ne!(a, b);
    assert_eq!(k.key("hello").hex().len(), 64);
}

#[test]
fn credentials_never_reach_a_key() {
    assert_eq!(
        strip_credentials("https://user:secret@host.example/v1/?api-key=s3cret#x"),
        "https://host.example/v1"
    );
    let with = embedding_key("", "openai", "https://u:p@h/v1", "m", None, "f");
    let without = embedding_key("", "openai", "https://h/v1", "m", None, "f");
    assert_eq!(with.key("t"), without.key("t"));
}

#[test]
fn locations_parse_and_never_show_a_password() {
    assert_eq!(Location::parse("memory").unwrap(), Location::Memory);
    assert_eq!(
        Location::parse("sqlite:////tmp/c.db").unwrap(),
        Location::Sqlite("/tmp/c.db".into())
    );
    assert_eq!(
        Location::parse("sqlite:///rel.db").unwrap(),
        Location::Sqlite("rel.db".into())
    );
    assert_eq!(
        Location::parse("cache.db").unwrap(),
        Location::Sqlite("cache.db".into())
    );
    let r = Location::parse("redis://:hunter2@127.0.0.1:6379/0").unwrap();
    assert!(!r.describe().contains("hunter2"));
    for dsn in [
        "postgresql://bob:hunter2@db/c",
        "postgres://bob:hunter2@db/c",
    ] {
        let p = Location::parse(dsn).unwrap();
        assert_eq!(p, Location::Postgres(dsn.into()));
        assert_eq!(p.describe(), dsn.replace("hunter2", "***"));
    }
    let bad = Cache::open(
        CacheConfig {
            location: Location::Postgres("postgresql://bob:hunter2@db:notaport/c".into()),
            ttl: None,
            namespace: None,
            max_entries: None,
        },
        heard().0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("not a valid") && !bad.contains("hunter2"),
        "{bad}"
    );
    let e = Location::parse("ftp://x:hunter2@h/")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown scheme") && !e.contains("hunter2"),
        "{e}"
    );
    assert!(Location::parse(" ").is_err());
}

#[test]
fn memory_is_a_bounded_lru_with_a_ttl() {
    let rt = rt();
    let (c, _) = cache(Location::Memory, None, Some(2));
    let kb = c.keys("t");
    let (a, b, d) = (kb.key("a"), kb.key("b"), kb.key("d"));
    rt.block_on(async {
        c.put_many(vec![(a, b"A".to_vec()), (b, b"B".to_vec())])
            .await;
        assert_eq!(c.get_many(&[a]).await, vec![Some(b"A".to_vec())]); // a is now newest
        c.put_many(vec![(d, b"D".to_vec())]).await; // evicts b, the least recently used
        assert_eq!(
            c.get_many(&[a, b, d]).await,
            vec![Some(b"A".to_vec()), None, Some(b"D".to_vec())]
        );
        assert_eq!(c.entries().await.unwrap(), 2);
    });
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.writes), (3, 1, 3));

    let (c, _) = cache(Location::Memory, Some(Duration::from_millis(50)), None);
    let k = c.keys("t").key("x");
    rt.block_on(async {
        c.put_many(vec![(k, b"X".to_vec())]).await;
        assert!(c.get_many(&[k]).await[0].is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(c.get_many(&[k]).await[0].is_none(), "expired");
    });
}

#[test]
fn sqlite_keeps_entries_across_opens_and_namespaces_apart() {
    let rt = rt();
    let dir = std::env::temp_dir().join(format!("fb-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.db").to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&path);
    let (c, _) = cache(Location::Sqlite(path.clone()), None, None);
    let k = c.keys("t").key("x");
    rt.block_on(c.put_many(vec![(k, b"X".to_vec())]));
    drop(c);
    let (again, _) = cache(Location::Sqlite(path.clone()), None, None);
    assert_eq!(rt.block_on(again.get_many(&[k])), vec![Some(b"X".to_vec())]);
    let (listener, _) = heard();
    let other = Cache::open(
        CacheConfig {
            location: Location::Sqlite(path.clone()),
            ttl: None,
            namespace: Some("other".into()),
            max_entries: None,
        },
        listener,
    )
    .unwrap();
    assert_eq!(rt.block_on(other.get_many(&[k])), vec![None]);
    assert_eq!(rt.block_on(again.clear()).unwrap(), 1);
    assert_eq!(rt.block_on(again.get_many(&[k])), vec![None]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sqlite_bounds_entries_and_expires_them() {
    let rt = rt();
    let dir = std::env::temp_dir().join(format!("fb-cache-b-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.db").to_string_lossy().into_owned();
    let (c, _) = cache(Location::Sqlite(path.clone()), None, Some(3));
    let kb = c.keys("t");
    rt.block_on(async {
        for i in 0..5 {
            c.put_many(vec![(kb.key(&i.to_string()), vec![i as u8])])
                .await;
        }
        assert_eq!(c.entries().await.unwrap(), 3);
        let got = c.get_many(&[kb.key("0"), kb.key("4")]).await;
        assert_eq!(got, vec![None, Some(vec![4])], "the oldest went first");
    });
    let (t, _) = cache(
        Location::Sqlite(dir.join("t.db").to_string_lossy().into_owned()),
        Some(Duration::from_millis(50)),
        None,
    );
    let k = t.keys("t").key("x");
    rt.block_on(async {
        t.put_many(vec![(k, b"X".to_vec())]).await;
        assert!(t.get_many(&[k]).await[0].is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(t.get_many(&[k]).await[0].is_none());
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_entry_is_a_miss_and_one_warning() {
    let rt = rt();
    let dir = std::env::temp_dir().join(format!("fb-cache-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.db").to_string_lossy().into_owned();
    let (c, log) = cache(Location::Sqlite(path.clone()), None, None);
    let kb = c.keys("t");
    let (a, b) = (kb.key("a"), kb.key("b"));
    rt.block_on(c.put_many(vec![(a, b"A".to_vec()), (b, b"B".to_vec())]));
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute(
        "UPDATE ferrobatch_cache SET value = substr(value, 1, 5)",
        [],
    )
    .unwrap();
    assert_eq!(rt.block_on(c.get_many(&[a, b])), vec![None, None]);
    let s = c.stats();
    assert_eq!((s.corrupt, s.misses, s.hits), (2, 2, 0));
    assert_eq!(log.lock().unwrap().len(), 1, "{:?}", log.lock().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_store_is_a_miss_and_one_warning_per_outage() {
    let rt = rt();
    // A port nothing listens on: connections are refused at once.
    let (c, log) = cache(Location::Redis("redis://127.0.0.1:9/0".into()), None, None);
    let k = c.keys("t").key("x");
    rt.block_on(async {
        assert_eq!(c.get_many(&[k]).await, vec![None]);
        c.put_many(vec![(k, b"X".to_vec())]).await;
        assert_eq!(c.get_many(&[k]).await, vec![None]);
    });
    let s = c.stats();
    assert_eq!((s.errors, s.misses, s.writes), (3, 2, 0));
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains("127.0.0.1:9"));
}

//! Where a store lives ([`Location`]: a local directory, `s3://bucket/prefix`,
//! `memory://name`) and, with feature `object-store`, the object storage behind the last
//! two: [`Remote`], a blocking face over the `object_store` crate with the conditional
//! writes the shared catalogue commits with (`ledger`), and [`RemoteObjects`], the
//! content-addressed objects as a [`crate::store::Backend`].
//!
//! Every call runs on a small runtime of this module's own and the caller waits on a
//! channel, so it works the same from plain threads, rayon workers and the server's
//! blocking pool (never `block_on` inside another runtime).

use std::path::PathBuf;

use crate::Error;

/// Where a store's truth lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The embedded store: objects and the sled catalogue under one directory.
    Local(PathBuf),
    /// An S3-compatible bucket; objects and the catalogue's commit log under `prefix`.
    S3 { bucket: String, prefix: String },
    /// A process-wide in-memory bucket by name (tests, benches).
    Memory { name: String },
}

impl Location {
    /// Parses `--store`: `s3://bucket[/prefix]`, `memory://name`, `file:///dir` or a path.
    pub fn parse(s: &str) -> Result<Location, Error> {
        let bad = |why: &str| Error::Invalid(format!("--store {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty()
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                return Err(bad(
                    "expected s3://BUCKET[/PREFIX] with a bucket of lowercase letters, digits, '-' and '.'",
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..")
                || prefix.contains("//")
                || prefix.chars().any(|c| c.is_control())
            {
                return Err(bad("the prefix must be plain path segments"));
            }
            return Ok(Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        if let Some(name) = s.strip_prefix("memory://") {
            return Ok(Location::Memory { name: name.into() });
        }
        if let Some(p) = s.strip_prefix("file://") {
            if p.is_empty() {
                return Err(bad("expected file:///absolute/dir"));
            }
            return Ok(Location::Local(PathBuf::from(p)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(bad(&format!(
                "unknown scheme {scheme:?}: use a directory, s3://bucket/prefix or memory://name"
            )));
        }
        if s.is_empty() {
            return Err(bad("empty"));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    /// True for a bucket (S3 or memory) rather than the embedded store.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Location::Local(_))
    }

    /// The canonical URL (the key of the local cache directory).
    pub fn url(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Location::Memory { name } => format!("memory://{name}"),
        }
    }
}

/// What a conditional write did (on a bucket or in a local directory's log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    /// Written; the new object's ETag when the store gave one.
    Written(Option<String>),
    /// A create found an object already there.
    Exists,
    /// A replace found another version than the ETag it was given.
    Changed,
}

/// An object's bytes and its ETag (when the store gave one).
pub type Tagged = (Vec<u8>, Option<String>);

/// 128 random bits as hex: write ids of commits, probe keys, store ids.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    hex::encode(b)
}

#[cfg(feature = "object-store")]
pub use remote::*;

#[cfg(feature = "object-store")]
mod remote {
    use std::collections::HashMap;
    use std::future::Future;
    use std::io;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::SystemTime;

    use futures_util::StreamExt;
    use object_store::path::Path as OsPath;
    use object_store::{ObjectStore as _, ObjectStoreExt as _};

    use super::{random_id, Location, Put, Tagged};
    use crate::Error;

    /// Size and last-modified time of an object.
    #[derive(Clone, Copy, Debug)]
    pub struct Meta {
        pub size: u64,
        pub modified: SystemTime,
    }

    /// How to reach an S3-compatible server.
    #[derive(Clone, Debug, Default)]
    pub struct S3Config {
        /// `None`: AWS itself.
        pub endpoint: Option<String>,
        pub access_key_id: Option<String>,
        pub secret_access_key: Option<String>,
        pub session_token: Option<String>,
        /// `None`: us-east-1.
        pub region: Option<String>,
        /// Plain HTTP to a server that is not on this machine.
        pub allow_http: bool,
    }

    impl S3Config {
        /// From the usual variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
        /// `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
        /// `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), `AWS_ALLOW_HTTP=true`.
        pub fn from_env() -> S3Config {
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            S3Config {
                endpoint: var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT")),
                access_key_id: var("AWS_ACCESS_KEY_ID"),
                secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
                session_token: var("AWS_SESSION_TOKEN"),
                region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
                allow_http: var("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1"),
            }
        }
    }

    /// A bucket (S3-compatible or in memory) under a key prefix, with blocking calls.
    pub struct Remote {
        store: Arc<dyn object_store::ObjectStore>,
        prefix: String,
        url: String,
        rt: Arc<tokio::runtime::Runtime>,
        fetched: Arc<std::sync::atomic::AtomicU64>,
    }

    impl std::fmt::Debug for Remote {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Remote").field("url", &self.url).finish()
        }
    }

    fn memory_buckets() -> &'static Mutex<HashMap<String, Arc<object_store::memory::InMemory>>> {
        static M: OnceLock<Mutex<HashMap<String, Arc<object_store::memory::InMemory>>>> =
            OnceLock::new();
        M.get_or_init(Default::default)
    }

    fn runtime() -> io::Result<Arc<tokio::runtime::Runtime>> {
        static RT: OnceLock<Arc<tokio::runtime::Runtime>> = OnceLock::new();
        if let Some(rt) = RT.get() {
            return Ok(rt.clone());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vdna-db-objstore")
            .enable_all()
            .build()?;
        Ok(RT.get_or_init(|| Arc::new(rt)).clone())
    }

    /// True for an endpoint on this machine, where plain HTTP is allowed without asking.
    fn is_loopback(endpoint: &str) -> bool {
        let host = endpoint
            .split("://")
            .nth(1)
            .unwrap_or(endpoint)
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        matches!(host, "localhost" | "[::1]") || host.starts_with("127.")
    }

    impl Remote {
        /// Connects to a bucket. S3 takes its credentials, region and endpoint from the
        /// usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
        /// `AWS_REGION`, `AWS_ENDPOINT_URL`); plain HTTP is allowed for a loopback
        /// endpoint, elsewhere only with `AWS_ALLOW_HTTP=true`.
        pub fn open(loc: &Location) -> Result<Remote, Error> {
            let rt = runtime().map_err(|e| Error::io("object store runtime", e))?;
            let (store, prefix): (Arc<dyn object_store::ObjectStore>, String) = match loc {
                Location::Memory { name } => {
                    let mut m = memory_buckets().lock().unwrap_or_else(|p| p.into_inner());
                    (m.entry(name.clone()).or_default().clone(), String::new())
                }
                Location::S3 { bucket, prefix } => {
                    return Remote::open_s3(bucket, prefix, &S3Config::from_env())
                }
                Location::Local(p) => {
                    return Err(Error::Invalid(format!(
                        "{} is a local directory, not a bucket",
                        p.display()
                    )))
                }
            };
            Ok(Remote {
                store,
                prefix,
                url: loc.url(),
                rt,
                fetched: Default::default(),
            })
        }

        /// Connects to an S3 bucket with explicit settings.
        pub fn open_s3(bucket: &str, prefix: &str, cfg: &S3Config) -> Result<Remote, Error> {
            let url = Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            }
            .url();
            // reqwest's TLS is built without a bundled provider: ring, already built for
            // the HTTP client, is installed once (an error means one already is).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(cfg.region.as_deref().unwrap_or("us-east-1"))
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
            if let Some(k) = &cfg.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &cfg.secret_access_key {
                b = b.with_secret_access_key(k);
            }
            if let Some(t) = &cfg.session_token {
                b = b.with_token(t);
            }
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e);
            }
            if cfg.allow_http || cfg.endpoint.as_deref().is_some_and(is_loopback) {
                b = b.with_allow_http(true);
            }
            let s = b.build().map_err(|e| {
                Error::Invalid(format!(
                    "{url}: {e} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for a server other than AWS, AWS_ENDPOINT_URL)"
                ))
            })?;
            Ok(Remote {
                store: Arc::new(s),
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
                url,
                rt: runtime().map_err(|e| Error::io("object store runtime", e))?,
                fetched: Default::default(),
            })
        }

        /// A read-only view of a plain HTTP(S) server at `base` (`scheme://host[:port]`),
        /// whose keys are URL paths: image sources read archives, lists and images from it
        /// with GET (range GETs for Parquet). Plain HTTP is allowed: the URL says which.
        pub fn open_http(base: &str) -> Result<Remote, Error> {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let s = object_store::http::HttpBuilder::new()
                .with_url(base)
                .with_client_options(
                    object_store::ClientOptions::new().with_allow_http(base.starts_with("http:")),
                )
                .build()
                .map_err(|e| Error::Invalid(format!("{base}: {e}")))?;
            Ok(Remote {
                store: Arc::new(s),
                prefix: String::new(),
                url: base.trim_end_matches('/').to_string(),
                rt: runtime().map_err(|e| Error::io("object store runtime", e))?,
                fetched: Default::default(),
            })
        }

        /// An object's body as a stream read front to back: chunks arrive as they come
        /// off the network, at most a few in memory at once (the reader's pace holds the
        /// request back), so a multi-gigabyte archive is read in bounded memory.
        pub fn reader(&self, key: &str) -> ObjectReader {
            let (s, p) = (self.store.clone(), self.path(key));
            let what = format!("{}/{key}", self.url);
            let fetched = self.fetched.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
            self.rt.spawn(async move {
                let fail = |e: object_store::Error| match e {
                    object_store::Error::NotFound { .. } => {
                        io::Error::new(io::ErrorKind::NotFound, format!("{what}: not found"))
                    }
                    e => io::Error::other(format!("{what}: {e}")),
                };
                let mut body = match s.get(&p).await {
                    Ok(g) => g.into_stream(),
                    Err(e) => {
                        let _ = tx.send(Err(fail(e))).await;
                        return;
                    }
                };
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map(|b| b.to_vec()).map_err(fail);
                    if let Ok(c) = &chunk {
                        fetched.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    let stop = chunk.is_err();
                    // A closed channel: the reader was dropped, so the body is not wanted.
                    if tx.send(chunk).await.is_err() || stop {
                        return;
                    }
                }
            });
            ObjectReader {
                rx,
                chunk: Vec::new(),
                at: 0,
            }
        }

        /// Bytes `start .. start + len` of an object (a range GET).
        pub fn get_range(&self, key: &str, start: u64, len: u64) -> io::Result<Vec<u8>> {
            let (s, p) = (self.store.clone(), self.path(key));
            match self.run(async move { s.get_range(&p, start..start + len).await }) {
                Ok(b) => {
                    self.count(b.len());
                    Ok(b.to_vec())
                }
                Err(e) => Err(self.err(key, e)),
            }
        }

        /// Bytes of object bodies fetched from the bucket since it was opened.
        pub fn bytes_fetched(&self) -> u64 {
            self.fetched.load(std::sync::atomic::Ordering::Relaxed)
        }

        fn count(&self, n: usize) {
            self.fetched
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }

        /// Creates every object that is absent, all requests in flight together; an
        /// object present but older than `renew_after` is rewritten (same bytes) to renew
        /// its date. Returns how many were created.
        pub fn put_many_absent(
            &self,
            keys: &[String],
            bytes: &[&[u8]],
            renew_after: std::time::Duration,
        ) -> io::Result<usize> {
            let s = self.store.clone();
            let jobs: Vec<(OsPath, object_store::PutPayload)> = keys
                .iter()
                .zip(bytes)
                .map(|(k, b)| (self.path(k), object_store::PutPayload::from(b.to_vec())))
                .collect();
            let r = self.run(async move {
                let puts = jobs.into_iter().map(|(p, payload)| {
                    let s = s.clone();
                    async move {
                        let mode = match s.head(&p).await {
                            Ok(m) => {
                                let age = SystemTime::now()
                                    .duration_since(m.last_modified.into())
                                    .unwrap_or_default();
                                if age <= renew_after {
                                    return Ok(false);
                                }
                                object_store::PutMode::Overwrite
                            }
                            Err(object_store::Error::NotFound { .. }) => {
                                object_store::PutMode::Create
                            }
                            Err(e) => return Err(e),
                        };
                        let created = mode == object_store::PutMode::Create;
                        let opts = object_store::PutOptions {
                            mode,
                            ..Default::default()
                        };
                        match s.put_opts(&p, payload, opts).await {
                            Ok(_) => Ok(created),
                            // Another writer's identical bytes landed first.
                            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                });
                futures_util::future::join_all(puts).await
            });
            let mut created = 0;
            for (res, key) in r.into_iter().zip(keys) {
                created += usize::from(res.map_err(|e| self.err(key, e))?);
            }
            Ok(created)
        }

        /// The bucket's URL, for messages.
        pub fn url(&self) -> &str {
            &self.url
        }

        fn path(&self, key: &str) -> OsPath {
            OsPath::from(format!("{}{key}", self.prefix))
        }

        fn err(&self, key: &str, e: object_store::Error) -> io::Error {
            match e {
                object_store::Error::NotFound { .. } => io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}/{key}: not found", self.url),
                ),
                e @ object_store::Error::NotSupported { .. } => io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{}/{key}: {e}", self.url),
                ),
                e => io::Error::other(format!("{}/{key}: {e}", self.url)),
            }
        }

        /// Runs a request on the module's runtime and waits for it.
        fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.rt.spawn(async move {
                let _ = tx.send(fut.await);
            });
            rx.recv()
                .expect("the object store's runtime dropped a request")
        }

        /// An object's bytes and ETag, `None` when absent.
        pub fn get(&self, key: &str) -> io::Result<Option<Tagged>> {
            let (s, p) = (self.store.clone(), self.path(key));
            let r = self.run(async move {
                let g = s.get(&p).await?;
                let etag = g.meta.e_tag.clone();
                let bytes = g.bytes().await?;
                Ok::<_, object_store::Error>((bytes.to_vec(), etag))
            });
            match r {
                Ok(v) => {
                    self.count(v.0.len());
                    Ok(Some(v))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(key, e)),
            }
        }

        /// Several objects at once (requests in flight together), in order.
        pub fn get_many(&self, keys: &[String]) -> io::Result<Vec<Option<Tagged>>> {
            let s = self.store.clone();
            let paths: Vec<OsPath> = keys.iter().map(|k| self.path(k)).collect();
            let r = self.run(async move {
                let gets = paths.iter().map(|p| {
                    let s = s.clone();
                    async move {
                        match s.get(p).await {
                            Ok(g) => {
                                let etag = g.meta.e_tag.clone();
                                Ok(Some((g.bytes().await?.to_vec(), etag)))
                            }
                            Err(object_store::Error::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                });
                futures_util::future::join_all(gets).await
            });
            r.into_iter()
                .zip(keys)
                .map(|(g, k)| {
                    let g = g.map_err(|e| self.err(k, e))?;
                    if let Some((b, _)) = &g {
                        self.count(b.len());
                    }
                    Ok(g)
                })
                .collect()
        }

        /// Size and modification time, `None` when absent.
        pub fn head(&self, key: &str) -> io::Result<Option<Meta>> {
            let (s, p) = (self.store.clone(), self.path(key));
            match self.run(async move { s.head(&p).await }) {
                Ok(m) => Ok(Some(Meta {
                    size: m.size,
                    modified: m.last_modified.into(),
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(key, e)),
            }
        }

        fn put_mode(
            &self,
            key: &str,
            bytes: &[u8],
            mode: object_store::PutMode,
        ) -> io::Result<Put> {
            let (s, p) = (self.store.clone(), self.path(key));
            let payload = object_store::PutPayload::from(bytes.to_vec());
            let opts = object_store::PutOptions {
                mode,
                ..Default::default()
            };
            match self.run(async move { s.put_opts(&p, payload, opts).await }) {
                Ok(r) => Ok(Put::Written(r.e_tag)),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Exists),
                Err(object_store::Error::Precondition { .. }) => Ok(Put::Changed),
                Err(e) => Err(self.err(key, e)),
            }
        }

        /// Writes an object, replacing any (only for content-addressed bytes).
        pub fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
            self.put_mode(key, bytes, object_store::PutMode::Overwrite)
                .map(|_| ())
        }

        /// Creates an object only if none is at `key` (`If-None-Match: *`).
        pub fn put_if_absent(&self, key: &str, bytes: &[u8]) -> io::Result<Put> {
            self.put_mode(key, bytes, object_store::PutMode::Create)
        }

        /// Replaces an object only if its ETag is still `etag` (`If-Match`).
        pub fn put_if_match(&self, key: &str, bytes: &[u8], etag: &str) -> io::Result<Put> {
            self.put_mode(
                key,
                bytes,
                object_store::PutMode::Update(object_store::UpdateVersion {
                    e_tag: Some(etag.to_string()),
                    version: None,
                }),
            )
        }

        /// Removes an object (absent is fine).
        pub fn delete(&self, key: &str) -> io::Result<()> {
            let (s, p) = (self.store.clone(), self.path(key));
            match self.run(async move { s.delete(&p).await }) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err(key, e)),
            }
        }

        /// Every key under `under` (relative to the store's prefix), with its metadata.
        pub fn list(&self, under: &str) -> io::Result<Vec<(String, Meta)>> {
            let s = self.store.clone();
            let p = self.path(under.trim_end_matches('/'));
            let strip = self.prefix.clone();
            let r = self.run(async move {
                let mut out = Vec::new();
                let mut st = s.list(Some(&p));
                while let Some(m) = st.next().await {
                    let m = m?;
                    let key = m.location.to_string();
                    let key = key.strip_prefix(&strip).unwrap_or(&key).to_string();
                    out.push((
                        key,
                        Meta {
                            size: m.size,
                            modified: m.last_modified.into(),
                        },
                    ));
                }
                Ok::<_, object_store::Error>(out)
            });
            r.map_err(|e| self.err(under, e))
        }

        /// Checks that the server honours conditional writes: a second create of one key
        /// must fail, and so must a replace with a stale ETag. A server that ignores them
        /// would turn every commit into last-writer-wins, so the store is refused.
        pub fn check_conditional_writes(&self) -> Result<(), Error> {
            let id = random_id();
            let key = format!("catalogue/probe/{id}");
            let io = |e: io::Error| Error::io(format!("{}/{key}", self.url), e);
            let refuse = |what: &str| {
                Error::Invalid(format!(
                    "{}: the object store ignores conditional writes ({what}); vdna-db commits its catalogue with If-None-Match / If-Match and will not fall back to last-writer-wins: use a server that supports them (AWS S3, MinIO, SeaweedFS, Ceph RGW, R2)",
                    self.url
                ))
            };
            let first = self.put_if_absent(&key, b"probe 1").map_err(io)?;
            let etag = match first {
                Put::Written(e) => e,
                _ => return Err(refuse("a create of a fresh key did not write")),
            };
            let second = self.put_if_absent(&key, b"probe 2").map_err(io);
            let stale = self
                .put_if_match(&key, b"probe 3", "\"0000000000000000\"")
                .map_err(io);
            let after = self.get(&key).map_err(io);
            let _ = self.delete(&key);
            if second? != Put::Exists {
                return Err(refuse("If-None-Match: * overwrote an existing object"));
            }
            if stale? != Put::Changed {
                return Err(refuse("If-Match with a stale ETag replaced the object"));
            }
            match after? {
                Some((b, _)) if b == b"probe 1" => {}
                _ => return Err(refuse("a refused conditional write changed the object")),
            }
            if etag.is_none() {
                return Err(refuse("no ETag came back from a write"));
            }
            Ok(())
        }
    }

    /// The content-addressed objects of a bucket, under `objects/`, with a bounded
    /// in-memory cache of what was read: an address names one content forever, so a
    /// cached object is never stale (reads still check the digest above this layer).
    pub struct RemoteObjects {
        remote: Arc<Remote>,
        cache: Mutex<Cache>,
    }

    /// Objects by key, evicted oldest first past a byte budget.
    struct Cache {
        map: HashMap<String, Arc<Vec<u8>>>,
        order: std::collections::VecDeque<String>,
        bytes: usize,
        budget: usize,
    }

    impl Cache {
        fn get(&self, key: &str) -> Option<Arc<Vec<u8>>> {
            self.map.get(key).cloned()
        }

        fn insert(&mut self, key: &str, bytes: Arc<Vec<u8>>) {
            if bytes.len() > self.budget / 4 || self.map.contains_key(key) {
                return;
            }
            self.bytes += bytes.len();
            self.map.insert(key.to_string(), bytes);
            self.order.push_back(key.to_string());
            while self.bytes > self.budget {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if let Some(b) = self.map.remove(&old) {
                    self.bytes -= b.len();
                }
            }
        }

        fn remove(&mut self, key: &str) {
            if let Some(b) = self.map.remove(key) {
                self.bytes -= b.len();
                self.order.retain(|k| k != key);
            }
        }
    }

    /// A blocking [`io::Read`] over an object's body ([`Remote::reader`]).
    pub struct ObjectReader {
        rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
        chunk: Vec<u8>,
        at: usize,
    }

    impl io::Read for ObjectReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            while self.at == self.chunk.len() {
                match self.rx.blocking_recv() {
                    None => return Ok(0),
                    Some(Ok(c)) => {
                        self.chunk = c;
                        self.at = 0;
                    }
                    Some(Err(e)) => return Err(e),
                }
            }
            let n = buf.len().min(self.chunk.len() - self.at);
            buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// The object cache's budget: `VDNA_DB_OBJECT_CACHE_MB`, else 256 MiB.
    fn cache_budget() -> usize {
        std::env::var("VDNA_DB_OBJECT_CACHE_MB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(256)
            << 20
    }

    impl RemoteObjects {
        pub fn new(remote: Arc<Remote>) -> RemoteObjects {
            RemoteObjects {
                remote,
                cache: Mutex::new(Cache {
                    map: HashMap::new(),
                    order: Default::default(),
                    bytes: 0,
                    budget: cache_budget(),
                }),
            }
        }

        fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
            self.cache.lock().unwrap_or_else(|p| p.into_inner())
        }

        fn key(k: &str) -> String {
            format!("objects/{k}")
        }
    }

    impl crate::store::Backend for RemoteObjects {
        fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
            if let Some(b) = self.cache().get(key) {
                return Ok(Some(b.as_ref().clone()));
            }
            let got = self.remote.get(&Self::key(key))?.map(|(b, _)| b);
            if let Some(b) = &got {
                self.cache().insert(key, Arc::new(b.clone()));
            }
            Ok(got)
        }
        fn put_many(&self, items: &[(String, &[u8])]) -> io::Result<usize> {
            let keys: Vec<String> = items.iter().map(|(k, _)| Self::key(k)).collect();
            let bytes: Vec<&[u8]> = items.iter().map(|(_, b)| *b).collect();
            self.remote.put_many_absent(&keys, &bytes, KEEP_ALIVE_AFTER)
        }
        fn write_durable(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
            // A PUT is durable when it returns. Objects are content-addressed, so one
            // already there (another replica's upload of the same bytes) is this one.
            self.remote
                .put_if_absent(&Self::key(key), bytes)
                .map(|_| ())
        }
        fn size(&self, key: &str) -> io::Result<Option<u64>> {
            Ok(self.remote.head(&Self::key(key))?.map(|m| m.size))
        }
        fn delete(&self, key: &str) -> io::Result<()> {
            self.cache().remove(key);
            self.remote.delete(&Self::key(key))
        }
        fn list(&self) -> io::Result<Vec<String>> {
            let mut keys: Vec<String> = self
                .remote
                .list("objects")?
                .into_iter()
                .filter_map(|(k, _)| k.strip_prefix("objects/").map(str::to_string))
                .collect();
            keys.sort();
            Ok(keys)
        }
        fn modified(&self, key: &str) -> io::Result<Option<SystemTime>> {
            Ok(self.remote.head(&Self::key(key))?.map(|m| m.modified))
        }
        fn keep_alive(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
            let key = Self::key(key);
            let old = self.remote.head(&key)?.is_none_or(|m| {
                SystemTime::now()
                    .duration_since(m.modified)
                    .is_ok_and(|age| age > KEEP_ALIVE_AFTER)
            });
            if old {
                // Same bytes under the same address: rewriting them only renews the date.
                self.remote.put(&key, bytes)?;
            }
            Ok(())
        }
    }

    /// An object this old that a push needs again is rewritten (see `Backend::keep_alive`);
    /// well under the gc grace period (`db::DEFAULT_GC_GRACE`, 15 minutes).
    pub const KEEP_ALIVE_AFTER: std::time::Duration = std::time::Duration::from_secs(5 * 60);

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn loopback_endpoints_are_recognised() {
            for e in [
                "http://127.0.0.1:9000",
                "http://localhost:8333/",
                "http://[::1]:80",
            ] {
                assert!(is_loopback(e), "{e}");
            }
            for e in [
                "http://s3.example.org",
                "http://127example.org",
                "https://10.0.0.1:9000",
            ] {
                assert!(!is_loopback(e), "{e}");
            }
        }

        #[test]
        fn memory_buckets_honour_conditional_writes() {
            let r = Remote::open(&Location::Memory {
                name: "objstore-unit".into(),
            })
            .unwrap();
            r.check_conditional_writes().unwrap();
            let Put::Written(Some(etag)) = r.put_if_absent("k", b"1").unwrap() else {
                panic!("create")
            };
            assert_eq!(r.put_if_absent("k", b"2").unwrap(), Put::Exists);
            assert_eq!(r.put_if_match("k", b"3", "\"nope\"").unwrap(), Put::Changed);
            assert!(matches!(
                r.put_if_match("k", b"4", &etag).unwrap(),
                Put::Written(_)
            ));
            assert_eq!(r.get("k").unwrap().unwrap().0, b"4");
            assert_eq!(r.list("").unwrap().len(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse_or_say_what_is_expected() {
        assert_eq!(
            Location::parse("s3://dnas/team/a").unwrap(),
            Location::S3 {
                bucket: "dnas".into(),
                prefix: "team/a".into()
            }
        );
        assert_eq!(Location::parse("s3://dnas").unwrap().url(), "s3://dnas");
        assert_eq!(
            Location::parse("memory://t").unwrap(),
            Location::Memory { name: "t".into() }
        );
        assert_eq!(
            Location::parse("/tmp/x").unwrap(),
            Location::Local("/tmp/x".into())
        );
        for bad in ["s3://", "s3://Bad_Bucket/x", "s3://b/../x", "gs://b", ""] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--store"), "{bad}: {e}");
        }
    }
}

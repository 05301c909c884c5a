//! The PostgreSQL backend, for organizations that run several stateless
//! `ward serve` replicas on one database.
//!
//! The [`Store`] trait is synchronous, so the store owns a small tokio
//! runtime that drives its connections. Every call blocks the calling thread
//! until that runtime has the reply. Callers must therefore not call the store from an async
//! task (the server runs store calls on blocking threads, as for SQLite).
//!
//! Replicas stay consistent because every shared state lives in the
//! database: row and advisory locks serialize conflicting writes (see the
//! `write` module), paging result sets live in `search_snapshots`, and the
//! first replica to start creates the data key that the others then read.

mod audit;
mod conn;
mod kv;
pub(crate) mod raw;
mod read;
mod schema;
mod snapshots;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use ward_crypto::{DataKey, IndexKey, MasterKey, WrappedKey};
use ward_fhir::search::SearchQuery;

use crate::codec::ResourceCodec;
use crate::postgres::conn::{Conn, db_error};
use crate::postgres::read::{Reader, column};
use crate::sqlite::now_micros;
use crate::types::{
    HistoryPage, HistoryRequest, PageRequest, ResourceVersion, SearchPage, Store, Visibility,
    WriteTx,
};
use crate::{Result, StoreError};

/// The PostgreSQL schema version this build creates and expects.
pub const POSTGRES_SCHEMA_VERSION: i64 = schema::SCHEMA_VERSION;

/// The id of the data key that the first replica creates.
const FIRST_DATA_KEY: i64 = 1;

/// Options for opening a PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The maximum number of pooled connections of this process.
    pub pool_size: usize,
    /// How long a call waits for a free connection or a new one.
    pub connect_timeout: Duration,
    /// The maximum number of candidates a search may decrypt to check
    /// criteria that the indexes cannot evaluate.
    pub max_scan: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            max_scan: 50_000,
        }
    }
}

/// The schema versions before and after [`PostgresStore::migrate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version before.
    pub from: i64,
    /// The schema version after.
    pub to: i64,
}

/// Owns the store's runtime and shuts it down without blocking, so the
/// store may be dropped anywhere, async tasks included.
struct OwnedRuntime(Option<Runtime>);

impl OwnedRuntime {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ward-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("starting the PostgreSQL runtime: {e}")))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> Result<&Handle> {
        self.0
            .as_ref()
            .map(Runtime::handle)
            .ok_or_else(|| StoreError::Database("the PostgreSQL runtime is stopped".into()))
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    // Field order matters: the pool closes its connections before the
    // runtime that drives them stops.
    pool: Pool,
    codec: Arc<ResourceCodec>,
    max_scan: usize,
    runtime: OwnedRuntime,
}

/// Parses a connection URL such as
/// `postgres://127.0.0.1:5432/ward?user=ward&sslmode=disable`.
fn parse_config(url: &str) -> Result<tokio_postgres::Config> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Database(format!("invalid PostgreSQL connection URL: {e}")))?;
    // NOTE: this build has no TLS client for PostgreSQL, so connections are
    // plain TCP and `sslmode=require` is rejected. Use it on loopback or a
    // private network only.
    if config.get_ssl_mode() == SslMode::Require {
        return Err(StoreError::Database(
            "sslmode=require is not supported: this build connects to PostgreSQL without TLS; use sslmode=disable on a trusted network".into(),
        ));
    }
    Ok(config)
}

fn build_pool(config: tokio_postgres::Config, options: &PostgresOptions) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(options.connect_timeout))
        .create_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| StoreError::Database(format!("creating the PostgreSQL pool: {e}")))
}

fn get_client(pool: &Pool, runtime: &Handle) -> Result<Object> {
    runtime.block_on(pool.get()).map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(err) => db_error(err),
        other => StoreError::Database(format!("connecting to PostgreSQL: {other}")),
    })
}

impl PostgresStore {
    /// Connects to the database at `url`, unwrapping its data keys with
    /// `master` (and creating the first one on a new database).
    ///
    /// An empty database is migrated to the current schema. A database with
    /// an older schema fails with a message that names `ward migrate`, and
    /// one with a newer schema fails too.
    pub fn open(url: &str, master: &MasterKey, options: &PostgresOptions) -> Result<Self> {
        let runtime = OwnedRuntime::new()?;
        let pool = build_pool(parse_config(url)?, options)?;
        let handle = runtime.handle()?;
        let client = get_client(&pool, handle)?;
        let conn = Conn {
            client: &client,
            runtime: handle,
        };
        let current = schema::version(&conn)?;
        if current == 0 {
            let applied = schema::migrate(&conn)?;
            tracing::info!(applied, "created the PostgreSQL schema");
        } else {
            schema::check(current)?;
        }
        let codec = load_codec(&conn, master)?;
        drop(client);
        Ok(Self {
            pool,
            codec: Arc::new(codec),
            max_scan: options.max_scan,
            runtime,
        })
    }

    /// Applies every migration the database at `url` lacks. Safe to run while
    /// other processes migrate the same database: they take turns.
    pub fn migrate(url: &str) -> Result<MigrationReport> {
        let runtime = OwnedRuntime::new()?;
        let pool = build_pool(parse_config(url)?, &PostgresOptions::default())?;
        let handle = runtime.handle()?;
        let client = get_client(&pool, handle)?;
        let conn = Conn {
            client: &client,
            runtime: handle,
        };
        let from = schema::version(&conn)?;
        schema::migrate(&conn)?;
        let to = schema::version(&conn)?;
        Ok(MigrationReport { from, to })
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        self.with_conn(schema::version)
    }

    fn with_conn<T>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T>) -> Result<T> {
        let handle = self.runtime.handle()?;
        let client = get_client(&self.pool, handle)?;
        f(&Conn {
            client: &client,
            runtime: handle,
        })
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            codec: &self.codec,
            max_scan: self.max_scan,
        }
    }
}

/// Loads and unwraps every data key. On a new database, the first replica
/// to get here inserts the first key and the others' inserts do nothing.
/// Every replica then reads back the key that was stored.
fn load_codec(conn: &Conn<'_>, master: &MasterKey) -> Result<ResourceCodec> {
    let index = load_index_key(conn, master)?;
    let mut rows = conn.query("SELECT id, wrapped FROM data_keys ORDER BY id", &[])?;
    if rows.is_empty() {
        let key = DataKey::generate()?;
        let wrapped = master.wrap_data_key(&key)?;
        conn.execute(
            "INSERT INTO data_keys (id, wrapped, created) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
            &[&FIRST_DATA_KEY, &wrapped.as_bytes(), &now_micros()],
        )?;
        rows = conn.query("SELECT id, wrapped FROM data_keys ORDER BY id", &[])?;
    }
    let mut keys = HashMap::new();
    let mut active = None;
    for row in &rows {
        let id: i64 = column(row, 0)?;
        let wrapped: Vec<u8> = column(row, 1)?;
        let wrapped = WrappedKey::from_bytes(&wrapped)?;
        keys.insert(id, Arc::new(master.unwrap_data_key(&wrapped)?));
        active = Some(id);
    }
    let active =
        active.ok_or_else(|| StoreError::Database("the data_keys table is empty".into()))?;
    Ok(ResourceCodec::new(keys, active, index))
}

/// Loads the wrapped blind-index key, storing one on first use: a new
/// random key for a new database, or the key derived from the master key
/// for a database that already has data, whose index rows were hashed
/// under it. Replicas starting at once all read back the one key stored.
fn load_index_key(conn: &Conn<'_>, master: &MasterKey) -> Result<IndexKey> {
    const SELECT: &str = "SELECT wrapped FROM store_keys WHERE name = 'index'";
    if let Some(row) = conn.query_opt(SELECT, &[])? {
        let wrapped: Vec<u8> = column(&row, 0)?;
        return Ok(master.unwrap_index_key(&WrappedKey::from_bytes(&wrapped)?)?);
    }
    let existing: bool = column(
        &conn.query_one("SELECT EXISTS (SELECT 1 FROM data_keys)", &[])?,
        0,
    )?;
    let key = if existing {
        master.derived_index_key().clone()
    } else {
        IndexKey::generate()?
    };
    let wrapped = master.wrap_index_key(&key)?;
    conn.execute(
        "INSERT INTO store_keys (name, wrapped, created) VALUES ('index', $1, $2) \
         ON CONFLICT (name) DO NOTHING",
        &[&wrapped.as_bytes(), &now_micros()],
    )?;
    let row = conn.query_one(SELECT, &[])?;
    let wrapped: Vec<u8> = column(&row, 0)?;
    Ok(master.unwrap_index_key(&WrappedKey::from_bytes(&wrapped)?)?)
}

impl Store for PostgresStore {
    fn blind(&self, domain: &str, value: &str) -> String {
        // The same derivation as the SQLite store, so record keys carry over
        // between backends.
        let hash = self.codec.blind(&format!("kv:{domain}"), value);
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_conn(|conn| kv::get(conn, &self.codec, ns, key))
    }

    fn audit_rows(&self, from: u64, limit: usize) -> Result<Vec<ward_audit::StoredAudit>> {
        self.with_conn(|conn| audit::rows(conn, from, limit))
    }

    fn audit_seqs_for_patient(&self, patient: &str, since: i64, until: i64) -> Result<Vec<u64>> {
        self.with_conn(|conn| audit::seqs_for_patient(conn, patient, since, until))
    }

    fn audit_head(&self) -> Result<crate::types::AuditHead> {
        self.with_conn(audit::head)
    }

    fn kv_put(&self, ns: &str, key: &str, value: &[u8], expires: Option<i64>) -> Result<()> {
        self.with_conn(|conn| kv::put(conn, &self.codec, ns, key, value, expires))
    }

    fn kv_insert_new(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
    ) -> Result<bool> {
        self.with_conn(|conn| kv::insert_new(conn, &self.codec, ns, key, value, expires))
    }

    fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_conn(|conn| kv::take(conn, &self.codec, ns, key))
    }

    fn kv_delete(&self, ns: &str, key: &str) -> Result<bool> {
        self.with_conn(|conn| kv::delete(conn, ns, key))
    }

    fn kv_list(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.with_conn(|conn| kv::list(conn, &self.codec, ns, prefix))
    }

    fn read(&self, resource_type: &str, id: &str) -> Result<ResourceVersion> {
        self.with_conn(|conn| self.reader().read(conn, resource_type, id))
    }

    fn vread(&self, resource_type: &str, id: &str, version: u64) -> Result<ResourceVersion> {
        self.with_conn(|conn| self.reader().vread(conn, resource_type, id, version))
    }

    fn history(&self, request: &HistoryRequest) -> Result<HistoryPage> {
        self.with_conn(|conn| self.reader().history(conn, request))
    }

    fn search(
        &self,
        query: &SearchQuery,
        page: &PageRequest,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage> {
        self.with_conn(|conn| self.reader().search(conn, query, page, visible))
    }

    fn search_page(
        &self,
        snapshot: &str,
        offset: usize,
        count: usize,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage> {
        self.with_conn(|conn| {
            let (pks, settings) = snapshots::get(conn, &self.codec, snapshot)?
                .ok_or_else(|| StoreError::SnapshotExpired(snapshot.to_owned()))?;
            self.reader().page(
                conn,
                &pks,
                &settings,
                Some(snapshot.to_owned()),
                offset,
                count,
                visible,
            )
        })
    }

    fn begin(&self) -> Result<Box<dyn WriteTx + '_>> {
        let handle = self.runtime.handle()?;
        let client = get_client(&self.pool, handle)?;
        Ok(Box::new(write::PostgresWriteTx::begin(
            client,
            handle,
            &self.codec,
            self.max_scan,
        )?))
    }
}

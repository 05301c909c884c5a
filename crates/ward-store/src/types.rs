//! The values and traits shared by every backend.

use serde_json::Value;
use ward_fhir::search::{Include, SearchQuery};

use crate::Result;

/// The interaction that produced a version, as history bundles report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The first version of a resource.
    Create,
    /// A later version.
    Update,
    /// A deletion marker.
    Delete,
}

impl Method {
    /// The code stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Create => "create",
            Method::Update => "update",
            Method::Delete => "delete",
        }
    }

    /// Parses a stored code.
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "create" => Some(Method::Create),
            "update" => Some(Method::Update),
            "delete" => Some(Method::Delete),
            _ => None,
        }
    }
}

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceVersion {
    /// The resource type.
    pub resource_type: String,
    /// The logical id.
    pub id: String,
    /// The version number, from 1.
    pub version: u64,
    /// When the version was stored, in microseconds since the Unix epoch.
    pub last_updated: i64,
    /// What produced the version.
    pub method: Method,
    /// The resource with `meta.versionId` and `meta.lastUpdated` set; `None`
    /// for a deletion.
    pub resource: Option<Value>,
}

impl ResourceVersion {
    /// True when this version records a deletion.
    pub fn is_deleted(&self) -> bool {
        self.method == Method::Delete
    }
}

/// A resource's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// The resource type.
    pub resource_type: String,
    /// The logical id.
    pub id: String,
}

/// Which history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    /// Every resource.
    System,
    /// Every resource of one type.
    Type(String),
    /// One resource.
    Instance(String, String),
}

/// A history request. Versions come newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    /// What to read.
    pub scope: HistoryScope,
    /// `_since`: only versions stored at or after this instant (µs).
    pub since: Option<i64>,
    /// `_at`: only versions that were current at some point of this
    /// closed-open range `[low, high)` of instants (µs), as a date or
    /// partial date covers. A version is current from its `last_updated`
    /// until the next version of its resource is stored. Deletion markers
    /// are never current, so they are left out.
    pub at: Option<(i64, i64)>,
    /// The page size.
    pub count: usize,
    /// Continue after this cursor (from a previous page's `next_cursor`).
    pub cursor: Option<HistoryCursor>,
}

/// Where the next history page starts. Versions are append-only, so a cursor
/// never repeats or skips an entry even while writes go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    /// The highest version sequence the history covers (fixed on page one).
    pub high_water: i64,
    /// The last version sequence already returned.
    pub after: i64,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The versions, newest first.
    pub versions: Vec<ResourceVersion>,
    /// The number of versions the whole history holds.
    pub total: usize,
    /// The cursor of the next page, when there is one.
    pub next_cursor: Option<HistoryCursor>,
}

/// Which page of a search to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Entries per page.
    pub count: usize,
    /// How long a result set stays available for paging, in seconds.
    pub snapshot_ttl_secs: i64,
    /// Opaque server data kept with a result set (page settings such as
    /// `_summary`), returned with every later page.
    pub context: String,
}

/// A page of search results.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// The matching resources of this page, in order.
    pub matches: Vec<ResourceVersion>,
    /// Resources added by `_include` and `_revinclude`.
    pub included: Vec<ResourceVersion>,
    /// The number of matches in the whole result set.
    pub total: usize,
    /// The offset of the first match of this page.
    pub offset: usize,
    /// The id of the stored result set, when it spans more than one page.
    pub snapshot: Option<String>,
    /// The server context stored with the result set.
    pub context: String,
}

impl SearchPage {
    /// True when another page follows this one.
    pub fn has_next(&self) -> bool {
        self.offset + self.matches.len() < self.total && self.snapshot.is_some()
    }
}

/// Filters the resources a caller may see; the store applies it before
/// counting and paging, so totals and links reveal nothing else.
pub type Visibility<'a> = &'a (dyn Fn(&ResourceVersion) -> bool + Sync);

/// The state of the audit log after its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// The number of records.
    pub size: u64,
    /// The Merkle tree root over every record (RFC 6962).
    pub root: [u8; 32],
    /// The last chain hash.
    pub chain_head: [u8; 32],
}

/// A storage backend.
///
/// Besides FHIR resources, a store keeps small sealed records by namespace
/// and key (sessions, authorization codes, token families, users). Keys are
/// stored in clear, so callers use ids or hashes as keys, never PHI or
/// secrets; values are sealed like resources.
pub trait Store: Send + Sync {
    /// Returns a keyed hash (hex) of `value` under `domain`, for record
    /// keys derived from personal data such as a user name: equal inputs
    /// give equal keys, and the key reveals nothing without the store's
    /// index key.
    fn blind(&self, domain: &str, value: &str) -> String;

    /// Reads a record that has not expired.
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Stores a record, replacing any with the same key. `expires` is in
    /// microseconds since the Unix epoch.
    fn kv_put(&self, ns: &str, key: &str, value: &[u8], expires: Option<i64>) -> Result<()>;

    /// Stores a record only when no live record has the key; returns false
    /// when one does (for single-use values such as a JWT `jti`).
    fn kv_insert_new(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
    ) -> Result<bool>;

    /// Removes a record and returns it, atomically, so that two callers
    /// never both take the same single-use value.
    fn kv_take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Removes a record; returns whether one existed.
    fn kv_delete(&self, ns: &str, key: &str) -> Result<bool>;

    /// Lists the live records of a namespace whose key starts with `prefix`,
    /// ordered by key.
    fn kv_list(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Reads the current version of a resource. A deleted resource yields
    /// [`StoreError::Gone`](crate::StoreError::Gone).
    fn read(&self, resource_type: &str, id: &str) -> Result<ResourceVersion>;

    /// Reads one version (deletion markers included).
    fn vread(&self, resource_type: &str, id: &str, version: u64) -> Result<ResourceVersion>;

    /// Reads a page of history, newest first.
    fn history(&self, request: &HistoryRequest) -> Result<HistoryPage>;

    /// Runs a search and returns its first page.
    fn search(
        &self,
        query: &SearchQuery,
        page: &PageRequest,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage>;

    /// Returns a later page of a stored result set.
    fn search_page(
        &self,
        snapshot: &str,
        offset: usize,
        count: usize,
        visible: Option<Visibility<'_>>,
    ) -> Result<SearchPage>;

    /// Reads up to `limit` audit rows from sequence number `from`, in order.
    fn audit_rows(&self, from: u64, limit: usize) -> Result<Vec<ward_audit::StoredAudit>>;

    /// Returns the sequence numbers of the audit records that name a
    /// patient, recorded between `since` and `until` (microseconds since the
    /// Unix epoch, inclusive), oldest first.
    fn audit_seqs_for_patient(&self, patient: &str, since: i64, until: i64) -> Result<Vec<u64>>;

    /// Returns the state after the last audit record.
    fn audit_head(&self) -> Result<AuditHead>;

    /// Starts a write transaction. Dropping it without
    /// [`WriteTx::commit`] rolls everything back.
    fn begin(&self) -> Result<Box<dyn WriteTx + '_>>;
}

/// A write transaction: every change in it commits together or not at all,
/// and its reads see its own changes.
pub trait WriteTx {
    /// Reads the current version of a resource.
    fn read(&mut self, resource_type: &str, id: &str) -> Result<ResourceVersion>;

    /// Returns the keys of every resource matching the criteria of `query`
    /// (paging, sorting and includes are ignored), up to `limit` + 1 so the
    /// caller can tell "more than `limit`".
    fn search_keys(&mut self, query: &SearchQuery, limit: usize) -> Result<Vec<ResourceKey>>;

    /// Stores a new resource. `resource.id` must be set; an existing id fails
    /// with [`StoreError::AlreadyExists`](crate::StoreError::AlreadyExists).
    fn create(&mut self, resource: Value) -> Result<ResourceVersion>;

    /// Stores a new version of `resource` (creating it when absent). With
    /// `if_match`, the current version must equal it. Returns the version
    /// and whether it was created.
    fn update(&mut self, resource: Value, if_match: Option<u64>)
    -> Result<(ResourceVersion, bool)>;

    /// Deletes a resource. Returns the deletion marker, or `None` when the
    /// resource was already deleted.
    fn delete(
        &mut self,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<Option<ResourceVersion>>;

    /// Reads a live key-value record in this transaction. On PostgreSQL the
    /// record stays locked until commit or rollback, so two transactions
    /// that read, change and write back one record take turns; SQLite runs
    /// one write transaction at a time anyway.
    fn kv_get(&mut self, ns: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Stores a key-value record in this transaction, replacing any with the
    /// same key. `expires` is in microseconds since the Unix epoch.
    fn kv_put(&mut self, ns: &str, key: &str, value: &[u8], expires: Option<i64>) -> Result<()>;

    /// Stores a key-value record in this transaction only when no live
    /// record has the key; returns false when one does. A concurrent
    /// transaction that stored the key first makes this one wait for its
    /// commit (then false) or rollback (then true).
    fn kv_insert_new(
        &mut self,
        ns: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
    ) -> Result<bool>;

    /// Appends an audit record to the hash chain and the Merkle tree, in
    /// this transaction: it commits with the changes it describes or not at
    /// all. Returns its sequence number.
    fn append_audit(&mut self, record: &ward_audit::AuditRecord) -> Result<u64>;

    /// Commits every change.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// The settings of a stored result set that later pages need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SnapshotSettings {
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub context: String,
}

//! Redis backend, standalone or cluster. Every replica's writes tombstone the entries they
//! change before the write is acknowledged, so a check on any replica sees them.
//!
//! Keys are hash-tagged by a digest of the ledger's cache namespace, tenant and subject
//! (`consent:v1:{<digest>}:s`; `:c` a tenant's catalogue, `:r` an identity's resolution by
//! its alias key), so a cluster spreads subjects over slots and no caller-chosen id can
//! break the key format. The namespace is a random id stored in the ledger
//! (`ledger_identity`): two ledgers sharing one Redis never read each other's entries, and a
//! ledger restored from a backup (its revisions gone back in time, below those of entries
//! cached before the restore) is given a new namespace by
//! `consentd cache rotate-namespace`, so those entries are never read again.
//! Values are `L<version>:<json>` (live), `T<version>:` (tombstone) or `P:` (pending), each
//! prefixed by the run id of the Redis server that stored it (`<run_id>|...`); one Lua script
//! applies the version rules atomically per key, another reads.
//!
//! The run id changes whenever a Redis server starts, and differs between a primary and the
//! replica that replaces it. Entries written under another run read as misses, so a Redis
//! restarted from a snapshot (or an AOF), or a failover to a replica that missed a tombstone,
//! can never bring back an entry older than a write that was acknowledged meanwhile.

use std::time::Duration;

use async_trait::async_trait;
use consent_core::redact::{query_of, redact, redact_url, register_secrets_of};
use consent_core::{Catalog, ConsentError, Result, Revision, SubjectState};
use redis::Script;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use sha2::{Digest, Sha256};

use crate::{CacheBackend, ResolutionCache, StateLookup, Versioned};
use consent_core::identity::AliasKey;
use consent_core::{IdentityType, Timestamp};
use consent_store::{NewLink, Resolution, StoredIdentity};

/// The current server run's part of a stored value, or nil. Shared by both scripts: a value
/// stored under another run (before a restart or a failover) is as good as absent.
const CURRENT_RUN: &str = r#"
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if not run then return redis.error_reply('consent cache: the server reports no run_id') end
local function of_this_run(raw)
  if not raw then return nil end
  local bar = string.find(raw, '|', 1, true)
  if bar and string.sub(raw, 1, bar - 1) == run then return string.sub(raw, bar + 1) end
  return nil
end
"#;

/// Refuses a Redis that may evict keys: a tombstone or pending marker evicted under memory
/// pressure would let a fill read before a write land after it, and a stale entry answer
/// (an outside test found exactly that with `allkeys-lru`). Only `noeviction` (or no
/// `maxmemory`) keeps markers until they expire. Shared by `PUT_IF` (for markers) and the
/// start-up check.
const NO_EVICTION: &str = r#"
local function evicting()
  local mem = redis.call('INFO', 'memory')
  local maxmemory = tonumber(string.match(mem, 'maxmemory:(%d+)')) or 0
  local policy = string.match(mem, 'maxmemory_policy:([%w%-]+)') or 'noeviction'
  if maxmemory > 0 and policy ~= 'noeviction' then
    return 'consent cache: this Redis evicts keys (maxmemory ' .. maxmemory .. ', maxmemory-policy ' .. policy .. '): an evicted tombstone could let a stale entry answer after a write; set maxmemory-policy noeviction (or maxmemory 0)'
  end
  return nil
end
"#;

/// The start-up check: an error when the server may evict keys.
const CHECK_EVICTION: &str = r#"
local why = evicting()
if why then return redis.error_reply(why) end
return 1
"#;

/// Reads an entry stored under the current run. KEYS[1] the key; returns the value or nil.
const GET_CURRENT: &str = r#"
local value = of_this_run(redis.call('GET', KEYS[1]))
if value then return value end
return false
"#;

/// Reads an entry stored under the current run unless it is the version the caller holds.
/// KEYS[1] the key; ARGV[1] the value prefix of the caller's copy (`L<version>:`), or empty.
/// Returns `=` when the entry is that version, else the value or nil: a catalogue (several
/// KB of JSON) crosses the network and is decoded only when it changed.
const GET_UNLESS_HELD: &str = r#"
local value = of_this_run(redis.call('GET', KEYS[1]))
if not value then return false end
if ARGV[1] ~= '' and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then return '=' end
return value
"#;

/// Catalogues a cache keeps decoded (one per tenant); past it the copies are dropped and
/// read again.
const HELD_CATALOGS: usize = 10_000;

/// Compare-and-set by version (the rules of `Versioned`). KEYS[1] the key; ARGV: version,
/// `fill`, `tomb` or `pending`, value, TTL in ms. Values: `L<version>:<json>` live,
/// `T<version>:` tombstone, `P:` pending, stored as `<run_id>|<value>`. Returns 1 when
/// stored, 0 when the entry wins.
const PUT_IF: &str = r#"
local op = ARGV[2]
if op ~= 'fill' then
  -- A marker on a server that may evict it protects nothing: refuse, so the write fences.
  local why = evicting()
  if why then return redis.error_reply(why) end
end
local current = of_this_run(redis.call('GET', KEYS[1]))
if current and op ~= 'pending' then
  local kind = string.sub(current, 1, 1)
  if kind == 'P' then
    if op == 'fill' then return 0 end
  else
    local colon = string.find(current, ':', 1, true)
    local current_version = tonumber(string.sub(current, 2, colon - 1))
    local version = tonumber(ARGV[1])
    if op == 'fill' then
      if kind == 'L' and version <= current_version then return 0 end
      if kind == 'T' and version < current_version then return 0 end
    else
      if version <= current_version then return 0 end
    end
  end
end
redis.call('SET', KEYS[1], run .. '|' .. ARGV[3], 'PX', ARGV[4])
return 1
"#;

/// Longest life of a pending marker: a write that never finishes stops blocking fills then.
const PENDING_TTL: Duration = Duration::from_secs(60);

/// Longest a cache operation may take before it counts as a fault (the read then goes to
/// the ledger).
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis backend.
#[derive(Clone)]
pub struct RedisCache {
    connection: Connection,
    ttl: Duration,
    get_current: Script,
    get_unless_held: Script,
    put_if: Script,
    description: String,
    /// The last catalogue read per tenant, decoded: reused while Redis holds that version.
    catalogs: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Catalog>>>,
    >,
    /// The ledger's cache namespace, part of every key (see the module doc).
    namespace: String,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisCache({})", self.description)
    }
}

/// A Redis error as `Unavailable`; its text may quote the URL, so it is redacted.
fn unavailable(e: impl std::fmt::Display) -> ConsentError {
    ConsentError::Unavailable(format!("redis: {}", redact(&e.to_string())))
}

fn digest(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16])
}

fn state_key(namespace: &str, tenant: &str, subject: &str) -> String {
    format!("consent:v1:{{{}}}:s", digest(&[namespace, tenant, subject]))
}

fn resolution_key(namespace: &str, tenant: &str, alias: &AliasKey) -> String {
    format!(
        "consent:v1:{{{}}}:r",
        digest(&[namespace, tenant, "alias", &hex::encode(alias.0)])
    )
}

fn catalog_key(namespace: &str, tenant: &str) -> String {
    format!("consent:v1:{{{}}}:c", digest(&[namespace, tenant]))
}

fn encode<T: serde::Serialize>(entry: &Versioned<T>) -> Result<String> {
    if entry.is_pending() {
        return Ok("P:".to_owned());
    }
    match &entry.value {
        Some(value) => serde_json::to_string(value)
            .map(|json| format!("L{}:{json}", entry.version))
            .map_err(|e| ConsentError::Internal(format!("cannot encode cache entry: {e}"))),
        None => Ok(format!("T{}:", entry.version)),
    }
}

fn decode<T: serde::de::DeserializeOwned>(raw: &str) -> Option<T> {
    let rest = raw.strip_prefix('L')?;
    let (_, json) = rest.split_once(':')?;
    // An undecodable entry is a miss: the ledger answers and the next fill replaces it.
    serde_json::from_str(json).ok()
}

/// Refuses a Redis URL with a query parameter the client does not read (it would ignore
/// it silently: `?password=` is not how redis-rs takes a password). The parameter is not
/// repeated, since it may hold a secret.
fn check_url(setting: &str, url: &str) -> Result<()> {
    let unix = url.starts_with("redis+unix:") || url.starts_with("unix:");
    let supported: &[&str] = if unix {
        &["db", "user", "pass", "protocol"]
    } else {
        &["protocol"]
    };
    let ignored = query_of(url).is_some_and(|query| {
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .any(|pair| !supported.contains(&pair.split_once('=').map_or(pair, |(n, _)| n)))
    });
    if ignored {
        return Err(ConsentError::invalid(
            setting,
            format!(
                "has a query parameter the Redis client does not read (it would ignore it); supported: {}; put a password in the URL's user information: redis://:PASSWORD@host:port",
                supported.join(", ")
            ),
        ));
    }
    Ok(())
}

impl RedisCache {
    /// Connects to a standalone Redis (`redis://host:port`), for the ledger whose cache
    /// namespace is `namespace` (`SqlStore::cache_namespace`).
    pub async fn standalone(url: &str, namespace: &str, ttl: Duration) -> Result<RedisCache> {
        register_secrets_of(url);
        check_url("cache.redis_url", url)?;
        let client = redis::Client::open(url).map_err(unavailable)?;
        // Fail fast: a cache that cannot answer within this time is skipped, not waited on.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        RedisCache::with(
            Connection::Standalone(manager),
            namespace,
            ttl,
            format!("redis {}", redact_url(url)),
        )?
        .usable()
        .await
    }

    /// Connects to a Redis Cluster through any of its `nodes`, for the ledger whose cache
    /// namespace is `namespace`.
    pub async fn cluster(nodes: &[String], namespace: &str, ttl: Duration) -> Result<RedisCache> {
        for node in nodes {
            register_secrets_of(node);
        }
        for node in nodes {
            check_url("cache.redis_cluster_nodes", node)?;
        }
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(OPERATION_TIMEOUT)
            .response_timeout(OPERATION_TIMEOUT)
            .retries(1)
            .build()
            .map_err(unavailable)?;
        let connection = client.get_async_connection().await.map_err(unavailable)?;
        RedisCache::with(
            Connection::Cluster(connection),
            namespace,
            ttl,
            format!(
                "redis cluster {}",
                nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )?
        .usable()
        .await
    }

    /// This cache, once one read through its script worked: a connection that authenticates
    /// wrongly, or a server that refuses scripts, stops the start instead of making every
    /// read fall back.
    async fn usable(self) -> Result<RedisCache> {
        if let Err(e) = self.get(&catalog_key(&self.namespace, "")).await {
            return Err(ConsentError::Unavailable(format!(
                "{} does not answer the cache's commands: {e}",
                self.description
            )));
        }
        let check = Script::new(&format!("{NO_EVICTION}{CHECK_EVICTION}"));
        let invocation = check.key(catalog_key(&self.namespace, ""));
        let answer: Result<i64> = match self.connection.clone() {
            Connection::Standalone(mut c) => invoke(&invocation, &mut c).await,
            Connection::Cluster(mut c) => invoke(&invocation, &mut c).await,
        };
        match answer {
            Ok(_) => Ok(self),
            Err(e) => Err(ConsentError::Unavailable(format!(
                "{} cannot hold the cache: {e}",
                self.description
            ))),
        }
    }

    fn with(
        connection: Connection,
        namespace: &str,
        ttl: Duration,
        description: String,
    ) -> Result<RedisCache> {
        if namespace.is_empty() {
            return Err(ConsentError::Internal(
                "the Redis cache needs the ledger's cache namespace".into(),
            ));
        }
        Ok(RedisCache {
            connection,
            ttl,
            get_current: Script::new(&format!("{CURRENT_RUN}{GET_CURRENT}")),
            get_unless_held: Script::new(&format!("{CURRENT_RUN}{GET_UNLESS_HELD}")),
            catalogs: std::sync::Arc::default(),
            put_if: Script::new(&format!("{CURRENT_RUN}{NO_EVICTION}{PUT_IF}")),
            description,
            namespace: namespace.to_owned(),
        })
    }

    /// Whether Redis answers a `PING` (for readiness reports).
    pub async fn ping(&self) -> Result<()> {
        let ping = redis::cmd("PING");
        let answer: redis::RedisResult<String> = match self.connection.clone() {
            Connection::Standalone(mut c) => ping.query_async(&mut c).await,
            Connection::Cluster(mut c) => ping.query_async(&mut c).await,
        };
        answer.map(drop).map_err(unavailable)
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        let invocation = self.get_current.key(key);
        match self.connection.clone() {
            Connection::Standalone(mut c) => invoke(&invocation, &mut c).await,
            Connection::Cluster(mut c) => invoke(&invocation, &mut c).await,
        }
    }

    /// Marks the entry at `key` as written-to (a write in flight).
    async fn mark_pending(&self, key: &str) -> Result<()> {
        let marker: Versioned<()> = Versioned::pending();
        self.put(key, &marker, "pending").await
    }

    /// Marks the entry at `key` stale as of the write at `revision`.
    async fn tombstone(&self, key: &str, revision: Revision) -> Result<()> {
        let tomb: Versioned<()> = Versioned {
            version: revision,
            value: None,
        };
        self.put(key, &tomb, "tomb").await
    }

    async fn put<T: serde::Serialize>(
        &self,
        key: &str,
        entry: &Versioned<T>,
        kind: &str,
    ) -> Result<()> {
        let value = encode(entry)?;
        let ttl = if entry.is_pending() {
            self.ttl.min(PENDING_TTL)
        } else {
            self.ttl
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.put_if.key(key);
        invocation
            .arg(entry.version)
            .arg(kind)
            .arg(value)
            .arg(ttl_ms);
        // 1 stored, 0 kept the newer entry: both are success.
        let _stored: i64 = match self.connection.clone() {
            Connection::Standalone(mut c) => invoke(&invocation, &mut c).await?,
            Connection::Cluster(mut c) => invoke(&invocation, &mut c).await?,
        };
        Ok(())
    }
}

/// Runs one script in a `redis` span (a child of the request's span when traced).
async fn invoke<C: ConnectionLike + Send, T: redis::FromRedisValue>(
    invocation: &redis::ScriptInvocation<'_>,
    connection: &mut C,
) -> Result<T> {
    use tracing::Instrument as _;
    invocation
        .invoke_async(connection)
        .instrument(tracing::info_span!(
            "redis",
            otel.name = "EVALSHA",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
        ))
        .await
        .map_err(unavailable)
}

#[async_trait]
impl CacheBackend for RedisCache {
    async fn get_state(&self, tenant: &str, subject: &str) -> Result<StateLookup> {
        let raw = self
            .get(&state_key(&self.namespace, tenant, subject))
            .await?;
        Ok(match raw {
            Some(raw) => match raw.strip_prefix('T') {
                Some(tomb) => tomb
                    .split_once(':')
                    .and_then(|(version, _)| version.parse().ok())
                    .map_or(StateLookup::Miss, StateLookup::Tombstone),
                None => decode(&raw)
                    .map(|state| StateLookup::Hit(std::sync::Arc::new(state)))
                    .unwrap_or(StateLookup::Miss),
            },
            None => StateLookup::Miss,
        })
    }

    async fn fill_state(&self, tenant: &str, subject: &str, state: &SubjectState) -> Result<()> {
        let entry = Versioned {
            version: state.revision,
            value: Some(state),
        };
        self.put(&state_key(&self.namespace, tenant, subject), &entry, "fill")
            .await
    }

    async fn begin_write(&self, tenant: &str, subject: &str) -> Result<()> {
        self.mark_pending(&state_key(&self.namespace, tenant, subject))
            .await
    }

    async fn invalidate_state(
        &self,
        tenant: &str,
        subject: &str,
        revision: Revision,
    ) -> Result<()> {
        self.tombstone(&state_key(&self.namespace, tenant, subject), revision)
            .await
    }

    async fn get_catalog(&self, tenant: &str) -> Result<Option<std::sync::Arc<Catalog>>> {
        let held = self
            .catalogs
            .lock()
            .ok()
            .and_then(|held| held.get(tenant).cloned());
        let key = catalog_key(&self.namespace, tenant);
        let mut invocation = self.get_unless_held.key(&key);
        invocation.arg(
            held.as_ref()
                .map_or_else(String::new, |c| format!("L{}:", c.version)),
        );
        let raw: Option<String> = match self.connection.clone() {
            Connection::Standalone(mut c) => invoke(&invocation, &mut c).await?,
            Connection::Cluster(mut c) => invoke(&invocation, &mut c).await?,
        };
        let Some(raw) = raw else { return Ok(None) };
        if raw == "=" {
            return Ok(held);
        }
        let Some(catalog) = decode::<Catalog>(&raw).map(std::sync::Arc::new) else {
            return Ok(None);
        };
        if let Ok(mut held) = self.catalogs.lock() {
            if held.len() >= HELD_CATALOGS {
                held.clear();
            }
            held.insert(tenant.to_owned(), std::sync::Arc::clone(&catalog));
        }
        Ok(Some(catalog))
    }

    async fn fill_catalog(&self, tenant: &str, catalog: &Catalog) -> Result<()> {
        let entry = Versioned {
            version: catalog.version,
            value: Some(catalog),
        };
        self.put(&catalog_key(&self.namespace, tenant), &entry, "fill")
            .await
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn namespace(&self) -> Option<&str> {
        Some(&self.namespace)
    }

    fn shared_resolutions(&self) -> Option<&dyn ResolutionCache> {
        Some(self)
    }
}

/// A resolution as cached: the link without its alias key (the key of the entry is made
/// from it). Phone numbers and emails have no value here either: the ledger keeps none.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct CachedLink {
    kind: IdentityType,
    value: Option<String>,
    subject_id: String,
    revision: Revision,
    linked_at: Timestamp,
}

impl CachedLink {
    fn of(identity: &StoredIdentity) -> CachedLink {
        CachedLink {
            kind: identity.link.kind,
            value: identity.link.value.clone(),
            subject_id: identity.subject_id.clone(),
            revision: identity.revision,
            linked_at: identity.linked_at,
        }
    }

    fn into_identity(self, alias: &AliasKey) -> StoredIdentity {
        StoredIdentity {
            link: NewLink {
                alias: *alias,
                kind: self.kind,
                value: self.value,
            },
            subject_id: self.subject_id,
            revision: self.revision,
            linked_at: self.linked_at,
        }
    }
}

#[async_trait]
impl ResolutionCache for RedisCache {
    async fn get_resolution(&self, tenant: &str, alias: &AliasKey) -> Result<Option<Resolution>> {
        let raw = self
            .get(&resolution_key(&self.namespace, tenant, alias))
            .await?;
        // The version is the revision the resolution was read at.
        Ok(raw.and_then(|raw| {
            let version = raw.strip_prefix('L')?.split_once(':')?.0.parse().ok()?;
            let link: Option<CachedLink> = decode(&raw)?;
            Some(Resolution {
                link: link.map(|link| link.into_identity(alias)),
                revision: version,
            })
        }))
    }

    async fn fill_resolution(
        &self,
        tenant: &str,
        alias: &AliasKey,
        resolution: &Resolution,
    ) -> Result<()> {
        let entry = Versioned {
            version: resolution.revision,
            value: Some(resolution.link.as_ref().map(CachedLink::of)),
        };
        self.put(
            &resolution_key(&self.namespace, tenant, alias),
            &entry,
            "fill",
        )
        .await
    }

    async fn begin_link_write(&self, tenant: &str, alias: &AliasKey) -> Result<()> {
        self.mark_pending(&resolution_key(&self.namespace, tenant, alias))
            .await
    }

    async fn invalidate_resolution(
        &self,
        tenant: &str,
        alias: &AliasKey,
        revision: Revision,
    ) -> Result<()> {
        self.tombstone(&resolution_key(&self.namespace, tenant, alias), revision)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hash_tagged_and_immune_to_odd_ids() {
        let k = state_key("ns", "acme", "{weird}:subject");
        assert!(k.starts_with("consent:v1:{") && k.ends_with("}:s"), "{k}");
        assert_eq!(k.matches('{').count(), 1);
        assert_ne!(state_key("ns", "a", "bc"), state_key("ns", "ab", "c"));
        assert_ne!(catalog_key("ns", "acme"), state_key("ns", "acme", ""));
        let alias = AliasKey([7; 32]);
        let r = resolution_key("ns", "acme", &alias);
        assert!(r.starts_with("consent:v1:{") && r.ends_with("}:r"), "{r}");
        assert_ne!(r, state_key("ns", "acme", &hex::encode(alias.0)));
        assert_ne!(r, resolution_key("other", "acme", &alias));
    }

    #[test]
    fn ledgers_sharing_a_redis_have_disjoint_keys() {
        assert_ne!(
            state_key("ledger-a", "acme", "alice"),
            state_key("ledger-b", "acme", "alice")
        );
        assert_ne!(
            catalog_key("ledger-a", "acme"),
            catalog_key("ledger-b", "acme")
        );
    }

    #[test]
    fn urls_with_parameters_the_client_ignores_are_refused_unrepeated() {
        let refused = check_url("cache.redis_url", "redis://h:6379/?password=Hidden-Pw&x=1");
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| !e.to_string().contains("Hidden-Pw")),
            "{refused:?}"
        );
        assert!(check_url("cache.redis_url", "redis://:pw@h:6379/0?protocol=resp3").is_ok());
        assert!(check_url("cache.redis_url", "redis://:p?w@h:6379").is_ok());
        assert!(check_url("cache.redis_url", "redis+unix:///run/r.sock?db=1&pass=pw").is_ok());
    }

    #[test]
    fn entries_round_trip_and_tombstones_read_as_misses() {
        let live = Versioned {
            version: 7,
            value: Some(SubjectState::default()),
        };
        let raw = encode(&live).unwrap_or_default();
        assert!(raw.starts_with("L7:"));
        assert_eq!(decode::<SubjectState>(&raw), Some(SubjectState::default()));
        let tomb: Versioned<()> = Versioned {
            version: 7,
            value: None,
        };
        assert_eq!(
            decode::<SubjectState>(&encode(&tomb).unwrap_or_default()),
            None
        );
        assert_eq!(decode::<SubjectState>("garbage"), None);
    }

    #[test]
    fn resolutions_round_trip_without_their_alias_key() {
        let identity = StoredIdentity {
            link: NewLink {
                alias: AliasKey([9; 32]),
                kind: IdentityType::Cookie,
                value: Some("ck-1".into()),
            },
            subject_id: "acct".into(),
            revision: 4,
            linked_at: Timestamp(17),
        };
        let entry = Versioned {
            version: 12,
            value: Some(Some(CachedLink::of(&identity))),
        };
        let raw = encode(&entry).unwrap_or_default();
        assert!(
            raw.starts_with("L12:") && !raw.contains(&hex::encode([9u8; 32])),
            "{raw}"
        );
        let link: Option<Option<CachedLink>> = decode(&raw);
        assert_eq!(
            link.flatten().map(|l| l.into_identity(&AliasKey([9; 32]))),
            Some(identity)
        );
        let unlinked: Versioned<Option<CachedLink>> = Versioned {
            version: 3,
            value: Some(None),
        };
        let raw = encode(&unlinked).unwrap_or_default();
        assert_eq!(decode::<Option<CachedLink>>(&raw), Some(None));
    }
}

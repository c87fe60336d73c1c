//! Accounts, their API keys and quotas, and browser sessions.
//!
//! A key is `ty_` and 64 hex digits (256 random bits). Only its SHA-256 is stored. The
//! first 12 hex digits (`lookup`) find the row by index; the hash is then compared in
//! constant time, so how long a refusal takes says nothing about how close a guess was.
//! The store never sees a key it did not just make: callers pass the presented text and
//! get back who it belongs to, or nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{CHANNEL_KEYS, Result, Store, StoreError};

/// The account that experiments made before accounts existed belong to, and that
/// `--auth off` acts as.
pub const DEFAULT_ACCOUNT: Uuid = Uuid::nil();

/// What every key starts with, so a leaked one is recognisable (secret scanners, logs).
const KEY_PREFIX: &str = "ty_";
const SECRET_HEX: usize = 64;
const LOOKUP_HEX: usize = 12;

/// Which experiments a request may see and touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// An admin: every account's.
    All,
    /// One account's only.
    Account(Uuid),
}

impl Scope {
    /// The account to filter on in SQL (`$n::uuid IS NULL OR account_id = $n`).
    pub fn account(self) -> Option<Uuid> {
        match self {
            Scope::All => None,
            Scope::Account(a) => Some(a),
        }
    }

    /// Whether an experiment of `account` is visible in this scope.
    pub fn sees(self, account: Uuid) -> bool {
        self.account().is_none_or(|a| a == account)
    }
}

/// Who a key or session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub account_id: Uuid,
    pub account: String,
    pub admin: bool,
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: Uuid,
    pub account: String,
    /// The key's first characters (`ty_` and 12 hex digits), to tell keys apart.
    pub prefix: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    /// Refreshed at most every few minutes.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new key: the secret, shown once, and what is listed about it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewKey {
    /// The key itself. It is not stored and cannot be shown again.
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// An account's quotas; `None` is no limit.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Quotas {
    /// Most experiments queued at once; one more is refused with 429.
    pub max_queued: Option<i32>,
    /// Most experiments running at once; more wait in the queue.
    pub max_running: Option<i32>,
    /// Most training FLOPs submitted in any 24 hours; more is refused with 429.
    pub max_flops_per_day: Option<f64>,
}

/// A change of quotas: each `Some` replaces the stored value (`Some(None)` removes it).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotasPatch {
    pub max_queued: Option<Option<i32>>,
    pub max_running: Option<Option<i32>>,
    pub max_flops_per_day: Option<Option<f64>>,
}

/// An account with its quotas and what it uses of them now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub quotas: Quotas,
    pub queued: i64,
    pub running: i64,
    /// Training FLOPs of the experiments submitted in the last 24 hours (those cancelled
    /// before they started do not count).
    pub flops_last_day: f64,
    /// Keys that are not revoked.
    pub active_keys: i64,
}

/// An account name: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or
/// digit (the database checks the same).
fn valid_account_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// SHA-256 of a secret (a key or a session token).
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// 256 random bits as 64 hex digits.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
}

/// The lookup part of a presented key, if it has a key's shape at all.
fn lookup_of(key: &str) -> Option<&str> {
    let secret = key.strip_prefix(KEY_PREFIX)?;
    (secret.len() == SECRET_HEX
        && secret
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
    .then(|| &secret[..LOOKUP_HEX])
}

const KEY_COLUMNS: &str = "k.id, a.name, k.lookup, k.admin, k.created_at, k.last_used_at, \
    k.revoked_at";

type KeyRow = (
    Uuid,
    String,
    String,
    bool,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn key_info(r: KeyRow) -> KeyInfo {
    KeyInfo {
        id: r.0,
        account: r.1,
        prefix: format!("{KEY_PREFIX}{}", r.2),
        admin: r.3,
        created_at: r.4,
        last_used_at: r.5,
        revoked_at: r.6,
    }
}

const ACCOUNT_COLUMNS: &str = "a.id, a.name, a.created_at, a.max_queued, a.max_running, \
    a.max_flops_per_day, \
    (SELECT count(*) FROM experiments e WHERE e.account_id = a.id AND e.status = 'queued'), \
    (SELECT count(*) FROM experiments e WHERE e.account_id = a.id AND e.status = 'running'), \
    (SELECT coalesce(sum(e.train_flops), 0) FROM experiments e WHERE e.account_id = a.id \
        AND e.created_at > now() - interval '1 day' \
        AND NOT (e.status = 'cancelled' AND e.started_at IS NULL)), \
    (SELECT count(*) FROM api_keys k WHERE k.account_id = a.id AND k.revoked_at IS NULL)";

type AccountRow = (
    Uuid,
    String,
    DateTime<Utc>,
    Option<i32>,
    Option<i32>,
    Option<f64>,
    i64,
    i64,
    f64,
    i64,
);

fn account(r: AccountRow) -> Account {
    Account {
        id: r.0,
        name: r.1,
        created_at: r.2,
        quotas: Quotas {
            max_queued: r.3,
            max_running: r.4,
            max_flops_per_day: r.5,
        },
        queued: r.6,
        running: r.7,
        flops_last_day: r.8,
        active_keys: r.9,
    }
}

impl Store {
    /// Makes a key for `account` (creating the account when it is new).
    pub async fn create_key(&self, account: &str, admin: bool) -> Result<NewKey> {
        if !valid_account_name(account) {
            return Err(StoreError::Invalid(
                "account",
                "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            ));
        }
        let mut tx = self.pool.begin().await?;
        let (account_id,): (Uuid,) = sqlx::query_as(
            "INSERT INTO accounts (id, name) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(account)
        .fetch_one(&mut *tx)
        .await?;
        let secret = random_hex();
        let key = format!("{KEY_PREFIX}{secret}");
        let row: KeyRow = sqlx::query_as(&format!(
            "WITH k AS (
                INSERT INTO api_keys (id, account_id, lookup, hash, admin)
                VALUES ($1, $2, $3, $4, $5) RETURNING *
             )
             SELECT {KEY_COLUMNS} FROM k JOIN accounts a ON a.id = k.account_id"
        ))
        .bind(Uuid::now_v7())
        .bind(account_id)
        .bind(&secret[..LOOKUP_HEX])
        .bind(&digest(&key)[..])
        .bind(admin)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(NewKey {
            key,
            info: key_info(row),
        })
    }

    /// Every key (of one account, when given), newest first.
    pub async fn keys(&self, account: Option<&str>) -> Result<Vec<KeyInfo>> {
        let rows: Vec<KeyRow> = sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id
             WHERE $1::text IS NULL OR a.name = $1
             ORDER BY k.created_at DESC, k.id DESC"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(key_info).collect())
    }

    /// Revokes a key and ends its sessions; every process forgets it at once (`NOTIFY`).
    /// Revoking a revoked key changes nothing.
    pub async fn revoke_key(&self, id: Uuid) -> Result<KeyInfo> {
        let mut tx = self.pool.begin().await?;
        let row: Option<KeyRow> = sqlx::query_as(&format!(
            "WITH k AS (
                UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                WHERE id = $1 RETURNING *
             )
             SELECT {KEY_COLUMNS} FROM k JOIN accounts a ON a.id = k.account_id"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or(StoreError::NotFoundThing("key"))?;
        sqlx::query("DELETE FROM sessions WHERE key_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        super::experiments::notify(&mut tx, CHANNEL_KEYS, &id.to_string()).await?;
        tx.commit().await?;
        Ok(key_info(row))
    }

    /// On a first start: makes an admin key for account `account` unless some admin key
    /// exists. Several processes starting at once make one key between them.
    pub async fn first_admin_key(&self, account: &str) -> Result<Option<NewKey>> {
        let mut tx = self.pool.begin().await?;
        // Serialises concurrent first starts (the number is arbitrary but fixed; no `_`
        // separators, which PostgreSQL reads only from version 16).
        sqlx::query("SELECT pg_advisory_xact_lock(7154202611)")
            .execute(&mut *tx)
            .await?;
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM api_keys WHERE admin AND revoked_at IS NULL")
                .fetch_one(&mut *tx)
                .await?;
        if n > 0 {
            return Ok(None);
        }
        let key = self.create_key(account, true).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Who a presented key belongs to; `None` for a key that is unknown, revoked, or not
    /// shaped like a key. Marks the key used (at most every five minutes).
    pub async fn authenticate_key(&self, key: &str) -> Result<Option<Principal>> {
        let Some(lookup) = lookup_of(key) else {
            return Ok(None);
        };
        let row: Option<(Uuid, Uuid, String, bool, Vec<u8>)> = sqlx::query_as(
            "SELECT k.id, k.account_id, a.name, k.admin, k.hash
             FROM api_keys k JOIN accounts a ON a.id = k.account_id
             WHERE k.lookup = $1 AND k.revoked_at IS NULL",
        )
        .bind(lookup)
        .fetch_optional(&self.pool)
        .await?;
        let Some((key_id, account_id, account, admin, hash)) = row else {
            return Ok(None);
        };
        if !bool::from(digest(key)[..].ct_eq(&hash[..])) {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1
             AND (last_used_at IS NULL OR last_used_at < now() - interval '5 minutes')",
        )
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        Ok(Some(Principal {
            key_id,
            account_id,
            account,
            admin,
        }))
    }

    /// Opens a browser session for a key; returns the cookie's token.
    pub async fn create_session(&self, key_id: Uuid, lifetime_secs: f64) -> Result<String> {
        let token = random_hex();
        sqlx::query(
            "INSERT INTO sessions (hash, key_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))",
        )
        .bind(&digest(&token)[..])
        .bind(key_id)
        .bind(lifetime_secs)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Who a session token belongs to, while the session and its key last.
    pub async fn authenticate_session(&self, token: &str) -> Result<Option<Principal>> {
        if token.len() != SECRET_HEX {
            return Ok(None);
        }
        let row: Option<(Uuid, Uuid, String, bool)> = sqlx::query_as(
            "SELECT k.id, k.account_id, a.name, k.admin
             FROM sessions s JOIN api_keys k ON k.id = s.key_id
                JOIN accounts a ON a.id = k.account_id
             WHERE s.hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL",
        )
        .bind(&digest(token)[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(key_id, account_id, account, admin)| Principal {
            key_id,
            account_id,
            account,
            admin,
        }))
    }

    /// Ends a session (signing out) and drops the expired ones.
    pub async fn end_session(&self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE hash = $1 OR expires_at < now()")
            .bind(&digest(token)[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every account with its quotas and use, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>> {
        let rows: Vec<AccountRow> = sqlx::query_as(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts a ORDER BY a.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(account).collect())
    }

    /// One account by name.
    pub async fn account(&self, name: &str) -> Result<Account> {
        let row: Option<AccountRow> = sqlx::query_as(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(account).ok_or(StoreError::NotFoundThing("account"))
    }

    /// Changes an account's quotas.
    pub async fn set_quotas(&self, name: &str, patch: QuotasPatch) -> Result<Account> {
        let done = sqlx::query(
            "UPDATE accounts SET
                max_queued = CASE WHEN $2 THEN $3 ELSE max_queued END,
                max_running = CASE WHEN $4 THEN $5 ELSE max_running END,
                max_flops_per_day = CASE WHEN $6 THEN $7 ELSE max_flops_per_day END
             WHERE name = $1",
        )
        .bind(name)
        .bind(patch.max_queued.is_some())
        .bind(patch.max_queued.flatten())
        .bind(patch.max_running.is_some())
        .bind(patch.max_running.flatten())
        .bind(patch.max_flops_per_day.is_some())
        .bind(patch.max_flops_per_day.flatten())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFoundThing("account"));
        }
        self.account(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_key_shaped_text_has_a_lookup() {
        let secret = random_hex();
        let key = format!("ty_{secret}");
        assert_eq!(lookup_of(&key), Some(&secret[..12]));
        assert_eq!(lookup_of(&secret), None);
        assert_eq!(lookup_of(&format!("ty_{}", &secret[1..])), None);
        assert_eq!(lookup_of(&format!("ty_{}", secret.to_uppercase())), None);
        assert_eq!(lookup_of("ty_"), None);
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(random_hex(), random_hex());
        assert_eq!(random_hex().len(), 64);
    }

    #[test]
    fn account_names_are_plain() {
        assert!(valid_account_name("lab-1.team_a"));
        assert!(!valid_account_name(""));
        assert!(!valid_account_name("-x"));
        assert!(!valid_account_name("a b"));
        assert!(!valid_account_name(&"a".repeat(65)));
    }
}

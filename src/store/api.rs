//! What the API reads and writes beyond the loop's own records: releases (finished builds),
//! newest first and paged; one release's story; the audit trail; tokens; and mutations that
//! write their effect, their audit record and their idempotency record in one transaction.
//!
//! # Guarantees
//! - A mutation is all or nothing: the override (or build request), the audit record and the
//!   stored answer for its `Idempotency-Key` commit together, or none of them does.
//! - The overrides are changed by compare-and-swap against their version, so a mutation and the
//!   loop's clearing of a one-shot never lose each other's write.

use super::{SqlStore, StoredBuild, StoredTransition, db_err, json};
use crate::control::judge::Counts;
use crate::control::ports::PortError;
use crate::control::rollout::{ObjectiveEvidence, Overrides, ServiceState};
use crate::control::time::Time;
use rand::Rng;
use sha2::Digest;
use sqlx::Row;

/// How many times a mutation is tried when another writer came first.
const TRIES: usize = 20;
/// How long an `Idempotency-Key` is remembered (as Stripe's API does): a client retrying
/// later than this is making a new request.
const KEY_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// How long a webhook delivery id is remembered, so that a repeated delivery is refused: a week,
/// longer than the senders keep a delivery to redeliver it by hand (GitHub shows three days).
pub const DELIVERY_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;

/// The most samples one release's chart reads (a day of looks every 5 s at three objectives
/// is about 50,000; the chart keeps the newest).
pub const SAMPLES_MAX: i64 = 20_000;

/// The judge's counts for one objective at one look at a canary.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub environment: String,
    pub objective: String,
    /// The canary's weight while these counts came in.
    pub weight: u8,
    /// Counted since the rollout started.
    pub canary: Counts,
    pub stable: Counts,
    pub at: Time,
}

/// One record of the audit trail.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub service: String,
    pub environment: Option<String>,
    pub release: Option<String>,
    pub action: String,
    /// What exactly was asked (the request's parameters).
    pub detail: serde_json::Value,
    pub who: String,
    pub reason: String,
    /// Where the request came from (the client's address).
    pub origin: String,
    pub at: Time,
}

/// What a mutation did, for its audit record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub environment: Option<String>,
    pub release: Option<String>,
    pub action: String,
    pub detail: serde_json::Value,
    pub who: String,
    pub reason: String,
    pub origin: String,
    pub at: Time,
}

/// What a mutation changes besides its audit record.
#[derive(Debug, Clone)]
pub struct Effect {
    pub audit: AuditEntry,
    /// The overrides were changed and must be written.
    pub overrides_changed: bool,
    /// A commit to build.
    pub build: Option<String>,
    /// An image announced as a release (pinned by digest), built from `build` if it is not empty.
    pub image: Option<String>,
    /// A hint to fetch the service's branch and build the tip found there (a push webhook):
    /// no commit is taken from the request.
    pub fetch: bool,
    /// The webhook delivery this mutation carries out: refused (nothing written) if it was
    /// received before, within [`DELIVERY_WINDOW_MS`].
    pub delivery: Option<String>,
}

impl Effect {
    /// A build of `commit` asked for, overrides untouched.
    pub fn build(audit: AuditEntry, commit: String) -> Effect {
        Effect {
            audit,
            overrides_changed: false,
            build: Some(commit),
            image: None,
            fetch: false,
            delivery: None,
        }
    }

    /// A push webhook's delivery `delivery`: a hint to fetch the branch, nothing named to build.
    pub fn fetch(audit: AuditEntry, delivery: String) -> Effect {
        Effect {
            audit,
            overrides_changed: false,
            build: None,
            image: None,
            fetch: true,
            delivery: Some(delivery),
        }
    }

    /// A release built elsewhere announced: the image `image` (by digest), from `commit` if
    /// known.
    pub fn release(audit: AuditEntry, image: String, commit: Option<String>) -> Effect {
        Effect {
            audit,
            overrides_changed: false,
            build: Some(commit.unwrap_or_default()),
            image: Some(image),
            fetch: false,
            delivery: None,
        }
    }
}

/// A build asked for, or an image announced, waiting for the builder.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildAsk {
    pub seq: i64,
    /// The commit to build (or the announced image's commit; empty if unknown).
    pub commit: String,
    pub who: String,
    pub reason: String,
    /// An announced image (`repo@sha256:…`): a release built elsewhere.
    pub image: Option<String>,
    /// Only a hint to fetch the branch now (a push webhook): `commit` is empty, and the builder
    /// builds the branch tip it finds, never a commit named by the sender.
    pub fetch: bool,
}

/// A caller's `Idempotency-Key`, scoped to their token, with a fingerprint of the request.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub token: String,
    pub key: String,
    pub request: String,
    /// When the request came: keys older than a day are forgotten.
    pub now: Time,
}

/// How a mutation ended.
#[derive(Debug)]
pub enum Mutated<E> {
    /// Done now, or done before under the same key (the same answer again).
    Done { status: u16, body: String },
    /// `effect` refused it; nothing was written.
    Refused(E),
    /// The key was used before for a different request.
    KeyReused,
    /// The webhook delivery was received before (within [`DELIVERY_WINDOW_MS`]); nothing was
    /// written.
    Repeated,
}

/// Why a token could not be made or replaced.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Replacing the last admin token with a lesser role would lock everyone out.
    #[error(
        "`{name}` is the last admin token: make another admin token (autopilot token create NAME --role admin) before giving `{name}` the role {role}"
    )]
    LastAdmin { name: String, role: String },
    #[error(transparent)]
    Store(#[from] PortError),
}

/// How a revocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Done,
    NoSuchToken,
    /// Refused: it is the last admin token.
    LastAdmin,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: String,
    pub groups: Vec<String>,
}

/// The SHA-256 of a token's secret, as stored.
pub fn token_hash(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token's row as what the API needs of it.
fn token_info(r: &sqlx::any::AnyRow) -> TokenInfo {
    TokenInfo {
        name: r.get("name"),
        role: r.get("role"),
        groups: r
            .get::<String, _>("approver_groups")
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// An integer column, whatever width the backend gave it.
fn r_i64(r: &sqlx::any::AnyRow, column: &str) -> Result<i64, PortError> {
    r.try_get::<i64, _>(column)
        .or_else(|_| r.try_get::<i32, _>(column).map(i64::from))
        .map_err(db_err)
}

fn time(r: &sqlx::any::AnyRow, column: &str) -> Time {
    Time::from_millis(r.get::<i64, _>(column) as u64)
}

const BUILD_COLUMNS: &str = "seq, service, commit_sha, status, started_at, finished_at, digest, release, error, source, artifact, size, skipped";

impl SqlStore {
    /// A service's releases (successful builds), newest first: at most `limit`, older than the
    /// build `before` (a cursor from the previous page). Without their output and config.
    pub async fn releases(
        &self,
        service: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<StoredBuild>, PortError> {
        self.builds_paged(
            service,
            before,
            limit,
            "AND status = 'built' AND release IS NOT NULL",
        )
        .await
    }

    /// A service's builds of every outcome (running, pushing, built, failed), newest first:
    /// at most `limit`, older than the build `before`. Without their output and config.
    pub async fn builds_page(
        &self,
        service: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<StoredBuild>, PortError> {
        self.builds_paged(service, before, limit, "").await
    }

    async fn builds_paged(
        &self,
        service: &str,
        before: Option<i64>,
        limit: i64,
        only: &'static str,
    ) -> Result<Vec<StoredBuild>, PortError> {
        let sql = format!(
            "SELECT {BUILD_COLUMNS}, '' AS output, CAST(NULL AS TEXT) AS config FROM builds \
             WHERE service = $1 {only} AND seq < $2 ORDER BY seq DESC LIMIT $3"
        );
        // no cursor: from the newest (a plain range keeps the (service, seq) index usable; an
        // `IS NULL OR` made PostgreSQL's generic plan scan and sort: 10 ms instead of 1)
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(service)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(StoredBuild::from_row).collect())
    }

    /// One build of a service by its number, with its output (as far as it has come).
    pub async fn build(&self, service: &str, number: i64) -> Result<Option<StoredBuild>, PortError> {
        let sql =
            format!("SELECT {BUILD_COLUMNS}, output, config FROM builds WHERE service = $1 AND seq = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(service)
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.as_ref().map(StoredBuild::from_row))
    }

    /// The newest build of a release, with its output and config.
    pub async fn release(&self, id: &str) -> Result<Option<StoredBuild>, PortError> {
        let sql = format!(
            "SELECT {BUILD_COLUMNS}, output, config FROM builds WHERE release = $1 AND status = 'built' \
             ORDER BY seq DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.as_ref().map(StoredBuild::from_row))
    }

    /// Every transition of one release, oldest first.
    pub async fn release_transitions(
        &self,
        service: &str,
        release: &str,
    ) -> Result<Vec<StoredTransition>, PortError> {
        let rows = sqlx::query(
            "SELECT service, environment, release, from_phase, to_phase, weight, cause, at \
             FROM transitions WHERE release = $2 AND service = $1 ORDER BY id",
        )
        .bind(service)
        .bind(release)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(StoredTransition::from_row).collect()
    }

    /// Transitions recorded after the one numbered `after` (of one service, or all), oldest
    /// first, at most `limit`, each with its number.
    pub async fn transitions_after(
        &self,
        service: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, StoredTransition)>, PortError> {
        let rows = sqlx::query(
            "SELECT id, service, environment, release, from_phase, to_phase, weight, cause, at \
             FROM transitions WHERE ($1 IS NULL OR service = $1) AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(service)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((r.get::<i64, _>("id"), StoredTransition::from_row(r)?)))
            .collect()
    }

    /// Marks that change whenever something a display shows changes (of one service, or all):
    /// the newest transition, the states' and overrides' versions, the newest audit record,
    /// build and judge's look. Equal marks: nothing to show anew.
    pub async fn change_marks(&self, service: Option<&str>) -> Result<[i64; 6], PortError> {
        let row = sqlx::query(
            "SELECT \
             (SELECT COALESCE(MAX(id), 0) FROM transitions WHERE ($1 IS NULL OR service = $1)) AS t, \
             (SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM services WHERE ($1 IS NULL OR name = $1)) AS s, \
             (SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM overrides WHERE ($1 IS NULL OR service = $1)) AS o, \
             (SELECT COALESCE(MAX(id), 0) FROM audit WHERE ($1 IS NULL OR service = $1)) AS a, \
             (SELECT COALESCE(MAX(seq), 0) + COUNT(finished_at) FROM builds WHERE ($1 IS NULL OR service = $1)) AS b, \
             (SELECT COALESCE(MAX(id), 0) FROM samples WHERE ($1 IS NULL OR service = $1)) AS j",
        )
        .bind(service)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        let mut marks = [0; 6];
        for (m, c) in marks.iter_mut().zip(["t", "s", "o", "a", "b", "j"]) {
            *m = r_i64(&row, c)?;
        }
        Ok(marks)
    }

    /// The judge's counts at each look at one release's canaries, oldest first (the newest
    /// [`SAMPLES_MAX`] when there are more).
    pub async fn release_samples(
        &self,
        service: &str,
        release: &str,
    ) -> Result<Vec<StoredSample>, PortError> {
        let rows = sqlx::query(
            "SELECT environment, objective, weight, canary_bad, canary_total, stable_bad, stable_total, at \
             FROM samples WHERE release = $2 AND service = $1 ORDER BY id DESC LIMIT $3",
        )
        .bind(service)
        .bind(release)
        .bind(SAMPLES_MAX)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let count = |r: &sqlx::any::AnyRow, c: &str| r.get::<i64, _>(c).max(0) as u64;
        Ok(rows
            .iter()
            .rev()
            .map(|r| StoredSample {
                environment: r.get("environment"),
                objective: r.get("objective"),
                weight: r.get::<i64, _>("weight").clamp(0, 100) as u8,
                canary: Counts {
                    bad: count(r, "canary_bad"),
                    total: count(r, "canary_total"),
                },
                stable: Counts {
                    bad: count(r, "stable_bad"),
                    total: count(r, "stable_total"),
                },
                at: time(r, "at"),
            })
            .collect())
    }

    /// The judge's word on one release at each of its transitions, oldest first, then the
    /// latest per objective (what the judge says now), marked by `None`.
    pub async fn release_evidence(
        &self,
        service: &str,
        release: &str,
    ) -> Result<Vec<(ObjectiveEvidence, Option<Time>)>, PortError> {
        let kept =
            sqlx::query("SELECT evidence, at FROM evidence WHERE release = $2 AND service = $1 ORDER BY id")
                .bind(service)
                .bind(release)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        let latest = sqlx::query(
            "SELECT evidence FROM latest_evidence WHERE release = $2 AND service = $1 \
             ORDER BY environment, objective",
        )
        .bind(service)
        .bind(release)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let parse = |r: &sqlx::any::AnyRow| {
            serde_json::from_str::<ObjectiveEvidence>(&r.get::<String, _>("evidence"))
                .map_err(|e| PortError::fatal("store", format!("stored evidence: {e}")))
        };
        let mut out = Vec::new();
        for r in &kept {
            out.push((parse(r)?, Some(time(r, "at"))));
        }
        for r in &latest {
            out.push((parse(r)?, None));
        }
        Ok(out)
    }

    /// The audit trail, newest first, narrowed to a service and/or a release, older than the
    /// record `before`.
    pub async fn audit(
        &self,
        service: Option<&str>,
        release: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, PortError> {
        let rows = sqlx::query(
            "SELECT id, service, environment, release, action, detail, who, reason, origin, at FROM audit \
             WHERE ($1 IS NULL OR service = $1) AND ($2 IS NULL OR release = $2) AND id < $3 \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(service)
        .bind(release)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.get("id"),
                    service: r.get("service"),
                    environment: r.get("environment"),
                    release: r.get("release"),
                    action: r.get("action"),
                    detail: serde_json::from_str(&r.get::<String, _>("detail"))
                        .map_err(|e| PortError::fatal("store", format!("stored audit detail: {e}")))?,
                    who: r.get("who"),
                    reason: r.get("reason"),
                    origin: r.get("origin"),
                    at: time(r, "at"),
                })
            })
            .collect()
    }

    /// Makes a token; returns its secret, which is shown once and stored only as a hash.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        groups: &[String],
    ) -> Result<String, TokenError> {
        let bytes: [u8; 24] = rand::rng().random();
        let secret = format!(
            "ap_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        self.add_token(name, role, groups, &secret).await?;
        Ok(secret)
    }

    /// Registers a token whose secret the caller chose (e.g. from an environment variable).
    pub async fn add_token(
        &self,
        name: &str,
        role: &str,
        groups: &[String],
        secret: &str,
    ) -> Result<(), TokenError> {
        let mut tx = self.admin_tokens_locked().await?;
        let (was, admins) = Self::role_and_admins(&mut tx, name).await?;
        if was.as_deref() == Some("admin") && role != "admin" && admins <= 1 {
            return Err(TokenError::LastAdmin {
                name: name.to_owned(),
                role: role.to_owned(),
            });
        }
        sqlx::query(
            "INSERT INTO tokens (hash, name, role, approver_groups, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT(name) DO UPDATE SET hash = excluded.hash, role = excluded.role, \
             approver_groups = excluded.approver_groups",
        )
        .bind(token_hash(secret))
        .bind(name)
        .bind(role)
        .bind(groups.join(","))
        .bind(crate::clock::wall_clock().millis() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// The token with this secret, if any.
    pub async fn token(&self, secret: &str) -> Result<Option<TokenInfo>, PortError> {
        self.token_hashed(&token_hash(secret)).await
    }

    /// The token whose secret has this hash ([`token_hash`]), if it still exists.
    pub async fn token_hashed(&self, hash: &str) -> Result<Option<TokenInfo>, PortError> {
        let row = sqlx::query("SELECT name, role, approver_groups FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.as_ref().map(token_info))
    }

    /// Opens a sign-in session for the token whose hash is `of_token`, until `expires`; returns
    /// the session's secret (shown once, to go in the browser's cookie; stored only as a hash).
    /// Sessions past their expiry are forgotten on the way.
    pub async fn create_session(
        &self,
        of_token: &str,
        now: Time,
        expires: Time,
    ) -> Result<String, PortError> {
        let bytes: [u8; 32] = rand::rng().random();
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        sqlx::query("DELETE FROM sessions WHERE expires < $1")
            .bind(now.millis() as i64)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        sqlx::query("INSERT INTO sessions (hash, token_hash, expires) VALUES ($1, $2, $3)")
            .bind(token_hash(&secret))
            .bind(of_token)
            .bind(expires.millis() as i64)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(secret)
    }

    /// The token behind a session (and its hash), if the session is open at `now` and its
    /// token still exists.
    pub async fn session(&self, secret: &str, now: Time) -> Result<Option<(TokenInfo, String)>, PortError> {
        let row = sqlx::query(
            "SELECT t.name, t.role, t.approver_groups, t.hash FROM sessions s JOIN tokens t ON t.hash = s.token_hash \
             WHERE s.hash = $1 AND s.expires >= $2",
        )
        .bind(token_hash(secret))
        .bind(now.millis() as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.map(|r| (token_info(&r), r.get("hash"))))
    }

    /// Ends a session (sign-out); nothing if there was none.
    pub async fn end_session(&self, secret: &str) -> Result<(), PortError> {
        sqlx::query("DELETE FROM sessions WHERE hash = $1")
            .bind(token_hash(secret))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Revokes a token by name, unless it is the last admin token (a restart makes none, so
    /// nobody could make or revoke tokens again). Replacing the last admin token by one of a
    /// lesser role (`create_token` under its name) is refused the same way, by [`Self::add_token`].
    pub async fn revoke_token(&self, name: &str) -> Result<Revoked, PortError> {
        let mut tx = self.admin_tokens_locked().await?;
        let (role, admins) = Self::role_and_admins(&mut tx, name).await?;
        let Some(role) = role else {
            return Ok(Revoked::NoSuchToken);
        };
        if role == "admin" && admins <= 1 {
            return Ok(Revoked::LastAdmin);
        }
        sqlx::query("DELETE FROM tokens WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Revoked::Done)
    }

    /// A transaction in which the admin tokens cannot change under the caller: SQLite takes the
    /// write lock up front; PostgreSQL locks the admin rows, so two revocations of the last two
    /// admins run one after the other and the second sees one admin left.
    async fn admin_tokens_locked(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, PortError> {
        match self.backend {
            super::Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err),
            super::Backend::Postgres => {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                sqlx::query("SELECT name FROM tokens WHERE role = 'admin' FOR UPDATE")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Ok(tx)
            }
        }
    }

    /// The role of the token `name` (if any) and how many admin tokens there are.
    async fn role_and_admins(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
    ) -> Result<(Option<String>, i64), PortError> {
        let role: Option<String> = sqlx::query_scalar("SELECT role FROM tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
        let admins = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE role = 'admin'")
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok((role, r_i64(&admins, "n")?))
    }

    /// How many tokens exist.
    pub async fn token_count(&self) -> Result<i64, PortError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tokens")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.get("n"))
    }

    /// Build requests and announced images of a service after `after`, oldest first.
    pub async fn build_requests(&self, service: &str, after: i64) -> Result<Vec<BuildAsk>, PortError> {
        let rows = sqlx::query(
            "SELECT seq, commit_sha, who, reason, image, kind FROM build_requests WHERE service = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(service)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| BuildAsk {
                seq: r.get("seq"),
                commit: r.get("commit_sha"),
                who: r.get("who"),
                reason: r.get("reason"),
                image: r.get("image"),
                fetch: r.get::<String, _>("kind") == "fetch",
            })
            .collect())
    }

    /// Applies one operator mutation to `service`: `effect` sees the stored state and changes
    /// the overrides (or refuses); `respond` makes the answer from the audit record's id and
    /// the result. With an idempotency key, a retry of the same request gets the first answer
    /// back and changes nothing.
    pub async fn mutate<E>(
        &self,
        service: &str,
        idempotency: Option<&Idempotency>,
        mut effect: impl FnMut(&ServiceState, &mut Overrides) -> Result<Effect, E>,
        respond: impl Fn(i64, &ServiceState, &Overrides) -> (u16, String),
    ) -> Result<Mutated<E>, PortError> {
        let mut last_error = None;
        for attempt in 0..TRIES {
            if attempt > 0 {
                // someone else wrote first: let them finish
                tokio::time::sleep(std::time::Duration::from_millis(2 * attempt as u64)).await;
            }
            // SQLite: take the write lock up front (waiting for it with the busy timeout); a
            // transaction that reads first and writes later cannot wait for the lock and fails
            // with "database is locked" when another writer committed in between
            let begin = match self.backend {
                super::Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
                super::Backend::Postgres => self.pool.begin().await,
            };
            let mut tx = begin.map_err(db_err)?;
            if let Some(i) = idempotency {
                let row = sqlx::query(
                    "SELECT request, status, response FROM idempotency WHERE token = $1 AND key = $2 AND at >= $3",
                )
                .bind(&i.token)
                .bind(&i.key)
                .bind(i.now.millis() as i64 - KEY_RETENTION_MS)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                if let Some(r) = row {
                    return Ok(if r.get::<String, _>("request") == i.request {
                        Mutated::Done {
                            status: r.get::<i64, _>("status") as u16,
                            body: r.get("response"),
                        }
                    } else {
                        Mutated::KeyReused
                    });
                }
            }
            let state: ServiceState = match sqlx::query("SELECT state FROM services WHERE name = $1")
                .bind(service)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
            {
                Some(r) => serde_json::from_str(&r.get::<String, _>("state"))
                    .map_err(|e| PortError::fatal("store", format!("stored state of {service}: {e}")))?,
                None => ServiceState::default(),
            };
            let (mut overrides, version) = Self::overrides_versioned(&mut *tx, service).await?;
            let done = match effect(&state, &mut overrides) {
                Ok(done) => done,
                Err(e) => return Ok(Mutated::Refused(e)),
            };
            // a webhook delivery counts once: seen before (within the window), nothing is written
            if let Some(delivery) = &done.delivery {
                let at = done.audit.at.millis() as i64;
                sqlx::query("DELETE FROM webhook_deliveries WHERE at < $1")
                    .bind(at - DELIVERY_WINDOW_MS)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let fresh = sqlx::query(
                    "INSERT INTO webhook_deliveries (id, service, at) VALUES ($1, $2, $3) ON CONFLICT(id) DO NOTHING",
                )
                .bind(delivery)
                .bind(service)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
                if fresh != 1 {
                    return Ok(Mutated::Repeated);
                }
            }
            let written: Result<Option<(u16, String)>, sqlx::Error> = async {
                if done.overrides_changed
                    && !Self::write_overrides(&mut *tx, service, version, &overrides)
                        .await
                        .map_err(|e| sqlx::Error::Protocol(e.message))?
                {
                    return Ok(None);
                }
                let kind = match (&done.image, done.fetch) {
                    (_, true) => Some("fetch"),
                    (Some(_), false) => done.build.as_ref().map(|_| "release"),
                    (None, false) => done.build.as_ref().map(|_| "build"),
                };
                if let Some(kind) = kind {
                    sqlx::query(
                        "INSERT INTO build_requests (service, commit_sha, who, reason, at, image, kind) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(service)
                    .bind(done.build.as_deref().unwrap_or_default())
                    .bind(&done.audit.who)
                    .bind(&done.audit.reason)
                    .bind(done.audit.at.millis() as i64)
                    .bind(&done.image)
                    .bind(kind)
                    .execute(&mut *tx)
                    .await?;
                }
                let a = &done.audit;
                let id: i64 = sqlx::query(
                    "INSERT INTO audit (service, environment, release, action, detail, who, reason, origin, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(service)
                .bind(&a.environment)
                .bind(&a.release)
                .bind(&a.action)
                .bind(json(&a.detail))
                .bind(&a.who)
                .bind(&a.reason)
                .bind(&a.origin)
                .bind(a.at.millis() as i64)
                .fetch_one(&mut *tx)
                .await?
                .get("id");
                let (status, body) = respond(id, &state, &overrides);
                if let Some(i) = idempotency {
                    sqlx::query("DELETE FROM idempotency WHERE at < $1")
                        .bind(i.now.millis() as i64 - KEY_RETENTION_MS)
                        .execute(&mut *tx)
                        .await?;
                    let stored = sqlx::query(
                        "INSERT INTO idempotency (token, key, request, status, response, at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT(token, key) DO NOTHING",
                    )
                    .bind(&i.token)
                    .bind(&i.key)
                    .bind(&i.request)
                    .bind(i64::from(status))
                    .bind(&body)
                    .bind(i.now.millis() as i64)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    // the same key raced in from another request: look again
                    if stored != 1 {
                        return Ok(None);
                    }
                }
                Ok(Some((status, body)))
            }
            .await;
            match written {
                Ok(Some((status, body))) => match tx.commit().await {
                    Ok(()) => {
                        self.changed.notify_one();
                        return Ok(Mutated::Done { status, body });
                    }
                    Err(e) => last_error = Some(e),
                },
                // another writer came first: roll back and try again on what it wrote
                Ok(None) => drop(tx),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.map(db_err).unwrap_or_else(|| {
            PortError::retry("store", format!("{service}: kept changing under this mutation"))
        }))
    }
}

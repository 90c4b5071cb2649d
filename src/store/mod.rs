//! The store: what the loop needs to survive a restart, in SQL (sqlx): SQLite in WAL mode under
//! the data directory by default, or PostgreSQL, chosen by the URL (`sqlite://…`,
//! `postgres://…`). Both run the same queries through sqlx's `Any` driver (`$1` placeholders,
//! `ON CONFLICT`, `RETURNING`: the SQL both understand) and their own migrations, kept in step.
//!
//! Kept: each service's state (releases, rollouts with the judge's memory, build queue) with a
//! version, the operators' overrides, every transition with its cause, the evidence at each
//! transition and the latest per objective, every action that failed, and the builder's and
//! runtime's own records (builds with their output, processes started).
//!
//! # Guarantees
//! - One tick's writes for a service are one transaction: all of it or none.
//! - [`Store::record`] names the version it loaded; a different stored version refuses the
//!   write, so two controllers never interleave.
//! - Migrations are compiled into the binary and run at open, one set per backend.
//! - Overrides carry a version too: the API and the loop both write them, by compare-and-swap.
//!
//! This module never decides anything; it only keeps what `plan` decided.

use crate::control::ports::{Loaded, PortError, Store};
use crate::control::rollout::*;
use crate::control::time::Time;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlSafeStr};
use std::path::Path;
use std::str::FromStr;

pub mod api;
pub mod postgres;

/// The schema, in order, per backend. Never edit a released migration: add one, to both.
const SQLITE: [(i64, &str, &str); 6] = [
    (1, "initial", include_str!("migrations/sqlite/0001_initial.sql")),
    (2, "api", include_str!("migrations/sqlite/0002_api.sql")),
    (3, "samples", include_str!("migrations/sqlite/0003_samples.sql")),
    (4, "artifact", include_str!("migrations/sqlite/0004_artifact.sql")),
    (5, "images", include_str!("migrations/sqlite/0005_images.sql")),
    (6, "webhooks", include_str!("migrations/sqlite/0006_webhooks.sql")),
];
const POSTGRES: [(i64, &str, &str); 6] = [
    (1, "initial", include_str!("migrations/postgres/0001_initial.sql")),
    (2, "api", include_str!("migrations/postgres/0002_api.sql")),
    (3, "samples", include_str!("migrations/postgres/0003_samples.sql")),
    (
        4,
        "artifact",
        include_str!("migrations/postgres/0004_artifact.sql"),
    ),
    (5, "images", include_str!("migrations/postgres/0005_images.sql")),
    (
        6,
        "webhooks",
        include_str!("migrations/postgres/0006_webhooks.sql"),
    ),
];

/// The chart's resolution: at most one sample per objective of a rollout this often (and one at
/// every transition). A 30-minute canary with three objectives keeps about 540 rows.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How many times a compare-and-swap of the overrides is tried before giving up (each retry
/// follows a write by someone else, so this is only reached under a storm of writers).
const CAS_TRIES: usize = 20;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a URL names.
    pub fn of(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("{url}: not a store URL (write `sqlite://PATH` or `postgres://USER@HOST:PORT/DATABASE`)")]
    Scheme { url: String },
    #[error("cannot open the store {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot migrate the store {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// The store, on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    url: String,
    backend: Backend,
    /// Told after every operator mutation, so a loop in the same process acts on it at once
    /// (another process on the same database sees it at its next tick).
    changed: std::sync::Arc<tokio::sync::Notify>,
}

pub(crate) fn db_err(e: sqlx::Error) -> PortError {
    PortError::retry("store", e.to_string())
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store records serialise")
}

/// A transition as stored, with the service it belongs to.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredTransition {
    pub service: String,
    #[serde(flatten)]
    pub transition: Transition,
}

/// A build as the builder recorded it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredBuild {
    pub seq: i64,
    pub service: String,
    pub commit: String,
    /// `running`, `built`, `failed`.
    pub status: String,
    pub started_at: Time,
    pub finished_at: Option<Time>,
    pub digest: Option<String>,
    pub release: Option<String>,
    pub output: String,
    pub error: Option<String>,
    /// `push`, or `request` (an operator asked for this commit).
    pub source: String,
    /// The service's objectives file as it was when the build started.
    pub config: Option<String>,
    /// Where the artifact can be pulled from (`registry/repository@sha256:…`), once pushed.
    pub artifact: Option<String>,
    /// The artifact's size in bytes (manifest and blobs), once it is in the layout.
    pub size: Option<i64>,
    /// Pushed commits this build made moot (skipped by coalescing).
    pub skipped: Vec<String>,
}

/// A phase name read back from the store.
fn stored_phase(name: &str) -> Result<PhaseKind, PortError> {
    name.parse()
        .map_err(|e: String| PortError::fatal("store", format!("a stored transition: {e}")))
}

impl StoredTransition {
    /// From a row of `transitions`.
    pub(crate) fn from_row(r: &sqlx::any::AnyRow) -> Result<StoredTransition, PortError> {
        let cause: String = r.get("cause");
        Ok(StoredTransition {
            service: r.get("service"),
            transition: Transition {
                environment: r.get("environment"),
                release: r.get("release"),
                from: r
                    .get::<Option<String>, _>("from_phase")
                    .map(|p| stored_phase(&p))
                    .transpose()?,
                to: stored_phase(&r.get::<String, _>("to_phase"))?,
                weight: crate::spec::units::Weight(r.get::<i64, _>("weight") as u8),
                cause: serde_json::from_str(&cause)
                    .map_err(|e| PortError::fatal("store", format!("a stored cause: {e}")))?,
                at: Time::from_millis(r.get::<i64, _>("at") as u64),
            },
        })
    }
}

impl StoredBuild {
    /// From a row with every column of `builds`.
    pub(crate) fn from_row(r: &sqlx::any::AnyRow) -> StoredBuild {
        StoredBuild {
            seq: r.get("seq"),
            service: r.get("service"),
            commit: r.get("commit_sha"),
            status: r.get("status"),
            started_at: Time::from_millis(r.get::<i64, _>("started_at") as u64),
            finished_at: r
                .get::<Option<i64>, _>("finished_at")
                .map(|t| Time::from_millis(t as u64)),
            digest: r.get("digest"),
            release: r.get("release"),
            output: r.get("output"),
            error: r.get("error"),
            source: r.get("source"),
            config: r.get("config"),
            artifact: r.get("artifact"),
            size: r.try_get::<Option<i64>, _>("size").ok().flatten(),
            skipped: r
                .try_get::<Option<String>, _>("skipped")
                .ok()
                .flatten()
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        }
    }
}

impl SqlStore {
    /// Opens (creating if needed) `autopilot.db` in `dir`, in WAL mode, and migrates it.
    pub async fn open_dir(dir: &Path) -> Result<SqlStore, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let url = format!("sqlite://{}", dir.join("autopilot.db").display());
        SqlStore::open(&url).await
    }

    /// Opens a store by URL (`sqlite://PATH` or `postgres://…`) and migrates it. A SQLite file
    /// is created if missing and put in WAL mode (readers never wait for the writer).
    pub async fn open(url: &str) -> Result<SqlStore, OpenError> {
        sqlx::any::install_default_drivers();
        let connect = |source| OpenError::Connect {
            url: redact(url),
            source,
        };
        let backend = Backend::of(url).ok_or_else(|| OpenError::Scheme { url: redact(url) })?;
        let migrations = match backend {
            Backend::Sqlite => {
                // WAL is a property of the file: set it once, through the SQLite driver
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(connect)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal);
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .map_err(connect)?
                    .close()
                    .await;
                &SQLITE[..]
            }
            Backend::Postgres => &POSTGRES[..],
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if url.contains(":memory:") { 1 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(connect)?;
        let migrations = migrations
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(*v, (*d).into(), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate {
                url: redact(url),
                source,
            })?;
        Ok(SqlStore {
            pool,
            url: url.to_owned(),
            backend,
            changed: Default::default(),
        })
    }

    /// Resolves after the next operator mutation through this store (or at once if one came
    /// since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the store is.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection pool, for the adapters that keep their own records here (builds,
    /// processes).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Every transition of a service (all services with `None`), oldest first.
    pub async fn transitions(&self, service: Option<&str>) -> Result<Vec<StoredTransition>, PortError> {
        let rows = sqlx::query(
            "SELECT service, environment, release, from_phase, to_phase, weight, cause, at \
             FROM transitions WHERE ($1 IS NULL OR service = $1) ORDER BY id",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(StoredTransition::from_row).collect()
    }

    /// Every build, oldest first.
    pub async fn builds(&self, service: Option<&str>) -> Result<Vec<StoredBuild>, PortError> {
        let rows = sqlx::query(
            "SELECT seq, service, commit_sha, status, started_at, finished_at, digest, release, output, error, \
             source, config, artifact, size, skipped FROM builds WHERE ($1 IS NULL OR service = $1) ORDER BY seq",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows.iter().map(StoredBuild::from_row).collect())
    }

    /// The latest judgement per (service, environment, objective).
    pub async fn latest_evidence(&self) -> Result<Vec<ObjectiveEvidence>, PortError> {
        self.evidence_of(None).await
    }

    /// The judge's latest word on each objective of one service's environments.
    pub async fn latest_evidence_of(&self, service: &str) -> Result<Vec<ObjectiveEvidence>, PortError> {
        self.evidence_of(Some(service)).await
    }

    async fn evidence_of(&self, service: Option<&str>) -> Result<Vec<ObjectiveEvidence>, PortError> {
        let query = match service {
            Some(s) => sqlx::query(
                "SELECT evidence FROM latest_evidence WHERE service = $1 ORDER BY environment, objective",
            )
            .bind(s),
            None => {
                sqlx::query("SELECT evidence FROM latest_evidence ORDER BY service, environment, objective")
            }
        };
        let rows = query.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                serde_json::from_str(&r.get::<String, _>("evidence"))
                    .map_err(|e| PortError::fatal("store", format!("stored evidence: {e}")))
            })
            .collect()
    }

    /// Every service's stored state.
    pub async fn states(&self) -> Result<Vec<(String, ServiceState)>, PortError> {
        let rows = sqlx::query("SELECT name, state FROM services ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                let state = serde_json::from_str(&r.get::<String, _>("state"))
                    .map_err(|e| PortError::fatal("store", format!("stored state: {e}")))?;
                Ok((r.get("name"), state))
            })
            .collect()
    }

    /// Sets a service's overrides whole (tests and the simulator's recordings; the API changes
    /// them through [`SqlStore::update_overrides`]).
    pub async fn set_overrides(&self, service: &str, overrides: &Overrides) -> Result<(), PortError> {
        self.update_overrides(service, |o| {
            *o = overrides.clone();
            Ok::<_, PortError>(())
        })
        .await?
    }

    /// A service's overrides with their version (0: never written).
    pub(crate) async fn overrides_versioned<'e, E>(
        executor: E,
        service: &str,
    ) -> Result<(Overrides, i64), PortError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let row = sqlx::query("SELECT overrides, version FROM overrides WHERE service = $1")
            .bind(service)
            .fetch_optional(executor)
            .await
            .map_err(db_err)?;
        match row {
            None => Ok((Overrides::default(), 0)),
            Some(r) => Ok((
                serde_json::from_str(&r.get::<String, _>("overrides"))
                    .map_err(|e| PortError::fatal("store", format!("stored overrides: {e}")))?,
                r.get::<i64, _>("version"),
            )),
        }
    }

    /// Writes `overrides` if the stored version is still `version`; false if someone else wrote
    /// first.
    pub(crate) async fn write_overrides<'e, E>(
        executor: E,
        service: &str,
        version: i64,
        overrides: &Overrides,
    ) -> Result<bool, PortError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let text = json(overrides);
        let written = if version == 0 {
            sqlx::query(
                "INSERT INTO overrides (service, overrides, version) VALUES ($1, $2, 1) \
                 ON CONFLICT(service) DO NOTHING",
            )
            .bind(service)
            .bind(text)
            .execute(executor)
            .await
        } else {
            sqlx::query(
                "UPDATE overrides SET overrides = $3, version = version + 1 WHERE service = $1 AND version = $2",
            )
            .bind(service)
            .bind(version)
            .bind(text)
            .execute(executor)
            .await
        };
        Ok(written.map_err(db_err)?.rows_affected() == 1)
    }

    /// Changes a service's overrides by compare-and-swap: `change` sees the latest, and runs
    /// again if another writer came first. An error from `change` writes nothing.
    pub async fn update_overrides<T, E>(
        &self,
        service: &str,
        mut change: impl FnMut(&mut Overrides) -> Result<T, E>,
    ) -> Result<Result<T, E>, PortError> {
        for _ in 0..CAS_TRIES {
            let (mut overrides, version) = Self::overrides_versioned(&self.pool, service).await?;
            let out = match change(&mut overrides) {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            if Self::write_overrides(&self.pool, service, version, &overrides).await? {
                return Ok(Ok(out));
            }
        }
        Err(PortError::retry(
            "store",
            format!("{service}: the overrides kept changing under this write"),
        ))
    }

    /// Closes the pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Store for SqlStore {
    async fn load(&mut self, service: &str) -> Result<Loaded, PortError> {
        let row = sqlx::query("SELECT version, state FROM services WHERE name = $1")
            .bind(service)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let (version, state) = match row {
            None => (0, ServiceState::default()),
            Some(r) => (
                r.get::<i64, _>("version") as u64,
                serde_json::from_str(&r.get::<String, _>("state"))
                    .map_err(|e| PortError::fatal("store", format!("stored state of {service}: {e}")))?,
            ),
        };
        Ok(Loaded {
            state,
            overrides: Self::overrides_versioned(&self.pool, service).await?.0,
            version,
        })
    }

    async fn record(
        &mut self,
        service: &str,
        version: u64,
        plan: &Plan,
        failures: &[(Action, PortError)],
    ) -> Result<(), PortError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let now = plan.transitions.first().map(|t| t.at);
        let state = json(&plan.state);
        let written = if version == 0 {
            sqlx::query(
                "INSERT INTO services (name, version, state) VALUES ($1, 1, $2) ON CONFLICT(name) DO NOTHING",
            )
            .bind(service)
            .bind(&state)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE services SET version = version + 1, state = $3 WHERE name = $1 AND version = $2",
            )
            .bind(service)
            .bind(version as i64)
            .bind(&state)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
        };
        if written != 1 {
            return Err(PortError::fatal(
                "store",
                format!("{service}: the stored state is no longer version {version} (another writer)"),
            ));
        }
        for t in &plan.transitions {
            sqlx::query(
                "INSERT INTO transitions (service, environment, release, from_phase, to_phase, weight, cause, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(service)
            .bind(&t.environment)
            .bind(&t.release)
            .bind(t.from.map(PhaseKind::as_str))
            .bind(t.to.as_str())
            .bind(i64::from(t.weight.0))
            .bind(json(&t.cause))
            .bind(t.at.millis() as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for e in &plan.evidence {
            let text = json(e);
            sqlx::query(
                "INSERT INTO latest_evidence (service, environment, objective, release, evidence) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT(service, environment, objective) \
                 DO UPDATE SET release = excluded.release, evidence = excluded.evidence",
            )
            .bind(service)
            .bind(&e.environment)
            .bind(&e.objective)
            .bind(&e.release)
            .bind(&text)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // the chart needs a point every few seconds, not every look: a look within
            // SAMPLE_EVERY of the last is kept only when it came with a transition
            let decided = plan.transitions.iter().any(|t| t.environment == e.environment);
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(at) FROM samples WHERE release = $1 AND environment = $2 AND objective = $3",
            )
            .bind(&e.release)
            .bind(&e.environment)
            .bind(&e.objective)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            let recent = last.is_some_and(|l| (e.at.millis() as i64) - l < SAMPLE_EVERY.as_millis() as i64);
            if recent && !decided {
                continue;
            }
            let (c, st) = (&e.judgement.evidence.canary, &e.judgement.evidence.stable);
            sqlx::query(
                "INSERT INTO samples (service, environment, release, objective, weight, \
                 canary_bad, canary_total, stable_bad, stable_total, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(service)
            .bind(&e.environment)
            .bind(&e.release)
            .bind(&e.objective)
            .bind(i64::from(e.weight))
            .bind(c.bad as i64)
            .bind(c.total as i64)
            .bind(st.bad as i64)
            .bind(st.total as i64)
            .bind(e.at.millis() as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // the evidence behind a transition is kept for good
            if let Some(at) = now
                && decided
            {
                sqlx::query(
                    "INSERT INTO evidence (service, environment, release, objective, evidence, at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(service)
                .bind(&e.environment)
                .bind(&e.release)
                .bind(&e.objective)
                .bind(&text)
                .bind(at.millis() as i64)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
        }
        if !plan.consumed.is_empty() {
            // the one-shots this plan carried out are lifted with it, or not at all; the
            // overrides have their own version (operators write them), checked here too
            let mut lifted = false;
            for _ in 0..CAS_TRIES {
                let (mut overrides, v) = Self::overrides_versioned(&mut *tx, service).await?;
                overrides.consume(&plan.consumed);
                if Self::write_overrides(&mut *tx, service, v, &overrides).await? {
                    lifted = true;
                    break;
                }
            }
            if !lifted {
                return Err(PortError::retry(
                    "store",
                    format!("{service}: the overrides kept changing under this tick"),
                ));
            }
        }
        for (action, error) in failures {
            sqlx::query("INSERT INTO failures (service, action, error) VALUES ($1, $2, $3)")
                .bind(service)
                .bind(json(action))
                .bind(error.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}

/// A store URL fit for messages: the password replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

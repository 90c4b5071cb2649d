//! The store: what the loop needs to survive a restart, in SQL (sqlx; SQLite in WAL mode under
//! the data directory by default).
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
//! - Migrations are compiled into the binary and run at open.
//!
//! This module never decides anything; it only keeps what `plan` decided.

use crate::control::ports::{Loaded, PortError, Store};
use crate::control::rollout::*;
use crate::control::time::Time;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlSafeStr, SqlitePool};
use std::path::Path;
use std::str::FromStr;

/// The schema, in order. Never edit a released migration: add one.
const MIGRATIONS: [(i64, &str, &str); 1] = [(1, "initial", include_str!("migrations/0001_initial.sql"))];

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("cannot open the store {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot migrate the store {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: SqlitePool,
    url: String,
}

fn db_err(e: sqlx::Error) -> PortError {
    PortError::retry("store", e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> String {
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

    /// Opens a store by URL (`sqlite://PATH` or `sqlite::memory:`) and migrates it.
    pub async fn open(url: &str) -> Result<SqlStore, OpenError> {
        let connect = |source| OpenError::Connect {
            url: url.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(connect)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(connect)?;
        let migrations = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(*v, (*d).into(), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate {
                url: url.to_owned(),
                source,
            })?;
        Ok(SqlStore {
            pool,
            url: url.to_owned(),
        })
    }

    /// Where the store is.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection pool, for the adapters that keep their own records here (builds,
    /// processes).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Every transition of a service (all services with `None`), oldest first.
    pub async fn transitions(&self, service: Option<&str>) -> Result<Vec<StoredTransition>, PortError> {
        let rows = sqlx::query(
            "SELECT service, environment, release, from_phase, to_phase, weight, cause, at \
             FROM transitions WHERE (?1 IS NULL OR service = ?1) ORDER BY id",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                let cause: String = r.get("cause");
                Ok(StoredTransition {
                    service: r.get("service"),
                    transition: Transition {
                        environment: r.get("environment"),
                        release: r.get("release"),
                        from: r.get("from_phase"),
                        to: r.get("to_phase"),
                        weight: crate::spec::units::Weight(r.get::<i64, _>("weight") as u8),
                        cause: serde_json::from_str(&cause)
                            .map_err(|e| PortError::fatal("store", format!("a stored cause: {e}")))?,
                        at: Time::from_millis(r.get::<i64, _>("at") as u64),
                    },
                })
            })
            .collect()
    }

    /// Every build, oldest first.
    pub async fn builds(&self, service: Option<&str>) -> Result<Vec<StoredBuild>, PortError> {
        let rows = sqlx::query(
            "SELECT seq, service, commit_sha, status, started_at, finished_at, digest, release, output, error \
             FROM builds WHERE (?1 IS NULL OR service = ?1) ORDER BY seq",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|r| StoredBuild {
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
            })
            .collect())
    }

    /// The latest judgement per (service, environment, objective), as JSON values.
    pub async fn latest_evidence(&self) -> Result<Vec<ObjectiveEvidence>, PortError> {
        let rows =
            sqlx::query("SELECT evidence FROM latest_evidence ORDER BY service, environment, objective")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
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

    /// Sets a service's overrides (what the API will write).
    pub async fn set_overrides(&self, service: &str, overrides: &Overrides) -> Result<(), PortError> {
        sqlx::query(
            "INSERT INTO overrides (service, overrides) VALUES (?1, ?2) \
             ON CONFLICT(service) DO UPDATE SET overrides = excluded.overrides",
        )
        .bind(service)
        .bind(json(overrides))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn overrides(&self, service: &str) -> Result<Overrides, PortError> {
        let row = sqlx::query("SELECT overrides FROM overrides WHERE service = ?1")
            .bind(service)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        match row {
            None => Ok(Overrides::default()),
            Some(r) => serde_json::from_str(&r.get::<String, _>("overrides"))
                .map_err(|e| PortError::fatal("store", format!("stored overrides: {e}"))),
        }
    }

    /// Closes the pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Store for SqlStore {
    async fn load(&mut self, service: &str) -> Result<Loaded, PortError> {
        let row = sqlx::query("SELECT version, state FROM services WHERE name = ?1")
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
            overrides: self.overrides(service).await?,
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
                "INSERT INTO services (name, version, state) VALUES (?1, 1, ?2) ON CONFLICT(name) DO NOTHING",
            )
            .bind(service)
            .bind(&state)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE services SET version = version + 1, state = ?3 WHERE name = ?1 AND version = ?2",
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(service)
            .bind(&t.environment)
            .bind(&t.release)
            .bind(&t.from)
            .bind(&t.to)
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
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(service, environment, objective) \
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
            // the evidence behind a transition is kept for good
            if let Some(at) = now
                && plan.transitions.iter().any(|t| t.environment == e.environment)
            {
                sqlx::query(
                    "INSERT INTO evidence (service, environment, release, objective, evidence, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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
        for (action, error) in failures {
            sqlx::query("INSERT INTO failures (service, action, error) VALUES (?1, ?2, ?3)")
                .bind(service)
                .bind(json(action))
                .bind(error.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn clear_override(
        &mut self,
        service: &str,
        environment: &str,
        which: OneShot,
    ) -> Result<(), PortError> {
        let mut overrides = self.overrides(service).await?;
        if let Some(o) = overrides.environments.get_mut(environment) {
            match which {
                OneShot::Promote => o.promote = None,
                OneShot::Rollback => o.rollback = None,
                OneShot::Resume => o.resume = None,
            }
            self.set_overrides(service, &overrides).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_with(state: ServiceState) -> Plan {
        Plan {
            state,
            actions: Vec::new(),
            transitions: Vec::new(),
            evidence: Vec::new(),
            notes: Vec::new(),
            next_check: Time::ZERO,
        }
    }

    #[tokio::test]
    async fn a_stale_version_is_refused_and_nothing_of_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SqlStore::open_dir(dir.path()).await.unwrap();
        let mut b = SqlStore::open_dir(dir.path()).await.unwrap();
        let loaded_a = a.load("svc").await.unwrap();
        let loaded_b = b.load("svc").await.unwrap();
        assert_eq!(loaded_a.version, 0);
        let mut p = plan_with(ServiceState::default());
        p.transitions.push(Transition {
            environment: "dev".into(),
            release: "r1".into(),
            from: None,
            to: "waiting".into(),
            weight: crate::spec::units::Weight(0),
            cause: Cause::Candidate,
            at: Time::from_secs(5),
        });
        a.record("svc", loaded_a.version, &p, &[]).await.unwrap();
        // b loaded the same version before a wrote: refused, and its transition not kept
        let err = b.record("svc", loaded_b.version, &p, &[]).await.unwrap_err();
        assert!(err.message.contains("another writer"), "{err}");
        assert_eq!(a.transitions(Some("svc")).await.unwrap().len(), 1);
        let again = b.load("svc").await.unwrap();
        assert_eq!(again.version, 1);
        b.record("svc", again.version, &plan_with(ServiceState::default()), &[])
            .await
            .unwrap();
        assert_eq!(a.load("svc").await.unwrap().version, 2);
    }

    #[tokio::test]
    async fn state_and_overrides_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ServiceState::default();
        state.releases.push(Release {
            id: "r1".into(),
            commit: "abc".into(),
            digest: "sha256:00".into(),
        });
        {
            let mut s = SqlStore::open_dir(dir.path()).await.unwrap();
            s.record("svc", 0, &plan_with(state.clone()), &[]).await.unwrap();
            let mut ov = Overrides::default();
            ov.environments.entry("dev".into()).or_default().promote = Some(Actor {
                who: "ann".into(),
                reason: "hotfix".into(),
            });
            s.set_overrides("svc", &ov).await.unwrap();
            s.close().await;
        }
        let mut s = SqlStore::open_dir(dir.path()).await.unwrap();
        let loaded = s.load("svc").await.unwrap();
        assert_eq!(loaded.state, state);
        assert!(loaded.overrides.environments["dev"].promote.is_some());
        s.clear_override("svc", "dev", OneShot::Promote).await.unwrap();
        assert!(
            s.load("svc").await.unwrap().overrides.environments["dev"]
                .promote
                .is_none()
        );
    }
}

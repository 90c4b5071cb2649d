//! `autopilot bench api`: the API's latency on both stores, with 10,000 releases stored.
//!
//! Per backend (SQLite in a temporary file; PostgreSQL, a throwaway server on loopback), over a
//! real socket with one keep-alive client, one request at a time:
//! - **reference**: an unknown path (the server's 404, no token check, no store): the HTTP floor;
//! - **store only**: `releases()` called directly (no HTTP), the newest page of 50;
//! - **list releases**: `GET /v1/services/checkout/releases?limit=50`, newest page and a page
//!   from the middle (by cursor);
//! - **override round trip**: `POST …/actions` pause then resume, each with its own
//!   idempotency key, waiting for the answer (its transaction committed).
//!
//! Writes `api.md` and `api.csv` into the output folder.

use autopilot::api::{ApiSettings, ApiState};
use autopilot::control::plan::PlanSpec;
use autopilot::control::ports::Store;
use autopilot::control::rollout::*;
use autopilot::control::time::Time;
use autopilot::spec::units::Weight;
use autopilot::store::SqlStore;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One measured series.
struct Series {
    backend: &'static str,
    what: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn pct(&self, p: f64) -> f64 {
        let mut s: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        s.sort_by(f64::total_cmp);
        let i = ((s.len() as f64 - 1.0) * p).round() as usize;
        s[i.min(s.len() - 1)]
    }
}

async fn seed(store: &mut SqlStore, releases: usize) -> Result<(), String> {
    let e = |e: sqlx::Error| e.to_string();
    let mut tx = store.pool().begin().await.map_err(e)?;
    for i in 0..releases {
        sqlx::query(
            "INSERT INTO builds (service, commit_sha, status, started_at, finished_at, digest, release, output, config) \
             VALUES ('checkout', $1, 'built', $2, $3, $4, $5, $6, $7)",
        )
        .bind(format!("{i:040x}"))
        .bind(i as i64 * 1000)
        .bind(i as i64 * 1000 + 500)
        .bind(format!("sha256:{i:064x}"))
        .bind(format!("r{i:012x}"))
        .bind("build output\n".repeat(20))
        .bind("kind: Service\n")
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    }
    tx.commit().await.map_err(e)?;
    // what autovacuum (PostgreSQL) does within a minute of a bulk load; without statistics
    // PostgreSQL's planner sorted all 10,000 rows per page (5 ms instead of 0.1)
    sqlx::query("ANALYZE").execute(store.pool()).await.map_err(e)?;
    let mut state = ServiceState::default();
    for id in ["r1", "r2"] {
        state.releases.push(Release {
            id: id.into(),
            commit: id.into(),
            digest: format!("sha256:{id}"),
        });
    }
    let env = state.environments.entry("prod".into()).or_default();
    env.stable = Some("r1".into());
    env.rollout = Some(Rollout {
        release: "r2".into(),
        phase: Phase::Canary {
            step: 0,
            weight: Weight(10),
            since: Time::ZERO,
        },
        started_at: Time::ZERO,
        judges: Default::default(),
        watches: Default::default(),
        excess_bad: 0.0,
    });
    let plan = Plan {
        state,
        actions: Vec::new(),
        transitions: Vec::new(),
        evidence: Vec::new(),
        notes: Vec::new(),
        next_check: Time::ZERO,
        consumed: Vec::new(),
    };
    store
        .record("checkout", 0, &plan, &[])
        .await
        .map_err(|e| e.to_string())
}

async fn time<F: std::future::Future<Output = Result<(), String>>>(
    n: usize,
    mut f: impl FnMut(usize) -> F,
) -> Result<Vec<Duration>, String> {
    for i in 0..n / 10 {
        f(i).await?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

async fn measure(backend: &'static str, url: &str, releases: usize, n: usize) -> Result<Vec<Series>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = autopilot::spec::load(&["objectives", "sensors", "controllers"].map(|d| dir.join(d)))
        .map_err(|_| "the example specs do not load".to_owned())?;
    let specs: Vec<PlanSpec> = catalog
        .services
        .keys()
        .filter_map(|s| PlanSpec::resolve(&catalog, s))
        .collect();
    let mut store = SqlStore::open(url).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    seed(&mut store, releases).await?;
    eprintln!(
        "{backend}: {releases} releases stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let token = store
        .create_token("bench", "operator", &[])
        .await
        .map_err(|e| e.to_string())?;
    let state = ApiState {
        store: store.clone(),
        catalog: Arc::new(catalog),
        specs: Arc::new(specs),
        settings: Arc::new(ApiSettings {
            open_reads: false,
            webhook_secret: None,
            webhook_secret_variable: "AUTOPILOT_WEBHOOK_SECRET".into(),
            domain: "example.test".into(),
            public_port: None,
            scheme: "http",
        }),
        clock: Arc::new(autopilot::clock::wall_clock),
        discovery: None,
        streams: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(autopilot::app::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let get = |path: String| {
        let req = client.get(format!("{base}{path}")).bearer_auth(&token);
        async move {
            let res = req.send().await.map_err(|e| e.to_string())?;
            let status = res.status();
            res.bytes().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(status)
        }
    };
    let mut out = Vec::new();
    let floor = time(n, |_| {
        let f = get("/v1/no-such-path".into());
        async move { f.await.map(drop) }
    })
    .await?;
    out.push(Series {
        backend,
        what: "reference: HTTP 404, no store",
        samples: floor,
    });
    let direct = time(n, |_| {
        let s = store.clone();
        async move {
            s.releases("checkout", None, 51)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    out.push(Series {
        backend,
        what: "store only: newest 50",
        samples: direct,
    });
    let listed = |path: String| {
        let f = get(path);
        async move {
            match f.await? {
                s if s.is_success() => Ok(()),
                s => Err(format!("list releases: {s}")),
            }
        }
    };
    let newest = time(n, |_| listed("/v1/services/checkout/releases?limit=50".into())).await?;
    out.push(Series {
        backend,
        what: "list releases: newest 50",
        samples: newest,
    });
    let middle = time(n, |_| {
        listed(format!(
            "/v1/services/checkout/releases?limit=50&cursor={}",
            releases / 2
        ))
    })
    .await?;
    out.push(Series {
        backend,
        what: "list releases: 50 from the middle",
        samples: middle,
    });
    let act = format!("{base}/v1/services/checkout/environments/prod/actions");
    let overrides = time(n, |i| {
        let body = if i % 2 == 0 {
            r#"{"action":"pause","reason":"bench"}"#
        } else {
            r#"{"action":"resume","reason":"bench"}"#
        };
        let req = client
            .post(&act)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                format!("bench-{i}-{}", started.elapsed().as_nanos()),
            )
            .body(body);
        async move {
            let res = req.send().await.map_err(|e| e.to_string())?;
            let status = res.status();
            let text = res.text().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("override: {status} {text}"))
            }
        }
    })
    .await?;
    out.push(Series {
        backend,
        what: "override round trip (pause/resume)",
        samples: overrides,
    });
    let _ = stop.send(());
    let _ = server.await;
    store.close().await;
    Ok(out)
}

/// Runs the benchmark on both backends; writes `api.md` and `api.csv` into `out`.
pub async fn run(out: &Path, releases: usize, n: usize) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut series = measure("sqlite", &sqlite, releases, n).await?;
    let pg = autopilot::store::postgres::TempPostgres::start()?;
    let url = pg.database().await?;
    series.extend(measure("postgres", &url, releases, n).await?);
    drop(pg);
    let mut md = format!(
        "# API latency ({releases} releases stored, {n} requests each, one at a time over loopback)\n\n\
         | backend | what | p50 ms | p99 ms |\n|---|---|---:|---:|\n"
    );
    let mut csv = String::from("backend,what,p50_ms,p99_ms,n\n");
    for s in &series {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} |\n",
            s.backend,
            s.what,
            s.pct(0.5),
            s.pct(0.99)
        ));
        csv.push_str(&format!(
            "{},{},{:.4},{:.4},{}\n",
            s.backend,
            s.what,
            s.pct(0.5),
            s.pct(0.99),
            s.samples.len()
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("api.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("api.csv"), csv).map_err(|e| e.to_string())?;
    Ok(md)
}

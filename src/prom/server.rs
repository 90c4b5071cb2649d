//! A throwaway Prometheus on a free loopback port with a temporary data directory, and a small
//! exporter whose counters the caller drives — for the tests, `autopilot bench sensors` and the
//! README's walk-through. Never for production.
//!
//! # Assumptions
//! Prometheus is installed (`apt-get install prometheus`, the binary at `/usr/bin/prometheus`
//! or on `PATH`). The Debian package also starts a system Prometheus on :9090; this one never
//! uses that port.

use axum::extract::State;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a fresh Prometheus may take to be ready (it takes well under a second here).
const READY: Duration = Duration::from_secs(30);

/// A running temporary Prometheus; dropping it stops it and removes its data.
#[derive(Debug)]
pub struct TempPrometheus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    config: String,
    /// `--web.config.file` (TLS, basic auth): readiness is then a listening port.
    web_config: Option<String>,
}

fn free_port() -> Result<u16, String> {
    crate::net::free_loopback()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl TempPrometheus {
    /// Starts Prometheus with these `scrape_configs` entries (YAML, indented as list items) and
    /// a global scrape interval. `{dir}` in them is this server's own folder, which has an
    /// empty `targets/` for file_sd files.
    pub fn start(scrape_interval: Duration, scrape_configs: &str) -> Result<TempPrometheus, String> {
        Self::start_with_web(scrape_interval, scrape_configs, None)
    }

    /// Like [`TempPrometheus::start`], with a web configuration (Prometheus'
    /// `--web.config.file`: `tls_server_config`, `basic_auth_users`). `{dir}` in it is this
    /// server's folder.
    pub fn start_with_web(
        scrape_interval: Duration,
        scrape_configs: &str,
        web_config: Option<&str>,
    ) -> Result<TempPrometheus, String> {
        let dir = tempfile::Builder::new()
            .prefix("autopilot-prom-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        std::fs::create_dir(dir.path().join("targets")).map_err(|e| e.to_string())?;
        let config = format!(
            "global:\n  scrape_interval: {}ms\n  evaluation_interval: {}ms\nscrape_configs:\n{}",
            scrape_interval.as_millis(),
            scrape_interval.as_millis(),
            scrape_configs.replace("{dir}", &dir.path().display().to_string())
        );
        let mut p = TempPrometheus {
            child: None,
            dir,
            port: free_port()?,
            config,
            web_config: None,
        };
        p.web_config = web_config.map(|w| w.replace("{dir}", &p.dir.path().display().to_string()));
        p.launch()?;
        Ok(p)
    }

    /// Like [`TempPrometheus::start`], with history already in its database: OpenMetrics text
    /// (samples with timestamps, ending in `# EOF`) backfilled by `promtool tsdb
    /// create-blocks-from openmetrics` before the server starts — real data over a past range.
    pub fn start_with_history(
        scrape_interval: Duration,
        scrape_configs: &str,
        openmetrics: &str,
    ) -> Result<TempPrometheus, String> {
        let mut p = Self::start(scrape_interval, scrape_configs)?;
        p.pause();
        let input = p.dir.path().join("history.om");
        std::fs::write(&input, openmetrics).map_err(|e| e.to_string())?;
        let out = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(p.dir.path().join("data"))
            .output()
            .map_err(|e| format!("cannot run promtool (apt-get install prometheus): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "promtool could not backfill: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        p.resume()?;
        Ok(p)
    }

    fn launch(&mut self) -> Result<(), String> {
        let config_file = self.dir.path().join("prometheus.yml");
        std::fs::write(&config_file, &self.config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(self.dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new("prometheus");
        if let Some(web) = &self.web_config {
            let file = self.dir.path().join("web.yml");
            std::fs::write(&file, web).map_err(|e| e.to_string())?;
            command.arg(format!("--web.config.file={}", file.display()));
        }
        let child = command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--web.enable-lifecycle")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start prometheus (apt-get install prometheus): {e}"))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY;
        loop {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("prometheus exited ({status}): {}", self.log_tail()));
            }
            if self.web_config.is_some() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "prometheus was not ready within {READY:?}: {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of Prometheus' log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A folder of this server's that the caller may use (file_sd files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Freezes the process (SIGSTOP) or thaws it (SIGCONT): connections open, no answer comes —
    /// a Prometheus too slow to answer.
    pub fn freeze(&mut self, frozen: bool) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let sig = if frozen {
                nix::sys::signal::Signal::SIGSTOP
            } else {
                nix::sys::signal::Signal::SIGCONT
            };
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }

    /// Stops the server, keeping its data (unreachable until [`TempPrometheus::resume`]).
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) -> Result<(), String> {
        if self.child.is_none() {
            self.launch()?;
        }
        Ok(())
    }
}

impl Drop for TempPrometheus {
    fn drop(&mut self) {
        self.pause();
    }
}

/// Series text (`name{labels}`) → value.
type Values = Arc<Mutex<BTreeMap<String, f64>>>;

/// A Prometheus exporter serving counters the caller sets, on a free loopback port.
#[derive(Debug)]
pub struct Exporter {
    pub addr: SocketAddr,
    values: Values,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn metrics(State(values): State<Values>) -> String {
    let values = values.lock().expect("exporter values");
    let mut out = String::with_capacity(values.len() * 96);
    for (series, v) in values.iter() {
        out.push_str(series);
        out.push(' ');
        if v.is_nan() {
            out.push_str("NaN");
        } else {
            out.push_str(&v.to_string());
        }
        out.push('\n');
    }
    out
}

impl Exporter {
    /// Serves `/metrics` on a free loopback port.
    pub async fn start() -> std::io::Result<Exporter> {
        Self::start_on("127.0.0.1:0".parse().expect("address"), Values::default()).await
    }

    /// Serves `/metrics` on `addr`.
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<Exporter> {
        Self::start_on(addr, Values::default()).await
    }

    async fn start_on(addr: SocketAddr, values: Values) -> std::io::Result<Exporter> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(metrics))
            .with_state(values.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Exporter {
            addr,
            values,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Sets a series (`name{a="b"}`) to a value.
    pub fn set(&self, series: &str, value: f64) {
        self.values
            .lock()
            .expect("exporter values")
            .insert(series.to_owned(), value);
    }

    /// Adds to a series (starting at zero).
    pub fn add(&self, series: &str, delta: f64) {
        *self
            .values
            .lock()
            .expect("exporter values")
            .entry(series.to_owned())
            .or_insert(0.0) += delta;
    }

    /// Sets every series at once (for many series).
    pub fn replace(&self, values: BTreeMap<String, f64>) {
        *self.values.lock().expect("exporter values") = values;
    }

    /// Stops serving (scrapes fail) — the process "died".
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Serves again on the same address; `reset` restarts every counter from zero, as a
    /// restarted process would.
    pub async fn restart(&mut self, reset: bool) -> std::io::Result<()> {
        self.stop().await;
        if reset {
            for v in self.values.lock().expect("exporter values").values_mut() {
                *v = 0.0;
            }
        }
        let fresh = Self::start_on(self.addr, self.values.clone()).await?;
        self.stop = fresh.stop;
        self.task = fresh.task;
        Ok(())
    }
}

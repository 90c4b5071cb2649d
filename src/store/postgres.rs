//! A throwaway PostgreSQL server on a free loopback port with a temporary data directory, for
//! the tests and the API benchmark (`autopilot bench api`). Never for production: it trusts
//! every local connection and runs with `fsync=off`.
//!
//! # Assumptions
//! PostgreSQL's server binaries are installed (`apt-get install postgresql`, under
//! `/usr/lib/postgresql/VERSION/bin`). `initdb` refuses to run as root, so when we are root the
//! server runs as the `postgres` user, which then owns the data directory.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a fresh server may take to accept connections (it takes well under 1 s here).
const READY: Duration = Duration::from_secs(30);

/// A running temporary server; dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct TempPostgres {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    databases: std::sync::atomic::AtomicU32,
}

/// The newest installed PostgreSQL's `bin` folder.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("PostgreSQL is not installed (/usr/lib/postgresql: {e}); apt-get install postgresql")
        })?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no PostgreSQL server binaries under /usr/lib/postgresql".into())
}

/// The `postgres` user's (uid, gid) when we are root; `None` otherwise.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .map_err(|e| e.to_string())?
        .ok_or("running as root, and there is no `postgres` user to run the server as")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn command(bin: &Path, name: &str, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin.join(name));
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c.stdin(Stdio::null());
    c
}

impl TempPostgres {
    /// Initialises a cluster in a temporary directory and starts it on a free loopback port.
    pub fn start() -> Result<TempPostgres, String> {
        let bin = bin_dir()?;
        let user = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("autopilot-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            for p in [dir.path(), data.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| e.to_string())?;
        }
        let init = command(&bin, "initdb", user)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "autopilot", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !init.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        let port = crate::net::free_loopback().map_err(|e| e.to_string())?.port();
        let log = std::fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(uid), Some(gid))
                .map_err(|e| e.to_string())?;
        }
        let child = command(&bin, "postgres", user)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200"])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        let mut server = TempPostgres {
            child,
            dir,
            port,
            databases: Default::default(),
        };
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("postgres exited ({status}): {}", server.log()));
            }
            // accepting TCP is not yet accepting logins: ask pg_isready
            let ready = command(&bin, "pg_isready", None)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "autopilot",
                    "-q",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres was not ready within {READY:?}: {}",
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The URL of the cluster's default database.
    pub fn url(&self) -> String {
        format!("postgres://autopilot@127.0.0.1:{}/postgres", self.port)
    }

    /// A new, empty database on this server (one per test keeps tests apart), and its URL.
    pub async fn database(&self) -> Result<String, String> {
        let n = self.databases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t{n}");
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url())
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("postgres://autopilot@127.0.0.1:{}/{name}", self.port))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // SIGINT: "fast shutdown" (disconnect clients, stop at once)
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

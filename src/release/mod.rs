//! The embedded builder: a git repository polled on its branch — a local path read directly, or
//! a remote (`https://`, `ssh://`, `git@host:`, `file://`) fetched into a bare mirror in the
//! data directory — each build run in a clean `git worktree` at the exact commit, its files
//! packed into an OCI image layout on disk (and pushed to a registry when one is configured).
//!
//! - [`oci`] — the layout (pack, unpack, reproducible digests).
//! - [`registry`] — pushing artifacts to an OCI registry and pulling them back by digest.
//! - [`LocalBuilder`] — the [`Builder`] port. Builds run as background tasks; their status and
//!   full output (stdout and stderr, interleaved) are kept in the store's `builds` table, and
//!   their end reaches `plan` as a finished-build event.
//!
//! # Guarantees
//! - A commit is built at most once (`start_build` of a built or running commit does nothing);
//!   a build interrupted by a stop of autopilot is run again at the next start.
//! - A build that fails or times out is recorded with its output and never becomes a release.
//! - With a registry, a build is a release only once its artifact is in the registry: until
//!   then it is `pushing`, retried with backoff (each failure in its output), and carried on
//!   after a restart.
//! - Events are acknowledged by cursor: pushes and finished builds come again until the tick
//!   that used them is recorded.
//! - A remote that cannot be reached is fetched again at each interval (and said so once per
//!   outage); builds go on from the mirror's last state. Git never prompts: credentials come
//!   from the environment (an SSH agent or key, a credential helper, a token in the URL).

pub mod oci;
pub mod registry;

use crate::control::ports::{Builder, PortError, SourceEvents};
use crate::control::rollout::{BuildOutcome, Release};
use crate::spec::objectives::{Artifact, ServiceSpec};
use crate::store::SqlStore;
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// A build's output beyond this is cut from the front (the end says why it failed).
const MAX_OUTPUT: usize = 1 << 20;
/// The first wait after a failed push, doubled after each failure up to [`PUSH_BACKOFF_MAX`].
const PUSH_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
const PUSH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest a fetch of a remote may take.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

use crate::clock::wall_clock;

/// The release id of an artifact: a DNS label (it becomes a preview host name) made of the
/// digest, so a release is named by what it is.
pub fn release_id(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("r{}", &hex[..hex.len().min(12)])
}

/// A repository named by URL (fetched into a mirror) rather than by a local path.
pub fn is_remote(repository: &str) -> bool {
    if repository.contains("://") {
        return true;
    }
    // scp-like `user@host:path` (a local path has no `:` before its first `/`)
    match repository.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/'),
        None => false,
    }
}

/// A remote's last fetch: when it was tried, and why it failed if it did.
#[derive(Debug, Clone)]
struct Fetched {
    at: std::time::Instant,
    problem: Option<String>,
}

/// What the builder needs of one service.
#[derive(Debug, Clone)]
struct Recipe {
    /// The repository builds read: the local one, or the mirror of the remote.
    repository: PathBuf,
    /// The remote's URL, fetched into `repository` every `poll`.
    remote: Option<String>,
    poll: std::time::Duration,
    branch: String,
    path: Option<String>,
    command: String,
    artifact: Artifact,
    timeout: std::time::Duration,
    /// The service's objectives file, kept with each build as its config.
    spec_file: Option<PathBuf>,
}

/// The embedded builder.
#[derive(Debug, Clone)]
pub struct LocalBuilder {
    recipes: Arc<BTreeMap<String, Recipe>>,
    store: SqlStore,
    pool: AnyPool,
    layout: oci::Layout,
    work: PathBuf,
    /// Where artifacts are pushed (none: they stay in the layout).
    registry: Option<Arc<registry::Registry>>,
    /// Each remote's last fetch.
    fetched: Arc<std::sync::Mutex<BTreeMap<String, Fetched>>>,
    /// Services whose releases are built elsewhere: the image repository each comes from.
    external: Arc<BTreeMap<String, String>>,
}

/// What a successful build made: the digest, and where the artifact already is when the build
/// put it in a registry itself (an image).
struct Made {
    digest: String,
    artifact: Option<String>,
}

async fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(Stdio::null())
        // never wait on a person: no password prompt, no host-key question
        .env("GIT_TERMINAL_PROMPT", "0")
        .env(
            "GIT_SSH_COMMAND",
            std::env::var("GIT_SSH_COMMAND").unwrap_or_else(|_| "ssh -o BatchMode=yes".into()),
        )
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("git {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The bare mirror of a remote (made if absent; its `origin` set to `url`, which may change).
async fn mirror(mirrors: &Path, service: &str, url: &str) -> Result<PathBuf, String> {
    let dir = mirrors.join(format!("{service}.git"));
    if !dir.join("HEAD").exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        git(&dir, &["init", "--bare", "-q"]).await?;
    }
    git(&dir, &["config", "remote.origin.url", url]).await?;
    Ok(dir)
}

fn db(e: sqlx::Error) -> PortError {
    PortError::retry("builder", e.to_string())
}

impl LocalBuilder {
    /// A builder for these services, keeping artifacts in `data/artifacts` (an OCI layout) and
    /// checkouts in `data/work`. Builds a previous run left unfinished are started again.
    pub async fn new(
        services: &[ServiceSpec],
        spec_files: &BTreeMap<String, PathBuf>,
        base: &Path,
        data: &Path,
        store: SqlStore,
    ) -> Result<Self, String> {
        Self::with_registry(services, spec_files, base, data, store, None).await
    }

    /// As [`LocalBuilder::new`], pushing every artifact to `registry` too (a release is made
    /// only once its artifact is there); pushes a previous run left unfinished go on.
    pub async fn with_registry(
        services: &[ServiceSpec],
        spec_files: &BTreeMap<String, PathBuf>,
        base: &Path,
        data: &Path,
        store: SqlStore,
        registry: Option<registry::Registry>,
    ) -> Result<Self, String> {
        let mut recipes = BTreeMap::new();
        let mut external = BTreeMap::new();
        for s in services {
            let (Some(source), Some(build)) = (&s.source, &s.build) else {
                match &s.run.image {
                    Some(image) if s.build.is_none() => {
                        external.insert(s.name.clone(), image.clone());
                    }
                    _ => {
                        return Err(format!(
                            "{}: a service needs `build` and `source`, or `run.image` (releases built elsewhere)",
                            s.name
                        ));
                    }
                }
                continue;
            };
            let remote = is_remote(&source.repository).then(|| source.repository.clone());
            let repository = match &remote {
                Some(url) => mirror(&data.join("mirrors"), &s.name, url).await?,
                None => {
                    let repo = Path::new(&source.repository);
                    if repo.is_absolute() {
                        repo.to_owned()
                    } else {
                        base.join(repo)
                    }
                }
            };
            recipes.insert(
                s.name.clone(),
                Recipe {
                    repository,
                    remote,
                    poll: source.poll_interval.0,
                    branch: source.branch.clone(),
                    path: source.path.clone(),
                    command: build.command.clone(),
                    artifact: build.artifact.clone(),
                    timeout: build.timeout.0,
                    spec_file: spec_files.get(&s.name).cloned(),
                },
            );
        }
        let layout = oci::Layout::open(&data.join("artifacts")).map_err(|e| e.to_string())?;
        let builder = LocalBuilder {
            recipes: Arc::new(recipes),
            pool: store.pool().clone(),
            store,
            layout,
            work: data.join("work"),
            registry: registry.map(Arc::new),
            fetched: Default::default(),
            external: Arc::new(external),
        };
        let interrupted = sqlx::query(
            "SELECT service, commit_sha, status, digest, output, artifact FROM builds WHERE status IN ('running', 'pushing', 'pulling')",
        )
        .fetch_all(&builder.pool)
        .await
        .map_err(|e| e.to_string())?;
        for row in interrupted {
            let (service, commit): (String, String) = (row.get("service"), row.get("commit_sha"));
            if row.get::<String, _>("status") == "pulling" {
                if let Some(reference) = row.get::<Option<String>, _>("artifact") {
                    tracing::info!(%service, %reference, "pulling again an image the last stop interrupted");
                    let me = builder.clone();
                    let output: String = row.get("output");
                    tokio::spawn(
                        async move { me.pull_until_done(&service, &commit, &reference, output).await },
                    );
                }
                continue;
            }
            if !builder.recipes.contains_key(&service) {
                continue;
            }
            match (
                row.get::<String, _>("status").as_str(),
                row.get::<Option<String>, _>("digest"),
            ) {
                ("pushing", Some(digest)) if builder.registry.is_some() => {
                    tracing::info!(%service, %commit, "pushing again an artifact the last stop interrupted");
                    let me = builder.clone();
                    let output: String = row.get("output");
                    tokio::spawn(async move { me.push_until_done(&service, &commit, &digest, output).await });
                }
                _ => {
                    tracing::info!(%service, %commit, "building again a build interrupted by the last stop");
                    builder.spawn(service, commit);
                }
            }
        }
        Ok(builder)
    }

    /// The OCI layout holding every release.
    pub fn layout(&self) -> &oci::Layout {
        &self.layout
    }

    /// Why the last fetch of `service`'s remote failed, while it does.
    pub fn source_problem(&self, service: &str) -> Option<String> {
        let fetched = self
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fetched.get(service).and_then(|f| f.problem.clone())
    }

    /// Fetches the remote into its mirror when its interval has passed (or `now`): every
    /// branch, so any commit reachable from one can be built on request.
    async fn fetch(&self, service: &str, recipe: &Recipe, now: bool) {
        let Some(url) = &recipe.remote else {
            return;
        };
        let last = {
            let fetched = self
                .fetched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            fetched.get(service).cloned()
        };
        if !now && last.as_ref().is_some_and(|f| f.at.elapsed() < recipe.poll) {
            return;
        }
        let args = [
            "fetch",
            "--prune",
            "--no-tags",
            "origin",
            "+refs/heads/*:refs/heads/*",
        ];
        let result = match tokio::time::timeout(FETCH_TIMEOUT, git(&recipe.repository, &args)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(format!(
                "no answer in {}",
                crate::spec::units::Duration(FETCH_TIMEOUT)
            )),
        };
        let was = last.and_then(|f| f.problem);
        let problem = match result {
            Ok(()) => {
                if was.is_some() {
                    tracing::info!(%service, %url, "the git remote answers again");
                }
                None
            }
            Err(e) => {
                if was.is_none() {
                    tracing::warn!(%service, %url, "cannot fetch the git remote ({e}); trying again every {}", crate::spec::units::Duration(recipe.poll));
                }
                Some(e)
            }
        };
        let mut fetched = self
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fetched.insert(
            service.to_owned(),
            Fetched {
                at: std::time::Instant::now(),
                problem,
            },
        );
    }

    fn recipe(&self, service: &str) -> Result<&Recipe, PortError> {
        self.recipes
            .get(service)
            .ok_or_else(|| PortError::fatal("builder", format!("no build recipe for `{service}`")))
    }

    async fn cursor(&self, service: &str, source: &str) -> Result<Option<String>, PortError> {
        let row = sqlx::query("SELECT cursor FROM cursors WHERE service = $1 AND source = $2")
            .bind(service)
            .bind(source)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get("cursor")))
    }

    /// A numeric cursor (a sequence number), 0 before the first.
    async fn cursor_seq(&self, service: &str, source: &str) -> Result<i64, PortError> {
        Ok(self
            .cursor(service, source)
            .await?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }

    fn spawn(&self, service: String, commit: String) {
        let me = self.clone();
        tokio::spawn(async move {
            let recipe = me.recipes[&service].clone();
            let (result, output) = me.run_build(&service, &recipe, &commit).await;
            match result {
                Ok(Made {
                    digest,
                    artifact: Some(reference),
                }) => {
                    tracing::info!(%service, %commit, %digest, "build finished; its image is pinned");
                    me.finish(
                        &service,
                        &commit,
                        "built",
                        Some(&digest),
                        &output,
                        None,
                        Some(&reference),
                    )
                    .await;
                }
                Ok(Made { digest, .. }) if me.registry.is_some() => {
                    tracing::info!(%service, %commit, %digest, "built; pushing the artifact");
                    me.finish(&service, &commit, "pushing", Some(&digest), &output, None, None)
                        .await;
                    me.push_until_done(&service, &commit, &digest, output).await;
                }
                Ok(Made { digest, .. }) => {
                    tracing::info!(%service, %commit, %digest, "build finished");
                    me.finish(&service, &commit, "built", Some(&digest), &output, None, None)
                        .await;
                }
                Err(e) => {
                    tracing::info!(%service, %commit, error = %e, "build failed");
                    me.finish(&service, &commit, "failed", None, &output, Some(&e), None)
                        .await;
                }
            }
        });
    }

    /// Records where a build stands: `pushing` (built, not deployable yet), `built` or `failed`.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        service: &str,
        commit: &str,
        status: &str,
        digest: Option<&str>,
        output: &str,
        error: Option<&str>,
        artifact: Option<&str>,
    ) {
        let written = sqlx::query(
            "UPDATE builds SET status = $3, finished_at = $4, digest = $5, release = $6, output = $7, error = $8, \
             artifact = $9 WHERE service = $1 AND commit_sha = $2",
        )
        .bind(service)
        .bind(commit)
        .bind(status)
        .bind(wall_clock().millis() as i64)
        .bind(digest)
        .bind(digest.map(release_id))
        .bind(output)
        .bind(error)
        .bind(artifact)
        .execute(&self.pool)
        .await;
        if let Err(e) = written {
            tracing::error!(%service, %commit, "recording the build: {e}");
        }
        if let Some(size) = digest.and_then(|d| self.layout.size(d).ok()) {
            let _ = sqlx::query("UPDATE builds SET size = $3 WHERE service = $1 AND commit_sha = $2")
                .bind(service)
                .bind(commit)
                .bind(size as i64)
                .execute(&self.pool)
                .await;
        }
    }

    /// Pushes a built artifact until the registry has it, waiting longer after each failure
    /// (each written to the build's output); then the build is a release.
    async fn push_until_done(&self, service: &str, commit: &str, digest: &str, mut output: String) {
        let Some(registry) = self.registry.clone() else {
            return;
        };
        let mut wait = PUSH_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            match registry.push(&self.layout, service, digest, commit).await {
                Ok(reference) => {
                    output.push_str(&format!(
                        "\n[autopilot] pushed {reference} in {:.1} s\n",
                        started.elapsed().as_secs_f64()
                    ));
                    tracing::info!(%service, %commit, %reference, "artifact pushed");
                    self.finish(
                        service,
                        commit,
                        "built",
                        Some(digest),
                        &output,
                        None,
                        Some(&reference),
                    )
                    .await;
                    return;
                }
                Err(e) => {
                    output.push_str(&format!(
                        "\n[autopilot] push failed: {e}; trying again in {}\n",
                        crate::spec::units::Duration(wait)
                    ));
                    tracing::warn!(%service, %commit, "push failed: {e}; trying again in {wait:?}");
                    self.finish(service, commit, "pushing", Some(digest), &output, None, None)
                        .await;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(PUSH_BACKOFF_MAX);
                }
            }
        }
    }

    /// Checks out `commit` in a fresh worktree, runs the recipe with its timeout, packs the
    /// files. Returns the digest (or why not) and the build's output.
    async fn run_build(
        &self,
        service: &str,
        recipe: &Recipe,
        commit: &str,
    ) -> (Result<Made, String>, String) {
        let dir = self.work.join(service).join(commit);
        let mut output = String::new();
        let _ = git(
            &recipe.repository,
            &["worktree", "remove", "--force", &dir.to_string_lossy()],
        )
        .await;
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let _ = git(&recipe.repository, &["worktree", "prune"]).await;
        if let Some(parent) = dir.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = git(
            &recipe.repository,
            &["worktree", "add", "--detach", &dir.to_string_lossy(), commit],
        )
        .await
        {
            return (Err(format!("checkout failed: {e}")), output);
        }
        let folder = match &recipe.path {
            Some(p) => dir.join(p),
            None => dir.clone(),
        };
        let live = Live {
            pool: self.pool.clone(),
            service: service.to_owned(),
            commit: commit.to_owned(),
        };
        let result = match &recipe.artifact {
            Artifact::Files(files) => run_command(
                &recipe.command,
                &folder,
                recipe.timeout,
                &mut output,
                Some(live),
                &[],
            )
            .await
            .and_then(|()| {
                self.layout
                    .pack(&folder, files, &format!("{service}:{commit}"))
                    .map_err(|e| format!("packing the artifact failed: {e}"))
            })
            .map(|digest| Made {
                digest,
                artifact: None,
            }),
            Artifact::Image(repository) => {
                self.build_image(service, recipe, commit, repository, &folder, &mut output, live)
                    .await
            }
        };
        let _ = git(
            &recipe.repository,
            &["worktree", "remove", "--force", &dir.to_string_lossy()],
        )
        .await;
        (result, output)
    }

    /// An image build: the command pushes `$AUTOPILOT_IMAGE` (`REPO:COMMIT`); the tag is
    /// resolved to its digest (checked against the digest the command reports, if it does),
    /// and the image pulled by digest into the layout (verified) for the local runtime.
    #[allow(clippy::too_many_arguments)]
    async fn build_image(
        &self,
        service: &str,
        recipe: &Recipe,
        commit: &str,
        repository: &str,
        folder: &Path,
        output: &mut String,
        live: Live,
    ) -> Result<Made, String> {
        let tag = format!("{repository}:{commit}");
        let digest_file = self.work.join(service).join(format!("{commit}.digest"));
        let _ = std::fs::remove_file(&digest_file);
        let env = [
            ("AUTOPILOT_IMAGE".to_owned(), tag.clone()),
            ("AUTOPILOT_COMMIT".to_owned(), commit.to_owned()),
            (
                "AUTOPILOT_DIGEST_FILE".to_owned(),
                digest_file.to_string_lossy().into_owned(),
            ),
        ];
        run_command(&recipe.command, folder, recipe.timeout, output, Some(live), &env).await?;
        let registry = registry::Registry::for_reference(&tag, self.registry.as_deref())?;
        let digest = registry
            .resolve(&tag)
            .await
            .map_err(|e| format!("the build pushed no image to {tag} ({e})"))?;
        let reported = match std::fs::read_to_string(&digest_file) {
            Ok(text) => Some(reported_digest(&text).map_err(|e| format!("$AUTOPILOT_DIGEST_FILE: {e}"))?),
            Err(_) => None,
        };
        let _ = std::fs::remove_file(&digest_file);
        if let Some(pushed) = &reported
            && pushed != &digest
        {
            return Err(format!(
                "the tag {tag} moved during the build: the build pushed {pushed}, the tag now names {digest}; neither is pinned"
            ));
        }
        let pinned = format!("{repository}@{digest}");
        output.push_str(&format!(
            "\n[autopilot] {tag} resolved to {digest}{}\n",
            if reported.is_some() {
                " (the digest the build reported)"
            } else {
                ""
            }
        ));
        let (pulled, size) = registry
            .pull(&pinned, &self.layout, &format!("{service}:{commit}"))
            .await
            .map_err(|e| format!("pulling the image the build pushed: {e}"))?;
        output.push_str(&format!("[autopilot] pulled {pinned} ({size} bytes, verified)\n"));
        Ok(Made {
            digest: pulled,
            artifact: Some(pinned),
        })
    }

    /// Pulls an announced image (by digest) into the layout until it is there, waiting longer
    /// after each transient failure (the registry down); a permanent one (no such image, a
    /// digest that does not match) fails the release.
    async fn pull_until_done(&self, service: &str, key: &str, reference: &str, mut output: String) {
        let mut wait = PUSH_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            let pulled = match registry::Registry::for_reference(reference, self.registry.as_deref()) {
                Ok(r) => r.pull(reference, &self.layout, &format!("{service}:{key}")).await,
                Err(e) => Err(registry::PullError::permanent(e)),
            };
            match pulled {
                Ok((digest, size)) => {
                    output.push_str(&format!(
                        "[autopilot] pulled {reference} ({size} bytes, verified) in {:.1} s\n",
                        started.elapsed().as_secs_f64()
                    ));
                    tracing::info!(%service, %reference, "announced image pulled");
                    self.finish(
                        service,
                        key,
                        "built",
                        Some(&digest),
                        &output,
                        None,
                        Some(reference),
                    )
                    .await;
                    return;
                }
                Err(e) if e.transient => {
                    output.push_str(&format!(
                        "[autopilot] pull failed: {e}; trying again in {}\n",
                        crate::spec::units::Duration(wait)
                    ));
                    tracing::warn!(%service, %reference, "pull failed: {e}; trying again in {wait:?}");
                    self.finish(service, key, "pulling", None, &output, None, Some(reference))
                        .await;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(PUSH_BACKOFF_MAX);
                }
                Err(e) => {
                    output.push_str(&format!("[autopilot] pull failed: {e}\n"));
                    tracing::warn!(%service, %reference, "announced image refused: {e}");
                    self.finish(
                        service,
                        key,
                        "failed",
                        None,
                        &output,
                        Some(&e.message),
                        Some(reference),
                    )
                    .await;
                    return;
                }
            }
        }
    }
}

/// The digest a build reports having pushed: buildx's metadata file
/// (`containerimage.digest`), or a text naming exactly one `sha256:` digest (`crane push`).
fn reported_digest(text: &str) -> Result<String, String> {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(d) = m.get("containerimage.digest").and_then(|d| d.as_str())
    {
        return Ok(d.to_owned());
    }
    let mut found: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("sha256:") {
        let hex: String = rest[i + 7..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        if hex.len() == 64 {
            let d = format!("sha256:{}", hex.to_ascii_lowercase());
            if !found.contains(&d) {
                found.push(d);
            }
        }
        rest = &rest[i + 7..];
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err("names no sha256 digest".into()),
        n => Err(format!("names {n} different digests; write only the one pushed")),
    }
}

/// Where a running build's output is written as it comes (its row in `builds`).
struct Live {
    pool: AnyPool,
    service: String,
    commit: String,
}

/// How often a running build's output is written to the store.
const OUTPUT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// The newest [`MAX_OUTPUT`] bytes of `bytes`, as text.
fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_OUTPUT);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Runs `command` with `sh -c` in `dir`, output (both streams) appended to `output` — and, with
/// `live`, written to the store every second while it runs — killed (its whole process group)
/// at the timeout.
async fn run_command(
    command: &str,
    dir: &Path,
    timeout: std::time::Duration,
    output: &mut String,
    live: Option<Live>,
    env: &[(String, String)],
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `{command}`: {e}"))?;
    let pid = child.id();
    let collected = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let a = tokio::spawn(pump(
        child.stdout.take().expect("piped stdout"),
        collected.clone(),
    ));
    let b = tokio::spawn(pump(
        child.stderr.take().expect("piped stderr"),
        collected.clone(),
    ));
    let flusher = live.map(|live| {
        let collected = collected.clone();
        let before = output.clone();
        tokio::spawn(async move {
            let mut written = 0;
            loop {
                tokio::time::sleep(OUTPUT_FLUSH).await;
                let (len, text) = {
                    let bytes = collected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    (bytes.len(), tail_text(&bytes))
                };
                if len == written {
                    continue;
                }
                written = len;
                let _ = sqlx::query(
                    "UPDATE builds SET output = $3 WHERE service = $1 AND commit_sha = $2 AND status = 'running'",
                )
                .bind(&live.service)
                .bind(&live.commit)
                .bind(format!("{before}{text}"))
                .execute(&live.pool)
                .await;
            }
        })
    });
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    if let Some(f) = flusher {
        f.abort();
    }
    let result = match waited {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the build command failed ({status})")),
        Ok(Err(e)) => Err(format!("waiting for the build: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            Err(format!(
                "the build timed out after {}",
                crate::spec::units::Duration(timeout)
            ))
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = a.await;
        let _ = b.await;
    })
    .await;
    let bytes = collected
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    output.push_str(&tail_text(&bytes));
    result
}

/// Appends what `r` says to `into`, keeping at most about [`MAX_OUTPUT`] bytes.
async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, into: Arc<std::sync::Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut out = into.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        out.extend_from_slice(&buf[..n]);
        if out.len() > 2 * MAX_OUTPUT {
            let cut = out.len() - MAX_OUTPUT;
            out.drain(..cut);
        }
    }
}

impl LocalBuilder {
    /// Finished builds of `service` after the cursor `after`, up to the first still running,
    /// pushing or pulling (so the cursor never passes one that has not ended); and the new
    /// cursor.
    async fn finished(
        &self,
        service: &str,
        after: i64,
    ) -> Result<(Vec<(String, BuildOutcome)>, i64), PortError> {
        let rows = sqlx::query(
            "SELECT seq, commit_sha, status, digest, error FROM builds \
             WHERE service = $1 AND seq > $2 AND status NOT IN ('running', 'pushing', 'pulling') AND seq < COALESCE( \
               (SELECT MIN(seq) FROM builds WHERE service = $1 AND status IN ('running', 'pushing', 'pulling') AND seq > $2), \
               9223372036854775807) \
             ORDER BY seq",
        )
        .bind(service)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut last = after;
        let mut finished = Vec::new();
        for r in rows {
            let commit: String = r.get("commit_sha");
            let outcome = match (
                r.get::<String, _>("status").as_str(),
                r.get::<Option<String>, _>("digest"),
            ) {
                ("built", Some(digest)) => BuildOutcome::Built(Release {
                    id: release_id(&digest),
                    commit: commit.clone(),
                    digest,
                }),
                _ => BuildOutcome::Failed {
                    reason: r
                        .get::<Option<String>, _>("error")
                        .unwrap_or_else(|| "failed".into()),
                },
            };
            finished.push((commit, outcome));
            last = last.max(r.get::<i64, _>("seq"));
        }
        Ok((finished, last))
    }

    /// Takes an announced image: recorded as a release being pulled (keyed by its commit, or
    /// by its digest when it names none), then pulled and verified in the background. An image
    /// outside the service's repository, or a key already taken, is recorded as failed.
    async fn announce(
        &self,
        service: &str,
        repository: &str,
        ask: &crate::store::api::BuildAsk,
        image: &str,
    ) {
        let digest = image
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        let key = if ask.commit.is_empty() {
            digest.clone()
        } else {
            ask.commit.clone()
        };
        let from = image.split_once('@').map_or(image, |(repo, _)| repo);
        let refused = (from != repository)
            .then(|| format!("{image} is not in {service}'s repository {repository} (run.image)"));
        let now = wall_clock().millis() as i64;
        let inserted = sqlx::query(
            "INSERT INTO builds (service, commit_sha, status, started_at, finished_at, error, source, artifact, output) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '') ON CONFLICT(service, commit_sha) DO NOTHING",
        )
        .bind(service)
        .bind(&key)
        .bind(if refused.is_some() { "failed" } else { "pulling" })
        .bind(now)
        .bind(refused.as_ref().map(|_| now))
        .bind(&refused)
        .bind(format!("announced by {}", ask.who))
        .bind(image)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(r) if r.rows_affected() == 1 => {
                if let Some(why) = refused {
                    tracing::warn!(%service, %image, "announced image refused: {why}");
                    return;
                }
                tracing::info!(%service, %image, who = %ask.who, "release announced; pulling its image");
                let me = self.clone();
                let (service, image) = (service.to_owned(), image.to_owned());
                tokio::spawn(async move { me.pull_until_done(&service, &key, &image, String::new()).await });
            }
            Ok(_) => {
                tracing::warn!(%service, %image, %key, "announced again: `{key}` has a release already; ignored")
            }
            Err(e) => tracing::error!(%service, %image, "recording an announced release: {e}"),
        }
    }

    /// The events of a service whose releases are built elsewhere: announced images, and the
    /// releases they became once pulled.
    async fn external_events(&self, service: &str, repository: &str) -> Result<SourceEvents, PortError> {
        let asked: i64 = self.cursor_seq(service, "requests").await?;
        let mut last_request = asked;
        for ask in self.store.build_requests(service, asked).await? {
            last_request = ask.seq;
            match &ask.image {
                Some(image) => self.announce(service, repository, &ask, image).await,
                None if ask.fetch => {
                    tracing::warn!(%service, "a push webhook for a service without `build`: ignored")
                }
                None => {
                    tracing::warn!(%service, commit = %ask.commit, "a build asked of a service without `build`: ignored")
                }
            }
        }
        let after: i64 = self.cursor_seq(service, "builds").await?;
        let (finished, last) = self.finished(service, after).await?;
        let tip = self.cursor(service, "git").await?.unwrap_or_else(|| "-".into());
        Ok(SourceEvents {
            pushes: Vec::new(),
            finished,
            requested: Vec::new(),
            cursor: format!("{tip} {last} {last_request}"),
        })
    }
}

impl Builder for LocalBuilder {
    async fn events(&mut self, service: &str) -> Result<SourceEvents, PortError> {
        if let Some(repository) = self.external.get(service).cloned() {
            return self.external_events(service, &repository).await;
        }
        let recipe = self.recipe(service)?.clone();
        if recipe.remote.is_some() {
            // a build asked for (by a person or a push webhook) may name a commit just pushed
            let asked: i64 = self.cursor_seq(service, "requests").await?;
            let waiting = !self.store.build_requests(service, asked).await?.is_empty();
            self.fetch(service, &recipe, waiting).await;
        }
        let tip = git(
            &recipe.repository,
            &[
                "rev-parse",
                "--verify",
                &format!("refs/heads/{}^{{commit}}", recipe.branch),
            ],
        )
        .await
        .map_err(|e| PortError::retry("builder", e))?;
        let seen = self.cursor(service, "git").await?;
        let pushes = match seen {
            Some(seen) if seen == tip => Vec::new(),
            Some(seen) => {
                let mut args = vec![
                    "rev-list".to_owned(),
                    "--reverse".to_owned(),
                    format!("{seen}..{tip}"),
                ];
                if let Some(p) = &recipe.path {
                    args.extend(["--".to_owned(), p.clone()]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match git(&recipe.repository, &args).await {
                    Ok(list) => list.lines().map(str::to_owned).collect(),
                    // history rewritten (a force push): the tip is what there is
                    Err(_) => vec![tip.clone()],
                }
            }
            // the first look: the newest commit only, not the whole history
            None => vec![tip.clone()],
        };
        let after: i64 = self.cursor_seq(service, "builds").await?;
        let (finished, last) = self.finished(service, after).await?;
        // builds operators asked for: each commit resolved in the repository; one that is not
        // there is recorded as a failed build, so the request is answered in the history
        let asked: i64 = self.cursor_seq(service, "requests").await?;
        let mut requested = Vec::new();
        let mut last_request = asked;
        for ask in self.store.build_requests(service, asked).await? {
            let (seq, commit, who) = (ask.seq, ask.commit, ask.who);
            last_request = seq;
            if ask.fetch {
                // a push webhook's hint: the fetch above took the branch, whose new tip comes in
                // as a push like any other; the sender names nothing that is built
                tracing::info!(%service, %who, %tip, "push webhook: fetched `{}`", recipe.branch);
                continue;
            }
            if ask.image.is_some() {
                tracing::warn!(%service, "an image announced for a service that builds its own releases: ignored");
                continue;
            }
            match git(
                &recipe.repository,
                &["rev-parse", "--verify", &format!("{commit}^{{commit}}")],
            )
            .await
            {
                Ok(full) => {
                    // the full id, so the build finds who asked for it (also after a restart)
                    let _ = sqlx::query("UPDATE build_requests SET commit_sha = $2 WHERE seq = $1")
                        .bind(seq)
                        .bind(&full)
                        .execute(&self.pool)
                        .await;
                    tracing::info!(%service, commit = %full, %who, "build requested");
                    requested.push(full);
                }
                Err(e) => {
                    tracing::warn!(%service, %commit, "a requested build names no commit: {e}");
                    let now = wall_clock().millis() as i64;
                    let _ = sqlx::query(
                        "INSERT INTO builds (service, commit_sha, status, started_at, finished_at, error, source) \
                         VALUES ($1, $2, 'failed', $3, $3, $4, 'request') ON CONFLICT(service, commit_sha) DO NOTHING",
                    )
                    .bind(service)
                    .bind(&commit)
                    .bind(now)
                    // the server's paths stay in the log: the error is shown to API callers
                    .bind(format!("no commit `{commit}` in {service}'s repository"))
                    .execute(&self.pool)
                    .await;
                }
            }
        }
        Ok(SourceEvents {
            pushes,
            finished,
            requested,
            cursor: format!("{tip} {last} {last_request}"),
        })
    }

    async fn ack(&mut self, service: &str, cursor: &str) -> Result<(), PortError> {
        let parts: Vec<&str> = cursor.split(' ').collect();
        let [tip, builds, requests] = parts[..] else {
            return Err(PortError::fatal("builder", format!("bad cursor `{cursor}`")));
        };
        for (source, value) in [("git", tip), ("builds", builds), ("requests", requests)] {
            sqlx::query(
                "INSERT INTO cursors (service, source, cursor) VALUES ($1, $2, $3) \
                 ON CONFLICT(service, source) DO UPDATE SET cursor = excluded.cursor",
            )
            .bind(service)
            .bind(source)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    async fn start_build(
        &mut self,
        service: &str,
        commit: &str,
        skipped: &[String],
    ) -> Result<(), PortError> {
        let recipe = self.recipe(service)?;
        // the objectives file as it is now is the config this release is built with
        let config = recipe
            .spec_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok());
        let asked: Option<String> = sqlx::query_scalar(
            "SELECT who FROM build_requests WHERE service = $1 AND commit_sha = $2 LIMIT 1",
        )
        .bind(service)
        .bind(commit)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let source = match asked {
            Some(who) => format!("request by {who}"),
            None => "push".to_owned(),
        };
        let inserted = sqlx::query(
            "INSERT INTO builds (service, commit_sha, status, started_at, source, config, skipped) \
             VALUES ($1, $2, 'running', $3, $4, $5, $6) ON CONFLICT(service, commit_sha) DO NOTHING",
        )
        .bind(service)
        .bind(commit)
        .bind(wall_clock().millis() as i64)
        .bind(source)
        .bind(config)
        .bind((!skipped.is_empty()).then(|| skipped.join(" ")))
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        if inserted == 1 {
            tracing::info!(%service, %commit, "build started");
            self.spawn(service.to_owned(), commit.to_owned());
        }
        Ok(())
    }
}

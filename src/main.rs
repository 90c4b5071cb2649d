//! The `autopilot` command line.

/// mimalloc instead of the system allocator: the proxy's request path allocates per request,
/// and glibc's malloc/free showed ~10% of a profile under load (see scripts/bench-proxy).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;

use autopilot::cli::Connection;
use autopilot::spec::{self, LoadError, schema::SchemaKind};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "autopilot", version, about = "A progressive-delivery autopilot")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check objectives, sensors and controllers; report every problem with file:line:column.
    /// Exit code 0: valid; 1: invalid; 2: usage error.
    Validate {
        /// Files or directories (searched for *.yaml / *.yml). Default: objectives/ sensors/ controllers/.
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Replay scenarios through the real controller on a virtual clock. Prints the timeline;
    /// exit code 0: every expectation met; 1: some failed; 2: the scenario cannot run.
    Simulate {
        /// Scenario files (`kind: Simulation`).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Write `<scenario>.json` (the record) and `<scenario>.svg` (the chart) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print only the expectations' results.
        #[arg(long, conflicts_with = "verbose")]
        quiet: bool,
        /// Show every objective's full reasoning at every step.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run the reverse proxy on its own: routes `{service}.{environment}.{domain}` by the routes
    /// file (reloaded when it changes) and by the admin API. Ctrl-C stops it.
    Proxy(Box<ProxyArgs>),
    /// Benchmarks that print figures (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Run the autopilot: watch each service's repository, build, deploy and roll out by itself
    /// on the embedded defaults (SQLite, in-process proxy, local processes, OCI layout on disk).
    /// Ctrl-C (or SIGTERM) stops it cleanly; the next `up` carries on where it stopped.
    Up {
        /// The configuration (`kind: Autopilot`); default: `autopilot.yaml` if present, else the
        /// embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log lines for people (`text`) or machines (`json`); `RUST_LOG` sets the level.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Watch autopilot take a sample service through dev → staging → prod, then roll back a bad
    /// release by itself. Everything lives in a temporary folder (kept, for a look around).
    Demo {
        /// Where to put the sample repository, specs and data (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The controller's analysis interval.
        #[arg(long, default_value = "2s")]
        interval: autopilot::spec::units::Duration,
        /// Give up waiting for a step after this long.
        #[arg(long, default_value = "5m")]
        limit: autopilot::spec::units::Duration,
        /// Also write the summary as JSON here.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// The share of requests the bad version fails (`100%`: every request, a crash).
        #[arg(long, default_value = "25%")]
        bad_errors: autopilot::spec::units::Percent,
        /// End with the summary (for scripts), instead of serving the pages, the API and the
        /// shop until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// The demo's sample service (run by the demo's releases): listens on $PORT, fails the share
    /// of requests its behaviour file says.
    #[command(hide = true)]
    SampleService { behaviour: PathBuf },
    /// Serve the HTTP API alone, on the store `autopilot up` uses (`--openapi`: print its
    /// OpenAPI document instead).
    Api {
        /// The configuration (`kind: Autopilot`); default: `autopilot.yaml` if present.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        openapi: bool,
    },
    /// Where every service's environments stand: stable release, rollout, weight, state, and
    /// what waits for a person.
    Status {
        service: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Rollouts as they move, live: a line per environment with a bar for the canary's weight
    /// and the judge's word per objective, under a scrolling log of transitions (until Ctrl-C).
    Watch {
        service: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Releases: `list SERVICE`, `view RELEASE`, `logs RELEASE`.
    Release {
        #[command(subcommand)]
        command: autopilot::cli::ReleaseCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Hold a rollout where it is until `resume`. A regression or a spent blast-radius budget
    /// still rolls it back, unless `--regardless`.
    Pause {
        #[command(flatten)]
        target: Target,
        /// Hold the canary even if it regresses or spends its budget (you take the risk).
        #[arg(long)]
        regardless: bool,
    },
    /// Lift a pause (an operator's or a policy's), or a rollback's block.
    Resume(Target),
    /// Promote the canary now.
    Promote(Target),
    /// Roll the canary back now.
    Rollback(Target),
    /// Approve the release waiting at a gate (or `--release`, ahead of time).
    Approve {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        release: Option<String>,
    },
    /// Hold the canary at PERCENT (`off`: stop holding).
    Weight {
        #[command(flatten)]
        target: Target,
        percent: String,
    },
    /// Keep an environment on RELEASE until `unpin`.
    Pin {
        #[command(flatten)]
        target: Target,
        release: String,
    },
    /// Lift a `pin`: the controller chooses the environment's release again.
    Unpin(Target),
    /// Start no new rollout in an environment until `unfreeze`.
    Freeze(Target),
    /// Lift a `freeze`: new rollouts may start in the environment again.
    Unfreeze(Target),
    /// Build a commit of the service's repository (a hotfix, a cherry-pick).
    Build {
        service: String,
        #[arg(long)]
        commit: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// The audit trail of operator actions, newest first.
    Audit {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        release: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        conn: Connection,
    },
    /// API tokens: `create NAME --role viewer|operator|admin`, `revoke NAME`.
    Token {
        #[command(subcommand)]
        command: autopilot::cli::TokenCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Replay an incident straight from Prometheus: read the service's sensors in one
    /// environment over a time range, save them as a scenario, and run the controller through
    /// it as `simulate` does. Exit codes as `simulate`.
    Replay(Box<ReplayArgs>),
    /// Sensors, against Prometheus: `check` reads each objective of one environment now.
    Sensors {
        #[command(subcommand)]
        which: SensorsCommand,
    },
    /// Print what autopilot would apply for a release, exactly: `render kubernetes
    /// objectives/checkout.yaml --environment staging --release sha256:…` (YAML on stdout).
    Render {
        #[command(subcommand)]
        what: RenderCommand,
    },
    /// OCI artifacts: `pull HOST/REPO@sha256:… --into DIR` fetches one by digest, verifies every
    /// byte and unpacks it (what a files release's init container runs on Kubernetes).
    Artifact {
        #[command(subcommand)]
        command: ArtifactCommand,
    },
    /// Print the JSON Schema of a file kind (for editors and CI).
    Schema {
        #[arg(value_enum)]
        kind: SchemaKind,
    },
}

#[derive(Subcommand)]
enum RenderCommand {
    /// The Namespace, Service and Deployment of one release in one environment.
    Kubernetes {
        /// The service's objectives file.
        file: PathBuf,
        #[arg(long)]
        environment: String,
        /// The release's digest (`sha256:…`).
        #[arg(long)]
        release: String,
        /// The commit it was built from (an annotation).
        #[arg(long)]
        commit: Option<String>,
        /// The configuration (`runtime.kubernetes`, `registry`); default: `autopilot.yaml` if present.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ArtifactCommand {
    /// Fetch an artifact by digest and unpack it.
    Pull {
        /// `host/repository@sha256:…`
        reference: String,
        #[arg(long)]
        into: PathBuf,
    },
}

#[derive(Subcommand)]
enum SensorsCommand {
    /// A dry run of the analysis: per objective and per live release of the environment, the bad
    /// and total counts and rates read from Prometheus right now, the PromQL run, and why
    /// anything is missing. Starts nothing, writes nothing. Exit code 0: every objective read;
    /// 1: something is missing; 2: usage.
    Check(Box<SensorsCheck>),
}

/// The environment an operator action is for, and why.
#[derive(clap::Args)]
struct Target {
    service: String,
    environment: String,
    /// Why (kept in the audit trail).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    conn: Connection,
}

/// Options of `autopilot proxy`.
#[derive(clap::Args)]
struct ProxyArgs {
    /// The routes file (`kind: Routes`).
    #[arg(long)]
    routes: PathBuf,
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// The admin listener (metrics, control API); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: std::net::SocketAddr,
    /// A file holding the admin API's bearer token (default: a random token, printed).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The readiness path probed on every upstream.
    #[arg(long, default_value = "/healthz")]
    probe_path: String,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// On SIGTERM, stop taking connections and let requests in flight finish for this long
    /// (whole seconds) before stopping; Ctrl-C (SIGINT) stops at once.
    #[arg(long, default_value = "5s")]
    drain: autopilot::spec::units::Duration,
    /// Also serve HTTPS here (ALPN h2 and http/1.1, certificate by SNI).
    #[arg(long)]
    tls_listen: Option<std::net::SocketAddr>,
    /// A certificate for names: `NAME[,NAME…]=CERT.pem:KEY.pem` (names exact or `*.`
    /// wildcards). Repeatable.
    #[arg(long, value_parser = parse_cert_files)]
    tls_cert: Vec<autopilot::proxy::tls::CertFiles>,
    /// The local CA's folder (made at the first start, reused); used when no `--tls-cert`
    /// is given.
    #[arg(long, default_value = ".autopilot/ca")]
    local_ca: PathBuf,
    /// Objectives (files or folders) whose environments' access rules (`auth`, `allow`)
    /// apply to the routes; validated like `autopilot validate`.
    #[arg(long, num_args = 1..)]
    specs: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// A large artifact pushed to and pulled from a throwaway docker-registry on loopback, by
    /// autopilot and by `skopeo copy` (the reference), in MB/s. Writes registry.md and
    /// registry.csv. Needs `docker-registry` and `skopeo` installed.
    Registry {
        /// The artifact's size in MB.
        #[arg(long, default_value_t = 100)]
        megabytes: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// From a push webhook to its build starting, with `autopilot up` building the demo's
    /// service from a remote repository; beside the webhook's own HTTP answer and a plain `git
    /// fetch`. Writes webhook.md and webhook.csv.
    Webhook {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// The API's latency with 10,000 releases stored, on SQLite and on a throwaway PostgreSQL:
    /// list releases and override round trips (p50/p99), beside the HTTP floor. Writes api.md
    /// and api.csv.
    Api {
        #[arg(long, default_value_t = 10_000)]
        releases: usize,
        /// Requests per measured series.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Canary judgement: scenarios S0–S8, our judge against Flagger-, Argo- and Kayenta-style
    /// judges and a naive repeated test, next to the information floor. Writes detection.md,
    /// detection.csv and detection.svg.
    /// The control loop at scale (BENCHMARKS.md §3): N services × 3 environments with a rollout
    /// running in each, sensors from a real Prometheus; queries, CPU and wall time per tick,
    /// memory; with the unbatched reference. Needs `prometheus` installed.
    Sensors {
        /// Service counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        services: Vec<usize>,
        /// Measure the reference (free PromQL per arm) up to this many services.
        #[arg(long, default_value_t = 100)]
        reference_up_to: usize,
        /// Ticks measured after the first.
        #[arg(long, default_value_t = 5)]
        ticks: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// The benchmark's exporter process (internal).
    #[command(hide = true)]
    Exporter {
        #[arg(long)]
        services: usize,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    Detection {
        /// A small run (a few percent of the documented runs) for CI.
        #[arg(long)]
        quick: bool,
        /// Where to write the files.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Credentials for the proxy benchmark: writes `jwks.json`, a CA (`ca/`) and a leaf
    /// certificate (`leaf.pem`, `leaf.key`) to DIR and prints `API_KEY=`,
    /// `API_KEY_SHA256=` and `TOKEN=` lines (a day-long ES256 token for issuer
    /// `https://bench.invalid`, audience `autopilot`).
    ProxyFixtures {
        #[arg(long)]
        out: PathBuf,
    },
    /// The benchmark's reference: bare Pingora forwarding every request to one upstream (no
    /// routing, auth, headers or metrics), to tell the framework's cost from ours.
    PingoraFloor {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        upstream: std::net::SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also set the headers the autopilot proxy sets on an authenticated request with its
        /// default forwarding headers (three `X-Forwarded-*`, two identity headers upstream, the
        /// release header downstream), with fixed values: what the framework charges for them.
        #[arg(long, conflicts_with = "forwarding_headers")]
        headers: bool,
        /// Also set only the three `X-Forwarded-*` headers (as nginx does in the benchmark).
        #[arg(long)]
        forwarding_headers: bool,
    },
    /// Fixed-rate HTTP/1.1 load, free of coordinated omission: request i is due at i/RATE and
    /// its latency counts from then. Prints one JSON line: sent, errors, throughput, p50, p90,
    /// p99, p999 and max (ms).
    Load {
        /// The address to connect to.
        #[arg(long)]
        connect: std::net::SocketAddr,
        /// The Host header (and the TLS server name).
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// Requests per second, all connections together.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value = "10s")]
        duration: autopilot::spec::units::Duration,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// A request header, `name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// HTTPS, trusting the CA certificates in this PEM file.
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths, format } => {
            let paths = if paths.is_empty() {
                ["objectives", "sensors", "controllers"]
                    .map(PathBuf::from)
                    .to_vec()
            } else {
                paths
            };
            match spec::load(&paths) {
                Ok(catalog) => {
                    match format {
                        Format::Text => println!(
                            "{}ok: {} files, {} services, {} sensors, {} controllers, {} scenarios",
                            spec::render_warnings(&catalog.warnings),
                            catalog.files_checked,
                            catalog.services.len(),
                            catalog.sensors.len(),
                            catalog.controllers.len(),
                            catalog.simulations.len()
                        ),
                        Format::Json => println!(
                            "{}",
                            serde_json::json!({
                                "valid": true,
                                "filesChecked": catalog.files_checked,
                                "errors": [],
                                "warnings": catalog.warnings,
                            })
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(LoadError::Invalid(report)) => {
                    match format {
                        Format::Text => eprint!("{}", report.render_text()),
                        Format::Json => println!("{}", report.render_json()),
                    }
                    ExitCode::from(1)
                }
                Err(LoadError::Usage(e)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Replay(a) => replay(*a),
        Command::Sensors {
            which: SensorsCommand::Check(a),
        } => sensors_check(*a),
        Command::Simulate {
            scenarios,
            out,
            quiet,
            verbose,
        } => simulate(&scenarios, out.as_deref(), quiet, verbose),
        Command::Bench {
            which:
                Bench::Sensors {
                    services,
                    reference_up_to,
                    ticks,
                    out,
                },
        } => {
            init_logs(LogFormat::Text, "error");
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            on_runtime(async move {
                bench_done(
                    bench::prom::run(&exe, &services, reference_up_to, ticks, &out).await,
                    &out,
                    "sensors",
                )
            })
        }
        Command::Bench {
            which: Bench::Exporter { services, listen },
        } => on_runtime(async move {
            match bench::prom::run_exporter(services, listen).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Bench {
            which: Bench::Detection { quick, out },
        } => bench_detection(quick, &out),
        Command::Bench {
            which: Bench::Webhook { rounds, out },
        } => {
            init_logs(LogFormat::Text, "warn");
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("error: where am I? {e}");
                    return ExitCode::FAILURE;
                }
            };
            on_runtime(async move {
                bench_done(
                    bench::release::run_webhook(&exe, &out, rounds).await,
                    &out,
                    "webhook",
                )
            })
        }
        Command::Bench {
            which:
                Bench::Registry {
                    megabytes,
                    rounds,
                    out,
                },
        } => {
            init_logs(LogFormat::Text, "warn");
            on_runtime(async move {
                bench_done(
                    bench::release::run(&out, megabytes, rounds).await,
                    &out,
                    "registry",
                )
            })
        }
        Command::Bench {
            which: Bench::ProxyFixtures { out },
        } => proxy_fixtures(&out),
        Command::Bench {
            which:
                Bench::Api {
                    releases,
                    requests,
                    out,
                },
        } => {
            init_logs(LogFormat::Text, "warn");
            on_runtime(
                async move { bench_done(bench::api::run(&out, releases, requests).await, &out, "api") },
            )
        }
        Command::Bench {
            which:
                Bench::PingoraFloor {
                    listen,
                    upstream,
                    threads,
                    headers,
                    forwarding_headers,
                },
        } => {
            use bench::pingora_floor::Headers;
            let set = match (headers, forwarding_headers) {
                (true, _) => Headers::All,
                (false, true) => Headers::Forwarding,
                (false, false) => Headers::None,
            };
            bench::pingora_floor::run(listen, upstream, threads, set)
        }
        Command::Bench {
            which:
                Bench::Load {
                    connect,
                    host,
                    path,
                    rate,
                    duration,
                    connections,
                    headers,
                    cacert,
                },
        } => bench_load(
            connect,
            host,
            path,
            rate,
            duration.0,
            connections,
            &headers,
            cacert.as_deref(),
        ),
        Command::Proxy(args) => run_proxy(*args),
        Command::Schema { kind } => {
            print!("{}", kind.render());
            ExitCode::SUCCESS
        }
        Command::Up { config, log_format } => run_up(config, log_format),
        Command::Render {
            what:
                RenderCommand::Kubernetes {
                    file,
                    environment,
                    release,
                    commit,
                    config,
                },
        } => {
            let out = load_config(config).and_then(|c| {
                autopilot::cli::kubernetes::render(&file, &environment, &release, commit.as_deref(), &c)
            });
            match out {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Artifact {
            command: ArtifactCommand::Pull { reference, into },
        } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let out = rt
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(autopilot::cli::kubernetes::artifact_pull(&reference, &into)));
            match out {
                Ok((digest, size)) => {
                    println!("{digest} ({size} bytes) unpacked into {}", into.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Api { config, openapi } => {
            if openapi {
                print!("{}", autopilot::api::openapi_json());
                return ExitCode::SUCCESS;
            }
            run_api(config)
        }
        Command::Status { service, conn } => {
            on_runtime(async move { autopilot::cli::status(&conn, service).await })
        }
        Command::Watch { service, conn } => {
            on_runtime(async move { autopilot::cli::watch::watch(&conn, service).await })
        }
        Command::Release { command, conn } => {
            on_runtime(async move { autopilot::cli::release(&conn, command).await })
        }
        Command::Pause { target, regardless } => {
            let regardless = regardless.then_some(true);
            on_runtime(async move {
                let t = target;
                let extra = serde_json::json!({ "regardless": regardless });
                autopilot::cli::act_with(&t.conn, &t.service, &t.environment, "pause", &t.reason, extra).await
            })
        }
        Command::Resume(t) => act(t, "resume", None, None),
        Command::Promote(t) => act(t, "promote", None, None),
        Command::Rollback(t) => act(t, "rollback", None, None),
        Command::Approve { target, release } => act(target, "approve", None, release),
        Command::Weight { target, percent } => {
            if percent == "off" {
                return act(target, "clear-weight", None, None);
            }
            match percent.trim_end_matches('%').parse::<u8>() {
                Ok(p) if p <= 100 => act(target, "weight", Some(p), None),
                _ => {
                    eprintln!("error: PERCENT is 0–100 (or `off`), not `{percent}`");
                    ExitCode::from(2)
                }
            }
        }
        Command::Pin { target, release } => act(target, "pin", None, Some(release)),
        Command::Unpin(t) => act(t, "unpin", None, None),
        Command::Freeze(t) => act(t, "freeze", None, None),
        Command::Unfreeze(t) => act(t, "unfreeze", None, None),
        Command::Build {
            service,
            commit,
            reason,
            conn,
        } => on_runtime(async move { autopilot::cli::build(&conn, &service, &commit, &reason).await }),
        Command::Audit {
            service,
            release,
            limit,
            conn,
        } => on_runtime(async move { autopilot::cli::audit(&conn, service, release, limit).await }),
        Command::Token { command, conn } => {
            on_runtime(async move { autopilot::cli::token_create(&conn, command).await })
        }
        Command::Demo {
            dir,
            interval,
            limit,
            summary,
            bad_errors,
            exit,
        } => run_demo(dir, interval, limit, summary, bad_errors.fraction(), !exit),
        Command::SampleService { behaviour } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match rt
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(autopilot::live::demo::serve_sample(&behaviour)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sample-service: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs: `RUST_LOG` (default `default`), colour only on a terminal without `NO_COLOR`.
fn init_logs(format: LogFormat, default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        // anyone's words reach the text log (a pusher's name, a reason): each event is kept to
        // one line with nothing a terminal would act on (JSON escapes its own)
        LogFormat::Text => builder
            .with_writer(|| autopilot::terminal::LogWriter(std::io::stderr()))
            .with_ansi(colour)
            .try_init(),
        LogFormat::Json => builder.with_writer(std::io::stderr).json().try_init(),
    };
}

/// The async runtime of `up` and `demo` (with the TLS provider every client needs); a failure
/// is printed and becomes the exit code.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run_up(config: Option<PathBuf>, log_format: LogFormat) -> ExitCode {
    use autopilot::live::Up;
    init_logs(log_format, "info");
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let token = match autopilot::live::proxy_admin_token(&config) {
        Ok((token, Some(path))) => {
            eprintln!(
                "the proxy admin token (for the proxy's admin API on {}; not an API token) is in {} (set {} to choose one)",
                config.admin,
                path.display(),
                config.admin_token_variable
            );
            token
        }
        Ok((token, None)) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut up = match Up::start(config, token).await {
            Ok(up) => up,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            proxy = %up.config.listen,
            admin = %up.config.admin,
            api = %up.config.api.listen,
            store = %autopilot::store::redact(up.store.url()),
            services = up.specs.len(),
            "autopilot is up"
        );
        if let Some(path) = &up.admin_token_file {
            tracing::info!(
                "an admin token for the API was made: {} (the CLI reads it from there; `autopilot token create` makes more)",
                path.display()
            );
        }
        if up.config.api.webhook_secret().is_none() {
            tracing::warn!(
                "push webhooks are refused: no webhook secret is configured (set {} to turn them on); builds start when polling finds a new commit",
                up.config.api.webhook_secret_variable
            );
        }
        let result = up.run(stop_signal(), |_, _| {}).await;
        tracing::info!("stopping: children first, then the proxy; state is saved");
        up.stop().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Runs a CLI command on a small runtime.
fn on_runtime(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn act(t: Target, action: &str, percent: Option<u8>, release: Option<String>) -> ExitCode {
    on_runtime(async move {
        autopilot::cli::act(
            &t.conn,
            &t.service,
            &t.environment,
            action,
            &t.reason,
            percent,
            release,
        )
        .await
    })
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The service: its file (`objectives/checkout.yaml`) or its name.
    service: String,
    #[arg(long)]
    environment: String,
    /// Start of the range, UTC: `2026-11-20T14:00Z` or `2026-11-20T14:00:00Z`.
    #[arg(long)]
    from: String,
    /// End of the range, UTC.
    #[arg(long)]
    to: String,
    /// The release that was the canary (its release label's value).
    #[arg(long)]
    canary: String,
    /// The release that was stable.
    #[arg(long)]
    stable: String,
    /// Resolution of the range query (default: the configured scrape interval).
    #[arg(long)]
    step: Option<autopilot::spec::units::Duration>,
    /// Keep the scenario and its recordings in this folder (default: a temporary one).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Add an expectation for the canary in the environment: promoted, rolledBack, held.
    #[arg(long)]
    expect: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Prometheus' URL (default: the configuration's `prometheus.url`).
    #[arg(long)]
    prometheus: Option<String>,
    /// Print only the expectations' results.
    #[arg(long)]
    quiet: bool,
}

/// The catalog and Prometheus settings a sensors command works with, and the service named.
fn prometheus_context(
    config: Option<PathBuf>,
    prometheus: &Option<String>,
    service: &str,
    environment: &str,
) -> Result<
    (
        autopilot::live::config::AutopilotConfig,
        autopilot::prom::PromSettings,
        autopilot::spec::Catalog,
        Vec<PathBuf>,
        String,
    ),
    String,
> {
    let config = load_config(config)?;
    let settings = match (prometheus, &config.prometheus) {
        (Some(url), Some(p)) => autopilot::prom::PromSettings {
            url: url.clone(),
            ..p.clone()
        },
        (Some(url), None) => autopilot::prom::PromSettings::at(url),
        (None, Some(p)) => p.clone(),
        (None, None) => {
            return Err("no Prometheus: give --prometheus URL, or `prometheus:` in autopilot.yaml".into());
        }
    };
    let mut paths = config.specs.clone();
    if std::path::Path::new(service).exists() {
        paths.push(PathBuf::from(service));
    }
    let catalog = match spec::load(&paths) {
        Ok(c) => c,
        Err(LoadError::Invalid(r)) => return Err(r.render_text()),
        Err(LoadError::Usage(e)) => return Err(e.to_string()),
    };
    let name = autopilot::prom::check::service_named(&catalog, service)?;
    autopilot::prom::check::environment_of(&catalog, &name, environment)?;
    Ok((config, settings, catalog, paths, name))
}

/// `autopilot replay`.
fn replay(a: ReplayArgs) -> ExitCode {
    use autopilot::prom::replay;
    init_logs(LogFormat::Text, "error");
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let (_, settings, catalog, paths, service) =
        match prometheus_context(a.config, &a.prometheus, &a.service, &a.environment) {
            Ok(x) => x,
            Err(e) => return usage(e),
        };
    let (from, to) = match (replay::parse_time(&a.from), replay::parse_time(&a.to)) {
        (Ok(f), Ok(t)) if f < t => (f, t),
        (Ok(_), Ok(_)) => return usage("--from must come before --to".into()),
        (Err(e), _) | (_, Err(e)) => return usage(e),
    };
    let specs: Vec<PathBuf> = paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let req = replay::ReplayRequest {
        service,
        environment: a.environment,
        canary: a.canary,
        stable: a.stable,
        from,
        to,
        step: a.step.map_or(settings.scrape_interval.0, |s| s.0),
        specs,
        expect: a.expect,
    };
    let temp;
    let dir = match &a.save {
        Some(d) => d.clone(),
        None => {
            temp = match tempfile::tempdir() {
                Ok(t) => t,
                Err(e) => return usage(e.to_string()),
            };
            temp.path().to_path_buf()
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let recorded = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(replay::record(&catalog, &settings, &req, &dir)));
    let saved = match recorded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "read {} series from {}; scenario: {}",
        saved.series,
        settings.url,
        saved.scenario.display()
    );
    for s in &saved.skipped {
        eprintln!("not replayed: {s}");
    }
    simulate(std::slice::from_ref(&saved.scenario), None, a.quiet, false)
}

#[derive(clap::Args)]
struct SensorsCheck {
    /// The service: its file (`objectives/checkout.yaml`) or its name.
    service: String,
    #[arg(long)]
    environment: String,
    /// The configuration (`prometheus:`, `store:`, `specs:`); default `autopilot.yaml` if present.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Prometheus' URL (default: the configuration's `prometheus.url`).
    #[arg(long)]
    prometheus: Option<String>,
    /// The canary release to read (default: the store's rollout in the environment).
    #[arg(long)]
    canary: Option<String>,
    /// The stable release to read (default: the store's).
    #[arg(long)]
    stable: Option<String>,
    /// Count from this long ago when no rollout start is known.
    #[arg(long, default_value = "10m")]
    since: autopilot::spec::units::Duration,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// `autopilot sensors check`.
fn sensors_check(a: SensorsCheck) -> ExitCode {
    use autopilot::prom::check;
    init_logs(LogFormat::Text, "error");
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let (config, settings, catalog, _, service) =
        match prometheus_context(a.config.clone(), &a.prometheus, &a.service, &a.environment) {
            Ok(x) => x,
            Err(e) => return usage(e),
        };
    on_runtime(async move {
        let now = autopilot::clock::wall_clock();
        let fallback = autopilot::control::time::Time::from_millis(
            now.millis().saturating_sub(a.since.0.as_millis() as u64),
        );
        let mut releases = check::Releases {
            canary: None,
            stable: None,
            since: fallback,
            origin: format!("--since {}", a.since),
        };
        if a.canary.is_none() && a.stable.is_none() {
            // the store's view, if there is a store
            let has_store = config.store.is_some() || config.data_dir.join("autopilot.db").exists();
            if has_store
                && let Ok(store) = autopilot::live::open_store(&config).await
                && let Ok(states) = store.states().await
                && let Some((_, state)) = states.iter().find(|(s, _)| *s == service)
                && let Some(r) = check::Releases::from_state(state, &a.environment, fallback)
            {
                releases = r;
            }
        } else {
            releases.canary = a.canary.clone();
            releases.stable = a.stable.clone();
            releases.origin = format!("named on the command line, {}", releases.origin);
        }
        match check::check(&catalog, &service, &a.environment, &settings, &releases, now).await {
            Ok(report) => {
                match a.output {
                    Format::Text => print!("{}", report.render_text()),
                    Format::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("report serializes")
                    ),
                }
                if report.complete() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => usage(e),
        }
    })
}

fn load_config(config: Option<PathBuf>) -> Result<autopilot::live::config::AutopilotConfig, String> {
    use autopilot::live::config::AutopilotConfig;
    match config {
        Some(path) => AutopilotConfig::load(&path),
        None if PathBuf::from("autopilot.yaml").exists() => {
            AutopilotConfig::load(&PathBuf::from("autopilot.yaml"))
        }
        None => AutopilotConfig::default_here(),
    }
}

/// `autopilot api`: the API alone on the configured store, until Ctrl-C or SIGTERM.
fn run_api(config: Option<PathBuf>) -> ExitCode {
    use autopilot::control::plan::PlanSpec;
    init_logs(LogFormat::Text, "info");
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let catalog = match spec::load(&config.specs) {
        Ok(c) => c,
        Err(LoadError::Invalid(r)) => {
            eprint!("{}", r.render_text());
            return ExitCode::FAILURE;
        }
        Err(LoadError::Usage(u)) => {
            eprintln!("error: {u}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let store = match autopilot::live::open_store(&config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        match autopilot::live::bootstrap_token(&store, &config).await {
            Ok(Some(path)) => tracing::info!("an admin token was made: {}", path.display()),
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        let listener = match tokio::net::TcpListener::bind(config.api.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {} (API): {e}", config.api.listen);
                return ExitCode::FAILURE;
            }
        };
        let specs: Vec<PlanSpec> = catalog
            .services
            .keys()
            .filter_map(|s| PlanSpec::resolve(&catalog, s))
            .collect();
        let state = autopilot::live::api_state(&config, std::sync::Arc::new(catalog), specs, store.clone());
        tracing::info!(api = %config.api.listen, store = %autopilot::store::redact(store.url()), "the API is up");
        let served = autopilot::app::serve(listener, state, stop_signal()).await;
        store.close().await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn run_demo(
    dir: Option<PathBuf>,
    interval: autopilot::spec::units::Duration,
    limit: autopilot::spec::units::Duration,
    summary: Option<PathBuf>,
    bad_errors: f64,
    linger: bool,
) -> ExitCode {
    use autopilot::live::demo;
    init_logs(LogFormat::Text, "warn");
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "autopilot-demo-{}",
            random_token().get(..8).unwrap_or("x")
        )),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the autopilot executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = demo::DemoOptions {
        dir,
        exe,
        interval,
        fancy: demo::colour_wanted(),
        limit: limit.0,
        bad_errors,
        linger,
    };
    match rt.block_on(demo::run(opts, summary.as_deref())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(scenarios: &[PathBuf], out: Option<&std::path::Path>, quiet: bool, verbose: bool) -> ExitCode {
    use autopilot::sim;
    let mut failed = false;
    for path in scenarios {
        // a file may hold several scenarios (documents separated by `---`): each runs
        let loaded = match sim::load_all_with_base(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        for (scenario, catalog, base) in &loaded {
            let started = std::time::Instant::now();
            let result = match sim::run_in(scenario, catalog, base) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {}: {}: {e}", path.display(), scenario.name);
                    return ExitCode::from(2);
                }
            };
            let text = sim::report::timeline(&result, verbose);
            if quiet {
                for c in &result.checks {
                    println!(
                        "{} {}: {} — {}",
                        if c.passed { "ok  " } else { "FAIL" },
                        result.scenario,
                        c.expectation,
                        c.detail
                    );
                }
            } else {
                println!("{text}");
            }
            let wall = started.elapsed().as_secs_f64();
            if !quiet {
                eprintln!(
                    "{}: {} looks, {} simulated requests judged in {:.2} s ({:.0} per second)",
                    result.scenario,
                    result.ticks,
                    result.generated,
                    wall,
                    result.generated as f64 / wall.max(1e-9)
                );
            }
            if let Some(dir) = out {
                match write_outputs(dir, &result) {
                    Ok(written) if !quiet => eprintln!("written: {}", written.join(", ")),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("error: writing to {}: {e}", dir.display());
                        return ExitCode::from(2);
                    }
                }
            }
            failed |= !result.passed();
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes the record and the chart; returns their paths.
fn write_outputs(dir: &std::path::Path, result: &autopilot::sim::SimResult) -> std::io::Result<Vec<String>> {
    use autopilot::sim::report;
    std::fs::create_dir_all(dir)?;
    let json = dir.join(format!("{}.json", result.scenario));
    std::fs::write(&json, report::json(result))?;
    let svg = dir.join(format!("{}.svg", result.scenario));
    std::fs::write(&svg, report::svg(result))?;
    Ok(vec![json.display().to_string(), svg.display().to_string()])
}

/// A benchmark's end: its table printed and where its files went, or why it failed.
fn bench_done(result: Result<String, String>, out: &std::path::Path, name: &str) -> ExitCode {
    match result {
        Ok(md) => {
            print!("{md}");
            eprintln!("written: {}/{name}.md, {name}.csv", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench_detection(quick: bool, out: &std::path::Path) -> ExitCode {
    use crate::bench::detection as bench;
    let started = std::time::Instant::now();
    let scale = if quick { 0.04 } else { 1.0 };
    let rows = bench::run(scale);
    let wall = started.elapsed().as_secs_f64();
    let events: f64 = bench::scenarios(scale)
        .iter()
        .map(|s| s.runs as f64 * s.rate * s.limit_secs as f64)
        .sum::<f64>()
        * bench::detectors().len() as f64;
    let size = if quick {
        "--quick: 4% of the documented runs"
    } else {
        "full size"
    };
    let mut md = bench::markdown(&rows);
    md.push_str(&format!(
        "\nWall time: {wall:.1} s ({size}); {:.0} simulated request-events judged per wall second ({:.2e} in all).\n",
        events / wall,
        events
    ));
    println!("{md}");
    let written = std::fs::create_dir_all(out)
        .and_then(|_| std::fs::write(out.join("detection.md"), &md))
        .and_then(|_| std::fs::write(out.join("detection.csv"), bench::csv(&rows)))
        .and_then(|_| std::fs::write(out.join("detection.svg"), bench::svg(&rows)));
    match written {
        Ok(()) => {
            eprintln!("wrote {}/detection.{{md,csv,svg}} in {wall:.1} s", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing to {}: {e}", out.display());
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_load(
    addr: std::net::SocketAddr,
    host: String,
    path: String,
    rate: f64,
    duration: std::time::Duration,
    connections: usize,
    headers: &[String],
    cacert: Option<&std::path::Path>,
) -> ExitCode {
    let mut parsed = Vec::new();
    for h in headers {
        match h.split_once(':') {
            Some((k, v)) => parsed.push((k.trim().to_owned(), v.trim().to_owned())),
            None => {
                eprintln!("error: --header `{h}`: expected `name: value`");
                return ExitCode::from(2);
            }
        }
    }
    let tls_ca = match cacert.map(std::fs::read_to_string).transpose() {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("error: --cacert: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = bench::load::LoadSpec {
        addr,
        host,
        path,
        headers: parsed,
        rate,
        duration,
        connections,
        tls_ca,
    };
    // one thread, like `wrk -t1`: the client's own cost stays on one CPU
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(bench::load::run(&spec)) {
        Ok(r) => {
            println!(
                "{}",
                serde_json::json!({
                    "sent": r.sent, "errors": r.errors, "throughput": r.throughput,
                    "p50": r.p50, "p90": r.p90, "p99": r.p99, "p999": r.p999, "max": r.max
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_proxy(args: ProxyArgs) -> ExitCode {
    let ProxyArgs {
        routes,
        listen,
        admin,
        admin_token_file,
        probe_path,
        threads,
        drain,
        tls_listen,
        tls_cert,
        local_ca,
        specs,
    } = args;
    // the proxy's warnings (a routes file or key set kept after a bad change) go to stderr
    init_logs(LogFormat::Text, "warn");
    let tls = tls_listen.map(|listen| autopilot::proxy::server::TlsListen {
        listen,
        local_ca: tls_cert.is_empty().then_some(local_ca),
        certs: tls_cert,
    });
    use autopilot::proxy::server;
    let access = if specs.is_empty() {
        None
    } else {
        match spec::load(&specs) {
            Ok(catalog) => Some(std::sync::Arc::new(catalog)),
            Err(LoadError::Invalid(report)) => {
                eprint!("{}", report.render_text());
                return ExitCode::from(1);
            }
            Err(LoadError::Usage(e)) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let table = match server::load_routes(&routes) {
        Ok(t) => t,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(1);
        }
    };
    let token = match admin_token_file {
        Some(f) => match std::fs::read_to_string(&f) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        None => {
            // kept beside the routes file, readable by its owner only; never printed
            let t = random_token();
            let path = routes.with_file_name(autopilot::live::PROXY_ADMIN_TOKEN_FILE);
            if let Err(e) = autopilot::live::write_private(&path, &t) {
                eprintln!(
                    "error: cannot write the proxy admin token to {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
            eprintln!(
                "the proxy admin token (for the admin API on {admin}) is in {} (--admin-token-file to choose one)",
                path.display()
            );
            t
        }
    };
    let config = server::ProxyConfig {
        listen,
        admin,
        admin_token: token,
        routes_file: Some(routes),
        probe_interval: std::time::Duration::from_secs(1),
        probe_path,
        threads: threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        // this process runs one proxy for its whole life
        work_stealing: false,
        access,
        tls,
        drain: drain.0,
    };
    // the stop signals are taken before the proxy serves: a supervisor's SIGTERM at any moment
    // after that stops it (Ctrl-C, or SIGTERM from systemd or a container runtime)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = rt.enter();
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    let (mut term, mut int) = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot take the stop signals: {e}");
            return ExitCode::from(2);
        }
    };
    let handle = match server::start(config, table) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let https = handle
        .tls_listen
        .map(|a| format!(", HTTPS on {a}"))
        .unwrap_or_default();
    eprintln!(
        "autopilot proxy: listening on {}{https}, admin on {} (SIGTERM drains for {drain}, Ctrl-C stops at once)",
        handle.listen, handle.admin
    );
    let draining = rt.block_on(async {
        tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => false,
        }
    });
    // a stop that hangs must not outlive a supervisor's patience: bounded
    let limit = if draining {
        drain.0
    } else {
        std::time::Duration::ZERO
    } + std::time::Duration::from_secs(5);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "autopilot proxy: did not stop within {} s; exiting",
            limit.as_secs()
        );
        std::process::exit(1);
    });
    if draining {
        eprintln!("autopilot proxy: draining for {drain}: no new connections, requests in flight finish");
        handle.drain();
    } else {
        eprintln!("autopilot proxy: stopping");
        handle.stop();
    }
    eprintln!("autopilot proxy: stopped");
    ExitCode::SUCCESS
}

use autopilot::live::random_token;

fn proxy_fixtures(out: &std::path::Path) -> ExitCode {
    use base64::Engine;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let kp = match rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let raw = kp.public_key_raw();
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256", "use": "sig",
        "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])
    }]});
    if let Err(e) =
        std::fs::create_dir_all(out).and_then(|_| std::fs::write(out.join("jwks.json"), jwks.to_string()))
    {
        eprintln!("error: {}: {e}", out.display());
        return ExitCode::from(2);
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let claims = serde_json::json!({
        "sub": "bench", "iss": "https://bench.invalid", "aud": "autopilot", "exp": exp, "groups": ["bench"]
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let token = match jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // a CA and a leaf certificate for the TLS runs (both proxies serve the same certificate)
    let tls = autopilot::proxy::tls::LocalCa::load_or_create(&out.join("ca")).and_then(|ca| {
        let (cert, key) = ca.issue(&["*.prod.example.test".to_owned(), "127.0.0.1".to_owned()])?;
        let write = |name: &str, text: String| {
            std::fs::write(out.join(name), text)
                .map_err(|e| autopilot::proxy::tls::TlsError::Certificate(e.to_string()))
        };
        write("leaf.pem", cert)?;
        write("leaf.key", key)
    });
    if let Err(e) = tls {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let key = random_token();
    let digest: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("API_KEY={key}\nAPI_KEY_SHA256={digest}\nTOKEN={token}");
    ExitCode::SUCCESS
}

/// `NAME[,NAME…]=CERT:KEY`
fn parse_cert_files(s: &str) -> Result<autopilot::proxy::tls::CertFiles, String> {
    let bad = || format!("`{s}`: write NAME[,NAME…]=CERT.pem:KEY.pem");
    let (names, files) = s.rsplit_once('=').ok_or_else(bad)?;
    let (cert, key) = files.split_once(':').ok_or_else(bad)?;
    let names: Vec<String> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() || cert.is_empty() || key.is_empty() {
        return Err(bad());
    }
    Ok(autopilot::proxy::tls::CertFiles {
        cert: cert.into(),
        key: key.into(),
        names,
    })
}

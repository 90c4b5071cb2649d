//! The `autopilot` command line.

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
        #[arg(long)]
        quiet: bool,
    },
    /// Benchmarks that print figures (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Print the JSON Schema of a file kind (for editors and CI).
    Schema {
        #[arg(value_enum)]
        kind: SchemaKind,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Canary judgement: scenarios S0–S8, our judge against Flagger-, Argo- and Kayenta-style
    /// judges and a naive repeated test, next to the information floor. Writes detection.md,
    /// detection.csv and detection.svg.
    Detection {
        /// A small run (a few percent of the documented runs) for CI.
        #[arg(long)]
        quick: bool,
        /// Where to write the files.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
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
                            "ok: {} files, {} services, {} sensors, {} controllers",
                            catalog.files_checked,
                            catalog.services.len(),
                            catalog.sensors.len(),
                            catalog.controllers.len()
                        ),
                        Format::Json => println!(
                            "{}",
                            serde_json::json!({
                                "valid": true,
                                "filesChecked": catalog.files_checked,
                                "errors": [],
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
        Command::Simulate {
            scenarios,
            out,
            quiet,
        } => simulate(&scenarios, out.as_deref(), quiet),
        Command::Bench {
            which: Bench::Detection { quick, out },
        } => bench_detection(quick, &out),
        Command::Schema { kind } => {
            print!("{}", kind.render());
            ExitCode::SUCCESS
        }
    }
}

fn simulate(scenarios: &[PathBuf], out: Option<&std::path::Path>, quiet: bool) -> ExitCode {
    use autopilot::sim;
    let mut failed = false;
    for path in scenarios {
        let started = std::time::Instant::now();
        let result = sim::run_file(path);
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let text = sim::report::timeline(&result);
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
        eprintln!(
            "{}: {} ticks, {} simulated requests judged in {:.2} s ({:.0} per second)",
            result.scenario,
            result.ticks,
            result.generated,
            wall,
            result.generated as f64 / wall.max(1e-9)
        );
        if let Some(dir) = out
            && let Err(e) = write_outputs(dir, &result)
        {
            eprintln!("error: writing to {}: {e}", dir.display());
            return ExitCode::from(2);
        }
        failed |= !result.passed();
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn write_outputs(dir: &std::path::Path, result: &autopilot::sim::SimResult) -> std::io::Result<()> {
    use autopilot::sim::report;
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(format!("{}.json", result.scenario)),
        report::json(result),
    )?;
    std::fs::write(dir.join(format!("{}.svg", result.scenario)), report::svg(result))
}

fn bench_detection(quick: bool, out: &std::path::Path) -> ExitCode {
    use autopilot::sim::bench;
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

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
    /// Print the JSON Schema of a file kind (for editors and CI).
    Schema {
        #[arg(value_enum)]
        kind: SchemaKind,
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
        Command::Schema { kind } => {
            print!("{}", kind.render());
            ExitCode::SUCCESS
        }
    }
}

//! JSON Schemas for every file kind, generated from the same types the loader uses, so
//! an editor's red squiggles and `autopilot validate` never disagree on the shape of a file.
//! The checked-in copies (`objectives/objectives.schema.json` …) are compared with these by a
//! test, which fails when they drift.

use super::controllers::ControllerSpec;
use super::objectives::ServiceSpec;
use super::sensors::SensorLibrary;
use super::simulations::Scenario;

/// A file kind that has a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    Objectives,
    Sensors,
    Controllers,
    Simulations,
    /// `autopilot.yaml`, the configuration of `autopilot up`.
    Autopilot,
    /// The proxy's routes file (`autopilot proxy --routes`).
    Routes,
}

impl SchemaKind {
    /// Every kind, in the order `autopilot schema --help` lists them.
    pub fn all() -> &'static [SchemaKind] {
        <SchemaKind as clap::ValueEnum>::value_variants()
    }

    /// Where the checked-in copy lives, relative to the repository root.
    pub fn checked_in_path(&self) -> &'static str {
        match self {
            SchemaKind::Objectives => "objectives/objectives.schema.json",
            SchemaKind::Sensors => "sensors/sensors.schema.json",
            SchemaKind::Controllers => "controllers/controllers.schema.json",
            SchemaKind::Simulations => "simulations/simulations.schema.json",
            SchemaKind::Autopilot => "src/live/autopilot.schema.json",
            SchemaKind::Routes => "src/proxy/routes.schema.json",
        }
    }

    /// The schema as pretty JSON with a trailing newline.
    pub fn render(&self) -> String {
        let schema = match self {
            SchemaKind::Objectives => schemars::schema_for!(ServiceSpec),
            SchemaKind::Sensors => schemars::schema_for!(SensorLibrary),
            SchemaKind::Controllers => schemars::schema_for!(ControllerSpec),
            SchemaKind::Simulations => schemars::schema_for!(Scenario),
            SchemaKind::Autopilot => schemars::schema_for!(crate::live::config::AutopilotConfig),
            SchemaKind::Routes => schemars::schema_for!(super::routes::RoutesFile),
        };
        let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
        text.push('\n');
        text
    }
}

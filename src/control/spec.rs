//! What `plan` reads of the specs: a service's environments in order, each with its
//! controller and its objectives (with their judges' settings), resolved once from the catalog.

use super::judge::JudgeConfig;
use crate::spec::controllers::ControllerSpec;
use crate::spec::{Catalog, MissingData};
use serde::Serialize;

/// One objective, resolved for planning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectivePlan {
    pub name: String,
    pub judge: JudgeConfig,
    pub missing_data: MissingData,
}

/// One environment, resolved for planning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvPlan {
    pub name: String,
    pub controller: ControllerSpec,
    pub objectives: Vec<ObjectivePlan>,
}

/// A service's specs, resolved for planning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSpec {
    pub service: String,
    /// Environments in promotion order.
    pub environments: Vec<EnvPlan>,
    /// The build policy (from the service's default controller).
    pub build: crate::spec::controllers::BuildPolicy,
}

impl PlanSpec {
    /// Resolves a service of a validated catalog. α and the false-promotion rate are split
    /// evenly between an environment's objectives (a union bound).
    pub fn resolve(catalog: &Catalog, service: &str) -> Option<PlanSpec> {
        let svc = catalog.services.get(service)?;
        let default = catalog.controllers.get(&svc.controller)?;
        let mut environments = Vec::new();
        for env in &svc.environments {
            let controller = match &env.controller {
                Some(name) => catalog.controllers.get(name)?,
                None => default,
            };
            let m = svc.objectives.len().max(1) as f64;
            let mut objectives = Vec::new();
            for o in &svc.objectives {
                let sensor = catalog.sensors.get(&o.sensor)?;
                objectives.push(ObjectivePlan {
                    name: o.name.clone(),
                    judge: JudgeConfig {
                        alpha: controller.analysis.false_rollback_rate.fraction() / m,
                        alpha_safe: controller.analysis.false_promotion_rate.fraction() / m,
                        tolerance: o
                            .tolerance
                            .unwrap_or(controller.analysis.tolerance)
                            .regression
                            .fraction(),
                        safety_tolerance: o
                            .tolerance
                            .unwrap_or(controller.analysis.tolerance)
                            .safety
                            .fraction(),
                        max_bad: o.target.max_bad_ratio(),
                        compare_with_stable: o.compare_with_stable,
                    },
                    missing_data: o
                        .missing_data
                        .clone()
                        .or_else(|| sensor.missing_data.clone())
                        .unwrap_or_else(|| controller.missing_data.clone()),
                });
            }
            environments.push(EnvPlan {
                name: env.name.clone(),
                controller: controller.clone(),
                objectives,
            });
        }
        Some(PlanSpec {
            service: svc.name.clone(),
            environments,
            build: default.build.clone(),
        })
    }
}

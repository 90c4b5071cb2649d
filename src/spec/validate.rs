//! Checks that need more than one field or more than one file: names, ranges, references
//! between services, sensors and controllers, and the fit of a target to its sensor.
//!
//! Every check reports through [`Checker::error`] with the model path of the offending value;
//! the file's [`yaml::Document`](super::yaml::Document) turns it into `line:column`. Nothing
//! stops at the first problem.

use super::controllers::{ControllerSpec, Gate, Ramp};
use super::objectives::{Auth, ServiceSpec};
use super::sensors::{Measures, SensorSource, TEMPLATE_VARIABLES, template_variables};
use super::units::Target;
use super::yaml::{Seg, closest};
use super::{Catalog, Diagnostic, Parsed, SourceFile};
use std::collections::{BTreeMap, HashMap};

struct Checker<'a> {
    diags: &'a mut Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// The specs scenarios named, loaded once per set of paths: the catalog, or what to say
    /// (path in the scenario, message, hint).
    scenario_specs: HashMap<Vec<std::path::PathBuf>, Result<Catalog, ScenarioSpecsError>>,
}

type ScenarioSpecsError = (Vec<Seg>, String, Option<String>);

impl Checker<'_> {
    fn error(&mut self, file: &SourceFile, path: &[Seg], message: String, hint: Option<String>) {
        let d = Self::at(file, path, message, hint);
        self.diags.push(d);
    }

    /// Something that works, but not the way its author may think.
    fn warn(&mut self, file: &SourceFile, path: &[Seg], message: String, hint: Option<String>) {
        let d = Self::at(file, path, message, hint);
        self.warnings.push(d);
    }

    fn at(file: &SourceFile, path: &[Seg], message: String, hint: Option<String>) -> Diagnostic {
        let (pos, yaml_path) = file.locate(path);
        Diagnostic {
            file: file.name.clone(),
            line: pos.line,
            column: pos.column,
            path: yaml_path,
            message,
            hint,
        }
    }
}

/// Builds a path from keys and indices: `p!["objectives", 2, "sensor"]`.
macro_rules! p {
    ($($seg:expr),* $(,)?) => { [$(Seg::from($seg)),*] };
}

/// A DNS label: it becomes part of host names.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_lowercase()
        && !s.ends_with('-')
}

/// A Prometheus metric name.
fn is_metric_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// A reference name (sensors, controllers, objectives): readable, safe in URLs and labels.
fn is_ref_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

fn did_you_mean<'a>(given: &str, known: impl IntoIterator<Item = &'a String> + Clone, what: &str) -> String {
    let names: Vec<&str> = known.clone().into_iter().map(String::as_str).collect();
    if names.is_empty() {
        return format!("no {what} is defined; check the paths given to `autopilot validate`");
    }
    match closest(given, names.iter().copied()) {
        Some(c) => format!("did you mean `{c}`? ({what}s defined: {})", names.join(", ")),
        None => format!("{what}s defined: {}", names.join(", ")),
    }
}

/// Validates everything parsed so far and returns the catalog of what parsed.
pub(super) fn check(files: &[SourceFile], diags: &mut Vec<Diagnostic>) -> Catalog {
    let mut c = Checker {
        diags,
        warnings: Vec::new(),
        scenario_specs: HashMap::new(),
    };
    let mut catalog = Catalog::default();
    // names that exist but failed to parse: referencing them is not a *second* error
    let mut broken_names: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut service_files: Vec<(&SourceFile, &ServiceSpec)> = Vec::new();
    let mut first_seen: HashMap<(&'static str, String), String> = HashMap::new();

    for file in files {
        match &file.parsed {
            Some(Parsed::Sensors(lib)) => {
                for (i, s) in lib.sensors.iter().enumerate() {
                    let path = p!["sensors", i, "name"];
                    if !is_ref_name(&s.name) {
                        c.error(
                            file,
                            &path,
                            format!("sensor name `{}` has characters that are not allowed", s.name),
                            Some("use letters, digits, `.`, `-` and `_`".into()),
                        );
                    }
                    if let Some(first) = first_seen.insert(("sensor", s.name.clone()), file.name.clone()) {
                        c.error(
                            file,
                            &path,
                            format!("sensor `{}` is defined twice", s.name),
                            Some(format!("the first definition is in {first}")),
                        );
                        continue;
                    }
                    check_sensor(&mut c, file, i, &s.source);
                    catalog.sensors.insert(s.name.clone(), s.clone());
                }
                collect_broken(file, "sensors", "sensor", &mut broken_names);
            }
            Some(Parsed::Controller(ctl)) => {
                if let Some(first) = first_seen.insert(("controller", ctl.name.clone()), file.name.clone()) {
                    c.error(
                        file,
                        &p!["name"],
                        format!("controller `{}` is defined twice", ctl.name),
                        Some(format!("the first definition is in {first}")),
                    );
                    continue;
                }
                if !is_ref_name(&ctl.name) {
                    c.error(
                        file,
                        &p!["name"],
                        format!(
                            "controller name `{}` has characters that are not allowed",
                            ctl.name
                        ),
                        Some("use letters, digits, `.`, `-` and `_`".into()),
                    );
                }
                check_controller(&mut c, file, ctl);
                catalog.controllers.insert(ctl.name.clone(), ctl.clone());
            }
            Some(Parsed::Simulation(sim)) => {
                if let Some(first) = first_seen.insert(("simulation", sim.name.clone()), file.name.clone()) {
                    c.error(
                        file,
                        &p!["name"],
                        format!("scenario `{}` is defined twice", sim.name),
                        Some(format!("the first definition is in {first}")),
                    );
                    continue;
                }
                check_scenario(&mut c, file, sim);
                catalog.simulations.insert(
                    sim.name.clone(),
                    (std::path::PathBuf::from(&file.name), sim.clone()),
                );
            }
            Some(Parsed::Routes(routes)) => {
                for (path, message) in routes.problems() {
                    c.error(file, &path, message, None);
                }
            }
            Some(Parsed::Autopilot(config)) => {
                // two listeners on one address: the second could never start. A wildcard
                // address (0.0.0.0, ::) takes its port on every address, so it overlaps any
                // other listener on that port
                let overlap = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
                    a.port() == b.port()
                        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
                };
                let mut seen: Vec<(&str, std::net::SocketAddr)> = Vec::new();
                let listeners = [
                    (&p!["listen"][..], "listen", Some(config.listen)),
                    (&p!["tlsListen"][..], "tlsListen", config.tls_listen),
                    (&p!["admin"][..], "admin", Some(config.admin)),
                    (&p!["api", "listen"][..], "api.listen", Some(config.api.listen)),
                ];
                for (path, field, addr) in listeners {
                    let Some(addr) = addr else { continue };
                    if let Some((other, theirs)) = seen.iter().find(|(_, a)| overlap(*a, addr)) {
                        let message = if *theirs == addr {
                            format!("`{addr}` is already `{other}`'s address")
                        } else {
                            format!(
                                "`{addr}` overlaps `{other}` ({theirs}): a wildcard address takes its port on every address"
                            )
                        };
                        c.error(
                            file,
                            path,
                            message,
                            Some("each listener needs an address of its own".into()),
                        );
                    }
                    seen.push((field, addr));
                }
            }
            Some(Parsed::Service(svc)) => {
                if let Some(first) = first_seen.insert(("service", svc.name.clone()), file.name.clone()) {
                    c.error(
                        file,
                        &p!["name"],
                        format!("service `{}` is defined twice", svc.name),
                        Some(format!(
                            "the first definition is in {first}; one objectives file per service"
                        )),
                    );
                    continue;
                }
                service_files.push((file, svc));
            }
            None => {
                // a file whose top level failed: remember the names it tried to define
                if let Some(doc) = &file.doc {
                    for kind in ["controller", "service"] {
                        if let Some(name) = doc.root.get("name").and_then(|n| n.scalar())
                            && doc
                                .root
                                .get("kind")
                                .and_then(|k| k.scalar())
                                .map(str::to_lowercase)
                                .as_deref()
                                == Some(kind)
                        {
                            broken_names
                                .entry(kind_key(kind))
                                .or_default()
                                .push(name.to_owned());
                        }
                    }
                }
                collect_broken(file, "sensors", "sensor", &mut broken_names);
            }
        }
    }

    for (file, svc) in service_files {
        check_service(&mut c, file, svc, &catalog, &broken_names);
        catalog.services.insert(svc.name.clone(), svc.clone());
        catalog
            .service_files
            .insert(svc.name.clone(), std::path::PathBuf::from(&file.name));
    }
    catalog.warnings = c.warnings;
    catalog
}

fn kind_key(kind: &str) -> &'static str {
    match kind {
        "controller" => "controller",
        "service" => "service",
        _ => "sensor",
    }
}

/// Names of list items that are present in the YAML but were dropped as broken.
fn collect_broken(
    file: &SourceFile,
    list: &str,
    kind: &'static str,
    out: &mut HashMap<&'static str, Vec<String>>,
) {
    let Some(doc) = &file.doc else { return };
    if let Some(super::yaml::NodeKind::Seq(items)) = doc.root.get(list).map(|n| &n.kind) {
        for item in items {
            if let Some(name) = item.get("name").and_then(|n| n.scalar()) {
                out.entry(kind).or_default().push(name.to_owned());
            }
        }
    }
}

fn check_sensor(c: &mut Checker, file: &SourceFile, i: usize, source: &SensorSource) {
    let templates: Vec<(&str, &str)> = match source {
        SensorSource::Prometheus(q) => vec![("bad", q.bad.as_str()), ("total", q.total.as_str())],
        SensorSource::Histogram(_) | SensorSource::Counter(_) | SensorSource::Proxy(_) => vec![],
    };
    let tag = match source {
        SensorSource::Counter(_) => "counter",
        SensorSource::Prometheus(_) => "prometheus",
        SensorSource::Histogram(_) => "histogram",
        SensorSource::Proxy(_) => "proxy",
    };
    for (field, template) in templates {
        let path = p!["sensors", i, "source", tag, field];
        if template.trim().is_empty() {
            c.error(
                file,
                &path,
                format!("`{field}` is empty"),
                Some("write the PromQL that counts these events".into()),
            );
            continue;
        }
        match template_variables(template) {
            Err((offset, why)) => c.error(
                file,
                &path,
                format!("template error at character {}: {why}", offset + 1),
                None,
            ),
            Ok(vars) => {
                for (_, var) in vars {
                    if !TEMPLATE_VARIABLES.contains(&var.as_str()) {
                        let hint = match closest(&var, TEMPLATE_VARIABLES) {
                            Some(v) => format!(
                                "did you mean `{{{{{v}}}}}`? (variables: service, environment, release, window)"
                            ),
                            None => "variables: {{service}}, {{environment}}, {{release}}, {{window}}".into(),
                        };
                        c.error(
                            file,
                            &path,
                            format!("unknown template variable `{{{{{var}}}}}`"),
                            Some(hint),
                        );
                    }
                }
            }
        }
    }
    // the batched forms: the selector must say which label is which identity
    let selector = match source {
        SensorSource::Counter(s) => Some(s.selector.as_str()),
        SensorSource::Histogram(h) => Some(h.selector.as_str()),
        _ => None,
    };
    if let Some(selector) = selector
        && let Err(e) = super::promql::identity_selector(selector)
    {
        c.error(
            file,
            &p!["sensors", i, "source", tag, "selector"],
            e.message,
            Some(r#"e.g. `service="{{service}}",env="{{environment}}",version="{{release}}"`"#.into()),
        );
    }
    if let SensorSource::Counter(s) = source {
        if !is_metric_name(&s.metric) {
            c.error(
                file,
                &p!["sensors", i, "source", tag, "metric"],
                format!("`{}` is not a metric name", s.metric),
                Some("letters, digits, `_` and `:`, e.g. `http_requests_total`".into()),
            );
        }
        match super::promql::parse_matchers(&s.bad) {
            Ok(m) if m.is_empty() => c.error(
                file,
                &p!["sensors", i, "source", tag, "bad"],
                "`bad` is empty: every event would count as good".into(),
                Some(r#"e.g. `code=~"5.."`"#.into()),
            ),
            Ok(_) => {}
            Err(e) => c.error(
                file,
                &p!["sensors", i, "source", tag, "bad"],
                format!("at character {}: {}", e.offset + 1, e.message),
                Some(r#"label matchers, e.g. `code=~"5.."`"#.into()),
            ),
        }
    }
    if let SensorSource::Histogram(h) = source {
        if !is_metric_name(&h.metric) {
            c.error(
                file,
                &p!["sensors", i, "source", "histogram", "metric"],
                format!("`{}` is not a metric name", h.metric),
                None,
            );
        } else if h.metric.trim().is_empty() || h.metric.ends_with("_bucket") || h.metric.ends_with("_count")
        {
            c.error(
                file,
                &p!["sensors", i, "source", "histogram", "metric"],
                format!("`{}` is not a histogram's base name", h.metric),
                Some(
                    "write the name without `_bucket` or `_count`, e.g. `http_request_duration_seconds`"
                        .into(),
                ),
            );
        }
        if let Some(buckets) = &h.buckets {
            let increasing = buckets.windows(2).all(|w| w[0] < w[1]);
            if buckets.is_empty() || !increasing || buckets.iter().any(|b| !b.is_finite() || *b <= 0.0) {
                c.error(
                    file,
                    &p!["sensors", i, "source", "histogram", "buckets"],
                    "bucket bounds must be positive and strictly increasing".into(),
                    None,
                );
            }
        }
    }
}

/// A recording is either one export with matchers, or files per arm — never half of each.
fn check_replay(c: &mut Checker, file: &SourceFile, replay: &super::simulations::Replay) {
    for (name, o) in &replay.objectives {
        let at = |rest: &[&str]| {
            let mut v = vec![
                Seg::from("replay"),
                Seg::from("objectives"),
                Seg::from(name.as_str()),
            ];
            v.extend(rest.iter().map(|s| Seg::from(*s)));
            v
        };
        let matchers = |c: &mut Checker, text: &str, path: Vec<Seg>| {
            if let Err(e) = super::promql::parse_matchers(text) {
                c.error(
                    file,
                    &path,
                    format!("at character {}: {}", e.offset + 1, e.message),
                    Some(r#"label matchers, e.g. `version="v2"`"#.into()),
                );
            }
        };
        match &o.export {
            Some(_) => {
                match &o.bad {
                    Some(b) => matchers(c, b, at(&["bad"])),
                    None => c.error(
                        file,
                        &at(&["export"]),
                        "an export needs `bad`: the matchers that pick its bad series".into(),
                        Some(r#"e.g. `bad: code=~"5.."`"#.into()),
                    ),
                }
                for (arm, rec) in [("canary", &o.canary), ("stable", &o.stable)] {
                    match &rec.matches {
                        Some(m) => matchers(c, m, at(&[arm, "match"])),
                        None => c.error(
                            file,
                            &at(&[arm]),
                            format!("with `export`, the {arm} names its series with `match`"),
                            Some(r#"e.g. `match: version="v2"`"#.into()),
                        ),
                    }
                    if rec.bad.is_some() || rec.total.is_some() {
                        c.error(
                            file,
                            &at(&[arm]),
                            "`bad`/`total` files and an `export` cannot be mixed".into(),
                            Some("keep the export and `match`, or drop the export".into()),
                        );
                    }
                }
            }
            None => {
                if o.bad.is_some() {
                    c.error(
                        file,
                        &at(&["bad"]),
                        "`bad` matchers need an `export`".into(),
                        None,
                    );
                }
                for (arm, rec) in [("canary", &o.canary), ("stable", &o.stable)] {
                    if rec.bad.is_none() || rec.total.is_none() {
                        c.error(
                            file,
                            &at(&[arm]),
                            format!("the {arm} needs `bad` and `total` files (or the objective an `export`)"),
                            None,
                        );
                    }
                    if rec.matches.is_some() {
                        c.error(
                            file,
                            &at(&[arm, "match"]),
                            "`match` needs the objective's `export`".into(),
                            None,
                        );
                    }
                }
            }
        }
    }
}

fn check_scenario(c: &mut Checker, file: &SourceFile, sim: &super::simulations::Scenario) {
    use super::simulations::IncidentKind;
    if super::units::utc_seconds(&sim.start).is_err() {
        c.error(
            file,
            &p!["start"],
            format!("`{}` is not a UTC time", sim.start),
            Some("write `YYYY-MM-DDTHH:MM:SSZ`, such as `2026-11-30T09:00:00Z`".into()),
        );
    }
    if sim.specs.is_empty() {
        c.error(
            file,
            &p!["specs"],
            "no spec files".into(),
            Some("list the objectives, sensors and controllers to use, relative to this file".into()),
        );
    }
    if let Some(replay) = &sim.replay {
        check_replay(c, file, replay);
    }
    if !(sim.traffic.rate.is_finite() && sim.traffic.rate > 0.0) {
        c.error(
            file,
            &p!["traffic", "rate"],
            "the traffic rate must be positive".into(),
            None,
        );
    }
    // a year of simulated time takes minutes to run; more is a typo (`365d` meant, `100000000h`
    // written), and would run for days
    if sim.duration.0 > MAX_SCENARIO_DURATION {
        c.error(
            file,
            &p!["duration"],
            format!(
                "{} is longer than a scenario may run ({} days at most)",
                sim.duration,
                MAX_SCENARIO_DURATION.as_secs() / 86400
            ),
            Some("replay the part of an incident that matters: hours or days, not years".into()),
        );
    }
    if sim.tick > sim.duration {
        c.error(
            file,
            &p!["tick"],
            format!(
                "the tick ({}) is longer than the simulation ({})",
                sim.tick, sim.duration
            ),
            None,
        );
    }
    let mut names: Vec<&str> = vec![&sim.stable.name];
    for (i, r) in sim.releases.iter().enumerate() {
        if names.contains(&r.name.as_str()) {
            c.error(
                file,
                &p!["releases", i, "name"],
                format!("release `{}` is defined twice", r.name),
                None,
            );
        }
        names.push(&r.name);
        if r.pushed_at > sim.duration {
            c.error(
                file,
                &p!["releases", i, "pushedAt"],
                "pushed after the simulation ends".into(),
                None,
            );
        }
    }
    let known = |c: &mut Checker, path: &[Seg], name: &str| {
        if !names.contains(&name) {
            let hint = match closest(name, names.iter().copied()) {
                Some(n) => format!("did you mean `{n}`? (releases: {})", names.join(", ")),
                None => format!("releases: {}", names.join(", ")),
            };
            c.error(file, path, format!("unknown release `{name}`"), Some(hint));
        }
    };
    for (i, inc) in sim.incidents.iter().enumerate() {
        match &inc.what {
            IncidentKind::ErrorStep { release, .. } => {
                known(c, &p!["incidents", i, "what", "errorStep", "release"], release)
            }
            IncidentKind::Drift { release, .. } => {
                known(c, &p!["incidents", i, "what", "drift", "release"], release);
                if inc.lasts.is_none() {
                    c.error(
                        file,
                        &p!["incidents", i],
                        "a drift needs `for:` (how long it takes)".into(),
                        None,
                    );
                }
            }
            IncidentKind::Burst { .. }
            | IncidentKind::Gap { .. }
            | IncidentKind::PrometheusOutage
            | IncidentKind::PortDown { .. } => {
                if inc.lasts.is_none() {
                    c.error(
                        file,
                        &p!["incidents", i],
                        "this incident needs `for:` (how long it lasts)".into(),
                        None,
                    );
                }
            }
            IncidentKind::CounterReset { .. } => {}
        }
    }
    for (i, e) in sim.expect.iter().enumerate() {
        known(c, &p!["expect", i, "release"], &e.release);
    }
    for (i, o) in sim.operators.iter().enumerate() {
        use super::simulations::OperatorKind;
        match &o.action {
            OperatorKind::Pin(release) => known(c, &p!["operators", i, "action", "pin"], release),
            OperatorKind::Approve(a) => {
                known(c, &p!["operators", i, "action", "approve", "release"], &a.release)
            }
            _ => {}
        }
    }
    check_scenario_service(c, file, sim);
}

/// The longest scenario: a year and a day.
pub const MAX_SCENARIO_DURATION: std::time::Duration = std::time::Duration::from_secs(366 * 86400);

thread_local! {
    /// Set while a scenario's own specs are loaded, so a scenario among them is not followed.
    static IN_SCENARIO_SPECS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Loads a scenario's specs, or says what is wrong with them.
fn load_scenario_specs(
    sim: &super::simulations::Scenario,
    paths: &[std::path::PathBuf],
    base: &std::path::Path,
) -> Result<Catalog, ScenarioSpecsError> {
    IN_SCENARIO_SPECS.with(|f| f.set(true));
    let loaded = super::load(paths);
    IN_SCENARIO_SPECS.with(|f| f.set(false));
    match loaded {
        Ok(catalog) => Ok(catalog),
        Err(super::LoadError::Usage(e)) => {
            let at = match &e {
                super::UsageError::NotFound(missing) => paths.iter().position(|p| p == missing),
                _ => None,
            };
            let path = match at {
                Some(i) => p!["specs", i].to_vec(),
                None => p!["specs"].to_vec(),
            };
            Err((
                path,
                format!("the scenario's specs cannot be read: {e}"),
                Some(format!("paths are relative to {}", base.display())),
            ))
        }
        Err(super::LoadError::Invalid(report)) => {
            let first = &report.diagnostics[0];
            Err((
                p!["specs"].to_vec(),
                format!(
                    "the scenario's specs have {} problem(s), the first at {}:{}:{}: {}",
                    report.diagnostics.len(),
                    first.file,
                    first.line,
                    first.column,
                    first.message
                ),
                Some(format!("run `autopilot validate {}`", sim.specs.join(" "))),
            ))
        }
    }
}

/// Loads the specs a scenario names (relative to its file) and checks that its service,
/// environments and objectives are theirs: a misspelt environment would otherwise be ignored.
fn check_scenario_service(c: &mut Checker, file: &SourceFile, sim: &super::simulations::Scenario) {
    if IN_SCENARIO_SPECS.with(|f| f.get()) || sim.specs.is_empty() {
        return;
    }
    let base = std::path::Path::new(&file.name)
        .parent()
        .unwrap_or(std::path::Path::new("."));
    let paths: Vec<std::path::PathBuf> = sim.specs.iter().map(|s| base.join(s)).collect();
    let loaded = c
        .scenario_specs
        .entry(paths.clone())
        .or_insert_with(|| load_scenario_specs(sim, &paths, base))
        .clone();
    let catalog = match loaded {
        Ok(catalog) => catalog,
        Err((path, message, hint)) => {
            c.error(file, &path, message, hint);
            return;
        }
    };
    let Some(svc) = catalog.services.get(&sim.service) else {
        let names: Vec<&str> = catalog.services.keys().map(String::as_str).collect();
        let hint = match closest(&sim.service, names.iter().copied()) {
            Some(n) => format!("did you mean `{n}`? (services: {})", names.join(", ")),
            None => format!("services in the specs: {}", names.join(", ")),
        };
        c.error(
            file,
            &p!["service"],
            format!("service `{}` is not in the scenario's specs", sim.service),
            Some(hint),
        );
        return;
    };
    let envs: Vec<&str> = svc.environments.iter().map(|e| e.name.as_str()).collect();
    let env_known = |c: &mut Checker, path: &[Seg], name: &str| {
        if !envs.contains(&name) {
            let hint = match closest(name, envs.iter().copied()) {
                Some(n) => format!(
                    "did you mean `{n}`? ({}'s environments: {})",
                    svc.name,
                    envs.join(", ")
                ),
                None => format!("{}'s environments: {}", svc.name, envs.join(", ")),
            };
            c.error(
                file,
                path,
                format!("`{name}` is not an environment of {}", svc.name),
                Some(hint),
            );
        }
    };
    for env in sim.traffic.environments.keys() {
        env_known(c, &p!["traffic", "environments", env.as_str()], env);
    }
    for (i, o) in sim.operators.iter().enumerate() {
        env_known(c, &p!["operators", i, "environment"], &o.environment);
    }
    for (i, e) in sim.expect.iter().enumerate() {
        env_known(c, &p!["expect", i, "environment"], &e.environment);
    }
    if let Some(replay) = &sim.replay {
        env_known(c, &p!["replay", "environment"], &replay.environment);
        let objectives: Vec<&str> = svc.objectives.iter().map(|o| o.name.as_str()).collect();
        for name in replay.objectives.keys() {
            if !objectives.contains(&name.as_str()) {
                let hint = match closest(name, objectives.iter().copied()) {
                    Some(n) => format!("did you mean `{n}`? (objectives: {})", objectives.join(", ")),
                    None => format!("{}'s objectives: {}", svc.name, objectives.join(", ")),
                };
                c.error(
                    file,
                    &p!["replay", "objectives", name.as_str()],
                    format!("`{name}` is not an objective of {}", svc.name),
                    Some(hint),
                );
            }
        }
    }
}

/// A bake watches something: a time, a share on each side, a strategy that ramps.
fn check_bake(c: &mut Checker, file: &SourceFile, ctl: &ControllerSpec) {
    use crate::spec::controllers::Strategy;
    let Some(bake) = &ctl.bake else {
        return;
    };
    if let Strategy::BlueGreen(_) = ctl.strategy {
        c.error(
            file,
            &p!["bake"],
            "a blueGreen rollout switches all traffic at once: it keeps no baseline share to bake against".into(),
            Some("remove `bake` (the previous release stays deployed for `rollbackWindow`), or use `strategy: canary`".into()),
        );
    }
    if bake.duration.0.is_zero() {
        c.error(
            file,
            &p!["bake", "for"],
            "a bake of 0s watches nothing".into(),
            Some("watch for a while, e.g. `30m`, or remove `bake`".into()),
        );
    }
    let baseline = bake.baseline.fraction();
    if baseline <= 0.0 {
        c.error(
            file,
            &p!["bake", "baseline"],
            "a baseline of 0% leaves the watch nothing to compare the release with".into(),
            Some("keep a share of the traffic on the previous release, e.g. `10%`".into()),
        );
    } else if baseline > 0.5 || (100.0 * baseline).round() < 1.0 {
        c.error(
            file,
            &p!["bake", "baseline"],
            format!(
                "a baseline of {} {}",
                bake.baseline,
                if baseline > 0.5 {
                    "gives the previous release most of the traffic: the release would not be promoted yet"
                } else {
                    "rounds to no traffic (weights are whole percents)"
                }
            ),
            Some("use a share between 1% and 50%, e.g. `10%`".into()),
        );
    }
}

/// The strategy and the ramp agree: a canary and a shadow rollout ramp, a blue/green switch
/// does not; a mirror copies some requests.
fn check_strategy(c: &mut Checker, file: &SourceFile, ctl: &ControllerSpec) {
    use crate::spec::controllers::Strategy;
    match (&ctl.strategy, &ctl.ramp) {
        (Strategy::Canary | Strategy::Shadow(_), None) => c.error(
            file,
            &p![],
            format!(
                "`ramp` is missing: a {} rollout ramps the release's share of traffic",
                ctl.strategy.name()
            ),
            Some("add e.g. `ramp: {steps: [5, 25, 50]}`".into()),
        ),
        (Strategy::BlueGreen(_), Some(_)) => c.error(
            file,
            &p!["ramp"],
            "a blueGreen rollout has no ramp: it switches all traffic at once".into(),
            Some("remove `ramp`, or use `strategy: canary`".into()),
        ),
        _ => {}
    }
    let (variant, mirror) = match &ctl.strategy {
        Strategy::Canary => return,
        Strategy::AbTest(ab) => {
            for (rest, message) in ab.segment.problems() {
                let mut path: Vec<Seg> = p!["strategy", "abTest", "segment"].to_vec();
                path.extend(rest);
                c.error(file, &path, message, None);
            }
            return;
        }
        Strategy::BlueGreen(b) => ("blueGreen", b.mirror.as_ref()),
        Strategy::Shadow(s) => ("shadow", Some(&s.mirror)),
    };
    if let Some(m) = mirror {
        if m.share.fraction() <= 0.0 {
            c.error(
                file,
                &p!["strategy", variant, "mirror", "share"],
                "a share of 0% copies nothing: the release would be judged on no evidence".into(),
                Some("copy a share above 0%, e.g. `25%`".into()),
            );
        }
        if m.methods.is_empty() {
            c.error(
                file,
                &p!["strategy", variant, "mirror", "methods"],
                "no method is copied".into(),
                Some("leave `methods` out to copy the safe ones (GET, HEAD, OPTIONS)".into()),
            );
        }
        use crate::spec::routes::Method;
        for (j, m) in m.methods.iter().enumerate() {
            if matches!(m, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
                c.warn(
                    file,
                    &p!["strategy", variant, "mirror", "methods", j],
                    format!(
                        "copied {} requests are carried out twice, once by each release",
                        m.as_str()
                    ),
                    Some("copy writes only to a release whose writes go nowhere real".into()),
                );
            }
        }
    } else {
        c.warn(
            file,
            &p!["strategy", variant],
            "judged only on requests to the release's preview URL: if nothing calls it, there is no evidence and the progress deadline decides".into(),
            Some("add `mirror: {share: 100%}` to judge it on copies of live requests too".into()),
        );
    }
}

/// An environment whose controller starts with a segment (A/B): claims need verified callers,
/// and only the proxy's own sensors can tell the segment's requests from the others.
fn check_segment_use(
    c: &mut Checker,
    file: &SourceFile,
    svc: &ServiceSpec,
    catalog: &Catalog,
    i: usize,
    ctl_name: &str,
    segment: &crate::spec::routes::Segment,
) {
    use crate::spec::routes::Attribute;
    let env = &svc.environments[i];
    let claims = segment.rules.iter().any(|r| matches!(r, Attribute::Claim(_)));
    if claims && env.auth == Auth::None {
        c.warn(
            file,
            &p!["environments", i, "auth"],
            format!(
                "controller `{ctl_name}` picks its segment by token claims, and `auth: none` verifies no token: those rules match nobody"
            ),
            Some("set `auth: required`, or pick the segment by header or cookie".into()),
        );
    }
    for (j, o) in svc.objectives.iter().enumerate() {
        let proxy = catalog
            .sensors
            .get(&o.sensor)
            .is_none_or(|s| matches!(s.source, SensorSource::Proxy(_)));
        if !proxy {
            c.warn(
                file,
                &p!["objectives", j, "sensor"],
                format!(
                    "in {} (controller `{ctl_name}`, abTest) sensor `{}` cannot tell the segment's requests from the others: the segment's canary is compared with all of stable's requests, not like with like",
                    env.name, o.sensor
                ),
                Some("judge the segment on `proxy.errors` / `proxy.latency`, which count it apart".into()),
            );
        }
    }
}

fn check_controller(c: &mut Checker, file: &SourceFile, ctl: &ControllerSpec) {
    check_strategy(c, file, ctl);
    check_bake(c, file, ctl);
    match &ctl.ramp {
        None => {}
        Some(Ramp::Steps(steps)) => {
            if steps.is_empty() {
                c.error(
                    file,
                    &p!["ramp", "steps"],
                    "the ramp has no steps".into(),
                    Some("list the canary's weights in percent, e.g. `[5, 25, 50]`".into()),
                );
            }
            for (j, w) in steps.iter().enumerate() {
                if w.0 == 0 {
                    c.error(
                        file,
                        &p!["ramp", "steps", j],
                        "a step of weight 0 sends the canary no traffic".into(),
                        Some("steps are between 1 and 100".into()),
                    );
                }
                if w.0 == 100 {
                    c.error(
                        file,
                        &p!["ramp", "steps", j],
                        "a step of 100% leaves no stable traffic to compare the canary with".into(),
                        Some(
                            "end the ramp below 100 (e.g. 50): after the last step the canary is promoted"
                                .into(),
                        ),
                    );
                }
                if j > 0 && steps[j - 1] >= *w {
                    c.error(
                        file,
                        &p!["ramp", "steps", j],
                        format!("steps must increase: {} comes after {}", w.0, steps[j - 1].0),
                        None,
                    );
                }
            }
        }
        Some(Ramp::Adaptive(a)) => {
            if a.start.0 == 0 {
                c.error(
                    file,
                    &p!["ramp", "adaptive", "start"],
                    "the first weight must be at least 1".into(),
                    None,
                );
            }
            if a.max.0 == 100 {
                c.error(
                    file,
                    &p!["ramp", "adaptive", "max"],
                    "a weight of 100% leaves no stable traffic to compare the canary with".into(),
                    Some("use a maximum below 100 (e.g. 50): after it the canary is promoted".into()),
                );
            }
            if a.start > a.max {
                c.error(
                    file,
                    &p!["ramp", "adaptive", "max"],
                    format!("`max` ({}) is below `start` ({})", a.max.0, a.start.0),
                    None,
                );
            }
            if !(a.factor > 1.0 && a.factor.is_finite()) {
                c.error(
                    file,
                    &p!["ramp", "adaptive", "factor"],
                    format!("factor {} does not grow the weight", a.factor),
                    Some("use a factor above 1, such as 2".into()),
                );
            }
        }
    }
    let an = &ctl.analysis;
    for (field, rate) in [
        ("falseRollbackRate", an.false_rollback_rate),
        ("falsePromotionRate", an.false_promotion_rate),
    ] {
        if !(rate.0 > 0.0 && rate.0 < 0.5) {
            c.error(
                file,
                &p!["analysis", field],
                format!("{field} {rate} is outside (0%, 50%)"),
                Some(
                    "a rate such as `1%` or `5%`: the chance the judge may be wrong over a whole rollout"
                        .into(),
                ),
            );
        }
    }
    if an.interval > ctl.progress_deadline {
        c.error(
            file,
            &p!["analysis", "interval"],
            format!(
                "the analysis interval ({}) is longer than the progress deadline ({})",
                an.interval, ctl.progress_deadline
            ),
            None,
        );
    }
    if ctl.missing_data.hold > ctl.progress_deadline {
        c.error(
            file,
            &p!["missingData", "hold"],
            format!(
                "holding on missing data for {} outlasts the progress deadline ({})",
                ctl.missing_data.hold, ctl.progress_deadline
            ),
            None,
        );
    }
    if ctl.blast_radius.budget == 0 {
        c.error(
            file,
            &p!["blastRadius", "budget"],
            "a budget of 0 bad requests allows no canary at all".into(),
            Some("set the most bad requests a rollout may cost, e.g. 100".into()),
        );
    }
    for (j, gate) in ctl.promotion.gates.iter().enumerate() {
        match gate {
            Gate::Automatic | Gate::Soak(_) => {}
            Gate::Approval(a) => {
                if a.groups.is_empty() {
                    c.error(
                        file,
                        &p!["promotion", "gates", j, "approval", "groups"],
                        "nobody may approve: `groups` is empty".into(),
                        None,
                    );
                }
                if a.count == 0 {
                    c.error(
                        file,
                        &p!["promotion", "gates", j, "approval", "count"],
                        "an approval needs at least 1 approver".into(),
                        None,
                    );
                }
            }
            Gate::Window(w) => {
                if w.days.is_empty() {
                    c.error(
                        file,
                        &p!["promotion", "gates", j, "window", "days"],
                        "the window is open on no day".into(),
                        None,
                    );
                }
                for (k, d) in w.days.iter().enumerate() {
                    if w.days[..k].contains(d) {
                        c.error(
                            file,
                            &p!["promotion", "gates", j, "window", "days", k],
                            format!("day `{d:?}` is listed twice").to_lowercase(),
                            None,
                        );
                    }
                }
                if w.from == w.to {
                    c.error(
                        file,
                        &p!["promotion", "gates", j, "window", "to"],
                        "the window opens and closes at the same time".into(),
                        None,
                    );
                }
            }
        }
    }
    if ctl.promotion.gates.len() > 1 && ctl.promotion.gates.contains(&Gate::Automatic) {
        c.error(
            file,
            &p!["promotion", "gates"],
            "`automatic` with other gates means nothing".into(),
            Some("remove `automatic`; an empty list is automatic".into()),
        );
    }
    if ctl.build.concurrency == 0 {
        c.error(
            file,
            &p!["build", "concurrency"],
            "concurrency 0 would never build".into(),
            None,
        );
    }
    if ctl.build.max_per_hour == 0 {
        c.error(
            file,
            &p!["build", "maxPerHour"],
            "maxPerHour 0 would never build".into(),
            Some("use `trigger: manual` to build only on request".into()),
        );
    }
}

/// An image repository (`registry.example.com/team/app`): no tag, no digest (a release is
/// pinned by the digest of each artifact, never by a tag).
pub(crate) fn check_image_repository(repo: &str) -> Result<(), String> {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if repo.contains('@') || last.contains(':') {
        return Err(format!(
            "`{repo}` names a tag or a digest; write the repository alone (releases are pinned by digest)"
        ));
    }
    let ok = !repo.is_empty()
        && repo.split('/').enumerate().all(|(i, part)| {
            !part.is_empty()
                && (if i == 0 && repo.contains('/') {
                    // a registry host (`host`, `host:port`) or the first path component
                    part.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:_[]".contains(&b))
                } else {
                    part.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
                })
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{repo}` is not an image repository (lowercase path components under a registry host, e.g. `registry.example.com/shop/checkout`)"
        ))
    }
}

/// A Kubernetes resource (`cpu`, `memory`, `ephemeral-storage`, `hugepages-2Mi`, or an
/// extended resource with a domain, `nvidia.com/gpu`) and a quantity (`250m`, `1.5`, `256Mi`,
/// `1e3`).
pub(crate) fn check_resource(name: &str, quantity: &str) -> Result<(), String> {
    let standard = matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-");
    let extended = name.split_once('/').is_some_and(|(domain, rest)| {
        domain.contains('.')
            && !rest.is_empty()
            && (domain.bytes().chain(rest.bytes()))
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    });
    if !standard && !extended {
        return Err(format!(
            "`{name}` is not a Kubernetes resource: `cpu`, `memory`, `ephemeral-storage`, `hugepages-SIZE`, or `DOMAIN/NAME`"
        ));
    }
    let number_end = quantity
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+'))
        .map_or(quantity.len(), |(i, _)| i);
    let (number, suffix) = quantity.split_at(number_end);
    let number_ok = !number.is_empty()
        && number
            .trim_start_matches('+')
            .parse::<f64>()
            .is_ok_and(|v| v.is_finite() && v >= 0.0);
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| e.trim_start_matches(['+', '-']).parse::<u32>().is_ok());
    let suffix_ok = exponent
        || matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        );
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "`{quantity}` is not a Kubernetes quantity for `{name}` (a number with an optional suffix: m, k, M, G, Ki, Mi, Gi …)"
        ))
    }
}

fn check_service(
    c: &mut Checker,
    file: &SourceFile,
    svc: &ServiceSpec,
    catalog: &Catalog,
    broken: &HashMap<&'static str, Vec<String>>,
) {
    let is_broken = |kind: &str, name: &str| broken.get(kind).is_some_and(|v| v.iter().any(|n| n == name));
    if !is_dns_label(&svc.name) {
        c.error(file, &p!["name"], format!("service name `{}` is not a DNS label", svc.name),
            Some("use lowercase letters, digits and `-`, starting with a letter (it becomes part of host names)".into()));
    }
    if let Some(source) = &svc.source
        && source.repository.trim().is_empty()
    {
        c.error(
            file,
            &p!["source", "repository"],
            "the repository is empty".into(),
            None,
        );
    }
    match &svc.build {
        Some(build) => {
            if svc.source.is_none() {
                c.error(
                    file,
                    &p!["build"],
                    "`build` needs `source`: the repository whose commits are built".into(),
                    Some("add `source: {repository: …, branch: main}`, or remove `build` if your own CI builds the releases (then set `run.image`)".into()),
                );
            }
            if build.command.trim().is_empty() {
                c.error(
                    file,
                    &p!["build", "command"],
                    "the build command is empty".into(),
                    None,
                );
            }
            match &build.artifact {
                super::objectives::Artifact::Files(f) if f.is_empty() => {
                    c.error(
                        file,
                        &p!["build", "artifact", "files"],
                        "no files to pack".into(),
                        None,
                    );
                }
                super::objectives::Artifact::Image(repo) => {
                    if let Err(e) = check_image_repository(repo) {
                        c.error(file, &p!["build", "artifact", "image"], e, None);
                    }
                }
                super::objectives::Artifact::Files(_) => {}
            }
        }
        None => {
            if svc.run.image.is_none() {
                c.error(
                    file,
                    &p!["run"],
                    "no way for a release to arrive: the service has no `build` and no `run.image`".into(),
                    Some("add `build` (autopilot builds each commit of `source`), or `run.image: REGISTRY/REPOSITORY` (your CI builds images and announces each digest with `autopilot release create`)".into()),
                );
            }
        }
    }
    if let Some(repo) = &svc.run.image
        && let Err(e) = check_image_repository(repo)
    {
        c.error(file, &p!["run", "image"], e, None);
    }
    if let Some(r) = &svc.run.resources {
        for (which, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (name, quantity) in map {
                if let Err(e) = check_resource(name, quantity) {
                    c.error(
                        file,
                        &p!["run", "resources", which, name.as_str()],
                        e,
                        Some("e.g. `cpu: 250m`, `memory: 256Mi`, `ephemeral-storage: 1Gi`, `nvidia.com/gpu: 1`".into()),
                    );
                }
            }
        }
    }
    if svc.run.command.trim().is_empty() {
        c.error(
            file,
            &p!["run", "command"],
            "the run command is empty".into(),
            None,
        );
    }
    let pv = &svc.run.port_variable;
    if pv.is_empty()
        || !pv
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        || pv.as_bytes()[0].is_ascii_digit()
    {
        c.error(
            file,
            &p!["run", "portVariable"],
            format!("`{pv}` is not an environment variable name"),
            Some("use uppercase letters, digits and `_`, such as `PORT`".into()),
        );
    }
    if !svc.run.readiness.starts_with('/') {
        c.error(
            file,
            &p!["run", "readiness"],
            format!("readiness path `{}` must start with `/`", svc.run.readiness),
            None,
        );
    }
    if svc.run.replicas == 0 {
        c.error(
            file,
            &p!["run", "replicas"],
            "0 replicas would serve nothing".into(),
            Some("at least 1".into()),
        );
    }

    let controller_ref = |c: &mut Checker, path: &[Seg], name: &str| {
        if !catalog.controllers.contains_key(name) && !is_broken("controller", name) {
            c.error(
                file,
                path,
                format!("unknown controller `{name}`"),
                Some(did_you_mean(name, catalog.controllers.keys(), "controller")),
            );
        }
    };
    controller_ref(c, &p!["controller"], &svc.controller);

    if svc.environments.is_empty() {
        c.error(
            file,
            &p!["environments"],
            "no environments: a release would have nowhere to go".into(),
            Some("list them in order, e.g. dev, staging, prod".into()),
        );
    }
    let mut env_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, env) in svc.environments.iter().enumerate() {
        if let Some(first) = env_names.insert(&env.name, i) {
            c.error(
                file,
                &p!["environments", i, "name"],
                format!("environment `{}` is listed twice", env.name),
                Some(format!(
                    "the first is environments[{first}]; environment names are unique within a service"
                )),
            );
        }
        if !is_dns_label(&env.name) {
            c.error(
                file,
                &p!["environments", i, "name"],
                format!("environment name `{}` is not a DNS label", env.name),
                Some("use lowercase letters, digits and `-` (it becomes part of host names)".into()),
            );
        }
        if let Some(ctl) = &env.controller {
            controller_ref(c, &p!["environments", i, "controller"], ctl);
        }
        let ctl_name = env.controller.as_deref().unwrap_or(&svc.controller);
        if let Some(segment) = catalog
            .controllers
            .get(ctl_name)
            .and_then(|c| c.strategy.segment())
        {
            check_segment_use(c, file, svc, catalog, i, ctl_name, segment);
        }
        if env.auth == Auth::None && env.allow.is_some() {
            c.error(
                file,
                &p!["environments", i, "allow"],
                "`allow` has no effect with `auth: none`".into(),
                Some("set `auth: required`, or remove `allow`".into()),
            );
        }
    }

    // (objectives that are there but broken were reported already, each where it is)
    let broken_objective = c
        .diags
        .iter()
        .any(|d| d.file == file.name && d.path.starts_with("objectives["));
    if svc.objectives.is_empty() && !broken_objective {
        c.error(
            file,
            &p!["objectives"],
            "no objectives: the judge would have nothing to judge".into(),
            Some("add at least an error-rate objective, e.g. sensor `proxy.errors`, target `< 1%`".into()),
        );
    }
    let mut objective_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, obj) in svc.objectives.iter().enumerate() {
        if objective_names.insert(&obj.name, i).is_some() {
            c.error(
                file,
                &p!["objectives", i, "name"],
                format!("objective `{}` is defined twice", obj.name),
                None,
            );
        }
        if !is_ref_name(&obj.name) {
            c.error(
                file,
                &p!["objectives", i, "name"],
                format!(
                    "objective name `{}` has characters that are not allowed",
                    obj.name
                ),
                None,
            );
        }
        let Some(sensor) = catalog.sensors.get(&obj.sensor) else {
            if !is_broken("sensor", &obj.sensor) {
                c.error(
                    file,
                    &p!["objectives", i, "sensor"],
                    format!("unknown sensor `{}`", obj.sensor),
                    Some(did_you_mean(&obj.sensor, catalog.sensors.keys(), "sensor")),
                );
            }
            continue;
        };
        let measures = sensor.source.measures();
        match (obj.target, measures) {
            (Target::BadRatio { .. }, Measures::Ratio) => {}
            (Target::Latency { threshold, .. }, Measures::Latency) => {
                if let SensorSource::Histogram(h) = &sensor.source
                    && let Some(buckets) = &h.buckets
                {
                    let t = h.unit.convert(threshold);
                    let used = super::sensors::bucket_for(buckets, t);
                    if used.is_some_and(|b| b != t) || used.is_none() {
                        let counted = match used {
                            Some(b) => format!(
                                "requests slower than {b} {} count as bad, a stricter line than {threshold}",
                                h.unit.name()
                            ),
                            None => "no bucket lies at or below it, so nothing can be counted".into(),
                        };
                        c.warn(
                            file,
                            &p!["objectives", i, "target"],
                            format!(
                                "sensor `{}` has no histogram bucket at {threshold}: {counted}",
                                obj.sensor
                            ),
                            Some(
                                format!(
                                    "Prometheus can only count at bucket bounds: {buckets:?} ({}); add a bucket at the threshold to count exactly",
                                    h.unit.name()
                                ),
                            ),
                        );
                    }
                }
            }
            (Target::BadRatio { .. }, Measures::Latency) => {
                c.error(
                    file,
                    &p!["objectives", i, "target"],
                    format!(
                        "sensor `{}` measures latency, but the target `{}` is a share",
                        obj.sensor, obj.target
                    ),
                    Some("write a latency target such as `p99 < 300ms`".into()),
                );
            }
            (Target::Latency { .. }, Measures::Ratio) => {
                c.error(
                    file,
                    &p!["objectives", i, "target"],
                    format!(
                        "sensor `{}` counts errors, but the target `{}` is a latency",
                        obj.sensor, obj.target
                    ),
                    Some("write a share such as `< 0.5%`, or pick a latency sensor".into()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_resources_and_quantities() {
        for (name, q) in [
            ("cpu", "250m"),
            ("cpu", "1.5"),
            ("memory", "256Mi"),
            ("memory", "1e3"),
            ("ephemeral-storage", "2Gi"),
            ("hugepages-2Mi", "64Mi"),
            ("nvidia.com/gpu", "1"),
        ] {
            assert!(check_resource(name, q).is_ok(), "{name}: {q}");
        }
        assert!(
            check_resource("colour", "1")
                .unwrap_err()
                .contains("`colour` is not a Kubernetes resource")
        );
        assert!(
            check_resource("gpu", "1").is_err(),
            "an extended resource needs its domain"
        );
        for q in ["", "lots", "256MB", "-1", "1.5.2", "m"] {
            assert!(
                check_resource("memory", q)
                    .unwrap_err()
                    .contains("not a Kubernetes quantity"),
                "{q:?}"
            );
        }
    }

    const SENSORS: &str = r#"
apiVersion: autopilot/v1
kind: Sensors
sensors:
  - {name: proxy.errors, source: {proxy: errors}, missingData: {hold: 1m, then: rollback}}
  - name: http-errors
    source: {counter: {metric: http_requests_total, selector: 'service="{{service}}",env="{{environment}}",version="{{release}}"', bad: 'code=~"5.."'}}
    missingData: {hold: 1m, then: rollback}
"#;

    fn policy(name: &str, strategy: &str, ramp: bool) -> String {
        let ramp = if ramp { "ramp: {steps: [5, 50]}" } else { "" };
        format!(
            "apiVersion: autopilot/v1\nkind: Controller\nname: {name}\nstrategy: {strategy}\n{ramp}\nanalysis: {{interval: 10s, falseRollbackRate: 1%, tolerance: 50%}}\nprogressDeadline: 1h\nblastRadius: {{budget: 10}}\nmissingData: {{hold: 1m, then: rollback}}\n"
        )
    }

    fn service(auth: &str, sensors: &[&str]) -> String {
        let objectives: Vec<String> = sensors
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  - {{name: o{i}, sensor: {s}, target: \"< 1%\"}}"))
            .collect();
        format!(
            "apiVersion: autopilot/v1\nkind: Service\nname: shop\nrun: {{command: bin/shop, image: registry.example.test/shop}}\nenvironments:\n  - {{name: prod, auth: {auth}}}\ncontroller: ab\nobjectives:\n{}\n",
            objectives.join("\n")
        )
    }

    /// (line, message) of every error, or of every warning when the files are valid.
    fn said(texts: &[(&str, &str)]) -> (Vec<(String, usize, String)>, bool) {
        let all = |d: &[Diagnostic]| {
            d.iter()
                .map(|d| (d.file.clone(), d.line, d.message.clone()))
                .collect()
        };
        match crate::spec::load_texts(texts) {
            Ok(catalog) => (all(&catalog.warnings), true),
            Err(report) => (all(&report.diagnostics), false),
        }
    }

    #[test]
    fn strategies_and_their_ramps_mirrors_and_segments_are_checked_where_they_are_written() {
        let svc = service("none", &["proxy.errors"]);
        let check = |strategy: &str, ramp: bool| {
            let ctl = policy("ab", strategy, ramp);
            said(&[
                ("shop.yaml", svc.as_str()),
                ("s.yaml", SENSORS),
                ("ab.yaml", ctl.as_str()),
            ])
        };
        let (errors, valid) = check("canary", false);
        assert!(!valid && errors[0].2.contains("`ramp` is missing"), "{errors:?}");
        let (errors, valid) = check("{blueGreen: {mirror: {share: 100%}}}", true);
        assert!(!valid && errors[0].2.contains("has no ramp"), "{errors:?}");
        let (errors, valid) = check("{shadow: {mirror: {share: 0%, methods: []}}}", true);
        assert!(!valid, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.2.contains("copies nothing")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.2.contains("no method is copied")),
            "{errors:?}"
        );
        let (warnings, valid) = check("{shadow: {mirror: {share: 10%, methods: [GET, POST]}}}", true);
        assert!(
            valid
                && warnings
                    .iter()
                    .any(|w| w.2.contains("POST requests are carried out twice")),
            "{warnings:?}"
        );

        // a segment that matches nobody, leaves no baseline, or has an unusable name
        let (errors, valid) = check("{abTest: {segment: {name: Staff, match: [], share: 100%}}}", true);
        assert!(!valid, "{errors:?}");
        for part in [
            "no rule: the segment would be empty",
            "leaves the segment no stable requests",
            "`Staff` is not a DNS label",
        ] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.0 == "ab.yaml" && e.1 == 4 && e.2.contains(part)),
                "{part}: {errors:?}"
            );
        }
        let (errors, valid) = check(
            "{abTest: {segment: {match: [{header: {name: ' ', value: x}}], share: 0%}}}",
            true,
        );
        assert!(!valid, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.2.contains("sends the canary nobody")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.2.contains("the name is empty")),
            "{errors:?}"
        );
        // with or without a ramp, a good segment is valid
        for ramp in [true, false] {
            let (warnings, valid) = check(
                "{abTest: {segment: {match: [{cookie: {name: beta, value: '1'}}]}}}",
                ramp,
            );
            assert!(valid && warnings.is_empty(), "{warnings:?}");
        }
    }

    #[test]
    fn a_segment_by_claims_without_verified_callers_or_judged_by_prometheus_is_warned_of() {
        let ctl = policy(
            "ab",
            "{abTest: {segment: {match: [{claim: {name: groups, value: staff}}]}}}",
            true,
        );
        let svc = service("none", &["proxy.errors", "http-errors"]);
        let (warnings, valid) = said(&[
            ("shop.yaml", svc.as_str()),
            ("s.yaml", SENSORS),
            ("ab.yaml", ctl.as_str()),
        ]);
        assert!(valid, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.0 == "shop.yaml" && w.1 == 6 && w.2.contains("those rules match nobody")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.0 == "shop.yaml"
                && w.1 == 10
                && w.2
                    .contains("sensor `http-errors` cannot tell the segment's requests")),
            "{warnings:?}"
        );
        assert_eq!(
            warnings.len(),
            2,
            "proxy.errors counts the segment apart: {warnings:?}"
        );
        let svc = service("required", &["proxy.errors"]);
        let (warnings, valid) = said(&[
            ("shop.yaml", svc.as_str()),
            ("s.yaml", SENSORS),
            ("ab.yaml", ctl.as_str()),
        ]);
        assert!(valid && warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn dns_labels() {
        for ok in ["checkout", "a1", "prod-eu"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "Checkout", "1a", "a_b", "a-", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}

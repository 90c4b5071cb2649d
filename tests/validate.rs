//! `autopilot validate` and `autopilot schema` as a user runs them: the checked-in examples are
//! valid, the broken corpus under `tests/broken/` yields exactly the expected errors with their
//! locations, the exit codes hold, hostile files fail cleanly, and the checked-in JSON Schemas
//! match the types.

use autopilot::spec::{self, LoadError, Report, schema::SchemaKind};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_dirs() -> Vec<PathBuf> {
    ["objectives", "sensors", "controllers"]
        .iter()
        .map(|d| root().join(d))
        .collect()
}

fn invalid(paths: &[PathBuf]) -> Report {
    match spec::load(paths) {
        Err(LoadError::Invalid(r)) => r,
        Ok(_) => panic!("expected {paths:?} to be invalid"),
        Err(LoadError::Usage(e)) => panic!("usage error: {e}"),
    }
}

fn autopilot(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the binary runs")
}

#[test]
fn the_examples_are_valid_and_point_editors_at_their_schema() {
    let catalog = spec::load(&example_dirs()).unwrap_or_else(|e| match e {
        LoadError::Invalid(r) => panic!("{}", r.render_text()),
        LoadError::Usage(u) => panic!("{u}"),
    });
    assert!(catalog.services.len() >= 2, "at least two example services");
    assert!(catalog.services.contains_key("checkout") && catalog.services.contains_key("payments"));
    for name in [
        "http-errors",
        "http-latency",
        "grpc-errors",
        "proxy.errors",
        "proxy.latency",
    ] {
        assert!(catalog.sensors.contains_key(name), "sensor {name}");
    }
    for name in ["progressive", "careful", "fast"] {
        assert!(catalog.controllers.contains_key(name), "controller {name}");
    }
    for dir in example_dirs() {
        let kind = dir.file_name().unwrap().to_str().unwrap().to_owned();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let first = text.lines().next().unwrap_or_default();
                assert_eq!(
                    first,
                    format!("# yaml-language-server: $schema={kind}.schema.json"),
                    "{}",
                    path.display()
                );
            }
        }
    }
}

/// `tests/broken/expected.txt` lists `file:line:column: message part`, one per expected error.
fn expected_errors() -> Vec<(String, usize, usize, String)> {
    let text = std::fs::read_to_string(root().join("tests/broken/expected.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(4, ':');
            let file = parts.next().unwrap().to_owned();
            let line = parts.next().unwrap().parse().unwrap();
            let column = parts.next().unwrap().parse().unwrap();
            let message = parts.next().unwrap().trim().to_owned();
            (file, line, column, message)
        })
        .collect()
}

#[test]
fn every_mistake_in_the_broken_corpus_is_reported_at_once_with_its_location() {
    let mut paths = vec![root().join("tests/broken")];
    paths.extend(example_dirs().into_iter().skip(1)); // sensors and controllers resolve references
    let report = invalid(&paths);
    let actual: Vec<(String, usize, usize, String)> = report
        .diagnostics
        .iter()
        .map(|d| {
            let file = Path::new(&d.file)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            (file, d.line, d.column, d.message.clone())
        })
        .collect();
    let expected = expected_errors();
    let mut missing = Vec::new();
    for (file, line, column, part) in &expected {
        let found = actual
            .iter()
            .any(|(f, l, c, m)| f == file && l == line && c == column && m.contains(part.as_str()));
        if !found {
            missing.push(format!("{file}:{line}:{column}: {part}"));
        }
    }
    assert!(
        missing.is_empty(),
        "not reported:\n{}\n\nreport:\n{}",
        missing.join("\n"),
        report.render_text()
    );
    assert_eq!(
        actual.len(),
        expected.len(),
        "more errors than expected:\n{}",
        report.render_text()
    );
    // every kind of mistake the issue names is in the corpus
    for file in [
        "syntax.yaml",
        "wrong-type-nested.yaml",
        "unknown-field.yaml",
        "missing-field.yaml",
        "dangling-ref.yaml",
        "bad-unit.yaml",
        "out-of-range.yaml",
        "duplicate-env.yaml",
        "empty.yaml",
        "binary.yaml",
        "bad-scenario.yaml",
    ] {
        assert!(
            expected.iter().any(|e| e.0 == file),
            "{file} has an expected error"
        );
    }
    // hints name the closest valid choice
    let text = report.render_text();
    assert!(text.contains("did you mean `source`?"), "{text}");
    assert!(text.contains("did you mean `{{service}}`?"), "{text}");
    assert!(text.contains("did you mean `http-errors`?"), "{text}");
    assert!(text.contains("did you mean `Controller`?"), "{text}");
    assert!(text.contains("did you mean `staging`?"), "{text}");
    assert!(text.contains("did you mean `checkout`?"), "{text}");
}

#[test]
fn the_command_line_exit_codes_are_0_valid_1_invalid_2_usage() {
    let ok = autopilot(&["validate", "objectives/", "sensors/", "controllers/"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("5 services, 7 sensors, 7 controllers"));

    let bad = autopilot(&["validate", "tests/broken", "sensors", "controllers"]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--> tests/broken/out-of-range.yaml:5:18"),
        "{stderr}"
    );
    assert!(
        stderr.contains("5 |   steps: [10, 5, 150, 100]"),
        "shows the line: {stderr}"
    );

    let json = autopilot(&[
        "validate",
        "--format",
        "json",
        "tests/broken",
        "sensors",
        "controllers",
    ]);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), expected_errors().len());
    assert!(
        errors
            .iter()
            .all(|e| e["line"].as_u64().unwrap() >= 1 && e["file"].is_string())
    );

    assert_eq!(autopilot(&["validate", "no/such/dir"]).status.code(), Some(2));
    assert_eq!(
        autopilot(&["validate", "--format", "xml", "sensors"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(autopilot(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn the_checked_in_schemas_match_the_types() {
    for &kind in SchemaKind::all() {
        let path = root().join(kind.checked_in_path());
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == kind.render(),
            "{} drifted from the types; regenerate it with `cargo run -- schema {} > {}`",
            path.display(),
            format!("{kind:?}").to_lowercase(),
            kind.checked_in_path()
        );
        let out = autopilot(&["schema", &format!("{kind:?}").to_lowercase()]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), on_disk);
    }
    // the schema forbids unknown fields and knows the units
    let schema: serde_json::Value = serde_json::from_str(&SchemaKind::Objectives.render()).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["$defs"]["Target"]["pattern"].is_string());
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn single_error(path: PathBuf) -> spec::Diagnostic {
    let report = invalid(&[path]);
    assert_eq!(report.diagnostics.len(), 1, "{}", report.render_text());
    report.diagnostics[0].clone()
}

/// Every example file of the four folders users copy: (path, text).
fn example_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in ["objectives", "sensors", "controllers", "simulations"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }
    files
}

/// The `apiVersion` documents of a text: each kind's files, and the README's complete examples.
fn json_documents(text: &str) -> Vec<serde_json::Value> {
    let mut problems = Vec::new();
    let docs = spec::yaml::parse_stream(text, &mut problems).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    docs.iter().map(|d| d.to_json()).collect()
}

#[test]
fn every_example_passes_its_kinds_json_schema_as_an_editor_checks_it() {
    let kinds = [
        ("Service", SchemaKind::Objectives),
        ("Sensors", SchemaKind::Sensors),
        ("Controller", SchemaKind::Controllers),
        ("Simulation", SchemaKind::Simulations),
        ("Autopilot", SchemaKind::Autopilot),
        ("Routes", SchemaKind::Routes),
    ];
    assert_eq!(
        kinds.len(),
        SchemaKind::all().len(),
        "a kind without a schema check"
    );
    let validators: std::collections::HashMap<&str, jsonschema::Validator> = kinds
        .iter()
        .map(|(kind, schema)| {
            let schema: serde_json::Value = serde_json::from_str(&schema.render()).unwrap();
            (*kind, jsonschema::validator_for(&schema).unwrap())
        })
        .collect();
    let mut files = example_files();
    // the README's examples that are whole files (no `…` left for the reader)
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (i, block) in readme.split("```yaml\n").skip(1).enumerate() {
        let block = block.split("```").next().unwrap();
        if block.contains("apiVersion:") && !block.contains('…') {
            files.push((format!("README.md yaml block {}", i + 1), block.to_owned()));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, text) in &files {
        for doc in json_documents(text) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let validator = validators
                .get(kind.as_str())
                .unwrap_or_else(|| panic!("{name}: kind `{kind}` has no schema"));
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{name} breaks the {kind} schema: {errors:#?}");
            seen.insert(kind);
        }
    }
    // the examples cover every kind but Autopilot (whose README example leaves secrets to fill)
    for (kind, _) in kinds.iter().filter(|(k, _)| *k != "Autopilot") {
        assert!(seen.contains(*kind), "no example of kind {kind} was checked");
    }
    // and the check can fail: an unknown field breaks it
    let bad = json_documents("apiVersion: autopilot/v1\nkind: Routes\ndomain: x\nroutes: []\ncolour: red\n");
    assert!(!validators["Routes"].is_valid(&bad[0]));
}

#[test]
fn several_documents_per_file_and_merge_keys_are_read_as_kubernetes_users_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"# one file, two kinds, a shared block merged into both
apiVersion: autopilot/v1
kind: Sensors
sensors:
  - &errs
    name: errs
    source: {proxy: errors}
  - <<: *errs
    name: errs2
---
---
apiVersion: autopilot/v1
kind: Controller
name: calm
description: merged defaults
ramp: {steps: [5, 50]}
analysis: {interval: 30s, falseRollbackRate: 1%, tolerance: 20%}
progressDeadline: 1h
blastRadius: {budget: 50}
missingData: {hold: 5m, then: pause}
---
apiVersion: autopilot/v1
kind: Controller
name: calmer
ramp: {steps: [5, 50]}
analysis: {interval: 1m, falseRollbackRate: 1%, tolerance: 20%}
progressDeadline: 1h
blastRadius: {budget: 50}
missingData: {hold: 5m, then: pause}
"#;
    let path = write(dir.path(), "bundle.yaml", text.as_bytes());
    let catalog = match spec::load(std::slice::from_ref(&path)) {
        Ok(c) => c,
        Err(LoadError::Invalid(r)) => panic!("{}", r.render_text()),
        Err(LoadError::Usage(u)) => panic!("{u}"),
    };
    assert_eq!(catalog.controllers.len(), 2);
    // the merged mapping's own keys win; the rest come from the anchor
    assert_eq!(catalog.sensors["errs2"].name, "errs2");
    assert_eq!(catalog.sensors["errs2"].source, catalog.sensors["errs"].source);

    // anchors belong to their document, as in YAML (and kubectl)
    let across = text.replace("name: calmer", "name: calmer\ndescription: *errs");
    let report = invalid(&[write(dir.path(), "across.yaml", across.as_bytes())]);
    assert!(
        report.render_text().contains("alias to an unknown anchor"),
        "{}",
        report.render_text()
    );

    // a mistake in the second document is reported at its own line
    let broken = text.replace("name: calmer", "name: calmer\ncolour: red");
    let report = invalid(&[write(dir.path(), "broken.yaml", broken.as_bytes())]);
    assert_eq!(report.diagnostics.len(), 1, "{}", report.render_text());
    assert_eq!(report.diagnostics[0].line, 25);
    assert!(report.diagnostics[0].message.contains("colour"));

    // a merge of a scalar says what `<<` takes
    let scalar = "apiVersion: autopilot/v1\nkind: Sensors\nsensors: []\nx: &x 1\ny: {<<: *x}\n";
    let report = invalid(&[write(dir.path(), "scalar.yaml", scalar.as_bytes())]);
    assert!(
        report.render_text().contains("`<<` merges a mapping"),
        "{}",
        report.render_text()
    );
}

#[test]
fn hostile_files_fail_cleanly_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();

    // a huge file is refused before it is read
    let mut huge = b"apiVersion: autopilot/v1\nkind: Sensors\nsensors:\n".to_vec();
    while huge.len() <= spec::MAX_FILE_BYTES as usize {
        huge.extend_from_slice(b"  - name: s\n    source: {proxy: errors}\n");
    }
    let d = single_error(write(dir.path(), "huge.yaml", &huge));
    assert!(
        d.message.contains("MiB; specs may be at most 4 MiB"),
        "{}",
        d.message
    );

    // deep nesting is an error, not a stack overflow: the parser's own limit for absurd depth,
    // ours for merely silly depth
    let deep = format!("a: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let d = single_error(write(dir.path(), "deep.yaml", deep.as_bytes()));
    assert!(d.message.contains("recursion limit"), "{}", d.message);
    let deep = format!("a: {}1{}", "[".repeat(100), "]".repeat(100));
    let d = single_error(write(dir.path(), "deep100.yaml", deep.as_bytes()));
    assert!(d.message.contains("nesting deeper than 64"), "{}", d.message);

    // "billion laughs": aliases that multiply
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let d = single_error(write(dir.path(), "bomb.yaml", bomb.as_bytes()));
    assert!(d.message.contains("expands to more than"), "{}", d.message);

    // several documents in one file are each checked; every missing field at once
    let multi = b"apiVersion: autopilot/v1\nkind: Sensors\nsensors: []\n---\nkind: Sensors\n";
    let report = invalid(&[write(dir.path(), "multi.yaml", multi)]);
    let found: Vec<_> = report
        .diagnostics
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (5, 1, "missing required field `apiVersion`"),
            (5, 1, "missing required field `sensors`")
        ]
    );

    // not UTF-8
    let d = single_error(write(dir.path(), "latin1.yaml", b"name: caf\xe9\n"));
    assert!(d.message.contains("not UTF-8"), "{}", d.message);

    // Rust's type names are not the user's words; a negative duration is called negative
    let seed = format!(
        "apiVersion: autopilot/v1\nkind: Simulation\nname: x\nspecs: [{}, {}, {}]\nservice: checkout\nseed: -1\nduration: 1h\ntraffic: {{rate: 1}}\nstable: {{name: v1, errors: 0%}}\n",
        root().join("objectives").display(),
        root().join("sensors").display(),
        root().join("controllers").display()
    );
    let seed = seed.as_bytes();
    let d = single_error(write(dir.path(), "seed.yaml", seed));
    assert_eq!((d.line, d.column), (6, 7));
    assert_eq!(d.message, "expected a whole number ≥ 0, found integer `-1`");
    let negative = String::from_utf8_lossy(seed)
        .replace("seed: -1", "seed: 1")
        .replace("duration: 1h", "duration: -10s");
    let d = single_error(write(dir.path(), "negative.yaml", negative.as_bytes()));
    assert!(d.message.contains("`-10s` is negative"), "{}", d.message);
    // an absurd duration is refused at validation (simulate used to run out of memory on 365d
    // and hang on 100000000h); one too large for any clock is called too long
    for (duration, says) in [
        (
            "100000000h",
            "is longer than a scenario may run (366 days at most)",
        ),
        ("99999999999999999999999h", "too long a duration"),
    ] {
        let text = String::from_utf8_lossy(seed)
            .replace("seed: -1", "seed: 1")
            .replace("duration: 1h", &format!("duration: {duration}"));
        let d = single_error(write(dir.path(), "long.yaml", text.as_bytes()));
        assert!(d.message.contains(says), "{duration}: {}", d.message);
        assert_eq!(d.line, 7, "{duration}");
    }

    // a device never ends and a FIFO blocks: both refused without reading (before, /dev/zero
    // was read until memory ran out and a FIFO hung validate)
    let d = single_error(PathBuf::from("/dev/zero"));
    assert!(d.message.contains("not a regular file"), "{}", d.message);
    let fifo = dir.path().join("pipe.yaml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let d = single_error(fifo);
    assert!(d.message.contains("not a regular file"), "{}", d.message);

    // a list where a mapping belongs
    let d = single_error(write(dir.path(), "list.yaml", b"- a\n- b\n"));
    assert!(
        d.message.contains("expected a mapping at the top"),
        "{}",
        d.message
    );
}

#[test]
fn a_valid_file_loses_nothing_in_the_round_trip_to_typed_specs() {
    let catalog = spec::load(&example_dirs()).map_err(|_| ()).unwrap();
    let checkout = &catalog.services["checkout"];
    let envs: Vec<_> = checkout.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(envs, ["dev", "staging", "prod"]);
    assert_eq!(checkout.objectives[1].target.to_string(), "p99 < 300ms");
    assert_eq!(checkout.run.replicas, 2);
    let careful = &catalog.controllers["careful"];
    assert_eq!(careful.analysis.false_rollback_rate.to_string(), "0.5%");
    assert_eq!(careful.promotion.gates.len(), 3);
    // serializing a spec and loading it again gives the same spec
    let yaml_again = serde_json::to_string(checkout).unwrap(); // JSON is YAML
    let again = spec::load_texts(&[
        ("checkout.json", &yaml_again),
        (
            "sensors.yaml",
            &std::fs::read_to_string(root().join("sensors/http.yaml")).unwrap(),
        ),
        (
            "ctl.yaml",
            &std::fs::read_to_string(root().join("controllers/progressive.yaml")).unwrap(),
        ),
        (
            "fast.yaml",
            &std::fs::read_to_string(root().join("controllers/fast.yaml")).unwrap(),
        ),
        (
            "careful.yaml",
            &std::fs::read_to_string(root().join("controllers/careful.yaml")).unwrap(),
        ),
    ])
    .unwrap_or_else(|r| panic!("{}", r.render_text()));
    assert_eq!(&again.services["checkout"], checkout);
}

#[test]
fn a_latency_threshold_between_buckets_warns_and_names_the_bucket_used() {
    let dir = tempfile::tempdir().unwrap();
    let sensors = r#"apiVersion: autopilot/v1
kind: Sensors
sensors:
  - name: coarse-latency
    source:
      histogram:
        metric: http_request_duration_seconds
        selector: service="{{service}}",env="{{environment}}",version="{{release}}"
        buckets: [0.1, 0.25, 0.5]
"#;
    write(dir.path(), "sensors.yaml", sensors.as_bytes());
    let service = std::fs::read_to_string(root().join("objectives/checkout.yaml"))
        .unwrap()
        .replace("sensor: http-latency", "sensor: coarse-latency");
    write(dir.path(), "checkout.yaml", service.as_bytes());
    std::fs::copy(
        root().join("controllers/progressive.yaml"),
        dir.path().join("progressive.yaml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("controllers/careful.yaml"),
        dir.path().join("careful.yaml"),
    )
    .unwrap();
    std::fs::copy(root().join("controllers/fast.yaml"), dir.path().join("fast.yaml")).unwrap();
    std::fs::copy(root().join("sensors/http.yaml"), dir.path().join("http.yaml")).unwrap();
    let catalog = spec::load(&[dir.path().to_path_buf()]).unwrap_or_else(|e| match e {
        LoadError::Invalid(r) => panic!("a warning must not fail validation: {}", r.render_text()),
        LoadError::Usage(u) => panic!("{u}"),
    });
    assert_eq!(catalog.warnings.len(), 1, "{:?}", catalog.warnings);
    let w = &catalog.warnings[0];
    assert!(
        w.file.ends_with("checkout.yaml") && w.path == "objectives[1].target",
        "{w:?}"
    );
    assert!(
        w.message.contains("no histogram bucket at 300ms")
            && w.message.contains("slower than 0.25 seconds count as bad"),
        "{w:?}"
    );
    // the command line shows it and still says ok
    let out = Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("warning: sensor `coarse-latency`") && text.contains("ok: "),
        "{text}"
    );
}

/// A JSON pointer as validate writes paths: `/a/0/b` is `a[0].b`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        if seg.parse::<usize>().is_ok() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
    }
    out
}

/// Every mapping of `value`, by JSON pointer.
fn mappings(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(m) => {
            out.push(at.clone());
            for (k, v) in m {
                mappings(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                mappings(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn an_unknown_field_in_any_mapping_of_any_example_is_refused_where_it_is() {
    // the examples, loaded together as a user validates them; each file's mappings in turn get
    // an unknown key
    let files = example_files();
    let mut checked = 0;
    for (i, (name, text)) in files.iter().enumerate() {
        let docs = json_documents(text);
        let [doc] = docs.as_slice() else {
            panic!("{name}: one document expected");
        };
        let mut pointers = Vec::new();
        mappings(doc, String::new(), &mut pointers);
        // free-form maps whose keys are the user's own (a JWT's claims, environment variables)
        pointers.retain(|p| !p.ends_with("/claims") && !p.ends_with("/run/env"));
        for pointer in pointers {
            let mut changed = doc.clone();
            changed
                .pointer_mut(&pointer)
                .and_then(|m| m.as_object_mut())
                .unwrap()
                .insert("colour".into(), "red".into());
            // JSON is YAML: the changed document under the file's own name
            let changed = serde_json::to_string_pretty(&changed).unwrap();
            let texts: Vec<(&str, &str)> = files
                .iter()
                .enumerate()
                .map(|(j, (n, t))| (n.as_str(), if i == j { changed.as_str() } else { t.as_str() }))
                .collect();
            let report = match spec::load_texts(&texts) {
                Ok(_) => panic!("{name}: `colour: red` at {pointer:?} was accepted"),
                Err(r) => r,
            };
            // named, or (a one-key mapping that picks a variant) refused as a whole
            let at = dotted(&pointer);
            assert!(
                report.diagnostics.iter().any(|d| d.file == *name
                    && (d.message.contains("colour")
                        || d.path.ends_with("colour")
                        || (d.path == at && d.message.contains("exactly one")))),
                "{name}: `colour` at {pointer:?} not named:\n{}",
                report.render_text()
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} mappings checked");
}

#[test]
fn a_tolerance_is_one_share_or_an_indifference_zone_and_a_wrong_one_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let controller = |tolerance: &str| {
        format!(
            "apiVersion: autopilot/v1\nkind: Controller\nname: c\nramp: {{steps: [5, 50]}}\nanalysis: {{interval: 10s, falseRollbackRate: 1%, tolerance: {tolerance}}}\nprogressDeadline: 1h\nblastRadius: {{budget: 50}}\nmissingData: {{hold: 5m, then: pause}}\n"
        )
    };
    let load = |name: &str, tolerance: &str| {
        spec::load(&[write(dir.path(), name, controller(tolerance).as_bytes())])
    };
    // the old single share still means both boundaries
    let one = load("one.yaml", "25%").unwrap_or_else(|_| panic!("25% is valid"));
    let t = one.controllers["c"].analysis.tolerance;
    assert_eq!((t.regression.0, t.safety.0), (0.25, 0.25));
    let zone =
        load("zone.yaml", "{regression: 10%, safety: 50%}").unwrap_or_else(|_| panic!("a zone is valid"));
    let t = zone.controllers["c"].analysis.tolerance;
    assert_eq!((t.regression.0, t.safety.0), (0.1, 0.5));
    // mistakes, each at its place
    for (tolerance, says) in [
        ("{regression: 50%, safety: 10%}", "is above the safety tolerance"),
        ("{regression: 10%}", "missing required field `safety`"),
        (
            "{regression: 10%, safety: 50%, colour: red}",
            "unknown field `colour`",
        ),
        ("ten percent", "is not a percentage"),
    ] {
        let report = match load("bad.yaml", tolerance) {
            Err(LoadError::Invalid(r)) => r,
            _ => panic!("{tolerance} was accepted"),
        };
        let text = report.render_text();
        assert!(text.contains(says), "{tolerance}: {text}");
        assert!(report.diagnostics.iter().all(|d| d.line == 5), "{text}");
    }
}

/// Regression: `validate` took time quadratic in the number of problems (16k: 5 s, 32k: 22 s; a
/// 4 MB file printed nothing in a minute) and printed every one of them.
#[test]
fn thousands_of_mistakes_are_counted_and_the_first_ones_shown() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("apiVersion: autopilot/v1\nkind: Service\nname: x\nenvironments:\n");
    for i in 0..20_000 {
        text.push_str(&format!("  - nme: s{i}\n"));
    }
    let file = write(dir.path(), "many.yaml", text.as_bytes());
    let out = autopilot(&["validate", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let shown = err.matches("\nerror: ").count() + usize::from(err.starts_with("error: "));
    assert_eq!(shown, spec::MAX_SHOWN, "{}", &err[..err.len().min(2000)]);
    // every element's two mistakes, and the service's own missing fields, all counted
    let total: usize = err
        .lines()
        .find_map(|l| l.strip_suffix(" errors in 1 file (1 checked)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count: {}", &err[err.len().saturating_sub(500)..]));
    assert!(total > 40_000, "{total}");
    assert!(
        err.contains(&format!(
            "… and {} more errors not shown",
            total - spec::MAX_SHOWN
        )),
        "{}",
        &err[err.len().saturating_sub(500)..]
    );
    // the JSON output keeps them all
    let out = autopilot(&["validate", "--format", "json", &file.to_string_lossy()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = json["errors"].as_array().map_or(0, Vec::len);
    assert_eq!(
        listed,
        total,
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(300)
            .collect::<String>()
    );
}

/// Regression: `unpin` and `unfreeze` were described by their arguments' words in `--help`, and
/// an API address that is not a URL was "cannot reach" instead of a usage error.
#[test]
fn every_command_says_what_it_does_and_a_bad_address_is_a_usage_error() {
    let help = String::from_utf8(autopilot(&["--help"]).stdout).unwrap();
    for command in ["unpin", "unfreeze"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("no `{command}` in:\n{help}"));
        assert!(line.contains("Lift a"), "{line}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .args(["status"])
        .env("AUTOPILOT_URL", "notaurl")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an http(s) URL"), "{err}");
}

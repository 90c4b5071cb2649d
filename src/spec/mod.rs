//! The ground floor: the YAML language users write (objectives, sensors, controllers), parsed
//! once into validated types.
//!
//! [`load`] reads files and directories and returns a [`Catalog`] whose cross-references are
//! resolved, or a [`Report`] with **every** problem found, each with `file:line:column`, what is
//! wrong and a hint. Nothing here does I/O beyond reading the files it is given; nothing here
//! imports an adapter.

pub mod controllers;
pub mod objectives;
pub mod promql;
pub mod routes;
pub mod schema;
pub mod sensors;
pub mod simulations;
pub mod units;
mod validate;
pub(crate) use validate::is_dns_label;
pub mod yaml;

use controllers::{ControllerSpec, StopAction};
use objectives::ServiceSpec;
use schemars::JsonSchema;
use sensors::{Sensor, SensorLibrary};
use serde::{Deserialize, Serialize};
use simulations::Scenario;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use units::Duration;
use yaml::{Document, Pos, Seg};

/// Files larger than this are refused: specs are small, and a runaway file (a log pasted by
/// mistake, a generated dump) should fail fast with a clear message instead of eating memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The file format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "autopilot/v1")]
    V1,
}

/// What a gap in the data means: hold the rollout for a while, then act.
/// Missing data is never evidence of safety.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MissingData {
    /// Hold (no weight change, no promotion) for at most this long while data is missing.
    pub hold: Duration,
    /// Then do this.
    pub then: StopAction,
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Where in the document, e.g. `objectives[1].target` (empty for the whole file).
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The most errors [`Report::render_text`] shows one by one; the rest are counted. A person
/// fixes the first few and runs again; a script reads `--output json`, which has them all.
pub const MAX_SHOWN: usize = 200;

/// Everything wrong with a set of files.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    /// Printed, but do not fail validation.
    pub warnings: Vec<Diagnostic>,
    pub files_checked: usize,
    /// File texts, for showing the offending line.
    sources: BTreeMap<String, String>,
}

impl Report {
    /// Rust-compiler-style text: the location, the message, the line with a caret, the hint.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        // each file's lines, split once (not once per problem: a file with thousands of
        // mistakes would take quadratic time)
        let lines: BTreeMap<&str, Vec<&str>> = self
            .sources
            .iter()
            .map(|(f, text)| (f.as_str(), text.lines().collect()))
            .collect();
        let tagged = self
            .warnings
            .iter()
            .map(|d| ("warning", d))
            .chain(self.diagnostics.iter().map(|d| ("error", d)));
        let shown = self.warnings.len() + self.diagnostics.len().min(MAX_SHOWN);
        for (tag, d) in tagged.take(shown) {
            let _ = writeln!(out, "{tag}: {}", d.message);
            let at = if d.path.is_empty() {
                String::new()
            } else {
                format!(" (at {})", d.path)
            };
            let _ = writeln!(out, "  --> {}:{}:{}{}", d.file, d.line, d.column, at);
            if let Some(line) = lines
                .get(d.file.as_str())
                .and_then(|l| l.get(d.line.saturating_sub(1)))
            {
                let gutter = d.line.to_string().len();
                let shown: String = line.chars().take(160).collect();
                let _ = writeln!(out, "{:gutter$} |", "");
                let _ = writeln!(out, "{} | {}", d.line, shown);
                let _ = writeln!(out, "{:gutter$} | {:>col$}", "", "^", col = d.column.max(1));
            }
            if let Some(hint) = &d.hint {
                let _ = writeln!(out, "  = hint: {hint}");
            }
            out.push('\n');
        }
        if self.diagnostics.len() > MAX_SHOWN {
            let _ = writeln!(
                out,
                "… and {} more errors not shown (the first {MAX_SHOWN} are above; `--format json` lists them all)\n",
                self.diagnostics.len() - MAX_SHOWN
            );
        }
        let files: std::collections::BTreeSet<_> = self.diagnostics.iter().map(|d| &d.file).collect();
        let _ = writeln!(
            out,
            "{} error{} in {} file{} ({} checked)",
            self.diagnostics.len(),
            if self.diagnostics.len() == 1 { "" } else { "s" },
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            self.files_checked
        );
        out
    }

    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "valid": self.diagnostics.is_empty(),
            "filesChecked": self.files_checked,
            "errors": self.diagnostics,
            "warnings": self.warnings,
        }))
        .expect("diagnostics serialize")
    }
}

/// Warnings of a catalog that loaded: the message, where, and the hint.
pub fn render_warnings(warnings: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in warnings {
        let _ = writeln!(out, "warning: {}", d.message);
        let _ = writeln!(out, "  --> {}:{}:{} (at {})", d.file, d.line, d.column, d.path);
        if let Some(hint) = &d.hint {
            let _ = writeln!(out, "  = hint: {hint}");
        }
    }
    out
}

/// The validated specs, with every cross-reference resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub services: BTreeMap<String, ServiceSpec>,
    /// The file each service was declared in.
    pub service_files: BTreeMap<String, PathBuf>,
    pub sensors: BTreeMap<String, Sensor>,
    pub controllers: BTreeMap<String, ControllerSpec>,
    /// Simulation scenarios, with the file each came from.
    pub simulations: BTreeMap<String, (PathBuf, Scenario)>,
    pub files_checked: usize,
    /// What works, but perhaps not as its author thinks (a latency threshold between buckets).
    pub warnings: Vec<Diagnostic>,
}

/// Why loading could not even start: the user named something that is not there.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no YAML files found in {0:?}")]
    NoFiles(Vec<PathBuf>),
}

/// The outcome of [`load`].
#[derive(Debug)]
pub enum LoadError {
    Usage(UsageError),
    Invalid(Report),
}

/// A parsed file of one of the three kinds.
pub(crate) enum Parsed {
    Service(ServiceSpec),
    Sensors(SensorLibrary),
    Controller(ControllerSpec),
    Simulation(Scenario),
    /// A proxy routes file (checked on its own: it names no other file's things).
    Routes(Box<routes::RoutesFile>),
    /// `autopilot.yaml` (checked on its own, like a routes file).
    Autopilot(Box<crate::live::config::AutopilotConfig>),
}

/// One file read and parsed, with its document for locating later problems.
pub(crate) struct SourceFile {
    pub name: String,
    pub doc: Option<Document>,
    pub parsed: Option<Parsed>,
}

impl SourceFile {
    pub fn locate(&self, path: &[Seg]) -> (Pos, String) {
        match &self.doc {
            Some(doc) => doc.locate(path),
            None => (Pos { line: 1, column: 1 }, String::new()),
        }
    }
}

/// Reads every YAML file under `paths` (files, or directories searched recursively for
/// `*.yaml` / `*.yml`), validates each and all of them together.
pub fn load(paths: &[PathBuf]) -> Result<Catalog, LoadError> {
    let files = collect_files(paths).map_err(LoadError::Usage)?;
    let mut report = Report {
        files_checked: files.len(),
        ..Report::default()
    };
    let mut sources = Vec::new();
    for path in &files {
        let name = path.display().to_string();
        let text = match read_text(path) {
            Ok(t) => t,
            Err((message, hint)) => {
                report.diagnostics.push(Diagnostic {
                    file: name.clone(),
                    line: 1,
                    column: 1,
                    path: String::new(),
                    message,
                    hint,
                });
                continue;
            }
        };
        sources.extend(parse_file(&name, &text, &mut report.diagnostics));
        report.sources.insert(name, text);
    }
    let catalog = validate::check(&sources, &mut report.diagnostics);
    if report.diagnostics.is_empty() {
        Ok(Catalog {
            files_checked: files.len(),
            ..catalog
        })
    } else {
        report.warnings = catalog.warnings;
        report
            .diagnostics
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        report.diagnostics.dedup();
        Err(LoadError::Invalid(report))
    }
}

/// Loads specs from in-memory texts (name, YAML) — for tests and for callers that already
/// hold the files.
pub fn load_texts(texts: &[(&str, &str)]) -> Result<Catalog, Report> {
    let mut report = Report {
        files_checked: texts.len(),
        ..Report::default()
    };
    let mut sources = Vec::new();
    for (name, text) in texts {
        sources.extend(parse_file(name, text, &mut report.diagnostics));
        report.sources.insert(name.to_string(), text.to_string());
    }
    let catalog = validate::check(&sources, &mut report.diagnostics);
    if report.diagnostics.is_empty() {
        Ok(catalog)
    } else {
        report
            .diagnostics
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(report)
    }
}

/// A diagnostic for `file` at `pos`.
fn diagnostic(file: &str, pos: Pos, path: &str, message: String, hint: Option<String>) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: pos.line,
        column: pos.column,
        path: path.to_owned(),
        message,
        hint,
    }
}

/// Parses one YAML (or JSON) document of any spec type, reporting every problem with its
/// location — for files outside the four kinds (the proxy's routes file).
pub fn parse_document<T: serde::de::DeserializeOwned + JsonSchema>(
    name: &str,
    text: &str,
) -> Result<T, Report> {
    let mut report = Report {
        files_checked: 1,
        ..Report::default()
    };
    report.sources.insert(name.to_owned(), text.to_owned());
    let at = |pos: Pos, path: &str, message: String, hint: Option<String>| {
        diagnostic(name, pos, path, message, hint)
    };
    let mut syntax = Vec::new();
    let root = match yaml::parse(text, &mut syntax) {
        Ok(Some(root)) => root,
        Ok(None) => {
            report.diagnostics.push(at(
                Pos { line: 1, column: 1 },
                "",
                "the file is empty".into(),
                None,
            ));
            return Err(report);
        }
        Err(e) => {
            report.diagnostics.push(at(e.pos, "", e.message, e.hint));
            return Err(report);
        }
    };
    report
        .diagnostics
        .extend(syntax.into_iter().map(|e| at(e.pos, "", e.message, e.hint)));
    let mut doc = Document::new(root);
    let value = doc.deserialize::<T>();
    doc.require_all::<T>();
    report.diagnostics.extend(
        doc.problems()
            .into_iter()
            .map(|p| at(p.pos, &p.path, p.message, p.hint)),
    );
    match value {
        Some(v) if report.diagnostics.is_empty() => Ok(v),
        _ => Err(report),
    }
}

fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, UsageError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => UsageError::NotFound(path.clone()),
            _ => UsageError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        if meta.is_dir() {
            walk(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        return Err(UsageError::NoFiles(paths.to_vec()));
    }
    // the same file named twice (found in a folder given as an absolute path, and named by the
    // user relative to here) is read once, under the shorter, relative name people typed
    files.sort_by(|a, b| (a.is_absolute(), a).cmp(&(b.is_absolute(), b)));
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), UsageError> {
    let io = |e| UsageError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a file as text, refusing what cannot be a spec (too large, binary, not UTF-8).
fn read_text(path: &Path) -> Result<String, (String, Option<String>)> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path).map_err(|e| (format!("cannot read: {e}"), None))?;
    // a device (/dev/zero) never ends and a FIFO blocks: only regular files are specs
    if !meta.is_file() {
        return Err((
            "not a regular file (a device, FIFO or socket)".into(),
            Some("give YAML files, or folders of them".into()),
        ));
    }
    let too_big = |size: u64| {
        (
            format!(
                "file is {:.1} MiB; specs may be at most {} MiB",
                size as f64 / 1048576.0,
                MAX_FILE_BYTES / 1048576
            ),
            Some("is this the right file? split large sensor libraries into several files".into()),
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len()));
    }
    // at most the cap and one byte, whatever the size said (a file can grow while read)
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| (format!("cannot read: {e}"), None))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    text_from_bytes(bytes)
}

fn text_from_bytes(bytes: Vec<u8>) -> Result<String, (String, Option<String>)> {
    if let Some(i) = bytes.iter().position(|&b| b == 0) {
        return Err((
            format!("not a text file: it contains a NUL byte at offset {i}"),
            Some("autopilot reads YAML text files; is this a binary file?".into()),
        ));
    }
    let mut text = String::from_utf8(bytes).map_err(|e| {
        (
            format!(
                "not UTF-8 text: invalid byte at offset {}",
                e.utf8_error().valid_up_to()
            ),
            Some("save the file as UTF-8".into()),
        )
    })?;
    if text.starts_with('\u{feff}') {
        text.remove(0);
    }
    Ok(text)
}

const KINDS: [&str; 6] = [
    "Service",
    "Sensors",
    "Controller",
    "Simulation",
    "Routes",
    "Autopilot",
];

/// Parses one file — one document, or several separated by `---` — and deserializes each
/// according to its `kind`, recording every problem.
fn parse_file(name: &str, text: &str, diags: &mut Vec<Diagnostic>) -> Vec<SourceFile> {
    let at = |pos: Pos, path: &str, message: String, hint: Option<String>| {
        diagnostic(name, pos, path, message, hint)
    };
    let mut syntax = Vec::new();
    let documents = match yaml::parse_stream(text, &mut syntax) {
        Ok(d) => d,
        Err(e) => {
            diags.push(at(e.pos, "", e.message, e.hint));
            return Vec::new();
        }
    };
    diags.extend(syntax.into_iter().map(|e| at(e.pos, "", e.message, e.hint)));
    if documents.is_empty() {
        diags.push(at(
            Pos { line: 1, column: 1 },
            "",
            "the file is empty".into(),
            Some(
                "start with `apiVersion: autopilot/v1` and `kind: Service`, `Sensors` or `Controller`".into(),
            ),
        ));
    }
    documents
        .into_iter()
        .map(|root| parse_document_of_kind(name, root, diags))
        .collect()
}

/// Deserializes one document according to its `kind`.
fn parse_document_of_kind(name: &str, root: yaml::Node, diags: &mut Vec<Diagnostic>) -> SourceFile {
    let mut file = SourceFile {
        name: name.to_owned(),
        doc: None,
        parsed: None,
    };
    let at = |pos: Pos, path: &str, message: String, hint: Option<String>| {
        diagnostic(name, pos, path, message, hint)
    };
    let kind = match &root.kind {
        yaml::NodeKind::Map(_) => root.get("kind").map(|k| (k.pos, k.scalar().unwrap_or(""))),
        _ => {
            diags.push(at(
                root.pos,
                "",
                "expected a mapping at the top of the file (`apiVersion:`, `kind:` …)".into(),
                None,
            ));
            return file;
        }
    };
    let mut doc = Document::new(root.clone());
    fn typed<T: serde::de::DeserializeOwned + JsonSchema>(doc: &mut Document) -> Option<T> {
        let value = doc.deserialize::<T>();
        doc.require_all::<T>();
        value
    }
    let parsed = match kind {
        Some((_, "Service")) => typed(&mut doc).map(Parsed::Service),
        Some((_, "Sensors")) => typed(&mut doc).map(Parsed::Sensors),
        Some((_, "Controller")) => typed(&mut doc).map(Parsed::Controller),
        Some((_, "Simulation")) => typed(&mut doc).map(Parsed::Simulation),
        Some((_, "Routes")) => typed(&mut doc).map(|r| Parsed::Routes(Box::new(r))),
        Some((_, "Autopilot")) => typed(&mut doc).map(|r| Parsed::Autopilot(Box::new(r))),
        Some((pos, other)) => {
            let hint = match yaml::closest(other, KINDS) {
                Some(c) => {
                    format!(
                        "did you mean `{c}`? (valid: Service, Sensors, Controller, Simulation, Routes, Autopilot)"
                    )
                }
                None => {
                    "valid kinds: Service (objectives), Sensors, Controller, Simulation, Routes, Autopilot"
                        .into()
                }
            };
            diags.push(at(pos, "kind", format!("unknown kind `{other}`"), Some(hint)));
            None
        }
        None => {
            let guess = guess_kind(name);
            diags.push(at(
                root.pos,
                "",
                "missing `kind`".into(),
                Some(match guess {
                    Some(g) => format!("add `kind: {g}` (valid: Service, Sensors, Controller)"),
                    None => "add `kind: Service`, `kind: Sensors` or `kind: Controller`".into(),
                }),
            ));
            None
        }
    };
    for p in doc.problems() {
        diags.push(at(p.pos, &p.path, p.message, p.hint));
    }
    file.parsed = parsed;
    file.doc = Some(doc);
    file
}

fn guess_kind(file: &str) -> Option<&'static str> {
    if file.contains("objectives") {
        Some("Service")
    } else if file.contains("sensors") {
        Some("Sensors")
    } else if file.contains("controllers") {
        Some("Controller")
    } else if file.contains("simulations") {
        Some("Simulation")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_non_utf8_bytes_are_refused_with_offsets() {
        let e = text_from_bytes(vec![b'a', 0, b'b']).unwrap_err();
        assert!(e.0.contains("NUL byte at offset 1"), "{}", e.0);
        let e = text_from_bytes(vec![b'k', b':', 0xff]).unwrap_err();
        assert!(e.0.contains("offset 2"), "{}", e.0);
        assert_eq!(
            text_from_bytes("\u{feff}a: 1".as_bytes().to_vec()).unwrap(),
            "a: 1"
        );
    }
}

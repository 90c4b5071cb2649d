//! YAML with locations, and a serde deserializer that reports *every* mistake.
//!
//! Off-the-shelf YAML deserializers stop at the first error. Users fixing a config want all of
//! them at once, each with `line:column`. So this module:
//!
//! 1. parses the text with `saphyr-parser` (pure Rust, YAML 1.2) into a [`Node`] tree where every
//!    node knows where it starts;
//! 2. deserializes typed specs from that tree with its own serde [`Deserializer`] that records
//!    each error in a shared [`Sink`] with its location and path, skips an unknown key and carries
//!    on, and drops a broken sequence element (remembering which) so the siblings are still
//!    checked;
//! 3. lets later validation steps find the location of any path ([`Document::locate`]), mapping
//!    the indices of the typed model back to the YAML even where broken elements were dropped.
//!
//! It never panics on input: limits on size, depth and alias expansion turn hostile files into
//! errors.

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Nesting deeper than this is refused: real configs are a few levels deep, and a limit keeps
/// recursive code (deserialization, drop) far away from the stack's end.
pub const MAX_DEPTH: usize = 64;

/// Alias expansion may not grow a document beyond this many nodes ("billion laughs").
pub const MAX_NODES: usize = 1_000_000;

/// A position in a source file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_owned())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Renders a path the way users read it: `objectives[1].target`.
pub fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar; `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true } if is_null_literal(value))
    }

    /// The value under `key` if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar node.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The node as JSON, plain scalars read by the YAML 1.2 core schema (for checking a file
    /// against its JSON Schema as an editor would).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Scalar { value, plain: false } => Value::String(value.clone()),
            NodeKind::Scalar { value, plain: true } => match resolve_plain(value) {
                Plain::Null => Value::Null,
                Plain::Bool(b) => Value::Bool(b),
                Plain::Int(i) => i.into(),
                Plain::UInt(u) => u.into(),
                Plain::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
                Plain::Str => Value::String(value.clone()),
            },
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar().unwrap_or_default().to_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// What a user would call this node in "expected X, found Y".
    fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
            NodeKind::Scalar { value, plain } => {
                if !plain {
                    return format!("the string \"{}\"", truncate(value));
                }
                match resolve_plain(value) {
                    Plain::Null => "nothing (null)".into(),
                    Plain::Bool(b) => format!("the boolean `{b}`"),
                    Plain::Int(_) | Plain::UInt(_) => format!("the integer `{value}`"),
                    Plain::Float(_) => format!("the number `{value}`"),
                    Plain::Str => format!("the string \"{}\"", truncate(value)),
                }
            }
        }
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

fn is_null_literal(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// The YAML 1.2 core schema's reading of a plain scalar.
enum Plain {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str,
}

fn resolve_plain(s: &str) -> Plain {
    if is_null_literal(s) {
        return Plain::Null;
    }
    match s {
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Plain::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        _ => {}
    }
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Plain::Int(i);
        }
        if let Ok(u) = s.trim_start_matches('+').parse::<u64>() {
            return Plain::UInt(u);
        }
        return Plain::Float(s.parse().unwrap_or(f64::NAN));
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(u) = u64::from_str_radix(hex, 16)
    {
        return Plain::UInt(u);
    }
    let looks_numeric = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if looks_numeric && let Ok(f) = s.parse::<f64>() {
        return Plain::Float(f);
    }
    Plain::Str
}

/// Why a text could not become a [`Node`] tree.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

/// Parses a text that holds one YAML document. An empty document (nothing but comments) is
/// `Ok(None)`; a second document is refused (for files that hold exactly one thing).
/// Duplicate keys are reported in `problems` (the first occurrence wins) and parsing goes on.
pub fn parse(text: &str, problems: &mut Vec<SyntaxError>) -> Result<Option<Node>, SyntaxError> {
    let mut documents = parse_stream(text, problems)?;
    if documents.len() > 1 {
        return Err(SyntaxError {
            pos: documents[1].pos,
            message: "a second YAML document (`---`) in a file that holds one".into(),
            hint: Some("put the second document in a file of its own".into()),
        });
    }
    Ok(documents.pop())
}

/// Parses every document of a YAML stream (`---` separates them, as Kubernetes manifests do).
/// Empty documents (nothing, or only comments, between separators) are left out.
pub fn parse_stream(text: &str, problems: &mut Vec<SyntaxError>) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let mut documents = Vec::new();
    for event in &mut parser {
        let (event, span) = event.map_err(scan_error)?;
        let pos = Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        let done = match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => None,
            Event::DocumentStart(_) => {
                // anchors are local to their document
                builder.anchors.clear();
                None
            }
            Event::Alias(id) => {
                let node = builder.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    pos,
                    message: "alias to an unknown anchor".into(),
                    hint: None,
                })?;
                builder.count += count_nodes(&node);
                builder.check_budget(pos)?;
                let node = Node { pos, ..node };
                builder.push_value(node, 0, problems)
            }
            Event::Scalar(value, style, anchor, _tag) => {
                builder.count += 1;
                builder.check_budget(pos)?;
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar {
                        value: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                };
                builder.push_value(node, anchor, problems)
            }
            Event::SequenceStart(anchor, _) => {
                builder.open(pos, anchor, true)?;
                None
            }
            Event::MappingStart(anchor, _) => {
                builder.open(pos, anchor, false)?;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = builder.close(problems);
                builder.push_value(node, anchor, problems)
            }
        };
        if let Some(root) = done
            && !root.is_null()
        {
            documents.push(root);
        }
    }
    Ok(documents)
}

fn scan_error(e: ScanError) -> SyntaxError {
    let m = e.marker();
    let info = e.info().to_owned();
    let hint = if info.contains("recursion limit") {
        Some("the file nests lists or mappings far deeper than any spec needs".into())
    } else if info.contains("mapping values are not allowed") {
        Some("a value containing `: ` must be quoted, or a key is indented wrongly".into())
    } else if info.contains("tab") {
        Some("YAML indentation uses spaces, not tabs".into())
    } else if info.contains("did not find expected key") || info.contains("block") {
        Some("check the indentation of this line and the one before".into())
    } else {
        None
    };
    SyntaxError {
        pos: Pos {
            line: m.line(),
            column: m.col() + 1,
        },
        message: format!("YAML syntax error: {info}"),
        hint,
    }
}

/// Applies YAML merge keys (`<<: *defaults`, `<<: [*a, *b]`): the merged mappings' entries are
/// added where the mapping does not set the key itself; of several merged mappings the first
/// that has a key wins. Only a plain `<<` merges; a quoted `"<<"` is an ordinary key.
fn merge_keys(entries: Vec<(Node, Node)>, problems: &mut Vec<SyntaxError>) -> Vec<(Node, Node)> {
    let is_merge = |k: &Node| matches!(&k.kind, NodeKind::Scalar { value, plain: true } if value == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return entries;
    }
    let (merges, mut own): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| is_merge(k));
    for (_, value) in merges {
        let sources = match value.kind {
            NodeKind::Map(_) => vec![value],
            NodeKind::Seq(items) => items,
            NodeKind::Scalar { .. } => vec![value],
        };
        for source in sources {
            let NodeKind::Map(merged) = source.kind else {
                problems.push(SyntaxError {
                    pos: source.pos,
                    message: "`<<` merges a mapping or a list of mappings, not a scalar".into(),
                    hint: Some("write `<<: *anchor` where `&anchor` names a mapping".into()),
                });
                continue;
            };
            for (k, v) in merged {
                if !own.iter().any(|(o, _)| o.scalar() == k.scalar()) {
                    own.push((k, v));
                }
            }
        }
    }
    own
}

fn count_nodes(n: &Node) -> usize {
    match &n.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

struct Open {
    pos: Pos,
    anchor: usize,
    seq: bool,
    items: Vec<Node>,
    /// For mappings: the key waiting for its value.
    key: Option<Node>,
    entries: Vec<(Node, Node)>,
    /// For mappings: key text -> line of the first occurrence.
    seen: HashMap<String, usize>,
    /// The current key is a duplicate: drop its value.
    skip_value: bool,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    count: usize,
}

impl Builder {
    fn check_budget(&self, pos: Pos) -> Result<(), SyntaxError> {
        if self.count > MAX_NODES {
            return Err(SyntaxError {
                pos,
                message: format!("the document expands to more than {MAX_NODES} nodes"),
                hint: Some("aliases (`*name`) nested inside each other multiply; expand fewer".into()),
            });
        }
        Ok(())
    }

    fn open(&mut self, pos: Pos, anchor: usize, seq: bool) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError {
                pos,
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
                hint: None,
            });
        }
        self.count += 1;
        self.check_budget(pos)?;
        self.stack.push(Open {
            pos,
            anchor,
            seq,
            items: Vec::new(),
            key: None,
            entries: Vec::new(),
            seen: HashMap::new(),
            skip_value: false,
        });
        Ok(())
    }

    fn close(&mut self, problems: &mut Vec<SyntaxError>) -> (Node, usize) {
        let open = self
            .stack
            .pop()
            .expect("the parser balances start and end events");
        let kind = if open.seq {
            NodeKind::Seq(open.items)
        } else {
            NodeKind::Map(merge_keys(open.entries, problems))
        };
        (Node { pos: open.pos, kind }, open.anchor)
    }

    /// Adds a finished node to its parent; returns it when it is the document's root.
    fn push_value(&mut self, node: Node, anchor: usize, problems: &mut Vec<SyntaxError>) -> Option<Node> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(top) = self.stack.last_mut() else {
            return Some(node);
        };
        if top.seq {
            top.items.push(node);
        } else if let Some(key) = top.key.take() {
            if top.skip_value {
                top.skip_value = false;
            } else {
                top.entries.push((key, node));
            }
        } else {
            match node.scalar() {
                Some(text) => {
                    if let Some(first) = top.seen.get(text) {
                        problems.push(SyntaxError {
                            pos: node.pos,
                            message: format!("duplicate key `{text}` (first at line {first})"),
                            hint: Some("a key may appear once per mapping; the first one is used".into()),
                        });
                        top.skip_value = true;
                    } else {
                        top.seen.insert(text.to_owned(), node.pos.line);
                    }
                }
                None => {
                    problems.push(SyntaxError {
                        pos: node.pos,
                        message: "a key must be a plain value, not a list or a mapping".into(),
                        hint: None,
                    });
                    top.skip_value = true;
                }
            }
            top.key = Some(node);
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization with error recovery
// ---------------------------------------------------------------------------------------------

/// One problem found while deserializing, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub pos: Pos,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Collects problems and remembers which sequence elements were dropped.
#[derive(Default)]
pub struct Sink {
    problems: RefCell<Vec<Problem>>,
    /// (YAML path of a sequence, index of a dropped element)
    dropped: RefCell<HashSet<(Vec<Seg>, usize)>>,
    /// The innermost mapping entry whose value failed and was not recovered: the next pass
    /// removes it so that its siblings get checked too.
    aborted: RefCell<Option<Vec<Seg>>>,
    /// Entries removed by earlier passes, as (mapping path, key): their "missing field" is
    /// a consequence, not a problem of its own.
    removed: HashSet<(Vec<Seg>, String)>,
}

impl Sink {
    fn report(&self, problem: Problem) {
        self.problems.borrow_mut().push(problem);
    }
}

const REPORTED: &str = "(reported)";

/// The deserializer's error. Once an error has been recorded in the [`Sink`] it travels up as
/// `Reported`, so each problem is reported once, at the innermost place that knows where it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    Reported,
    Pending {
        message: String,
        hint: Option<String>,
        /// Set for "missing field" errors, which a removed entry can cause.
        missing_field: Option<&'static str>,
    },
}

impl Error {
    fn pending(message: String, hint: Option<String>) -> Self {
        Error::Pending {
            message,
            hint,
            missing_field: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Reported => f.write_str(REPORTED),
            Error::Pending { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

/// The closest of `candidates` to `given`, if it is close enough to be a plausible typo.
pub fn closest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&given.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn one_of(expected: &[&str]) -> String {
    expected
        .iter()
        .map(|e| format!("`{e}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn suggestion(given: &str, expected: &[&str]) -> Option<String> {
    if expected.is_empty() {
        return None;
    }
    Some(match closest(given, expected.iter().copied()) {
        Some(c) => format!("did you mean `{c}`? (valid: {})", one_of(expected)),
        None => format!("valid here: {}", one_of(expected)),
    })
}

/// Rust's type names as people say them (`u64` → "a whole number ≥ 0").
fn in_words(exp: &dyn de::Expected) -> String {
    let exp = exp.to_string();
    match exp.as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number ≥ 0".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        _ => exp,
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::pending(msg.to_string(), None)
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::pending(format!("expected {}, found {unexp}", in_words(exp)), None)
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::pending(format!("expected {}, found {unexp}", in_words(exp)), None)
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Error::pending(format!("unknown field `{field}`"), suggestion(field, expected))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Error::pending(
            format!("unknown value `{variant}`"),
            suggestion(variant, expected),
        )
    }

    fn missing_field(field: &'static str) -> Self {
        Error::Pending {
            message: format!("missing required field `{field}`"),
            hint: Some(format!("add `{field}:` to this mapping")),
            missing_field: Some(field),
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Error::pending(format!("field `{field}` given twice"), None)
    }
}

/// Serde aborts a struct at its first broken field. To check the siblings too, a failed pass
/// is followed by another with the broken entry removed; this many passes at most.
const MAX_PASSES: usize = 64;

/// A parsed document and the problems its deserialization found.
pub struct Document {
    pub root: Node,
    problems: Vec<Problem>,
    /// The problems recorded, and their (path, message), so that each is recorded once in
    /// constant time: a file with tens of thousands of mistakes is checked in linear time.
    seen: HashSet<Problem>,
    seen_at: HashSet<(String, String)>,
    dropped: HashSet<(Vec<Seg>, usize)>,
}

impl Document {
    pub fn new(root: Node) -> Self {
        Document {
            root,
            problems: Vec::new(),
            seen: HashSet::new(),
            seen_at: HashSet::new(),
            dropped: HashSet::new(),
        }
    }

    /// Deserializes `T` from the whole document, recording every problem (see
    /// [`Document::problems`]); `None` when the document as a whole could not be built.
    pub fn deserialize<T: de::DeserializeOwned>(&mut self) -> Option<T> {
        let mut tree = self.root.clone();
        let mut removed = HashSet::new();
        for _ in 0..MAX_PASSES {
            let sink = Sink {
                removed: removed.clone(),
                ..Sink::default()
            };
            let result = T::deserialize(NodeDe {
                node: &tree,
                path: Vec::new(),
                sink: &sink,
            });
            let result = result.map_err(|e| record(&sink, e, &tree, &[]));
            for p in sink.problems.into_inner() {
                self.record(p);
            }
            self.dropped = sink.dropped.into_inner();
            // Another pass with the broken entry removed checks what it hid, also inside
            // list elements that were dropped whole.
            let next = sink
                .aborted
                .into_inner()
                .and_then(|path| match path.split_last() {
                    Some((Seg::Key(key), parent)) if remove_entry(&mut tree, parent, key) => {
                        Some((parent.to_vec(), key.clone()))
                    }
                    _ => None,
                });
            match (result, next) {
                (_, Some(entry)) => {
                    removed.insert(entry);
                }
                (Ok(v), None) => return Some(v),
                (Err(()), None) => return None,
            }
        }
        None
    }

    pub fn problems(&self) -> Vec<Problem> {
        self.problems.clone()
    }

    /// Reports every required field that is missing, in every mapping, using `T`'s JSON
    /// Schema. Serde stops a struct at its first missing field, so a file missing five fields
    /// would otherwise take five rounds of fixing; this finds the rest in one.
    pub fn require_all<T: schemars::JsonSchema>(&mut self) {
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
        let mut found = Vec::new();
        missing_fields(&self.root, &schema, &schema, &mut Vec::new(), &mut found);
        for (pos, path, field) in found {
            let problem = Problem {
                pos,
                path: path_string(&path),
                message: format!("missing required field `{field}`"),
                hint: Some(format!("add `{field}:` to this mapping")),
            };
            if !self
                .seen_at
                .contains(&(problem.path.clone(), problem.message.clone()))
            {
                self.record(problem);
            }
        }
    }

    /// Records a problem unless the same one is recorded already.
    fn record(&mut self, p: Problem) {
        if self.seen.insert(p.clone()) {
            self.seen_at.insert((p.path.clone(), p.message.clone()));
            self.problems.push(p);
        }
    }

    /// Where the value at `path` (indices as in the typed model) starts, and its YAML path.
    /// Falls back to the deepest part of the path that exists (a missing optional field is
    /// reported where it should have been written).
    pub fn locate(&self, path: &[Seg]) -> (Pos, String) {
        let dropped = &self.dropped;
        let mut node = &self.root;
        let mut yaml_path: Vec<Seg> = Vec::new();
        for seg in path {
            let next = match (seg, &node.kind) {
                (Seg::Key(k), NodeKind::Map(entries)) => entries
                    .iter()
                    .find(|(key, _)| key.scalar() == Some(k.as_str()))
                    .map(|(_, v)| (v, Seg::Key(k.clone()))),
                (Seg::Index(i), NodeKind::Seq(items)) => (0..items.len())
                    .filter(|j| !dropped.contains(&(yaml_path.clone(), *j)))
                    .nth(*i)
                    .map(|j| (&items[j], Seg::Index(j))),
                _ => None,
            };
            match next {
                Some((n, s)) => {
                    node = n;
                    yaml_path.push(s);
                }
                None => break,
            }
        }
        (node.pos, path_string(&yaml_path))
    }
}

/// Follows `$ref`s within the root schema.
fn resolve<'s>(schema: &'s serde_json::Value, root: &'s serde_json::Value) -> &'s serde_json::Value {
    let mut s = schema;
    for _ in 0..32 {
        match s
            .get("$ref")
            .and_then(|r| r.as_str())
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            Some(name) => match root.pointer(&format!("/$defs/{name}")) {
                Some(target) => s = target,
                None => break,
            },
            None => break,
        }
    }
    s
}

/// Whether a mapping node can be the object `schema` describes: every key it has is one of the
/// schema's properties (enum variants and `Option`s are told apart by their keys).
fn fits(node: &Node, schema: &serde_json::Value) -> bool {
    let NodeKind::Map(entries) = &node.kind else {
        return false;
    };
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return false;
    };
    schema.get("additionalProperties") != Some(&serde_json::Value::Bool(false))
        || entries
            .iter()
            .all(|(k, _)| k.scalar().is_some_and(|k| props.contains_key(k)))
}

/// Collects (mapping position, mapping path, field) for every required field that is absent.
fn missing_fields<'s>(
    node: &Node,
    schema: &'s serde_json::Value,
    root: &'s serde_json::Value,
    path: &mut Vec<Seg>,
    found: &mut Vec<(Pos, Vec<Seg>, &'s str)>,
) {
    let schema = resolve(schema, root);
    let branches = ["oneOf", "anyOf"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(|b| b.as_array()))
        .flatten()
        .map(|b| resolve(b, root))
        .filter(|b| fits(node, b))
        .collect::<Vec<_>>();
    if let [only] = branches.as_slice() {
        return missing_fields(node, only, root, path, found);
    }
    match &node.kind {
        NodeKind::Map(entries) => {
            let props = schema.get("properties").and_then(|p| p.as_object());
            if let Some(required) = schema.get("required").and_then(|r| r.as_array()) {
                for field in required.iter().filter_map(|f| f.as_str()) {
                    if node.get(field).is_none() {
                        found.push((node.pos, path.clone(), field));
                    }
                }
            }
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in entries {
                let Some(key) = k.scalar() else { continue };
                let Some(sub) = props.and_then(|p| p.get(key)).or(extra) else {
                    continue;
                };
                path.push(Seg::Key(key.to_owned()));
                missing_fields(v, sub, root, path, found);
                path.pop();
            }
        }
        NodeKind::Seq(items) => {
            if let Some(sub) = schema.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    missing_fields(item, sub, root, path, found);
                    path.pop();
                }
            }
        }
        NodeKind::Scalar { .. } => {}
    }
}

/// Removes the entry `key` from the mapping at `path`; false if there is no such entry.
fn remove_entry(tree: &mut Node, path: &[Seg], key: &str) -> bool {
    let mut node = tree;
    for seg in path {
        let next = match (seg, &mut node.kind) {
            (Seg::Key(k), NodeKind::Map(entries)) => entries
                .iter_mut()
                .find(|(kn, _)| kn.scalar() == Some(k.as_str()))
                .map(|(_, v)| v),
            (Seg::Index(i), NodeKind::Seq(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match &mut node.kind {
        NodeKind::Map(entries) => {
            let before = entries.len();
            entries.retain(|(k, _)| k.scalar() != Some(key));
            entries.len() < before
        }
        _ => false,
    }
}

/// Records `e` at `node` unless it was recorded already.
fn record(sink: &Sink, e: Error, node: &Node, path: &[Seg]) {
    if let Error::Pending {
        missing_field: Some(field),
        ..
    } = &e
        && sink.removed.contains(&(path.to_vec(), field.to_string()))
    {
        return;
    }
    if let Error::Pending { message, hint, .. } = e {
        sink.report(Problem {
            pos: node.pos,
            path: path_string(path),
            message,
            hint,
        });
    }
}

struct NodeDe<'a> {
    node: &'a Node,
    path: Vec<Seg>,
    sink: &'a Sink,
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node, seg: Seg) -> NodeDe<'a> {
        let mut path = self.path.clone();
        path.push(seg);
        NodeDe {
            node,
            path,
            sink: self.sink,
        }
    }

    /// Records a pending error at this node; what travels up is `Reported`.
    fn here<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        r.map_err(|e| {
            record(self.sink, e, self.node, &self.path);
            Error::Reported
        })
    }

    fn mismatch<T>(&self, expected: &str) -> Result<T, Error> {
        self.here(Err(Error::pending(
            format!("expected {expected}, found {}", self.node.describe()),
            None,
        )))
    }

    fn mapping<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Map(entries) => {
                let access = MapDe {
                    parent: &self,
                    entries,
                    next: 0,
                    fields,
                };
                let r = visitor.visit_map(access);
                self.here(r)
            }
            _ => self.mismatch("a mapping"),
        }
    }

    fn plain(&self) -> Option<(&'a str, Plain)> {
        match &self.node.kind {
            NodeKind::Scalar { value, plain: true } => Some((value.as_str(), resolve_plain(value))),
            _ => None,
        }
    }
}

macro_rules! deserialize_number {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let r = match self.plain() {
                Some((_, Plain::Int(i))) => visitor.visit_i64(i),
                Some((_, Plain::UInt(u))) => visitor.visit_u64(u),
                Some((_, Plain::Float(f))) => visitor.visit_f64(f),
                _ => return self.mismatch("a number"),
            };
            self.here(r)
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match &self.node.kind {
            NodeKind::Scalar { value, plain } => {
                if !plain {
                    visitor.visit_str(value)
                } else {
                    match resolve_plain(value) {
                        Plain::Null => visitor.visit_unit(),
                        Plain::Bool(b) => visitor.visit_bool(b),
                        Plain::Int(i) => visitor.visit_i64(i),
                        Plain::UInt(u) => visitor.visit_u64(u),
                        Plain::Float(f) => visitor.visit_f64(f),
                        Plain::Str => visitor.visit_str(value),
                    }
                }
            }
            NodeKind::Seq(_) => return self.deserialize_seq(visitor),
            NodeKind::Map(_) => return self.deserialize_map(visitor),
        };
        self.here(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.plain() {
            Some((_, Plain::Bool(b))) => {
                let r = visitor.visit_bool(b);
                self.here(r)
            }
            _ => self.mismatch("`true` or `false`"),
        }
    }

    deserialize_number! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Scalar { value, plain } if !(*plain && is_null_literal(value)) => {
                let r = visitor.visit_str(value);
                self.here(r)
            }
            _ => self.mismatch("a string"),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            let r = visitor.visit_none();
            self.here(r)
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            let r = visitor.visit_unit();
            self.here(r)
        } else {
            self.mismatch("nothing (null)")
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name != RECOVER {
            return visitor.visit_newtype_struct(self);
        }
        let failed = std::cell::Cell::new(false);
        let (sink, path) = (self.sink, self.path.clone());
        let node = self.node;
        let r = visitor.visit_newtype_struct(WatchDe {
            inner: self,
            failed: &failed,
        });
        let r = r.map_err(|e| {
            failed.set(true);
            record(sink, e, node, &path);
            Error::Reported
        });
        if failed.get()
            && let Some((Seg::Index(i), parent)) = path.split_last()
        {
            sink.dropped.borrow_mut().insert((parent.to_vec(), *i));
        }
        r
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Seq(items) => {
                let access = SeqDe {
                    parent: &self,
                    items,
                    next: 0,
                };
                let r = visitor.visit_seq(access);
                self.here(r)
            }
            _ => self.mismatch("a list"),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.mapping(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.mapping(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (tag, value) = match &self.node.kind {
            NodeKind::Scalar { value, .. } if !self.node.is_null() => (value.as_str(), None),
            NodeKind::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                match k.scalar() {
                    Some(tag) => (tag, Some(v)),
                    None => return self.mismatch("one of the allowed choices"),
                }
            }
            _ => {
                let message = format!(
                    "expected one of {} (a name, or a mapping with exactly one of them as key), found {}",
                    one_of(variants),
                    self.node.describe()
                );
                return self.here(Err(Error::pending(message, None)));
            }
        };
        let r = visitor.visit_enum(EnumDe {
            parent: &self,
            tag,
            value,
        });
        self.here(r)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // identifiers are keys and enum tags; their errors are located by the caller
        match self.node.scalar() {
            Some(s) => visitor.visit_str(s),
            None => self.mismatch("a name"),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqDe<'p, 'a> {
    parent: &'p NodeDe<'a>,
    items: &'a [Node],
    next: usize,
}

impl<'de, 'p, 'a> de::SeqAccess<'de> for SeqDe<'p, 'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let Some(item) = self.items.get(self.next) else {
            return Ok(None);
        };
        let child = self.parent.child(item, Seg::Index(self.next));
        self.next += 1;
        seed.deserialize(child).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.next)
    }
}

struct MapDe<'p, 'a> {
    parent: &'p NodeDe<'a>,
    entries: &'a [(Node, Node)],
    next: usize,
    /// For structs: the field names serde accepts. Other keys are reported and skipped here,
    /// before the key reaches serde, so one unknown key does not hide the rest of the mapping.
    fields: Option<&'static [&'static str]>,
}

impl<'de, 'p, 'a> de::MapAccess<'de> for MapDe<'p, 'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        while let Some((key, _)) = self.entries.get(self.next) {
            let name = key.scalar().unwrap_or("?");
            let mut path = self.parent.path.clone();
            path.push(Seg::Key(name.to_owned()));
            if let Some(fields) = self.fields
                && !fields.contains(&name)
            {
                self.next += 1;
                record(
                    self.parent.sink,
                    de::Error::unknown_field(name, fields),
                    key,
                    &path,
                );
                continue;
            }
            return match seed.deserialize(KeyDe(key)) {
                Ok(k) => Ok(Some(k)),
                Err(e) => {
                    record(self.parent.sink, e, key, &path);
                    Err(Error::Reported)
                }
            };
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (key, value) = &self.entries[self.next];
        self.next += 1;
        let child = self
            .parent
            .child(value, Seg::Key(key.scalar().unwrap_or("?").to_owned()));
        let path = child.path.clone();
        let r = seed.deserialize(child);
        if r.is_err() {
            self.parent.sink.aborted.borrow_mut().get_or_insert(path);
        }
        r
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

/// The newtype name by which [`Recover`] asks [`NodeDe`] to watch an element for failure.
const RECOVER: &str = "$autopilot::yaml::Recover";

/// A list element that, when broken, is dropped instead of failing the whole list. Its
/// problems are already recorded in the [`Sink`], and the drop is remembered so that
/// [`Document::locate`] still maps model indices to the right YAML element.
///
/// Only meaningful with this module's deserializer (the loader is the only one that reads
/// specs); use it through [`recover_vec`].
struct Recover<T>(Option<T>);

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Recover<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Recover<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list element")
            }
            fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Ok(Recover(T::deserialize(d).ok()))
            }
        }
        d.deserialize_newtype_struct(RECOVER, V(std::marker::PhantomData))
    }
}

/// `#[serde(deserialize_with = "recover_vec")]`: a list whose broken elements are reported and
/// dropped while the others are still read and checked.
pub fn recover_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    let items: Vec<Recover<T>> = de::Deserialize::deserialize(d)?;
    Ok(items.into_iter().filter_map(|r| r.0).collect())
}

/// Forwards to [`NodeDe`] and notes whether deserialization failed (see [`Recover`]).
struct WatchDe<'a, 'c> {
    inner: NodeDe<'a>,
    failed: &'c std::cell::Cell<bool>,
}

macro_rules! watch {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Error> {
            let r = self.inner.$method($($arg,)* visitor);
            if r.is_err() {
                self.failed.set(true);
            }
            r
        }
    )*};
}

impl<'de, 'a, 'c> de::Deserializer<'de> for WatchDe<'a, 'c> {
    type Error = Error;
    watch! {
        deserialize_any() deserialize_bool() deserialize_i8() deserialize_i16() deserialize_i32()
        deserialize_i64() deserialize_i128() deserialize_u8() deserialize_u16() deserialize_u32()
        deserialize_u64() deserialize_u128() deserialize_f32() deserialize_f64()
        deserialize_char() deserialize_str() deserialize_string() deserialize_bytes()
        deserialize_byte_buf() deserialize_option() deserialize_unit()
        deserialize_unit_struct(name: &'static str)
        deserialize_newtype_struct(name: &'static str)
        deserialize_seq() deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize)
        deserialize_map()
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_enum(name: &'static str, variants: &'static [&'static str])
        deserialize_identifier() deserialize_ignored_any()
    }
}

struct KeyDe<'a>(&'a Node);

impl<'de, 'a> de::Deserializer<'de> for KeyDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0.scalar() {
            Some(s) => visitor.visit_str(s),
            None => Err(Error::pending("a key must be a plain value".into(), None)),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct EnumDe<'p, 'a> {
    parent: &'p NodeDe<'a>,
    tag: &'a str,
    value: Option<&'a Node>,
}

impl<'de, 'p, 'a> de::EnumAccess<'de> for EnumDe<'p, 'a> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let tag: de::value::StrDeserializer<'_, Error> = self.tag.into_deserializer();
        let v = seed.deserialize(tag)?;
        Ok((v, self))
    }
}

impl<'de, 'p, 'a> de::VariantAccess<'de> for EnumDe<'p, 'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.value {
            None => Ok(()),
            Some(v) if v.is_null() => Ok(()),
            Some(_) => Err(Error::pending(
                format!("`{}` takes no settings; write it as a plain name", self.tag),
                None,
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        match self.value {
            Some(v) => seed.deserialize(self.parent.child(v, Seg::Key(self.tag.to_owned()))),
            None => Err(Error::pending(
                format!("`{}` needs a value: write `{}: …`", self.tag, self.tag),
                None,
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Some(v) => de::Deserializer::deserialize_seq(
                self.parent.child(v, Seg::Key(self.tag.to_owned())),
                visitor,
            ),
            None => Err(Error::pending(format!("`{}` needs a list", self.tag), None)),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Some(v) => de::Deserializer::deserialize_map(
                self.parent.child(v, Seg::Key(self.tag.to_owned())),
                visitor,
            ),
            None => Err(Error::pending(format!("`{}` needs settings", self.tag), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn doc(text: &str) -> Document {
        let mut problems = Vec::new();
        let root = parse(text, &mut problems).unwrap().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        Document::new(root)
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        size: u32,
        #[serde(default)]
        note: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct List {
        #[serde(deserialize_with = "recover_vec")]
        items: Vec<Item>,
        flag: bool,
    }

    #[test]
    fn plain_scalars_follow_the_yaml_1_2_core_schema() {
        #[derive(Deserialize)]
        struct S {
            a: String,
            b: String,
            c: f64,
            d: Option<u8>,
            e: bool,
        }
        // `no` is a string in YAML 1.2 (not false, as in 1.1), a quoted number is a string
        let mut d = doc("a: no\nb: '5'\nc: 1e3\nd: ~\ne: true\n");
        let s: S = d.deserialize().unwrap();
        assert_eq!(
            (s.a.as_str(), s.b.as_str(), s.c, s.d, s.e),
            ("no", "5", 1000.0, None, true)
        );
        // a quoted number is not a number
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct N {
            n: u32,
        }
        let mut d = doc("n: '5'\n");
        assert!(d.deserialize::<N>().is_none());
        assert_eq!(
            d.problems()[0].message,
            "expected a number, found the string \"5\""
        );
    }

    #[test]
    fn a_broken_list_element_is_dropped_and_its_siblings_still_checked() {
        let text = "items:\n  - {name: a, size: 1}\n  - {name: b, size: big}\n  - {name: c, size: 3, colour: red}\n  - {name: d, size: 4}\nflag: maybe\n";
        let mut d = doc(text);
        let parsed: Option<List> = d.deserialize();
        assert!(parsed.is_none(), "flag is broken and required");
        let problems: Vec<_> = d
            .problems()
            .into_iter()
            .map(|p| (p.pos.line, p.pos.column, p.path, p.message))
            .collect();
        assert_eq!(
            problems,
            [
                (
                    3,
                    21,
                    "items[1].size".to_owned(),
                    "expected a number, found the string \"big\"".to_owned()
                ),
                (
                    4,
                    24,
                    "items[2].colour".to_owned(),
                    "unknown field `colour`".to_owned()
                ),
                (
                    6,
                    7,
                    "flag".to_owned(),
                    "expected `true` or `false`, found the string \"maybe\"".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn locating_a_model_index_skips_the_dropped_elements() {
        let mut d = doc("items:\n  - {name: a, size: x}\n  - {name: b, size: 2}\nflag: true\n");
        let list: List = d.deserialize().unwrap();
        assert_eq!(
            list.items,
            [Item {
                name: "b".into(),
                size: 2,
                note: None
            }]
        );
        // model index 0 is YAML element 1
        let (pos, path) = d.locate(&[Seg::from("items"), Seg::from(0), Seg::from("name")]);
        assert_eq!((pos.line, pos.column, path.as_str()), (3, 12, "items[1].name"));
        // a missing optional field is located at its mapping
        let (pos, path) = d.locate(&[Seg::from("items"), Seg::from(0), Seg::from("note")]);
        assert_eq!((pos.line, path.as_str()), (3, "items[1]"));
    }

    #[test]
    fn duplicate_keys_are_reported_and_the_first_wins() {
        let mut problems = Vec::new();
        let root = parse("a: 1\nb: 2\na: 3\n", &mut problems).unwrap().unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!((problems[0].pos.line, problems[0].pos.column), (3, 1));
        assert!(
            problems[0]
                .message
                .contains("duplicate key `a` (first at line 1)")
        );
        assert_eq!(root.get("a").and_then(Node::scalar), Some("1"));
    }

    #[test]
    fn enums_are_a_name_or_a_single_key_mapping() {
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(rename_all = "camelCase")]
        enum Gate {
            Automatic,
            Soak(String),
        }
        #[derive(Debug, Deserialize)]
        struct G {
            gates: Vec<Gate>,
        }
        let mut d = doc("gates: [automatic, {soak: 1h}]\n");
        let g: G = d.deserialize().unwrap();
        assert_eq!(g.gates, [Gate::Automatic, Gate::Soak("1h".into())]);
        let mut d = doc("gates: [automatc]\n");
        assert!(d.deserialize::<G>().is_none());
        let p = &d.problems()[0];
        assert_eq!(p.message, "unknown value `automatc`");
        assert!(
            p.hint
                .as_deref()
                .unwrap()
                .starts_with("did you mean `automatic`?")
        );
    }

    #[test]
    fn aliases_expand_to_copies_of_their_anchor() {
        #[derive(Deserialize)]
        struct A {
            x: Vec<u32>,
            y: Vec<u32>,
        }
        let mut d = doc("x: &n [1, 2]\ny: *n\n");
        let a: A = d.deserialize().unwrap();
        assert_eq!(a.y, a.x);
    }
}

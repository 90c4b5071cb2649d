//! The small part of PromQL that sensors are written in: label matchers (`code=~"5.."`), and
//! selectors whose matchers name the service, environment and release by template
//! (`service="{{service}}",env="{{environment}}"`). Knowing which label carries which identity
//! is what lets one query serve every service: the Prometheus adapter replaces the templates
//! with regular expressions over every value in play and groups the answer by those labels.

use std::fmt;

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One label matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.label, self.op.as_str(), quote(&self.value))
    }
}

/// A PromQL string literal for `s` (double quotes, backslash escapes).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A RE2 expression matching exactly one of `values` (PromQL regexes are anchored).
pub fn alternation<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut parts: Vec<String> = values.into_iter().map(regex_escape).collect();
    parts.sort();
    parts.dedup();
    parts.join("|")
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// A matcher that went wrong, and where (a character offset into the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatcherError {
    pub offset: usize,
    pub message: String,
}

fn err(offset: usize, message: impl Into<String>) -> MatcherError {
    MatcherError {
        offset,
        message: message.into(),
    }
}

/// Parses `a="x", b=~"y.*"` (optionally inside `{…}`). An empty text is no matchers.
pub fn parse_matchers(text: &str) -> Result<Vec<Matcher>, MatcherError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].1.is_whitespace() {
            *i += 1;
        }
    };
    let at = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    skip_ws(&mut i);
    let braced = chars.get(i).is_some_and(|c| c.1 == '{');
    if braced {
        i += 1;
    }
    let mut out = Vec::new();
    loop {
        skip_ws(&mut i);
        match chars.get(i) {
            None if !braced => break,
            None => return Err(err(text.len(), "`{` is never closed with `}`")),
            Some((_, '}')) if braced => {
                i += 1;
                skip_ws(&mut i);
                if i < chars.len() {
                    return Err(err(at(i), "text after the closing `}`"));
                }
                break;
            }
            _ => {}
        }
        let start = i;
        while i < chars.len() && (chars[i].1.is_ascii_alphanumeric() || chars[i].1 == '_') {
            i += 1;
        }
        if i == start || chars[start].1.is_ascii_digit() {
            return Err(err(at(start), "expected a label name (letters, digits and `_`)"));
        }
        let label: String = chars[start..i].iter().map(|c| c.1).collect();
        skip_ws(&mut i);
        let op = match (chars.get(i).map(|c| c.1), chars.get(i + 1).map(|c| c.1)) {
            (Some('='), Some('~')) => MatchOp::Regex,
            (Some('!'), Some('=')) => MatchOp::NotEqual,
            (Some('!'), Some('~')) => MatchOp::NotRegex,
            (Some('='), _) => MatchOp::Equal,
            _ => {
                return Err(err(
                    at(i),
                    format!("expected `=`, `!=`, `=~` or `!~` after `{label}`"),
                ));
            }
        };
        i += if op == MatchOp::Equal { 1 } else { 2 };
        skip_ws(&mut i);
        let quote_char = match chars.get(i).map(|c| c.1) {
            Some(q @ ('"' | '\'' | '`')) => q,
            _ => return Err(err(at(i), format!("expected a quoted value for `{label}`"))),
        };
        let open = i;
        i += 1;
        let mut value = String::new();
        loop {
            match chars.get(i).map(|c| c.1) {
                None => return Err(err(at(open), "this string is never closed")),
                Some(c) if c == quote_char => {
                    i += 1;
                    break;
                }
                Some('\\') if quote_char != '`' => {
                    let escaped = chars.get(i + 1).map(|c| c.1);
                    match escaped {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(c) => value.push(c),
                        None => return Err(err(at(open), "this string is never closed")),
                    }
                    i += 2;
                }
                Some(c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        if matches!(op, MatchOp::Regex | MatchOp::NotRegex)
            && let Err(e) = regex::Regex::new(&value)
        {
            let first = e.to_string().lines().last().unwrap_or("").trim().to_owned();
            return Err(err(
                at(open),
                format!("`{value}` is not a valid regular expression: {first}"),
            ));
        }
        out.push(Matcher { label, op, value });
        skip_ws(&mut i);
        match chars.get(i).map(|c| c.1) {
            Some(',') => i += 1,
            None | Some('}') => {}
            Some(_) => return Err(err(at(i), "expected `,` between matchers")),
        }
    }
    Ok(out)
}

/// A compiled matcher, to pick series on this side (`bad: code=~"5.."` among all responses).
#[derive(Debug, Clone)]
pub struct SeriesFilter {
    rules: Vec<(String, MatchOp, Compiled)>,
}

#[derive(Debug, Clone)]
enum Compiled {
    Exact(String),
    Regex(regex::Regex),
}

impl SeriesFilter {
    pub fn new(matchers: &[Matcher]) -> Result<SeriesFilter, MatcherError> {
        let mut rules = Vec::new();
        for m in matchers {
            let c = match m.op {
                MatchOp::Equal | MatchOp::NotEqual => Compiled::Exact(m.value.clone()),
                // PromQL anchors its regexes at both ends
                MatchOp::Regex | MatchOp::NotRegex => Compiled::Regex(
                    regex::Regex::new(&format!("^(?:{})$", m.value)).map_err(|e| err(0, e.to_string()))?,
                ),
            };
            rules.push((m.label.clone(), m.op, c));
        }
        Ok(SeriesFilter { rules })
    }

    /// Whether a series with these labels (an absent label is the empty string) matches.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.rules.iter().all(|(name, op, c)| {
            let v = label(name).unwrap_or("");
            let hit = match c {
                Compiled::Exact(x) => v == x,
                Compiled::Regex(r) => r.is_match(v),
            };
            hit == matches!(op, MatchOp::Equal | MatchOp::Regex)
        })
    }
}

/// Which label carries each identity, read from a selector template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub environment: String,
    pub release: String,
}

/// A selector split into the labels that identify a series' service, environment and release
/// (`label="{{service}}"`) and the fixed matchers every series must also meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySelector {
    pub identity: Identity,
    pub fixed: Vec<Matcher>,
}

/// Splits a selector template; says what is wrong when an identity is missing, used twice, or
/// used other than as a whole `label="{{…}}"` value.
pub fn identity_selector(template: &str) -> Result<IdentitySelector, MatcherError> {
    let matchers = parse_matchers(template)?;
    let mut slots: [Option<String>; 3] = [None, None, None];
    let names = ["service", "environment", "release"];
    let mut fixed = Vec::new();
    for m in matchers {
        let var = m
            .value
            .strip_prefix("{{")
            .and_then(|v| v.strip_suffix("}}"))
            .map(str::trim);
        match var {
            Some(v) => {
                let Some(k) = names.iter().position(|n| *n == v) else {
                    return Err(err(
                        0,
                        format!(
                            "`{{{{{v}}}}}` cannot name a label here (use service, environment or release)"
                        ),
                    ));
                };
                if m.op != MatchOp::Equal {
                    return Err(err(0, format!("`{}` must match `{{{{{v}}}}}` with `=`", m.label)));
                }
                if slots[k].replace(m.label.clone()).is_some() {
                    return Err(err(0, format!("`{{{{{v}}}}}` is used twice")));
                }
            }
            None if m.value.contains("{{") => {
                return Err(err(
                    0,
                    format!(
                        "`{}` mixes a template with text; a label must equal exactly one of {{{{service}}}}, {{{{environment}}}}, {{{{release}}}}",
                        m.label
                    ),
                ));
            }
            None => fixed.push(m),
        }
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.is_none())
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("{{{{{m}}}}}")).collect();
        return Err(err(
            0,
            format!(
                "the selector must name the label of {} (e.g. `{}=\"{}\"`)",
                list.join(", "),
                missing[0],
                list[0]
            ),
        ));
    }
    let [s, e, r] = slots;
    Ok(IdentitySelector {
        identity: Identity {
            service: s.unwrap_or_default(),
            environment: e.unwrap_or_default(),
            release: r.unwrap_or_default(),
        },
        fixed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_with_every_operator_and_quote() {
        let m = parse_matchers(r#"{code=~"5..", job!="x\"y", a!~'b', c=`d\e`}"#).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].to_string(), r#"code=~"5..""#);
        assert_eq!(m[1].value, "x\"y");
        assert_eq!(m[3].value, "d\\e");
        assert!(parse_matchers("").unwrap().is_empty());
    }

    #[test]
    fn broken_matchers_say_where() {
        let e = parse_matchers(r#"code=~"5..", job"#).unwrap_err();
        assert_eq!(e.offset, 16);
        assert!(e.message.contains("after `job`"), "{e:?}");
        assert!(
            parse_matchers(r#"code=~"(""#)
                .unwrap_err()
                .message
                .contains("regular expression")
        );
        assert!(
            parse_matchers(r#"{a="b""#)
                .unwrap_err()
                .message
                .contains("never closed")
        );
    }

    #[test]
    fn filters_are_anchored_like_promql() {
        let f = SeriesFilter::new(&parse_matchers(r#"code=~"5..""#).unwrap()).unwrap();
        assert!(f.matches(|_| Some("503")));
        assert!(!f.matches(|_| Some("1503")));
        let absent = SeriesFilter::new(&parse_matchers(r#"le!="""#).unwrap()).unwrap();
        assert!(!absent.matches(|_| None));
    }

    #[test]
    fn identity_selectors_find_their_labels() {
        let s = identity_selector(
            r#"service="{{service}}",env="{{ environment }}",version="{{release}}",job="web""#,
        )
        .unwrap();
        assert_eq!(s.identity.environment, "env");
        assert_eq!(s.fixed.len(), 1);
        let e = identity_selector(r#"service="{{service}}",env="{{environment}}""#).unwrap_err();
        assert!(e.message.contains("{{release}}"), "{e:?}");
        assert!(
            identity_selector(r#"service=~"{{service}}",env="{{environment}}",v="{{release}}""#).is_err()
        );
        assert!(
            identity_selector(r#"service="a-{{service}}",env="{{environment}}",v="{{release}}""#).is_err()
        );
    }

    #[test]
    fn alternations_escape_and_sort() {
        assert_eq!(alternation(["b.1", "a", "a"]), r"a|b\.1");
    }
}

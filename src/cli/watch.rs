//! `autopilot watch [SERVICE]`: rollouts as they move, in a terminal. One line per environment
//! (the stable release; the rollout with a bar for its weight and the judge's word on each
//! objective), kept at the bottom on a terminal, and above it a scrolling log of transitions.
//! Piped, it prints the log and a fresh board whenever something changed; `--output json`
//! prints one JSON object per line (`transition` and `board`).
//!
//! It follows the API's event stream (`/v1/events`) and, when the stream breaks, reconnects
//! from the last transition it saw (`Last-Event-ID`), so none is lost or shown twice.

use super::{Api, Connection, Failure, Output, enc, fail, paint, s};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

/// The longest wait between two reconnections.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A stream silent for this long is dead (the server sends a comment every 15 s).
const SILENCE: Duration = Duration::from_secs(45);
/// The bar's width in characters.
const BAR: usize = 20;

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a byte stream into server-sent events (the subset the API sends: `event`, `id`,
/// `data` lines, comments, blank-line separators; `\n` or `\r\n`).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        if self.buffer.contains('\r') {
            self.buffer = self.buffer.replace("\r\n", "\n");
        }
        let mut out = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut e = SseEvent::default();
            let mut data = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => e.event = value.to_owned(),
                    "id" => e.id = Some(value.to_owned()),
                    "data" => data.push(value),
                    _ => {} // a comment (keep-alive) or a field we do not use
                }
            }
            if data.is_empty() && e.event.is_empty() {
                continue;
            }
            e.data = data.join("\n");
            if e.event.is_empty() {
                e.event = "message".into();
            }
            out.push(e);
        }
        out
    }
}

/// A weight as a bar: `[█████               ] 25%`.
pub fn bar(weight: u64) -> String {
    let filled = (weight.min(100) as usize * BAR).div_ceil(100);
    format!(
        "[{}{}] {weight:>3}%",
        "█".repeat(filled),
        " ".repeat(BAR - filled)
    )
}

/// The board's lines: one per environment of every service shown.
pub fn board_lines(services: &Value) -> Vec<String> {
    let mut rows: Vec<[String; 4]> = Vec::new();
    for svc in services["services"].as_array().into_iter().flatten() {
        for e in svc["environments"].as_array().into_iter().flatten() {
            let r = &e["rollout"];
            let state = r["state"].as_str().unwrap_or("");
            let active = !r.is_null() && !matches!(state, "promoted" | "rolled-back" | "superseded");
            let rollout = if active {
                format!(
                    "{} {} {}",
                    paint(state),
                    s(&r["release"]),
                    bar(r["weight"].as_u64().unwrap_or(0))
                )
            } else {
                "no rollout".to_owned()
            };
            let mut after = Vec::new();
            if active {
                let verdicts: Vec<String> = r["verdicts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        format!(
                            "{} {}",
                            s(&v["objective"]),
                            paint(v["verdict"].as_str().unwrap_or("-"))
                        )
                    })
                    .collect();
                if !verdicts.is_empty() {
                    after.push(verdicts.join(", "));
                }
            }
            if !e["waiting_for_person"].is_null() {
                after.push(format!("waiting for {}", s(&e["waiting_for_person"])));
            }
            rows.push([
                format!("{}/{}", s(&svc["name"]), s(&e["name"])),
                format!("stable {}", s(&e["stable"])),
                rollout,
                after.join("; "),
            ]);
        }
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    rows.iter()
        .map(|r| {
            format!("{:w0$}  {:w1$}  {}  {}", r[0], r[1], r[2], r[3])
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// A transition event as a log line.
pub fn log_line(e: &Value) -> String {
    let at = e["at"].as_str().unwrap_or("");
    let time = at.split('T').nth(1).unwrap_or(at).trim_end_matches('Z');
    let from = e["from"]
        .as_str()
        .map(|f| format!("{} → ", paint(f)))
        .unwrap_or_default();
    format!(
        "{time}  {}/{} {} {from}{} at {}%: {}",
        s(&e["service"]),
        s(&e["environment"]),
        s(&e["release"]),
        paint(e["to"].as_str().unwrap_or("")),
        s(&e["weight"]),
        s(&e["cause"])
    )
}

/// Where the lines go: a live board under a scrolling log on a terminal; plain lines when
/// piped; JSON lines for scripts.
enum Screen {
    Live {
        multi: indicatif::MultiProgress,
        lines: Vec<indicatif::ProgressBar>,
    },
    Plain {
        last: Vec<String>,
    },
    Json,
}

impl Screen {
    fn new(output: Output) -> Screen {
        match output {
            Output::Json => Screen::Json,
            Output::Table if std::io::stdout().is_terminal() => Screen::Live {
                multi: indicatif::MultiProgress::new(),
                lines: Vec::new(),
            },
            Output::Table => Screen::Plain { last: Vec::new() },
        }
    }

    fn log(&mut self, line: &str, event: &Value) {
        match self {
            Screen::Live { multi, .. } => {
                let _ = multi.println(line);
            }
            Screen::Plain { .. } => println!("{line}"),
            Screen::Json => println!("{}", json!({"event": "transition", "transition": event})),
        }
    }

    fn say(&mut self, line: &str) {
        match self {
            Screen::Live { multi, .. } => {
                let _ = multi.println(line);
            }
            Screen::Plain { .. } | Screen::Json => eprintln!("{line}"),
        }
    }

    fn board(&mut self, services: &Value) {
        let lines = board_lines(services);
        match self {
            Screen::Live { multi, lines: bars } => {
                while bars.len() < lines.len() {
                    let b = multi.add(indicatif::ProgressBar::new_spinner());
                    b.set_style(indicatif::ProgressStyle::with_template("{msg}").expect("a template"));
                    bars.push(b);
                }
                while bars.len() > lines.len() {
                    if let Some(b) = bars.pop() {
                        b.finish_and_clear();
                        multi.remove(&b);
                    }
                }
                for (b, l) in bars.iter().zip(lines) {
                    b.set_message(l);
                }
            }
            Screen::Plain { last } => {
                if *last != lines {
                    println!("--");
                    for l in &lines {
                        println!("{l}");
                    }
                    println!("--");
                    *last = lines;
                }
            }
            Screen::Json => println!("{}", json!({"event": "board", "services": services["services"]})),
        }
    }
}

/// `autopilot watch [SERVICE]`: until interrupted.
pub async fn watch(c: &Connection, service: Option<String>) -> ExitCode {
    let api = Api::new(c);
    let services_path = match &service {
        Some(s) => format!("/v1/services/{}", enc(s)),
        None => "/v1/services".to_owned(),
    };
    let events_path = match &service {
        Some(s) => format!("/v1/events?service={}", enc(s)),
        None => "/v1/events".to_owned(),
    };
    let board = async |api: &Api| -> Result<Value, Failure> {
        let v = api.json(reqwest::Method::GET, &services_path, None).await?;
        Ok(if service.is_some() {
            json!({ "services": [v] })
        } else {
            v
        })
    };
    // a wrong URL, token or service is said at once, with its exit code
    let first = match board(&api).await {
        Ok(v) => v,
        Err(f) => return fail(f),
    };
    let mut screen = Screen::new(c.output);
    screen.board(&first);
    let streamer = reqwest::Client::builder()
        .read_timeout(SILENCE)
        .build()
        .expect("a client");
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut req = streamer.get(format!("{}{events_path}", api.base));
        if let Some(t) = &api.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        let broke = match req.send().await {
            Ok(res) if res.status().is_success() => {
                let mut res = res;
                let mut parser = SseParser::default();
                loop {
                    match res.chunk().await {
                        Ok(Some(chunk)) => {
                            backoff = Duration::from_millis(500);
                            for e in parser.push(&chunk) {
                                match e.event.as_str() {
                                    "transition" => {
                                        let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                                        screen.log(&log_line(&v), &v);
                                        if e.id.is_some() {
                                            last_id = e.id;
                                        }
                                    }
                                    "change" | "ready" => match board(&api).await {
                                        Ok(v) => screen.board(&v),
                                        Err(f) => {
                                            screen.say(&format!("cannot read the board: {}", f.message))
                                        }
                                    },
                                    _ => {}
                                }
                            }
                        }
                        Ok(None) => break "the API closed the stream".to_owned(),
                        Err(e) => break format!("the stream broke ({e})"),
                    }
                }
            }
            Ok(res) => {
                let status = res.status().as_u16();
                let text = res.text().await.unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|j| j["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                if (400..500).contains(&status) {
                    return fail(Failure {
                        code: super::code_for(status),
                        message: format!("{status}: {message}"),
                    });
                }
                format!("the API answered {status}: {message}")
            }
            Err(e) => format!("cannot reach the API at {} ({e})", api.base),
        };
        screen.say(&format!(
            "{broke}; reconnecting in {:.1} s",
            backoff.as_secs_f64()
        ));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_chunks_and_comments_are_skipped() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nevent: trans").is_empty());
        let got = p.push(b"ition\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\nevent: change\ndata: {}\n\n");
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "transition".into(),
                    id: Some("7".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "change".into(),
                    id: None,
                    data: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn the_bar_fills_with_the_weight() {
        assert_eq!(bar(0), format!("[{}]   0%", " ".repeat(BAR)));
        assert_eq!(bar(100), format!("[{}] 100%", "█".repeat(BAR)));
        assert_eq!(bar(25), format!("[{}{}]  25%", "█".repeat(5), " ".repeat(15)));
    }

    #[test]
    fn the_board_has_a_line_per_environment_with_the_judges_word() {
        let services = json!({"services": [{"name": "shop", "environments": [
            {"name": "dev", "stable": "r1", "rollout": {"release": "r2", "state": "canary", "weight": 20,
                "verdicts": [{"objective": "errors", "verdict": "safe", "words": "…"}]}},
            {"name": "prod", "stable": "r1", "rollout": {"release": "r1", "state": "promoted", "weight": 100},
                "waiting_for_person": "an approval: prod-approvers"}
        ]}]});
        let lines = board_lines(&services);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("shop/dev ")
                && lines[0].contains("canary r2 [████")
                && lines[0].ends_with("errors safe"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("no rollout") && lines[1].ends_with("waiting for an approval: prod-approvers"),
            "{}",
            lines[1]
        );
    }
}

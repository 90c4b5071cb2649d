//! The web pages: the central page (every service, every environment, what waits for a
//! person), a service's releases, and a release's whole story with its chart. Served by the
//! API's server, from the same views the API answers with, under the same tokens.
//!
//! # Guarantees
//! - A page shows what `/v1/…` says, never more: it is rendered from the same read functions,
//!   behind the same authorization (a sign-in session, from the HttpOnly `autopilot_session`
//!   cookie the sign-in sets, or none when reads are open).
//! - Pages work without JavaScript (reading); with it they update themselves from
//!   `/v1/events` and offer the operator actions, which call the API with the user's bearer
//!   token — never with the cookie, so another site cannot act in the user's name.
//! - Everything shown is escaped (maud); nothing on a page comes from outside but the store.

use crate::api::views::{EnvironmentView, ReleaseView, Role, ServiceView};
use crate::api::{self, ApiError, ApiState};
use crate::control::rollout::{PhaseKind, Transition};
use crate::store::api::StoredSample;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use std::collections::BTreeMap;

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");
/// Releases shown per service on the central page.
const RECENT: i64 = 8;
/// Releases per page on a service's page.
const PER_PAGE: i64 = 50;
/// The most build output a release page shows inline (the rest is one click away).
const OUTPUT_INLINE: usize = 64 * 1024;

/// The pages' routes, to merge into the API's router.
pub fn routes() -> axum::Router<ApiState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(central))
        .route("/services/{service}", get(service_page))
        .route("/releases/{release}", get(release_page))
        .route("/sign-in", get(sign_in))
        .route(
            "/ui/page.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        .route(
            "/ui/page.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }),
        )
}

/// A page, or the sign-in page when the reader needs a token.
enum Page {
    Ok(Markup),
    Failed(ApiError),
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        match self {
            Page::Ok(m) => m.into_response(),
            Page::Failed(e) if e.status == StatusCode::UNAUTHORIZED => (
                StatusCode::UNAUTHORIZED,
                layout("Sign in", None, None, sign_in_form(Some(&e.message))),
            )
                .into_response(),
            Page::Failed(e) => (
                e.status,
                layout(
                    "Not here",
                    None,
                    None,
                    html! {
                        h1 { "Not here" }
                        p.error { (e.message) }
                        p { a href="/" { "Back to every service" } }
                    },
                ),
            )
                .into_response(),
        }
    }
}

impl From<ApiError> for Page {
    fn from(e: ApiError) -> Self {
        Page::Failed(e)
    }
}

fn page(r: Result<Markup, ApiError>) -> Page {
    r.map_or_else(Page::Failed, Page::Ok)
}

/// Who reads the page, for its header.
async fn reader(api: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    let caller = api.authorize(headers, Role::Viewer).await?;
    Ok(if caller.token.is_empty() {
        "not signed in (reads are open)".to_owned()
    } else {
        format!("{} ({})", caller.name, caller.role.name())
    })
}

/// The shell every page shares: header, live region, the action dialog.
fn layout(title: &str, who: Option<&str>, events: Option<String>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · autopilot" }
                link rel="stylesheet" href="/ui/page.css";
                script src="/ui/page.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "autopilot" }
                    nav aria-label="Account" {
                        @if let Some(who) = who {
                            span.who { "Reading as " (who) }
                            " "
                            a href="/sign-in" { "Use another token" }
                            " "
                            button #sign-out type="button" { "Sign out" }
                        }
                    }
                }
                main #main {
                    @if let Some(url) = events {
                        p #updated.updated role="status" aria-live="polite" {
                            "Live: this page updates by itself as rollouts move."
                        }
                        div #live data-events=(url) { (body) }
                    } @else {
                        (body)
                    }
                }
                (action_dialog())
            }
        }
    }
}

/// The confirmation every operator action goes through: a reason, the token when the page
/// has none, confirm or cancel.
fn action_dialog() -> Markup {
    html! {
        dialog #act-dialog aria-labelledby="act-title" {
            form #act-form method="dialog" {
                h2 #act-title { "Confirm" }
                p #act-what {}
                label for="act-reason" { "Reason (kept in the audit trail)" }
                textarea #act-reason name="reason" required maxlength="1000" rows="3" {}
                div #act-token-row {
                    label for="act-token" { "Your API token (operator or admin)" }
                    input #act-token type="password" autocomplete="off" spellcheck="false";
                }
                p #act-error.error role="alert" {}
                div.buttons {
                    button #act-confirm type="submit" value="confirm" { "Confirm" }
                    button #act-cancel type="button" { "Cancel" }
                }
            }
        }
        p #act-result role="status" aria-live="polite" {}
    }
}

fn sign_in_form(problem: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(p) = problem {
            p.error role="alert" { (p) }
        }
        p { "Paste an API token (" code { "autopilot token create" } "). The server checks it and opens a reading session for this browser; the token itself stays in this tab, and actions ask before they use it." }
        form #sign-in-form {
            label for="token" { "API token" }
            input #token name="token" type="password" required autocomplete="off" spellcheck="false";
            button type="submit" { "Sign in" }
        }
        p #sign-in-error.error role="alert" {}
    }
}

async fn sign_in() -> Markup {
    layout("Sign in", None, None, sign_in_form(None))
}

/// A time as people read it: `2026-11-30 08:30:12 UTC`, marked up for the script to show
/// "3 min ago" (the exact time stays in the tooltip).
fn when(rfc3339: &str) -> Markup {
    let shown = rfc3339.replacen('T', " ", 1).replace('Z', " UTC");
    html! { time datetime=(rfc3339) data-rel title=(shown) { (shown) } }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn release_link(id: &str) -> Markup {
    html! { a href={ "/releases/" (id) } { code { (id) } } }
}

/// A state as a coloured badge (the word is always there; colour only repeats it).
fn badge(state: impl AsRef<str>) -> Markup {
    let state = state.as_ref();
    let class = match state {
        "canary" | "deploying" | "promoting" => "b-moving",
        "paused" | "waiting" => "b-held",
        "rolled-back" | "rolling-back" | "regressed" | "failed" => "b-bad",
        "promoted" | "safe" | "built" => "b-good",
        _ => "b-quiet",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

fn weight_bar(weight: u8) -> Markup {
    html! {
        span.weight role="img" aria-label={ "canary weight " (weight) "%" } {
            span.bar { span.fill style={ "width:" (weight) "%" } {} }
            span.pct { (weight) "%" }
        }
    }
}

/// The actions that make sense for an environment now, as buttons.
fn actions(service: &str, env: &EnvironmentView) -> Markup {
    let active = env.rollout.as_ref().filter(|r| !r.state.is_finished());
    let mut buttons: Vec<(&str, &str)> = Vec::new();
    if active.is_some() || env.overrides.paused.is_some() {
        if env.overrides.paused.is_some() || active.is_some_and(|r| r.state == PhaseKind::Paused) {
            buttons.push(("resume", "Resume"));
        } else {
            buttons.push(("pause", "Pause"));
        }
    }
    if active.is_some_and(|r| matches!(r.state, PhaseKind::Canary | PhaseKind::Paused)) {
        buttons.push(("promote", "Promote"));
        buttons.push(("rollback", "Roll back"));
    }
    if env
        .waiting_for_person
        .as_deref()
        .is_some_and(|w| w.starts_with("an approval"))
    {
        buttons.push(("approve", "Approve"));
    }
    let release = active.map(|r| r.release.as_str()).unwrap_or("");
    html! {
        @for (action, label) in buttons {
            button.act type="button" data-service=(service) data-environment=(env.name)
                data-action=(action) data-release=(release)
                data-label={ (label) " " (service) " in " (env.name) } { (label) }
            " "
        }
    }
}

fn environments_table(s: &ServiceView) -> Markup {
    html! {
        table.envs {
            caption { "Environments of " (s.name) ", in promotion order" }
            thead {
                tr {
                    th scope="col" { "Environment" }
                    th scope="col" { "Stable" }
                    th scope="col" { "Rollout" }
                    th scope="col" { "Weight" }
                    th scope="col" { "The judge says" }
                    th scope="col" { "Waiting for a person" }
                    th scope="col" { "Act" }
                }
            }
            tbody {
                @for e in &s.environments {
                    tr data-environment=(e.name) {
                        th scope="row" { a href=(e.url) { (e.name) } }
                        td {
                            @if let Some(st) = &e.stable {
                                (release_link(st))
                                @if let Some(since) = &e.stable_since { br; small { "since " (when(since)) } }
                            } @else { span.quiet { "none yet" } }
                        }
                        td {
                            @match e.rollout.as_ref() {
                                Some(r) if !r.state.is_finished() => {
                                    (release_link(&r.release)) " " (badge(r.state))
                                    br;
                                    small { "since " (when(&r.since)) }
                                    @if let Some(d) = &r.detail { br; small.detail { (d) } }
                                }
                                Some(r) if e.stable.as_deref() != Some(r.release.as_str()) => {
                                    span.quiet { "none; the last, " } (release_link(&r.release)) " " (badge(r.state))
                                    br;
                                    small { (when(&r.since)) }
                                    @if let Some(d) = &r.detail { br; small.detail { (d) } }
                                }
                                _ => { span.quiet { "none" } }
                            }
                        }
                        td {
                            @if let Some(r) = e.rollout.as_ref().filter(|r| matches!(r.state, PhaseKind::Canary | PhaseKind::Paused | PhaseKind::Deploying | PhaseKind::Promoting)) {
                                (weight_bar(r.weight))
                            } @else { span.quiet { "—" } }
                        }
                        td {
                            @if let Some(r) = e.rollout.as_ref().filter(|r| !r.state.is_finished()) {
                                @if r.verdicts.is_empty() { span.quiet { "—" } }
                                ul.verdicts {
                                    @for v in &r.verdicts {
                                        li title=(v.words) { (v.objective) " " (badge(&v.verdict)) }
                                    }
                                }
                            } @else { span.quiet { "—" } }
                        }
                        td {
                            @if let Some(w) = &e.waiting_for_person { strong.attention { (w) } }
                            @else { span.quiet { "nothing" } }
                        }
                        td.act-cell { (actions(&s.name, e)) }
                    }
                }
            }
        }
    }
}

fn releases_table(service: &str, items: &[crate::api::views::ReleaseSummary], caption: &str) -> Markup {
    html! {
        table.releases {
            caption { (caption) }
            thead {
                tr {
                    th scope="col" { "Release" }
                    th scope="col" { "Commit" }
                    th scope="col" { "Built" }
                    th scope="col" { "From" }
                    th scope="col" { "Runs in" }
                }
            }
            tbody {
                @if items.is_empty() {
                    tr { td colspan="5" { "No release of " (service) " yet." } }
                }
                @for r in items {
                    tr {
                        td { (release_link(&r.id)) }
                        td { code { (short(&r.commit)) } }
                        td { @if let Some(b) = &r.built_at { (when(b)) } @else { "building" } }
                        td { (r.source) }
                        td { @if r.running.is_empty() { span.quiet { "nowhere now" } } @else { (r.running.join(", ")) } }
                    }
                }
            }
        }
    }
}

/// The central page: every service, where each environment stands, what waits for a person.
async fn central(State(api): State<ApiState>, headers: HeaderMap) -> Page {
    page(async {
        let who = reader(&api, &headers).await?;
        let services = api::services_view(&api).await?;
        let mut recent = BTreeMap::new();
        for s in &services.services {
            recent.insert(
                s.name.clone(),
                api::releases_page(&api, &s.name, RECENT, None).await?,
            );
        }
        let waiting: Vec<(&str, &str, &str)> = services
            .services
            .iter()
            .flat_map(|s| {
                s.environments.iter().filter_map(|e| {
                    Some((s.name.as_str(), e.name.as_str(), e.waiting_for_person.as_deref()?))
                })
            })
            .collect();
        let body = html! {
            h1 { "Releases" }
            @if waiting.is_empty() {
                p.summary { "Nothing waits for a person: rollouts move by themselves." }
            } @else {
                section.waiting aria-labelledby="waiting-h" {
                    h2 #waiting-h { "Waiting for a person" }
                    ul {
                        @for (s, e, w) in &waiting {
                            li { strong { (s) " in " (e) } ": " (w) }
                        }
                    }
                }
            }
            @for s in &services.services {
                section.service aria-labelledby={ "svc-" (s.name) } {
                    h2 #{ "svc-" (s.name) } { a href={ "/services/" (s.name) } { (s.name) } }
                    @if let Some(d) = &s.description { p.description { (d) } }
                    @if !s.building.is_empty() {
                        p.building { "Building now: " @for c in &s.building { code { (short(c)) } " " } }
                    }
                    (environments_table(s))
                    @if let Some(page) = recent.get(&s.name) {
                        (releases_table(&s.name, &page.items, &format!("The newest releases of {}", s.name)))
                        @if page.next_cursor.is_some() {
                            p { a href={ "/services/" (s.name) } { "Every release of " (s.name) } }
                        }
                    }
                }
            }
            @if services.services.is_empty() {
                p { "No service is configured." }
            }
        };
        Ok(layout("Releases", Some(&who), Some("/v1/events".to_owned()), body))
    }
    .await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Before {
    before: Option<i64>,
}

/// One service: its environments and every release, paged.
async fn service_page(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Before>, QueryRejection>,
) -> Page {
    page(
        async {
            let who = reader(&api, &headers).await?;
            let Path(service) = path?;
            let Query(q) = query?;
            let services = api::services_view(&api).await?;
            let s = services
                .services
                .iter()
                .find(|s| s.name == service)
                .ok_or_else(|| ApiError::not_found(format!("no service `{service}`")))?;
            let releases = api::releases_page(&api, &service, PER_PAGE, q.before).await?;
        let builds = api::builds_page(&api, &service, RECENT, None).await?;
            let body = html! {
                p.crumbs { a href="/" { "Releases" } " › " (service) }
                h1 { (service) }
                @if let Some(d) = &s.description { p.description { (d) } }
                (environments_table(s))
                (releases_table(&service, &releases.items, &format!("Releases of {service}, newest first")))
                @if let Some(c) = &releases.next_cursor {
                    p { a href={ "/services/" (service) "?before=" (c) } { "Older releases" } }
                }
                table.builds {
                    caption { "The newest builds of " (service) ", failed ones too" }
                    thead { tr { th scope="col" { "Build" } th scope="col" { "Commit" } th scope="col" { "Status" } th scope="col" { "Started" } th scope="col" { "From" } th scope="col" { "Made" } } }
                    tbody {
                        @for b in &builds.items {
                            tr {
                                td { a href=(b.logs) { "#" (b.number) " output" } }
                                td { code { (short(&b.commit)) } }
                                td { (badge(&b.status)) @if let Some(e) = &b.error { br; small.detail { (e) } } }
                                td { (when(&b.started_at)) }
                                td { (b.source) }
                                td { @if let Some(r) = &b.release { (release_link(r)) } @else { span.quiet { "—" } } }
                            }
                        }
                    }
                }
            };
            Ok(layout(
                &service,
                Some(&who),
                Some(format!("/v1/events?service={service}")),
                body,
            ))
        }
        .await,
    )
}

/// One release's whole story: what it is, where it runs, how each rollout went (timeline and
/// chart), what the judge says, what operators did, its build output and config.
async fn release_page(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Page {
    page(
        async {
            let who = reader(&api, &headers).await?;
            let Path(id) = path?;
            let (r, build) = api::release_view(&api, &id).await?;
            let store = &api.store;
            let transitions: Vec<Transition> = store
                .release_transitions(&r.service, &id)
                .await
                .map_err(store_error)?
                .into_iter()
                .map(|t| t.transition)
                .collect();
            let samples = store
                .release_samples(&r.service, &id)
                .await
                .map_err(store_error)?;
            let service = api::services_view(&api)
                .await?
                .services
                .into_iter()
                .find(|s| s.name == r.service);
            let chart = chart(&r, &samples, &transitions);
            let body = release_body(&r, &build, service.as_ref(), &transitions, chart);
            Ok(layout(
                &format!("{} {}", r.service, short(&id)),
                Some(&who),
                Some(format!("/v1/events?service={}", r.service)),
                body,
            ))
        }
        .await,
    )
}

fn store_error(e: crate::control::ports::PortError) -> ApiError {
    tracing::error!("web: store: {e}");
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: "the store cannot be reached; try again".into(),
        field: None,
    }
}

fn release_body(
    r: &ReleaseView,
    build: &crate::store::StoredBuild,
    service: Option<&ServiceView>,
    transitions: &[Transition],
    chart: Option<String>,
) -> Markup {
    // the environments where this release is the active rollout, with their buttons
    let here: Vec<&EnvironmentView> = service
        .map(|s| {
            s.environments
                .iter()
                .filter(|e| e.rollout.as_ref().is_some_and(|x| x.release == r.id))
                .collect()
        })
        .unwrap_or_default();
    let output = &build.output;
    let (shown, cut) = if output.len() > OUTPUT_INLINE {
        let mut at = output.len() - OUTPUT_INLINE;
        while !output.is_char_boundary(at) {
            at += 1;
        }
        (&output[at..], true)
    } else {
        (output.as_str(), false)
    };
    let latest = shown_verdicts(r, &here);
    html! {
        p.crumbs { a href="/" { "Releases" } " › " a href={ "/services/" (r.service) } { (r.service) } " › " (short(&r.id)) }
        h1 { "Release " code { (r.id) } }
        dl.facts {
            dt { "Service" } dd { (r.service) }
            dt { "Commit" } dd { code { (r.commit) } }
            dt { "Digest" } dd { code { (r.digest) } }
            dt { "Artifact" } dd { code { (r.artifact) } @if let Some(n) = r.size { " (" (n) " bytes)" } }
            dt { "From" } dd { (r.source) }
            dt { "Build" } dd { "#" (r.build.number) " " (badge(&r.build.status)) " started " (when(&r.build.started_at))
                @if let Some(f) = &r.build.finished_at { ", finished " (when(f)) } }
        }
        section aria-labelledby="where-h" {
            h2 #where-h { "Where it runs" }
            @if r.urls.is_empty() && here.is_empty() {
                p.quiet { "It serves no environment now." }
            }
            @if !r.urls.is_empty() {
                ul.urls {
                    @for u in &r.urls {
                        li { (u.environment) " (" (u.kind) "): " a href=(u.url) { (u.url) } }
                    }
                }
            }
            @for e in &here {
                @if let Some(ro) = &e.rollout {
                    div.rollout-now data-environment=(e.name) {
                        p {
                            strong { (e.name) } ": " (badge(ro.state)) " "
                            @if matches!(ro.state, PhaseKind::Canary | PhaseKind::Paused | PhaseKind::Deploying | PhaseKind::Promoting) { (weight_bar(ro.weight)) }
                            @if let Some(d) = &ro.detail { " — " (d) }
                        }
                        @if let Some(w) = &e.waiting_for_person { p.attention { "Waiting for " (w) } }
                        p { (actions(&r.service, e)) }
                    }
                }
            }
        }
        section aria-labelledby="judge-h" {
            h2 #judge-h { "What the judge says" }
            @if latest.is_empty() {
                p.quiet { "Nothing yet: no canary of this release has been judged." }
            } @else {
                table.verdicts-table {
                    caption { "The judge's word per objective: now, where this release is being judged; else at its last decision" }
                    thead { tr { th scope="col" { "Environment" } th scope="col" { "Objective" } th scope="col" { "Verdict" } th scope="col" { "Canary bad / total" } th scope="col" { "Stable bad / total" } th scope="col" { "In words" } } }
                    tbody {
                        @for v in &latest {
                            tr {
                                td { (v.environment) } th scope="row" { (v.objective) } td { (badge(&v.verdict)) }
                                td { (v.canary_bad) " / " (v.canary_total) } td { (v.stable_bad) " / " (v.stable_total) }
                                td.words { (v.explanation) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="chart-h" {
            h2 #chart-h { "Canary progression" }
            @if let Some(svg) = chart {
                figure.chart {
                    (PreEscaped(svg))
                    figcaption { "Left: the canary's share of traffic. Right: each objective's bad share since the rollout started, canary (thick) against stable (thin). Green lines: promoted; red: rolled back." }
                }
            } @else {
                p.quiet { "No canary of this release has been judged yet." }
            }
        }
        section aria-labelledby="timeline-h" {
            h2 #timeline-h { "Deployments" }
            @if r.deployments.is_empty() { p.quiet { "Not deployed anywhere yet." } }
            @for (d, ts) in r.deployments.iter().zip(attempts(transitions)) {
                h3 { (d.environment) ", attempt " (d.attempt) " " (badge(d.state)) }
                ol.timeline {
                    @for t in ts {
                        li {
                            (when(&t.at.to_string())) " "
                            @if let Some(f) = &t.from { (badge(f)) " → " }
                            (badge(t.to)) " at " (t.weight.0) "%: "
                            (crate::report::cause_line(t))
                            @let lines = objective_words(t);
                            @if !lines.is_empty() {
                                ul.why { @for (o, w) in lines { li { strong { (o) } ": " (w) } } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="actions-h" {
            h2 #actions-h { "Operator actions" }
            @if r.actions.is_empty() { p.quiet { "No one has acted on this release." } }
            @else {
                table {
                    caption { "Every operator action on this release, newest first" }
                    thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Where" } th scope="col" { "Why" } } }
                    tbody {
                        @for a in &r.actions {
                            tr { td { (when(&a.at)) } td { (a.who) } td { (a.action) } td { (a.environment.as_deref().unwrap_or("")) } td { (a.reason) } }
                        }
                    }
                }
            }
        }
        section aria-labelledby="build-h" {
            h2 #build-h { "Build output" }
            details #build-output open {
                summary { (r.build.output_bytes) " bytes" @if cut { " (the last " (OUTPUT_INLINE / 1024) " KiB; " a href=(r.build.logs) { "all of it" } ")" } }
                pre.output { (shown) }
            }
        }
        section aria-labelledby="config-h" {
            h2 #config-h { "Configuration as built" }
            @if let Some(c) = &r.config {
                details #config { summary { "The objectives file of " (r.service) " when this release was built" } pre.config { (c) } }
            } @else { p.quiet { "Not recorded." } }
        }
    }
}

/// Per environment, the judge's latest word while this release is its active rollout, else
/// its word at the last transition it was recorded with (what the decision rested on).
fn shown_verdicts<'a>(
    r: &'a ReleaseView,
    here: &[&EnvironmentView],
) -> Vec<&'a crate::api::views::VerdictView> {
    let active = |env: &str| {
        here.iter()
            .any(|e| e.name == env && e.rollout.as_ref().is_some_and(|x| !x.state.is_finished()))
    };
    let mut envs: Vec<&str> = Vec::new();
    for v in &r.verdicts {
        if !envs.contains(&v.environment.as_str()) {
            envs.push(&v.environment);
        }
    }
    let mut out = Vec::new();
    for env in envs {
        let of_env = r.verdicts.iter().filter(|v| v.environment == env);
        if active(env) {
            out.extend(of_env.filter(|v| v.at.is_none()));
        } else {
            let last = of_env.clone().filter_map(|v| v.at.as_deref()).max();
            out.extend(of_env.filter(|v| last.is_some() && v.at.as_deref() == last));
        }
    }
    out
}

/// Each objective's words under a transition that rests on them.
fn objective_words(t: &Transition) -> Vec<(String, String)> {
    use crate::control::rollout::Cause;
    match &t.cause {
        Cause::Regressed { objectives, .. }
        | Cause::SafeOnCopies { objectives, .. }
        | Cause::SafeInSegment { objectives, .. } => objectives
            .iter()
            .map(|o| (o.objective.clone(), o.words.clone()))
            .collect(),
        Cause::Evidence {
            objectives, capped, ..
        } if t.to == PhaseKind::Promoting || capped.is_some() => objectives
            .iter()
            .map(|o| (o.objective.clone(), o.words.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Transitions grouped by attempt, in the API's order of deployments: an attempt starts with
/// a new rollout (no phase left) or the first transition seen in its environment.
fn attempts(transitions: &[Transition]) -> Vec<Vec<&Transition>> {
    let mut out: Vec<(&str, Vec<&Transition>)> = Vec::new();
    for t in transitions {
        match out.iter_mut().rev().find(|(e, _)| *e == t.environment) {
            Some((_, ts)) if t.from.is_some() => ts.push(t),
            _ => out.push((&t.environment, vec![t])),
        }
    }
    out.into_iter().map(|(_, ts)| ts).collect()
}

/// The release's chart (the simulator's, from the looks the judge recorded), or nothing
/// before its first canary look.
fn chart(r: &ReleaseView, samples: &[StoredSample], transitions: &[Transition]) -> Option<String> {
    let first = samples.first()?.at;
    let last = samples.last()?.at;
    let mut environments: Vec<String> = Vec::new();
    let mut objectives: Vec<String> = Vec::new();
    let mut looks: Vec<crate::report::Sample> = Vec::new();
    let share = |c: &crate::control::judge::Counts| (c.total > 0).then(|| c.bad as f64 / c.total as f64);
    for s in samples {
        if !environments.contains(&s.environment) {
            environments.push(s.environment.clone());
        }
        if !objectives.contains(&s.objective) {
            objectives.push(s.objective.clone());
        }
        let rate = (s.objective.clone(), share(&s.canary), share(&s.stable));
        match looks.last_mut() {
            Some(l) if l.at == s.at && l.environment == s.environment => l.rates.push(rate),
            _ => looks.push(crate::report::Sample {
                at: s.at,
                environment: s.environment.clone(),
                release: Some(r.id.clone()),
                weight: s.weight,
                rates: vec![rate],
            }),
        }
    }
    let svg = crate::report::chart(
        &format!("{} — canary weight and bad shares", short(&r.id)),
        first,
        last,
        &environments,
        &objectives,
        &looks,
        transitions,
    );
    // scales with the page; read out as one image with its caption
    Some(svg.replacen(
        "<svg ",
        "<svg role=\"img\" aria-label=\"Chart of the canary's weight and each objective's bad share over time\" ",
        1,
    ))
}

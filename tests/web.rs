//! The web pages in a real browser: headless Chromium (Debian's `chromium`, driven over
//! WebDriver by Debian's `chromedriver`) against a live `autopilot up` on the demo's layout —
//! real builds, processes, proxy and SQLite. Sign in, read the central page, watch it update
//! by itself as a release arrives, act from a button (and be refused with a viewer's token),
//! read a release page with its chart. Screenshots go to `target/screenshots/`.
//!
//! Every wait is a bounded poll of the page or the store.

use autopilot::control::rollout::Phase;
use autopilot::live::demo;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::up::{Child, Running, phase, running, wait_for};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The window's width: a laptop's screen.
const WIDTH: u32 = 1400;

/// chromedriver on a free loopback port, and a session of headless Chromium through it.
struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

async fn browser() -> Browser {
    let port = common::free_port().port();
    let driver = Child(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) runs"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("chromedriver", Duration::from_secs(20), || async {
        http.get(format!("{url}/status"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        },
    });
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&url)
        .await
        .expect("a Chromium session");
    Browser {
        client,
        _driver: driver,
        _profile: profile,
    }
}

/// How often a step is tried again when the live region was swapped under it (the page
/// replaces it on every change: an element found a moment ago may be stale).
const STALE_TRIES: usize = 10;

/// The text of the first element matching `css`, if there is one.
async fn text(c: &Client, css: &str) -> Option<String> {
    for _ in 0..STALE_TRIES {
        let e = c.find(Locator::Css(css)).await.ok()?;
        if let Ok(t) = e.text().await {
            return Some(t);
        }
    }
    None
}

/// Clicks the first element matching `css` (found again if it went stale).
async fn click(c: &Client, css: &str) {
    let mut last = String::new();
    for _ in 0..STALE_TRIES {
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(err) => last = err.to_string(),
            },
            Err(err) => last = err.to_string(),
        }
    }
    panic!("cannot click {css}: {last}");
}

/// Waits until the element matching `css` holds `needle`.
async fn wait_text(c: &Client, css: &str, needle: &str, limit: Duration) -> String {
    wait_for(&format!("`{needle}` in {css}"), limit, || async {
        text(c, css).await.filter(|t| t.contains(needle))
    })
    .await
}

/// A screenshot of the whole page (the window grown to its height for the shot).
async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    // the window's height is the page's plus what the browser keeps for itself
    let height = c
        .execute(
            "return document.documentElement.scrollHeight + (window.outerHeight - window.innerHeight)",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(1000)
        .clamp(600, 5000);
    c.set_window_size(WIDTH, height as u32).await.unwrap();
    let path = dir.join(name);
    std::fs::write(&path, c.screenshot().await.unwrap()).unwrap();
    c.set_window_size(WIDTH, 1000).await.unwrap();
    path
}

/// Opens the action dialog from the button `action` of `env`'s row, gives `reason` (and
/// `token` when the dialog asks for one) and confirms.
async fn act(c: &Client, env: &str, action: &str, reason: &str, token: Option<&str>) {
    click(
        c,
        &format!("[data-environment='{env}'] button.act[data-action='{action}']"),
    )
    .await;
    let dialog_open = c
        .execute("return document.getElementById('act-dialog').open", vec![])
        .await
        .unwrap();
    assert_eq!(dialog_open, json!(true), "the action asks for confirmation first");
    c.find(Locator::Id("act-reason"))
        .await
        .unwrap()
        .send_keys(reason)
        .await
        .unwrap();
    if let Some(t) = token {
        c.find(Locator::Id("act-token"))
            .await
            .unwrap()
            .send_keys(t)
            .await
            .unwrap();
    }
    c.find(Locator::Id("act-confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_releases_update_by_themselves_and_act_through_the_api() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let Running {
        config,
        creds,
        repo,
        base,
        token,
        store,
        v1,
        up: _up,
        ..
    } = running(dir.path(), "prod").await;
    let viewer = store.create_token("ada", "viewer", &[]).await.unwrap();
    // the demo's users: requests to every environment through the proxy, over HTTPS
    let (stop_traffic, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(demo::traffic(config.clone(), creds, Default::default(), stop_rx));

    let b = browser().await;
    let c = &b.client;

    // reads are closed: the central page asks for a token, and the sign-in form takes it
    c.goto(&format!("{base}/")).await.unwrap();
    wait_text(c, "h1", "Sign in", Duration::from_secs(10)).await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    c.find(Locator::Css("#sign-in-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "h1", "Releases", Duration::from_secs(10)).await;
    // regression: the token went into a cookie any script could read; the session cookie is
    // HttpOnly, and holds no token
    let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
    let cookies = cookies.as_str().unwrap_or_default();
    assert!(
        !cookies.contains(&token) && !cookies.contains("autopilot_"),
        "{cookies}"
    );

    // the central page: the service, each environment with its stable release, nothing waiting
    let v1_release = phase(&store, "prod", &v1).await.unwrap().0;
    let page = text(c, "main").await.unwrap();
    assert!(page.contains("Reading as admin") || text(c, "header").await.unwrap().contains("admin"));
    for env in ["dev", "staging", "prod"] {
        let row = text(c, &format!("tr[data-environment='{env}']")).await.unwrap();
        assert!(row.contains(&v1_release), "{env}: {row}");
    }
    assert!(page.contains("Nothing waits for a person"), "{page}");
    assert!(page.contains("The newest releases of shop"), "{page}");

    // `autopilot watch` follows the same stream in a terminal (piped here: plain lines)
    let watch_out = dir.path().join("watch.out");
    let watch = Child(
        Command::new(common::up::EXE)
            .args(["watch", "shop", "--url", &base, "--token", &token])
            .stdout(std::fs::File::create(&watch_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("watch's first board", Duration::from_secs(20), || async {
        std::fs::read_to_string(&watch_out)
            .ok()
            .filter(|t| t.contains("shop/prod"))
    })
    .await;

    // push v2 and hold its canary in dev (as an operator would, from the API): the open page
    // shows it arrive and stop, without a reload
    c.execute("window.notReloaded = 42", vec![]).await.unwrap();
    wait_for(
        "the page to follow its event stream",
        Duration::from_secs(10),
        || async {
            (c.execute("return document.body.dataset.live", vec![])
                .await
                .ok()?
                == json!("on"))
            .then_some(())
        },
    )
    .await;
    let v2 = demo::commit(&repo, "v2", 0.0, "v2").unwrap();
    let v2_release = wait_for("v2 a canary in dev", Duration::from_secs(90), || async {
        phase(&store, "dev", &v2)
            .await
            .filter(|(_, p)| matches!(p, Phase::Canary { .. }))
            .map(|(r, _)| r)
    })
    .await;
    let client = reqwest::Client::new();
    let held = client
        .post(format!("{base}/v1/services/shop/environments/dev/actions"))
        .bearer_auth(&token)
        .json(&json!({"action": "pause", "reason": "hold v2 for the browser"}))
        .send()
        .await
        .unwrap();
    assert!(held.status().is_success(), "{}", held.text().await.unwrap());
    // the held canary keeps serving its share: let the judge see some of it, for the chart
    wait_for(
        "the judge's looks at the held canary",
        Duration::from_secs(60),
        || async {
            let samples = store.release_samples("shop", &v2_release).await.ok()?;
            samples.iter().any(|s| s.canary.total >= 20).then_some(())
        },
    )
    .await;
    let row = wait_text(
        c,
        "tr[data-environment='dev']",
        &v2_release,
        Duration::from_secs(20),
    )
    .await;
    let row = if row.contains("paused") {
        row
    } else {
        wait_text(c, "tr[data-environment='dev']", "paused", Duration::from_secs(20)).await
    };
    assert!(row.contains("Resume") && row.contains("Roll back"), "{row}");
    assert_eq!(
        c.execute("return window.notReloaded", vec![]).await.unwrap(),
        json!(42),
        "the page updated in place, not by a reload"
    );
    wait_text(c, "section.waiting", "a paused rollout", Duration::from_secs(10)).await;
    screenshot(c, "central.png").await;

    // a viewer's token is refused, in the dialog, and nothing changes
    c.execute("sessionStorage.removeItem('autopilot-token')", vec![])
        .await
        .unwrap();
    act(c, "dev", "rollback", "not mine to roll back", Some(&viewer)).await;
    wait_text(c, "#act-error", "403", Duration::from_secs(10)).await;
    let error = text(c, "#act-error").await.unwrap();
    assert!(error.contains("viewer"), "{error}");
    c.find(Locator::Id("act-cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(matches!(
        phase(&store, "dev", &v2).await,
        Some((_, Phase::Paused { .. }))
    ));

    // the release page: facts, where it runs, the judge, the build output, the config
    c.goto(&format!("{base}/releases/{v2_release}")).await.unwrap();
    wait_text(c, "h1", &v2_release, Duration::from_secs(10)).await;
    let page = text(c, "main").await.unwrap();
    for needle in [
        v2.as_str(),
        "sha256:",
        "Where it runs",
        "What the judge says",
        "Deployments",
        "dev, attempt 1",
        "Build output",
        "Configuration as built",
        "hold v2 for the browser",
    ] {
        assert!(
            page.contains(needle),
            "the release page lacks `{needle}`:\n{page}"
        );
    }
    let output = text(c, "pre.output").await.unwrap();
    assert!(!output.trim().is_empty(), "the build output is shown");
    // the chart comes with the judge's looks at the held canary
    wait_for("the chart", Duration::from_secs(30), || async {
        c.find(Locator::Css("figure.chart svg")).await.ok()
    })
    .await;

    // roll back from the page's button (as an operator, asked for the token again) and see it
    act(
        c,
        "dev",
        "rollback",
        "the browser test rolls v2 back",
        Some(&token),
    )
    .await;
    wait_text(c, "#act-result", "done", Duration::from_secs(10)).await;
    wait_for("v2 rolled back in dev", Duration::from_secs(60), || async {
        phase(&store, "dev", &v2)
            .await
            .filter(|(_, p)| matches!(p, Phase::RolledBack { .. }))
    })
    .await;
    wait_text(
        c,
        "main",
        "the browser test rolls v2 back",
        Duration::from_secs(20),
    )
    .await;
    wait_text(
        c,
        "div.rollout-now, section",
        "rolled-back",
        Duration::from_secs(20),
    )
    .await;
    let timeline = wait_text(c, "ol.timeline", "rolled-back", Duration::from_secs(20)).await;
    assert!(
        timeline.contains("carries out the operator's rollback"),
        "{timeline}"
    );
    let audit: serde_json::Value = client
        .get(format!("{base}/v1/audit?service=shop"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"][0]["action"], "rollback", "{audit}");
    assert_eq!(audit["items"][0]["who"], "admin");
    screenshot(c, "release-rolled-back.png").await;

    // the terminal saw the same: a board line per environment, the held canary's bar, and
    // each transition in the log
    let seen = wait_for("watch to log the rollback", Duration::from_secs(20), || async {
        std::fs::read_to_string(&watch_out)
            .ok()
            .filter(|t| t.contains("rolling-back → rolled-back"))
    })
    .await;
    drop(watch);
    for needle in [
        format!("shop/dev {v2_release} canary → paused at 10%: pause by admin (hold v2 for the browser)"),
        format!("shop/dev {v2_release} paused → rolling-back at 0%"),
        format!("paused {v2_release} [██"),
        "waiting for a paused rollout".to_owned(),
        "shop/staging".to_owned(),
    ] {
        assert!(seen.contains(&needle), "watch lacks `{needle}`:\n{seen}");
    }

    // lift the pause from the page (its token is remembered now), and a healthy v3 goes
    // through dev's canary to promotion, on a page left open
    act(c, "dev", "resume", "v2 is out; let the next one through", None).await;
    wait_text(c, "#act-result", "done", Duration::from_secs(10)).await;
    let v3 = demo::commit(&repo, "v3", 0.0, "v3").unwrap();
    let v3_release = wait_for("v3 promoted in dev", Duration::from_secs(120), || async {
        phase(&store, "dev", &v3)
            .await
            .filter(|(_, p)| matches!(p, Phase::Promoted { .. }))
            .map(|(r, _)| r)
    })
    .await;
    c.goto(&format!("{base}/releases/{v3_release}")).await.unwrap();
    let timeline = wait_text(
        c,
        "ol.timeline",
        "every objective is safe: promote",
        Duration::from_secs(20),
    )
    .await;
    assert!(timeline.contains("promoted"), "{timeline}");
    let judged = text(c, "table.verdicts-table").await.unwrap();
    assert!(judged.contains("safe"), "{judged}");
    c.find(Locator::Css("figure.chart svg")).await.unwrap();
    screenshot(c, "release.png").await;
    c.goto(&format!("{base}/services/shop")).await.unwrap();
    wait_text(c, "table.releases", &v3_release, Duration::from_secs(10)).await;
    screenshot(c, "service.png").await;

    // an unknown release is a page that says so
    c.goto(&format!("{base}/releases/r-nope")).await.unwrap();
    wait_text(c, "main", "no release `r-nope`", Duration::from_secs(10)).await;

    b.client.close().await.unwrap();
    stop_traffic.send(true).unwrap();
    traffic.await.unwrap().unwrap();
}

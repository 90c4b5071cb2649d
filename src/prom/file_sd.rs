//! Monitoring follows releases: Prometheus' file-based service discovery (`file_sd_configs`)
//! listing every running release's instances, labelled `service`, `environment` and
//! `release`. A Prometheus configured once with
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: autopilot-releases
//!     file_sd_configs: [{ files: [/var/lib/autopilot/prometheus-targets.json] }]
//! ```
//!
//! scrapes each new release from its first tick, with no edits. The file is replaced
//! atomically (written beside it, then renamed), as Prometheus' documentation asks, and only
//! when what it lists changed.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

/// One target group of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The file's JSON for these releases: (service, environment, release, instances). Releases
/// with no instance are left out.
pub fn render(running: &[(String, String, String, Vec<SocketAddr>)]) -> String {
    let groups: Vec<TargetGroup> = running
        .iter()
        .filter(|(_, _, _, addrs)| !addrs.is_empty())
        .map(|(service, environment, release, addrs)| TargetGroup {
            targets: addrs.iter().map(ToString::to_string).collect(),
            labels: BTreeMap::from([
                ("service".to_owned(), service.clone()),
                ("environment".to_owned(), environment.clone()),
                ("release".to_owned(), release.clone()),
            ]),
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&groups).expect("target groups serialize");
    out.push('\n');
    out
}

/// Replaces the file with `content` unless it holds that already; returns whether it wrote.
pub fn write(path: &Path, content: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_become_labelled_target_groups_written_only_on_change() {
        let addr: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let running = vec![
            ("shop".into(), "dev".into(), "r1".into(), vec![addr]),
            ("shop".into(), "dev".into(), "r2".into(), vec![]),
        ];
        let text = render(&running);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v.as_array().unwrap().len(),
            1,
            "a release with no instance is left out"
        );
        assert_eq!(v[0]["targets"][0], "127.0.0.1:4001");
        assert_eq!(v[0]["labels"]["release"], "r1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sd/targets.json");
        assert!(write(&path, &text).unwrap());
        assert!(!write(&path, &text).unwrap(), "unchanged: not rewritten");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}

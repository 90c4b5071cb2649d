//! `autopilot bench registry`: a large artifact pushed to and pulled from a real registry (a
//! throwaway `docker-registry` on loopback, filesystem storage), by autopilot (oci-client) and,
//! as the reference in the same run, by a standard tool doing the same copy (`skopeo copy`,
//! from and to the same OCI layout). Each round, each side gets a fresh registry, so nothing is
//! already there (nor remembered by skopeo's blob cache). Writes `registry.md` and
//! `registry.csv`.

use super::oci::Layout;
use super::registry::{Credentials, Registry, TempRegistry};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Row {
    who: &'static str,
    what: &'static str,
    seconds: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn skopeo(args: &[&str]) -> Result<f64, String> {
    let started = Instant::now();
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .map_err(|e| format!("skopeo (apt-get install skopeo): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "skopeo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs the benchmark with an artifact of `megabytes` MB, `rounds` times each.
pub async fn run(out: &Path, megabytes: usize, rounds: usize) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    // incompressible, seeded
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(12);
    let mut bytes = vec![0u8; megabytes << 20];
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    std::fs::write(src.join("payload"), &bytes).map_err(|e| e.to_string())?;
    drop(bytes);
    let layout_dir = dir.path().join("layout");
    let layout = Layout::open(&layout_dir).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let digest = layout
        .pack(&src, &["payload".into()], "bench:v1")
        .map_err(|e| e.to_string())?;
    let pack = started.elapsed().as_secs_f64();
    let mut rows = vec![
        Row {
            who: "autopilot (oci-client)",
            what: "push",
            seconds: Vec::new(),
        },
        Row {
            who: "autopilot (oci-client)",
            what: "pull by digest, verified",
            seconds: Vec::new(),
        },
        Row {
            who: "reference: skopeo copy",
            what: "push",
            seconds: Vec::new(),
        },
        Row {
            who: "reference: skopeo copy",
            what: "pull",
            seconds: Vec::new(),
        },
    ];
    for round in 0..rounds {
        let (mine, other) = (TempRegistry::start()?, TempRegistry::start()?);
        let ours = Registry::new(&mine.host(), "bench", Credentials::Anonymous)?;
        let started = Instant::now();
        let reference = ours.push(&layout, "bench", &digest, "v1").await?;
        rows[0].seconds.push(started.elapsed().as_secs_f64());
        let into = Layout::open(&dir.path().join(format!("pulled{round}"))).map_err(|e| e.to_string())?;
        let started = Instant::now();
        ours.pull(&reference, &into, "bench:v1")
            .await
            .map_err(|e| e.to_string())?;
        rows[1].seconds.push(started.elapsed().as_secs_f64());
        let theirs = format!("docker://{}/bench/bench:v1", other.host());
        let from = format!("oci:{}:bench:v1", layout_dir.display());
        rows[2].seconds.push(skopeo(&[
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &from,
            &theirs,
        ])?);
        let to = format!(
            "oci:{}:bench:v1",
            dir.path().join(format!("skopeo{round}")).display()
        );
        rows[3]
            .seconds
            .push(skopeo(&["copy", "-q", "--src-tls-verify=false", &theirs, &to])?);
    }
    let mb = megabytes as f64;
    let mut md = format!(
        "# Registry throughput\n\nAn artifact of {megabytes} MB (one incompressible layer) against \
         throwaway docker-registries on loopback (filesystem storage), {rounds} rounds, each side to a \
         fresh registry; medians. Packing it into the OCI layout took {pack:.2} s.\n\n\
         | who | what | median s | MB/s |\n|---|---|---:|---:|\n"
    );
    let mut csv = String::from("who,what,round,seconds\n");
    for r in &rows {
        let m = median(&r.seconds);
        md.push_str(&format!("| {} | {} | {m:.2} | {:.0} |\n", r.who, r.what, mb / m));
        for (i, s) in r.seconds.iter().enumerate() {
            csv.push_str(&format!("{},{},{i},{s:.4}\n", r.who, r.what));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("registry.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("registry.csv"), &csv).map_err(|e| e.to_string())?;
    Ok(md)
}

//! Container images as a real image builder writes them — an OCI layout with an image config,
//! gzip-compressed layers (whiteouts included) and, optionally, a multi-platform index — and
//! pushed to a real registry with `skopeo`, as a CI system would.

use sha2::Digest;
use std::io::Write;
use std::path::Path;
use std::process::Command;

pub fn sha256(bytes: &[u8]) -> String {
    let d: [u8; 32] = sha2::Sha256::digest(bytes).into();
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn put(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    (digest, bytes.len())
}

/// A gzip tar of `files` (path, content; mode 0755 for paths ending in `.sh`).
fn layer(files: &[(&str, &str)]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, content.as_bytes()).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let diff_id = sha256(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Writes an image of `layers` (each a list of files, applied in order) into the OCI layout
/// `layout`, tagged `latest`; with `index`, as a two-platform index (this machine's and
/// `linux/s390x`). Returns the digest of what the tag names (the index's, or the manifest's).
pub fn write(layout: &Path, layers: &[&[(&str, &str)]], index: bool) -> String {
    std::fs::create_dir_all(layout).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let manifest_of = |arch: &str| {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for files in layers {
            let (gz, diff_id) = layer(files);
            let (digest, size) = put(layout, &gz);
            descriptors.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size
            }));
            diff_ids.push(diff_id);
        }
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/serve.sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let (config_digest, config_size) = put(layout, config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": descriptors
        });
        put(layout, manifest.to_string().as_bytes())
    };
    let (top, top_size, top_type) = if index {
        let (here, here_size) = manifest_of(arch);
        let (other, other_size) = manifest_of("s390x");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other, "size": other_size,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": here, "size": here_size,
                 "platform": {"os": "linux", "architecture": arch}}
            ]
        });
        let (d, s) = put(layout, index.to_string().as_bytes());
        (d, s, "application/vnd.oci.image.index.v1+json")
    } else {
        let (d, s) = manifest_of(arch);
        (d, s, "application/vnd.oci.image.manifest.v1+json")
    };
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": top_type, "digest": top, "size": top_size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    });
    std::fs::write(layout.join("index.json"), outer.to_string()).unwrap();
    top
}

/// Pushes the layout's `latest` to `target` (`host/repo:tag`, plain HTTP) with skopeo, every
/// platform of an index; the digest skopeo reports.
pub fn push(layout: &Path, target: &str) -> String {
    let digest_file = layout.with_extension("pushed");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            "--digestfile",
        ])
        .arg(&digest_file)
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{target}"))
        .output()
        .expect("skopeo runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(digest_file).unwrap().trim().to_owned()
}

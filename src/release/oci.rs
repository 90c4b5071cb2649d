//! An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/…`): where the
//! embedded builder keeps every release's artifact, named by its manifest digest.
//!
//! Packing is reproducible: the same files give the same digest (entries sorted, owners, times
//! and permissions normalised; no timestamps in the manifest). Nothing here runs a build.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The manifest's artifact type (OCI 1.1 artifacts).
pub const ARTIFACT_TYPE: &str = "application/vnd.autopilot.release.v1";
/// The one layer: a tar of the artifact's files.
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The empty config of an artifact with no config of its own.
const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// An OCI image manifest (an artifact's manifest is one, with an `artifactType`).
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation naming a manifest in `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why packing or unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("artifact file `{0}` does not exist after the build")]
    Missing(String),
    #[error("artifact path `{0}` leaves the build folder")]
    Escapes(String),
    /// A symbolic link among the artifact's files that resolves outside the build folder: packing
    /// its target would put a file of the build host into the release.
    #[error("artifact file `{link}` is a symbolic link to `{target}`, outside the build folder: refused")]
    LinkEscapes { link: String, target: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A blob descriptor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    /// Ours always say what they are; an image's manifest may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: String,
    manifests: Vec<Descriptor>,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

fn sha256(bytes: &[u8]) -> String {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Layout {
    /// Opens (creating if needed) a layout at `root`.
    pub fn open(root: &Path) -> Result<Layout, OciError> {
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&marker))?;
        }
        let layout = Layout {
            root: root.to_owned(),
        };
        let index = root.join("index.json");
        if !index.exists() {
            layout.write_index(&Index {
                schema_version: 2,
                media_type: INDEX_TYPE.into(),
                manifests: Vec::new(),
            })?;
        }
        Ok(layout)
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| OciError::Invalid(format!("`{digest}` is not a sha256 digest")))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<(String, u64), OciError> {
        let digest = sha256(bytes);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok((digest, bytes.len() as u64))
    }

    /// Reads a blob and checks its digest.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>, OciError> {
        let path = self.blob_path(digest)?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if sha256(&bytes) != digest {
            return Err(OciError::Invalid(format!("blob {digest} is corrupt")));
        }
        Ok(bytes)
    }

    fn read_index(&self) -> Result<Index, OciError> {
        let path = self.root.join("index.json");
        let text = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&text).map_err(|e| OciError::Invalid(format!("{}: {e}", path.display())))
    }

    fn write_index(&self, index: &Index) -> Result<(), OciError> {
        let path = self.root.join("index.json");
        let tmp = self.root.join(format!("index.json.tmp{}", std::process::id()));
        let text = serde_json::to_vec_pretty(index).expect("an index serialises");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Packs `files` (paths relative to `dir`; folders are taken whole) into a manifest,
    /// names it `name` in the index, and returns the manifest's digest.
    pub fn pack(&self, dir: &Path, files: &[String], name: &str) -> Result<String, OciError> {
        let layer = tar_of(dir, files)?;
        let (layer_digest, layer_size) = self.put_blob(&layer)?;
        let (config_digest, config_size) = self.put_blob(b"{}")?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_TYPE.into(),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: EMPTY_CONFIG_TYPE.into(),
                digest: config_digest,
                size: config_size,
                artifact_type: None,
                annotations: Default::default(),
            },
            layers: vec![Descriptor {
                media_type: LAYER_TYPE.into(),
                digest: layer_digest,
                size: layer_size,
                artifact_type: None,
                annotations: Default::default(),
            }],
        };
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let (digest, size) = self.put_blob(&bytes)?;
        self.name(&digest, size, name)?;
        Ok(digest)
    }

    /// The manifest `digest` (its bytes) and the blobs it names (config first, then layers).
    pub fn parts(&self, digest: &str) -> Result<(Vec<u8>, Vec<Descriptor>), OciError> {
        let bytes = self.blob(digest)?;
        let blobs = blobs_of(&bytes)?;
        Ok((bytes, blobs))
    }

    /// Adds an artifact fetched from elsewhere: `blobs` in the order [`blobs_of`] names them,
    /// each checked against its digest, then the manifest, named `name`. Returns its digest.
    pub fn add(&self, manifest: &[u8], blobs: &[Vec<u8>], name: &str) -> Result<String, OciError> {
        let named = blobs_of(manifest)?;
        if named.len() != blobs.len() {
            return Err(OciError::Invalid(format!(
                "the manifest names {} blobs; {} were given",
                named.len(),
                blobs.len()
            )));
        }
        for (d, bytes) in named.iter().zip(blobs) {
            let (digest, _) = self.put_blob(bytes)?;
            if digest != d.digest {
                return Err(OciError::Invalid(format!(
                    "blob {} has digest {digest}",
                    d.digest
                )));
            }
        }
        let (digest, size) = self.put_blob(manifest)?;
        self.name(&digest, size, name)?;
        Ok(digest)
    }

    /// Names the manifest `digest` in the index (once).
    fn name(&self, digest: &str, size: u64, name: &str) -> Result<(), OciError> {
        let mut index = self.read_index()?;
        if !index
            .manifests
            .iter()
            .any(|m| m.digest == digest && m.annotations.get(REF_NAME).map(String::as_str) == Some(name))
        {
            index.manifests.push(Descriptor {
                media_type: MANIFEST_TYPE.into(),
                digest: digest.to_owned(),
                size,
                artifact_type: Some(ARTIFACT_TYPE.into()),
                annotations: [(REF_NAME.to_owned(), name.to_owned())].into(),
            });
            self.write_index(&index)?;
        }
        Ok(())
    }

    /// The size in bytes of the artifact `digest`: its manifest and every blob it names (for an
    /// index, the index and this platform's image).
    pub fn size(&self, digest: &str) -> Result<u64, OciError> {
        let bytes = self.blob(digest)?;
        if let Some(chosen) = platform_manifest(&bytes)? {
            return Ok(bytes.len() as u64 + self.size(&chosen)?);
        }
        Ok(bytes.len() as u64 + blobs_of(&bytes)?.iter().map(|b| b.size).sum::<u64>())
    }

    /// Keeps an image index pulled with its platform's manifest (added before), named `name`.
    pub fn add_index(&self, index: &[u8], name: &str) -> Result<String, OciError> {
        if platform_manifest(index)?.is_none() {
            return Err(OciError::Invalid("not an image index".into()));
        }
        let (digest, size) = self.put_blob(index)?;
        self.name(&digest, size, name)?;
        Ok(digest)
    }

    /// Unpacks the artifact or image `digest` into `into` (made fresh): its layers in order,
    /// plain or gzip tars, with an image's whiteouts (`.wh.NAME` deletes `NAME`, `.wh..wh..opq`
    /// empties its folder); an index by the manifest of this machine's platform.
    pub fn unpack(&self, digest: &str, into: &Path) -> Result<(), OciError> {
        let bytes = self.blob(digest)?;
        if let Some(chosen) = platform_manifest(&bytes)? {
            return self.unpack(&chosen, into);
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| OciError::Invalid(format!("manifest {digest}: {e}")))?;
        if into.exists() {
            std::fs::remove_dir_all(into).map_err(io(into))?;
        }
        std::fs::create_dir_all(into).map_err(io(into))?;
        for layer in &manifest.layers {
            let bytes = self.blob(&layer.digest)?;
            let t = &layer.media_type;
            if t.ends_with("+zstd") || t.ends_with(".zstd") {
                return Err(OciError::Invalid(format!(
                    "layer {} is zstd-compressed ({t}); push the image with gzip layers",
                    layer.digest
                )));
            }
            if t.ends_with("+gzip") || t.ends_with(".gzip") {
                unpack_layer(flate2::read::GzDecoder::new(bytes.as_slice()), into)?;
            } else {
                unpack_layer(bytes.as_slice(), into)?;
            }
        }
        Ok(())
    }
}

/// Applies one layer's tar to `into`; nothing is written outside it (`unpack_in`), whatever
/// the tar holds.
pub fn unpack_layer(r: impl std::io::Read, into: &Path) -> Result<(), OciError> {
    let mut archive = tar::Archive::new(r);
    archive.set_preserve_permissions(true);
    for entry in archive.entries().map_err(io(into))? {
        let mut entry = entry.map_err(io(into))?;
        let path = entry.path().map_err(io(into))?.into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // a whiteout: what an earlier layer put there is gone (paths stay inside `into`)
            if path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                continue;
            }
            let parent = into.join(path.parent().unwrap_or(Path::new("")));
            if hidden == ".wh..opq" {
                if let Ok(children) = std::fs::read_dir(&parent) {
                    for child in children.flatten() {
                        let p = child.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            } else {
                let gone = parent.join(hidden);
                let _ = if gone.is_dir() {
                    std::fs::remove_dir_all(&gone)
                } else {
                    std::fs::remove_file(&gone)
                };
            }
            continue;
        }
        // `unpack_in` refuses paths that leave `into`
        entry.unpack_in(into).map_err(io(into))?;
    }
    Ok(())
}

/// For an image index, the digest of the manifest for this machine's platform (Linux, this
/// CPU); `None` for a single manifest.
pub fn platform_manifest(bytes: &[u8]) -> Result<Option<String>, OciError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        digest: String,
        #[serde(default)]
        platform: Option<Platform>,
    }
    #[derive(serde::Deserialize)]
    struct Platform {
        os: String,
        architecture: String,
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Option<Vec<Entry>>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| OciError::Invalid(format!("not a manifest: {e}")))?;
    let Some(entries) = probe.manifests else {
        return Ok(None);
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .map(|e| Some(e.digest.clone()))
        .ok_or_else(|| {
            let offered: Vec<String> = entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            OciError::Invalid(format!(
                "the image index has no linux/{arch} image (it has: {})",
                if offered.is_empty() {
                    "none named".to_owned()
                } else {
                    offered.join(", ")
                }
            ))
        })
}

/// The blobs a manifest names: its config, then its layers.
pub fn blobs_of(manifest: &[u8]) -> Result<Vec<Descriptor>, OciError> {
    let m: Manifest =
        serde_json::from_slice(manifest).map_err(|e| OciError::Invalid(format!("a manifest: {e}")))?;
    Ok(std::iter::once(m.config).chain(m.layers).collect())
}

/// One thing packed: a regular file, or a symbolic link kept as a link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Packed {
    File(PathBuf),
    Link(PathBuf, PathBuf),
}

impl Packed {
    fn rel(&self) -> &Path {
        match self {
            Packed::File(rel) | Packed::Link(rel, _) => rel,
        }
    }
}

/// A reproducible tar of `files` under `dir`. Symbolic links are packed as links, and only if
/// they resolve inside `dir`; no file is read through a link or a linked folder, so nothing of
/// the build host outside `dir` can enter a release.
fn tar_of(dir: &Path, files: &[String]) -> Result<Vec<u8>, OciError> {
    let root = std::fs::canonicalize(dir).map_err(io(dir))?;
    let mut entries = Vec::new();
    for f in files {
        let rel = Path::new(f);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(OciError::Escapes(f.clone()));
        }
        let path = dir.join(rel);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(OciError::Missing(f.clone()));
        }
        // a folder on the way that is a link out of `dir` (`files: [lnk/passwd]`)
        if let Some(parent) = path.parent()
            && !std::fs::canonicalize(parent)
                .map_err(io(parent))?
                .starts_with(&root)
        {
            return Err(OciError::Escapes(f.clone()));
        }
        collect(dir, &root, &path, &mut entries)?;
    }
    entries.sort();
    entries.dedup_by(|a, b| a.rel() == b.rel());
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Packed::File(rel) => {
                let path = dir.join(&rel);
                let meta = std::fs::metadata(&path).map_err(io(&path))?;
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                header.set_size(bytes.len() as u64);
                use std::os::unix::fs::PermissionsExt;
                let executable = meta.permissions().mode() & 0o111 != 0;
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_entry_type(tar::EntryType::Regular);
                builder
                    .append_data(&mut header, &rel, bytes.as_slice())
                    .map_err(io(&path))?;
            }
            Packed::Link(rel, target) => {
                header.set_size(0);
                header.set_mode(0o777);
                header.set_entry_type(tar::EntryType::Symlink);
                builder
                    .append_link(&mut header, &rel, &target)
                    .map_err(io(&dir.join(&rel)))?;
            }
        }
    }
    builder.into_inner().map_err(io(dir))
}

/// Where a link at `link` pointing to `target` lands, lexically (without following further
/// links): for a link whose target does not exist.
fn lexical_target(link: &Path, target: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    let joined = link.parent().unwrap_or(Path::new("/")).join(target);
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Regular files and links under `path` (itself, if not a folder), relative to `dir` (`root`
/// is `dir` with its own links resolved). A link is not followed: kept as a link if it resolves
/// inside `root`, refused otherwise.
fn collect(dir: &Path, root: &Path, path: &Path, out: &mut Vec<Packed>) -> Result<(), OciError> {
    let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
    let rel = || {
        path.strip_prefix(dir)
            .map(Path::to_owned)
            .map_err(|_| OciError::Escapes(path.display().to_string()))
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(io(path))?;
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| {
            lexical_target(
                &std::fs::canonicalize(path.parent().unwrap_or(dir))
                    .unwrap_or_else(|_| root.to_owned())
                    .join(path.file_name().unwrap_or_default()),
                &target,
            )
        });
        if !resolved.starts_with(root) {
            return Err(OciError::LinkEscapes {
                link: rel()?.display().to_string(),
                target: target.display().to_string(),
            });
        }
        out.push(Packed::Link(rel()?, target));
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            collect(dir, root, &entry.path(), out)?;
        }
    } else if meta.is_file() {
        out.push(Packed::File(rel()?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `leak -> /etc/passwd` among the artifact's files packed the host's
    /// `/etc/passwd` into the release.
    #[test]
    fn a_link_out_of_the_build_folder_is_refused_and_one_inside_is_packed_as_a_link() {
        use std::os::unix::fs::symlink;
        let src = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret\n").unwrap();
        std::fs::create_dir_all(src.path().join("dist")).unwrap();
        std::fs::write(src.path().join("dist/app"), "app\n").unwrap();
        let layout_dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(layout_dir.path()).unwrap();
        let refused = |files: &[&str]| {
            let files: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
            layout.pack(src.path(), &files, "r1").unwrap_err().to_string()
        };
        // a link to a file outside, found walking a folder or named by itself
        symlink("/etc/passwd", src.path().join("dist/leak")).unwrap();
        let e = refused(&["dist"]);
        assert!(e.contains("dist/leak") && e.contains("/etc/passwd"), "{e}");
        assert!(refused(&["dist/leak"]).contains("outside the build folder"));
        std::fs::remove_file(src.path().join("dist/leak")).unwrap();
        // relative ways out, and a dangling one
        symlink("../../../../../../etc/shadow", src.path().join("dist/up")).unwrap();
        assert!(refused(&["dist"]).contains("dist/up"));
        std::fs::remove_file(src.path().join("dist/up")).unwrap();
        // a folder that is a link out, walked or passed through
        symlink(outside.path(), src.path().join("out")).unwrap();
        assert!(refused(&["out"]).contains("`out`"));
        assert!(refused(&["out/secret"]).contains("leaves the build folder"));
        std::fs::remove_file(src.path().join("out")).unwrap();
        // a link inside the folder: packed as a link, unpacked as that link
        symlink("app", src.path().join("dist/current")).unwrap();
        let digest = layout.pack(src.path(), &["dist".to_owned()], "r1").unwrap();
        let out = tempfile::tempdir().unwrap();
        layout.unpack(&digest, &out.path().join("x")).unwrap();
        let link = out.path().join("x/dist/current");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("app"));
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "app\n");
    }

    #[test]
    fn the_same_files_give_the_same_digest_and_unpack_as_they_were() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("dist/conf")).unwrap();
        std::fs::write(src.path().join("dist/app"), "#!/bin/sh\necho hi\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            src.path().join("dist/app"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(src.path().join("dist/conf/errors"), "0.01\n").unwrap();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let files = vec!["dist".to_owned()];
        let da = Layout::open(a.path())
            .unwrap()
            .pack(src.path(), &files, "r1")
            .unwrap();
        // the same content written again (other times on disk): the same digest
        std::fs::write(src.path().join("dist/conf/errors"), "0.01\n").unwrap();
        let db = Layout::open(b.path())
            .unwrap()
            .pack(src.path(), &files, "r1")
            .unwrap();
        assert_eq!(da, db);
        assert!(da.starts_with("sha256:"));
        // other content, another digest
        std::fs::write(src.path().join("dist/conf/errors"), "0.5\n").unwrap();
        let layout = Layout::open(a.path()).unwrap();
        let dc = layout.pack(src.path(), &files, "r2").unwrap();
        assert_ne!(da, dc);
        let out = tempfile::tempdir().unwrap();
        layout.unpack(&da, &out.path().join("x")).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("x/dist/conf/errors")).unwrap(),
            "0.01\n"
        );
        let mode = std::fs::metadata(out.path().join("x/dist/app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let index = std::fs::read_to_string(a.path().join("index.json")).unwrap();
        assert!(index.contains(&da) && index.contains(&dc), "{index}");
    }

    #[test]
    fn missing_and_escaping_paths_are_refused() {
        let src = tempfile::tempdir().unwrap();
        let l = Layout::open(&src.path().join("oci")).unwrap();
        assert!(matches!(
            l.pack(src.path(), &["nope".into()], "x"),
            Err(OciError::Missing(_))
        ));
        assert!(matches!(
            l.pack(src.path(), &["../etc".into()], "x"),
            Err(OciError::Escapes(_))
        ));
    }
}

//! The container image these tests run, made here from the host's static
//! busybox: no registry, no network. A root filesystem tarball (what
//! `podman import` takes) and an OCI image layout tarball (what `ctr image
//! import` takes) holding that same tarball as its one layer.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::common::run;

/// The image's name in every runtime's private store.
pub const IMAGE: &str = "localhost/pwt-busybox:latest";

/// The busybox applets the container script uses.
const APPLETS: &[&str] = &["sh", "nc", "ip", "sleep", "grep", "sed", "cat", "mkfifo"];

/// The host's static busybox (Debian's `busybox-static`): a dynamic one
/// would need the host's libraries inside the image.
fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if std::fs::read(p).is_ok_and(|elf| !has_interpreter(&elf)) {
            return PathBuf::from(p);
        }
    }
    panic!("a static busybox is missing: install busybox-static (scripts/deps.sh)");
}

/// Whether a 64-bit little-endian ELF executable names a program
/// interpreter (a PT_INTERP header): a dynamically linked one does.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let Some(phoff) = elf
        .get(0x20..0x28)
        .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
    else {
        return true;
    };
    let (Some(size), Some(count)) = (u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..count).any(|i| {
        elf.get(phoff + i * size..phoff + i * size + 4)
            .is_none_or(|t| t == [3, 0, 0, 0])
    })
}

/// The image platform's architecture, in OCI's words.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes the root filesystem tarball into `dir` and returns its path.
pub fn rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    std::fs::create_dir_all(root.join("tmp")).expect("rootfs/tmp");
    std::fs::copy(busybox(), bin.join("busybox")).expect("copy busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).expect("applet link");
    }
    let tar = dir.join("rootfs.tar");
    let o = run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    tar
}

/// Stores `bytes` as a content-addressed blob of the layout in `dir`;
/// returns (digest, size).
fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, bytes).expect("blob");
    let o = run(Command::new("sha256sum").arg(&tmp));
    assert!(o.status.success(), "sha256sum");
    let hex = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string();
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&hex)).expect("blob rename");
    (format!("sha256:{hex}"), bytes.len())
}

/// Writes an OCI image layout tarball of the rootfs into `dir` (named
/// [`IMAGE`] through containerd's name annotation) and returns its path.
pub fn oci_tar(dir: &Path) -> PathBuf {
    oci_tar_named(dir, IMAGE, &["sh"])
}

/// Writes an OCI image layout tarball of the rootfs into `dir`, named
/// `name` and running `cmd` by default (a CRI sandbox image runs only its
/// own command), and returns its path.
pub fn oci_tar_named(dir: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    let layer = std::fs::read(rootfs_tar(dir)).expect("rootfs tar");
    let layout = dir.join("oci");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    let (layer_digest, layer_size) = blob(&layout, &layer);
    // An uncompressed layer: its diff id is its digest.
    let config = serde_json::json!({
        "architecture": oci_arch(), "os": "linux",
        "config": { "Cmd": cmd },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                     "digest": layer_digest, "size": layer_size }],
    });
    let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": { "io.containerd.image.name": name },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let tar = dir.join("oci.tar");
    let o = run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .args(["oci-layout", "index.json", "blobs"]));
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    tar
}

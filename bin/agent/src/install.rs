//! `install-cni` / `uninstall-cni`: puts the plugin binary and
//! `10-podwire.conflist` on a node, and takes away exactly what it put.
//!
//! Every file is written atomically (see [`crate::atomic`]). What was
//! written is recorded, path and SHA-256, in the state dir; uninstall
//! removes a file only while it still has the recorded hash, so an
//! operator's later edit is never deleted. A conflist this command did not
//! write is replaced only with `--force`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use podwire_cni::config::Mode;
use serde::{Deserialize, Serialize};

use crate::atomic;

/// The conflist's file name: `10-` sorts it where EKS puts `10-aws.conflist`.
pub const CONFLIST_NAME: &str = "10-podwire.conflist";
/// The plugin binary's name, in the CNI bin dir and next to the agent.
pub const PLUGIN_NAME: &str = "podwire";
/// The record of what was installed, in the state dir.
pub const RECORD_NAME: &str = "cni-install.json";
/// The network name in the conflist.
pub const NETWORK_NAME: &str = "podwire";

/// Biggest plugin binary copied (today's is a few MiB).
const MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// Biggest conflist or record read back.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What to install, and where.
#[derive(Debug, Clone)]
pub struct Install {
    pub mode: Mode,
    /// The plugin binary to copy into `bin_dir`; `None`: leave the bin dir.
    pub plugin: Option<PathBuf>,
    pub bin_dir: PathBuf,
    /// Where the conflist goes; `None`: no conflist (the agent writes it
    /// once it is ready).
    pub conf_dir: Option<PathBuf>,
    pub agent_socket: PathBuf,
    pub state_dir: PathBuf,
    pub force: bool,
}

/// One file install wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    files: Vec<Written>,
}

/// What an install did to each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// It already had these exact bytes.
    Unchanged,
}

/// A conflist is there that this command did not write.
#[derive(Debug)]
pub struct NotOurs(pub PathBuf);

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exists and was not written by podwire-agent install-cni; \
             remove it or pass --force to replace it",
            self.0.display()
        )
    }
}

impl std::error::Error for NotOurs {}

/// The conflist for `mode`: podwire, then the reference `portmap` plugin
/// for hostPort, chained as EKS chains it.
pub fn conflist(mode: Mode, agent_socket: &Path) -> Vec<u8> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": PLUGIN_NAME,
                "mode": mode.as_str(),
                "agentSocket": agent_socket.display().to_string(),
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
            },
        ],
    });
    let mut bytes = serde_json::to_vec_pretty(&conf).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Installs the plugin binary and the conflist (each if asked); returns
/// each file's path and outcome (the binary first).
pub fn install(plan: &Install) -> anyhow::Result<Vec<(PathBuf, Outcome)>> {
    let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
    if let Some(plugin) = &plan.plugin {
        let bytes = atomic::read_bounded(plugin, MAX_PLUGIN_BYTES)?.with_context(|| {
            format!(
                "the plugin binary {} does not exist (give it with --plugin)",
                plugin.display()
            )
        })?;
        files.push((plan.bin_dir.join(PLUGIN_NAME), bytes, 0o755));
    }
    let mut record = load_record(&plan.state_dir)?;
    if let Some(conf_dir) = &plan.conf_dir {
        let conf = conflist(plan.mode, &plan.agent_socket);
        let target = conf_dir.join(CONFLIST_NAME);
        // Decide before writing anything: a refusal changes nothing.
        if let Some(existing) = atomic::read_bounded(&target, MAX_CONFIG_BYTES)? {
            let ours = existing == conf || record.holds(&target, &atomic::sha256_hex(&existing));
            if !ours && !plan.force {
                return Err(NotOurs(target).into());
            }
        }
        files.push((target, conf, 0o644));
    }

    let mut done = Vec::new();
    for (target, bytes, mode) in files {
        if let Some(dir) = target.parent() {
            create_dir(dir, 0o755)?;
        }
        // Anything bigger than what we write is simply not equal; and a file
        // of the right bytes with another owner or mode (writable by others,
        // set-uid) is rewritten, not trusted.
        let limit = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let same = atomic::read_bounded(&target, limit)
            .ok()
            .flatten()
            .is_some_and(|old| old == bytes)
            && has_mode_of_ours(&target, mode);
        let sha256 = atomic::sha256_hex(&bytes);
        let outcome = if same {
            Outcome::Unchanged
        } else {
            atomic::write(&target, &bytes, mode)?;
            Outcome::Written
        };
        // Recorded only when this tool wrote it (now or before): uninstall
        // must never remove a file someone else put there.
        if outcome == Outcome::Written || record.holds(&target, &sha256) {
            record.set(Written {
                path: target.clone(),
                sha256,
            });
        }
        done.push((target, outcome));
    }
    create_dir(&plan.state_dir, 0o700)?;
    save_record(&plan.state_dir, &record)?;
    warn_about_neighbours(plan);
    Ok(done)
}

/// What an uninstall did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removal {
    pub removed: Vec<PathBuf>,
    /// Changed since install: left in place.
    pub changed: Vec<PathBuf>,
    /// Already gone.
    pub missing: Vec<PathBuf>,
}

/// Removes what [`install`] recorded, each file only if it still has the
/// recorded hash; then the record.
pub fn uninstall(state_dir: &Path) -> anyhow::Result<Removal> {
    let record = load_record(state_dir)?;
    let mut out = Removal::default();
    // Only the two names install-cni ever writes: a record that names
    // anything else was not written by it.
    if let Some(w) = record.files.iter().find(|w| {
        !matches!(
            w.path.file_name().and_then(|n| n.to_str()),
            Some(PLUGIN_NAME | CONFLIST_NAME)
        )
    }) {
        anyhow::bail!(
            "{} names {}, which install-cni never writes: not removing anything",
            state_dir.join(RECORD_NAME).display(),
            w.path.display()
        );
    }
    for w in record.files {
        // Files ours never exceed the plugin limit; bigger = changed.
        match atomic::read_bounded(&w.path, MAX_PLUGIN_BYTES) {
            Ok(None) => out.missing.push(w.path),
            Ok(Some(bytes)) if atomic::sha256_hex(&bytes) == w.sha256 => {
                fs::remove_file(&w.path)
                    .with_context(|| format!("removing {}", w.path.display()))?;
                out.removed.push(w.path);
            }
            Ok(Some(_)) | Err(_) => out.changed.push(w.path),
        }
    }
    let path = state_dir.join(RECORD_NAME);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))?
        }
        _ => {}
    }
    Ok(out)
}

impl Record {
    fn holds(&self, path: &Path, sha256: &str) -> bool {
        self.files
            .iter()
            .any(|w| w.path == path && w.sha256 == sha256)
    }

    fn set(&mut self, w: Written) {
        self.files.retain(|old| old.path != w.path);
        self.files.push(w);
    }
}

/// Creates `dir` (and missing parents) with `mode`, whatever the umask;
/// a directory that exists is left as it is.
fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // The umask may have taken bits the mode asked for: set it exactly.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// The file is owned by us and has exactly `mode` (no set-uid, not
/// writable by others).
fn has_mode_of_ours(path: &Path, mode: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).is_ok_and(|m| {
        m.file_type().is_file()
            && m.uid() == nix::unistd::Uid::effective().as_raw()
            && m.mode() & 0o7777 == mode
    })
}

fn load_record(state_dir: &Path) -> anyhow::Result<Record> {
    let path = state_dir.join(RECORD_NAME);
    // Trusted only if nobody else could have written it.
    if let Ok(m) = fs::symlink_metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        if !m.file_type().is_file()
            || m.uid() != nix::unistd::Uid::effective().as_raw()
            || m.mode() & 0o022 != 0
        {
            anyhow::bail!(
                "{} is not a file owned by this user and writable only by it: not trusting it (remove it to start afresh)",
                path.display()
            );
        }
    }
    match atomic::read_bounded(&path, MAX_CONFIG_BYTES)? {
        None => Ok(Record::default()),
        Some(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not an install record; move it away to start afresh",
                path.display()
            )
        }),
    }
}

fn save_record(state_dir: &Path, record: &Record) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).context("encoding the install record")?;
    bytes.push(b'\n');
    atomic::write(&state_dir.join(RECORD_NAME), &bytes, 0o600)
}

/// Runtimes load the first configuration of the conf dir by name, and the
/// chain needs `portmap`: say so when either will get in the way.
fn warn_about_neighbours(plan: &Install) {
    let entries = plan.conf_dir.as_ref().and_then(|d| fs::read_dir(d).ok());
    if let Some(entries) = entries {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let config = [".conf", ".conflist", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext));
            if config && !name.starts_with('.') && name.as_str() < CONFLIST_NAME {
                tracing::warn!(
                    file = %e.path().display(),
                    "sorts before {CONFLIST_NAME}: runtimes load it instead of podwire"
                );
            }
        }
    }
    if plan.plugin.is_some() && !plan.bin_dir.join("portmap").exists() {
        tracing::warn!(
            bin_dir = %plan.bin_dir.display(),
            "no portmap plugin there: the chain fails until the reference plugins are installed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Node {
        _root: tempfile::TempDir,
        plan: Install,
    }

    fn node() -> Node {
        let root = tempfile::tempdir().expect("tempdir");
        let plugin = root.path().join("build/podwire");
        fs::create_dir_all(plugin.parent().expect("parent")).expect("mkdir");
        fs::write(&plugin, b"\x7fELF plugin v1").expect("plugin");
        let plan = Install {
            mode: Mode::Vpc,
            plugin: Some(plugin),
            bin_dir: root.path().join("opt/cni/bin"),
            conf_dir: Some(root.path().join("etc/cni/net.d")),
            agent_socket: PathBuf::from("/run/podwire/agent.sock"),
            state_dir: root.path().join("run/podwire"),
            force: false,
        };
        Node { _root: root, plan }
    }

    fn conf_dir(n: &Node) -> PathBuf {
        n.plan.conf_dir.clone().expect("conf dir")
    }

    fn conf_path(n: &Node) -> PathBuf {
        conf_dir(n).join(CONFLIST_NAME)
    }

    #[test]
    fn the_conflist_chains_podwire_then_portmap_and_the_plugin_accepts_its_part() {
        let bytes = conflist(Mode::Overlay, Path::new("/run/pw/a.sock"));
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        // What a runtime hands the plugin: the list's name and version with
        // the plugin's own entry.
        let mut entry = v["plugins"][0].clone();
        entry["cniVersion"] = v["cniVersion"].clone();
        entry["name"] = v["name"].clone();
        let parsed = podwire_cni::config::NetConf::parse(entry.to_string().as_bytes())
            .expect("the plugin accepts the entry");
        assert_eq!(parsed.mode, Mode::Overlay);
        assert_eq!(parsed.agent_socket, PathBuf::from("/run/pw/a.sock"));
    }

    #[test]
    fn install_writes_both_files_records_them_and_is_idempotent() {
        let n = node();
        let first = install(&n.plan).expect("install");
        assert!(first.iter().all(|(_, o)| *o == Outcome::Written));
        let bin = n.plan.bin_dir.join(PLUGIN_NAME);
        assert_eq!(fs::read(&bin).expect("bin"), b"\x7fELF plugin v1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&bin).expect("meta").permissions().mode() & 0o777,
            0o755
        );
        let conf = fs::read(conf_path(&n)).expect("conf");
        assert_eq!(conf, conflist(Mode::Vpc, &n.plan.agent_socket));
        let record = load_record(&n.plan.state_dir).expect("record");
        assert!(record.holds(&bin, &atomic::sha256_hex(b"\x7fELF plugin v1")));
        assert!(record.holds(&conf_path(&n), &atomic::sha256_hex(&conf)));

        let second = install(&n.plan).expect("again");
        assert!(second.iter().all(|(_, o)| *o == Outcome::Unchanged));
        for dir in [&n.plan.bin_dir, &conf_dir(&n), &n.plan.state_dir] {
            assert!(atomic::leftover_temps(dir).expect("list").is_empty());
        }
    }

    #[test]
    fn install_replaces_its_own_conflist_when_the_mode_changes() {
        let mut n = node();
        install(&n.plan).expect("vpc");
        n.plan.mode = Mode::Overlay;
        install(&n.plan).expect("overlay replaces what vpc wrote");
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(conf_path(&n)).expect("read")).expect("json");
        assert_eq!(v["plugins"][0]["mode"], "overlay");
    }

    #[test]
    fn a_foreign_conflist_is_refused_without_force_and_nothing_is_written() {
        let mut n = node();
        fs::create_dir_all(conf_dir(&n)).expect("mkdir");
        fs::write(conf_path(&n), b"{\"someone\":\"else\"}").expect("foreign");
        let err = install(&n.plan).expect_err("refused");
        assert!(err.downcast_ref::<NotOurs>().is_some(), "{err:#}");
        assert_eq!(
            fs::read(conf_path(&n)).expect("kept"),
            b"{\"someone\":\"else\"}"
        );
        assert!(!n.plan.bin_dir.join(PLUGIN_NAME).exists());
        assert!(!n.plan.state_dir.join(RECORD_NAME).exists());

        n.plan.force = true;
        install(&n.plan).expect("forced");
        assert_eq!(
            fs::read(conf_path(&n)).expect("read"),
            conflist(Mode::Vpc, &n.plan.agent_socket)
        );
    }

    #[test]
    fn an_edited_conflist_of_ours_counts_as_foreign() {
        let mut n = node();
        install(&n.plan).expect("install");
        fs::write(conf_path(&n), b"{\"edited\":true}").expect("edit");
        n.plan.mode = Mode::Overlay;
        let err = install(&n.plan).expect_err("refused");
        assert!(err.downcast_ref::<NotOurs>().is_some(), "{err:#}");
    }

    #[test]
    fn the_plugin_and_the_conflist_install_separately_into_one_record() {
        let mut n = node();
        let conf = n.plan.conf_dir.take();
        let only_bin = install(&n.plan).expect("plugin only");
        assert_eq!(only_bin.len(), 1);
        assert!(!conf.as_ref().expect("dir").join(CONFLIST_NAME).exists());
        n.plan.conf_dir = conf;
        let plugin = n.plan.plugin.take();
        let only_conf = install(&n.plan).expect("conflist only");
        assert_eq!(only_conf, vec![(conf_path(&n), Outcome::Written)]);
        n.plan.plugin = plugin;
        let out = uninstall(&n.plan.state_dir).expect("uninstall");
        assert_eq!(out.removed.len(), 2, "{out:?}");
    }

    #[test]
    fn uninstall_removes_exactly_what_was_written() {
        let n = node();
        fs::create_dir_all(conf_dir(&n)).expect("mkdir");
        fs::create_dir_all(&n.plan.bin_dir).expect("mkdir");
        let other_conf = conf_dir(&n).join("20-other.conflist");
        let other_bin = n.plan.bin_dir.join("portmap");
        fs::write(&other_conf, b"{}").expect("other");
        fs::write(&other_bin, b"portmap").expect("other");
        install(&n.plan).expect("install");

        let out = uninstall(&n.plan.state_dir).expect("uninstall");
        assert_eq!(
            out.removed,
            vec![n.plan.bin_dir.join(PLUGIN_NAME), conf_path(&n)]
        );
        assert!(out.changed.is_empty() && out.missing.is_empty());
        assert!(!conf_path(&n).exists());
        assert!(!n.plan.bin_dir.join(PLUGIN_NAME).exists());
        assert!(other_conf.exists() && other_bin.exists());
        assert!(!n.plan.state_dir.join(RECORD_NAME).exists());

        // Nothing recorded any more: a second uninstall removes nothing.
        assert_eq!(
            uninstall(&n.plan.state_dir).expect("again"),
            Removal::default()
        );
    }

    #[test]
    fn uninstall_leaves_a_file_changed_since_install_and_says_so() {
        let n = node();
        install(&n.plan).expect("install");
        fs::write(conf_path(&n), b"{\"edited\":true}").expect("edit");
        fs::remove_file(n.plan.bin_dir.join(PLUGIN_NAME)).expect("rm");
        let out = uninstall(&n.plan.state_dir).expect("uninstall");
        assert_eq!(out.changed, vec![conf_path(&n)]);
        assert_eq!(out.missing, vec![n.plan.bin_dir.join(PLUGIN_NAME)]);
        assert!(out.removed.is_empty());
        assert_eq!(fs::read(conf_path(&n)).expect("kept"), b"{\"edited\":true}");
    }

    #[test]
    fn a_missing_plugin_or_a_corrupt_record_is_a_clear_error() {
        let mut n = node();
        fs::create_dir_all(&n.plan.state_dir).expect("mkdir");
        fs::write(n.plan.state_dir.join(RECORD_NAME), b"not json").expect("corrupt");
        let err = install(&n.plan).expect_err("corrupt record");
        assert!(
            format!("{err:#}").contains("not an install record"),
            "{err:#}"
        );
        assert!(uninstall(&n.plan.state_dir).is_err());

        n.plan.plugin = n.plan.plugin.map(|p| p.with_file_name("nope"));
        let err = install(&n.plan).expect_err("no plugin");
        assert!(format!("{err:#}").contains("--plugin"), "{err:#}");
    }

    #[test]
    fn a_record_naming_other_files_or_writable_by_others_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let n = node();
        install(&n.plan).expect("install");
        let rec = n.plan.state_dir.join(RECORD_NAME);
        // A record edited to name a file install-cni never writes.
        let victim = n.plan.state_dir.join("precious");
        fs::write(&victim, b"keep me").expect("victim");
        let mut r = load_record(&n.plan.state_dir).expect("record");
        r.files.push(Written {
            path: victim.clone(),
            sha256: atomic::sha256_hex(b"keep me"),
        });
        save_record(&n.plan.state_dir, &r).expect("save");
        let e = uninstall(&n.plan.state_dir).expect_err("refused");
        assert!(e.to_string().contains("never writes"), "{e}");
        assert!(victim.exists(), "uninstall removed a file it never wrote");
        // A record others could have written is not read at all.
        fs::set_permissions(&rec, fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = uninstall(&n.plan.state_dir).expect_err("refused");
        assert!(e.to_string().contains("not trusting"), "{e}");
        assert!(install(&n.plan).is_err(), "install trusted it too");
    }

    #[test]
    fn directories_get_their_modes_whatever_the_umask_and_foreign_files_are_not_recorded() {
        use std::os::unix::fs::PermissionsExt;
        let n = node();
        // A plugin someone else put there, with our bytes but mode 0777.
        fs::create_dir_all(&n.plan.bin_dir).expect("mkdir");
        let bin = n.plan.bin_dir.join(PLUGIN_NAME);
        fs::write(&bin, b"\x7fELF plugin v1").expect("plugin");
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o777)).expect("chmod");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let done = install(&n.plan);
        nix::sys::stat::umask(old);
        let done = done.expect("install");
        assert_eq!(
            done[0].1,
            Outcome::Written,
            "a 0777 plugin must be rewritten, not kept"
        );
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode(&bin), 0o755);
        assert_eq!(mode(&conf_dir(&n)), 0o755);
        assert_eq!(mode(&n.plan.state_dir), 0o700);
        // A correct file that was there before is left, and not claimed.
        let m = node();
        fs::create_dir_all(&m.plan.bin_dir).expect("mkdir");
        let theirs = m.plan.bin_dir.join(PLUGIN_NAME);
        atomic::write(&theirs, b"\x7fELF plugin v1", 0o755).expect("theirs");
        let mut plan = m.plan.clone();
        plan.conf_dir = None;
        let done = install(&plan).expect("install");
        assert_eq!(done[0].1, Outcome::Unchanged);
        uninstall(&plan.state_dir).expect("uninstall");
        assert!(
            theirs.exists(),
            "uninstall removed a plugin it did not write"
        );
    }
}

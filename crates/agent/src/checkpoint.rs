//! The allocations on disk: `<state_dir>/ipam.json`, rewritten atomically
//! (temporary file, rename) on every change, before the plugin hears the
//! answer.
//!
//! What it protects against is the agent process dying: the page cache
//! survives that, so there is no fsync (it cost more than the whole
//! allocation). A checkpoint only describes pods of the current boot — pods
//! do not survive a reboot — so a file older than the boot is discarded,
//! whatever a power loss left in it. (The default directory, `/run/podwire`,
//! is a tmpfs on most systems and is emptied at boot anyway.)

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use podwire_proto::{Allocation, AttachmentKey, Egress};
use serde::{Deserialize, Serialize};

use crate::AgentError;

const FORMAT: &str = "podwire-ipam/2";
/// Written by agents of protocol v1: vpc-shaped allocations. Read (and
/// rewritten as v2 at the next change) so an upgraded agent keeps its pods.
const FORMAT_V1: &str = "podwire-ipam/1";

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: String,
    allocations: Vec<Allocation>,
}

#[derive(Debug, Deserialize)]
struct OnDiskV1 {
    allocations: Vec<AllocationV1>,
}

#[derive(Debug, Deserialize)]
struct AllocationV1 {
    key: AttachmentKey,
    ip: std::net::Ipv4Addr,
    #[serde(default)]
    eni_id: String,
    #[serde(default)]
    device_number: u32,
    route_table: u32,
    #[serde(default)]
    pod_namespace: Option<String>,
    #[serde(default)]
    pod_name: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
}

impl From<AllocationV1> for Allocation {
    fn from(a: AllocationV1) -> Allocation {
        let egress = if a.route_table == podwire_proto::TABLE_MAIN {
            Egress::Main
        } else {
            Egress::EniTable {
                eni_id: a.eni_id,
                device_number: a.device_number,
                table: a.route_table,
            }
        };
        Allocation {
            key: a.key,
            ip: a.ip,
            egress,
            pod_namespace: a.pod_namespace,
            pod_name: a.pod_name,
            mtu: a.mtu,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Versioned {
    version: String,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
}

impl Checkpoint {
    pub fn new(state_dir: &Path) -> Result<Checkpoint, AgentError> {
        fs::create_dir_all(state_dir).map_err(|e| AgentError::Checkpoint {
            path: state_dir.display().to_string(),
            msg: e.to_string(),
        })?;
        Ok(Checkpoint {
            path: state_dir.join("ipam.json"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, msg: impl ToString) -> AgentError {
        AgentError::Checkpoint {
            path: self.path.display().to_string(),
            msg: msg.to_string(),
        }
    }

    pub fn load(&self) -> Result<Vec<Allocation>, AgentError> {
        if let (Ok(meta), Some(boot)) = (fs::metadata(&self.path), boot_time()) {
            if meta.modified().is_ok_and(|m| m < boot) {
                tracing::info!(path = %self.path.display(), "checkpoint is older than this boot; its pods are gone, starting empty");
                return Ok(Vec::new());
            }
        }
        match fs::read(&self.path) {
            Ok(bytes) => {
                let v: Versioned = serde_json::from_slice(&bytes).map_err(|e| self.err(e))?;
                match v.version.as_str() {
                    FORMAT => {
                        let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| self.err(e))?;
                        Ok(d.allocations)
                    }
                    FORMAT_V1 => {
                        let d: OnDiskV1 =
                            serde_json::from_slice(&bytes).map_err(|e| self.err(e))?;
                        tracing::info!(path = %self.path.display(), "reading a v1 checkpoint (rewritten as v2 at the next change)");
                        Ok(d.allocations.into_iter().map(Allocation::from).collect())
                    }
                    other => Err(self.err(format!(
                        "unknown format {other:?} (this agent reads {FORMAT} and {FORMAT_V1}): was it written by a newer podwire-agent?"
                    ))),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    pub fn save(&self, allocations: &[Allocation]) -> Result<(), AgentError> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec(&OnDisk {
            version: FORMAT.into(),
            allocations: allocations.to_vec(),
        })
        .map_err(|e| self.err(e))?;
        // Root only: it names every pod of the node.
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.err(e))?;
        f.write_all(&body).map_err(|e| self.err(e))?;
        // A file left by an older agent keeps its mode through O_CREAT.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| self.err(e))?;
        fs::rename(&tmp, &self.path).map_err(|e| self.err(e))
    }
}

/// When the system booted (`btime` of /proc/stat).
fn boot_time() -> Option<std::time::SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_stale_files_are_discarded() {
        let dir = std::env::temp_dir().join(format!("podwire-ckpt-{}", std::process::id()));
        let c = Checkpoint::new(&dir).expect("dir");
        assert!(c.load().expect("empty").is_empty());
        let a = Allocation {
            key: AttachmentKey {
                network: "n".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
            ip: "10.0.0.9".parse().expect("ip"),
            egress: Egress::EniTable {
                eni_id: "eni-1".into(),
                device_number: 1,
                table: 2,
            },
            pod_namespace: None,
            pod_name: None,
            mtu: None,
        };
        c.save(std::slice::from_ref(&a)).expect("save");
        assert_eq!(c.load().expect("load"), vec![a.clone()]);
        let mode = fs::metadata(dir.join("ipam.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the checkpoint names every pod: root only"
        );
        // What a v1 agent wrote is read into the same allocation.
        fs::write(
            dir.join("ipam.json"),
            br#"{"version":"podwire-ipam/1","allocations":[{"key":{"network":"n","container_id":"c","ifname":"eth0"},"ip":"10.0.0.9","eni_id":"eni-1","device_number":1,"route_table":2,"pod_namespace":null,"pod_name":null}]}"#,
        )
        .expect("v1");
        assert_eq!(c.load().expect("v1 load"), vec![a]);
        fs::write(
            dir.join("ipam.json"),
            br#"{"version":"podwire-ipam/9","allocations":[]}"#,
        )
        .expect("v9");
        assert!(
            c.load().is_err(),
            "a newer format must stop the agent, not be misread"
        );
        // A file from before this boot describes pods that no longer exist.
        let f = File::options()
            .write(true)
            .open(dir.join("ipam.json"))
            .expect("open");
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
            .expect("mtime");
        assert!(c.load().expect("stale").is_empty());
        fs::write(dir.join("ipam.json"), b"{garbage").expect("write");
        assert!(
            c.load().is_err(),
            "a corrupt checkpoint of this boot must stop the agent"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

//! The allocations on disk: `<state_dir>/ipam.json`, rewritten atomically
//! (temporary file, fsync, rename) on every change, before the plugin hears
//! the answer.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use podwire_proto::Allocation;
use serde::{Deserialize, Serialize};

use crate::AgentError;

const FORMAT: &str = "podwire-ipam/1";

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: String,
    allocations: Vec<Allocation>,
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

    fn err(&self, msg: impl ToString) -> AgentError {
        AgentError::Checkpoint {
            path: self.path.display().to_string(),
            msg: msg.to_string(),
        }
    }

    pub fn load(&self) -> Result<Vec<Allocation>, AgentError> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| self.err(e))?;
                if d.version != FORMAT {
                    return Err(self.err(format!("unknown format {:?}", d.version)));
                }
                Ok(d.allocations)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    pub fn save(&self, allocations: &[Allocation]) -> Result<(), AgentError> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&OnDisk {
            version: FORMAT.into(),
            allocations: allocations.to_vec(),
        })
        .map_err(|e| self.err(e))?;
        let mut f = File::create(&tmp).map_err(|e| self.err(e))?;
        f.write_all(&body).map_err(|e| self.err(e))?;
        f.sync_all().map_err(|e| self.err(e))?;
        fs::rename(&tmp, &self.path).map_err(|e| self.err(e))
    }
}

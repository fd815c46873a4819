//! `lab external-pod-access deny|allow`: the agents' posture on a running
//! lab. The agents take it as a flag, so each is restarted with the new one
//! (an agent rebuilds its nftables at start without a window of openness;
//! pods keep running meanwhile).

use super::agents::restart_agent;
use crate::state::{self, ExternalPodAccess, LabState};
use crate::LabError;

/// Records the posture and restarts every running agent with it; returns
/// the nodes whose agents were restarted (a stopped agent gets the new
/// posture when it is started).
pub fn set_external_pod_access(
    lab: &str,
    access: ExternalPodAccess,
) -> Result<Vec<String>, LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    st.external_pod_access = access;
    st.save()?;
    let running: Vec<String> = st
        .nodes
        .iter()
        .filter(|n| n.agent_pid.is_some())
        .map(|n| n.name.clone())
        .collect();
    for node in &running {
        restart_agent(&mut st, node)?;
    }
    Ok(running)
}

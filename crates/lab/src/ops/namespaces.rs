//! `lab namespace add|label`: Kubernetes namespaces and their labels, in
//! lab.json and as NamespaceRecords in the lab's datastore.

use podwire_cluster::records::{Labels, NAMESPACE_NAME_LABEL};

use crate::datastore::lab_store;
use crate::kube::{self, LabelEdit};
use crate::state::{self, LabState};
use crate::{names, LabError};

/// `lab namespace add NS [--labels …]`; its labels, name label included.
pub fn namespace_add(lab: &str, ns: &str, labels: &Labels) -> Result<Labels, LabError> {
    names::check_namespace_name(ns)?;
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    if st.kube_namespaces.contains_key(ns) {
        return Err(LabError::Usage(format!(
            "namespace {ns} exists already (change its labels with `lab namespace label {ns} k=v …`)"
        )));
    }
    let rec = kube::namespace_record(ns, labels)?;
    kube::write_namespace(lab_store(&st)?.as_ref(), &rec)?;
    st.kube_namespaces
        .insert(ns.to_string(), rec.labels.clone());
    st.save()?;
    Ok(rec.labels)
}

/// `lab namespace label NS k=v … k-`; the labels afterwards.
pub fn namespace_label(lab: &str, ns: &str, edits: &[LabelEdit]) -> Result<Labels, LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    let labels = st.kube_namespaces.get(ns).ok_or_else(|| {
        LabError::Usage(format!(
            "lab {lab} has no namespace {ns} (`lab namespace add {ns}` first)"
        ))
    })?;
    let new = kube::apply_label_edits(labels, edits, Some(NAMESPACE_NAME_LABEL))?;
    let rec = kube::namespace_record(ns, &new)?;
    kube::write_namespace(lab_store(&st)?.as_ref(), &rec)?;
    st.kube_namespaces
        .insert(ns.to_string(), rec.labels.clone());
    st.save()?;
    Ok(rec.labels)
}

//! `lab namespace add|label|del`: Kubernetes namespaces and their labels, in
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

/// `lab namespace del NS`: refused while a pod is in it (delete those
/// first) and for `default`; removes the lab's entry and the datastore's
/// record (the policies of NS stay, as they select nothing).
pub fn namespace_del(lab: &str, ns: &str) -> Result<(), LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    if ns == names::DEFAULT_NAMESPACE {
        return Err(LabError::Usage(format!(
            "namespace {ns} cannot be deleted (pods without a namespace go there)"
        )));
    }
    if !st.kube_namespaces.contains_key(ns) {
        return Err(LabError::Usage(format!("lab {lab} has no namespace {ns}")));
    }
    let pods: Vec<&str> = st
        .pods
        .values()
        .filter(|p| p.namespace == ns)
        .map(|p| p.name.as_str())
        .collect();
    if let Some(why) = refuse_del(ns, &pods) {
        return Err(LabError::Usage(why));
    }
    kube::delete_namespace(lab_store(&st)?.as_ref(), ns)?;
    st.kube_namespaces.remove(ns);
    st.save()?;
    Ok(())
}

/// Why a namespace holding `pods` is not deleted (None: it is empty).
fn refuse_del(ns: &str, pods: &[&str]) -> Option<String> {
    (!pods.is_empty()).then(|| {
        format!(
            "namespace {ns} still has {} ({}): delete {} first (`lab pod del {ns}/NAME`)",
            if pods.len() == 1 { "a pod" } else { "pods" },
            pods.join(", "),
            if pods.len() == 1 { "it" } else { "them" }
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_namespace_with_pods_is_not_deleted() {
        assert_eq!(super::refuse_del("x", &[]), None);
        let why = super::refuse_del("x", &["a", "b"]).expect("refused");
        assert!(why.contains("still has pods (a, b)"), "{why}");
        assert!(why.contains("lab pod del x/NAME"), "{why}");
    }
}

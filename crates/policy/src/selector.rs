//! Label selector matching, as apimachinery's `LabelSelectorAsSelector`
//! defines it: every matchLabels pair and every expression must hold.

use std::collections::BTreeMap;

use crate::model::{LabelSelector, Operator};

impl LabelSelector {
    /// True when `labels` satisfy the selector; `{}` selects everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let pairs = self
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        pairs
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator {
                    Operator::In => have.is_some_and(|v| r.values.contains(v)),
                    // NotIn holds for a pod without the key, as upstream.
                    Operator::NotIn => have.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => have.is_some(),
                    Operator::DoesNotExist => have.is_none(),
                }
            })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

//! `podwirectl lab demo`: the article's vpc-mode experiment, narrated.

use crate::LabError;

pub fn run(_name: &str, _keep: bool) -> Result<(), LabError> {
    Err(LabError::Usage("demo: not yet".into()))
}

//! Tags as EC2 takes them at creation (`TagSpecification.N`), with EC2's
//! rules: the resource type must be the one created, at most 50 tags, keys
//! of 1 to 128 characters that do not start with `aws:`, values of at most
//! 256 characters, each key once.

use std::collections::BTreeMap;

use super::model::{api_err, ApiError};

pub const MAX_TAGS: usize = 50;
pub const MAX_KEY: usize = 128;
pub const MAX_VALUE: usize = 256;

fn invalid(msg: String) -> ApiError {
    api_err("InvalidParameterValue", msg)
}

/// The tags of every `TagSpecification.N` (each for `resource_type`).
pub fn from_specifications(
    p: &BTreeMap<String, String>,
    resource_type: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut tags = BTreeMap::new();
    for s in 1.. {
        let prefix = format!("TagSpecification.{s}");
        let rt = p.get(&format!("{prefix}.ResourceType"));
        let has_tags = p.contains_key(&format!("{prefix}.Tag.1.Key"));
        let Some(rt) = rt else {
            if has_tags {
                return Err(api_err(
                    "MissingParameter",
                    format!("{prefix}.ResourceType is required"),
                ));
            }
            break;
        };
        if rt != resource_type {
            return Err(invalid(format!(
                "'{}' is not a valid taggable resource type for this operation (expected {resource_type})",
                rt.chars().take(64).collect::<String>().escape_debug()
            )));
        }
        for i in 1.. {
            let Some(k) = p.get(&format!("{prefix}.Tag.{i}.Key")) else {
                break;
            };
            let v = p
                .get(&format!("{prefix}.Tag.{i}.Value"))
                .cloned()
                .unwrap_or_default();
            check(k, &v)?;
            if tags.insert(k.clone(), v).is_some() {
                return Err(invalid(format!(
                    "Duplicate tag key '{}' specified",
                    k.escape_debug()
                )));
            }
            if tags.len() > MAX_TAGS {
                return Err(api_err(
                    "TagLimitExceeded",
                    format!("The maximum number of tags per resource is {MAX_TAGS}"),
                ));
            }
        }
    }
    Ok(tags)
}

fn check(k: &str, v: &str) -> Result<(), ApiError> {
    let klen = k.chars().count();
    if klen == 0 || klen > MAX_KEY {
        return Err(invalid(format!(
            "Tag keys must be 1 to {MAX_KEY} characters (got {klen})"
        )));
    }
    if k.to_ascii_lowercase().starts_with("aws:") {
        return Err(invalid(
            "Tag keys starting with 'aws:' are reserved for internal use".into(),
        ));
    }
    if v.chars().count() > MAX_VALUE {
        return Err(invalid(format!(
            "Tag values may be at most {MAX_VALUE} characters"
        )));
    }
    if k.chars().chain(v.chars()).any(char::is_control) {
        return Err(invalid("Tags may not contain control characters".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tags_follow_ec2s_rules() {
        let ok = from_specifications(
            &p(&[
                ("TagSpecification.1.ResourceType", "network-interface"),
                ("TagSpecification.1.Tag.1.Key", "podwire.io/instance-id"),
                ("TagSpecification.1.Tag.1.Value", "i-1"),
                ("TagSpecification.1.Tag.2.Key", "empty"),
            ]),
            "network-interface",
        )
        .expect("ok");
        assert_eq!(
            ok.get("podwire.io/instance-id").map(String::as_str),
            Some("i-1")
        );
        assert_eq!(ok.get("empty").map(String::as_str), Some(""));
        let long_key = "k".repeat(MAX_KEY + 1);
        let long_value = "v".repeat(MAX_VALUE + 1);
        for (bad, code) in [
            (
                vec![
                    ("TagSpecification.1.ResourceType", "instance"),
                    ("TagSpecification.1.Tag.1.Key", "a"),
                ],
                "InvalidParameterValue",
            ),
            (
                vec![("TagSpecification.1.Tag.1.Key", "a")],
                "MissingParameter",
            ),
            (
                vec![
                    ("TagSpecification.1.ResourceType", "network-interface"),
                    ("TagSpecification.1.Tag.1.Key", "aws:x"),
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("TagSpecification.1.ResourceType", "network-interface"),
                    ("TagSpecification.1.Tag.1.Key", ""),
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("TagSpecification.1.ResourceType", "network-interface"),
                    ("TagSpecification.1.Tag.1.Key", &long_key),
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("TagSpecification.1.ResourceType", "network-interface"),
                    ("TagSpecification.1.Tag.1.Key", "a"),
                    ("TagSpecification.1.Tag.1.Value", &long_value),
                ],
                "InvalidParameterValue",
            ),
        ] {
            assert_eq!(
                from_specifications(&p(&bad), "network-interface")
                    .expect_err("bad")
                    .code,
                code,
                "{bad:?}"
            );
        }
        let mut many = vec![(
            "TagSpecification.1.ResourceType".to_string(),
            "network-interface".to_string(),
        )];
        for i in 1..=MAX_TAGS + 1 {
            many.push((format!("TagSpecification.1.Tag.{i}.Key"), format!("k{i}")));
        }
        let many: BTreeMap<String, String> = many.into_iter().collect();
        assert_eq!(
            from_specifications(&many, "network-interface")
                .expect_err("51")
                .code,
            "TagLimitExceeded"
        );
    }
}

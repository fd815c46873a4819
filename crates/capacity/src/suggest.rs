//! Nearest instance-type names for a name the table does not know.

/// Names longer than this are not compared (the distance is quadratic;
/// no instance type is near this long).
const MAX_NAME: usize = 64;

/// Edit distances above this are not suggestions.
const MAX_DISTANCE: usize = 3;

/// At most this many suggestions.
pub const MAX_SUGGESTIONS: usize = 5;

/// Levenshtein distance (insert, delete, substitute: 1 each) over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The names nearest to `wanted`, best first: those within a small edit
/// distance (case ignored), then those that `wanted` begins (`m5.` or
/// `m7i-flex` lists the family), then those sharing its family (the part
/// before the dot). Deterministic: ties go by name.
pub fn nearest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let w = wanted.trim().to_ascii_lowercase();
    if w.is_empty() || w.len() > MAX_NAME {
        return Vec::new();
    }
    let family = w.split('.').next().unwrap_or("");
    // (tier, distance, other family, name): within a distance, the
    // wanted family first (m5.larg -> m5.xlarge before c5.large).
    let mut scored: Vec<(u8, usize, bool, &str)> = names
        .filter_map(|n| {
            let d = edit_distance(&w, &n.to_ascii_lowercase());
            let other = family.is_empty() || n.split('.').next() != Some(family);
            if d <= MAX_DISTANCE {
                Some((0, d, other, n))
            } else if n.starts_with(w.as_str()) {
                Some((1, d, other, n))
            } else if !other {
                Some((2, d, other, n))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(MAX_SUGGESTIONS)
        .map(|(_, _, _, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("m5.large", "m5.large"), 0);
        assert_eq!(edit_distance("m5.larg", "m5.large"), 1);
        assert_eq!(edit_distance("m5.lrage", "m5.large"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions_are_near_and_ordered() {
        let names = [
            "m5.large",
            "m5.xlarge",
            "m5a.large",
            "m6i.large",
            "c5.large",
            "t3.small",
        ];
        let n = |w: &str| nearest(w, names.iter().copied());
        // Typo: the exact neighbour first (distance 1), then the others
        // within 3 edits, by distance then name.
        assert_eq!(n("m5.larg")[0], "m5.large");
        assert_eq!(n("M5.LARGE")[0], "m5.large");
        // m5.large: 0; then distance 1, the m5 family first: m5.xlarge,
        // then c5.large, m5a.large by name; m6i.large: 2.
        assert_eq!(
            n("m5.large"),
            [
                "m5.large",
                "m5.xlarge",
                "c5.large",
                "m5a.large",
                "m6i.large"
            ]
        );
        // m5.larg: m5.large 1; m5.xlarge and c5.large both 2, the family
        // first.
        assert_eq!(n("m5.larg")[..3], ["m5.large", "m5.xlarge", "c5.large"]);
        // A family prefix lists the family.
        assert_eq!(n("t3."), ["t3.small"]);
        // Far from everything: nothing, and no work on absurd input.
        assert!(n("zzzzzzzzzzzzzzzzzzzz").is_empty());
        assert!(n(&"m".repeat(10_000)).is_empty());
        assert!(n("").is_empty());
    }
}

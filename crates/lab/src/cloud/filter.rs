//! EC2 filter values: exact strings in which `*` matches any run of
//! characters and `?` exactly one (EC2's wildcards).

/// Does `value` (with wildcards) match `actual`?
pub fn matches(pattern: &str, actual: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let a: Vec<char> = actual.chars().collect();
    // Iterative matching with one backtrack point: linear in practice and
    // never exponential, whatever the client sends.
    let (mut pi, mut ai) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ai < a.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ai));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == a[ai] => {
                pi += 1;
                ai += 1;
            }
            _ => match star {
                Some((sp, sa)) => {
                    pi = sp + 1;
                    ai = sa + 1;
                    star = Some((sp, sa + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards_as_ec2_documents_them() {
        assert!(matches("podwire.io/instance-id", "podwire.io/instance-id"));
        assert!(!matches(
            "podwire.io/instance-id",
            "podwire.io/instance-idx"
        ));
        assert!(matches("podwire-*", "podwire-i-123"));
        assert!(matches("*", ""));
        assert!(matches("i-?", "i-1"));
        assert!(!matches("i-?", "i-12"));
        assert!(matches("*a*b", "xxaxxb"));
        assert!(!matches("*a*b", "xxaxxbc"));
        assert!(!matches("", "x"));
        let long = "a".repeat(10_000);
        assert!(!matches(&"*a".repeat(200), &(long + "b")));
    }
}

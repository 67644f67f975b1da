//! libtest's summary lines (`test result: ok. 14 passed; 0 failed; ...`),
//! read the same way for the native suite and the guests.

/// (passed, failed) of a summary line; None for any other line.
pub fn summary(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim_end_matches('\r').strip_prefix("test result: ")?;
    let count = |label: &str| {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(label))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    Some((count("passed"), count("failed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_counts_and_nothing_else() {
        assert_eq!(
            summary("test result: ok. 14 passed; 0 failed; 1 ignored; 0 measured"),
            Some((14, 0))
        );
        assert_eq!(
            summary("test result: FAILED. 1 passed; 2 failed;\r"),
            Some((1, 2))
        );
        assert_eq!(summary("running 3 tests"), None);
    }
}

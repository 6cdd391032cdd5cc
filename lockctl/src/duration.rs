//! Durations on the command line: `30s`, `5m`, `1h30m`, `500ms`, `2d`, or a
//! bare number of seconds.

use std::time::Duration;

/// Parses a duration as written on the command line: a bare number is
/// seconds, anything else goes to `humantime` (which also reads `2h 30min`,
/// `1.5s`, `1w`).
///
/// # Errors
/// A message saying what to write instead, for clap to print.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = |why: &dyn std::fmt::Display| {
        format!(
            "invalid duration {text:?} ({why}): write a number with a unit, e.g. 30s, 5m, 1h30m, \
             500ms, 2d (a bare number is seconds)"
        )
    };
    let trimmed = text.trim();
    match trimmed.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|err| bad(&err)),
        Err(_) => humantime::parse_duration(trimmed).map_err(|err| bad(&err)),
    }
}

/// Writes `d` the way people read it: `250ms`, `12s`, `4m05s`, `3h02m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse("1h 30min"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1w"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn garbage_says_what_to_write() {
        for bad in ["", "5x", "m", "-3s", "1h-", "s5", "10 parsecs", "1e400"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("e.g. 30s"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn human_forms() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(65)), "1m05s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 120)), "3h02m");
    }
}

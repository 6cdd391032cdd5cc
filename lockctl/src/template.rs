//! Key templates for `run --once`: `{date}`, `{hour}` and `{minute}` are
//! the current UTC time, so a cron line `lockctl run --once 'etl/{date}' --
//! ./etl.sh` runs the job once a day however often cron fires it.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The placeholders, for messages.
const KNOWN: &str = "{date} (2026-12-07), {hour} (2026-12-07T14), {minute} (2026-12-07T14:05)";

/// A key template that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `{name}` is not a placeholder lockctl knows.
    Unknown(String),
    /// A `{` without its `}`.
    Unclosed,
    /// A `}` without its `{` (write `}}` for a brace).
    StrayClose,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unknown(name) => write!(
                f,
                "unknown placeholder {{{name}}} in the key: known are {KNOWN}; write {{{{ and }}}} for a literal brace"
            ),
            TemplateError::Unclosed => write!(
                f,
                "a `{{` in the key is not closed: placeholders are {KNOWN}; write {{{{ for a literal brace"
            ),
            TemplateError::StrayClose => write!(
                f,
                "a `}}` in the key closes nothing: write }}}} for a literal brace"
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Expands `template` at `now` (UTC).
///
/// # Errors
/// An unknown placeholder, or an unmatched brace.
pub fn expand(template: &str, now: SystemTime) -> Result<String, TemplateError> {
    let stamp = Stamp::at(now);
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(TemplateError::StrayClose);
        } else {
            let close = tail.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &tail[1..close];
            match name {
                "date" => out.push_str(&stamp.date()),
                "hour" => out.push_str(&stamp.hour()),
                "minute" => out.push_str(&stamp.minute()),
                _ => return Err(TemplateError::Unknown(name.to_owned())),
            }
            rest = &tail[close + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A UTC time, to the minute.
struct Stamp {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
}

impl Stamp {
    fn at(now: SystemTime) -> Stamp {
        // A clock before 1970 is broken; 1970 is as good an answer as any.
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
        let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        Stamp {
            year,
            month,
            day,
            hour: u32::try_from(of_day / 3600).unwrap_or(0),
            minute: u32::try_from(of_day % 3600 / 60).unwrap_or(0),
        }
    }

    fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    fn hour(&self) -> String {
        format!("{}T{:02}", self.date(), self.hour)
    }

    fn minute(&self) -> String {
        format!("{}:{:02}", self.hour(), self.minute)
    }
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-12-07T14:05:09Z.
    const NOW: u64 = 1_796_652_309;

    #[test]
    fn placeholders_are_the_utc_time() {
        assert_eq!(
            expand("etl/{date}", at(NOW)).unwrap(),
            "etl/2026-12-07",
            "date"
        );
        assert_eq!(expand("{hour}", at(NOW)).unwrap(), "2026-12-07T14");
        assert_eq!(
            expand("a/{minute}/b", at(NOW)).unwrap(),
            "a/2026-12-07T14:05/b"
        );
        assert_eq!(
            expand("{date}{date}", at(NOW)).unwrap(),
            "2026-12-072026-12-07"
        );
    }

    #[test]
    fn dates_cross_leap_days_and_years() {
        assert_eq!(expand("{date}", at(1_709_164_800)).unwrap(), "2024-02-29");
        assert_eq!(
            expand("{minute}", at(946_684_799)).unwrap(),
            "1999-12-31T23:59"
        );
        assert_eq!(expand("{minute}", at(0)).unwrap(), "1970-01-01T00:00");
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            expand("{{date}}/{date}", at(NOW)).unwrap(),
            "{date}/2026-12-07"
        );
        assert_eq!(expand("plain/key", at(NOW)).unwrap(), "plain/key");
    }

    #[test]
    fn bad_templates_are_typed_errors_naming_the_problem() {
        assert_eq!(
            expand("x/{day}", at(NOW)),
            Err(TemplateError::Unknown("day".into()))
        );
        assert!(
            TemplateError::Unknown("day".into())
                .to_string()
                .contains("{day}")
        );
        assert_eq!(expand("x/{date", at(NOW)), Err(TemplateError::Unclosed));
        assert_eq!(expand("x}", at(NOW)), Err(TemplateError::StrayClose));
    }
}

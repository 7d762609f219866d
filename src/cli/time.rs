//! Times as the command line takes them: durations (`90s`, `15m`, `1h30m`), RFC 3339 with a zone
//! (`Z` or an offset such as `+02:00`), sent to the server in UTC, and an expiry moved later by a
//! duration.

use std::time::Duration;

/// A whole number of seconds, at least one: `90s`, `15m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 90s, 15m or 1h)"))?;
    if d.as_secs() == 0 || d.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds, at least 1s".into());
    }
    Ok(d)
}

/// Parses `s` and gives the same moment in UTC (`2025-06-01T18:00:00.000Z`). A time without a zone
/// is refused: the server would take it as UTC, which is rarely what a person at a clock means.
pub fn parse_time(s: &str) -> Result<String, String> {
    let utc = crate::model::clock::parse_zoned(s)?;
    Ok(humantime::format_rfc3339_millis(utc).to_string())
}

/// `expires_at` (as the server writes it) moved later by `by`, in UTC.
pub fn later(expires_at: &str, by: Duration) -> Result<String, String> {
    let at = humantime::parse_rfc3339(expires_at).map_err(|e| format!("expires_at {expires_at:?}: {e}"))?;
    let moved = at.checked_add(by).ok_or("too far ahead")?;
    Ok(humantime::format_rfc3339_millis(moved).to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{later, parse_time};

    #[test]
    fn times_with_a_zone_become_utc() {
        let cases = [
            ("2025-06-01T18:00:00Z", "2025-06-01T18:00:00.000Z"),
            ("2025-06-01T18:00:00z", "2025-06-01T18:00:00.000Z"),
            ("2025-06-01T18:00:00.25Z", "2025-06-01T18:00:00.250Z"),
            ("2025-06-01 18:00:00Z", "2025-06-01T18:00:00.000Z"),
            ("2025-06-01T20:00:00+02:00", "2025-06-01T18:00:00.000Z"),
            ("2025-06-01T13:30:00-04:30", "2025-06-01T18:00:00.000Z"),
            ("2025-06-02T00:30:00+06:30", "2025-06-01T18:00:00.000Z"),
            ("2025-01-01T01:00:00+02:00", "2024-12-31T23:00:00.000Z"),
            (" 2025-06-01T18:00:00+00:00 ", "2025-06-01T18:00:00.000Z"),
        ];
        for (input, want) in cases {
            assert_eq!(parse_time(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn times_without_a_zone_or_malformed_are_refused() {
        for input in [
            "",
            "tomorrow",
            "2025-06-01T18:00:00",
            "2025-06-01",
            "2025-06-01Z",
            "2025-06-01T18:00Z",
            "2025-06-01T18:00:00+2:00",
            "2025-06-01T18:00:00+24:00",
            "2025-06-01T18:00:00+02:60",
            "2025-06-01T18:00:00*02:00",
            "2025-13-01T18:00:00Z",
            "1970-01-01T00:30:00+01:00",
            "2025-06-01T18:00:00€",
        ] {
            assert!(parse_time(input).is_err(), "{input}");
        }
        assert!(parse_time("2025-06-01T18:00:00").unwrap_err().contains("+02:00"));
    }

    #[test]
    fn an_expiry_moves_later_by_the_duration() {
        assert_eq!(
            later("2025-06-01T18:00:00.000Z", Duration::from_secs(5400)).as_deref(),
            Ok("2025-06-01T19:30:00.000Z")
        );
        assert!(later("soon", Duration::from_secs(1)).is_err());
    }
}

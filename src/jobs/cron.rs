//! Five-field cron expressions read in an IANA time zone, for agent schedules and workflow
//! schedule triggers: croner evaluates them (daylight-saving gaps and overlaps included),
//! chrono-tz carries the zone database.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A cron expression of exactly five fields: minute hour day-of-month month day-of-week.
pub fn parse(expression: &str) -> Result<Cron, String> {
    let fields = expression.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "cron `{expression}` has {fields} fields; use five: minute hour day-of-month month \
             day-of-week (e.g. `0 9 * * 1-5`)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| format!("cron `{expression}`: {e}"))
}

pub fn timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!(
            "`{name}` is not an IANA time zone (e.g. `Europe/Paris`, `America/New_York`, `UTC`)"
        )
    })
}

/// The first time strictly after `after` that `cron` matches on `zone`'s wall clock.
pub fn next_after(cron: &Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&zone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, zone: &str, after: &str) -> DateTime<Utc> {
        next_after(&parse(expr).unwrap(), timezone(zone).unwrap(), utc(after)).unwrap()
    }

    #[test]
    fn cron_fires_in_its_time_zone() {
        // 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
        assert_eq!(
            next("0 9 * * *", "Europe/Paris", "2026-01-15T10:00:00Z"),
            utc("2026-01-16T08:00:00Z")
        );
        assert_eq!(
            next("0 9 * * *", "Europe/Paris", "2026-07-15T06:00:00Z"),
            utc("2026-07-15T07:00:00Z")
        );
        // Saturday 2026-11-28 → Monday 2026-11-30 08:30 EST = 13:30 UTC.
        assert_eq!(
            next("30 8 * * 1-5", "America/New_York", "2026-11-28T12:00:00Z"),
            utc("2026-11-30T13:30:00Z")
        );
        // Plain UTC: lists, steps, the first of the month, leap days.
        assert_eq!(
            next("*/15 * * * *", "UTC", "2026-11-23T08:16:00Z"),
            utc("2026-11-23T08:30:00Z")
        );
        assert_eq!(
            next("0 8 1 * *", "UTC", "2026-11-23T08:00:00Z"),
            utc("2026-12-01T08:00:00Z")
        );
        assert_eq!(
            next("0 0 29 2 *", "UTC", "2026-03-01T00:00:00Z"),
            utc("2028-02-29T00:00:00Z")
        );
        assert_eq!(
            next("0 9 * * 1", "UTC", "2026-11-23T09:00:00Z"),
            utc("2026-11-30T09:00:00Z")
        );
    }

    #[test]
    fn cron_across_daylight_saving_changes() {
        // Spring forward in New York: 2026-03-08 02:00 → 03:00. A 02:30 job that day runs
        // at the first real instant after the gap, once.
        let gap = next("30 2 * * *", "America/New_York", "2026-03-08T05:00:00Z");
        assert_eq!(gap, utc("2026-03-08T07:00:00Z"));
        assert_eq!(
            next("30 2 * * *", "America/New_York", &gap.to_rfc3339()),
            utc("2026-03-09T06:30:00Z")
        );
        // Fall back: 2026-11-01 01:30 happens twice; the job runs once.
        let first = next("30 1 * * *", "America/New_York", "2026-11-01T04:00:00Z");
        assert_eq!(first, utc("2026-11-01T05:30:00Z"));
        assert_eq!(
            next("30 1 * * *", "America/New_York", &first.to_rfc3339()),
            utc("2026-11-02T06:30:00Z")
        );
        // Every hour keeps firing each real hour through the change.
        let hour = next("0 * * * *", "Europe/Paris", "2026-03-29T00:30:00Z");
        assert_eq!(hour, utc("2026-03-29T01:00:00Z"));
        assert_eq!(
            next("0 * * * *", "Europe/Paris", &hour.to_rfc3339()),
            utc("2026-03-29T02:00:00Z")
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        for bad in [
            "",
            "0 9 * *",
            "0 0 9 * * *",
            "61 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "a * * * *",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("0 9 * * 1-5").is_ok());
        assert!(timezone("Mars/Olympus").is_err());
        assert!(timezone("Europe/Paris").is_ok());
    }
}

//! Schedule triggers: `interval_seconds`, or a five-field cron expression (minute hour
//! day-of-month month day-of-week; `*`, numbers, lists, ranges and `/` steps) in UTC.
//! Every serving process looks for due workflows; the row lock that moves a workflow's
//! `next_run_at` on makes each due time start one execution, however many processes run.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use super::engine::CHANNEL;
use super::triggers::{TRIGGERED_COLUMNS, Triggered};

/// One cron field: the values it allows.
fn field(spec: &str, min: u32, max: u32) -> Option<Vec<bool>> {
    let mut allowed = vec![false; (max + 1) as usize];
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let value = range.parse().ok()?;
                    (value, if part.contains('/') { max } else { value })
                }
            },
        };
        if from < min || to > max || from > to {
            return None;
        }
        for value in (from..=to).step_by(step as usize) {
            allowed[value as usize] = true;
        }
    }
    Some(allowed)
}

pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    any_day: bool,
    any_weekday: bool,
}

impl Cron {
    pub fn parse(expression: &str) -> Option<Cron> {
        let parts: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = parts.as_slice() else {
            return None;
        };
        // Day of week 0-7, Sunday being 0 and 7.
        let mut weekdays = field(weekday, 0, 7)?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        Some(Cron {
            minutes: field(minute, 0, 59)?,
            hours: field(hour, 0, 23)?,
            days: field(day, 1, 31)?,
            months: field(month, 1, 12)?,
            weekdays,
            any_day: *day == "*",
            any_weekday: *weekday == "*",
        })
    }

    fn matches(&self, t: DateTime<Utc>) -> bool {
        let day = self.days[t.day() as usize];
        let weekday = self.weekdays[t.weekday().num_days_from_sunday() as usize];
        // Cron's rule: when both day fields are restricted, either may match.
        let day_ok = match (self.any_day, self.any_weekday) {
            (false, false) => day || weekday,
            _ => day && weekday,
        };
        self.minutes[t.minute() as usize]
            && self.hours[t.hour() as usize]
            && self.months[t.month() as usize]
            && day_ok
    }

    /// The first matching minute after `after` (within about four years).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        for _ in 0..(4 * 366 * 24 * 60) {
            if !self.months[t.month() as usize] {
                t = (t + Duration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if self.matches(t) {
                return Some(t);
            }
            t += Duration::minutes(1);
        }
        None
    }
}

/// Whether a schedule trigger's config is one this server runs; the reason if not.
pub fn check(config: &Map<String, Value>) -> Result<(), String> {
    if let Some(zone) = config.get("timezone").and_then(Value::as_str)
        && zone != "UTC"
    {
        return Err(format!(
            "timezone `{zone}`: schedules run in UTC for now (give times in UTC, or leave timezone out)"
        ));
    }
    let interval = config.get("interval_seconds").and_then(Value::as_u64);
    let cron = config.get("cron").and_then(Value::as_str);
    match (interval, cron) {
        (Some(seconds), None) if seconds >= 60 => Ok(()),
        (None, Some(cron)) if Cron::parse(cron).is_some() => Ok(()),
        (None, Some(cron)) => Err(format!(
            "`{cron}` is not a cron expression of five fields (minute hour day month weekday)"
        )),
        _ => Err(
            "a schedule needs `interval_seconds` (60 or more) or `cron` (five fields), not both"
                .into(),
        ),
    }
}

/// When a schedule fires next after `after`.
pub fn next_run(config: &Value, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Some(seconds) = config.get("interval_seconds").and_then(Value::as_i64) {
        return Some(after + Duration::seconds(seconds));
    }
    Cron::parse(config.get("cron")?.as_str()?)?.next_after(after)
}

#[derive(sqlx::FromRow)]
struct Due {
    next_run_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    workflow: Triggered,
}

/// Starts the executions of due schedules and sets their next times. A workflow without a
/// next time (just activated or changed) gets one, without running now.
pub async fn fire_due(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Vec<Due> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT next_run_at, {TRIGGERED_COLUMNS} FROM workflows
         WHERE status = 'active' AND trigger_type = 'schedule'
           AND (next_run_at IS NULL OR next_run_at <= now())
         FOR UPDATE SKIP LOCKED LIMIT 50"
    )))
    .fetch_all(&mut *tx)
    .await?;
    let now = Utc::now();
    let mut started = 0;
    for Due {
        next_run_at,
        workflow,
    } in due
    {
        if let Some(due_at) = next_run_at {
            started += workflow
                .queue(
                    &mut tx,
                    "schedule",
                    json!({ "scheduled_for": due_at }),
                    None,
                )
                .await?;
        }
        sqlx::query("UPDATE workflows SET next_run_at = $2 WHERE id = $1")
            .bind(workflow.id)
            .bind(next_run(&workflow.trigger_config, now))
            .execute(&mut *tx)
            .await?;
    }
    if started > 0 {
        sqlx::query("SELECT pg_notify($1, 'schedule')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn cron_expressions_find_their_next_minute() {
        // 2026-11-23 is a Monday.
        let monday_nine = Cron::parse("0 9 * * 1").unwrap();
        assert_eq!(
            monday_nine.next_after(at(2026, 11, 23, 8, 59)),
            Some(at(2026, 11, 23, 9, 0))
        );
        assert_eq!(
            monday_nine.next_after(at(2026, 11, 23, 9, 0)),
            Some(at(2026, 11, 30, 9, 0))
        );
        let every_15 = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            every_15.next_after(at(2026, 11, 23, 8, 16)),
            Some(at(2026, 11, 23, 8, 30))
        );
        let first_of_month = Cron::parse("0 8 1 * *").unwrap();
        assert_eq!(
            first_of_month.next_after(at(2026, 11, 23, 8, 0)),
            Some(at(2026, 12, 1, 8, 0))
        );
        let weekdays = Cron::parse("30 17 * * 1-5").unwrap();
        assert_eq!(
            weekdays.next_after(at(2026, 11, 27, 18, 0)),
            Some(at(2026, 11, 30, 17, 30))
        );
        let leap = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(at(2026, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
        ] {
            assert!(Cron::parse(bad).is_none(), "{bad}");
        }
        assert!(
            check(
                &json!({ "cron": "0 9 * * 1", "timezone": "Europe/Paris" })
                    .as_object()
                    .unwrap()
                    .clone()
            )
            .is_err()
        );
        assert!(
            check(
                &json!({ "interval_seconds": 3600 })
                    .as_object()
                    .unwrap()
                    .clone()
            )
            .is_ok()
        );
    }
}

//! Opening hours: whether a weekly schedule in an IANA time zone is open at an instant. Pure.

use chrono::{DateTime, Datelike, Timelike, Utc, Weekday};
use chrono_tz::Tz;

use crate::config::OpeningHours;

/// Day keys of a schedule, Monday first.
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Minutes in a day: `24:00` is the only time allowed to reach it, as the end of a range.
const DAY_MINUTES: u32 = 24 * 60;

fn day_key(day: Weekday) -> &'static str {
    DAYS[day.num_days_from_monday() as usize]
}

/// Minutes since midnight of `HH:MM` (`24:00` included; callers refuse it as a start).
fn parse_time(text: &str) -> Result<u32, String> {
    let (h, m) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("time '{text}' is not HH:MM"))?;
    let digits = |s: &str, max_len: usize| !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return Err(format!("time '{text}' is not HH:MM"));
    }
    let hours: u32 = h.parse().map_err(|_| format!("time '{text}' is not HH:MM"))?;
    let minutes: u32 = m.parse().map_err(|_| format!("time '{text}' is not HH:MM"))?;
    if minutes > 59 || hours > 24 || (hours == 24 && minutes != 0) {
        return Err(format!("time '{text}' is out of range (00:00 to 24:00)"));
    }
    Ok(hours * 60 + minutes)
}

/// A `HH:MM-HH:MM` range as `[start, end)` minutes.
fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("range '{text}' is not HH:MM-HH:MM"))?;
    let start = parse_time(start)?;
    let end = parse_time(end)?;
    if start >= DAY_MINUTES {
        return Err(format!("range '{text}' starts at 24:00; use 00:00 of the next day"));
    }
    if end <= start {
        return Err(format!(
            "range '{text}' ends before it starts: ranges may not cross midnight, split it into \
             'HH:MM-24:00' on one day and '00:00-HH:MM' on the next"
        ));
    }
    Ok((start, end))
}

/// Whether `hours` is open at `now`, read on the local wall clock of its time zone (so a range means the
/// same local times on either side of a DST change). A day absent from the schedule is closed. Every day and
/// range is validated, not only today's, so a bad schedule fails the same way on every day.
pub(crate) fn is_open(hours: &OpeningHours, now: DateTime<Utc>) -> Result<bool, String> {
    let tz: Tz = hours
        .timezone
        .trim()
        .parse()
        .map_err(|_| format!("unknown time zone '{}'", hours.timezone))?;
    let local = now.with_timezone(&tz);
    let today = day_key(local.weekday());
    let minute = local.hour() * 60 + local.minute();
    let mut open = false;
    for (day, ranges) in &hours.days {
        let key = day.trim().to_ascii_lowercase();
        if !DAYS.contains(&key.as_str()) {
            return Err(format!("unknown day '{day}' (use mon, tue, wed, thu, fri, sat, sun)"));
        }
        for range in ranges {
            let (start, end) = parse_range(range)?;
            if key == today && start <= minute && minute < end {
                open = true;
            }
        }
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    fn hours(tz: &str, days: &[(&str, &[&str])]) -> OpeningHours {
        OpeningHours {
            timezone: tz.into(),
            days: days
                .iter()
                .map(|(d, r)| (d.to_string(), r.iter().map(|s| s.to_string()).collect()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn open_inside_a_range_closed_outside_and_at_its_end() {
        // 2024-06-03 is a Monday; Madrid is UTC+2 in summer.
        let h = hours("Europe/Madrid", &[("mon", &["09:00-13:00", "14:00-17:30"])]);
        assert_eq!(is_open(&h, utc(2024, 6, 3, 6, 59)), Ok(false)); // 08:59
        assert_eq!(is_open(&h, utc(2024, 6, 3, 7, 0)), Ok(true)); // 09:00
        assert_eq!(is_open(&h, utc(2024, 6, 3, 11, 30)), Ok(false)); // 13:30, lunch
        assert_eq!(is_open(&h, utc(2024, 6, 3, 15, 29)), Ok(true)); // 17:29
        assert_eq!(is_open(&h, utc(2024, 6, 3, 15, 30)), Ok(false)); // 17:30, end excluded
    }

    #[test]
    fn the_day_is_the_local_day_and_absent_days_are_closed() {
        // Monday 23:30 UTC is Tuesday 08:30 in Tokyo.
        let h = hours("Asia/Tokyo", &[("tue", &["08:00-09:00"])]);
        assert_eq!(is_open(&h, utc(2024, 6, 3, 23, 30)), Ok(true));
        assert_eq!(is_open(&h, utc(2024, 6, 3, 0, 30)), Ok(false)); // Monday 09:30 local: closed day
        assert_eq!(is_open(&hours("UTC", &[]), utc(2024, 6, 3, 12, 0)), Ok(false));
    }

    #[test]
    fn whole_day_range_is_open_to_the_last_minute() {
        let h = hours("UTC", &[("Sun", &["00:00-24:00"])]);
        assert_eq!(is_open(&h, utc(2024, 6, 2, 0, 0)), Ok(true));
        assert_eq!(is_open(&h, utc(2024, 6, 2, 23, 59)), Ok(true));
        assert_eq!(is_open(&h, utc(2024, 6, 3, 0, 0)), Ok(false));
    }

    #[test]
    fn spring_forward_day_follows_the_local_clock() {
        // Europe/Madrid jumps 02:00 CET -> 03:00 CEST on Sunday 2024-03-31.
        let h = hours("Europe/Madrid", &[("sat", &["09:00-10:00"]), ("sun", &["09:00-10:00"])]);
        // 08:30 UTC is 09:30 CET on Saturday but 10:30 CEST on Sunday.
        assert_eq!(is_open(&h, utc(2024, 3, 30, 8, 30)), Ok(true));
        assert_eq!(is_open(&h, utc(2024, 3, 31, 8, 30)), Ok(false));
        assert_eq!(is_open(&h, utc(2024, 3, 31, 7, 30)), Ok(true));
        // Right after the jump: 01:00 UTC is 03:00 local.
        let night = hours("Europe/Madrid", &[("sun", &["03:00-04:00"])]);
        assert_eq!(is_open(&night, utc(2024, 3, 31, 0, 59)), Ok(false)); // 01:59 CET
        assert_eq!(is_open(&night, utc(2024, 3, 31, 1, 0)), Ok(true)); // 03:00 CEST
    }

    #[test]
    fn fall_back_day_is_open_through_the_repeated_hour() {
        // Europe/Madrid repeats 02:00-03:00 on Sunday 2024-10-27 (00:00-01:00 UTC in CEST, 01:00-02:00 in CET).
        let h = hours("Europe/Madrid", &[("sun", &["02:00-03:00"])]);
        assert_eq!(is_open(&h, utc(2024, 10, 26, 23, 59)), Ok(false)); // 01:59 CEST
        assert_eq!(is_open(&h, utc(2024, 10, 27, 0, 30)), Ok(true)); // 02:30 CEST
        assert_eq!(is_open(&h, utc(2024, 10, 27, 1, 30)), Ok(true)); // 02:30 CET
        assert_eq!(is_open(&h, utc(2024, 10, 27, 2, 0)), Ok(false)); // 03:00 CET
    }

    #[test]
    fn bad_schedules_are_errors_with_a_reason() {
        let now = utc(2024, 6, 3, 12, 0);
        let err = is_open(&hours("Europe/Nowhere", &[]), now).unwrap_err();
        assert!(err.contains("Europe/Nowhere"), "{err}");
        let err = is_open(&hours("UTC", &[("fri", &["22:00-02:00"])]), now).unwrap_err();
        assert!(err.contains("cross midnight"), "{err}");
        let err = is_open(&hours("UTC", &[("monday", &["09:00-10:00"])]), now).unwrap_err();
        assert!(err.contains("unknown day"), "{err}");
        for bad in [
            "9-10",
            "09:00",
            "25:00-26:00",
            "09:60-10:00",
            "24:00-24:00",
            "10:00-10:00",
            "24:30-09:00",
        ] {
            assert!(is_open(&hours("UTC", &[("tue", &[bad])]), now).is_err(), "{bad}");
        }
        assert_eq!(is_open(&hours("UTC", &[("mon", &["9:00-13:00"])]), now), Ok(true));
    }
}

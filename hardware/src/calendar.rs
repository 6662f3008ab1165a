//! Calendar date to Unix time, for clocks that count in calendar fields
//! (the board's RTC keeps year/month/day/hour/minute/second in BCD).

/// Seconds since 1970-01-01T00:00:00Z for a proleptic Gregorian UTC date,
/// or `None` if a field is out of range or the date is before 1970.
pub fn unix_time(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<u64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 || year < 1970 {
        return None;
    }
    // Days from 1970-01-01 (the "days from civil" algorithm, years from March).
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    u64::try_from(secs).ok()
}

fn days_in_month(year: u16, month: u8) -> u8 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::unix_time;

    #[test]
    fn known_dates() {
        assert_eq!(unix_time(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_time(2000, 3, 1, 0, 0, 0), Some(951_868_800));
        assert_eq!(unix_time(2024, 2, 29, 12, 0, 0), Some(1_709_208_000));
        assert_eq!(unix_time(2026, 11, 26, 5, 44, 17), Some(1_795_671_857));
        assert_eq!(unix_time(2099, 12, 31, 23, 59, 59), Some(4_102_444_799));
    }

    #[test]
    fn invalid_fields_are_rejected() {
        assert_eq!(unix_time(2023, 2, 29, 0, 0, 0), None);
        assert_eq!(unix_time(2024, 13, 1, 0, 0, 0), None);
        assert_eq!(unix_time(2024, 4, 31, 0, 0, 0), None);
        assert_eq!(unix_time(2024, 1, 0, 0, 0, 0), None);
        assert_eq!(unix_time(2024, 1, 1, 24, 0, 0), None);
        assert_eq!(unix_time(1969, 12, 31, 23, 59, 59), None);
    }
}

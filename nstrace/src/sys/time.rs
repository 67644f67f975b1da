//! Event timestamps: the kernel stamps CLOCK_MONOTONIC; users read wall time.

/// Converts `bpf_ktime_get_ns()` stamps to nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic: i128,
    /// Our time namespace's monotonic offset (0 on the host).
    timens_offset: i128,
}

impl Clock {
    /// Samples both clocks now. Wall-clock steps after start are not followed,
    /// which keeps one trace's timestamps monotonic.
    pub fn now() -> Self {
        // Inside a time namespace our CLOCK_MONOTONIC is shifted; the kernel's is not.
        let timens_offset = timens_monotonic_offset_ns();
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as i128 - timens_offset;
        let real = clock_ns(libc::CLOCK_REALTIME) as i128;
        Self {
            realtime_minus_monotonic: real - mono,
            timens_offset,
        }
    }

    /// A clock whose epoch offset is fixed, for tests.
    pub fn with_offset(realtime_minus_monotonic: i128) -> Self {
        Self {
            realtime_minus_monotonic,
            timens_offset: 0,
        }
    }

    /// Now, on the same scale as converted event stamps: comparable with
    /// `Decoded::time_ns` without wall-clock drift.
    pub fn now_as_event_ns(self) -> i128 {
        clock_ns(libc::CLOCK_MONOTONIC) as i128 - self.timens_offset + self.realtime_minus_monotonic
    }

    /// Wall-clock now, for records that no kernel event stamps (pin polls).
    pub fn now_unix_ns() -> i128 {
        clock_ns(libc::CLOCK_REALTIME) as i128
    }

    pub fn to_unix_ns(self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + self.realtime_minus_monotonic
    }
}

fn timens_monotonic_offset_ns() -> i128 {
    std::fs::read_to_string("/proc/self/timens_offsets")
        .ok()
        .and_then(|s| parse_timens_monotonic(&s))
        .unwrap_or(0)
}

/// The `monotonic <secs> <nanos>` line of /proc/PID/timens_offsets.
fn parse_timens_monotonic(s: &str) -> Option<i128> {
    let line = s.lines().find(|l| l.starts_with("monotonic"))?;
    let mut f = line.split_whitespace().skip(1);
    let secs: i128 = f.next()?.parse().ok()?;
    let nanos: i128 = f.next()?.parse().ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; both clock ids exist on every Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (days since epoch, second of day, nanoseconds)
fn split(unix_ns: i128) -> (i64, u32, u32) {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    (days, sod, nanos)
}

/// A formatted time, built on the stack: every record carries one, and
/// `format!` made it the largest cost per record in user space.
#[derive(Clone, Copy)]
pub struct Stamp {
    buf: [u8; 30],
    len: u8,
}

impl Stamp {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }

    fn new() -> Self {
        Stamp {
            buf: [0; 30],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len as usize] = b;
        self.len += 1;
    }

    /// `v` in exactly `width` decimal digits (zero-padded, high digits cut).
    fn digits(&mut self, mut v: u64, width: usize) {
        let at = self.len as usize;
        for i in (0..width).rev() {
            self.buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.len += width as u8;
    }
}

impl std::ops::Deref for Stamp {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for Stamp {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `2026-11-22T20:31:05.123456789Z`
pub fn rfc3339(unix_ns: i128) -> Stamp {
    let (days, sod, nanos) = split(unix_ns);
    let (y, mo, d) = civil_from_days(days);
    let mut s = Stamp::new();
    s.digits(y.clamp(0, 9999) as u64, 4);
    s.push(b'-');
    s.digits(mo.into(), 2);
    s.push(b'-');
    s.digits(d.into(), 2);
    s.push(b'T');
    clock(&mut s, sod);
    s.push(b'.');
    s.digits(nanos.into(), 9);
    s.push(b'Z');
    s
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`rfc3339`]: `2026-11-22T20:31:05.123456789Z` (UTC, a
/// fraction of up to nine digits) in Unix nanoseconds; `None` if malformed.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let frac = &s[19..s.len() - 1];
    let nanos: i128 = match frac.strip_prefix('.') {
        None if frac.is_empty() => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|c| c.is_ascii_digit()) => {
            f.parse::<i128>().ok()? * 10i128.pow(9 - f.len() as u32)
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = i128::from(days) * 86_400 + i128::from(h * 3600 + mi * 60 + sec);
    Some(secs * 1_000_000_000 + nanos)
}

/// `20:31:05.123456` (UTC), for the text timeline.
pub fn time_of_day(unix_ns: i128) -> Stamp {
    let (_, sod, nanos) = split(unix_ns);
    let mut s = Stamp::new();
    clock(&mut s, sod);
    s.push(b'.');
    s.digits((nanos / 1000).into(), 6);
    s
}

fn clock(s: &mut Stamp, sod: u32) {
    s.digits((sod / 3600).into(), 2);
    s.push(b':');
    s.digits((sod / 60 % 60).into(), 2);
    s.push(b':');
    s.digits((sod % 60).into(), 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2024-02-29T12:34:56.000000007Z: a leap day.
        assert_eq!(
            rfc3339(1_709_210_096 * 1_000_000_000 + 7),
            "2024-02-29T12:34:56.000000007Z"
        );
        assert_eq!(
            rfc3339(4_102_444_799 * 1_000_000_000 + 999_999_999),
            "2099-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn rfc3339_parses_back() {
        for ns in [
            0i128,
            1_709_210_096_000_000_007,
            1_795_000_000_123_456_789,
            951_782_400_000_000_000,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns), "{}", rfc3339(ns));
        }
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56Z"),
            Some(1_709_210_096_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.5Z"),
            Some(1_709_210_096_500_000_000)
        );
        assert_eq!(parse_rfc3339("2024-02-29 12:34:56Z"), None);
        assert_eq!(parse_rfc3339("2024-13-29T12:34:56Z"), None);
        assert_eq!(parse_rfc3339("nonsense"), None);
    }

    #[test]
    fn time_of_day_is_utc_with_microseconds() {
        assert_eq!(
            time_of_day(1_709_210_096 * 1_000_000_000 + 123_456_789),
            "12:34:56.123456"
        );
    }

    #[test]
    fn reads_time_namespace_offsets() {
        let s = "monotonic           -5         100\nboottime            0         0\n";
        assert_eq!(parse_timens_monotonic(s), Some(-4_999_999_900));
        assert_eq!(parse_timens_monotonic(""), None);
    }

    #[test]
    fn clock_offset_is_applied() {
        let c = Clock::with_offset(1_000);
        assert_eq!(c.to_unix_ns(5), 1_005);
    }
}

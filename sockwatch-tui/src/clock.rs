//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) and their wall-clock meaning.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds on CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Converts kernel monotonic nanoseconds to wall-clock time. Captured once at start, so
/// rendering stays a pure function of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    /// Unix time (ns) minus monotonic time (ns).
    pub offset_ns: i128,
    /// The local time zone's offset from UTC, in seconds.
    pub utc_offset_secs: i64,
}

impl WallClock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            offset_ns: unix - i128::from(mono),
            utc_offset_secs: local_utc_offset(),
        }
    }

    /// Unix time in seconds (with fraction) of a kernel timestamp.
    pub fn unix_secs(&self, kernel_ns: u64) -> f64 {
        (i128::from(kernel_ns) + self.offset_ns) as f64 / 1e9
    }

    /// Local `HH:MM:SS` of a kernel timestamp.
    pub fn local_hms(&self, kernel_ns: u64) -> String {
        let unix_secs = ((i128::from(kernel_ns) + self.offset_ns) / 1_000_000_000) as i64;
        let day_secs = (unix_secs + self.utc_offset_secs).rem_euclid(86_400);
        format!(
            "{:02}:{:02}:{:02}",
            day_secs / 3600,
            day_secs / 60 % 60,
            day_secs % 60
        )
    }
}

fn local_utc_offset() -> i64 {
    // SAFETY: time(NULL) has no preconditions; localtime_r writes into the tm we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_applies_both_offsets() {
        let clock = WallClock {
            offset_ns: 3_600 * 1_000_000_000,
            utc_offset_secs: -7_200,
        };
        // 1h after the epoch, two hours west of UTC: 23:00:05 the day before.
        assert_eq!(clock.local_hms(5_000_000_000), "23:00:05");
        assert!((clock.unix_secs(5_000_000_000) - 3_605.0).abs() < 1e-9);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}

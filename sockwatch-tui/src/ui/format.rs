//! Human-readable numbers for the dashboard.

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration the way top shows ages: `850ms`, `42s`, `3m07s`, `2h05m`, `3d04h`.
pub fn age(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    match secs {
        0 => format!("{}ms", ns / 1_000_000),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn ages_read_like_top() {
        assert_eq!(age(850_000_000), "850ms");
        assert_eq!(age(42_000_000_000), "42s");
        assert_eq!(age(187_000_000_000), "3m07s");
        assert_eq!(age(7_500_000_000_000), "2h05m");
        assert_eq!(age(3 * 86_400_000_000_000 + 4 * 3_600_000_000_000), "3d04h");
    }
}

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

/// Bytes per second, compact enough for a 10-cell column: `0 B/s`, `512 B/s`, `1.5 KiB/s`,
/// `250 MiB/s` (no decimals from 100 up).
pub fn rate(per_sec: u64) -> String {
    const UNITS: [&str; 6] = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s", "PiB/s"];
    let mut value = per_sec as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 99.95 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Events per second in the header: `0`, `0.5`, `12`, `3400`.
pub fn per_second(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        "0".to_owned()
    } else if value < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// Text cut to `width` characters, with `…` where it was cut; `keep_end` cuts the front (so
/// `…ample.com:443` keeps its port).
pub fn fit(text: &str, width: usize, keep_end: bool) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    if keep_end {
        let tail: String = text.chars().skip(count - (width - 1)).collect();
        format!("…{tail}")
    } else {
        let head: String = text.chars().take(width - 1).collect();
        format!("{head}…")
    }
}

/// A round-trip time or latency from microseconds, as `ss` and ping read: `85us`, `1.25ms`,
/// `12.3ms`, `250ms`, `1.50s`.
pub fn micros(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    match us {
        0..=999 => format!("{us}us"),
        1_000..=9_999 => format!("{ms:.2}ms"),
        10_000..=99_999 => format!("{ms:.1}ms"),
        100_000..=999_999 => format!("{ms:.0}ms"),
        _ => format!("{:.2}s", ms / 1000.0),
    }
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
    fn latencies_read_like_ss_and_ping() {
        assert_eq!(micros(85), "85us");
        assert_eq!(micros(1_250), "1.25ms");
        assert_eq!(micros(12_340), "12.3ms");
        assert_eq!(micros(250_400), "250ms");
        assert_eq!(micros(1_500_000), "1.50s");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn rates_fit_ten_cells() {
        assert_eq!(rate(0), "0 B/s");
        assert_eq!(rate(1023), "1023 B/s");
        assert_eq!(rate(1536), "1.5 KiB/s");
        assert_eq!(rate(1023 * 1024), "1023 KiB/s");
        assert_eq!(rate(250 * 1024 * 1024), "250 MiB/s");
        assert_eq!(rate(1 << 50), "1.0 PiB/s");
        for n in [1u64, 999, 1000, 102_348, 1_048_575, 104_857_500] {
            assert!(rate(n).chars().count() <= 10, "{}", rate(n));
        }
    }

    #[test]
    fn text_is_cut_with_an_ellipsis() {
        assert_eq!(fit("localhost:8080", 20, true), "localhost:8080");
        assert_eq!(fit("very.long.example.com:443", 10, true), "…e.com:443");
        assert_eq!(fit("python3-worker", 8, false), "python3…");
        assert_eq!(fit("abc", 0, false), "");
        assert_eq!(per_second(0.0), "0");
        assert_eq!(per_second(2.5), "2.5");
        assert_eq!(per_second(f64::NAN), "0");
        assert_eq!(per_second(1234.4), "1234");
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

//! Summaries of repeated measurements: a median with its range, never a single run.

use std::fmt;

/// The median of some samples, with their minimum and maximum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for no samples; NaNs are left out.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            n,
        })
    }

    /// Shows each number with `format`: "1.52x (1.41–1.60)".
    pub fn show(&self, format: impl Fn(f64) -> String) -> String {
        if self.n == 1 {
            return format(self.median);
        }
        format!(
            "{} ({}–{})",
            format(self.median),
            format(self.min),
            format(self.max)
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(|x| format!("{x:.0}")))
    }
}

/// Pairs `a[i]` with `b[i]` (the same round of interleaved runs) through `f`.
pub fn paired(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// Like [`paired`] over three series.
pub fn paired3(a: &[f64], b: &[f64], c: &[f64], f: impl Fn(f64, f64, f64) -> f64) -> Vec<f64> {
    a.iter()
        .zip(b)
        .zip(c)
        .map(|((&x, &y), &z)| f(x, y, z))
        .collect()
}

/// `added / floor_added`, or NaN when the floor added nothing measurable (the ratio would be
/// noise divided by noise).
pub fn multiple(added: f64, floor_added: f64) -> f64 {
    if floor_added <= 0.0 {
        f64::NAN
    } else {
        added / floor_added
    }
}

/// Nanoseconds for humans: "812 ns", "3.4 µs", "12.5 ms".
pub fn duration_ns(ns: f64) -> String {
    let abs = ns.abs();
    if abs < 1e3 {
        format!("{ns:.0} ns")
    } else if abs < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if abs < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A count per second for humans: "212k/s", "1.2M/s", "830/s".
pub fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.0}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}

/// "1.52x".
pub fn times(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x >= 100.0 {
        format!("{x:.0}x")
    } else if x >= 10.0 {
        format!("{x:.1}x")
    } else {
        format!("{x:.2}x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max, odd.n), (3.0, 1.0, 5.0, 3));
        let even = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::NAN, 2.0]).unwrap().n, 1);
    }

    #[test]
    fn summaries_show_the_range_unless_there_is_one_sample() {
        let s = Summary::of(&[1.5, 1.41, 1.6]).unwrap();
        assert_eq!(s.show(times), "1.50x (1.41x–1.60x)");
        assert_eq!(Summary::of(&[812.4]).unwrap().show(duration_ns), "812 ns");
    }

    #[test]
    fn pairs_are_taken_round_by_round() {
        assert_eq!(paired(&[1.0, 2.0], &[3.0, 4.0], |a, b| b / a), [3.0, 2.0]);
        let multiples = paired3(&[100.0], &[150.0], &[200.0], |a, b, c| {
            multiple(c - a, b - a)
        });
        assert_eq!(multiples, [2.0]);
        assert!(multiple(5.0, 0.0).is_nan());
        assert!(multiple(5.0, -1.0).is_nan());
    }

    #[test]
    fn human_units() {
        assert_eq!(duration_ns(812.0), "812 ns");
        assert_eq!(duration_ns(3_412.0), "3.41 µs");
        assert_eq!(duration_ns(12_500_000.0), "12.50 ms");
        assert_eq!(rate(212_345.0), "212k/s");
        assert_eq!(rate(1_234_567.0), "1.23M/s");
        assert_eq!(rate(830.0), "830/s");
        assert_eq!(times(1.523), "1.52x");
        assert_eq!(times(12.34), "12.3x");
        assert_eq!(times(f64::NAN), "n/a");
    }
}

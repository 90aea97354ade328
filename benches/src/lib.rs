//! Helpers shared by the benchmarks.

/// The `p` quantile (0..=1) of `v` (sorts it).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

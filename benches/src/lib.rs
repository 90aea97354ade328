//! Helpers shared by the benchmarks.

/// The `p` quantile (0..=1) of `v` (sorts it).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A small xorshift for shuffling the order of contenders within a round (no
/// dependency needed).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `seed` and the process id, so runs differ.
    pub fn seeded(seed: u64) -> Rng {
        Rng((seed ^ u64::from(std::process::id())) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes), to print and
/// store beside figures taken on a machine that may be busy.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

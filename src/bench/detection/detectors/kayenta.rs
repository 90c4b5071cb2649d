//! Kayenta's judge: Mann-Whitney on per-minute values.

use super::*;
use statrs::distribution::{ContinuousCDF, Normal};

/// Kayenta's Mann-Whitney judge on per-minute values.
pub(crate) struct MannWhitney {
    pub(crate) windows: Windows,
    pub(crate) metric: Metric,
    pub(crate) canary: Vec<f64>,
    pub(crate) baseline: Vec<f64>,
}

/// Two-sided Mann-Whitney: returns (p-value, Hodges–Lehmann shift of canary over baseline).
pub(crate) fn mann_whitney(x: &[f64], y: &[f64]) -> (f64, f64) {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, usize)> = x
        .iter()
        .map(|v| (*v, 0))
        .chain(y.iter().map(|v| (*v, 1)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ranks = vec![0.0; all.len()];
    let mut i = 0;
    let mut tie_term = 0.0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for rank in ranks.iter_mut().take(j + 1).skip(i) {
            *rank = r;
        }
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let r1: f64 = all
        .iter()
        .zip(&ranks)
        .filter(|(a, _)| a.1 == 0)
        .map(|(_, r)| r)
        .sum();
    let u = r1 - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let sd = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let p = if sd > 0.0 {
        let z = (u - n1 * n2 / 2.0).abs() / sd;
        2.0 * (1.0 - Normal::new(0.0, 1.0).expect("normal").cdf(z))
    } else {
        1.0
    };
    let mut diffs: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| a - b)).collect();
    diffs.sort_by(|a, b| a.total_cmp(b));
    (p, diffs.get(diffs.len() / 2).copied().unwrap_or(0.0))
}

impl Detector for MannWhitney {
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision {
        self.windows.add(obs);
        if !t.is_multiple_of(60) {
            return Decision::Continue;
        }
        let (c, b, missing) = self.windows.take();
        if !missing && b.total > 0 {
            let (cb, ct) = bad_total(&c, self.metric, 0);
            let (bb, bt) = bad_total(&b, self.metric, 0);
            self.canary.push(cb as f64 / ct as f64);
            self.baseline.push(bb as f64 / bt as f64);
        }
        if self.canary.len() < 5 {
            return Decision::Continue;
        }
        let (p, shift) = mann_whitney(&self.canary, &self.baseline);
        let base = {
            let mut v = self.baseline.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2].max(1e-9)
        };
        // a metric fails when the difference is significant at 98% and beyond the 25% tolerance
        let fails = p < 0.02 && shift / base > 0.25;
        let score = if fails { 0.0 } else { 100.0 };
        if score < 75.0 {
            Decision::Rollback
        } else if t >= 1800 && score >= 95.0 {
            Decision::Promote
        } else {
            Decision::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mann_whitney_separates_shifted_samples_and_not_equal_ones() {
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let (p, shift) = mann_whitney(&x, &x);
        assert!(p > 0.99 && shift == 0.0, "{p} {shift}");
        let y: Vec<f64> = x.iter().map(|v| v + 30.0).collect();
        let (p, shift) = mann_whitney(&y, &x);
        assert!(p < 1e-6, "{p}");
        assert_eq!(shift, 30.0, "the Hodges–Lehmann shift");
        // nothing but ties: no evidence either way
        assert_eq!(mann_whitney(&[1.0; 5], &[1.0; 5]).0, 1.0);
    }
}

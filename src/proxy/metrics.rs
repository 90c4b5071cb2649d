//! Per-release request metrics: counts by status class, a latency histogram, upstream errors,
//! labelled by service, environment and release. Requests only touch atomics; the registry's
//! lock is taken when a route snapshot is built, never per request.
//!
//! Exported in the Prometheus text format on the admin listener, and readable in process as the
//! built-in sensors' counts (`proxy.errors`, `proxy.latency`).

use crate::control::judge::Counts;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Histogram bucket bounds, in seconds (Prometheus' `le`). They include the usual latency
/// objectives' thresholds (100 ms, 300 ms, 500 ms, 1 s), since a threshold between buckets
/// cannot be counted.
pub const BUCKETS_SECONDS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One release's counters.
#[derive(Debug, Default)]
pub struct ReleaseMetrics {
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub by_class: [AtomicU64; 5],
    /// Requests that failed before a response: connect failures, resets, timeouts.
    pub upstream_errors: AtomicU64,
    /// Requests per latency bucket: index `i` counts those above bound `i - 1` and within
    /// bound `i`, the last those above every bound. Not cumulative, so a request touches one
    /// counter; the cumulative counts (Prometheus' `le`) are summed when read.
    pub latency_counts: [AtomicU64; 13],
    /// Sum of latencies in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Copies of live requests sent to this release (shadow traffic; their answers are counted
    /// above like any other), and copies dropped because the mirror's worker was behind.
    pub mirror_sent: AtomicU64,
    pub mirror_dropped: AtomicU64,
}

impl ReleaseMetrics {
    /// Records one finished request. `status` is `None` when no response came from upstream.
    pub fn record(&self, status: Option<u16>, latency: Duration) {
        match status {
            Some(s) if (100..600).contains(&s) => {
                self.by_class[(s / 100 - 1) as usize].fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.upstream_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let secs = latency.as_secs_f64();
        let bucket = BUCKETS_SECONDS.partition_point(|le| *le < secs);
        self.latency_counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// The cumulative counts: requests within each bound, and all requests last (`+Inf`).
    /// One read of each counter, so never decreasing from bound to bound.
    pub fn cumulative(&self) -> [u64; 13] {
        let mut sum = 0;
        std::array::from_fn(|i| {
            sum += self.latency_counts[i].load(Ordering::Relaxed);
            sum
        })
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.cumulative()[12]
    }

    /// The `proxy.errors` sensor: bad = 5xx and upstream errors.
    ///
    /// The counters are separate atomics updated one after the other, so a read in the middle
    /// of a `record` can see a request's class before its total: the total is never taken as
    /// less than what it must contain.
    pub fn errors(&self) -> Counts {
        let bad = self.by_class[4].load(Ordering::Relaxed) + self.upstream_errors.load(Ordering::Relaxed);
        Counts::new(bad, self.total().max(bad))
    }

    /// The `proxy.latency` sensor: bad = slower than `threshold`, which must be a bucket bound.
    /// Both counts come from one read of each bucket: never a negative count.
    pub fn slower_than(&self, threshold: Duration) -> Option<Counts> {
        let t = threshold.as_secs_f64();
        let i = BUCKETS_SECONDS.iter().position(|b| (b - t).abs() < 1e-9)?;
        let counts = self.cumulative();
        Some(Counts::new(counts[12] - counts[i], counts[12]))
    }
}

/// (service, environment, release, A/B segment: empty for requests outside any segment).
type Key = (String, String, String, String);

/// All releases' metrics, by (service, environment, release), and apart, each release's
/// requests from an A/B segment: a request is counted in exactly one series.
#[derive(Debug, Default)]
pub struct Registry {
    releases: Mutex<BTreeMap<Key, Arc<ReleaseMetrics>>>,
    /// Fetches of a JWKS URL that gave a usable key set, and that failed.
    pub jwks_fetched: std::sync::atomic::AtomicU64,
    pub jwks_failed: std::sync::atomic::AtomicU64,
    /// Families rendered by whoever embeds the proxy (the controller's own metrics), appended
    /// to the exposition as they are.
    pub extra: arc_swap::ArcSwap<String>,
}

impl Registry {
    /// The metrics of a release, created on first use (at route-building time).
    pub fn release(&self, service: &str, environment: &str, release: &str) -> Arc<ReleaseMetrics> {
        self.segment(service, environment, release, "")
    }

    /// The metrics of a release's requests from an A/B segment, created on first use.
    pub fn segment(
        &self,
        service: &str,
        environment: &str,
        release: &str,
        segment: &str,
    ) -> Arc<ReleaseMetrics> {
        let mut map = self
            .releases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry((
            service.to_owned(),
            environment.to_owned(),
            release.to_owned(),
            segment.to_owned(),
        ))
        .or_default()
        .clone()
    }

    /// A release's metrics outside any segment, if it has any.
    pub fn get(&self, service: &str, environment: &str, release: &str) -> Option<Arc<ReleaseMetrics>> {
        self.get_segment(service, environment, release, "")
    }

    /// A release's metrics of one segment (`""`: outside any), if it has any.
    pub fn get_segment(
        &self,
        service: &str,
        environment: &str,
        release: &str,
        segment: &str,
    ) -> Option<Arc<ReleaseMetrics>> {
        let map = self
            .releases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(
            service.to_owned(),
            environment.to_owned(),
            release.to_owned(),
            segment.to_owned(),
        ))
        .cloned()
    }

    /// Every series of a release: outside any segment and in each (together, all its requests).
    pub fn all(&self, service: &str, environment: &str, release: &str) -> Vec<Arc<ReleaseMetrics>> {
        let map = self
            .releases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter(|((s, e, r, _), _)| s == service && e == environment && r == release)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let map = self
            .releases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        out.push_str(&self.extra.load());
        let labels = |(s, e, r, seg): &Key| {
            let mut l = format!(
                "service=\"{}\",environment=\"{}\",release=\"{}\"",
                esc(s),
                esc(e),
                esc(r)
            );
            if !seg.is_empty() {
                let _ = write!(l, ",segment=\"{}\"", esc(seg));
            }
            l
        };
        out.push_str("# HELP autopilot_proxy_requests_total Requests answered, by status class (an A/B segment's requests only in the series labelled with it).\n");
        out.push_str("# TYPE autopilot_proxy_requests_total counter\n");
        for (k, m) in &map {
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "autopilot_proxy_requests_total{{{},code=\"{class}\"}} {}",
                    labels(k),
                    m.by_class[i].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP autopilot_proxy_upstream_errors_total Requests that got no response from upstream.\n",
        );
        out.push_str("# TYPE autopilot_proxy_upstream_errors_total counter\n");
        for (k, m) in &map {
            let _ = writeln!(
                out,
                "autopilot_proxy_upstream_errors_total{{{}}} {}",
                labels(k),
                m.upstream_errors.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP autopilot_proxy_request_duration_seconds Time from request to response end.\n");
        out.push_str("# TYPE autopilot_proxy_request_duration_seconds histogram\n");
        for (k, m) in &map {
            let counts = m.cumulative();
            for (le, n) in BUCKETS_SECONDS.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "autopilot_proxy_request_duration_seconds_bucket{{{},le=\"{le}\"}} {n}",
                    labels(k),
                );
            }
            let total = counts[12];
            let _ = writeln!(
                out,
                "autopilot_proxy_request_duration_seconds_bucket{{{},le=\"+Inf\"}} {total}",
                labels(k)
            );
            let _ = writeln!(
                out,
                "autopilot_proxy_request_duration_seconds_sum{{{}}} {}",
                labels(k),
                m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "autopilot_proxy_request_duration_seconds_count{{{}}} {total}",
                labels(k)
            );
        }
        out.push_str(
            "# HELP autopilot_proxy_mirror_copies_total Copies of live requests sent to a release (counted in its requests too), or dropped when the mirror was behind.\n",
        );
        out.push_str("# TYPE autopilot_proxy_mirror_copies_total counter\n");
        for (k, m) in &map {
            for (result, n) in [("sent", &m.mirror_sent), ("dropped", &m.mirror_dropped)] {
                let _ = writeln!(
                    out,
                    "autopilot_proxy_mirror_copies_total{{{},result=\"{result}\"}} {}",
                    labels(k),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP autopilot_proxy_jwks_fetches_total Fetches of the JWKS URL, by result.\n");
        out.push_str("# TYPE autopilot_proxy_jwks_fetches_total counter\n");
        for (result, n) in [("ok", &self.jwks_fetched), ("error", &self.jwks_failed)] {
            let _ = writeln!(
                out,
                "autopilot_proxy_jwks_fetches_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Escapes a Prometheus label value.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_feed_the_built_in_sensors() {
        let m = ReleaseMetrics::default();
        m.record(Some(200), Duration::from_millis(40));
        m.record(Some(503), Duration::from_millis(20));
        m.record(None, Duration::from_millis(400));
        m.record(Some(404), Duration::from_millis(350));
        assert_eq!(m.errors(), Counts::new(2, 4));
        assert_eq!(m.slower_than(Duration::from_millis(300)), Some(Counts::new(2, 4)));
        assert_eq!(
            m.slower_than(Duration::from_millis(333)),
            None,
            "not a bucket bound"
        );
    }

    #[test]
    fn a_latency_on_a_bound_is_within_it_and_the_exposition_is_cumulative() {
        let m = ReleaseMetrics::default();
        m.record(Some(200), Duration::from_millis(100));
        m.record(Some(200), Duration::from_micros(100_001));
        m.record(Some(200), Duration::from_secs(60));
        let c = m.cumulative();
        let at = |s: f64| c[BUCKETS_SECONDS.iter().position(|b| *b == s).unwrap()];
        assert_eq!((at(0.05), at(0.1), at(0.25), at(10.0), c[12]), (0, 1, 2, 2, 3));
        assert_eq!(m.slower_than(Duration::from_millis(100)), Some(Counts::new(2, 3)));
        let r = Registry::default();
        let m = r.release("s", "e", "v1");
        m.record(Some(200), Duration::from_millis(1));
        m.record(Some(200), Duration::from_millis(7));
        let text = r.render();
        assert!(text.contains("le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.01\"} 2\n"), "{text}");
        assert!(text.contains("le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2\n"), "{text}");
    }

    #[test]
    fn a_read_in_the_middle_of_a_record_never_counts_below_zero() {
        // `record` bumps a request's class before its latency bucket, which is what the total
        // is summed from; a sensor read between the two sees the error and not the request
        // (a subtraction there panicked, or wrapped to 2^64 in a release build)
        let m = ReleaseMetrics::default();
        m.record(Some(200), Duration::from_millis(40));
        m.by_class[4].fetch_add(1, Ordering::Relaxed);
        m.upstream_errors.fetch_add(1, Ordering::Relaxed);
        assert_eq!(m.errors(), Counts::new(2, 2));
        assert_eq!(m.slower_than(Duration::from_millis(300)), Some(Counts::new(0, 1)));
    }

    #[test]
    fn the_exposition_has_one_family_each_with_labels() {
        let r = Registry::default();
        r.release("checkout", "prod", "v\"2")
            .record(Some(200), Duration::from_millis(1));
        let text = r.render();
        assert!(text.contains("autopilot_proxy_requests_total{service=\"checkout\",environment=\"prod\",release=\"v\\\"2\",code=\"2xx\"} 1"));
        assert!(text.contains("le=\"+Inf\"} 1"));
        assert_eq!(text.matches("# TYPE").count(), 5);
        assert!(text.contains("autopilot_proxy_mirror_copies_total{service=\"checkout\",environment=\"prod\",release=\"v\\\"2\",result=\"sent\"} 0"));
        assert!(text.contains("autopilot_proxy_jwks_fetches_total{result=\"error\"} 0"));
    }
}

//! The proxy's latency histogram as the monitor sees it: the same log-linear buckets as
//! `tcf_proxy::stats` (32 per power of two of microseconds). History keeps it sparse as
//! (bucket upper bound in µs, count), so stored data keeps its meaning if the proxy's bucket
//! layout changes; it is merged for rollups and quantiles, and folded into Prometheus `le`
//! buckets.

/// Sub-buckets per power of two, as log2 (`tcf_proxy::stats::SUB_BITS`).
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Buckets of the proxy's histogram (`tcf_proxy::BUCKETS`; a test pins the two together).
pub const BUCKETS: usize = SUB * (34 - SUB_BITS as usize + 1);

/// Upper bound of a proxy bucket in microseconds (mirrors `tcf_proxy::stats::bucket_upper`;
/// a test pins the two together).
pub fn bucket_upper_micros(index: usize) -> u64 {
    if index < SUB {
        return index as u64 + 1;
    }
    let k = SUB_BITS as usize;
    let power = index / SUB + k - 1;
    let sub = (index % SUB) as u64;
    (SUB as u64 + sub + 1) << (power - k)
}

/// A sparse histogram: (upper bound in µs, count), bounds ascending, no zero counts.
pub type Sparse = Vec<(u64, u64)>;

/// The non-zero buckets of a dense proxy histogram.
pub fn sparse(dense: &[u64]) -> Sparse {
    dense
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (bucket_upper_micros(i), *n))
        .collect()
}

/// Add `other` into `into`, keeping it sorted and sparse.
pub fn merge(into: &mut Sparse, other: &[(u64, u64)]) {
    let mut all: std::collections::BTreeMap<u64, u64> = into.iter().copied().collect();
    for (bound, n) in other {
        *all.entry(*bound).or_insert(0) += n;
    }
    *into = all.into_iter().filter(|(_, n)| *n > 0).collect();
}

pub fn total(h: &[(u64, u64)]) -> u64 {
    h.iter().map(|(_, n)| n).sum()
}

/// The latency in milliseconds below which a share `q` of the observations fell.
pub fn quantile_ms(h: &[(u64, u64)], q: f64) -> Option<f64> {
    let total = total(h);
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (bound, n) in h {
        seen += n;
        if seen >= rank {
            return Some(*bound as f64 / 1000.0);
        }
    }
    None
}

/// The `le` bounds (seconds) of the Prometheus histogram we expose.
pub const PROM_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Cumulative counts per `PROM_BOUNDS` entry, plus the total (`+Inf`) and an approximate sum in
/// seconds (each observation at its bucket's upper bound: the proxy keeps no exact sum).
/// A proxy bucket counts under the first bound at or above its upper edge, so `le` never
/// under-reports a latency.
pub fn prometheus_buckets(dense: &[u64]) -> (Vec<u64>, u64, f64) {
    let mut cumulative = vec![0u64; PROM_BOUNDS.len()];
    let mut total = 0;
    let mut sum = 0.0;
    for (i, n) in dense.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let upper_s = bucket_upper_micros(i) as f64 / 1e6;
        total += n;
        sum += upper_s * *n as f64;
        for (slot, bound) in cumulative.iter_mut().zip(PROM_BOUNDS) {
            if upper_s <= bound + 1e-12 {
                *slot += n;
            }
        }
    }
    (cumulative, total, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_and_quantiles_match_the_proxy() {
        let stats = tcf_proxy::Stats::default();
        for ms in [1u64, 2, 2, 3, 5, 8, 13, 100, 250, 1000] {
            stats.record(200, Duration::from_millis(ms), false);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.latency.len(), BUCKETS);
        let h = sparse(&snap.latency);
        for q in [0.1, 0.5, 0.9, 0.99] {
            let ours = quantile_ms(&h, q).unwrap();
            let theirs = snap.quantile(q).unwrap().as_secs_f64() * 1000.0;
            assert!((ours - theirs).abs() < 1e-9, "q{q}: {ours} vs {theirs}");
        }
    }

    #[test]
    fn merge_adds_and_prometheus_buckets_are_cumulative() {
        let mut a: Sparse = vec![(3, 2), (40, 1)];
        merge(&mut a, &[(3, 1), (50, 4)]);
        assert_eq!(a, vec![(3, 3), (40, 1), (50, 4)]);
        let mut dense = vec![0u64; BUCKETS];
        dense[3] = 5; // <= 4 µs
        dense[380] = 2; // tens of milliseconds
        assert!((10_000..100_000).contains(&bucket_upper_micros(380)));
        let (cum, total, _) = prometheus_buckets(&dense);
        assert_eq!(total, 7);
        assert_eq!(cum[0], 5);
        assert!(cum.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*cum.last().unwrap(), 7);
    }
}

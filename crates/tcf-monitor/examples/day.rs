//! A day of samples through the real `Monitor`, clock fast-forwarded: the example platform's
//! six services (gateway with two instances) under a steady load with noise, one tick every
//! 5 s. Prints bytes on disk per stored raw sample and per service per day (bench/monitor).
//!
//!   cargo run --release -p tcf-monitor --example day [-- SERVICES]

use tcf_monitor::collect::{ColourTick, HostTick, InstanceTick, ServiceTick, Tick};
use tcf_monitor::latency::BUCKETS;
use tcf_monitor::{rules, Monitor, Retention};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let services: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let dir = std::env::temp_dir().join(format!("tcf-monitor-day-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut m = Monitor::open(
        &dir,
        Retention::default(),
        rules::build_rules(&Default::default())?,
    )?;
    let start: i64 = 1_764_028_800_000; // a midnight, UTC
    let ticks = 24 * 3600 / 5;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 1000) as f64 / 1000.0
    };
    let mut requests = vec![0u64; services];
    let mut errors = vec![0u64; services];
    let mut latency = vec![vec![0u64; BUCKETS]; services];
    let mut net = (0u64, 0u64);
    // Latencies of about 1 ms and up: the proxy bucket of 1 ms and the next few.
    let one_ms = (0..BUCKETS)
        .find(|i| tcf_monitor::latency::bucket_upper_micros(*i) >= 1000)
        .unwrap_or(0);
    for t in 0..ticks {
        let mut svcs = Vec::new();
        for s in 0..services {
            // ~100 req/s with noise; latencies spread over a few buckets around 1–5 ms.
            let n = (500.0 * (0.8 + 0.4 * noise())) as u64;
            requests[s] += n;
            errors[s] += u64::from(noise() < 0.05);
            for k in 0..n {
                latency[s][one_ms + (k % 7) as usize * 8] += 1;
            }
            let name = if s == 0 {
                "gateway".to_string()
            } else {
                format!("svc{s}")
            };
            let instances = (1..=if s == 0 { 2 } else { 1 })
                .map(|i| InstanceTick {
                    id: format!("{name}-blue-{i}"),
                    colour: "blue".into(),
                    version: "v1".into(),
                    cpu_percent: 2.0 + 3.0 * noise(),
                    rss_bytes: 20_000_000 + (noise() * 100_000.0) as u64,
                    memory_limit_bytes: None,
                    open_fds: Some(12),
                    restarts: 0,
                    healthy: true,
                    crashloop: false,
                })
                .collect();
            svcs.push(ServiceTick {
                name,
                colours: vec![ColourTick {
                    name: "blue".into(),
                    version: "v1".into(),
                    requests: requests[s],
                    responses_2xx: requests[s] - errors[s],
                    responses_4xx: 0,
                    responses_5xx: errors[s],
                    proxy_errors: 0,
                    broken_responses: 0,
                    latency: latency[s].clone(),
                }],
                instances,
                healthy_instances: if s == 0 { 2 } else { 1 },
                cert_expiry_days: None,
            });
        }
        net.0 += (noise() * 1e6) as u64;
        net.1 += (noise() * 1e6) as u64;
        let tick = Tick {
            at_ms: start + t * 5000,
            services: svcs,
            dependencies: Vec::new(),
            host: HostTick {
                cpu_percent: Some(10.0 + 5.0 * noise()),
                load1: Some(0.5 + noise()),
                memory: Some((4_000_000_000 + (noise() * 1e7) as u64, 16_000_000_000)),
                disk: Some((50_000_000_000, 100_000_000_000)),
                network: Some(net),
            },
            backup: None,
        };
        if let Some(e) = m.ingest(tick, true).write_error {
            return Err(e.into());
        }
    }
    let st = m.store_stats();
    println!(
        "a day of 5 s ticks, {services} services (the example platform's shape), simulated clock"
    );
    println!("{:<48}{}", "series", st.series);
    println!("{:<48}{}", "raw samples written", st.raw_samples_written);
    println!(
        "{:<48}{:.2}",
        "raw tier: bytes per raw sample",
        st.raw_bytes_written as f64 / st.raw_samples_written as f64
    );
    println!(
        "{:<48}{:.2}",
        "on disk (all tiers, index): bytes per sample",
        st.bytes_on_disk as f64 / st.raw_samples_written as f64
    );
    println!(
        "{:<48}{:.1}",
        "on disk per service per day (KiB)",
        st.bytes_on_disk as f64 / services as f64 / 1024.0
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

//! The exposition is checked line by line against the OpenMetrics text format, by a small
//! checker written from the specification rather than from the encoder, and the series are
//! checked for what was recorded.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use walletd_runtime::driver::DriverStats;

use super::{Metrics, Outcome};

/// Label pairs, in the order written.
type Labels = Vec<(String, String)>;

/// One sample: its name, its labels in order, its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A metric family: its type and samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

/// Parses OpenMetrics text and checks its rules: every sample belongs to the family whose
/// `# TYPE` came last, with a suffix its type allows; no family twice; values are numbers;
/// histograms have cumulative buckets ending at `+Inf`, equal to their `_count`; the text
/// ends with `# EOF`.
fn check_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition must end with `# EOF`")?;
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (number, line) in body.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_metric_name(name) {
                return Err(fail("bad metric name"));
            }
            match keyword {
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "unknown",
                    ];
                    if !known.contains(&kind) {
                        return Err(fail("unknown type"));
                    }
                    if families.contains_key(name) {
                        return Err(fail("family declared twice"));
                    }
                    families.insert(
                        name.to_string(),
                        Family {
                            kind: kind.to_string(),
                            samples: Vec::new(),
                        },
                    );
                    current = Some(name.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => return Err(fail("unknown comment")),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|why| fail(&why))?;
        let family_name = current
            .as_deref()
            .ok_or_else(|| fail("sample before any TYPE"))?;
        let family = families.get_mut(family_name).expect("inserted at its TYPE");
        let suffix = sample
            .name
            .strip_prefix(family_name)
            .ok_or_else(|| fail("sample outside its family"))?;
        let allowed: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            _ => &["_info"],
        };
        if !allowed.contains(&suffix) {
            return Err(fail("suffix not allowed for the family's type"));
        }
        if suffix == "_bucket" && sample.label("le").is_none() {
            return Err(fail("bucket without `le`"));
        }
        family.samples.push(sample);
    }
    for (name, family) in &families {
        if family.kind == "histogram" {
            check_histogram(name, family)?;
        }
    }
    Ok(families)
}

/// Each series of a histogram (its labels but `le`): `le` ascending to `+Inf`, counts
/// cumulative, the `+Inf` bucket equal to `_count`.
fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    let mut series: BTreeMap<Labels, Vec<&Sample>> = BTreeMap::new();
    for sample in &family.samples {
        let key = sample
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        series.entry(key).or_default().push(sample);
    }
    for (labels, samples) in series {
        let fail = |why: &str| format!("histogram {name} {labels:?}: {why}");
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .map(|s| {
                (
                    parse_value(s.label("le").unwrap_or("")).unwrap_or(f64::NAN),
                    s.value,
                )
            })
            .collect();
        let count = samples.iter().find(|s| s.name == format!("{name}_count"));
        let sum = samples.iter().find(|s| s.name == format!("{name}_sum"));
        let (Some(count), Some(_sum)) = (count, sum) else {
            return Err(fail("no _count or no _sum"));
        };
        let ascending = buckets
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1);
        if !ascending {
            return Err(fail("buckets not ascending and cumulative"));
        }
        match buckets.last() {
            Some(&(le, total)) if le == f64::INFINITY && total == count.value => {}
            _ => return Err(fail("the last bucket must be le=\"+Inf\" and equal _count")),
        }
    }
    Ok(())
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("{text:?} is not a number")),
    }
}

/// `name{k="v",...} value`, label values with the escapes `\\`, `\"` and `\n`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("a space must precede the value")?;
    // An optional timestamp may follow the value; none is written here.
    if value.contains(' ') {
        return Err("unexpected text after the value".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

/// The labels up to the closing brace, and the text after it.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = text.split_once("=\"").ok_or("a label needs =\"")?;
        if !is_metric_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err("bad escape in a label value".into()),
                },
                Some((at, '"')) => break at,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((key.to_string(), value));
        text = &after[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

fn samples<'a>(families: &'a BTreeMap<String, Family>, family: &str) -> &'a [Sample] {
    &families
        .get(family)
        .unwrap_or_else(|| panic!("family {family} missing"))
        .samples
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn value(
    families: &BTreeMap<String, Family>,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples(families, family)
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .unwrap_or_else(|| panic!("{name} {labels:?} missing"))
        .value
}

/// Two partitions, the first with a few of everything recorded.
fn metrics_with_recorded_stats() -> Metrics {
    let busy = Arc::new(DriverStats::default());
    busy.batches.store(4, Ordering::Relaxed);
    busy.syncs.store(3, Ordering::Relaxed);
    for sync_us in [80, 900, 40_000] {
        busy.sync_us.record(sync_us);
    }
    for records in [1, 3, 1000] {
        busy.batch_records.record(records);
    }
    busy.inbox_depth.record(7);
    busy.snapshot_us.record(1_500_000);
    busy.try_to_decision_us.record(2_000);
    busy.decision_to_finish_us.record(0);
    let idle = Arc::new(DriverStats::default());
    let metrics = Metrics::new(vec![(0, busy), (1, idle)], Some(1 << 30));
    metrics.request("/v1/accounts", 201, Duration::from_millis(3));
    metrics.request("/v1/accounts", 201, Duration::from_micros(40));
    metrics.request("/v1/wallet/balance_transfer", 503, Duration::from_secs(2));
    metrics.request("unmatched", 404, Duration::from_micros(10));
    metrics.transfer(Outcome::Committed);
    metrics.in_flight().inc();
    metrics
}

#[test]
fn the_exposition_is_valid_openmetrics_text() {
    let text = metrics_with_recorded_stats().encode();
    let families = check_exposition(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
    assert!(families.len() >= 20, "{text}");
}

#[test]
fn every_histogram_has_buckets_sum_and_count_for_every_series() {
    let text = metrics_with_recorded_stats().encode();
    let families = check_exposition(&text).unwrap();
    for family in [
        "walletd_http_request_duration_seconds",
        "walletd_partition_fsync_seconds",
        "walletd_partition_batch_records",
        "walletd_partition_inbox_depth",
        "walletd_partition_snapshot_duration_seconds",
        "walletd_partition_transfer_try_to_decision_seconds",
        "walletd_partition_transfer_decision_to_finish_seconds",
    ] {
        assert_eq!(families[family].kind, "histogram", "{family}");
        for suffix in ["_bucket", "_sum", "_count"] {
            let name = format!("{family}{suffix}");
            assert!(
                samples(&families, family).iter().any(|s| s.name == name),
                "{name} missing from\n{text}"
            );
        }
    }
    // One series per partition, the idle one included (at zero).
    let p1 = [("partition", "1")];
    let fsync = "walletd_partition_fsync_seconds";
    assert_eq!(value(&families, fsync, &format!("{fsync}_count"), &p1), 0.0);
}

#[test]
fn driver_histograms_count_what_was_recorded_in_seconds() {
    let families = check_exposition(&metrics_with_recorded_stats().encode()).unwrap();
    let fsync = "walletd_partition_fsync_seconds";
    let p0 = [("partition", "0")];
    let bucket = |le: &str| {
        value(
            &families,
            fsync,
            &format!("{fsync}_bucket"),
            &[("partition", "0"), ("le", le)],
        )
    };
    assert_eq!(value(&families, fsync, &format!("{fsync}_count"), &p0), 3.0);
    let sum = value(&families, fsync, &format!("{fsync}_sum"), &p0);
    assert!((sum - 0.04098).abs() < 1e-9, "{sum}");
    // 80 µs is over the 50 µs bound; 900 µs within 1 ms; 40 ms within 50 ms.
    assert_eq!(bucket("0.00005"), 0.0);
    assert_eq!(bucket("0.0001"), 1.0);
    assert_eq!(bucket("0.001"), 2.0);
    assert_eq!(bucket("0.025"), 2.0);
    assert_eq!(bucket("0.05"), 3.0);
    assert_eq!(bucket("+Inf"), 3.0);
    let records = "walletd_partition_batch_records";
    let at = |le: &str| {
        value(
            &families,
            records,
            &format!("{records}_bucket"),
            &[("partition", "0"), ("le", le)],
        )
    };
    assert_eq!((at("1.0"), at("4.0"), at("1024.0")), (1.0, 2.0, 3.0));
    assert_eq!(
        value(&families, records, &format!("{records}_sum"), &p0),
        1004.0
    );
    let decision = "walletd_partition_transfer_try_to_decision_seconds";
    assert_eq!(
        value(&families, decision, &format!("{decision}_sum"), &p0),
        0.002
    );
}

#[test]
fn request_latency_is_a_histogram_by_route_and_status() {
    let families = check_exposition(&metrics_with_recorded_stats().encode()).unwrap();
    let latency = "walletd_http_request_duration_seconds";
    let accounts = [("route", "/v1/accounts"), ("status", "201")];
    let bucket = |le: &str| {
        let labels = [accounts[0], accounts[1], ("le", le)];
        value(&families, latency, &format!("{latency}_bucket"), &labels)
    };
    assert_eq!(
        value(&families, latency, &format!("{latency}_count"), &accounts),
        2.0
    );
    assert_eq!(
        (bucket("0.00005"), bucket("0.0025"), bucket("0.005")),
        (1.0, 1.0, 2.0)
    );
    let failed = [("route", "/v1/wallet/balance_transfer"), ("status", "503")];
    let requests = "walletd_http_requests";
    assert_eq!(
        value(&families, requests, "walletd_http_requests_total", &failed),
        1.0
    );
}

/// Every name the hand-written exposition had is still there, with the same samples.
#[test]
fn earlier_metric_names_are_kept() {
    let text = metrics_with_recorded_stats().encode();
    for sample in [
        "walletd_http_requests_total{route=\"/v1/accounts\",status=\"201\"} 2",
        "walletd_http_requests_in_flight 1",
        "walletd_transfers_total{outcome=\"committed\"} 1",
        "walletd_transfers_total{outcome=\"failed\"} 0",
        "walletd_partition_batches_total{partition=\"0\"} 4",
        "walletd_partition_inputs_total{partition=\"0\"} 0",
        "walletd_partition_events_total{partition=\"1\"} 0",
        "walletd_partition_syncs_total{partition=\"0\"} 3",
        "walletd_partition_transfers_in_flight{partition=\"0\"} 0",
        "walletd_partition_last_lsn{partition=\"0\"} 0",
        "walletd_partition_protocol_violations_total{partition=\"0\"} 0",
        "walletd_partition_rows{partition=\"0\"} 0",
        "walletd_partition_snapshot_failures_total{partition=\"0\"} 0",
        "walletd_partition_events_per_batch{partition=\"0\"} 0",
        "walletd_partition_fsync_seconds_count{partition=\"0\"} 3",
        "walletd_memory_limit_bytes 1073741824",
    ] {
        assert!(
            text.contains(&format!("{sample}\n")),
            "{sample} missing from\n{text}"
        );
    }
}

#[test]
fn the_checker_refuses_what_is_not_openmetrics() {
    let good = "# TYPE a counter\na_total 1\n# EOF\n";
    assert!(check_exposition(good).is_ok());
    for bad in [
        "# TYPE a counter\na_total 1\n",
        "a_total 1\n# EOF\n",
        "# TYPE a counter\na 1\n# EOF\n",
        "# TYPE a counter\na_total one\n# EOF\n",
        "# TYPE a gauge\na{k=\"v} 1\n# EOF\n",
        "# TYPE a gauge\n# TYPE a gauge\n# EOF\n",
        "# TYPE h histogram\nh_sum 1\nh_count 2\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
        "# TYPE h histogram\nh_sum 1\nh_count 2\nh_bucket{le=\"1\"} 2\n# EOF\n",
        "# TYPE h histogram\nh_sum 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
    ] {
        assert!(check_exposition(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_node_journal_counts_its_rounds_and_the_batches_they_carried() {
    let dir = tempfile::tempdir().unwrap();
    let journal = walletd_runtime::storage::journal::NodeJournal::open(
        dir.path(),
        2,
        walletd_runtime::storage::journal::JournalConfig::default(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (partition, lsn) in [(0, 1), (1, 1), (0, 2)] {
            journal.commit(partition, lsn, vec![9; 40]).await.1.unwrap();
        }
    });
    let mut metrics = metrics_with_recorded_stats();
    metrics.add_journal(Arc::clone(&journal));
    let text = metrics.encode();
    let families = check_exposition(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
    // One commit at a time: a round each.
    let rounds = value(
        &families,
        "walletd_journal_rounds",
        "walletd_journal_rounds_total",
        &[],
    );
    let batches = value(
        &families,
        "walletd_journal_batches",
        "walletd_journal_batches_total",
        &[],
    );
    assert_eq!((rounds, batches), (3.0, 3.0), "{text}");
}

//! The process's resident memory, under the name Prometheus' own clients use (left out where
//! `/proc` cannot tell: not Linux), and the limit it is held to.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::saturating_i64;

#[derive(Debug)]
pub(super) struct Process {
    /// See [`crate::api::ApiOptions::memory_limit_bytes`]; left out when there is none.
    pub(super) memory_limit_bytes: Option<u64>,
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Ok(bytes) = crate::process::resident_bytes() {
            let gauge = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(saturating_i64(bytes)).encode(gauge)?;
        }
        if let Some(limit) = self.memory_limit_bytes {
            let gauge = encoder.encode_descriptor(
                "walletd_memory_limit_bytes",
                "Resident memory above which new writes are refused (503 memory_limit).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(saturating_i64(limit)).encode(gauge)?;
        }
        Ok(())
    }
}

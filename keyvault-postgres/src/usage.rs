//! Usage: raw events in `kv_usage_events`, rollups per minute (`kv_usage_rollup`), hour
//! (`kv_usage_rollup_hour`) and day (`kv_usage_rollup_day`), all written by one transaction
//! per batch (`ingest`) and read back as statistics (`query`); the raw events' daily
//! partitions are created and dropped by `partitions`.

mod ingest;
mod partitions;
mod query;

pub use partitions::USAGE_PARTITION_DAYS_AHEAD;

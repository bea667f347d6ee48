//! Usage: raw events in `kv_usage_events`, rollups per minute (`kv_usage_rollup`) and per
//! hour (`kv_usage_rollup_hour`), all written by one transaction per batch (`ingest`) and read
//! back as statistics (`query`).

mod ingest;
mod query;

//! Usage: raw events in `kv_usage_events`, rollups per minute (`kv_usage_rollup`), hour
//! (`kv_usage_rollup_hour`) and day (`kv_usage_rollup_day`), all written by one transaction
//! per batch (`ingest`) and read back as statistics (`query`).

mod ingest;
mod query;

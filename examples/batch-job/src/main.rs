//! batch-job (in progress).

fn main() {}

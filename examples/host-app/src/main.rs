//! host-app (in progress).

fn main() {}

//! The standalone keyvault server (in progress).

fn main() {}

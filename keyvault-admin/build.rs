//! Rebuilds the crate when a file under `static/` is added, removed or changed: rust-embed's
//! derive reads the directory while compiling, but a proc macro cannot tell cargo to watch a
//! directory, so without this a new file would be missing until something else changed.
fn main() {
    println!("cargo::rerun-if-changed=static");
}

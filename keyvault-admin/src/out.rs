//! What commands print. Standard output carries results (and, once, a new key or token);
//! standard error carries messages for people.

use std::io::Write;

/// Writes one line to standard output.
pub(crate) fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes one line to standard error.
pub(crate) fn stderr_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

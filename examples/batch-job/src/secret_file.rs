//! The file new keys are written to: appended to (never truncated, so no key handed out
//! earlier is lost), readable by its owner only, synced after every write.

use std::{
    fs::{File, OpenOptions, Permissions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::error::Error;

pub(crate) struct SecretFile {
    file: File,
    path: PathBuf,
}

impl SecretFile {
    /// Opens (or creates) `path` for appending, mode 0600.
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let ctx = || format!("opening {}", path.display());
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(ctx(), e))?;
        // `mode` applies only to a file created now; an existing file is narrowed too.
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| Error::io(ctx(), e))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Appends one JSON line and waits until it is on disk.
    pub(crate) fn append(&mut self, line: &serde_json::Value) -> std::io::Result<()> {
        let mut text = line.to_string();
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

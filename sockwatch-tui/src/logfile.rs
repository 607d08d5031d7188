//! Diagnostics go to `--log-file` (never to the dashboard's screen), or nowhere.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
};

use anyhow::Context;

#[derive(Default)]
pub struct Log {
    file: Option<File>,
}

impl Log {
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = path
            .map(|path| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening log file {}", path.display()))
            })
            .transpose()?;
        Ok(Self { file })
    }

    pub fn line(&mut self, message: fmt::Arguments<'_>) {
        if let Some(file) = &mut self.file {
            // A failing log must not take the dashboard down.
            let _ = writeln!(file, "{message}");
        }
    }
}

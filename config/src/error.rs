//! Configuration errors: each names the file, the resource (`Kind namespace/name`) and the
//! field path, so that `meshgate check` can print every one of them on a line of its own.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found while loading or compiling the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (empty for problems of the whole set, such as a missing
    /// MeshGateway).
    pub file: PathBuf,
    /// Line and column in the file, where the YAML parser knows them.
    pub position: Option<(u64, u64)>,
    /// `Kind namespace/name`, where the problem belongs to one resource.
    pub resource: Option<String>,
    /// The field path inside the resource, such as `spec.servers[0].tls.mode`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem in a file, not tied to one resource.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            position: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem of the configuration as a whole.
    pub fn global(message: impl Into<String>) -> Self {
        Self::file(Path::new(""), message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if !self.file.as_os_str().is_empty() {
            write!(f, "{}", self.file.display())?;
            if let Some((line, column)) = self.position {
                write!(f, ":{line}:{column}")?;
            }
            wrote = true;
        }
        for part in [&self.resource, &self.field].into_iter().flatten() {
            if wrote {
                f.write_str(": ")?;
            }
            f.write_str(part)?;
            wrote = true;
        }
        if wrote {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one load, in the order found. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(
    pub Vec<ConfigError>,
    /// The files of the Secrets the configuration names (`Model::secret_files`): a reload
    /// that failed watches them, so that fixing the Secret reloads.
    pub Vec<PathBuf>,
);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

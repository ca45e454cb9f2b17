//! Files and directories to YAML documents.
//!
//! A directory loads every `*.yaml` and `*.yml` in it (not recursively, skipping hidden
//! entries such as Kubernetes' `..data`). A file is split at `---` lines; each document keeps
//! its absolute line numbers (padded with the blank lines before it) so that parse errors
//! point into the file, not into the document.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// One YAML document of one file.
#[derive(Debug)]
pub struct Document {
    pub file: PathBuf,
    /// 0-based index of the document in its file.
    pub index: usize,
    /// The document, preceded by as many newlines as there are lines before it in the file.
    pub text: String,
}

/// Reads every path. Returns the documents and the files read; unreadable paths are errors.
pub fn read(paths: &[PathBuf], errors: &mut Vec<ConfigError>) -> (Vec<Document>, Vec<PathBuf>) {
    let mut files = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match list_dir(path) {
                Ok(mut found) => {
                    if found.is_empty() {
                        errors.push(ConfigError::file(
                            path,
                            "directory has no *.yaml or *.yml file",
                        ));
                    }
                    files.append(&mut found);
                }
                Err(e) => errors.push(ConfigError::file(
                    path,
                    format!("cannot list directory: {e}"),
                )),
            },
            Ok(_) => files.push(path.clone()),
            Err(e) => errors.push(ConfigError::file(path, format!("cannot read: {e}"))),
        }
    }
    let mut documents = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => documents.extend(split(file, &text)),
            Err(e) => errors.push(ConfigError::file(file, format!("cannot read: {e}"))),
        }
    }
    (documents, files)
}

/// The files `paths` stand for now (directories listed as `read` lists them); unreadable
/// paths are left out. For change detection.
pub fn files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(list_dir(path).unwrap_or_default());
        } else {
            files.push(path.clone());
        }
    }
    files
}

fn list_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if yaml && !name.starts_with('.') && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Splits a file into its `---`-separated documents, dropping empty ones.
pub fn split(file: &Path, text: &str) -> Vec<Document> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut first_line = 0;
    let mut index = 0;
    let mut push = |current: &mut String, first_line: usize| {
        if has_content(current) {
            let mut doc = "\n".repeat(first_line);
            doc.push_str(current);
            documents.push(Document {
                file: file.to_path_buf(),
                index,
                text: doc,
            });
            index += 1;
        }
        current.clear();
    };
    for (n, line) in text.lines().enumerate() {
        if is_separator(line) {
            push(&mut current, first_line);
            first_line = n + 1;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push(&mut current, first_line);
    documents
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn has_content(doc: &str) -> bool {
    doc.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "..."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_line_numbers_and_drops_empty_documents() {
        let text = "---\na: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n";
        let docs = split(Path::new("f.yaml"), text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "\na: 1\n");
        assert_eq!(docs[1].text.lines().nth(5), Some("b: 2"));
        assert_eq!(docs[1].index, 1);
    }
}

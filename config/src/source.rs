//! Files and directories to YAML documents.
//!
//! A directory loads every `*.yaml`, `*.yml` and `*.json` in it (JSON is YAML; as `kubectl
//! apply -f DIR` reads them), not recursively; other entries are skipped with a warning, hidden
//! ones (Kubernetes' `..data`) and subdirectories silently. A file is cut into documents by the YAML parser
//! itself, so a `---` line inside a block scalar stays part of its scalar. A `kind: List` (what
//! `kubectl get -o yaml` prints) is unwrapped into its items. Each document keeps the line it
//! starts on, so that errors point into the file; nothing is copied more than once, so loading
//! stays linear in the size of the file however many documents it holds.

use std::path::{Path, PathBuf};

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, Span};

use crate::error::ConfigError;
use crate::warning::{Code, Warning};

/// One YAML document of one file (or one item of a `kind: List` document).
#[derive(Debug)]
pub struct Document {
    pub file: PathBuf,
    /// 0-based index of the document in its file.
    pub index: usize,
    /// The index in `items` when the document is an item of a `kind: List`.
    pub item: Option<usize>,
    /// The document's text, from the start of the line it begins on (an item's first line is
    /// blanked up to the item, so that columns stay those of the file).
    pub text: String,
    /// The 1-based line of the file that `text` starts on.
    pub line: u64,
}

impl Document {
    /// Where the document is, for messages about it as a whole: `document 2`, or
    /// `document 1, items[3]`.
    pub fn describe(&self) -> String {
        match self.item {
            Some(i) => format!("document {}, items[{i}]", self.index.saturating_add(1)),
            None => format!("document {}", self.index.saturating_add(1)),
        }
    }
}

/// The most configuration meshgate reads, all files together: far above any real mesh (a
/// 10,000-resource file is about 2.5 MB), and low enough that a wrong path (a log, a disk
/// image) is refused before it is read or parsed.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// What `read` found.
#[derive(Debug, Default)]
pub struct Read {
    pub documents: Vec<Document>,
    /// Every file read, for reload watching.
    pub files: Vec<PathBuf>,
    /// Directory entries that were not read, and why.
    pub warnings: Vec<Warning>,
}

/// Reads every path; unreadable paths and YAML syntax errors go to `errors`.
pub fn read(paths: &[PathBuf], errors: &mut Vec<ConfigError>) -> Read {
    let mut out = Read::default();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match list_dir(path, &mut out.warnings) {
                Ok(mut found) => {
                    if found.is_empty() {
                        errors.push(ConfigError::file(
                            path,
                            "directory has no *.yaml, *.yml or *.json file",
                        ));
                    }
                    out.files.append(&mut found);
                }
                Err(e) => errors.push(ConfigError::file(
                    path,
                    format!("cannot list directory: {e}"),
                )),
            },
            Ok(_) => out.files.push(path.clone()),
            Err(e) => errors.push(ConfigError::file(path, format!("cannot read: {e}"))),
        }
    }
    let mut total = 0u64;
    for file in &out.files {
        match read_capped(file, MAX_CONFIG_BYTES.saturating_sub(total)) {
            Ok(text) => {
                total = total.saturating_add(text.len() as u64);
                out.documents.extend(split(file, &text, errors));
            }
            Err(Capped::Over(size)) => {
                errors.push(ConfigError::file(
                    file,
                    format!(
                        "the configuration would be {} MiB or more with this file, over the {} \
                         MiB meshgate reads: is this the right file?",
                        total.saturating_add(size) >> 20,
                        MAX_CONFIG_BYTES >> 20
                    ),
                ));
                break;
            }
            Err(Capped::Io(e)) => errors.push(ConfigError::file(file, format!("cannot read: {e}"))),
        }
    }
    out
}

enum Capped {
    /// The file has at least this many bytes, more than were left.
    Over(u64),
    Io(std::io::Error),
}

/// A file's text, unless it has more than `left` bytes: that is known from its size before it
/// is read, or, for a file that grows meanwhile (or has no size, as a pipe), by reading at most
/// one byte more.
fn read_capped(file: &Path, left: u64) -> Result<String, Capped> {
    use std::io::Read as _;
    let f = std::fs::File::open(file).map_err(Capped::Io)?;
    let size = f.metadata().map_err(Capped::Io)?.len();
    if size > left {
        return Err(Capped::Over(size));
    }
    let mut text = String::new();
    f.take(left.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(Capped::Io)?;
    if text.len() as u64 > left {
        return Err(Capped::Over(text.len() as u64));
    }
    Ok(text)
}

/// The files `paths` stand for now (directories listed as `read` lists them); unreadable
/// paths are left out. For change detection.
pub fn files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(list_dir(path, &mut Vec::new()).unwrap_or_default());
        } else {
            files.push(path.clone());
        }
    }
    files
}

fn list_dir(dir: &Path, skipped: &mut Vec<Warning>) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        entries.push(entry?.path());
    }
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Hidden entries are Kubernetes' volume machinery (`..data`, `..2024_01_01...`) or
        // editors' files: nothing a user put there to be read.
        if name.starts_with('.') {
            continue;
        }
        let config = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
        // Subdirectories (such as `certs/`) are not read, and not worth a warning.
        if path.is_dir() {
            continue;
        }
        if !config {
            skipped.push(Warning::file(
                Code::FileSkipped,
                &path,
                "skipped: not a *.yaml, *.yml or *.json file",
            ));
        } else {
            found.push(path);
        }
    }
    Ok(found)
}

/// Cuts a file into its documents, dropping empty ones and unwrapping `kind: List`s. A syntax
/// error is reported and the parser resumes at the next document.
pub fn split(file: &Path, text: &str, errors: &mut Vec<ConfigError>) -> Vec<Document> {
    let mut found: Vec<Found> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    let mut walk = Walk::default();
    loop {
        match parser.next() {
            None => break,
            Some(Ok((event, span))) => match event {
                Event::StreamEnd => break,
                Event::DocumentStart(..) => {
                    walk = Walk::default();
                    found.push(Found {
                        start: line_start(text, &span.start),
                        line: span.start.line() as u64,
                        empty: true,
                        broken: false,
                        list: None,
                    });
                }
                event => {
                    if let Some(doc) = found.last_mut() {
                        walk.event(&event, &span, doc, text);
                    }
                }
            },
            Some(Err(e)) => {
                let at = e.marker();
                errors.push(ConfigError {
                    position: Some((at.line() as u64, (at.col() as u64).saturating_add(1))),
                    ..ConfigError::file(file, format!("invalid YAML: {}", e.info()))
                });
                if let Some(doc) = found.last_mut() {
                    doc.broken = true;
                }
                match parser.proceed_next_document() {
                    Ok(true) => continue,
                    _ => break,
                }
            }
        }
    }
    let mut documents = Vec::new();
    let mut index = 0;
    for (i, doc) in found.iter().enumerate() {
        if doc.empty || doc.broken {
            continue;
        }
        let end = found
            .get(i.saturating_add(1))
            .map_or(text.len(), |next| next.start);
        match &doc.list {
            Some(list) if list.is_list => {
                for (n, item) in list.items.iter().enumerate() {
                    let mut item_text = " ".repeat(item.column);
                    item_text.push_str(&text[item.start..item.end]);
                    documents.push(Document {
                        file: file.to_path_buf(),
                        index,
                        item: Some(n),
                        text: item_text,
                        line: item.line,
                    });
                }
            }
            _ => documents.push(Document {
                file: file.to_path_buf(),
                index,
                item: None,
                text: text[doc.start..end.max(doc.start)].to_string(),
                line: doc.line,
            }),
        }
        index = index.saturating_add(1);
    }
    documents
}

/// A document as the parser found it.
struct Found {
    /// Byte offset of the start of its first line.
    start: usize,
    line: u64,
    /// Whether its root is an empty (or null) scalar: a document of comments only.
    empty: bool,
    /// Whether it held a syntax error (reported already).
    broken: bool,
    list: Option<List>,
}

/// A root mapping's `kind` and its `items`, for `kind: List`.
#[derive(Default)]
struct List {
    is_list: bool,
    items: Vec<Item>,
}

struct Item {
    start: usize,
    end: usize,
    line: u64,
    column: usize,
}

/// Where the walk through one document is: nesting depth, and inside the root mapping,
/// whether the next scalar is a key and which key the current value belongs to.
#[derive(Default)]
struct Walk {
    depth: usize,
    root_is_mapping: bool,
    expect_key: bool,
    key: Option<String>,
    in_items: bool,
    item_start: Option<(usize, u64, usize)>,
}

impl Walk {
    fn event(&mut self, event: &Event<'_>, span: &Span, doc: &mut Found, text: &str) {
        match event {
            Event::Scalar(value, style, _, tag) if self.depth == 0 => {
                let null = tag.is_none()
                    && *style == ScalarStyle::Plain
                    && matches!(value.as_ref(), "" | "~" | "null" | "Null" | "NULL");
                doc.empty = null;
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.depth == 0 {
                    doc.empty = false;
                    self.root_is_mapping = matches!(event, Event::MappingStart(..));
                    self.expect_key = true;
                    if self.root_is_mapping {
                        doc.list = Some(List::default());
                    }
                } else if self.depth == 1 && self.root_is_mapping {
                    self.in_items = self.key.as_deref() == Some("items")
                        && matches!(event, Event::SequenceStart(..));
                } else if self.depth == 2 && self.in_items {
                    self.item_start =
                        byte(&span.start).map(|b| (b, span.start.line() as u64, span.start.col()));
                }
                self.depth = self.depth.saturating_add(1);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 2 && self.in_items {
                    if let (Some((start, line, column)), Some(list)) =
                        (self.item_start.take(), doc.list.as_mut())
                    {
                        let end = byte(&span.end).unwrap_or(start).clamp(start, text.len());
                        list.items.push(Item {
                            start,
                            end,
                            line,
                            column,
                        });
                    }
                } else if self.depth == 1 {
                    self.in_items = false;
                    self.expect_key = true;
                    self.key = None;
                }
            }
            Event::Scalar(value, ..) if self.depth == 1 && self.root_is_mapping => {
                if self.expect_key {
                    self.key = Some(value.to_string());
                    self.expect_key = false;
                } else {
                    if self.key.as_deref() == Some("kind") {
                        // `List`, and the typed lists the API server returns (`GatewayList`).
                        if let Some(list) = doc.list.as_mut() {
                            list.is_list = value.ends_with("List");
                        }
                    }
                    self.expect_key = true;
                    self.key = None;
                }
            }
            Event::Alias(..) if self.depth == 1 && self.root_is_mapping => {
                self.expect_key = !self.expect_key;
            }
            _ => {}
        }
    }
}

fn byte(marker: &Marker) -> Option<usize> {
    marker.byte_offset()
}

/// The byte offset of the start of the line `marker` is on.
fn line_start(text: &str, marker: &Marker) -> usize {
    let at = byte(marker).unwrap_or(0).min(text.len());
    text[..at].rfind('\n').map_or(0, |i| i.saturating_add(1))
}

/// The line and column (1-based) of the key at `path` (`spec.servers[0].tls`) in a document,
/// for errors whose parser knows the path but not the place.
pub fn locate(doc: &Document, path: &[PathSegment]) -> Option<(u64, u64)> {
    let entry = entry(&doc.text, path)?;
    // Both lines are 1-based.
    Some((
        entry.line.saturating_add(doc.line).saturating_sub(1),
        entry.column,
    ))
}

/// `text` with the mapping entry at `path`, key and value, blanked out: every character but
/// line breaks replaced by a space, so that all that follows keeps its line and column; in flow
/// style the comma after the entry goes with it. `None` when no entry is at `path`.
pub fn blank_entry(text: &str, path: &[PathSegment]) -> Option<String> {
    let entry = entry(text, path)?;
    let mut end = entry.end.min(text.len());
    let rest = &text[end..];
    let gap = rest
        .len()
        .saturating_sub(rest.trim_start_matches([' ', '\t']).len());
    if rest[gap..].starts_with(',') {
        end = end.saturating_add(gap).saturating_add(1);
    }
    Some(overwrite(text, entry.start.min(end), end, ""))
}

/// `text` with the value of the mapping entry at `path` made null (`~` right after its key's
/// colon, where a null is valid whatever the indentation), all else keeping its line and
/// column. `None` when no entry is at `path`.
pub fn null_value(text: &str, path: &[PathSegment]) -> Option<String> {
    let entry = entry(text, path)?;
    let end = entry.end.min(text.len());
    let after_key = &text[entry.key_end.min(end)..end];
    let gap = after_key
        .len()
        .saturating_sub(after_key.trim_start_matches([' ', '\t']).len());
    let start = match after_key[gap..].starts_with(':') {
        true => entry.key_end.saturating_add(gap).saturating_add(1),
        false => entry.value.min(end),
    };
    Some(overwrite(text, start, end, " ~"))
}

/// `text` with `start..end` replaced by `with` and then spaces, line breaks kept (`with`
/// takes the place of what the first line held, as far as it goes).
fn overwrite(text: &str, start: usize, end: usize, with: &str) -> String {
    let mut out = String::with_capacity(text.len().saturating_add(with.len()));
    out.push_str(&text[..start]);
    out.push_str(with);
    let region = &text[start..end];
    let first_line = region.find(['\n', '\r']).unwrap_or(region.len());
    let taken = region[..first_line]
        .char_indices()
        .nth(with.len())
        .map_or(first_line, |(i, _)| i);
    out.extend(
        region[taken..]
            .chars()
            .map(|c| if c == '\n' || c == '\r' { c } else { ' ' }),
    );
    out.push_str(&text[end..]);
    out
}

/// Where a mapping entry is in a document's text.
struct Entry {
    /// 1-based line and column of its key, in the text.
    line: u64,
    column: u64,
    /// Byte offsets of the start and end of its key, and of the start and end of its value.
    start: usize,
    key_end: usize,
    value: usize,
    end: usize,
}

/// The mapping entry whose key is at `path`.
fn entry(text: &str, path: &[PathSegment]) -> Option<Entry> {
    let mut stack: Vec<Frame> = Vec::new();
    // The entry found, while its value is read, and the depth its value ends at.
    let mut found: Option<(Entry, usize)> = None;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.ok()?;
        if let (Some(Frame::Map { key, expect_key }), Event::Scalar(value, ..)) =
            (stack.last_mut(), &event)
        {
            if *expect_key {
                *key = Some(value.to_string());
                *expect_key = false;
                if found.is_none() && current(&stack) == path {
                    let entry = Entry {
                        line: span.start.line() as u64,
                        column: (span.start.col() as u64).saturating_add(1),
                        start: byte(&span.start)?,
                        key_end: byte(&span.end)?,
                        value: byte(&span.end)?,
                        end: byte(&span.end)?,
                    };
                    found = Some((entry, stack.len()));
                }
                continue;
            }
        }
        let ends_a_node = match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                enter(&mut stack);
                stack.push(match event {
                    Event::MappingStart(..) => Frame::Map {
                        key: None,
                        expect_key: true,
                    },
                    _ => Frame::Seq { index: None },
                });
                false
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                value_done(&mut stack);
                true
            }
            Event::Scalar(..) | Event::Alias(..) => {
                enter(&mut stack);
                value_done(&mut stack);
                true
            }
            _ => false,
        };
        if let Some((mut entry, depth)) = found.take() {
            if entry.value == entry.end {
                // The value's first event: where it starts. A block sequence's starts at its
                // first item, after the `- `.
                let mut start = byte(&span.start)?.max(entry.end);
                if matches!(event, Event::SequenceStart(..)) {
                    let before = text[..start].trim_end_matches([' ', '\t']);
                    if before.ends_with('-') {
                        start = before.len().saturating_sub(1);
                    }
                }
                entry.value = start;
            }
            if ends_a_node && stack.len() == depth {
                entry.end = byte(&span.end)?;
                return Some(entry);
            }
            found = Some((entry, depth));
        }
    }
    // A key whose value the parser never closed (the end of the text): the key alone.
    found.map(|(entry, _)| entry)
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

enum Frame {
    Map {
        key: Option<String>,
        expect_key: bool,
    },
    Seq {
        index: Option<usize>,
    },
}

/// A node starts in the innermost collection: a sequence moves to its next index.
fn enter(stack: &mut [Frame]) {
    if let Some(Frame::Seq { index }) = stack.last_mut() {
        *index = Some(index.map_or(0, |i| i.saturating_add(1)));
    }
}

/// A node ended: in a mapping, a key comes next.
fn value_done(stack: &mut [Frame]) {
    if let Some(Frame::Map { expect_key, .. }) = stack.last_mut() {
        *expect_key = true;
    }
}

/// The path of the node being read.
fn current(stack: &[Frame]) -> Vec<PathSegment> {
    stack
        .iter()
        .filter_map(|frame| match frame {
            Frame::Map { key: Some(k), .. } => Some(PathSegment::Key(k.clone())),
            Frame::Seq { index: Some(n) } => Some(PathSegment::Index(*n)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;

//! Request path normalization, as Istio's `meshConfig.pathNormalization` configures Envoy.
//!
//! Every request's path is normalized once, before routing: the route, every
//! AuthorizationPolicy, the access log and the upstream see the same path. The steps, in
//! Envoy's order:
//!
//! 1. Escaped slashes (`%2F`, `%5C`, any case): kept, refused, or decoded.
//! 2. RFC 3986 normalization (Envoy's `normalize_path`): percent-escapes of unreserved
//!    characters decoded (`%61` -> `a`, `%2e` -> `.`), `\` turned into `/`, `.` and `..`
//!    segments resolved (never above the root). Other escapes are kept as written; case is
//!    never changed. A NUL byte (`%00`) is refused.
//! 3. Repeated slashes merged (Envoy's `merge_slashes`).
//!
//! A path that does not start with `/` is refused. The query is never touched.

use std::borrow::Cow;

use serde::Serialize;

/// How paths are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PathNormalization {
    /// Istio's mode, or `None` for meshgate's default (`MERGE_SLASHES`, escaped slashes
    /// refused).
    pub mode: Option<NormalizationMode>,
    /// RFC 3986 normalization (every mode but `NONE`).
    pub normalize: bool,
    /// Merge repeated slashes.
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NormalizationMode {
    None,
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

/// Envoy's `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashes {
    /// `KEEP_UNCHANGED`.
    Keep,
    /// `REJECT_REQUEST`: 400.
    Reject,
    /// `UNESCAPE_AND_FORWARD`.
    Decode,
}

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (`*`, or an empty path).
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// `%2F` or `%5C` with escaped slashes refused.
    #[error("the path holds an escaped slash (%2F or %5C)")]
    EscapedSlash,
    /// `%00`.
    #[error("the path holds a NUL byte")]
    Nul,
}

impl Default for PathNormalization {
    /// meshgate's default, stricter than Istio's `BASE`: with `BASE`, `//admin` and
    /// `/admin%2Fsecret` pass a DENY rule on `/admin/*` and may reach the backend's admin
    /// pages (Istio's security guide warns of both).
    fn default() -> Self {
        Self {
            mode: None,
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

impl PathNormalization {
    /// Istio's mapping of a mode onto Envoy's settings.
    pub fn istio(mode: NormalizationMode) -> Self {
        let (normalize, merge_slashes, escaped_slashes) = match mode {
            NormalizationMode::None => (false, false, EscapedSlashes::Keep),
            NormalizationMode::Base => (true, false, EscapedSlashes::Keep),
            NormalizationMode::MergeSlashes => (true, true, EscapedSlashes::Keep),
            NormalizationMode::DecodeAndMergeSlashes => (true, true, EscapedSlashes::Decode),
        };
        Self {
            mode: Some(mode),
            normalize,
            merge_slashes,
            escaped_slashes,
        }
    }

    /// The normalized path, borrowed when nothing changes (the usual case: one scan, no
    /// allocation).
    pub fn apply<'a>(&self, path: &'a str) -> Result<Cow<'a, str>, PathError> {
        if !path.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        if !self.needs_work(path.as_bytes()) {
            return Ok(Cow::Borrowed(path));
        }
        let mut text = Cow::Borrowed(path);
        if text.contains('%') {
            text = self.escapes(&text)?.map_or(text, Cow::Owned);
        }
        if self.normalize {
            if text.contains('\\') {
                text = Cow::Owned(text.replace('\\', "/"));
            }
            if has_dot_segment(&text) {
                text = Cow::Owned(remove_dot_segments(&text));
            }
        }
        if self.merge_slashes && text.contains("//") {
            text = Cow::Owned(merge_slashes(&text));
        }
        Ok(text)
    }

    /// Whether any step could change or refuse `path`.
    fn needs_work(&self, path: &[u8]) -> bool {
        let mut previous = 0u8;
        for &b in path {
            match b {
                b'%' => return true,
                b'\\' | b'.' if self.normalize && (b == b'\\' || previous == b'/') => return true,
                b'/' if self.merge_slashes && previous == b'/' => return true,
                _ => {}
            }
            previous = b;
        }
        false
    }

    /// Steps 1 and the percent-decoding of 2: `None` when nothing changes.
    fn escapes(&self, path: &str) -> Result<Option<String>, PathError> {
        let mut rest = path.as_bytes();
        let mut out = Vec::with_capacity(rest.len());
        let mut changed = false;
        // Whether any escape is decoded at all (Istio's `NONE` decodes none).
        let decodes = self.normalize || self.escaped_slashes == EscapedSlashes::Decode;
        while let Some((&b, tail)) = rest.split_first() {
            let decoded = match rest {
                [b'%', hi, lo, after @ ..] => hex(*hi)
                    .zip(hex(*lo))
                    .map(|(h, l)| (h << 4 | l, [b'%', *hi, *lo], after)),
                _ => None,
            };
            let Some((c, escape, after)) = decoded else {
                if b == b'%' && decodes {
                    // A `%` that starts no escape is escaped itself: left bare, an escape
                    // decoded right after it could make a new one (`/%%361dmin` would become
                    // `/%61dmin`, which policies would see and a backend decode to `/admin`).
                    out.extend_from_slice(b"%25");
                    changed = true;
                } else {
                    out.push(b);
                }
                rest = tail;
                continue;
            };
            let keep = match c {
                0 => return Err(PathError::Nul),
                b'/' | b'\\' => match self.escaped_slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Keep => true,
                    EscapedSlashes::Decode => false,
                },
                c if self.normalize && is_unreserved(c) => false,
                _ => true,
            };
            if keep {
                out.extend_from_slice(&escape);
            } else {
                out.push(c);
                changed = true;
            }
            rest = after;
        }
        // Only ASCII bytes were replaced by ASCII bytes: still UTF-8.
        Ok(changed.then(|| String::from_utf8_lossy(&out).into_owned()))
    }
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// RFC 3986 5.2.4 on an absolute path: `.` dropped, `..` removes the segment before it, never
/// above the root; a path ending in a dot segment keeps its trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    // `split` yields at least one segment.
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut text = String::with_capacity(path.len());
    for s in &out {
        text.push('/');
        text.push_str(s);
    }
    if text.is_empty() {
        text.push('/');
    }
    text
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_istio_modes() {
        let default = PathNormalization::default();
        let base = PathNormalization::istio(NormalizationMode::Base);
        let none = PathNormalization::istio(NormalizationMode::None);
        let merge = PathNormalization::istio(NormalizationMode::MergeSlashes);
        let decode = PathNormalization::istio(NormalizationMode::DecodeAndMergeSlashes);
        type Want = Result<&'static str, PathError>;
        let cases: [(&str, Want, Want, Want, Want, Want); 19] = [
            // path, default, BASE, NONE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES
            // A `%` that starts no escape is escaped, so that no decoded escape makes a new one
            // with it (normalized again, or decoded by a backend, `/%61dmin` is `/admin`).
            (
                "/%%361dmin",
                Ok("/%2561dmin"),
                Ok("/%2561dmin"),
                Ok("/%%361dmin"),
                Ok("/%2561dmin"),
                Ok("/%2561dmin"),
            ),
            (
                "/%6%61dmin",
                Ok("/%256admin"),
                Ok("/%256admin"),
                Ok("/%6%61dmin"),
                Ok("/%256admin"),
                Ok("/%256admin"),
            ),
            (
                "/100%",
                Ok("/100%25"),
                Ok("/100%25"),
                Ok("/100%"),
                Ok("/100%25"),
                Ok("/100%25"),
            ),
            (
                "/a/b",
                Ok("/a/b"),
                Ok("/a/b"),
                Ok("/a/b"),
                Ok("/a/b"),
                Ok("/a/b"),
            ),
            (
                "/admin/../admin/secret",
                Ok("/admin/secret"),
                Ok("/admin/secret"),
                Ok("/admin/../admin/secret"),
                Ok("/admin/secret"),
                Ok("/admin/secret"),
            ),
            (
                "//admin/secret",
                Ok("/admin/secret"),
                Ok("//admin/secret"),
                Ok("//admin/secret"),
                Ok("/admin/secret"),
                Ok("/admin/secret"),
            ),
            (
                "/admin%2Fsecret",
                Err(PathError::EscapedSlash),
                Ok("/admin%2Fsecret"),
                Ok("/admin%2Fsecret"),
                Ok("/admin%2Fsecret"),
                Ok("/admin/secret"),
            ),
            (
                "/admin%5csecret",
                Err(PathError::EscapedSlash),
                Ok("/admin%5csecret"),
                Ok("/admin%5csecret"),
                Ok("/admin%5csecret"),
                Ok("/admin/secret"),
            ),
            (
                "/a/%2e%2e/admin",
                Ok("/admin"),
                Ok("/admin"),
                Ok("/a/%2e%2e/admin"),
                Ok("/admin"),
                Ok("/admin"),
            ),
            (
                "/%61dmin",
                Ok("/admin"),
                Ok("/admin"),
                Ok("/%61dmin"),
                Ok("/admin"),
                Ok("/admin"),
            ),
            (
                "/a\\..\\admin",
                Ok("/admin"),
                Ok("/admin"),
                Ok("/a\\..\\admin"),
                Ok("/admin"),
                Ok("/admin"),
            ),
            (
                "/../../x",
                Ok("/x"),
                Ok("/x"),
                Ok("/../../x"),
                Ok("/x"),
                Ok("/x"),
            ),
            (
                "/a/b/..",
                Ok("/a/"),
                Ok("/a/"),
                Ok("/a/b/.."),
                Ok("/a/"),
                Ok("/a/"),
            ),
            (
                "/a/./b/.",
                Ok("/a/b/"),
                Ok("/a/b/"),
                Ok("/a/./b/."),
                Ok("/a/b/"),
                Ok("/a/b/"),
            ),
            ("/..", Ok("/"), Ok("/"), Ok("/.."), Ok("/"), Ok("/")),
            (
                "/a.b/.well-known/x",
                Ok("/a.b/.well-known/x"),
                Ok("/a.b/.well-known/x"),
                Ok("/a.b/.well-known/x"),
                Ok("/a.b/.well-known/x"),
                Ok("/a.b/.well-known/x"),
            ),
            // Reserved escapes stay as written, case included; case of the path never changes.
            (
                "/A%3fb",
                Ok("/A%3fb"),
                Ok("/A%3fb"),
                Ok("/A%3fb"),
                Ok("/A%3fb"),
                Ok("/A%3fb"),
            ),
            (
                "/x%00",
                Err(PathError::Nul),
                Err(PathError::Nul),
                Err(PathError::Nul),
                Err(PathError::Nul),
                Err(PathError::Nul),
            ),
            (
                "*",
                Err(PathError::NotAbsolute),
                Err(PathError::NotAbsolute),
                Err(PathError::NotAbsolute),
                Err(PathError::NotAbsolute),
                Err(PathError::NotAbsolute),
            ),
        ];
        for (path, d, b, n, m, dm) in cases {
            for (mode, want) in [
                (&default, d),
                (&base, b),
                (&none, n),
                (&merge, m),
                (&decode, dm),
            ] {
                let got = mode.apply(path);
                assert_eq!(
                    got.as_deref().map_err(|e| *e),
                    want.as_ref().map(|s| *s).map_err(|e| *e),
                    "{path} with {mode:?}"
                );
                // Normalizing what normalization made changes nothing.
                if let Ok(once) = got {
                    assert_eq!(mode.apply(&once).as_deref(), Ok(&*once), "{path} twice");
                }
            }
        }
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        let p = PathNormalization::default();
        assert!(matches!(p.apply("/api/v1/items"), Ok(Cow::Borrowed(_))));
        assert!(matches!(p.apply("/a.b/c"), Ok(Cow::Borrowed(_))));
    }
}

//! Header values as Envoy's custom request and response headers take them (`headers.request`
//! and `headers.response` of a VirtualService): text with command operators such as
//! `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%` or `%REQ(x-request-id)%`, and `%%` for a `%`.
//!
//! Envoy parses a value when the route is loaded and refuses one it cannot read: a `%` that
//! starts no command, or a command it does not know. meshgate does the same, and refuses the
//! commands it does not implement, so that no value reaches a backend as the literal text of
//! a command. A value without a command is kept as a `HeaderValue` and costs nothing more to
//! apply than before.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use serde::{Serialize, Serializer};

/// A header value: fixed, or rendered for each request.
#[derive(Debug, Clone)]
pub enum HeaderValueSource {
    Fixed(HeaderValue),
    Formatted(Formatted),
}

/// A value with command operators: its text as written, and its parts.
#[derive(Debug, Clone)]
pub struct Formatted {
    source: Box<str>,
    parts: Box<[Part]>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(Box<str>),
    Command {
        command: Command,
        /// `:N` after the command: at most N bytes of its value.
        max: Option<usize>,
    },
}

/// The command operators meshgate renders, with Envoy's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    /// `DOWNSTREAM_REMOTE_ADDRESS`: the client's address and port, as trusted (a PROXY
    /// protocol header, or `numTrustedProxies` of `x-forwarded-for`, where Envoy's port is 0).
    RemoteAddress,
    RemoteAddressWithoutPort,
    /// `DOWNSTREAM_LOCAL_ADDRESS`: the address the connection was accepted on.
    LocalAddress,
    LocalAddressWithoutPort,
    LocalPort,
    /// `DOWNSTREAM_PEER_URI_SAN`: the client certificate's URI SANs, joined by `,`.
    PeerUriSan,
    /// `PROTOCOL`: `HTTP/1.1`, `HTTP/2`, ...
    Protocol,
    /// `START_TIME` or `START_TIME(format)`: when the request started, in UTC.
    StartTime(Box<[TimePart]>),
    /// `REQ(X?Y)`: the request's field X, or Y when there is no X.
    Request(RequestField, Option<RequestField>),
}

/// A piece of a `START_TIME` format: strftime's specifiers that Envoy's start time takes,
/// and its `%f` / `%Nf` (fractions of a second).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TimePart {
    Text(Box<str>),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// `%s`: seconds since the epoch.
    Epoch,
    /// `%Nf`: N digits of the second's fraction (`%f`: 9).
    Fraction(u32),
    /// `%z`: `+0000`.
    Offset,
    /// `%Z`: `UTC`.
    Zone,
}

/// Envoy's `%START_TIME%` without a format: `2026-12-06T03:15:51.123Z`.
const DEFAULT_TIME: &str = "%Y-%m-%dT%H:%M:%S.%3fZ";

/// A field `REQ(...)` reads: a header, or one of the pseudo-headers Envoy names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RequestField {
    Header(HeaderName),
    Authority,
    Path,
    Method,
    Scheme,
}

/// The commands meshgate knows, for the error that names one it does not.
const SUPPORTED: &str = "DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, \
    DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, DOWNSTREAM_LOCAL_PORT, \
    DOWNSTREAM_PEER_URI_SAN, PROTOCOL, START_TIME, REQ(...)";

impl HeaderValueSource {
    /// Reads `value` as Envoy reads a custom header's value; the error says what is wrong.
    pub fn parse(value: &str) -> Result<Self, String> {
        if !value.contains('%') {
            return HeaderValue::from_str(value)
                .map(Self::Fixed)
                .map_err(|_| "not a valid header value".to_string());
        }
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = value;
        while let Some(at) = rest.find('%') {
            text.push_str(rest.get(..at).unwrap_or_default());
            let after = rest.get(at.saturating_add(1)..).unwrap_or_default();
            if let Some(more) = after.strip_prefix('%') {
                text.push('%');
                rest = more;
                continue;
            }
            let (part, more) = command(after).map_err(|e| {
                let offset = value.len().saturating_sub(rest.len()).saturating_add(at);
                format!("{e} (at byte {offset}; a `%` of the value itself is written `%%`)")
            })?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text).into()));
            }
            parts.push(part);
            rest = more;
        }
        text.push_str(rest);
        if parts.is_empty() {
            // Only `%%` escapes: fixed after all.
            return HeaderValue::from_str(&text)
                .map(Self::Fixed)
                .map_err(|_| "not a valid header value".to_string());
        }
        if !text.is_empty() {
            parts.push(Part::Text(text.into()));
        }
        // Each text must be valid in a header value on its own.
        let texts_valid = parts.iter().all(|p| match p {
            Part::Text(t) => HeaderValue::from_str(t).is_ok(),
            Part::Command { .. } => true,
        });
        if !texts_valid {
            return Err("not a valid header value".into());
        }
        Ok(Self::Formatted(Formatted {
            source: value.into(),
            parts: parts.into(),
        }))
    }

    /// Whether `REQ(...)` is used: a response's value then needs its request's head, kept.
    pub fn reads_request(&self) -> bool {
        match self {
            Self::Fixed(_) => false,
            Self::Formatted(f) => f.parts.iter().any(|p| {
                matches!(
                    p,
                    Part::Command {
                        command: Command::Request(..),
                        ..
                    }
                )
            }),
        }
    }

    /// The value for this request, or `None` when it renders empty: Envoy then leaves the
    /// header out (`keep_empty_value` is false in what Istio writes).
    /// `headers` are the request's, which `REQ(...)` reads.
    pub fn render(&self, cx: &FormatContext<'_>, headers: &HeaderMap) -> Option<HeaderValue> {
        match self {
            Self::Fixed(v) if v.is_empty() => None,
            Self::Fixed(v) => Some(v.clone()),
            Self::Formatted(f) => {
                let mut out = String::new();
                for part in f.parts.iter() {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Command { command, max } => {
                            let start = out.len();
                            command.render(cx, headers, &mut out);
                            if let Some(max) = *max {
                                let mut end = start.saturating_add(max).min(out.len());
                                while !out.is_char_boundary(end) {
                                    end = end.saturating_sub(1);
                                }
                                out.truncate(end);
                            }
                        }
                    }
                }
                if out.is_empty() {
                    return None;
                }
                // What a command renders comes from header values and addresses: valid, but a
                // value read from a request is checked again rather than trusted.
                HeaderValue::from_str(&out).ok()
            }
        }
    }

    /// The value as written.
    pub fn as_written(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Fixed(v) => String::from_utf8_lossy(v.as_bytes()),
            Self::Formatted(f) => std::borrow::Cow::Borrowed(&f.source),
        }
    }
}

impl Serialize for HeaderValueSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_written())
    }
}

/// One command after its `%`: the part, and what follows its closing `%`.
fn command(after: &str) -> Result<(Part, &str), String> {
    let name_len = after
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(after.len());
    let (name, mut rest) = after.split_at(name_len);
    if name.is_empty() {
        return Err("`%` starts no command operator".into());
    }
    let mut arg = None;
    if let Some(open) = rest.strip_prefix('(') {
        let close = open
            .find(')')
            .ok_or_else(|| format!("`%{name}(` has no `)`"))?;
        arg = open.get(..close);
        rest = open.get(close.saturating_add(1)..).unwrap_or_default();
    }
    let mut max = None;
    if let Some(digits) = rest.strip_prefix(':') {
        let len = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        let n = digits
            .get(..len)
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or_else(|| format!("`%{name}:` needs a length"))?;
        max = Some(n);
        rest = digits.get(len..).unwrap_or_default();
    }
    let rest = rest
        .strip_prefix('%')
        .ok_or_else(|| format!("`%{name}` has no closing `%`"))?;
    let command = match (name, arg) {
        ("DOWNSTREAM_REMOTE_ADDRESS", None) => Command::RemoteAddress,
        ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", None) => Command::RemoteAddressWithoutPort,
        ("DOWNSTREAM_LOCAL_ADDRESS", None) => Command::LocalAddress,
        ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", None) => Command::LocalAddressWithoutPort,
        ("DOWNSTREAM_LOCAL_PORT", None) => Command::LocalPort,
        ("DOWNSTREAM_PEER_URI_SAN", None) => Command::PeerUriSan,
        ("PROTOCOL", None) => Command::Protocol,
        ("START_TIME", format) => Command::StartTime(time_format(format.unwrap_or(DEFAULT_TIME))?),
        ("REQ", Some(arg)) => {
            let (main, alternative) = match arg.split_once('?') {
                Some((main, alternative)) => (main, Some(alternative)),
                None => (arg, None),
            };
            Command::Request(
                request_field(main)?,
                alternative.map(request_field).transpose()?,
            )
        }
        ("REQ", None) => return Err("`%REQ%` needs a header: `%REQ(name)%`".into()),
        _ => {
            let written = match arg {
                Some(arg) => format!("%{name}({arg})%"),
                None => format!("%{name}%"),
            };
            return Err(format!(
                "`{written}` is not a command operator meshgate renders (it renders {SUPPORTED})"
            ));
        }
    };
    Ok((Part::Command { command, max }, rest))
}

/// A `START_TIME` format, read when the route is loaded.
fn time_format(format: &str) -> Result<Box<[TimePart]>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let mut spec = chars
            .next()
            .ok_or_else(|| format!("`START_TIME({format})` ends in `%`"))?;
        let mut digits = None;
        if let Some(d) = spec.to_digit(10).filter(|d| (1..=9).contains(d)) {
            digits = Some(d);
            spec = chars.next().unwrap_or(' ');
            if spec != 'f' {
                return Err(format!(
                    "`START_TIME({format})`: a digit after `%` is only read before `f` (`%3f`)"
                ));
            }
        }
        let part = match spec {
            '%' => {
                text.push('%');
                continue;
            }
            'Y' => TimePart::Year,
            'm' => TimePart::Month,
            'd' => TimePart::Day,
            'H' => TimePart::Hour,
            'M' => TimePart::Minute,
            'S' => TimePart::Second,
            's' => TimePart::Epoch,
            'f' => TimePart::Fraction(digits.unwrap_or(9)),
            'z' => TimePart::Offset,
            'Z' => TimePart::Zone,
            other => {
                return Err(format!(
                    "`START_TIME({format})`: `%{other}` is not a specifier meshgate renders (it \
                     renders %Y %m %d %H %M %S %s %f %1f-%9f %z %Z %%)"
                ))
            }
        };
        if !text.is_empty() {
            parts.push(TimePart::Text(std::mem::take(&mut text).into()));
        }
        parts.push(part);
    }
    if !text.is_empty() {
        parts.push(TimePart::Text(text.into()));
    }
    let texts_valid = parts.iter().all(|p| match p {
        TimePart::Text(t) => HeaderValue::from_str(t).is_ok(),
        _ => true,
    });
    if !texts_valid {
        return Err(format!(
            "`START_TIME({format})`: its text is not valid in a header value"
        ));
    }
    Ok(parts.into())
}

fn render_time(parts: &[TimePart], start: SystemTime, out: &mut String) {
    let t = time::OffsetDateTime::from(start);
    for part in parts {
        let _ = match part {
            TimePart::Text(text) => {
                out.push_str(text);
                Ok(())
            }
            TimePart::Year => write!(out, "{:04}", t.year()),
            TimePart::Month => write!(out, "{:02}", u8::from(t.month())),
            TimePart::Day => write!(out, "{:02}", t.day()),
            TimePart::Hour => write!(out, "{:02}", t.hour()),
            TimePart::Minute => write!(out, "{:02}", t.minute()),
            TimePart::Second => write!(out, "{:02}", t.second()),
            TimePart::Epoch => write!(out, "{}", t.unix_timestamp()),
            TimePart::Fraction(digits) => {
                let nanos = format!("{:09}", t.nanosecond());
                out.push_str(nanos.get(..*digits as usize).unwrap_or(&nanos));
                Ok(())
            }
            TimePart::Offset => {
                out.push_str("+0000");
                Ok(())
            }
            TimePart::Zone => {
                out.push_str("UTC");
                Ok(())
            }
        };
    }
}

fn request_field(name: &str) -> Result<RequestField, String> {
    let lower = name.trim().to_ascii_lowercase();
    Ok(match lower.as_str() {
        ":authority" => RequestField::Authority,
        // Envoy keeps an HTTP/1.1 `Host` as `:authority`: `REQ(host)` finds nothing there.
        "host" => {
            return Err(
                "Envoy reads `%REQ(host)%` as nothing (the host is `:authority`): write \
                 `%REQ(:authority)%`"
                    .into(),
            )
        }
        ":path" => RequestField::Path,
        ":method" => RequestField::Method,
        ":scheme" => RequestField::Scheme,
        _ => RequestField::Header(
            HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| format!("`{name}` in `%REQ(...)%` is not a header name"))?,
        ),
    })
}

/// What commands read: the request's connection and its head (its fields apart: a request's
/// own operations change them as they go).
#[derive(Debug, Clone, Copy)]
pub struct FormatContext<'a> {
    /// The client as trusted: the peer, the PROXY header's source, or the address
    /// `x-forwarded-for` gave (port 0, as Envoy).
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The client certificate's URI SANs: its SPIFFE ID, or a `MUTUAL` certificate's list.
    pub peer_uris: PeerUris<'a>,
    pub version: Version,
    /// When the request started (its head was read).
    pub start: SystemTime,
    pub method: &'a Method,
    pub authority: Option<&'a str>,
    /// The path and query.
    pub path: &'a str,
    pub scheme: &'a str,
}

/// A client certificate's URI SANs.
#[derive(Debug, Clone, Copy)]
pub enum PeerUris<'a> {
    None,
    One(&'a str),
    Many(&'a [String]),
}

impl Command {
    fn render(&self, cx: &FormatContext<'_>, headers: &HeaderMap, out: &mut String) {
        let _ = match self {
            Self::RemoteAddress => write!(out, "{}", cx.remote),
            Self::RemoteAddressWithoutPort => write!(out, "{}", cx.remote.ip()),
            Self::LocalAddress => write!(out, "{}", cx.local),
            Self::LocalAddressWithoutPort => write!(out, "{}", cx.local.ip()),
            Self::LocalPort => write!(out, "{}", cx.local.port()),
            Self::PeerUriSan => {
                match cx.peer_uris {
                    PeerUris::None => {}
                    PeerUris::One(uri) => out.push_str(uri),
                    PeerUris::Many(uris) => out.push_str(&uris.join(",")),
                }
                Ok(())
            }
            Self::Protocol => {
                out.push_str(match cx.version {
                    Version::HTTP_09 => "HTTP/0.9",
                    Version::HTTP_10 => "HTTP/1.0",
                    Version::HTTP_2 => "HTTP/2",
                    Version::HTTP_3 => "HTTP/3",
                    _ => "HTTP/1.1",
                });
                Ok(())
            }
            Self::StartTime(parts) => {
                render_time(parts, cx.start, out);
                Ok(())
            }
            Self::Request(main, alternative) => {
                let found = main
                    .read(cx, headers)
                    .or_else(|| alternative.as_ref().and_then(|a| a.read(cx, headers)));
                out.push_str(found.unwrap_or_default());
                Ok(())
            }
        };
    }
}

impl RequestField {
    fn read<'a>(&self, cx: &FormatContext<'a>, headers: &'a HeaderMap) -> Option<&'a str> {
        match self {
            Self::Header(name) => headers.get(name).and_then(|v| v.to_str().ok()),
            Self::Authority => cx.authority,
            Self::Path => Some(cx.path),
            Self::Method => Some(cx.method.as_str()),
            Self::Scheme => Some(cx.scheme),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(value: &str, (cx, headers): (&FormatContext<'_>, &HeaderMap)) -> Option<String> {
        let source = HeaderValueSource::parse(value).unwrap();
        source
            .render(cx, headers)
            .map(|v| v.to_str().unwrap().to_string())
    }

    fn with<T>(f: impl FnOnce((&FormatContext<'_>, &HeaderMap)) -> T) -> T {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        headers.insert("x-empty", HeaderValue::from_static(""));
        let uris = vec!["spiffe://a/ns/x/sa/y".to_string(), "urn:z".to_string()];
        let cx = FormatContext {
            remote: "[2001:db8::1]:0".parse().unwrap(),
            local: "10.0.0.5:8443".parse().unwrap(),
            peer_uris: PeerUris::Many(&uris),
            version: Version::HTTP_2,
            // 2026-12-06T03:15:51.123456789Z
            start: SystemTime::UNIX_EPOCH + std::time::Duration::new(1_796_526_951, 123_456_789),
            method: &Method::GET,
            authority: Some("api.example.com:8443"),
            path: "/a?b=c",
            scheme: "https",
        };
        f((&cx, &headers))
    }

    #[test]
    fn commands_render_as_envoy_renders_them() {
        with(|cx| {
            let cases = [
                ("%DOWNSTREAM_REMOTE_ADDRESS%", "[2001:db8::1]:0"),
                ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "2001:db8::1"),
                ("ip=%DOWNSTREAM_LOCAL_ADDRESS%;", "ip=10.0.0.5:8443;"),
                ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.0.0.5"),
                ("%DOWNSTREAM_LOCAL_PORT%", "8443"),
                ("%DOWNSTREAM_PEER_URI_SAN%", "spiffe://a/ns/x/sa/y,urn:z"),
                ("%PROTOCOL%", "HTTP/2"),
                ("%REQ(X-Request-Id)%", "abc"),
                ("%REQ(x-missing?x-request-id)%", "abc"),
                (
                    "%REQ(:authority)% %REQ(:path)% %REQ(:method)%",
                    "api.example.com:8443 /a?b=c GET",
                ),
                ("%REQ(x-request-id):2%", "ab"),
                ("100%% of %PROTOCOL%", "100% of HTTP/2"),
                ("100%%", "100%"),
                ("%START_TIME%", "2026-12-06T03:15:51.123Z"),
                ("t=%START_TIME(%s.%3f)%", "t=1796526951.123"),
                (
                    "%START_TIME(%Y%m%d %H:%M:%S.%f %z %Z %%)%",
                    "20261206 03:15:51.123456789 +0000 UTC %",
                ),
                ("%START_TIME(%6f)%", "123456"),
            ];
            for (value, want) in cases {
                assert_eq!(render(value, cx).as_deref(), Some(want), "{value}");
            }
            // Nothing rendered: the header is left out.
            assert_eq!(render("%REQ(x-missing)%", cx), None);
            assert_eq!(render("%REQ(x-empty)%", cx), None);
            // Text around an empty command stays.
            assert_eq!(render("v=%REQ(x-missing)%", cx).as_deref(), Some("v="));
        });
    }

    #[test]
    fn a_value_without_commands_is_fixed() {
        assert!(matches!(
            HeaderValueSource::parse("plain").unwrap(),
            HeaderValueSource::Fixed(_)
        ));
        let escaped = HeaderValueSource::parse("50%%").unwrap();
        assert!(matches!(&escaped, HeaderValueSource::Fixed(v) if v == "50%"));
        assert!(!escaped.reads_request());
        assert!(HeaderValueSource::parse("%REQ(a)%")
            .unwrap()
            .reads_request());
        assert!(!HeaderValueSource::parse("%PROTOCOL%")
            .unwrap()
            .reads_request());
    }

    #[test]
    fn values_envoy_refuses_are_errors() {
        let cases = [
            ("100%", "starts no command"),
            ("%", "starts no command"),
            ("%PROTOCOL", "no closing `%`"),
            ("%REQ(x-a%", "has no `)`"),
            ("%REQ%", "needs a header"),
            ("%START_TIME(%A)%", "`%A` is not a specifier"),
            ("%START_TIME(%3d)%", "only read before `f`"),
            ("%START_TIME(%)%", "ends in `%`"),
            (
                "%START_TIME(%Y\u{1})%",
                "its text is not valid in a header value",
            ),
            ("%REQ(host)%", "write `%REQ(:authority)%`"),
            (
                "%REQUESTED_SERVER_NAME%",
                "not a command operator meshgate renders",
            ),
            ("%UPSTREAM_HOST%", "not a command operator"),
            ("%DOWNSTREAM_LOCAL_URI_SAN%", "not a command operator"),
            ("%ENVIRONMENT(HOME)%", "`%ENVIRONMENT(HOME)%`"),
            ("%PROTOCOL:x%", "needs a length"),
            ("%REQ(bad name)%", "is not a header name"),
            ("a\u{1}%PROTOCOL%", "not a valid header value"),
        ];
        for (value, want) in cases {
            let err = HeaderValueSource::parse(value).unwrap_err();
            assert!(err.contains(want), "{value}: {err}");
        }
    }
}

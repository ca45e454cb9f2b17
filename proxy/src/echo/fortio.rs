//! Fortio's echo query parameters (`fortio.org/fortio/fhttp`, `EchoHandler`), read from a
//! request's query and drawn for that request, so load-test scripts written for `fortio server`
//! run unchanged against `meshgate echo`.
//!
//! | parameter | value | meaning |
//! |---|---|---|
//! | `delay` | a Go duration (`250us`, `10ms`, `1.5s`, `1m30s`) or a list `10ms:20,1s:0.5` | sleep first; a list gives each delay a percentage chance, no delay for the rest |
//! | `status` | a code or a list `503:20,429:10` | answer with that status; a list: 200 for the rest |
//! | `size` | bytes or a list `1024:50,16384:10` | answer with that many payload bytes instead of the request body; a list: echo for the rest |
//! | `header` | `Name:Value`, repeatable | add that header to the response |
//! | `close` | `true`, `false` or a percentage | close the connection after the response (that share of the time) |
//!
//! Where fortio leaves a choice, meshgate decides as follows:
//!
//! - Percentages are cumulative along a list and must not add up to more than 100 (fortio's
//!   rule); they are kept to 1/10 000 of a per cent. The draw is uniform in `[0, 100)` and an
//!   entry wins while the draw is below its running total, so `:100` always wins and `:0` never
//!   does (fortio compares with `<=`, which lets `:0` win once in 2^24 draws).
//! - Each parameter is drawn on its own, as in fortio: a request may be delayed and fail.
//! - A delay or a size over the server's maximum is cut to it, as fortio does (`--max-delay`,
//!   1.5 s, fortio's `-max-echo-delay`; `--max-payload-kb`, 256, fortio's `-maxpayloadsizekb`).
//! - An empty value is the default (no delay, 200, echo, keep the connection; no header), as
//!   fortio reads an empty form value.
//! - Every value fortio would log and ignore, or turn into a guess, is refused here with a
//!   400 that names the parameter, the value and the reason: an unparsable delay or size, a
//!   status outside 200..=999, a list entry without `:PERCENT`, percentages over 100 in sum,
//!   `close=maybe` (fortio closes), a `header` without `:` or with a framing header, a
//!   parameter given twice (fortio takes the first), and `gzip`, which meshgate does not do.
//! - Other query parameters are the caller's and are left alone, as in fortio.
//! - Only the query is read: fortio's Go `FormValue` also reads a urlencoded POST body, which
//!   here is echoed, never parsed.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};

/// The limits the server puts on what a request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest `delay`; longer ones sleep this long.
    pub max_delay: Duration,
    /// The largest `size`; larger ones send this many bytes.
    pub max_payload: usize,
}

/// What fortio's parameters ask of one response, drawn for this request.
#[derive(Debug)]
pub struct Answer {
    /// How long to wait before answering.
    pub delay: Option<Duration>,
    pub status: StatusCode,
    /// Payload bytes to send instead of the request body.
    pub size: Option<usize>,
    /// Close the connection once the response is sent.
    pub close: bool,
    /// `header=` values, in order; empty (and not allocated) without any.
    pub headers: HeaderMap,
}

/// A query parameter meshgate will not answer: names it, its value and why.
#[derive(Debug, thiserror::Error)]
#[error("{param}={value}: {reason}")]
pub struct ParamError {
    param: Box<str>,
    value: Box<str>,
    reason: Reason,
}

/// Why a parameter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Not a Go duration.
    #[error("not a duration: a number and a unit (ns, us, ms, s, m, h), as 10ms, 1.5s or 1m30s")]
    Duration,
    /// Not a status code meshgate can answer with.
    #[error("not a status code from 200 to 999")]
    Status,
    /// Not a whole number of bytes.
    #[error("not a size in bytes")]
    Size,
    /// A list entry that is not `VALUE:PERCENT`.
    #[error("each entry of a list is VALUE:PERCENT, the entries separated by commas")]
    Entry,
    /// A percentage outside 0..=100.
    #[error("not a percentage from 0 to 100")]
    Percent,
    /// A list whose percentages add up to more than 100.
    #[error("the percentages add up to more than 100")]
    Sum,
    /// A `close` that is neither a boolean nor a percentage.
    #[error("not true, false or a percentage from 0 to 100")]
    Close,
    /// A `header` without the colon.
    #[error("not Name:Value")]
    Header,
    /// A `header` whose name is not a valid HTTP field name.
    #[error("not a valid header name")]
    HeaderName,
    /// A `header` whose value is not a valid HTTP field value.
    #[error("not a valid header value")]
    HeaderValue,
    /// A `header` that would change the message's framing or the connection.
    #[error("framing and connection headers are the server's own (close= closes the connection)")]
    Reserved,
    /// A single-valued parameter given more than once.
    #[error("given more than once")]
    Repeated,
    /// fortio's `gzip`.
    #[error("meshgate echo does not compress responses")]
    Gzip,
    /// A malformed percent-escape, or bytes that are not UTF-8.
    #[error("not valid percent-encoded UTF-8")]
    Encoding,
}

/// Whether a request asks for fortio's echo: a path of `/echo` or under `/echo/` (where fortio
/// scripts point), or any of fortio's parameters in the query.
pub fn asked(path: &str, query: Option<&str>) -> bool {
    path == "/echo"
        || path.starts_with("/echo/")
        || query.is_some_and(|q| {
            pairs(q).any(|(key, _)| decode(key).is_some_and(|k| PARAMETERS.contains(&&*k)))
        })
}

/// Reads fortio's parameters from `query` and draws each for this request; `roll` gives a
/// uniform draw in `0..1_000_000` (millionths of the whole).
pub fn answer(
    query: &str,
    limits: Limits,
    roll: &mut impl FnMut() -> u32,
) -> Result<Answer, ParamError> {
    let mut answer = Answer {
        delay: None,
        status: StatusCode::OK,
        size: None,
        close: false,
        headers: HeaderMap::new(),
    };
    let (mut delay, mut status, mut size, mut close) = (false, false, false, false);
    for (raw_key, raw_value) in pairs(query) {
        let key = decode(raw_key).ok_or_else(|| error(raw_key, raw_value, Reason::Encoding))?;
        let Some(param) = PARAMETERS.iter().copied().find(|p| *p == &*key) else {
            continue;
        };
        let value = decode(raw_value).ok_or_else(|| error(param, raw_value, Reason::Encoding))?;
        let once = |seen: &mut bool| {
            if std::mem::replace(seen, true) {
                Err(error(param, &value, Reason::Repeated))
            } else {
                Ok(())
            }
        };
        match param {
            "delay" => {
                once(&mut delay)?;
                answer.delay = pick(param, &value, roll(), parse_duration, Reason::Duration)?
                    .map(|d| d.min(limits.max_delay));
            }
            "status" => {
                once(&mut status)?;
                answer.status = pick(param, &value, roll(), parse_status, Reason::Status)?
                    .unwrap_or(StatusCode::OK);
            }
            "size" => {
                once(&mut size)?;
                answer.size = pick(
                    param,
                    &value,
                    roll(),
                    |v| v.parse::<usize>().ok(),
                    Reason::Size,
                )?
                .map(|s| s.min(limits.max_payload));
            }
            "close" => {
                once(&mut close)?;
                answer.close = parse_close(&value, roll())
                    .ok_or_else(|| error(param, &value, Reason::Close))?;
            }
            "header" => add_header(&mut answer.headers, &value)
                .map_err(|reason| error(param, &value, reason))?,
            _ => return Err(error(param, &value, Reason::Gzip)),
        }
    }
    Ok(answer)
}

/// One value of fortio's single-or-list form, drawn with `roll`: the value itself, or the
/// list entry the draw falls in (`None` for the share no entry claims). The whole list is
/// checked whatever the draw, so a bad entry is refused every time, not by chance.
pub fn pick<T>(
    param: &str,
    value: &str,
    roll: u32,
    parse: impl Fn(&str) -> Option<T>,
    reason: Reason,
) -> Result<Option<T>, ParamError> {
    if value.is_empty() {
        return Ok(None);
    }
    let fail = |reason| error(param, value, reason);
    if !value.contains([':', ',']) {
        return parse(value).map(Some).ok_or_else(|| fail(reason));
    }
    let mut total: u32 = 0;
    let mut picked = None;
    for entry in value.split(',') {
        let (v, share) = entry
            .split_once(':')
            .filter(|(_, share)| !share.contains(':'))
            .ok_or_else(|| fail(Reason::Entry))?;
        let v = parse(v).ok_or_else(|| fail(reason))?;
        let share = parse_percent(share).ok_or_else(|| fail(Reason::Percent))?;
        total = total
            .checked_add(share)
            .filter(|t| *t <= WHOLE)
            .ok_or_else(|| fail(Reason::Sum))?;
        if picked.is_none() && roll < total {
            picked = Some(v);
        }
    }
    Ok(picked)
}

/// A Go `time.ParseDuration` string, as fortio reads `delay`: a sequence of decimal numbers,
/// each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), or a bare `0`. Negative durations,
/// which fortio reads as no delay, are refused.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (whole, r) = rest.split_at_checked(digits(rest))?;
        let (fraction, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at_checked(digits(r))?,
            None => ("", r),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_len = r
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(r.len());
        let (unit, r) = r.split_at_checked(unit_len)?;
        let per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole = if whole.is_empty() {
            0
        } else {
            whole.parse::<u128>().ok()?
        };
        // Nanoseconds are the finest unit: digits past the eighteenth cannot matter.
        let fraction = fraction.get(..fraction.len().min(18)).unwrap_or("");
        let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        let fraction = if fraction.is_empty() {
            0
        } else {
            fraction.parse::<u128>().ok()?
        };
        nanos = nanos
            .checked_add(whole.checked_mul(per)?)?
            .checked_add(fraction.checked_mul(per)?.checked_div(scale)?)?;
        rest = r;
    }
    u64::try_from(nanos).ok().map(Duration::from_nanos)
}

/// A status meshgate can answer with: a final status, 200 to 999 (fortio's own tests use
/// 567 and 568; informational 1xx cannot end an exchange).
fn parse_status(s: &str) -> Option<StatusCode> {
    s.parse::<u16>()
        .ok()
        .filter(|c| (200..=999).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
}

/// A percentage, 0 to 100 with an optional `%`, in millionths of the whole.
fn parse_percent(s: &str) -> Option<u32> {
    let p: f64 = s.strip_suffix('%').unwrap_or(s).parse().ok()?;
    if !(0.0..=100.0).contains(&p) {
        return None;
    }
    // In range by the check above: 0 to 1 000 000.
    #[allow(clippy::arithmetic_side_effects)]
    let millionths = (p * 10_000.0).round() as u32;
    Some(millionths)
}

/// fortio's `close`: `true`, `false`, or a percentage chance of closing.
fn parse_close(s: &str, roll: u32) -> Option<bool> {
    match s {
        "" | "false" => Some(false),
        "true" => Some(true),
        share => parse_percent(share).map(|share| roll < share),
    }
}

/// Adds one `Name:Value` to `headers` (an empty value adds nothing, as in fortio).
fn add_header(headers: &mut HeaderMap, value: &str) -> Result<(), Reason> {
    if value.is_empty() {
        return Ok(());
    }
    let (name, v) = value.split_once(':').ok_or(Reason::Header)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| Reason::HeaderName)?;
    if RESERVED.contains(&name) {
        return Err(Reason::Reserved);
    }
    let v = HeaderValue::from_str(v.trim()).map_err(|_| Reason::HeaderValue)?;
    headers.append(name, v);
    Ok(())
}

/// The `key=value` pairs of a query, undecoded; a pair without `=` has an empty value.
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a byte), borrowing when
/// there is nothing to decode; `None` for a bad escape or bytes that are not UTF-8. Ten lines
/// here rather than the `form_urlencoded` crate, which would be this crate's only use of it.
fn decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let high = hex(bytes.next()?)?;
                high.checked_mul(16)?.checked_add(hex(bytes.next()?)?)?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The number of ASCII digits `s` starts with.
fn digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

fn error(param: &str, value: &str, reason: Reason) -> ParamError {
    ParamError {
        param: param.into(),
        value: value.into(),
        reason,
    }
}

/// The parameters fortio's echo reads (`gzip` only to refuse it).
const PARAMETERS: [&str; 6] = ["delay", "status", "size", "header", "close", "gzip"];

/// The whole of a draw: percentages are kept in millionths.
const WHOLE: u32 = 1_000_000;

/// Headers a `header=` may not set: they frame the message or steer the connection, which
/// the server does (HTTP/1.1 `Connection: close` comes from `close=`).
const RESERVED: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_delay: Duration::from_millis(1500),
        max_payload: 256 * 1024,
    };

    fn draw(query: &str, roll: u32) -> Result<Answer, ParamError> {
        answer(query, LIMITS, &mut || roll)
    }

    fn refused(query: &str) -> Reason {
        draw(query, 0).unwrap_err().reason
    }

    #[test]
    fn go_durations_parse_as_time_parse_duration_does() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("0", Duration::ZERO),
            ("10ms", ms(10)),
            ("1s", ms(1000)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1.s", ms(1000)),
            ("+2ms", ms(2)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("250μs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("1m30s", ms(90_000)),
            ("1h", ms(3_600_000)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1.0000000000000000001s", ms(1000)),
        ] {
            assert_eq!(parse_duration(s), Some(want), "{s}");
        }
        for s in [
            "",
            "10",
            "ms",
            ".ms",
            "-1s",
            "1x",
            "1 s",
            "1s ",
            "1.2.3s",
            "1e3ms",
            "0s0",
            "99999999999h",
        ] {
            assert_eq!(parse_duration(s), None, "{s:?}");
        }
    }

    #[test]
    fn a_list_gives_each_entry_its_share_of_the_draws() {
        // 10% 503, 5% 429, 85% the default: the draw is in millionths.
        let value = "503:10,429:5";
        let status = |roll| pick("status", value, roll, parse_status, Reason::Status).unwrap();
        assert_eq!(status(0), StatusCode::from_u16(503).ok());
        assert_eq!(status(99_999), StatusCode::from_u16(503).ok());
        assert_eq!(status(100_000), StatusCode::from_u16(429).ok());
        assert_eq!(status(149_999), StatusCode::from_u16(429).ok());
        assert_eq!(status(150_000), None);
        assert_eq!(status(999_999), None);
    }

    #[test]
    fn hundred_percent_always_wins_and_zero_never_does() {
        for roll in [0, 1, 500_000, 999_999] {
            let d = |v| pick("delay", v, roll, parse_duration, Reason::Duration).unwrap();
            assert_eq!(d("10ms:100"), Some(Duration::from_millis(10)));
            assert_eq!(d("10ms:100%"), Some(Duration::from_millis(10)));
            assert_eq!(d("10ms:0"), None);
            assert_eq!(d("10ms:0,20ms:100"), Some(Duration::from_millis(20)));
            assert_eq!(d("10ms:0,20ms:0"), None);
        }
    }

    #[test]
    fn fractional_percentages_keep_four_decimals() {
        let size = |roll| pick("size", "64:0.0001", roll, |v| v.parse().ok(), Reason::Size);
        assert_eq!(size(0).unwrap(), Some(64usize));
        assert_eq!(size(1).unwrap(), None);
        let status = |roll| {
            pick(
                "status",
                "503:33.33,504:33.33",
                roll,
                parse_status,
                Reason::Status,
            )
        };
        assert_eq!(status(333_299).unwrap(), StatusCode::from_u16(503).ok());
        assert_eq!(status(333_300).unwrap(), StatusCode::from_u16(504).ok());
        assert_eq!(status(666_600).unwrap(), None);
    }

    #[test]
    fn bad_lists_are_refused_whatever_the_draw() {
        let status = |v: &str, roll| {
            pick("status", v, roll, parse_status, Reason::Status)
                .unwrap_err()
                .reason
        };
        // The bad entry comes after the one the draw picks: still refused.
        assert_eq!(status("503:10,abc:5", 0), Reason::Status);
        assert_eq!(status("503:60,429:50", 0), Reason::Sum);
        assert_eq!(status("503:101", 0), Reason::Percent);
        assert_eq!(status("503:-1", 0), Reason::Percent);
        assert_eq!(status("503:NaN", 0), Reason::Percent);
        assert_eq!(status("503:inf", 0), Reason::Percent);
        assert_eq!(status("503,504", 0), Reason::Entry);
        assert_eq!(status("503:10,", 0), Reason::Entry);
        assert_eq!(status("503:1:2", 0), Reason::Entry);
        assert_eq!(status("99", 0), Reason::Status);
        assert_eq!(status("1000", 0), Reason::Status);
        assert_eq!(status("101", 0), Reason::Status);
    }

    #[test]
    fn the_percentages_may_add_up_to_exactly_a_hundred() {
        let v = "503:33.3333,504:33.3333,505:33.3334";
        let status = pick("status", v, 999_999, parse_status, Reason::Status).unwrap();
        assert_eq!(status, StatusCode::from_u16(505).ok());
    }

    #[test]
    fn the_answer_reads_every_parameter() {
        let a = draw(
            "delay=10ms&status=418&size=64&close=true&header=X-A:1&header=x-a:%202&x=y",
            0,
        )
        .unwrap();
        assert_eq!(a.delay, Some(Duration::from_millis(10)));
        assert_eq!(a.status, StatusCode::IM_A_TEAPOT);
        assert_eq!(a.size, Some(64));
        assert!(a.close);
        let values: Vec<_> = a.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }

    #[test]
    fn empty_values_are_the_defaults() {
        let a = draw("delay=&status=&size=&close=&header=", 0).unwrap();
        assert_eq!(a.delay, None);
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.size, None);
        assert!(!a.close);
        assert!(a.headers.is_empty());
    }

    #[test]
    fn delays_and_sizes_over_the_limits_are_cut_to_them() {
        let a = draw("delay=1h&size=10000000", 0).unwrap();
        assert_eq!(a.delay, Some(LIMITS.max_delay));
        assert_eq!(a.size, Some(LIMITS.max_payload));
        let a = draw("delay=5s:100", 0).unwrap();
        assert_eq!(a.delay, Some(LIMITS.max_delay));
    }

    #[test]
    fn close_takes_a_boolean_or_a_percentage() {
        assert!(draw("close=true", 999_999).unwrap().close);
        assert!(!draw("close=false", 0).unwrap().close);
        assert!(draw("close=100", 999_999).unwrap().close);
        assert!(!draw("close=0", 0).unwrap().close);
        assert!(draw("close=5.3", 52_999).unwrap().close);
        assert!(!draw("close=5.3", 53_000).unwrap().close);
        assert_eq!(refused("close=maybe"), Reason::Close);
        assert_eq!(refused("close=true:10"), Reason::Close);
    }

    #[test]
    fn bad_parameters_are_refused_with_the_reason() {
        assert_eq!(refused("delay=abc"), Reason::Duration);
        assert_eq!(refused("delay=-1s"), Reason::Duration);
        assert_eq!(refused("size=-1"), Reason::Size);
        assert_eq!(refused("size=1k"), Reason::Size);
        assert_eq!(refused("header=NoColon"), Reason::Header);
        assert_eq!(refused("header=Bad%20Name:1"), Reason::HeaderName);
        assert_eq!(refused("header=X:%01"), Reason::HeaderValue);
        assert_eq!(refused("header=Content-Length:5"), Reason::Reserved);
        assert_eq!(refused("header=connection:close"), Reason::Reserved);
        assert_eq!(refused("status=200&status=503"), Reason::Repeated);
        assert_eq!(refused("gzip=true"), Reason::Gzip);
        assert_eq!(refused("delay=%zz"), Reason::Encoding);
        assert_eq!(refused("delay=%ff"), Reason::Encoding);
        let e = draw("status=503:60,429:50", 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "status=503:60,429:50: the percentages add up to more than 100"
        );
    }

    #[test]
    fn fortio_is_asked_by_its_parameters_or_the_echo_path() {
        assert!(asked("/", Some("delay=1ms")));
        assert!(asked("/anything", Some("x=1&size=10")));
        assert!(asked("/", Some("st%61tus=200")));
        assert!(asked("/echo", None));
        assert!(asked("/echo/x", Some("q=1")));
        assert!(!asked("/", None));
        assert!(!asked("/anything", Some("x=1")));
        assert!(!asked("/echoes", None));
        assert!(!asked("/get", Some("delayed=1&sizes=2")));
    }

    #[test]
    fn queries_decode_as_forms() {
        assert_eq!(decode("a+b%3Ac").as_deref(), Some("a b:c"));
        assert_eq!(decode("plain").as_deref(), Some("plain"));
        assert!(matches!(decode("plain"), Some(Cow::Borrowed(_))));
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%C3%A9").as_deref(), Some("é"));
    }
}

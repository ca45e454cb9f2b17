//! The ClientHello, read without terminating: the SNI and ALPN a passthrough listener routes
//! and filters by.
//!
//! The whole ClientHello is read, from as many TLS records and reads as it takes (with a
//! post-quantum key share it is over 1.2 KB, and a client may send it in pieces); nothing is
//! consumed, since every byte is replayed to the upstream.

/// The most a ClientHello may take, records included: a handshake message of up to 64 KiB is
/// legal, but no client sends one over a few KiB.
pub const MAX_HELLO: usize = 16 * 1024;

/// What the ClientHello says (owned: made once per connection, beside a TCP connect).
#[derive(Debug, PartialEq, Eq)]
pub struct Hello {
    /// The `server_name` extension's host name.
    pub sni: Option<String>,
    /// The `application_layer_protocol_negotiation` protocols, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// How far `parse` got.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The ClientHello is whole.
    Hello(Hello),
    /// More bytes are needed.
    Partial,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid(&'static str),
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const ALPN: u16 = 16;

/// Parses the ClientHello at the start of `buf`, the bytes read so far.
pub fn parse(buf: &[u8]) -> Parsed {
    // The handshake message, from the records it spans: borrowed when it is in one record,
    // the common case.
    let mut records = buf;
    let mut message: std::borrow::Cow<'_, [u8]> = std::borrow::Cow::Borrowed(&[]);
    loop {
        let Some((&[kind, major, _, hi, lo], after)) = records.split_first_chunk::<5>() else {
            // However small its records, a ClientHello is no more than this much to buffer.
            if buf.len() >= MAX_HELLO {
                return Parsed::Invalid("ClientHello too large");
            }
            return Parsed::Partial;
        };
        if kind != HANDSHAKE {
            return Parsed::Invalid("not a TLS handshake record");
        }
        if major != 3 {
            return Parsed::Invalid("not a TLS record version");
        }
        let length = u16::from_be_bytes([hi, lo]) as usize;
        if length == 0 || length > (1 << 14) {
            return Parsed::Invalid("bad TLS record length");
        }
        let Some((fragment, next)) = after.split_at_checked(length) else {
            if buf.len() >= MAX_HELLO {
                return Parsed::Invalid("ClientHello too large");
            }
            return Parsed::Partial;
        };
        if message.is_empty() {
            message = std::borrow::Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }
        if let Some((&[kind, b1, b2, b3], rest)) = message.split_first_chunk::<4>() {
            if kind != CLIENT_HELLO {
                return Parsed::Invalid("first handshake message is not a ClientHello");
            }
            let body = u32::from_be_bytes([0, b1, b2, b3]) as usize;
            if body.saturating_add(4) > MAX_HELLO {
                return Parsed::Invalid("ClientHello too large");
            }
            if let Some(body) = rest.get(..body) {
                return match client_hello(body) {
                    Ok(hello) => Parsed::Hello(hello),
                    Err(why) => Parsed::Invalid(why),
                };
            }
        }
        records = next;
    }
}

fn client_hello(body: &[u8]) -> Result<Hello, &'static str> {
    let found = locate(body)?;
    let sni = match found.sni {
        Some(name) => Some(
            std::str::from_utf8(name)
                .map_err(|_| "server name is not text")?
                .to_string(),
        ),
        None => None,
    };
    let alpn = found.alpn.into_iter().map(<[u8]>::to_vec).collect();
    Ok(Hello { sni, alpn })
}

/// The SNI and each ALPN protocol of a ClientHello body, borrowed from it.
struct Found<'a> {
    sni: Option<&'a [u8]>,
    alpn: Vec<&'a [u8]>,
}

fn locate(body: &[u8]) -> Result<Found<'_>, &'static str> {
    const MALFORMED: &str = "malformed ClientHello";
    let mut r = Reader { buf: body, at: 0 };
    r.skip(2 + 32).ok_or(MALFORMED)?; // legacy_version, random
    let n = r.u8().ok_or(MALFORMED)? as usize;
    r.skip(n).ok_or(MALFORMED)?; // legacy_session_id
    let n = r.u16().ok_or(MALFORMED)? as usize;
    r.skip(n).ok_or(MALFORMED)?; // cipher_suites
    let n = r.u8().ok_or(MALFORMED)? as usize;
    r.skip(n).ok_or(MALFORMED)?; // legacy_compression_methods
    let mut found = Found {
        sni: None,
        alpn: Vec::new(),
    };
    if r.at == body.len() {
        return Ok(found); // no extensions
    }
    let n = r.u16().ok_or(MALFORMED)? as usize;
    let end = r.at.checked_add(n).ok_or(MALFORMED)?;
    if end != body.len() {
        return Err(MALFORMED);
    }
    while r.at < end {
        let kind = r.u16().ok_or(MALFORMED)?;
        let n = r.u16().ok_or(MALFORMED)? as usize;
        let data_end = r.at.checked_add(n).ok_or(MALFORMED)?;
        if data_end > end {
            return Err(MALFORMED);
        }
        match kind {
            SERVER_NAME if found.sni.is_none() => {
                let list = r.u16().ok_or(MALFORMED)? as usize;
                if r.at.checked_add(list) != Some(data_end) {
                    return Err(MALFORMED);
                }
                while r.at < data_end {
                    let name_type = r.u8().ok_or(MALFORMED)?;
                    let len = r.u16().ok_or(MALFORMED)? as usize;
                    let name = r.take(len).ok_or(MALFORMED)?;
                    if name_type == 0 && found.sni.is_none() {
                        found.sni = Some(name);
                    }
                }
            }
            ALPN if found.alpn.is_empty() => {
                let list = r.u16().ok_or(MALFORMED)? as usize;
                if r.at.checked_add(list) != Some(data_end) {
                    return Err(MALFORMED);
                }
                while r.at < data_end {
                    let len = r.u8().ok_or(MALFORMED)? as usize;
                    found.alpn.push(r.take(len).ok_or(MALFORMED)?);
                }
            }
            SERVER_NAME | ALPN => return Err("extension sent twice"),
            _ => {}
        }
        if r.at > data_end {
            return Err(MALFORMED);
        }
        r.at = data_end;
    }
    Ok(found)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next `n` bytes, if there are as many.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let v = self.buf.get(self.at..end)?;
        self.at = end;
        Some(v)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let &[hi, lo] = self.take(2)? else {
            return None;
        };
        Some(u16::from_be_bytes([hi, lo]))
    }
}

#[cfg(test)]
mod tests;

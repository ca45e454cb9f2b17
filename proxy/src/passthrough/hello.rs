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
    let mut at = 0;
    let mut message: std::borrow::Cow<'_, [u8]> = std::borrow::Cow::Borrowed(&[]);
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return Parsed::Partial;
        };
        if header[0] != HANDSHAKE {
            return Parsed::Invalid("not a TLS handshake record");
        }
        if header[1] != 3 {
            return Parsed::Invalid("not a TLS record version");
        }
        let length = u16::from_be_bytes([header[3], header[4]]) as usize;
        if length == 0 || length > (1 << 14) {
            return Parsed::Invalid("bad TLS record length");
        }
        let Some(fragment) = buf.get(at + 5..at + 5 + length) else {
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
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return Parsed::Invalid("first handshake message is not a ClientHello");
            }
            let body = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if body + 4 > MAX_HELLO {
                return Parsed::Invalid("ClientHello too large");
            }
            if message.len() >= body + 4 {
                return match client_hello(&message[4..4 + body]) {
                    Ok(hello) => Parsed::Hello(hello),
                    Err(why) => Parsed::Invalid(why),
                };
            }
        }
        at += 5 + length;
    }
}

fn client_hello(body: &[u8]) -> Result<Hello, &'static str> {
    let found = locate(body)?;
    let sni = match found.sni {
        Some((s, e)) => Some(
            std::str::from_utf8(&body[s..e])
                .map_err(|_| "server name is not text")?
                .to_string(),
        ),
        None => None,
    };
    let alpn = found
        .alpn
        .into_iter()
        .map(|(s, e)| body[s..e].to_vec())
        .collect();
    Ok(Hello { sni, alpn })
}

/// Where the SNI and each ALPN protocol are in a ClientHello body.
struct Found {
    sni: Option<(usize, usize)>,
    alpn: Vec<(usize, usize)>,
}

fn locate(body: &[u8]) -> Result<Found, &'static str> {
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
    let end = r.at + n;
    if end != body.len() {
        return Err(MALFORMED);
    }
    while r.at < end {
        let kind = r.u16().ok_or(MALFORMED)?;
        let n = r.u16().ok_or(MALFORMED)? as usize;
        let data_end = r.at + n;
        if data_end > end {
            return Err(MALFORMED);
        }
        match kind {
            SERVER_NAME if found.sni.is_none() => {
                let list = r.u16().ok_or(MALFORMED)? as usize;
                if r.at + list != data_end {
                    return Err(MALFORMED);
                }
                while r.at < data_end {
                    let name_type = r.u8().ok_or(MALFORMED)?;
                    let len = r.u16().ok_or(MALFORMED)? as usize;
                    let start = r.at;
                    r.skip(len).ok_or(MALFORMED)?;
                    if name_type == 0 && found.sni.is_none() {
                        found.sni = Some((start, start + len));
                    }
                }
            }
            ALPN if found.alpn.is_empty() => {
                let list = r.u16().ok_or(MALFORMED)? as usize;
                if r.at + list != data_end {
                    return Err(MALFORMED);
                }
                while r.at < data_end {
                    let len = r.u8().ok_or(MALFORMED)? as usize;
                    let start = r.at;
                    r.skip(len).ok_or(MALFORMED)?;
                    found.alpn.push((start, start + len));
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

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        (self.at + n <= self.buf.len()).then(|| self.at += n)
    }

    fn u8(&mut self) -> Option<u8> {
        let v = *self.buf.get(self.at)?;
        self.at += 1;
        Some(v)
    }

    fn u16(&mut self) -> Option<u16> {
        let v = self.buf.get(self.at..self.at + 2)?;
        self.at += 2;
        Some(u16::from_be_bytes([v[0], v[1]]))
    }
}

#[cfg(test)]
mod tests;

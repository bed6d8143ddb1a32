//! PROXY protocol v1 (text) and v2 (binary) headers, for listeners behind L4 load balancers
//! (HAProxy, AWS NLB — which speaks v2 only). The header is peeked, parsed, then consumed exactly, so
//! the TLS ClientHello behind it is untouched. A connection without a valid header is closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes; v2 headers we accept at most this long (addresses + TLVs).
const MAX_HEADER: usize = 1024;
const V1_MAX: usize = 107;

/// What a prefix of the stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes.
    Incomplete,
    /// Not a valid header; the connection must be closed.
    Invalid(&'static str),
    /// A header of `len` bytes; `source` is the client, or `None` for LOCAL/UNKNOWN (health checks).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.len() >= V2_SIGNATURE.len() && buf[..12] == V2_SIGNATURE {
        return parse_v2(buf);
    }
    if V2_SIGNATURE.starts_with(buf) && !buf.is_empty() && buf.len() < 12 && buf[0] == b'\r' {
        return Parsed::Incomplete;
    }
    if buf.len() < 6 {
        return if b"PROXY ".starts_with(buf) {
            Parsed::Incomplete
        } else {
            Parsed::Invalid("no PROXY protocol header")
        };
    }
    if &buf[..6] != b"PROXY " {
        return Parsed::Invalid("no PROXY protocol header");
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("v1 header too long")
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Parsed::Invalid("v1 header too long");
    }
    let Ok(line) = std::str::from_utf8(&buf[6..end]) else {
        return Parsed::Invalid("v1 header is not ASCII");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["UNKNOWN", ..] => Parsed::Header { len, source: None },
        [proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let Ok(ip) = src.parse::<IpAddr>() else {
                return Parsed::Invalid("v1 source address");
            };
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Parsed::Invalid("v1 address family mismatch");
            }
            let Ok(port) = sport.parse::<u16>() else {
                return Parsed::Invalid("v1 source port");
            };
            Parsed::Header {
                len,
                source: Some(SocketAddr::new(ip, port)),
            }
        }
        _ => Parsed::Invalid("v1 header fields"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Parsed::Invalid("v2 version");
    }
    let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > MAX_HEADER {
        return Parsed::Invalid("v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let body = &buf[16..len];
    match command {
        0 => return Parsed::Header { len, source: None }, // LOCAL: the balancer's own health check
        1 => {}
        _ => return Parsed::Invalid("v2 command"),
    }
    let family = buf[13] >> 4;
    let source = match family {
        0 => None, // AF_UNSPEC
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        1 | 2 => return Parsed::Invalid("v2 address block too short"),
        _ => return Parsed::Invalid("v2 address family"),
    };
    Parsed::Header { len, source }
}

/// Reads the header off `tcp` within `timeout`. `Ok(None)` = LOCAL/UNKNOWN (use the TCP peer).
pub async fn read_header(
    tcp: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, &'static str> {
    tokio::time::timeout(timeout, async {
        let mut buf = [0u8; MAX_HEADER];
        loop {
            let n = tcp.peek(&mut buf).await.map_err(|_| "read error")?;
            if n == 0 {
                return Err("closed before the PROXY header");
            }
            match parse(&buf[..n]) {
                Parsed::Incomplete if n == buf.len() => return Err("v2 header too long"),
                Parsed::Incomplete => tokio::time::sleep(Duration::from_millis(5)).await,
                Parsed::Invalid(reason) => return Err(reason),
                Parsed::Header { len, source } => {
                    tcp.read_exact(&mut buf[..len])
                        .await
                        .map_err(|_| "read error")?;
                    return Ok(source);
                }
            }
        }
    })
    .await
    .map_err(|_| "timed out waiting for the PROXY header")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | command);
        v.push(family);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\nTLS...";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 42,
                source: Some("203.0.113.9:5555".parse().unwrap())
            }
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: h.len(),
                source: Some("[2001:db8::7]:5555".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn v1_garbage_and_partial() {
        assert_eq!(
            parse(b"PROXY TCP4 nope 10.0.0.1 1 2\r\n"),
            Parsed::Invalid("v1 source address")
        );
        assert_eq!(
            parse(b"PROXY TCP6 203.0.113.9 10.0.0.1 1 2\r\n"),
            Parsed::Invalid("v1 address family mismatch")
        );
        assert_eq!(parse(b"PROXY TCP4 203.0.113.9"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01"),
            Parsed::Invalid("no PROXY protocol header")
        );
        assert_eq!(
            parse(&[b'P'; 200]),
            Parsed::Invalid("no PROXY protocol header")
        );
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 120));
        assert_eq!(parse(&long), Parsed::Invalid("v1 header too long"));
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6_with_tlvs() {
        let mut body = vec![198, 51, 100, 7, 10, 0, 0, 1, 0x15, 0xb3, 0x01, 0xbb];
        body.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a TLV, skipped
        let h = v2(1, 0x11, &body);
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: h.len(),
                source: Some("198.51.100.7:5555".parse().unwrap())
            }
        );
        let mut body = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[0x15, 0xb3, 0x01, 0xbb]);
        let h = v2(1, 0x21, &body);
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: h.len(),
                source: Some("[2001:db8::7]:5555".parse().unwrap())
            }
        );
    }

    #[test]
    fn v2_local_partial_and_invalid() {
        let h = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        let h = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(parse(&h[..20]), Parsed::Incomplete);
        assert_eq!(parse(&h[..5]), Parsed::Incomplete);
        assert_eq!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Parsed::Invalid("v2 address block too short")
        );
        assert_eq!(parse(&v2(7, 0x11, &[0; 12])), Parsed::Invalid("v2 command"));
        let mut h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x31;
        assert_eq!(parse(&h), Parsed::Invalid("v2 version"));
    }
}

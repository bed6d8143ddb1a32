//! The recording file: a versioned header, authenticated as associated data and free of PII, then
//! chunks sealed with AES-256-GCM in the STREAM construction (nonce = 7-byte random prefix ‖ 32-bit
//! big-endian chunk counter ‖ last-chunk flag), so reordering, dropping, altering or truncating chunks
//! is detected. Byte-by-byte specification: `docs/RECORDING_FORMAT.md`.

use ring::aead::{Aad, Nonce};

use crate::keys::KeyBytes;

pub const MAGIC: &[u8; 8] = b"VXGREC\r\n";
pub const VERSION: u16 = 1;
/// Largest chunk plaintext accepted by readers (writers seal far smaller ones).
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;
const TAG_LEN: usize = 16;

/// Audio encoding of the recorded samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Mulaw,
    Pcm16,
}

/// What the header says; none of it is PII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub recording_id: [u8; 16],
    pub created_ms: u64,
    pub codec: Codec,
    pub sample_rate: u32,
    pub channels: u8,
    pub nonce_prefix: [u8; 7],
    pub kek_id: String,
}

impl Header {
    /// The exact bytes written (and authenticated with every chunk).
    pub fn encode(&self) -> Vec<u8> {
        let mut fields = Vec::with_capacity(64);
        fields.extend_from_slice(&self.recording_id);
        fields.extend_from_slice(&self.created_ms.to_be_bytes());
        fields.push(match self.codec {
            Codec::Mulaw => 1,
            Codec::Pcm16 => 2,
        });
        fields.extend_from_slice(&self.sample_rate.to_be_bytes());
        fields.push(self.channels);
        fields.extend_from_slice(&self.nonce_prefix);
        let id = self.kek_id.as_bytes();
        fields.push(id.len() as u8);
        fields.extend_from_slice(id);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        out.extend_from_slice(&fields);
        out
    }

    /// Parses a header at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize), FormatError> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(FormatError::NotARecording);
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let len = usize::from(u16::from_be_bytes([bytes[10], bytes[11]]));
        let f = bytes.get(12..12 + len).ok_or(FormatError::BadHeader)?;
        if f.len() < 16 + 8 + 1 + 4 + 1 + 7 + 1 {
            return Err(FormatError::BadHeader);
        }
        let codec = match f[24] {
            1 => Codec::Mulaw,
            2 => Codec::Pcm16,
            _ => return Err(FormatError::BadHeader),
        };
        let id_len = usize::from(f[37]);
        let kek_id = f.get(38..38 + id_len).ok_or(FormatError::BadHeader)?;
        if 38 + id_len != f.len() {
            return Err(FormatError::BadHeader);
        }
        Ok((
            Header {
                recording_id: f[..16].try_into().expect("16 bytes"),
                created_ms: u64::from_be_bytes(f[16..24].try_into().expect("8 bytes")),
                codec,
                sample_rate: u32::from_be_bytes(f[25..29].try_into().expect("4 bytes")),
                channels: f[29],
                nonce_prefix: f[30..37].try_into().expect("7 bytes"),
                kek_id: String::from_utf8(kek_id.to_vec()).map_err(|_| FormatError::BadHeader)?,
            },
            12 + len,
        ))
    }

    pub fn id_hex(&self) -> String {
        crate::admission::signature::encoding::to_hex(&self.recording_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a voxguard recording (bad magic)")]
    NotARecording,
    #[error("unsupported recording format version {0}")]
    Version(u16),
    #[error("malformed header")]
    BadHeader,
}

fn nonce(prefix: &[u8; 7], counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Seals chunk `counter` of a file in place (`buf` becomes ciphertext ‖ tag) and returns the length
/// prefix to write before it. No second buffer: an open recording holds one chunk's worth of memory.
pub fn seal_chunk_in_place(
    dek: &KeyBytes,
    header_bytes: &[u8],
    prefix: &[u8; 7],
    counter: u32,
    last: bool,
    buf: &mut Vec<u8>,
) -> [u8; 4] {
    dek.aead()
        .seal_in_place_append_tag(nonce(prefix, counter, last), Aad::from(header_bytes), buf)
        .expect("sealing cannot fail below the size limit");
    (buf.len() as u32).to_be_bytes()
}

/// Seals chunk `counter` of a file: returns the on-disk bytes (u32 length ‖ ciphertext ‖ tag).
pub fn seal_chunk(
    dek: &KeyBytes,
    header_bytes: &[u8],
    prefix: &[u8; 7],
    counter: u32,
    last: bool,
    plain: &mut Vec<u8>,
) -> Vec<u8> {
    let len = seal_chunk_in_place(dek, header_bytes, prefix, counter, last, plain);
    let mut out = Vec::with_capacity(4 + plain.len());
    out.extend_from_slice(&len);
    out.append(plain);
    out
}

/// How a file's chunks checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// Every chunk authenticated and the last one is marked last.
    Complete { chunks: u32 },
    /// The file ends before a chunk marked last (a crash, or a cut): what came before is intact.
    Truncated { after: u32 },
    /// Chunk `index` (0-based) does not authenticate: altered, reordered or dropped chunks, or a header
    /// that was changed.
    BadChunk { index: u32 },
    /// Bytes after the last chunk.
    TrailingData { chunks: u32 },
}

impl std::fmt::Display for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Integrity::Complete { chunks } => write!(f, "complete ({chunks} chunks)"),
            Integrity::Truncated { after } => write!(f, "truncated after chunk {after}"),
            Integrity::BadChunk { index } => write!(
                f,
                "chunk {index} does not authenticate (altered, reordered or dropped)"
            ),
            Integrity::TrailingData { chunks } => {
                write!(f, "data after the last chunk ({chunks} chunks)")
            }
        }
    }
}

/// Opens every chunk of `file` (the whole file's bytes); returns the plaintexts that authenticated, in
/// order, and the verdict. Stops at the first bad chunk.
pub fn open_all(
    dek: &KeyBytes,
    file: &[u8],
) -> Result<(Header, Vec<Vec<u8>>, Integrity), FormatError> {
    let (header, header_len) = Header::decode(file)?;
    let header_bytes = &file[..header_len];
    let key = dek.aead();
    let mut at = header_len;
    let mut chunks = Vec::new();
    let mut counter: u32 = 0;
    loop {
        if at == file.len() {
            return Ok((header, chunks, Integrity::Truncated { after: counter }));
        }
        let Some(len_bytes) = file.get(at..at + 4) else {
            return Ok((header, chunks, Integrity::Truncated { after: counter }));
        };
        let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        if !(TAG_LEN..=MAX_CHUNK + TAG_LEN).contains(&len) {
            return Ok((header, chunks, Integrity::BadChunk { index: counter }));
        }
        let Some(sealed) = file.get(at + 4..at + 4 + len) else {
            return Ok((header, chunks, Integrity::Truncated { after: counter }));
        };
        at += 4 + len;
        let mut last = false;
        let mut plain = None;
        for flag in [false, true] {
            let mut buf = sealed.to_vec();
            if let Ok(p) = key.open_in_place(
                nonce(&header.nonce_prefix, counter, flag),
                Aad::from(header_bytes),
                &mut buf,
            ) {
                let n = p.len();
                buf.truncate(n);
                plain = Some(buf);
                last = flag;
                break;
            }
        }
        let Some(plain) = plain else {
            return Ok((header, chunks, Integrity::BadChunk { index: counter }));
        };
        chunks.push(plain);
        counter += 1;
        if last {
            let verdict = if at == file.len() {
                Integrity::Complete { chunks: counter }
            } else {
                Integrity::TrailingData { chunks: counter }
            };
            return Ok((header, chunks, verdict));
        }
    }
}

/// One record inside a chunk's plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at_ms: u32,
    /// 0 = to the backend (the caller's audio), 1 = to the caller (the backend's audio).
    pub direction: u8,
    /// 0 = inbound, 1 = outbound, 2 = single.
    pub track: u8,
    pub kind: u8,
    pub body: RecordBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// Samples in the header's codec (μ-law bytes, or 16-bit little-endian PCM).
    Audio(Vec<u8>),
    /// A non-audio event as JSON (already redacted).
    Event(Vec<u8>),
}

impl Record {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let body = match &self.body {
            RecordBody::Audio(b) | RecordBody::Event(b) => b,
        };
        self.encode_head_into(body.len(), out);
        out.extend_from_slice(body);
    }

    /// Writes everything but the body, which the caller appends (`body_len` bytes of it). The
    /// recording writer encodes from borrowed samples this way, without building a `Record`'s
    /// owned body first; `body` is only read for its kind.
    pub fn encode_head_into(&self, body_len: usize, out: &mut Vec<u8>) {
        out.push(match self.body {
            RecordBody::Audio(_) => 1u8,
            RecordBody::Event(_) => 2u8,
        });
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.push(self.direction);
        out.push(self.track);
        out.push(self.kind);
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
    }

    /// Parses every record of a chunk plaintext.
    pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<Record>, FormatError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if bytes.len() < 12 {
                return Err(FormatError::BadHeader);
            }
            let ty = bytes[0];
            let at_ms = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
            let (direction, track, kind) = (bytes[5], bytes[6], bytes[7]);
            let len = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
            let body = bytes
                .get(12..12 + len)
                .ok_or(FormatError::BadHeader)?
                .to_vec();
            bytes = &bytes[12 + len..];
            let body = match ty {
                1 => RecordBody::Audio(body),
                2 => RecordBody::Event(body),
                _ => return Err(FormatError::BadHeader),
            };
            out.push(Record {
                at_ms,
                direction,
                track,
                kind,
                body,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            recording_id: [7; 16],
            created_ms: 1_700_000_000_000,
            codec: Codec::Mulaw,
            sample_rate: 8000,
            channels: 2,
            nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
            kek_id: "k1".into(),
        }
    }

    fn file(dek: &KeyBytes, chunks: &[&[u8]], finished: bool) -> Vec<u8> {
        let h = header();
        let hb = h.encode();
        let mut out = hb.clone();
        for (i, c) in chunks.iter().enumerate() {
            let last = finished && i == chunks.len() - 1;
            out.extend(seal_chunk(
                dek,
                &hb,
                &h.nonce_prefix,
                i as u32,
                last,
                &mut c.to_vec(),
            ));
        }
        out
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        let (back, len) = Header::decode(&h.encode()).unwrap();
        assert_eq!((back, len), (h.clone(), h.encode().len()));
        assert_eq!(Header::decode(b"nope"), Err(FormatError::NotARecording));
    }

    #[test]
    fn a_complete_file_opens_and_every_tampering_is_detected() {
        let dek = KeyBytes::random();
        let good = file(&dek, &[b"one", b"two", b"three"], true);
        let (_, chunks, v) = open_all(&dek, &good).unwrap();
        assert_eq!(v, Integrity::Complete { chunks: 3 });
        assert_eq!(
            chunks,
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );

        let hlen = header().encode().len();
        let mut flipped_header = good.clone();
        flipped_header[20] ^= 1; // recording id: authenticated as associated data
        assert_eq!(
            open_all(&dek, &flipped_header).unwrap().2,
            Integrity::BadChunk { index: 0 }
        );

        let mut flipped_chunk = good.clone();
        flipped_chunk[hlen + 6] ^= 1;
        assert_eq!(
            open_all(&dek, &flipped_chunk).unwrap().2,
            Integrity::BadChunk { index: 0 }
        );

        let one = 4 + 3 + 16;
        let two = 4 + 3 + 16;
        let mut swapped = good[..hlen].to_vec();
        swapped.extend_from_slice(&good[hlen + one..hlen + one + two]);
        swapped.extend_from_slice(&good[hlen..hlen + one]);
        swapped.extend_from_slice(&good[hlen + one + two..]);
        assert_eq!(
            open_all(&dek, &swapped).unwrap().2,
            Integrity::BadChunk { index: 0 }
        );

        let mut dropped = good[..hlen + one].to_vec();
        dropped.extend_from_slice(&good[hlen + one + two..]);
        assert_eq!(
            open_all(&dek, &dropped).unwrap().2,
            Integrity::BadChunk { index: 1 }
        );

        let cut = &good[..good.len() - 5];
        assert_eq!(
            open_all(&dek, cut).unwrap().2,
            Integrity::Truncated { after: 2 }
        );
        let (_, kept, _) = open_all(&dek, cut).unwrap();
        assert_eq!(kept.len(), 2, "what came before the cut is recovered");

        let wrong = KeyBytes::random();
        assert_eq!(
            open_all(&wrong, &good).unwrap().2,
            Integrity::BadChunk { index: 0 }
        );
    }

    #[test]
    fn an_unfinished_file_is_truncated_not_complete() {
        let dek = KeyBytes::random();
        let crashed = file(&dek, &[b"a", b"b"], false);
        assert_eq!(
            open_all(&dek, &crashed).unwrap().2,
            Integrity::Truncated { after: 2 }
        );
        let mut extra = file(&dek, &[b"a"], true);
        extra.extend_from_slice(b"junk");
        assert_eq!(
            open_all(&dek, &extra).unwrap().2,
            Integrity::TrailingData { chunks: 1 }
        );
    }

    #[test]
    fn records_round_trip() {
        let rs = vec![
            Record {
                at_ms: 20,
                direction: 0,
                track: 0,
                kind: 2,
                body: RecordBody::Audio(vec![1, 2]),
            },
            Record {
                at_ms: 40,
                direction: 1,
                track: 1,
                kind: 3,
                body: RecordBody::Event(b"{}".to_vec()),
            },
        ];
        let mut buf = Vec::new();
        for r in &rs {
            r.encode_into(&mut buf);
        }
        assert_eq!(Record::decode_all(&buf).unwrap(), rs);
    }
}

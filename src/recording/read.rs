//! Reading recordings back: find the entry, unwrap its data key, authenticate every chunk, and turn
//! the records into a two-channel WAV (caller, backend) plus a JSON Lines timeline of the non-audio
//! events.

use std::path::Path;

use super::format::{Codec, FormatError, Header, Integrity, Record, RecordBody, open_all};
use super::keystore::Keystore;
use crate::keys::KeyRing;
use crate::ws::protocols::audio::ulaw_to_linear;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}: cannot read: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error(
        "recording {0} is not in the keystore (erased, expired, or never recorded here): it cannot be decrypted"
    )]
    NoKey(String),
    #[error("{0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("{0}")]
    Keystore(#[from] super::keystore::KeystoreError),
}

/// A decrypted recording.
pub struct Decrypted {
    pub header: Header,
    pub integrity: Integrity,
    pub records: Vec<Record>,
}

/// Decrypts the file at `path` with the key the keystore holds for it.
pub fn decrypt(path: &Path, keystore: &Keystore, ring: &KeyRing) -> Result<Decrypted, ReadError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ReadError::Io(shown.clone(), e))?;
    let (header, _) = Header::decode(&bytes)?;
    let id = header.id_hex();
    let entry = keystore
        .get(&id)?
        .ok_or_else(|| ReadError::NoKey(id.clone()))?;
    let dek = ring.unwrap(&entry.wrapped)?;
    let (header, chunks, integrity) = open_all(&dek, &bytes)?;
    let mut records = Vec::new();
    for c in &chunks {
        records.extend(Record::decode_all(c)?);
    }
    Ok(Decrypted {
        header,
        integrity,
        records,
    })
}

impl Decrypted {
    /// Sample rate of the WAV (μ-law is expanded to 16-bit PCM at 8 kHz).
    pub fn rate(&self) -> u32 {
        self.header.sample_rate
    }

    /// Two channels, caller (audio sent to the backend) and backend (audio sent to the caller, or
    /// Twilio's outbound track), each placed at its timestamp; gaps are silence.
    pub fn channels(&self) -> [Vec<i16>; 2] {
        let rate = u64::from(self.rate());
        let mut ch: [Vec<i16>; 2] = [Vec::new(), Vec::new()];
        for r in &self.records {
            let RecordBody::Audio(bytes) = &r.body else {
                continue;
            };
            let which = usize::from(r.direction == 1 || r.track == 1);
            let samples: Vec<i16> = match self.header.codec {
                Codec::Mulaw => bytes.iter().map(|&b| ulaw_to_linear(b)).collect(),
                Codec::Pcm16 => bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            };
            let at = (u64::from(r.at_ms) * rate / 1000) as usize;
            let out = &mut ch[which];
            if out.len() < at {
                out.resize(at, 0);
            }
            out.extend(samples);
        }
        let len = ch[0].len().max(ch[1].len());
        for c in &mut ch {
            c.resize(len, 0);
        }
        ch
    }

    /// A 16-bit stereo WAV of [`Decrypted::channels`].
    pub fn wav(&self) -> Vec<u8> {
        let [a, b] = self.channels();
        let rate = self.rate();
        let data_len = (a.len() * 4) as u32;
        let mut out = Vec::with_capacity(44 + data_len as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 4).to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for (x, y) in a.iter().zip(&b) {
            out.extend_from_slice(&x.to_le_bytes());
            out.extend_from_slice(&y.to_le_bytes());
        }
        out
    }

    /// The non-audio events as JSON Lines: `{"at_ms":…,"direction":…,"event":{…}}`.
    pub fn events_jsonl(&self) -> String {
        let mut out = String::new();
        for r in &self.records {
            let RecordBody::Event(json) = &r.body else {
                continue;
            };
            let event: serde_json::Value =
                serde_json::from_slice(json).unwrap_or(serde_json::Value::Null);
            let line = serde_json::json!({
                "at_ms": r.at_ms,
                "direction": if r.direction == 0 { "to_backend" } else { "to_caller" },
                "event": event,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }
}

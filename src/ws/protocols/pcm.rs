//! Raw PCM: binary messages of 16-bit little-endian linear PCM at the route's sample rate (8 or
//! 16 kHz), optionally after JSON text messages with metadata (Vonage style: the first message
//! describes the call; `websocket:dtmf` events carry a digit).

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{Audio, Direction, Frame, FrameCodec, Kind, Malformed, Track};

pub struct PcmCodec;

impl FrameCodec for PcmCodec {
    fn name(&self) -> &'static str {
        "pcm"
    }

    fn decode(&self, msg: &Message, _direction: Direction) -> Result<Frame, Malformed> {
        match msg {
            Message::Binary(bytes) => {
                if bytes.len() % 2 != 0 {
                    return Err(Malformed::PartialSample);
                }
                let samples = bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Ok(Frame {
                    kind: Kind::Media,
                    json: None,
                    audio: Some(Audio::Pcm16(samples)),
                    track: Track::Single,
                    payload_at: None,
                })
            }
            Message::Text(text) => {
                let json: Value =
                    serde_json::from_str(text.as_str()).map_err(|_| Malformed::Json)?;
                let kind = match json.get("event").and_then(Value::as_str) {
                    Some("websocket:dtmf") if json.get("digit").is_some_and(Value::is_string) => {
                        Kind::Dtmf
                    }
                    Some("websocket:dtmf") => return Err(Malformed::Field),
                    _ => Kind::Metadata,
                };
                Ok(Frame {
                    kind,
                    json: Some(json),
                    audio: None,
                    track: Track::Single,
                    payload_at: None,
                })
            }
            _ => Err(Malformed::Field),
        }
    }

    fn encode(&self, frame: &Frame) -> Message {
        match (&frame.audio, &frame.json) {
            (Some(Audio::Pcm16(samples)), _) => Message::binary(
                samples
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            (_, Some(json)) => Message::text(json.to_string()),
            _ => Message::binary(Vec::<u8>::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames_are_little_endian_samples() {
        let f = PcmCodec
            .decode(
                &Message::binary(vec![0x01, 0x00, 0xFF, 0xFF]),
                Direction::ToBackend,
            )
            .unwrap();
        assert_eq!(f.audio, Some(Audio::Pcm16(vec![1, -1])));
        assert_eq!(
            PcmCodec.encode(&f),
            Message::binary(vec![0x01, 0x00, 0xFF, 0xFF])
        );
    }

    #[test]
    fn metadata_and_dtmf_text_messages() {
        let meta = PcmCodec
            .decode(
                &Message::text(
                    r#"{"content-type":"audio/l16;rate=16000","caller":"+14155550100"}"#,
                ),
                Direction::ToBackend,
            )
            .unwrap();
        assert_eq!(meta.kind, Kind::Metadata);
        let dtmf = PcmCodec
            .decode(
                &Message::text(r#"{"event":"websocket:dtmf","digit":"5","duration":260}"#),
                Direction::ToBackend,
            )
            .unwrap();
        assert_eq!(dtmf.kind, Kind::Dtmf);
    }

    #[test]
    fn half_samples_and_bad_json_are_malformed() {
        let d = Direction::ToBackend;
        assert_eq!(
            PcmCodec.decode(&Message::binary(vec![1, 2, 3]), d),
            Err(Malformed::PartialSample)
        );
        assert_eq!(
            PcmCodec.decode(&Message::text("{"), d),
            Err(Malformed::Json)
        );
    }
}

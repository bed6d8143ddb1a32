//! Twilio Media Streams: JSON text messages. From Twilio: `connected`, `start` (streamSid, callSid,
//! accountSid, tracks, mediaFormat, customParameters), `media` (track, chunk, timestamp, base64 of
//! 8 kHz μ-law), `dtmf` (digit), `mark`, `stop`. From the backend (bidirectional streams): `media`
//! (audio to the caller), `mark`, `clear`. Numbers arrive as strings; unknown fields and events pass
//! through untouched.

use base64::Engine as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{Audio, Direction, Frame, FrameCodec, Kind, Malformed, Track, str_at};

pub struct TwilioCodec;

/// The fields of a `media` message the proxy needs, borrowed from the text (unknown fields skipped):
/// most messages of a call are media, and building a JSON tree for each would dominate their cost.
#[derive(serde::Deserialize)]
struct MediaHead<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
}

/// `&str` fields borrow or fail: an escaped string makes the fast path give way to the general one.
#[derive(serde::Deserialize)]
struct MediaBody<'a> {
    payload: Option<&'a str>,
    track: Option<&'a str>,
}

impl TwilioCodec {
    /// A `media` message whose payload appears unescaped in the text; `None` for anything else, which
    /// then takes the general path.
    fn fast_media(
        &self,
        text: &tokio_tungstenite::tungstenite::Utf8Bytes,
        direction: Direction,
    ) -> Option<Result<Frame, Malformed>> {
        let head: MediaHead<'_> = serde_json::from_str(text.as_str()).ok()?;
        if head.event != "media" {
            return None;
        }
        let body = head.media?;
        let payload = body.payload?;
        let start = payload.as_ptr() as usize - text.as_str().as_ptr() as usize;
        let track = match (direction, body.track) {
            (_, Some("outbound")) | (Direction::ToCaller, _) => Track::Outbound,
            _ => Track::Inbound,
        };
        let audio = match decode_payload(payload) {
            Ok(bytes) => Audio::Ulaw(bytes),
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(Frame {
            kind: Kind::Media,
            json: None,
            audio: Some(audio),
            track,
            payload_at: Some((text.clone(), start..start + payload.len())),
        }))
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A media payload's μ-law bytes.
fn decode_payload(payload: &str) -> Result<Vec<u8>, Malformed> {
    super::payload::decode(payload).map_err(|_| Malformed::Base64)
}

impl FrameCodec for TwilioCodec {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn decode(&self, msg: &Message, direction: Direction) -> Result<Frame, Malformed> {
        let text = match msg {
            Message::Text(t) => t,
            _ => return Err(Malformed::UnexpectedBinary),
        };
        if let Some(fast) = self.fast_media(text, direction) {
            return fast;
        }
        let json: Value = serde_json::from_str(text.as_str()).map_err(|_| Malformed::Json)?;
        let kind = match json.get("event").and_then(Value::as_str) {
            Some("connected") => Kind::Connected,
            Some("start") => Kind::Start,
            Some("media") => Kind::Media,
            Some("dtmf") => Kind::Dtmf,
            Some("mark") => Kind::Mark,
            Some("clear") => Kind::Clear,
            Some("stop") => Kind::Stop,
            Some(_) => Kind::Other,
            None => return Err(Malformed::Field),
        };
        let mut track = match direction {
            Direction::ToBackend => Track::Inbound,
            Direction::ToCaller => Track::Outbound,
        };
        let audio = if kind == Kind::Media {
            let payload = str_at(&json, "/media/payload").ok_or(Malformed::Field)?;
            if str_at(&json, "/media/track") == Some("outbound") {
                track = Track::Outbound;
            }
            Some(Audio::Ulaw(decode_payload(payload)?))
        } else {
            None
        };
        if kind == Kind::Dtmf && str_at(&json, "/dtmf/digit").is_none() {
            return Err(Malformed::Field);
        }
        Ok(Frame {
            kind,
            json: Some(json),
            audio,
            track,
            payload_at: None,
        })
    }

    fn encode(&self, frame: &Frame) -> Message {
        if let (Some((text, at)), Some(Audio::Ulaw(bytes)), None) =
            (&frame.payload_at, &frame.audio, &frame.json)
        {
            let t = text.as_str();
            return Message::text(format!(
                "{}{}{}",
                &t[..at.start],
                B64.encode(bytes),
                &t[at.end..]
            ));
        }
        let mut json = frame.json.clone().unwrap_or(Value::Null);
        if let (Some(Audio::Ulaw(bytes)), Some(media)) = (&frame.audio, json.get_mut("media")) {
            media["payload"] = Value::String(B64.encode(bytes));
        }
        Message::text(json.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const CONNECTED: &str = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
    pub const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC123","streamSid":"MZ123","callSid":"CA123","tracks":["inbound","outbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"caller":"+14155550100","note":"card 4111 1111 1111 1111"}},"streamSid":"MZ123"}"#;
    pub const DTMF: &str = r#"{"event":"dtmf","streamSid":"MZ123","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}}"#;
    pub const MARK: &str = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ123","mark":{"name":"greeting-done"}}"#;
    pub const STOP: &str = r#"{"event":"stop","sequenceNumber":"9","streamSid":"MZ123","stop":{"accountSid":"AC123","callSid":"CA123"}}"#;
    pub const CLEAR: &str = r#"{"event":"clear","streamSid":"MZ123"}"#;

    pub fn media(track: &str, payload: &[u8]) -> String {
        format!(
            r#"{{"event":"media","sequenceNumber":"3","media":{{"track":"{track}","chunk":"1","timestamp":"20","payload":"{}"}},"streamSid":"MZ123","extra":{{"future":true}}}}"#,
            B64.encode(payload)
        )
    }

    fn decode(text: &str, d: Direction) -> Result<Frame, Malformed> {
        TwilioCodec.decode(&Message::text(text), d)
    }

    #[test]
    fn every_event_from_twilio_decodes() {
        let d = Direction::ToBackend;
        assert_eq!(decode(CONNECTED, d).unwrap().kind, Kind::Connected);
        let start = decode(START, d).unwrap();
        assert_eq!(start.kind, Kind::Start);
        assert_eq!(
            str_at(start.json.as_ref().unwrap(), "/start/callSid"),
            Some("CA123")
        );
        let m = decode(&media("inbound", &[1, 2, 3]), d).unwrap();
        assert_eq!((m.kind, m.track), (Kind::Media, Track::Inbound));
        assert_eq!(m.audio, Some(Audio::Ulaw(vec![1, 2, 3])));
        assert_eq!(
            decode(&media("outbound", &[9]), d).unwrap().track,
            Track::Outbound
        );
        assert_eq!(decode(DTMF, d).unwrap().kind, Kind::Dtmf);
        assert_eq!(decode(MARK, d).unwrap().kind, Kind::Mark);
        assert_eq!(decode(STOP, d).unwrap().kind, Kind::Stop);
        let unknown = decode(r#"{"event":"future-event","x":1}"#, d).unwrap();
        assert_eq!(unknown.kind, Kind::Other);
    }

    #[test]
    fn every_event_from_the_backend_decodes() {
        let d = Direction::ToCaller;
        let back = format!(
            r#"{{"event":"media","streamSid":"MZ123","media":{{"payload":"{}"}}}}"#,
            B64.encode([5u8; 160])
        );
        let m = decode(&back, d).unwrap();
        assert_eq!((m.kind, m.track), (Kind::Media, Track::Outbound));
        assert_eq!(decode(MARK, d).unwrap().kind, Kind::Mark);
        assert_eq!(decode(CLEAR, d).unwrap().kind, Kind::Clear);
    }

    #[test]
    fn an_escaped_payload_takes_the_general_path_and_decodes_the_same() {
        let escaped = r#"{"event":"media","media":{"track":"inbound","payload":"AQID\/w=="}}"#;
        let m = decode(escaped, Direction::ToBackend).unwrap();
        assert!(m.payload_at.is_none() && m.json.is_some());
        assert_eq!(m.audio, Some(Audio::Ulaw(vec![1, 2, 3, 0xFF])));
        let mut m = m;
        m.audio.as_mut().unwrap().silence();
        let v: Value = serde_json::from_str(TwilioCodec.encode(&m).to_text().unwrap()).unwrap();
        assert_eq!(v["media"]["payload"], B64.encode([0xFF; 4]));
    }

    #[test]
    fn bad_messages_are_malformed_with_a_reason() {
        let d = Direction::ToBackend;
        assert_eq!(decode("{not json", d), Err(Malformed::Json));
        assert_eq!(decode(r#"{"no":"event"}"#, d), Err(Malformed::Field));
        assert_eq!(
            decode(r#"{"event":"media","media":{}}"#, d),
            Err(Malformed::Field)
        );
        assert_eq!(
            decode(r#"{"event":"media","media":{"payload":"!!!"}}"#, d),
            Err(Malformed::Base64)
        );
        assert_eq!(
            decode(r#"{"event":"dtmf","dtmf":{}}"#, d),
            Err(Malformed::Field)
        );
        let binary = TwilioCodec.decode(&Message::binary(vec![1, 2]), d);
        assert_eq!(binary, Err(Malformed::UnexpectedBinary));
    }

    #[test]
    fn encoding_a_changed_frame_keeps_every_other_field() {
        let mut m = decode(&media("inbound", &[1, 2, 3]), Direction::ToBackend).unwrap();
        assert!(m.payload_at.is_some(), "media takes the fast path");
        m.audio.as_mut().unwrap().silence();
        let out = TwilioCodec.encode(&m);
        let v: Value = serde_json::from_str(out.to_text().unwrap()).unwrap();
        assert_eq!(v["media"]["payload"], B64.encode([0xFF; 3]));
        assert_eq!(v["media"]["timestamp"], "20");
        assert_eq!(v["extra"]["future"], true, "unknown fields pass");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["event", "sequenceNumber", "media", "streamSid", "extra"],
            "order kept"
        );
    }
}

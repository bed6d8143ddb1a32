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

impl TwilioCodec {
    /// A `media` message that `media_scan` reads; `None` for anything else (and for a payload that is
    /// not base64), which then takes the general path and gets its verdict there.
    fn fast_media(
        &self,
        text: &tokio_tungstenite::tungstenite::Utf8Bytes,
        direction: Direction,
    ) -> Option<Frame> {
        let t = text.as_str();
        let fields = super::media_scan::media_fields(t)?;
        let track = match (direction, fields.track.map(|r| &t[r])) {
            (_, Some("outbound")) | (Direction::ToCaller, _) => Track::Outbound,
            _ => Track::Inbound,
        };
        let audio = super::payload::decode(&t[fields.payload.clone()]).ok()?;
        Some(Frame {
            kind: Kind::Media,
            json: None,
            audio: Some(Audio::Ulaw(audio)),
            track,
            payload_at: Some((text.clone(), fields.payload)),
        })
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl FrameCodec for TwilioCodec {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn decode(&self, msg: &Message, direction: Direction) -> Result<Frame, Malformed> {
        let text = match msg {
            Message::Text(t) => t,
            _ => return Err(Malformed::UnexpectedBinary),
        };
        match self.fast_media(text, direction) {
            Some(fast) => Ok(fast),
            None => self.general(text.as_str(), direction),
        }
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

impl TwilioCodec {
    /// Any message, through serde: every event, and the media messages `fast_media` gives way on.
    fn general(&self, text: &str, direction: Direction) -> Result<Frame, Malformed> {
        let json: Value = serde_json::from_str(text).map_err(|_| Malformed::Json)?;
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
            Some(Audio::Ulaw(
                super::payload::decode(payload).map_err(|_| Malformed::Base64)?,
            ))
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

    mod fast_path {
        use proptest::prelude::*;

        use super::*;

        fn pick(options: &[&'static str]) -> impl Strategy<Value = String> + use<> {
            proptest::sample::select(options.to_vec()).prop_map(String::from)
        }

        /// Whitespace between tokens: mostly none, as Twilio sends.
        fn gap() -> impl Strategy<Value = String> {
            pick(&["", "", "", " ", "\n\t", "\r\n "])
        }

        /// Values the scanner skips or gives way on: strings with and without escapes or raw control
        /// characters, numbers, literals (and a misspelt one), arrays, nested objects.
        fn other_value() -> impl Strategy<Value = String> {
            pick(&[
                r#""MZ18ad3ab5a668481ce02b83e7395059f0""#,
                r#""20""#,
                r#""a\"b""#,
                "\"tab\there\"",
                r#""\u00e9""#,
                "\"é\"",
                "3",
                "-1.5e3",
                "true",
                "false",
                "null",
                "tru",
                "[]",
                r#"[1,{"a":"b"}]"#,
                "{}",
                r#"{"a":{"b":null,"c":"d"}}"#,
                r#""unterminated"#,
            ])
        }

        fn payload() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => proptest::collection::vec(any::<u8>(), 0..200)
                    .prop_map(|b| format!("\"{}\"", B64.encode(b))),
                1 => pick(&[
                    r#""AQ\/w==""#,
                    r#""AQID\\""#,
                    r#""AQ\"ID""#,
                    r#""!!!""#,
                    r#""AQ=""#,
                    "\"AQ\tD\"",
                    "12",
                    "null",
                ]),
            ]
        }

        /// `{"k":v,...}` with gaps around every token.
        fn object(members: Vec<(String, String)>, gaps: Vec<String>) -> String {
            let mut gaps = gaps.into_iter().cycle();
            let mut out = format!("{}{{", gaps.next().unwrap_or_default());
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let (a, b, c) = (gaps.next(), gaps.next(), gaps.next());
                out += &format!(
                    "{}\"{key}\"{}:{}{value}",
                    a.unwrap(),
                    b.unwrap(),
                    c.unwrap()
                );
            }
            out + &gaps.next().unwrap_or_default() + "}"
        }

        /// A value the scanner skips; sometimes one it gives way on.
        fn extra_value() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => pick(&[r#""20""#, r#""MZ18ad3ab5a668481ce02b83e7395059f0""#, "true", "null", "{}", r#"{"a":{"b":null,"c":"d"}}"#, "\"é\""]),
                1 => other_value(),
            ]
        }

        /// `media`: a payload, perhaps a track, other fields, and now and then a repeat.
        fn media_object() -> impl Strategy<Value = String> {
            let extra = prop_oneof![
                4 => extra_value().prop_map(|v| ("chunk".to_string(), v)),
                1 => payload().prop_map(|v| ("payload".to_string(), v)),
                1 => pick(&[r#""inbound""#, "1"]).prop_map(|v| ("track".to_string(), v)),
            ];
            (
                proptest::option::weighted(0.95, payload()),
                proptest::option::weighted(
                    0.6,
                    pick(&[r#""inbound""#, r#""outbound""#, r#""both""#, "1"]),
                ),
                proptest::collection::vec(extra, 0..3),
                proptest::collection::vec(gap(), 1..8),
            )
                .prop_flat_map(|(payload, track, extras, gaps)| {
                    let mut members = extras;
                    members.extend(payload.map(|v| ("payload".to_string(), v)));
                    members.extend(track.map(|v| ("track".to_string(), v)));
                    (Just(members).prop_shuffle(), Just(gaps))
                })
                .prop_map(|(m, g)| object(m, g))
        }

        /// Messages near Twilio's media messages: fields in any order, repeated or missing, other
        /// events, values of every kind; then perhaps truncated or with one byte changed.
        fn message() -> impl Strategy<Value = String> {
            let extra = prop_oneof![
                4 => extra_value().prop_map(|v| ("streamSid".to_string(), v)),
                1 => pick(&[r#""media""#, r#""mark""#]).prop_map(|v| ("event".to_string(), v)),
                1 => media_object().prop_map(|v| ("media".to_string(), v)),
            ];
            let members = (
                proptest::option::weighted(
                    0.95,
                    prop_oneof![6 => pick(&[r#""media""#]), 1 => pick(&[r#""mark""#, r#""med\u0069a""#, "1"])],
                ),
                proptest::option::weighted(0.95, prop_oneof![8 => media_object(), 1 => other_value()]),
                proptest::collection::vec(extra, 0..3),
            )
                .prop_flat_map(|(event, media, extras)| {
                    let mut members = extras;
                    members.extend(event.map(|v| ("event".to_string(), v)));
                    members.extend(media.map(|v| ("media".to_string(), v)));
                    Just(members).prop_shuffle()
                });
            let damage = prop_oneof![
                12 => Just(None),
                1 => (any::<usize>(), Just(None)).prop_map(Some),
                1 => (any::<usize>(), proptest::sample::select(b"\"\\{},: a1\t\0=".to_vec()).prop_map(Some))
                    .prop_map(Some),
            ];
            (
                members,
                proptest::collection::vec(gap(), 1..8),
                damage,
                // What follows the object: whitespace, or something that makes the text not JSON.
                pick(&["", "", "", " ", "\r\n", " x", "}", ",{}"]),
            )
                .prop_map(|(m, g, damage, tail)| {
                    let mut text = object(m, g) + &tail;
                    match damage {
                        Some((at, None)) => {
                            let at = at % (text.len() + 1);
                            if text.is_char_boundary(at) {
                                text.truncate(at);
                            }
                        }
                        Some((at, Some(byte))) if !text.is_empty() => {
                            let at = at % text.len();
                            if text.is_char_boundary(at) && text.is_char_boundary(at + 1) {
                                text.replace_range(at..at + 1, &char::from(byte).to_string());
                            }
                        }
                        _ => {}
                    }
                    text
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the scanner accepts, serde reads the same: same audio and track, and the
            /// same message once re-encoded with its audio silenced.
            #[test]
            fn the_scanner_reads_only_what_serde_reads_the_same(text in message()) {
                let utf8 = tokio_tungstenite::tungstenite::Utf8Bytes::from(text.clone());
                for direction in [Direction::ToBackend, Direction::ToCaller] {
                    let Some(mut fast) = TwilioCodec.fast_media(&utf8, direction) else {
                        continue;
                    };
                    let general = TwilioCodec.general(&text, direction);
                    prop_assert!(general.is_ok(), "serde refuses {text:?}: {general:?}");
                    let mut general = general.unwrap();
                    prop_assert_eq!(general.kind, Kind::Media);
                    prop_assert_eq!(&fast.audio, &general.audio);
                    prop_assert_eq!(fast.track, general.track);
                    fast.audio.as_mut().unwrap().silence();
                    general.audio.as_mut().unwrap().silence();
                    let encoded = |f: &Frame| -> Value {
                        serde_json::from_str(TwilioCodec.encode(f).to_text().unwrap()).unwrap()
                    };
                    prop_assert_eq!(encoded(&fast), encoded(&general));
                }
            }
        }

        #[test]
        fn the_generated_messages_reach_both_paths() {
            use proptest::strategy::ValueTree;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let (mut fast, mut general_only) = (0, 0);
            for _ in 0..2000 {
                let text = message().new_tree(&mut runner).unwrap().current();
                let utf8 = tokio_tungstenite::tungstenite::Utf8Bytes::from(text.clone());
                if TwilioCodec
                    .fast_media(&utf8, Direction::ToBackend)
                    .is_some()
                {
                    fast += 1;
                } else if TwilioCodec
                    .general(&text, Direction::ToBackend)
                    .is_ok_and(|f| f.kind == Kind::Media)
                {
                    general_only += 1;
                }
            }
            assert!(fast > 100, "the scanner accepts many ({fast})");
            assert!(
                general_only > 50,
                "and gives way on many media messages ({general_only})"
            );
        }
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

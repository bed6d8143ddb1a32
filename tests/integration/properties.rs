//! Property tests (proptest) for the invariants the media path and the recordings rest on.

use base64::Engine as _;
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::Message;

use voxguard::keys::KeyBytes;
use voxguard::recording::format::{
    Codec, Header, Integrity, Record, RecordBody, open_all, seal_chunk,
};
use voxguard::ws::protocols::pcm::PcmCodec;
use voxguard::ws::protocols::twilio::TwilioCodec;
use voxguard::ws::protocols::{Direction, FrameCodec};
use voxguard::ws::redact::Report;
use voxguard::ws::redact::text_pii::TextPii;

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::ToBackend), Just(Direction::ToCaller)]
}

/// Twilio messages as Twilio and backends send them: every event, extra fields anywhere, any
/// key order, any audio.
fn twilio_message() -> impl Strategy<Value = String> {
    let payload = proptest::collection::vec(any::<u8>(), 0..400)
        .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b));
    let word = "[a-zA-Z0-9 _+.-]{0,12}";
    (payload, word, word, 0u32..100_000, any::<bool>(), 0usize..6).prop_map(
        |(payload, sid, extra, seq, outbound, event)| {
            let track = if outbound { "outbound" } else { "inbound" };
            match event {
                0 => format!(
                    r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"{track}","chunk":"{seq}","timestamp":"{seq}","payload":"{payload}"}},"streamSid":"MZ{sid}"}}"#
                ),
                1 => format!(
                    r#"{{"streamSid":"MZ{sid}","event":"media","media":{{"payload":"{payload}","x":"{extra}"}}}}"#
                ),
                2 => format!(
                    r#"{{"event":"mark","streamSid":"MZ{sid}","mark":{{"name":"{extra}"}},"sequenceNumber":"{seq}"}}"#
                ),
                3 => format!(r#"{{"event":"stop","sequenceNumber":"{seq}","stop":{{"callSid":"CA{sid}"}}}}"#),
                4 => format!(r#"{{"event":"clear","streamSid":"MZ{sid}"}}"#),
                _ => format!(r#"{{"event":"x-{extra}","n":{seq},"nested":{{"a":[1,2,"{sid}"]}}}}"#),
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A frame no redactor changed re-encodes to the very message it came from.
    #[test]
    fn twilio_encode_of_decode_is_identity(text in twilio_message(), d in direction()) {
        let msg = Message::text(text.clone());
        let frame = TwilioCodec.decode(&msg, d).expect("valid message decodes");
        prop_assert_eq!(TwilioCodec.encode(&frame), msg);
    }

    #[test]
    fn pcm_encode_of_decode_is_identity(samples in proptest::collection::vec(any::<i16>(), 0..800), d in direction()) {
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let msg = Message::binary(bytes);
        let frame = PcmCodec.decode(&msg, d).expect("whole samples decode");
        prop_assert_eq!(PcmCodec.encode(&frame), msg);
    }

    /// Redacting redacted text changes nothing: no marker or leftover is itself PII.
    #[test]
    fn text_redaction_is_idempotent(parts in proptest::collection::vec(pii_or_text(), 0..8)) {
        let redactor = TextPii::new(&[], vec![regex::Regex::new("ACCT-[0-9]{6}").unwrap()]);
        let text = parts.join(" ");
        let once = redactor.redact_str(&text, &mut Report::default()).unwrap_or(text);
        let twice = redactor.redact_str(&once, &mut Report::default());
        prop_assert_eq!(twice, None, "second pass changed {:?}", once);
    }

    /// Any sequence of events, cut into chunks anywhere, seals and opens back to the same events.
    #[test]
    fn recording_open_of_seal_is_identity(
        records in proptest::collection::vec(record(), 0..40),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        finished in any::<bool>(),
    ) {
        let dek = KeyBytes::random();
        let header = Header {
            recording_id: [5; 16],
            created_ms: 1_767_225_600_000,
            codec: Codec::Mulaw,
            sample_rate: 8000,
            channels: 2,
            nonce_prefix: [9, 8, 7, 6, 5, 4, 3],
            kek_id: "k1".into(),
        };
        let header_bytes = header.encode();
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(records.len() + 1)).collect();
        bounds.extend([0, records.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let mut chunks: Vec<&[Record]> = bounds.windows(2).map(|w| &records[w[0]..w[1]]).collect();
        if chunks.is_empty() {
            chunks.push(&[]); // the writer always seals a final chunk, even for an empty call
        }
        let mut file = header_bytes.clone();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut plain = Vec::new();
            for r in chunk.iter() {
                r.encode_into(&mut plain);
            }
            let last = finished && i == chunks.len() - 1;
            file.extend(seal_chunk(&dek, &header_bytes, &header.nonce_prefix, i as u32, last, &mut plain));
        }
        let (_, plains, integrity) = open_all(&dek, &file).expect("header parses");
        let n = chunks.len() as u32;
        prop_assert_eq!(integrity, if finished { Integrity::Complete { chunks: n } } else { Integrity::Truncated { after: n } });
        let back: Vec<Record> = plains.iter().flat_map(|p| Record::decode_all(p).unwrap()).collect();
        prop_assert_eq!(back, records);
    }
}

fn luhn_complete(mut digits: Vec<u8>) -> String {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    digits.push(((10 - sum % 10) % 10) as u8);
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

/// Plain words, digits, and PII of every kind the redactor knows, in varied formats.
fn pii_or_text() -> impl Strategy<Value = String> {
    let card = (proptest::collection::vec(0u8..10, 15), any::<bool>()).prop_map(|(d, spaced)| {
        let number = luhn_complete(d);
        if spaced {
            number
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            number
        }
    });
    prop_oneof![
        "[a-zA-Z]{1,10}",
        "[0-9]{1,20}",
        "[0-9 ()+.-]{1,20}",
        card,
        "[1-8][0-9]{2}-[1-9][0-9]-[1-9][0-9]{3}",
        "\\+1[2-9][0-9]{9}",
        "\\([2-9][0-9]{2}\\) [2-9][0-9]{2}-[0-9]{4}",
        "[a-z]{1,8}@[a-z]{1,8}\\.(com|org)",
        "ACCT-[0-9]{6}",
        "\\[REDACTED:[a-z]{1,6}\\]",
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u32>(),
        0u8..2,
        0u8..3,
        any::<u8>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(at_ms, direction, track, kind, audio, body)| Record {
            at_ms,
            direction,
            track,
            kind,
            body: if audio {
                RecordBody::Audio(body)
            } else {
                RecordBody::Event(body)
            },
        })
}

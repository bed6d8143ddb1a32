//! Twilio Media Streams and raw PCM messages from a caller or a backend: any text or binary gives a
//! frame or a `Malformed`, never a panic; a frame nothing changed re-encodes to a message that
//! decodes to the same frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokio_tungstenite::tungstenite::Message;
use voxguard::ws::protocols::pcm::PcmCodec;
use voxguard::ws::protocols::twilio::TwilioCodec;
use voxguard::ws::protocols::{Direction, FrameCodec};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let msg = match std::str::from_utf8(rest) {
        Ok(text) if selector & 1 == 0 => Message::text(text.to_owned()),
        _ => Message::binary(rest.to_vec()),
    };
    let direction = if selector & 2 == 0 {
        Direction::ToBackend
    } else {
        Direction::ToCaller
    };
    let codecs: [&dyn FrameCodec; 2] = [&TwilioCodec, &PcmCodec];
    for codec in codecs {
        if let Ok(frame) = codec.decode(&msg, direction) {
            let again = codec
                .decode(&codec.encode(&frame), direction)
                .unwrap_or_else(|m| {
                    panic!("{}: re-encoded frame is malformed: {m:?}", codec.name())
                });
            assert_eq!(again.kind, frame.kind, "{}", codec.name());
            assert_eq!(again.audio, frame.audio, "{}", codec.name());
        }
    }
});

//! The call audio the WebSocket mode sends: 8 kHz μ-law in 20 ms frames, speech-like (a vowel with
//! harmonics, its pitch and level varying) with a DTMF digit keyed every two seconds, so the media
//! pipeline's tone detector and masker do their real work.

use std::f32::consts::TAU;

use base64::Engine;
use voxguard::ws::protocols::audio::linear_to_ulaw;

const RATE: f32 = 8000.0;
/// Samples per 20 ms frame.
pub const FRAME: usize = 160;

/// DTMF frequency pairs (row, column) for the digits the audio keys.
const DIGITS: [(f32, f32); 4] = [
    (697.0, 1209.0),
    (770.0, 1336.0),
    (852.0, 1477.0),
    (941.0, 1336.0),
];

/// Ten seconds of audio as base64 payloads, one per frame, ready to splice into messages.
pub fn call_frames() -> Vec<String> {
    let seconds = 10;
    let total = seconds * RATE as usize;
    let mut samples = Vec::with_capacity(total);
    for n in 0..total {
        let t = n as f32 / RATE;
        // Every 2 s, 100 ms of a digit at -10 dBFS; otherwise a voiced sound at 120–160 Hz.
        let in_second = t % 2.0;
        let s = if (1.0..1.1).contains(&in_second) {
            let (lo, hi) = DIGITS[(t / 2.0) as usize % DIGITS.len()];
            0.16 * ((TAU * lo * t).sin() + (TAU * hi * t).sin())
        } else {
            let pitch = 140.0 + 20.0 * (TAU * 0.5 * t).sin();
            let level = 0.25 * (0.6 + 0.4 * (TAU * 3.0 * t).sin().abs());
            let voiced: f32 = (1..=6)
                .map(|h| (TAU * pitch * h as f32 * t).sin() / h as f32)
                .sum();
            level * voiced / 2.5
        };
        samples.push((s.clamp(-1.0, 1.0) * i16::MAX as f32) as i16);
    }
    samples
        .chunks(FRAME)
        .map(|frame| {
            let ulaw: Vec<u8> = frame.iter().map(|&s| linear_to_ulaw(s)).collect();
            base64::engine::general_purpose::STANDARD.encode(ulaw)
        })
        .collect()
}

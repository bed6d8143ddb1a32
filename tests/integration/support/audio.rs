//! Audio for the media tests: generated DTMF tones, speech from espeak-ng and music from sox (both
//! installed by `.ci/run`), WAV files, and multimon-ng as the independent DTMF decoder.

use std::f32::consts::PI;
use std::path::Path;
use std::process::Command;

const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [&str; 4] = ["123A", "456B", "789C", "*0#D"];

/// A DTMF tone: `ms` long, each tone `level_db` below full scale, the column tone `twist_db` louder,
/// both frequencies scaled by `1 + detune`.
pub fn tone(digit: char, ms: u32, level_db: f32, twist_db: f32, detune: f32) -> Vec<i16> {
    tone_at(digit, ms, level_db, twist_db, detune, 8000)
}

/// The same at `rate` samples per second.
pub fn tone_at(
    digit: char,
    ms: u32,
    level_db: f32,
    twist_db: f32,
    detune: f32,
    rate: u32,
) -> Vec<i16> {
    let r = KEYS
        .iter()
        .position(|k| k.contains(digit))
        .expect("a DTMF digit");
    let c = KEYS[r].find(digit).unwrap();
    let amp = 32767.0 * 10f32.powf(level_db / 20.0);
    let col_amp = amp * 10f32.powf(twist_db / 20.0);
    (0..(rate / 1000 * ms) as usize)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let s = amp * (2.0 * PI * ROWS[r] * (1.0 + detune) * t).sin()
                + col_amp * (2.0 * PI * COLS[c] * (1.0 + detune) * t).sin();
            s.clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

pub fn silence(ms: u32) -> Vec<i16> {
    vec![0; (8 * ms) as usize]
}

/// 16-bit mono WAV at `rate`.
pub fn write_wav_at(path: &Path, samples: &[i16], rate: u32) {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// The samples of a 16-bit mono WAV (sox output).
pub fn read_wav(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("a data chunk")
        + 8;
    bytes[at..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The digits multimon-ng hears in `samples` (8 kHz).
pub fn multimon(dir: &Path, name: &str, samples: &[i16]) -> String {
    multimon_at(dir, name, samples, 8000)
}

/// The digits multimon-ng hears in `samples` at `rate`.
pub fn multimon_at(dir: &Path, name: &str, samples: &[i16], rate: u32) -> String {
    let path = dir.join(format!("{name}.wav"));
    write_wav_at(&path, samples, rate);
    let out = Command::new("multimon-ng")
        .args(["-q", "-t", "wav", "-a", "DTMF"])
        .arg(&path)
        .output()
        .expect("multimon-ng is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("DTMF: "))
        .collect()
}

/// Speech from espeak-ng, at 8 kHz.
pub fn speech(dir: &Path, text: &str) -> Vec<i16> {
    let raw = dir.join("speech-raw.wav");
    let wav = dir.join("speech.wav");
    let ok = Command::new("espeak-ng")
        .arg("-w")
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng is installed");
    assert!(ok.success());
    sox(&[
        raw.to_str().unwrap(),
        "-r",
        "8000",
        "-c",
        "1",
        "-b",
        "16",
        "-e",
        "signed",
        wav.to_str().unwrap(),
    ]);
    read_wav(&wav)
}

/// Plucked-string music from sox: a melody with chords.
pub fn music(dir: &Path) -> Vec<i16> {
    let wav = dir.join("music.wav");
    let mut args = vec![
        "-n",
        "-r",
        "8000",
        "-c",
        "1",
        "-b",
        "16",
        "-e",
        "signed",
        wav.to_str().unwrap(),
    ];
    for note in [
        "C4", "E4", "G4", "C5", "A3", "F4", "D4", "B3", "G3", "E5", "C4", "A4",
    ] {
        args.extend(["synth", "0.3", "pluck", note, ":"]);
    }
    args.pop();
    sox(&args);
    read_wav(&wav)
}

fn sox(args: &[&str]) {
    let ok = Command::new("sox")
        .args(args)
        .status()
        .expect("sox is installed");
    assert!(ok.success(), "sox {args:?}");
}

/// `a` with `b` added at `at` samples.
pub fn mix(a: &[i16], b: &[i16], at: usize) -> Vec<i16> {
    let mut out = a.to_vec();
    if out.len() < at + b.len() {
        out.resize(at + b.len(), 0);
    }
    for (i, s) in b.iter().enumerate() {
        out[at + i] = out[at + i].saturating_add(*s);
    }
    out
}

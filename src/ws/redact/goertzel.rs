//! In-band DTMF detection: Goertzel filters at the eight DTMF frequencies over fixed blocks of
//! samples, with the acceptance rules spandsp and Asterisk use (after ITU-T Q.23/Q.24):
//!
//! - block of 102 samples at 8 kHz (12.75 ms; 204 at 16 kHz), so a 40 ms tone covers two whole blocks
//!   whatever its alignment to the 20 ms frames;
//! - both the strongest row and column tone above an absolute threshold (−45 dBFS-ish per tone, so
//!   −25 dB tones are found with margin);
//! - twist: the column tone at most 8 dB below the row tone (normal) and at most 4 dB above it
//!   (reverse), each with 2 dB of measurement margin;
//! - each winner 6 dB above the other tones of its group;
//! - the two tones carry most of the block's energy (speech and music spread theirs);
//! - a digit begins after two consecutive blocks agree, and ends after three blocks without it.
//!
//! The detector only reports; `tone_mask.rs` decides which audio to silence.

use std::f32::consts::PI;

use crate::ws::protocols::Audio;
use crate::ws::protocols::audio::ulaw_to_linear;

const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const DIGITS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The standards' 8 dB (normal) and 4 dB (reverse) twist, plus 2 dB: over one short block the
/// measured ratio of a tone pair swings by about ±0.5 dB (leakage between the filters), a tone 1.5 %
/// off frequency reads up to ~1 dB low, and a tone at the limit must still be found in two
/// consecutive blocks. Missing a digit leaks it; accepting a little more twist costs nothing
/// measurable in talk-off (see the speech tests). As power ratios.
const NORMAL_TWIST: f32 = 10.0;
const REVERSE_TWIST: f32 = 3.98;
/// A winner must beat the others of its group by 6 dB. Asterisk uses 8 dB; with a column tone 7.5 dB
/// below its row tone (normal twist), the row tone's leakage into the other column filters reaches
/// ~7.7 dB below the winner in some alignments, and the digit would be missed. Twist, the energy
/// ratio and the two-block rule keep speech out (see the talk-off tests).
const RELATIVE_PEAK: f32 = 3.98;
/// (row + column) Goertzel power against the block's energy: a centred pure tone pair gives
/// `block / 2` (51 at 102 samples), a pair 1.5 % off centre about 42; this accepts pairs that hold
/// roughly 70 % of the energy.
const TO_TOTAL_ENERGY_PER_SAMPLE: f32 = 0.35;
/// Per-tone Goertzel power threshold for 16-bit samples at 102 samples per block (Asterisk's).
const THRESHOLD_AT_102: f32 = 8.0e7;

const HITS_TO_BEGIN: u8 = 2;
const MISSES_TO_END: u8 = 3;

/// μ-law expanded straight to the detector's `f32`: one load per sample, not a load and a convert.
const ULAW_F32: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_to_linear(i as u8) as f32;
        i += 1;
    }
    t
};

/// The longest block (204 samples, at 16 kHz): a finished block is widened to `f32` on the stack.
const MAX_BLOCK_LEN: usize = 204;

/// A block's samples as the wire carried them, widened to the filters' `f32` once the block is
/// complete. Every call's block is written once per frame and read once per block, and cold each
/// time (the other calls' state and the kernel's network path ran since): a μ-law byte is a
/// quarter of the cache lines an `f32` is, and the widening is the same table lookup per sample
/// that storing `f32` took (docs/PERFORMANCE.md, twenty-second session).
enum Pending {
    Ulaw(Vec<u8>),
    Linear(Vec<i16>),
}

impl Pending {
    /// The block as `f32`, `block.len()` samples.
    fn widen_into(&self, block: &mut [f32]) {
        match self {
            Pending::Ulaw(bytes) => {
                for (wide, &b) in block.iter_mut().zip(bytes) {
                    *wide = ULAW_F32[usize::from(b)];
                }
            }
            Pending::Linear(samples) => {
                for (wide, &s) in block.iter_mut().zip(samples) {
                    *wide = f32::from(s);
                }
            }
        }
    }
}

/// What a block can hold: μ-law bytes as they are, linear samples as `i16`. A stream carries one
/// encoding; if another comes mid-block, the samples so far are converted to linear.
trait Sample: Copy {
    fn store(pending: &mut Pending, at: usize, block_len: usize, samples: &[Self]);
}

impl Sample for u8 {
    fn store(pending: &mut Pending, at: usize, block_len: usize, samples: &[u8]) {
        match pending {
            Pending::Ulaw(bytes) => {
                bytes.resize(block_len, 0);
                bytes[at..at + samples.len()].copy_from_slice(samples);
            }
            Pending::Linear(linear) => {
                linear.resize(block_len, 0);
                for (slot, &b) in linear[at..].iter_mut().zip(samples) {
                    *slot = ulaw_to_linear(b);
                }
            }
        }
    }
}

impl Sample for i16 {
    fn store(pending: &mut Pending, at: usize, block_len: usize, samples: &[i16]) {
        if let Pending::Ulaw(bytes) = pending {
            let so_far = bytes.iter().take(at).map(|&b| ulaw_to_linear(b)).collect();
            *pending = Pending::Linear(so_far);
        }
        let Pending::Linear(linear) = pending else {
            unreachable!("converted above")
        };
        linear.resize(block_len, 0);
        linear[at..at + samples.len()].copy_from_slice(samples);
    }
}

/// What one finished block said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockVerdict {
    /// Index of the block's first sample in the stream.
    pub start: u64,
    /// This block alone looks like `digit`.
    pub hit: Option<char>,
    /// The digit being held once the begin rule has fired (until the end rule fires).
    pub active: Option<char>,
    /// A digit began with this block (its first hit block is the one before).
    pub began: bool,
}

/// Goertzel powers at one group's four frequencies (rows or columns), in one pass: the four
/// recurrences are independent, so they run side by side (one SIMD register) instead of one after
/// another, each bound by its own dependency chain. Each step also takes two samples:
/// `s[n]` and `s[n+1]` are both computed from `s[n-1]` and `s[n-2]`
/// (`s[n+1] = x[n+1] + c·x[n] + (c²−1)·s[n-1] − c·s[n-2]`), which halves the chain the loop waits on.
fn powers(coeffs: &[f32; 4], block: &[f32]) -> [f32; 4] {
    let mut c2m1 = [0.0f32; 4];
    for i in 0..4 {
        c2m1[i] = coeffs[i] * coeffs[i] - 1.0;
    }
    let mut s1 = [0.0f32; 4];
    let mut s2 = [0.0f32; 4];
    let pairs = block.chunks_exact(2);
    let rest = pairs.remainder();
    for pair in pairs {
        let (a, b) = (pair[0], pair[1]);
        for i in 0..4 {
            let sa = (a - s2[i]) + coeffs[i] * s1[i];
            let sb = (b + coeffs[i] * (a - s2[i])) + c2m1[i] * s1[i];
            s2[i] = sa;
            s1[i] = sb;
        }
    }
    for &x in rest {
        for i in 0..4 {
            let s = (x - s2[i]) + coeffs[i] * s1[i];
            s2[i] = s1[i];
            s1[i] = s;
        }
    }
    let mut p = [0.0f32; 4];
    for i in 0..4 {
        p[i] = s1[i] * s1[i] + s2[i] * s2[i] - coeffs[i] * s1[i] * s2[i];
    }
    p
}

/// The block's energy (sum of squares), eight running sums side by side so that the loop vectorises.
fn energy(block: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = block.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for i in 0..8 {
            lanes[i] += chunk[i] * chunk[i];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().map(|x| x * x).sum::<f32>()
}

/// No filter's power can exceed `block_len × energy` (Cauchy–Schwarz: |Σ xₙ·e^(−iωn)|² ≤ N·Σ xₙ²), and
/// a digit needs both of its tones above the threshold. A block whose bound is under half the
/// threshold (the half covers rounding) cannot hold a digit, and the eight filters are skipped: the
/// pauses and quiet background that make up much of a call cost one pass of squares.
const QUIET_BOUND: f32 = 0.5;

/// A digit needs its row tone at most `NORMAL_TWIST` × its column tone, and the pair to hold
/// `TO_TOTAL_ENERGY_PER_SAMPLE` of the block's energy; together, the column tone alone must reach
/// that share ÷ (`NORMAL_TWIST` + 1). The column filters run first, and a block whose strongest column
/// falls short skips the row filters: speech keeps most of its energy below the columns (vowels'
/// first formant and their pitch harmonics), so most speech blocks cost four filters, not eight. The
/// 0.9 leaves room for rounding, so the skip never changes a verdict.
const COLUMN_GATE: f32 = 0.9 * TO_TOTAL_ENERGY_PER_SAMPLE / (NORMAL_TWIST + 1.0);

/// One stream's detector (one per call, direction and track).
pub struct DtmfDetector {
    /// Goertzel coefficients of the row and of the column frequencies.
    rows: [f32; 4],
    cols: [f32; 4],
    block_len: usize,
    threshold: f32,
    /// One block's samples as they came, `filled` of them so far.
    pending: Pending,
    filled: usize,
    /// Samples consumed before `pending`.
    position: u64,
    candidate: Option<char>,
    hits: u8,
    active: Option<char>,
    misses: u8,
}

impl DtmfDetector {
    /// `rate`: 8000 or 16000 samples per second.
    pub fn new(rate: u32) -> Self {
        let r = rate as f32;
        let block_len = (102 * rate / 8000) as usize;
        let scale = block_len as f32 / 102.0;
        let coeff = |f: f32| 2.0 * (2.0 * PI * f / r).cos();
        Self {
            rows: ROWS.map(coeff),
            cols: COLS.map(coeff),
            block_len,
            // Goertzel power grows with the square of the block length.
            threshold: THRESHOLD_AT_102 * scale * scale,
            pending: Pending::Ulaw(Vec::new()),
            filled: 0,
            position: 0,
            candidate: None,
            hits: 0,
            active: None,
            misses: 0,
        }
    }

    pub fn block_len(&self) -> usize {
        self.block_len
    }

    /// Samples fed so far.
    pub fn fed(&self) -> u64 {
        self.position + self.filled as u64
    }

    /// Feeds samples; calls `on_block` for every block they complete.
    pub fn feed(
        &mut self,
        samples: impl Iterator<Item = i16>,
        mut on_block: impl FnMut(BlockVerdict),
    ) {
        for s in samples {
            self.feed_slice(&[s], &mut on_block);
        }
    }

    /// Feeds a frame as the wire carries it, a run of samples at a time: what the media path
    /// calls for every frame, without a per-sample iterator.
    pub fn feed_audio(&mut self, audio: &Audio, mut on_block: impl FnMut(BlockVerdict)) {
        match audio {
            Audio::Ulaw(bytes) => self.feed_slice(bytes, &mut on_block),
            Audio::Pcm16(samples) => self.feed_slice(samples, &mut on_block),
        }
    }

    fn feed_slice<T: Sample>(&mut self, mut rest: &[T], on_block: &mut impl FnMut(BlockVerdict)) {
        while !rest.is_empty() {
            let take = (self.block_len - self.filled).min(rest.len());
            let (now, later) = rest.split_at(take);
            T::store(&mut self.pending, self.filled, self.block_len, now);
            self.filled += take;
            rest = later;
            if self.filled == self.block_len {
                on_block(self.finish_block());
            }
        }
    }

    fn finish_block(&mut self) -> BlockVerdict {
        let start = self.position;
        let mut widened = [0.0f32; MAX_BLOCK_LEN];
        let block = &mut widened[..self.block_len];
        self.pending.widen_into(block);
        let hit = self.classify(block);
        let verdict = self.advance(start, hit);
        self.position += self.block_len as u64;
        self.filled = 0;
        verdict
    }

    fn classify(&self, block: &[f32]) -> Option<char> {
        let energy = energy(block);
        if self.too_quiet(energy) {
            return None;
        }
        let cols = powers(&self.cols, block);
        if self.no_column_can_win(&cols, energy) {
            return None;
        }
        self.classify_powers(&powers(&self.rows, block), &cols, energy)
    }

    /// No column tone is strong enough for a digit (`COLUMN_GATE`), whatever the rows hold.
    fn no_column_can_win(&self, cols: &[f32; 4], energy: f32) -> bool {
        let best = cols.iter().copied().fold(0.0, f32::max);
        best < self.threshold || best < COLUMN_GATE * self.block_len as f32 * energy
    }

    /// A block of this energy cannot hold a digit (`QUIET_BOUND`).
    fn too_quiet(&self, energy: f32) -> bool {
        self.block_len as f32 * energy < QUIET_BOUND * self.threshold
    }

    fn classify_powers(&self, rows: &[f32; 4], cols: &[f32; 4], energy: f32) -> Option<char> {
        let best = |p: &[f32; 4]| {
            (0..4)
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .expect("four tones")
        };
        let (r, c) = (best(rows), best(cols));
        let (row, col) = (rows[r], cols[c]);
        if row < self.threshold || col < self.threshold {
            return None;
        }
        if col > row * REVERSE_TWIST || col * NORMAL_TWIST < row {
            return None;
        }
        let peaks = |p: &[f32; 4], winner: usize| {
            (0..4).all(|i| i == winner || p[i] * RELATIVE_PEAK < p[winner])
        };
        if !peaks(rows, r) || !peaks(cols, c) {
            return None;
        }
        if row + col < TO_TOTAL_ENERGY_PER_SAMPLE * self.block_len as f32 * energy {
            return None;
        }
        Some(DIGITS[r][c])
    }

    fn advance(&mut self, start: u64, hit: Option<char>) -> BlockVerdict {
        let mut began = false;
        if hit.is_some() && hit == self.candidate {
            self.hits = self.hits.saturating_add(1);
        } else {
            self.candidate = hit;
            self.hits = u8::from(hit.is_some());
        }
        match self.active {
            Some(d) if hit == Some(d) => self.misses = 0,
            Some(_) => {
                self.misses += 1;
                if self.misses >= MISSES_TO_END || (self.hits >= HITS_TO_BEGIN && hit.is_some()) {
                    self.active = None;
                    self.misses = 0;
                }
            }
            None => {}
        }
        if self.active.is_none() && self.hits >= HITS_TO_BEGIN {
            self.active = self.candidate;
            self.misses = 0;
            began = true;
        }
        BlockVerdict {
            start,
            hit,
            active: self.active,
            began,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The textbook recurrence, one sample at a time, in f64: what `powers` must agree with.
    fn reference_powers(coeffs: &[f32; 4], block: &[f32]) -> ([f64; 4], f64) {
        let mut p = [0.0; 4];
        for i in 0..4 {
            let c = f64::from(coeffs[i]);
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for &x in block {
                let s = f64::from(x) + c * s1 - s2;
                s2 = s1;
                s1 = s;
            }
            p[i] = s1 * s1 + s2 * s2 - c * s1 * s2;
        }
        let energy = block.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        (p, energy)
    }

    /// The verdict with every filter run and no early exit: what the gates must never change.
    fn ungated(d: &DtmfDetector, block: &[f32]) -> Option<char> {
        let energy = energy(block);
        d.classify_powers(&powers(&d.rows, block), &powers(&d.cols, block), energy)
    }

    #[test]
    fn quiet_blocks_skip_the_filters_and_get_the_verdict_the_filters_give() {
        let d = DtmfDetector::new(8000);
        let len = d.block_len();
        let (mut skipped, mut hits) = (0, 0);
        // Digits from far below the threshold to well above it, twisted both ways, over low noise.
        for level in (-70..=-20).step_by(2) {
            for (digit, twist) in [('1', 0.0), ('5', -7.0), ('#', 3.5), ('D', 0.0)] {
                let signal = tone(digit, 30, 8000, level as f32, twist, 0.0);
                let mut seed = level as u32;
                let block: Vec<f32> = signal[..len]
                    .iter()
                    .map(|&x| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        f32::from(x) + f32::from((seed >> 16) as i16) / 3000.0
                    })
                    .collect();
                let full = ungated(&d, &block);
                assert_eq!(
                    d.classify(&block),
                    full,
                    "{digit} at {level} dBFS, twist {twist}"
                );
                skipped += usize::from(d.too_quiet(energy(&block)));
                hits += usize::from(full.is_some());
            }
        }
        assert!(skipped > 20, "the gate skips the quiet blocks ({skipped})");
        assert!(hits > 20, "and the loud ones are still found ({hits})");
    }

    /// A voiced sound: harmonics of `pitch` shaped by two formants, at `level_db` below full scale.
    fn vowel(pitch: f32, f1: f32, f2: f32, level_db: f32, len: usize, phase: usize) -> Vec<f32> {
        let peak = |f: f32, at: f32, width: f32| 1.0 / (1.0 + ((f - at) / width).powi(2));
        let amp = 32767.0 * 10f32.powf(level_db / 20.0) / 4.0;
        (phase..phase + len)
            .map(|n| {
                let t = n as f32 / 8000.0;
                (1..=(3900.0 / pitch) as usize)
                    .map(|h| {
                        let f = pitch * h as f32;
                        (peak(f, f1, 90.0) + 0.6 * peak(f, f2, 120.0)) * (2.0 * PI * f * t).sin()
                    })
                    .sum::<f32>()
                    * amp
            })
            .collect()
    }

    #[test]
    fn the_column_gate_skips_most_speech_and_never_changes_a_verdict() {
        let mut d = DtmfDetector::new(8000);
        let len = d.block_len();
        let (mut speech, mut speech_gated, mut hits) = (0, 0, 0);
        let check = |d: &mut DtmfDetector, block: Vec<f32>| {
            let full = ungated(d, &block);
            assert_eq!(d.classify(&block), full);
            let e = energy(&block);
            let gated = !d.too_quiet(e) && d.no_column_can_win(&powers(&d.cols, &block), e);
            (gated, full.is_some())
        };
        // Vowels: first formant 300–900 Hz, second 800–2400 Hz (across the column band), pitch
        // 90–260 Hz, at several levels and block alignments.
        for pitch in [90.0, 120.0, 150.0, 190.0, 260.0] {
            for (f1, f2) in [
                (300.0, 800.0),
                (500.0, 1000.0),
                (700.0, 1200.0),
                (400.0, 2400.0),
            ]
            .into_iter()
            .chain([(800.0, 1400.0), (350.0, 1700.0), (650.0, 1900.0)])
            {
                for (level, phase) in [(-10.0, 0), (-20.0, 37), (-30.0, 111)] {
                    let (gated, _) = check(&mut d, vowel(pitch, f1, f2, level, len, phase));
                    speech += 1;
                    speech_gated += usize::from(gated);
                }
            }
        }
        // Digits at the edges of the rules, alone and under speech at falling ratios: the gate
        // must pass every block the full rules accept, and the rules decide the rest.
        for digit in ['1', '6', '*', 'D'] {
            for (level, twist, detune) in [
                (-10.0, 0.0, 0.0),
                (-25.0, -7.5, 0.015),
                (-10.0, -7.9, -0.015),
                (-10.0, 3.9, 0.0),
            ] {
                let t = tone(digit, 20, 8000, level, twist, detune);
                let t: Vec<f32> = t[..len].iter().map(|&x| f32::from(x)).collect();
                for speech_db in [-80.0, -35.0, -25.0, -18.0, -12.0] {
                    let v = vowel(140.0, 600.0, 1300.0, speech_db, len, 5);
                    let mixed = t.iter().zip(&v).map(|(a, b)| a + b).collect();
                    hits += usize::from(check(&mut d, mixed).1);
                }
            }
        }
        assert!(
            speech_gated * 3 >= speech * 2,
            "most vowel blocks skip the row filters ({speech_gated} of {speech})"
        );
        assert!(
            hits >= 40,
            "the digits are still found ({hits} of 80 blocks)"
        );
    }

    #[test]
    fn frames_fed_as_wire_audio_give_the_same_verdicts_as_samples() {
        use crate::ws::protocols::audio::linear_to_ulaw;
        let mut signal = tone('8', 90, 8000, -10.0, 0.0, 0.0);
        signal.extend(vec![0i16; 400]);
        signal.extend(tone('#', 60, 8000, -12.0, -3.0, 0.0));
        let ulaw: Vec<u8> = signal.iter().map(|&x| linear_to_ulaw(x)).collect();
        let expanded: Vec<i16> = ulaw.iter().map(|&b| ulaw_to_linear(b)).collect();
        for (audio, samples) in [
            (Audio::Ulaw(ulaw.clone()), expanded),
            (Audio::Pcm16(signal.clone()), signal.clone()),
        ] {
            let mut want = Vec::new();
            DtmfDetector::new(8000).feed(samples.into_iter(), |v| want.push(v));
            // Frames of 160 samples and an odd size, so block edges fall inside frames.
            for frame_len in [160, 37] {
                let mut got = Vec::new();
                let mut d = DtmfDetector::new(8000);
                let frames: Vec<Audio> = match &audio {
                    Audio::Ulaw(b) => b
                        .chunks(frame_len)
                        .map(|c| Audio::Ulaw(c.to_vec()))
                        .collect(),
                    Audio::Pcm16(p) => p
                        .chunks(frame_len)
                        .map(|c| Audio::Pcm16(c.to_vec()))
                        .collect(),
                };
                for f in &frames {
                    d.feed_audio(f, |v| got.push(v));
                }
                assert_eq!(got, want, "frame length {frame_len}");
            }
            assert_eq!(
                want.iter().filter(|v| v.began).count(),
                2,
                "both digits found"
            );
        }
        // A stream that switches encoding mid-block: the μ-law samples held so far are converted.
        let mut want = Vec::new();
        let expanded = ulaw.iter().map(|&b| ulaw_to_linear(b));
        DtmfDetector::new(8000).feed(expanded, |v| want.push(v));
        let mut got = Vec::new();
        let mut d = DtmfDetector::new(8000);
        for (i, bytes) in ulaw.chunks(37).enumerate() {
            let frame = match i % 3 {
                2 => Audio::Pcm16(bytes.iter().map(|&b| ulaw_to_linear(b)).collect()),
                _ => Audio::Ulaw(bytes.to_vec()),
            };
            d.feed_audio(&frame, |v| got.push(v));
        }
        assert_eq!(got, want, "mixed encodings");
    }

    #[test]
    fn two_samples_a_step_matches_the_textbook_recurrence() {
        for (rate, len) in [(8000, 102), (16000, 204), (8000, 101)] {
            let d = DtmfDetector::new(rate);
            // A digit, speech-like noise, and both mixed, at full and low level.
            let digit = tone('5', 20, rate, -6.0, 0.0, 0.0);
            let mut seed = 7u32;
            let noise: Vec<f32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    f32::from((seed >> 16) as i16) / 4.0
                })
                .collect();
            let tone_block: Vec<f32> = digit[..len].iter().map(|&x| f32::from(x)).collect();
            let mixed: Vec<f32> = tone_block.iter().zip(&noise).map(|(a, b)| a + b).collect();
            let quiet: Vec<f32> = tone_block.iter().map(|x| x / 300.0).collect();
            for block in [&tone_block, &noise, &mixed, &quiet] {
                let energy = energy(block);
                let (rows, cols) = (powers(&d.rows, block), powers(&d.cols, block));
                let (want_rows, want_energy) = reference_powers(&d.rows, block);
                let (want_cols, _) = reference_powers(&d.cols, block);
                let p: Vec<f32> = rows.into_iter().chain(cols).collect();
                let want: Vec<f64> = want_rows.into_iter().chain(want_cols).collect();
                let peak = want.iter().cloned().fold(0.0, f64::max);
                for i in 0..8 {
                    // Relative to the block's strongest tone: what the detector compares against.
                    let err = (f64::from(p[i]) - want[i]).abs() / peak;
                    assert!(
                        err < 1e-4,
                        "rate {rate} len {len} filter {i}: {} vs {}",
                        p[i],
                        want[i]
                    );
                }
                assert!((f64::from(energy) - want_energy).abs() / want_energy < 1e-5);
            }
        }
    }

    /// `(row, col)` tone pair, `ms` long, each tone at `level_db` below full scale, `twist_db` added to
    /// the column tone, frequencies scaled by `1 + detune`.
    pub fn tone(
        digit: char,
        ms: u32,
        rate: u32,
        level_db: f32,
        twist_db: f32,
        detune: f32,
    ) -> Vec<i16> {
        let (r, c) = (0..4)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .find(|&(r, c)| DIGITS[r][c] == digit)
            .expect("a DTMF digit");
        let amp = 32767.0 * 10f32.powf(level_db / 20.0);
        let col_amp = amp * 10f32.powf(twist_db / 20.0);
        let n = (rate * ms / 1000) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let s = amp * (2.0 * PI * ROWS[r] * (1.0 + detune) * t).sin()
                    + col_amp * (2.0 * PI * COLS[c] * (1.0 + detune) * t).sin();
                s.clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    /// Digits detected in `samples` (one per begin).
    pub fn detect(samples: &[i16], rate: u32) -> String {
        let mut d = DtmfDetector::new(rate);
        let mut out = String::new();
        d.feed(samples.iter().copied(), |v| {
            if v.began {
                out.push(v.active.unwrap());
            }
        });
        out
    }

    fn with_gaps(
        digits: &str,
        ms: u32,
        rate: u32,
        level: f32,
        twist: f32,
        detune: f32,
    ) -> Vec<i16> {
        let gap = vec![0i16; (rate / 1000 * 60) as usize];
        let mut out = vec![0i16; 37]; // misalign with blocks and frames
        for d in digits.chars() {
            out.extend(tone(d, ms, rate, level, twist, detune));
            out.extend(&gap);
        }
        out
    }

    const ALL: &str = "123A456B789C*0#D";

    #[test]
    fn all_sixteen_digits_at_8_and_16_khz() {
        for rate in [8000, 16000] {
            assert_eq!(
                detect(&with_gaps(ALL, 60, rate, -10.0, 0.0, 0.0), rate),
                ALL,
                "{rate}"
            );
        }
    }

    #[test]
    fn forty_ms_tones_at_any_alignment() {
        for offset in (0..160).step_by(17) {
            let mut s = vec![0i16; offset];
            s.extend(with_gaps(ALL, 40, 8000, -10.0, 0.0, 0.0));
            assert_eq!(detect(&s, 8000), ALL, "offset {offset}");
        }
    }

    #[test]
    fn edges_of_the_rules_are_detected() {
        for (level, twist, detune) in [
            (-25.0, 0.0, 0.0),
            (-10.0, 0.0, 0.015),
            (-10.0, 0.0, -0.015),
            (-10.0, -7.5, 0.0), // normal twist: column 7.5 dB below row
            (-10.0, 3.5, 0.0),  // reverse twist: column 3.5 dB above row
            (-25.0, -7.5, 0.015),
        ] {
            let s = with_gaps(ALL, 40, 8000, level, twist, detune);
            assert_eq!(
                detect(&s, 8000),
                ALL,
                "level {level} twist {twist} detune {detune}"
            );
        }
    }

    #[test]
    fn too_short_or_too_twisted_is_not_a_digit() {
        assert_eq!(detect(&with_gaps("5", 20, 8000, -10.0, 0.0, 0.0), 8000), "");
        assert_eq!(
            detect(&with_gaps("5", 60, 8000, -10.0, -12.0, 0.0), 8000),
            ""
        );
        assert_eq!(detect(&with_gaps("5", 60, 8000, -10.0, 8.0, 0.0), 8000), "");
        assert_eq!(
            detect(&with_gaps("5", 60, 8000, -60.0, 0.0, 0.0), 8000),
            "",
            "too quiet"
        );
    }

    #[test]
    fn a_held_digit_is_one_digit_and_a_repeat_after_a_gap_is_two() {
        let s = with_gaps("55", 400, 8000, -10.0, 0.0, 0.0);
        assert_eq!(detect(&s, 8000), "55");
    }

    #[test]
    fn a_single_sine_is_not_a_digit() {
        let n = 8000;
        let s: Vec<i16> = (0..n)
            .map(|i| (8000.0 * (2.0 * PI * 770.0 * i as f32 / 8000.0).sin()) as i16)
            .collect();
        assert_eq!(detect(&s, 8000), "");
    }
}

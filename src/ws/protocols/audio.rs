//! Audio as the wire carries it: 8 kHz G.711 μ-law bytes (Twilio) or 16-bit little-endian linear
//! PCM (raw PCM protocols). Redacting means writing silence in place: μ-law 0xFF, PCM 0, so the frame
//! keeps its length and the call its timing.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audio {
    Ulaw(Vec<u8>),
    Pcm16(Vec<i16>),
}

/// μ-law silence (the code for 0).
pub const ULAW_SILENCE: u8 = 0xFF;

impl Audio {
    pub fn len(&self) -> usize {
        match self {
            Audio::Ulaw(b) => b.len(),
            Audio::Pcm16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Linear 16-bit samples, for detectors.
    pub fn linear(&self) -> impl Iterator<Item = i16> + '_ {
        let (ulaw, pcm): (&[u8], &[i16]) = match self {
            Audio::Ulaw(b) => (b, &[]),
            Audio::Pcm16(s) => (&[], s),
        };
        ulaw.iter()
            .map(|&b| ulaw_to_linear(b))
            .chain(pcm.iter().copied())
    }

    /// Replaces every sample with silence.
    pub fn silence(&mut self) {
        match self {
            Audio::Ulaw(b) => b.fill(ULAW_SILENCE),
            Audio::Pcm16(s) => s.fill(0),
        }
    }

    pub fn is_silent(&self) -> bool {
        match self {
            Audio::Ulaw(b) => b.iter().all(|&x| x == ULAW_SILENCE || x == 0x7F),
            Audio::Pcm16(s) => s.iter().all(|&x| x == 0),
        }
    }
}

/// G.711 μ-law expansion (table lookup).
pub const fn ulaw_to_linear(b: u8) -> i16 {
    ULAW_TABLE[b as usize]
}

const ULAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_expand(i as u8);
        i += 1;
    }
    t
};

const fn ulaw_expand(b: u8) -> i16 {
    let u = !b;
    let sign = u & 0x80;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// G.711 μ-law compression (for tests and generated audio).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (0..8).rev().find(|&e| s & (0x80 << e) != 0).unwrap_or(0);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_within_its_quantisation() {
        assert_eq!(ulaw_to_linear(ULAW_SILENCE), 0);
        for s in [-32000i16, -1000, -10, 0, 10, 1000, 32000] {
            let back = ulaw_to_linear(linear_to_ulaw(s));
            assert!(
                (i32::from(back) - i32::from(s)).abs() <= i32::from(s).abs() / 16 + 8,
                "{s} → {back}"
            );
        }
    }

    #[test]
    fn silence_keeps_the_length() {
        let mut a = Audio::Ulaw(vec![1, 2, 3]);
        a.silence();
        assert_eq!(a, Audio::Ulaw(vec![0xFF; 3]));
        let mut p = Audio::Pcm16(vec![5; 4]);
        p.silence();
        assert!(p.is_silent() && p.len() == 4);
    }
}

//! Which audio to silence around a detected DTMF tone, as sample ranges of one track's stream.
//!
//! A digit is confirmed two blocks (~25 ms) after its first full block; the range then starts one
//! block before that first hit (the onset, which the partial block before detection hides) and stays
//! open while the digit is held; when it ends, a hangover covers the tail. Audio already sent before
//! confirmation can only be reached through a delay (`ws::call`): the recording always has one, the
//! forwarded stream only with `dtmf_lookahead_ms`.

use super::goertzel::DtmfDetector;

/// After a digit ends, this much more is silenced (in blocks: ~25 ms at 8 kHz).
const HANGOVER_BLOCKS: u64 = 2;
/// Ranges kept after they close, for frames still waiting in a delay.
const KEEP_CLOSED: usize = 8;

pub struct ToneMask {
    detector: DtmfDetector,
    open_from: Option<u64>,
    last_hit_end: u64,
    closed: Vec<(u64, u64)>,
}

impl ToneMask {
    pub fn new(rate: u32) -> Self {
        Self {
            detector: DtmfDetector::new(rate),
            open_from: None,
            last_hit_end: 0,
            closed: Vec::new(),
        }
    }

    /// Samples fed so far (the stream position of the next sample).
    pub fn position(&self) -> u64 {
        self.detector.fed()
    }

    /// The recording's delay: enough to reach back to a tone's onset at confirmation.
    pub fn confirmation_delay(&self) -> u64 {
        3 * self.detector.block_len() as u64
    }

    /// Feeds one frame's samples; returns how many digits began in them.
    pub fn feed(&mut self, audio: &crate::ws::protocols::Audio) -> u32 {
        let block = self.detector.block_len() as u64;
        let mut began = 0;
        let (open_from, last_hit_end, closed) = (
            &mut self.open_from,
            &mut self.last_hit_end,
            &mut self.closed,
        );
        self.detector.feed_audio(audio, |v| {
            if v.began {
                began += 1;
                *open_from = Some(v.start.saturating_sub(2 * block));
            }
            if v.active.is_some() && v.hit == v.active {
                *last_hit_end = v.start + block;
            }
            if v.active.is_none()
                && let Some(start) = open_from.take()
            {
                closed.push((start, *last_hit_end + HANGOVER_BLOCKS * block));
                if closed.len() > KEEP_CLOSED {
                    closed.remove(0);
                }
            }
        });
        began
    }

    /// Whether any sample at or after `from` may be silenced: the caller skips scanning its held
    /// frames when none can be. Closed ranges end in the order they close, so the last ends last.
    pub fn reaches(&self, from: u64) -> bool {
        self.open_from.is_some() || self.closed.last().is_some_and(|&(_, end)| end > from)
    }

    /// Whether any sample of `[start, end)` is to be silenced.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.open_from.is_some_and(|from| end > from)
            || self.closed.iter().any(|&(a, b)| start < b && end > a)
    }
}

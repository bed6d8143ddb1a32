//! Redactors over decoded call events, and what they report: kinds and counts, never content.
//!
//! - `text_pii`: PII in the JSON string fields a route names.
//! - `goertzel` + `tone_mask`: in-band DTMF tones found in the audio and silenced.
//! - `pause`: pause/resume controls (backend marks, DTMF entry) that silence all audio for a while.
//! - DTMF events (`dtmf` messages) are masked by `ws::call` directly: the digit becomes `DTMF_MASK`.

pub mod goertzel;
pub mod pause;
pub mod text_pii;
pub mod tone_mask;

/// What replaces a masked DTMF event digit.
pub const DTMF_MASK: &str = "X";

/// What was redacted (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Card,
    Ssn,
    Phone,
    Email,
    Pattern,
    DtmfEvent,
    DtmfTone,
    PausedFrame,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Card,
        Kind::Ssn,
        Kind::Phone,
        Kind::Email,
        Kind::Pattern,
        Kind::DtmfEvent,
        Kind::DtmfTone,
        Kind::PausedFrame,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::Ssn => "ssn",
            Kind::Phone => "phone",
            Kind::Email => "email",
            Kind::Pattern => "pattern",
            Kind::DtmfEvent => "dtmf_event",
            Kind::DtmfTone => "dtmf_tone",
            Kind::PausedFrame => "paused_frame",
        }
    }
}

/// Counts by kind for one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    counts: [u32; 8],
}

impl Report {
    pub fn add(&mut self, kind: Kind, n: u32) {
        self.counts[kind as usize] += n;
    }

    pub fn count(&self, kind: Kind) -> u32 {
        self.counts[kind as usize]
    }

    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// `(kind, count)` for every kind with a count.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, u32)> + '_ {
        Kind::ALL
            .into_iter()
            .map(|k| (k, self.count(k)))
            .filter(|(_, n)| *n > 0)
    }
}

pub use crate::config::media::Scope;

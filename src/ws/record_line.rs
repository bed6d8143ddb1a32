//! A call's recording as records, encoded when each event arrives, in the call's order.
//!
//! A media frame is encoded while its samples are still in the CPU's cache, not read back ~40 ms
//! later when the tone detector's delay releases it: by then every other call on the core has
//! passed through the cache, and that read was the media pipeline's largest single cost in cold
//! cache lines (docs/PERFORMANCE.md, twenty-third session). A frame that a tone found later covers
//! is silenced here, in place, before the records that hold it are handed over: the delay still
//! decides what may leave, this line only holds the bytes.
//!
//! Positions count bytes from the call's first record, so that a held record keeps its position
//! when the records before it are handed to the recorder.

use super::record::{FRAME_ROOM, RecordedEvent};
use crate::recording::writer::encode_event;

/// The records encoded and not yet handed over: the released ones first, then the held ones.
pub struct RecordLine {
    records: Vec<u8>,
    /// The position of `records[0]`: every byte before it has been handed over.
    base: u64,
    /// What a buffer that audio starts is allocated with: the recorder's batch and the room past
    /// it (`FRAME_ROOM`), so that a whole batch is one allocation that the recorder seals in place.
    room: usize,
}

/// Which bytes of a held record are its samples, and what silence is in its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldAudio {
    /// The position where the record, and so its samples, ends.
    pub end: u64,
    /// The samples' bytes.
    pub len: u32,
    /// The byte every sample's bytes become (μ-law silence, or 0 for 16-bit PCM).
    pub silence: u8,
}

impl RecordLine {
    /// A line whose batches are handed over at about `batch_bytes`.
    pub fn new(batch_bytes: usize) -> Self {
        Self {
            records: Vec::new(),
            base: 0,
            room: batch_bytes + FRAME_ROOM,
        }
    }

    /// Appends `event`'s record; returns the position where it ends.
    pub fn push(&mut self, event: &RecordedEvent) -> u64 {
        let room = self.room;
        let audio = event.audio.is_some();
        encode_event(event, &mut self.records, |records, needed| {
            if records.capacity() - records.len() >= needed {
                return;
            }
            if audio && records.capacity() < room {
                // Audio starts a batch: the whole batch's buffer at once.
                records.reserve_exact((room - records.len()).max(needed));
            } else if records.capacity() >= room {
                // Frames held past a batch's room (a long `dtmf_lookahead_ms`, 16 kHz PCM):
                // grow by a frame's room, not by doubling a batch-sized buffer.
                records.reserve_exact(needed.max(FRAME_ROOM));
            } else {
                // A text event alone (a quiet call's marks) takes only its size.
                records.reserve(needed);
            }
        });
        self.end()
    }

    /// The position where the last record ends.
    pub fn end(&self) -> u64 {
        self.base + self.records.len() as u64
    }

    /// The position of the first record not handed over yet.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Silences a held record's samples. A record already handed over is out of reach: the delay
    /// holds every frame a tone can still reach, so this is never asked for one.
    pub fn silence(&mut self, audio: HeldAudio) {
        let end = audio.end.checked_sub(self.base);
        let start = end.and_then(|end| end.checked_sub(u64::from(audio.len)));
        debug_assert!(start.is_some(), "a held record was handed over");
        if let (Some(start), Some(end)) = (start, end)
            && let Some(samples) = self.records.get_mut(start as usize..end as usize)
        {
            samples.fill(audio.silence);
        }
    }

    /// Takes the records before position `through`, in a buffer with room for the recorder to seal
    /// them in place; the records after it stay, in a new buffer of the line's room.
    pub fn take_through(&mut self, through: u64) -> Vec<u8> {
        let at = usize::try_from(through.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.records.len());
        self.base += at as u64;
        if at == self.records.len() {
            // Nothing held: a quiet call keeps no buffer until its next record.
            return std::mem::take(&mut self.records);
        }
        let mut rest = Vec::with_capacity(self.room.max(self.records.len() - at));
        rest.extend_from_slice(&self.records[at..]);
        self.records.truncate(at);
        std::mem::replace(&mut self.records, rest)
    }

    /// Bytes the line's buffer has room for (tests check what a quiet call keeps).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.records.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::format::{Record, RecordBody};
    use crate::ws::protocols::{Audio, Direction, Kind, Track};
    use std::time::Duration;

    fn frame(ms: u64, audio: Audio) -> RecordedEvent {
        RecordedEvent {
            at: Duration::from_millis(ms),
            direction: Direction::ToBackend,
            kind: Kind::Media,
            track: Track::Inbound,
            audio: Some(audio),
            json: None,
            call: None,
        }
    }

    fn bodies(records: &[u8]) -> Vec<Vec<u8>> {
        Record::decode_all(records)
            .unwrap()
            .into_iter()
            .map(|r| match r.body {
                RecordBody::Audio(b) | RecordBody::Event(b) => b,
            })
            .collect()
    }

    /// Held records are silenced where they are, across a hand-over of the ones before them, and
    /// the hand-over gives exactly the records before its position.
    #[test]
    fn held_records_are_silenced_in_place_across_hand_overs() {
        let mut line = RecordLine::new(1024);
        let first = line.push(&frame(0, Audio::Ulaw(vec![1; 160])));
        let second = line.push(&frame(20, Audio::Pcm16(vec![0x0101; 80])));
        let third = line.push(&frame(40, Audio::Ulaw(vec![3; 160])));
        assert_eq!(first, 12 + 160);
        assert_eq!(second, first + 12 + 160);
        assert_eq!(third, line.end());

        let handed = line.take_through(first);
        assert_eq!(bodies(&handed), [vec![1; 160]]);
        assert!(
            handed.capacity() - handed.len() >= 16,
            "room to seal it in place"
        );
        assert_eq!(line.base(), first);

        line.silence(HeldAudio {
            end: second,
            len: 160,
            silence: 0,
        });
        line.silence(HeldAudio {
            end: third,
            len: 160,
            silence: 0xFF,
        });
        let rest = line.take_through(line.end());
        assert_eq!(bodies(&rest), [vec![0; 160], vec![0xFF; 160]]);
        let times: Vec<u32> = Record::decode_all(&rest)
            .unwrap()
            .iter()
            .map(|r| r.at_ms)
            .collect();
        assert_eq!(times, [20, 40], "heads untouched");
        assert_eq!(line.capacity(), 0, "nothing held, no buffer kept");
        assert_eq!(line.base(), line.end());
    }

    /// A batch's audio is one buffer of the batch's room; frames held past it grow the buffer by a
    /// frame's room, not by doubling; a text event alone takes only its size.
    #[test]
    fn buffers_are_a_batch_or_a_text_event_in_size() {
        let mut line = RecordLine::new(1024);
        line.push(&frame(0, Audio::Ulaw(vec![1; 160])));
        assert_eq!(line.capacity(), 1024 + FRAME_ROOM);
        while line.end() < (1024 + FRAME_ROOM) as u64 {
            line.push(&frame(0, Audio::Ulaw(vec![1; 160])));
        }
        assert!(
            line.capacity() <= 1024 + 2 * FRAME_ROOM,
            "{}",
            line.capacity()
        );

        let mut quiet = RecordLine::new(1024);
        let mut mark = frame(0, Audio::Ulaw(Vec::new()));
        mark.audio = None;
        mark.kind = Kind::Mark;
        mark.json = Some(Box::new(serde_json::json!({"event": "mark"})));
        let end = quiet.push(&mark);
        assert_eq!(quiet.capacity() as u64, end, "only its size");
    }
}

//! Finds a Twilio `media` message's payload and track without a JSON parser: most messages of a call
//! are `media`, and serde (even into a borrowed struct) was a fifth of the media path's cost, most of
//! it scanning the 216-character payload for escapes that base64 cannot contain anyway.
//!
//! The scanner validates the whole message, but only within the subset of JSON that Twilio's media
//! messages use: objects, strings without escapes, `true`, `false` and `null`. Anything else (a
//! number, an array, an escape, a repeated field it reads, nesting past `MAX_DEPTH`) makes it give
//! way to the general path, which parses with serde and decides. So it never accepts a message the
//! general path would refuse, and never reads one differently: a property test holds it to that.

use std::ops::Range;

/// Deeper nesting goes to the general path.
const MAX_DEPTH: u8 = 16;

/// The parts of a `media` message the proxy reads, as byte ranges of the text.
#[derive(Debug, PartialEq, Eq)]
pub struct MediaFields {
    /// The characters of `media.payload`, between its quotes. Not yet checked as base64: its decoder
    /// refuses any byte an escape or a control character would bring.
    pub payload: Range<usize>,
    /// `media.track`, if present.
    pub track: Option<Range<usize>>,
}

/// The payload and track of `text` if it is a `media` event in the scanner's subset; `None` for
/// anything else, which the general path then handles.
pub fn media_fields(text: &str) -> Option<MediaFields> {
    twilio_layout(text).or_else(|| scan(text))
}

/// Twilio's own layout of a `media` message, field for field, with no whitespace:
///
/// `{"event":"media","sequenceNumber":"…","media":{"track":"…","chunk":"…","timestamp":"…","payload":"…"},"streamSid":"…"}`
///
/// Every `media` message Twilio sends has it, so checking the text against it leaves only the five
/// values to scan. The literal parts between them are compared whole, and the values are read by the
/// scanner's own string and payload readers; so whatever this accepts, `scan` accepts and reads the
/// same (a property test holds it to that). Any other layout, or a byte out of place, goes to `scan`.
fn twilio_layout(text: &str) -> Option<MediaFields> {
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
    };
    s.literal(br#"{"event":"media","sequenceNumber":"#)?;
    s.string()?;
    s.literal(br#","media":{"track":"#)?;
    let track = s.string()?;
    s.literal(br#","chunk":"#)?;
    s.string()?;
    s.literal(br#","timestamp":"#)?;
    s.string()?;
    s.literal(br#","payload":"#)?;
    let payload = s.payload()?;
    s.literal(br#"},"streamSid":"#)?;
    s.string()?;
    s.literal(b"}")?;
    (s.i == s.b.len()).then_some(MediaFields {
        payload,
        track: Some(track),
    })
}

/// Any layout within the subset.
fn scan(text: &str) -> Option<MediaFields> {
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    let (event, media) = s.two_fields(1, (b"event", b"media"), Scanner::string, Scanner::media)?;
    s.ws();
    if s.i != s.b.len() || &s.b[event?] != b"media" {
        return None;
    }
    media
}

/// How many bytes of `text` come before the first quote, backslash or control character: eight
/// bytes a step (the SWAR test serde_json uses), since most strings here are a few bytes long and
/// a byte loop paid ten instructions a byte.
fn plain_run(text: &[u8]) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    // The high bit of each zero byte of `v`; bytes above the lowest zero may be flagged falsely.
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v;
    let mut n = 0;
    while let Some(chunk) = text.get(n..n + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let quote = zero_bytes(x ^ (ONES * u64::from(b'"')));
        let backslash = zero_bytes(x ^ (ONES * u64::from(b'\\')));
        // The lowest flagged byte is exact (a borrow only ever flags bytes above a true match).
        let stops = (control | quote | backslash) & HIGH;
        if stops != 0 {
            return n + stops.trailing_zeros() as usize / 8;
        }
        n += 8;
    }
    n + text[n..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(text.len() - n)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// `{` and the whitespace after it; whether a member follows (`false`: the object was `{}`).
    fn open(&mut self) -> Option<bool> {
        self.eat(b'{')?;
        self.ws();
        Some(self.eat(b'}').is_none())
    }

    /// A member's key, its colon and the whitespace around them.
    fn key(&mut self) -> Option<Range<usize>> {
        let key = self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(key)
    }

    /// After a member's value: whether another member follows (`,`) or the object ended (`}`).
    fn next(&mut self) -> Option<bool> {
        self.ws();
        if self.eat(b',').is_some() {
            self.ws();
            return Some(true);
        }
        self.eat(b'}')?;
        Some(false)
    }

    /// A string without escapes or control characters; the range of its characters.
    fn string(&mut self) -> Option<Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        let len = plain_run(&self.b[start..]);
        (self.b.get(start + len) == Some(&b'"')).then(|| {
            self.i = start + len + 1;
            start..start + len
        })
    }

    /// The `media` object: its payload (required) and track.
    fn media(&mut self) -> Option<MediaFields> {
        let (payload, track) =
            self.two_fields(2, (b"payload", b"track"), Scanner::payload, Scanner::string)?;
        Some(MediaFields {
            payload: payload?,
            track,
        })
    }

    /// An object whose two `names` fields are read by `first` and `second`, each at most once (a
    /// repeat gives way to serde, which keeps the last), and whose other members are skipped.
    fn two_fields<A, B>(
        &mut self,
        depth: u8,
        names: (&[u8], &[u8]),
        mut first: impl FnMut(&mut Self) -> Option<A>,
        mut second: impl FnMut(&mut Self) -> Option<B>,
    ) -> Option<(Option<A>, Option<B>)> {
        let (mut a, mut b) = (None, None);
        let mut more = self.open()?;
        while more {
            let text = self.b;
            let key = &text[self.key()?];
            if key == names.0 {
                a.is_none().then_some(())?;
                a = Some(first(self)?);
            } else if key == names.1 {
                b.is_none().then_some(())?;
                b = Some(second(self)?);
            } else {
                self.value(depth)?;
            }
            more = self.next()?;
        }
        Some((a, b))
    }

    /// The payload string up to the next quote. A backslash or control character inside is left for
    /// the base64 decoder to refuse (neither is in its alphabet), and then the general path decides.
    fn payload(&mut self) -> Option<Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        let len = memchr::memchr(b'"', &self.b[start..])?;
        self.i = start + len + 1;
        Some(start..start + len)
    }

    /// Any value of the subset, skipped.
    fn value(&mut self, depth: u8) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' if depth < MAX_DEPTH => {
                let mut more = self.open()?;
                while more {
                    self.key()?;
                    self.value(depth + 1)?;
                    more = self.next()?;
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    /// Inlined: `twilio_layout` calls it with constant words, which then compare as a few loads
    /// instead of a `memcmp` call.
    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    fn fields(text: &str) -> Option<(&str, Option<&str>)> {
        media_fields(text).map(|f| (&text[f.payload], f.track.map(|t| &text[t])))
    }

    proptest::proptest! {
        /// Eight bytes a step finds the same stop as one byte a step, wherever it is and whatever
        /// bytes (non-ASCII, 0x7F, just above and below 0x20) surround it.
        #[test]
        fn plain_run_stops_where_a_byte_loop_stops(
            text in proptest::collection::vec(
                proptest::prop_oneof![
                    6 => proptest::sample::select(b"aZ9/+= ~\x7f\x80\xff\xc3\xa9!#[]".to_vec()),
                    1 => proptest::sample::select(b"\"\\\x00\x1f\t\n".to_vec()),
                ],
                0..40,
            )
        ) {
            let want = text
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(text.len());
            proptest::prop_assert_eq!(plain_run(&text), want);
        }
    }

    /// A message in Twilio's layout with these values (quotes added), perhaps with one byte changed or
    /// the text cut short.
    fn in_twilio_layout(values: &[String; 5], damage: Option<(usize, Option<u8>)>) -> String {
        let [seq, track, chunk, timestamp, payload] = values;
        let text = format!(
            r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"{track}","chunk":"{chunk}","timestamp":"{timestamp}","payload":"{payload}"}},"streamSid":"MZ{seq}"}}"#
        );
        let mut bytes = text.into_bytes();
        match damage {
            Some((at, None)) => bytes.truncate(at % (bytes.len() + 1)),
            Some((at, Some(byte))) => {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            None => {}
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn layout_value() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            4 => proptest::sample::select(vec!["3", "inbound", "outbound", "20", "", "AQID", "/w==", "é"]),
            1 => proptest::sample::select(vec!["a\\\"b", "a\"", "tab\t", "\\u0069", "x\"}", "\"", "\\"]),
        ]
        .prop_map(String::from)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever the layout check accepts, the general scan accepts and reads the same; and it
        /// accepts every undamaged message in the layout whose values need no escape.
        #[test]
        fn the_layout_check_reads_what_the_scan_reads(
            values in proptest::array::uniform5(layout_value()),
            damage in proptest::prop_oneof![
                3 => proptest::strategy::Just(None),
                1 => (proptest::prelude::any::<usize>(), proptest::prelude::any::<Option<u8>>()).prop_map(Some),
            ],
            tail in proptest::sample::select(vec!["", "", " ", "}", "x"]),
        ) {
            let text = in_twilio_layout(&values, damage) + tail;
            let layout = twilio_layout(&text);
            if layout.is_some() {
                proptest::prop_assert_eq!(&layout, &scan(&text), "{:?}", text);
            }
            let plain = values
                .iter()
                .all(|v| !v.contains(|c: char| c == '"' || c == '\\' || c < ' '));
            if damage.is_none() && tail.is_empty() && plain {
                proptest::prop_assert!(layout.is_some(), "{:?}", text);
            }
        }
    }

    #[test]
    fn reads_twilio_media_messages_in_any_layout() {
        let twilio = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"20","payload":"AQID"},"streamSid":"MZ1"}"#;
        assert_eq!(fields(twilio), Some(("AQID", Some("inbound"))));
        let backend = r#"{"event":"media","streamSid":"MZ1","media":{"payload":"/w=="}}"#;
        assert_eq!(fields(backend), Some(("/w==", None)));
        let spaced =
            " {\n \"media\" : { \"payload\" : \"AQID\" } ,\t\"event\":\"media\", \"x\":{\"y\":[]}}";
        assert_eq!(fields(spaced), None, "an array gives way");
        let spaced = " {\n \"media\" : { \"payload\" : \"AQID\" } ,\t\"event\":\"media\", \"x\":{\"y\":null, \"z\":true}}\r\n";
        assert_eq!(fields(spaced), Some(("AQID", None)));
    }

    #[test]
    fn gives_way_on_anything_outside_its_subset_or_not_media() {
        for text in [
            r#"{"event":"mark","media":{"payload":"AQID"}}"#,
            r#"{"media":{"payload":"AQID"}}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{}}"#,
            r#"{"event":"media","media":{"payload":"AQID"},"event":"media"}"#,
            r#"{"event":"media","media":{"payload":"AQID","payload":"AQID"}}"#,
            r#"{"event":"media","media":{"payload":"AQID","track":"a","track":"b"}}"#,
            r#"{"event":"med\u0069a","media":{"payload":"AQID"}}"#,
            r#"{"event":"media","media":{"payload":"AQID"},"sequenceNumber":3}"#,
            r#"{"event":"media","media":{"payload":"AQID"}} x"#,
            r#"{"event":"media","media":{"payload":"AQID"}"#,
            r#"{"event":"media","media":{"payload":"AQID"},}"#,
            r#"{"event":"media","media":{"payload":"AQID"} "a":"b"}"#,
            r#"{"event":"media","media":{"payload":"AQID","track":1}}"#,
            r#"{"event":"media","media":{"payload":"AQID"},"x":tru}"#,
            r#"["event","media"]"#,
            "",
        ] {
            assert_eq!(media_fields(text), None, "{text}");
        }
    }
}

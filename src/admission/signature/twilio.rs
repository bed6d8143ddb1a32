//! Twilio: `X-Twilio-Signature` = base64 HMAC-SHA1 (or HMAC-SHA256 when
//! `X-Twilio-Webhooks-Signature-Settings` names it) of the full URL Twilio called, followed by each
//! POST form parameter as name + value, sorted by name and then value. A JSON body is covered instead
//! by the URL's `bodySHA256` query parameter (hex SHA-256 of the raw body), and nothing is appended.
//! WebSocket handshakes (Media Streams) are signed over the `wss://` URL.
//!
//! As the official validators do, the URL is tried as given and with the default port toggled
//! (`https://host/x` ⇄ `https://host:443/x`). A non-default port is never dropped: a request signed
//! for another port does not verify. A non-empty body that is neither a form nor covered by
//! `bodySHA256` is malformed: the signature would not cover it.
//!
//! Replay id: `I-Twilio-Idempotency-Token` (the same on Twilio's retries). It is not signed, and
//! Twilio's signature has no timestamp, so legitimate repeats (an IVR menu answered twice) have equal
//! signatures: without the token nothing is remembered. docs/webhooks/twilio.md explains the limits.

use http::HeaderName;

use super::encoding::{base64_tag, ct_eq, hex_exact, mac, sha256, to_base64};
use super::{Failure, Secret, SignatureScheme, SignedRequest, Verified, header};
use crate::config::webhook::HmacAlgorithm;

// Parsed once: a lookup by `&str` parses the name on every request.
const SIGNATURE: HeaderName = HeaderName::from_static("x-twilio-signature");
const SETTINGS: HeaderName = HeaderName::from_static("x-twilio-webhooks-signature-settings");
const IDEMPOTENCY: HeaderName = HeaderName::from_static("i-twilio-idempotency-token");
const MAX_HEADER: usize = 256;

pub struct Twilio;

/// `algorithm=HMAC_SHA256` in the settings header; absent means the Auth Token scheme, HMAC-SHA1.
fn algorithm(req: &SignedRequest<'_>) -> Result<HmacAlgorithm, Failure> {
    let settings = match header(req.headers, &SETTINGS, MAX_HEADER) {
        Err(Failure::Missing) => return Ok(HmacAlgorithm::Sha1),
        other => other?,
    };
    let named = settings.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim() == "algorithm").then(|| v.trim())
    });
    match named {
        None | Some("HMAC_SHA1") => Ok(HmacAlgorithm::Sha1),
        Some("HMAC_SHA256") => Ok(HmacAlgorithm::Sha256),
        Some(_) => Err(Failure::Malformed),
    }
}

fn is_form(req: &SignedRequest<'_>) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The `bodySHA256` query parameter of `url`, if any.
fn body_hash_param(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    // A name decodes to `bodySHA256` only if it is spelled so or escapes a byte (`+` decodes to a
    // space, which it has none of). Most webhook URLs' queries are neither: decoding every pair of
    // `?route=main` cost ~700 instructions, a fifth of the form's parse.
    if !query.contains('%') && !query.contains("bodySHA256") {
        return None;
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
}

/// A body's form parameters, decoded exactly as `form_urlencoded::parse` decodes them (`+` is a
/// space, `%XX` a byte, invalid UTF-8 replaced per name and per value), into one text: one buffer
/// for the whole form instead of one per escaped name or value. Dropped, a form gives its buffers
/// back to the thread ([`SPARE_FORM`]).
#[derive(Default)]
struct Form {
    /// Valid UTF-8 where `params` point; bytes past the last parameter are room, not form.
    text: Vec<u8>,
    /// Each parameter's name and value, as ranges of `text`.
    params: Vec<Param>,
}

/// A form's two buffers between verifications.
#[derive(Default)]
struct FormBuffers {
    text: Vec<u8>,
    params: Vec<Param>,
}

thread_local! {
    /// The last form's buffers, reused by the next form verified on the thread. A 2 KB form's text
    /// and parameter list are two allocations over the allocator's per-thread cache sizes, the
    /// costliest two a Twilio request made (docs/PERFORMANCE.md, twenty-ninth session).
    static SPARE_FORM: std::cell::Cell<FormBuffers> =
        const { std::cell::Cell::new(FormBuffers { text: Vec::new(), params: Vec::new() }) };
}

/// The most a thread keeps between forms: a rare long form's buffers are freed, not kept.
const KEPT_TEXT_BYTES: usize = 64 * 1024;
const KEPT_PARAMS: usize = 256;

impl FormBuffers {
    /// The thread's spare buffers (empty ones if there are none).
    fn take() -> Self {
        SPARE_FORM
            .try_with(std::cell::Cell::take)
            .unwrap_or_default()
    }
}

impl Drop for Form {
    /// Gives the buffers back to the thread, unless they are empty or too big to keep. A thread
    /// that is ending, its locals already gone, keeps nothing.
    fn drop(&mut self) {
        let capacity = self.text.capacity();
        if capacity == 0 || capacity > KEPT_TEXT_BYTES || self.params.capacity() > KEPT_PARAMS {
            return;
        }
        let mut params = std::mem::take(&mut self.params);
        params.clear();
        let spare = FormBuffers {
            text: std::mem::take(&mut self.text),
            params,
        };
        let _ = SPARE_FORM.try_with(|kept| kept.set(spare));
    }
}

/// One parameter: its name and value as ranges of the form's text, the value right after the
/// name, and (set by `Form::sort`) the first eight bytes of its name as a big-endian number
/// (zero-padded), which orders most pairs of names without a string comparison (Twilio's names
/// differ early: `AccountSid`, `CallSid`, …).
#[derive(Clone)]
struct Param {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    name_prefix: u64,
}

/// The most parameters a form may have. Twilio's webhooks carry a few dozen (an incoming call 26,
/// a message with ten media ~50), like the 1,000 of Django's and PHP's form limits. Each parameter
/// costs a 40-byte entry, a place in the sort and two MAC updates: without a limit, 64 KiB of a
/// forged `a&a&…` took ~0.8 ms to verify, and 1 MiB (512K parameters) held ~20 MB of entries. A
/// form over the limit is refused as malformed as soon as the parse passes it.
const MAX_PARAMS: usize = 1000;

impl Form {
    /// One pass over the body, eight bytes at a time: each word is copied whole with its `+`s
    /// made spaces, and the first `&`, `=` or `%` in it is handled on the spot. Splitting on `&`
    /// and `=` first and decoding each piece after cost a `memchr` call per pair and a `memcpy`
    /// call per run between escapes: most of verifying a Twilio form of short, escaped parameters
    /// (docs/PERFORMANCE.md, twenty-seventh session). `None` past [`MAX_PARAMS`] parameters.
    fn parse(body: &[u8]) -> Option<Self> {
        // Decoding never lengthens a piece, so what is written stays at or behind what is read:
        // eight bytes of room past the body let every word be copied whole. Only bytes already
        // written are read, so what the last form left in the buffer needs no clearing.
        let FormBuffers {
            mut text,
            mut params,
        } = FormBuffers::take();
        text.resize(body.len() + 8, 0);
        params.reserve(32);
        let mut pair = PairCursor::default();
        let (mut read, mut written) = (0, 0);
        let mut plain_words = 0;
        while let Some(chunk) = body.get(read..read + 8) {
            // A special byte right after another (`=%2B…`, `&&&…`) is handled without the word's
            // tests, which would only find it again.
            if matches!(chunk[0], b'&' | b'%') || (chunk[0] == b'=' && !pair.in_value()) {
                read = pair.special(body, read, &mut text, &mut written, &mut params);
                continue;
            }
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            // What stops the copy: the pair's end and escapes, and in a name its `=` (in a value
            // `=` is plain). The flags above the lowest may be false; the lowest is exact.
            let stops = if pair.in_value() {
                value_specials_in(word)
            } else {
                specials_in(word)
            };
            if stops | maybe_byte(word, b'+') == 0 {
                text[written..written + 8].copy_from_slice(chunk);
                read += 8;
                written += 8;
                plain_words += 1;
                // A long value (padding, a recording URL's tail): the rest of its plain run is
                // found by `memchr3`, many bytes a step, and copied whole. Only after two plain
                // words: on short runs a call costs more than it saves.
                if plain_words >= 2 && pair.in_value() {
                    let rest = &body[read..];
                    let run = memchr::memchr3(b'&', b'%', b'+', rest).unwrap_or(rest.len());
                    text[written..written + run].copy_from_slice(&rest[..run]);
                    read += run;
                    written += run;
                }
                continue;
            }
            plain_words = 0;
            // `+` is a space: swapped in the word as it is copied, not handled a byte at a time.
            let plus_to_space = (byte_equal_mask(word, b'+') >> 7) * u64::from(b'+' ^ b' ');
            text[written..written + 8].copy_from_slice(&(word ^ plus_to_space).to_le_bytes());
            if stops == 0 {
                read += 8;
                written += 8;
                continue;
            }
            let plain = (stops.trailing_zeros() / 8) as usize;
            read += plain;
            written += plain;
            read = pair.special(body, read, &mut text, &mut written, &mut params);
        }
        while let Some(&b) = body.get(read) {
            if SPECIAL.contains(&b) {
                read = pair.special(body, read, &mut text, &mut written, &mut params);
            } else {
                text[written] = b;
                read += 1;
                written += 1;
            }
        }
        pair.end(body.len(), written, &mut params);
        let form = Form { text, params };
        if form.params.len() > MAX_PARAMS {
            return None;
        }
        // An all-ASCII text (Twilio's forms, almost always) is valid UTF-8 with a character
        // boundary at every byte. Otherwise validating the whole text at once is the common case.
        // A piece that is not valid UTF-8 on its own (invalid bytes, or a character split across
        // two pieces, which the whole text can hide) takes the per-piece replacement below.
        let decoded = &form.text[..written];
        let whole_pieces = decoded.is_ascii()
            || std::str::from_utf8(decoded).is_ok_and(|text| {
                form.params.iter().all(|p| {
                    [p.name.start, p.name.end, p.value.end]
                        .into_iter()
                        .all(|at| text.is_char_boundary(at))
                })
            });
        Some(if whole_pieces {
            form
        } else {
            replace_invalid(&form.text, &form.params)
        })
    }

    /// The `i`th parameter as strings, as the tests read the form.
    #[cfg(test)]
    fn pair(&self, i: usize) -> (&str, &str) {
        let (name, value) = self.pair_bytes(&self.params[i]);
        let text = |b| std::str::from_utf8(b).expect("pieces are valid UTF-8");
        (text(name), text(value))
    }

    /// A parameter's name and value as bytes: the order of `str`s is the order of their bytes.
    fn pair_bytes(&self, p: &Param) -> (&[u8], &[u8]) {
        (&self.text[p.name.clone()], &self.text[p.value.clone()])
    }

    /// A parameter's name followed by its value, as one slice: the parser and `replace_invalid`
    /// write each value right after its name, so what Twilio signs for a parameter is one MAC
    /// update, not two.
    fn name_and_value(&self, p: &Param) -> &[u8] {
        debug_assert_eq!(p.name.end, p.value.start, "a value follows its name");
        &self.text[p.name.start..p.value.end]
    }

    /// Sorts by name, then value, as Twilio does before signing.
    fn sort(&mut self) {
        let mut params = std::mem::take(&mut self.params);
        for p in &mut params {
            p.name_prefix = prefix_key(&self.text, p.name.clone());
        }
        params.sort_unstable_by(|a, b| {
            a.name_prefix
                .cmp(&b.name_prefix)
                .then_with(|| self.pair_bytes(a).cmp(&self.pair_bytes(b)))
        });
        self.params = params;
    }

    /// Whether some (name, value) pair repeats the one before it (after sorting). Names whose
    /// sort keys differ differ; only the rest are compared byte by byte.
    fn has_adjacent_duplicates(&self) -> bool {
        self.params.windows(2).any(|w| {
            w[0].name_prefix == w[1].name_prefix && self.pair_bytes(&w[0]) == self.pair_bytes(&w[1])
        })
    }
}

/// The bytes that end a run of plain ones: the pair and name separators and the two escapes.
const SPECIAL: [u8; 4] = [b'&', b'=', b'+', b'%'];

/// Where the form's current pair and name began, in the body and in the decoded text.
#[derive(Default)]
struct PairCursor {
    /// Where the pair's raw bytes begin: an empty pair (`&&`, a trailing `&`) is skipped.
    raw_start: usize,
    /// Where its name's decoded bytes begin.
    name_start: usize,
    /// Where its name ended, once its first `=` has been read.
    name_end: Option<usize>,
}

impl PairCursor {
    /// Handles the special byte at `body[at]`, writing what it decodes to; returns where reading
    /// goes on. A `%` without two hex digits after it stands for itself; the digits cannot run into
    /// the next piece, since neither `&` nor `=` is one.
    #[inline(always)]
    fn special(
        &mut self,
        body: &[u8],
        at: usize,
        text: &mut [u8],
        written: &mut usize,
        params: &mut Vec<Param>,
    ) -> usize {
        let mut put = |b: u8| {
            text[*written] = b;
            *written += 1;
        };
        match body[at] {
            b'&' => {
                self.end(at, *written, params);
                *self = PairCursor {
                    raw_start: at + 1,
                    name_start: *written,
                    name_end: None,
                };
                if params.len() > MAX_PARAMS {
                    // Too many: `parse` refuses the form; nothing more is read.
                    return body.len();
                }
            }
            // Only a pair's first `=` ends its name; later ones are part of the value.
            b'=' if self.name_end.is_none() => self.name_end = Some(*written),
            b'+' => put(b' '),
            b'%' => {
                let digit = |i: usize| body.get(i).map_or(NOT_HEX, |&b| HEX[usize::from(b)]);
                let (high, low) = (digit(at + 1), digit(at + 2));
                if high != NOT_HEX && low != NOT_HEX {
                    put(high << 4 | low);
                    return at + 3;
                }
                put(b'%');
            }
            other => put(other),
        }
        at + 1
    }

    /// Whether the pair's name has ended (its first `=` has been read).
    fn in_value(&self) -> bool {
        self.name_end.is_some()
    }

    /// Ends the pair whose raw bytes end at `raw_end` and decoded bytes at `written`.
    fn end(&self, raw_end: usize, written: usize, params: &mut Vec<Param>) {
        if raw_end == self.raw_start {
            return;
        }
        let name_end = self.name_end.unwrap_or(written);
        params.push(Param {
            name: self.name_start..name_end,
            value: name_end..written,
            name_prefix: 0,
        });
    }
}

/// Not a hex digit, in `HEX`.
const NOT_HEX: u8 = 0xff;

/// Each byte's value as a hex digit, or `NOT_HEX`.
const HEX: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => NOT_HEX,
        };
        i += 1;
    }
    t
};

/// `b` in every byte of a word.
const fn splat(b: u8) -> u64 {
    u64::from_le_bytes([b; 8])
}

/// The high bit of each byte of `word` equal to `b`, and possibly of bytes above one (the classic
/// "has zero byte" test on `word ^ splat(b)`, which borrows upwards).
fn maybe_byte(word: u64, b: u8) -> u64 {
    let x = word ^ splat(b);
    x.wrapping_sub(splat(0x01)) & !x & splat(0x80)
}

/// The high bit of each byte of `word` that may be `&`, `=` or `%` (a `+` is swapped for a space
/// in the word): exact for the lowest such byte, possibly set above it (the classic "has zero
/// byte" test, which borrows upwards; a false flag for one byte value only ever lies above a true
/// one for the same value).
fn specials_in(word: u64) -> u64 {
    value_specials_in(word) | maybe_byte(word, b'=')
}

/// As `specials_in`, for `&` and `%` only: what ends a plain run inside a value.
fn value_specials_in(word: u64) -> u64 {
    maybe_byte(word, b'&') | maybe_byte(word, b'%')
}

/// The high bit of each byte of `word` equal to `b`, exactly (no borrow between bytes: each byte's
/// low seven bits are added to 0x7f on their own).
fn byte_equal_mask(word: u64, b: u8) -> u64 {
    let x = word ^ splat(b);
    !(((x & splat(0x7f)) + splat(0x7f)) | x) & splat(0x80)
}

/// The decoded pieces again, each made valid UTF-8 on its own (`String::from_utf8_lossy`), as
/// `form_urlencoded` does per name and per value.
fn replace_invalid(bytes: &[u8], params: &[Param]) -> Form {
    let mut text = String::with_capacity(bytes.len());
    let mut piece = |r: &std::ops::Range<usize>| {
        let start = text.len();
        text.push_str(&String::from_utf8_lossy(&bytes[r.clone()]));
        start..text.len()
    };
    let params = params
        .iter()
        .map(|p| {
            let (name, value) = (piece(&p.name), piece(&p.value));
            Param {
                name,
                value,
                name_prefix: 0,
            }
        })
        .collect();
    Form {
        text: text.into_bytes(),
        params,
    }
}

/// The first eight bytes of the name at `name` in `text`, zero-padded, as a big-endian number.
/// Two names whose keys differ are ordered as their keys are; equal keys leave it to the full
/// comparison. A short name is read as the eight bytes at its start (its value usually follows)
/// with the bytes past it masked off: copying it into a zeroed word first made the load wait on
/// the copy's stores.
fn prefix_key(text: &[u8], name: std::ops::Range<usize>) -> u64 {
    let n = name.len().min(8);
    if n == 0 {
        return 0;
    }
    let word = match text.get(name.start..name.start + 8) {
        Some(word) => u64::from_be_bytes(word.try_into().expect("8 bytes")),
        None => {
            let mut head = [0u8; 8];
            head[..n].copy_from_slice(&text[name.start..name.start + n]);
            u64::from_be_bytes(head)
        }
    };
    word & (u64::MAX << (8 * (8 - n)))
}

/// What the signature covers besides the URL: the form parameters, sorted; `Err` if the body would
/// be unsigned.
fn signed_params(req: &SignedRequest<'_>) -> Result<Form, Failure> {
    if let Some(hash) = body_hash_param(req.url) {
        let expected = hex_exact(&hash, 32)?;
        if !ct_eq(&expected, &sha256(req.body)) {
            return Err(Failure::Mismatch);
        }
        return Ok(Form::default());
    }
    if req.body.is_empty() {
        return Ok(Form::default());
    }
    if !is_form(req) {
        return Err(Failure::Malformed);
    }
    let mut form = Form::parse(req.body).ok_or(Failure::Malformed)?;
    form.sort();
    Ok(form)
}

/// The URL with its default port toggled (`https://h/x` ⇄ `https://h:443/x`), if it has a
/// default port to add or drop. Built only when the URL as given did not verify.
fn toggled_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return None,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    // The port follows the last ':' outside an IPv6 literal's brackets.
    let port_at = authority
        .rfind(':')
        .filter(|&i| !authority[i..].contains(']'));
    match port_at {
        Some(i) if &authority[i + 1..] == default => {
            Some(format!("{scheme}://{}{tail}", &authority[..i]))
        }
        Some(_) => None,
        None => Some(format!("{scheme}://{authority}:{default}{tail}")),
    }
}

/// What is MACed, part by part: the URL, then name + value of each parameter (in order; `dedup`
/// skips a pair equal to the one before it). Slices, so a 64 KiB form is hashed without being
/// copied again, handed over as they are found rather than listed first.
fn signed_parts<'p>(url: &'p str, form: &'p Form, dedup: bool, mut part: impl FnMut(&'p [u8])) {
    part(url.as_bytes());
    let mut previous = None;
    for p in &form.params {
        let pair = form.pair_bytes(p);
        if dedup && previous == Some(pair) {
            continue;
        }
        previous = Some(pair);
        part(form.name_and_value(p));
    }
}

impl SignatureScheme for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn verify(&self, req: &SignedRequest<'_>, keys: &[Secret]) -> Result<Verified, Failure> {
        let sig = header(req.headers, &SIGNATURE, MAX_HEADER)?;
        let alg = algorithm(req)?;
        let candidate = base64_tag(sig, alg.mac_len())?;
        let params = signed_params(req)?;
        // twilio-python drops repeated identical (name, value) pairs; the other SDKs keep them.
        let has_duplicates = params.has_adjacent_duplicates();
        // The URL as given, then with its default port toggled; the first match ends the search:
        // which URL form Twilio used is no secret. Every key is tried for each variant.
        let matches = |url: &str| {
            let mut matched = false;
            for dedup in [false, true]
                .into_iter()
                .take(1 + usize::from(has_duplicates))
            {
                for key in keys {
                    let mut mac = key.hmac_key(alg).start();
                    signed_parts(url, &params, dedup, |part| mac.update(part));
                    matched |= ct_eq(mac.finish().as_ref(), candidate.as_ref());
                }
                if matched {
                    break;
                }
            }
            matched
        };
        let matched = matches(req.url) || toggled_port(req.url).is_some_and(|url| matches(&url));
        if !matched {
            return Err(Failure::Mismatch);
        }
        let replay_ids = header(req.headers, &IDEMPOTENCY, MAX_HEADER)
            .ok()
            .map(|t| [b"id:", t.as_bytes()].concat())
            .into_iter()
            .collect();
        Ok(Verified { replay_ids })
    }

    fn sign(&self, req: &SignedRequest<'_>, key: &[u8]) -> Result<Vec<(String, String)>, String> {
        let alg =
            algorithm(req).map_err(|_| "unknown algorithm in the settings header".to_string())?;
        let params = match signed_params(req) {
            Ok(p) => p,
            Err(Failure::Mismatch) => {
                return Err("bodySHA256 in the URL is not the body's SHA-256".into());
            }
            Err(_) if is_form(req) && body_hash_param(req.url).is_none() => {
                return Err(format!(
                    "the form has more than {MAX_PARAMS} parameters, which voxguard refuses"
                ));
            }
            Err(_) => {
                return Err("a body that is not a form needs ?bodySHA256=<hex SHA-256 of the body> in the URL".into());
            }
        };
        let mut parts = Vec::new();
        signed_parts(req.url, &params, false, |part| parts.push(part));
        let tag = mac(alg, key, &parts);
        Ok(vec![("X-Twilio-Signature".into(), to_base64(tag.as_ref()))])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Req, key};
    use super::*;

    // From twilio-python's tests/unit/test_request_validator.py (token "12345").
    const TOKEN: &str = "12345";
    const URI: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const EXPECTED: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const WITH_443: &str = "kvajT1Ptam85bY51eRf/AJRuM3w=";
    const HTTP_WITH_80: &str = "0ZXoZLH/DfblKGATFgpif+LLRf4=";
    const HTTP_PORT_1234: &str = "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=";
    const DUPLICATES: &str = "IK+Dwps556ElfBT0I3Rgjkr1wJU=";
    const JSON_BODY: &str = "{\"property\": \"value\", \"boolean\": true}";
    const BODY_HASH: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    const JSON_SIGNATURE: &str = "a9nBmqA0ju/hNViExpshrM61xv4=";

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish().into_bytes()
    }

    fn params() -> Vec<u8> {
        form(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ])
    }

    fn req(url: &str, body: &[u8], sig: &str) -> Req {
        Req::new(url, body, 0)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
    }

    fn check(r: &Req) -> Result<Verified, Failure> {
        Twilio.verify(&r.signed(), &[key(TOKEN)])
    }

    #[test]
    fn verifies_the_sdk_vectors() {
        assert!(check(&req(URI, &params(), EXPECTED)).is_ok());
        let dup = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert!(check(&req(URI, dup, DUPLICATES)).is_ok());
        let json = Req::new(
            &format!("{URI}&bodySHA256={BODY_HASH}"),
            JSON_BODY.as_bytes(),
            0,
        )
        .header("content-type", "application/json")
        .header("x-twilio-signature", JSON_SIGNATURE);
        assert!(check(&json).is_ok());
        assert_eq!(hex_sha256(JSON_BODY), BODY_HASH);
    }

    fn hex_sha256(body: &str) -> String {
        super::super::encoding::to_hex(&sha256(body.as_bytes()))
    }

    #[test]
    fn accepts_the_url_with_and_without_the_default_port() {
        assert!(
            check(&req(URI, &params(), WITH_443)).is_ok(),
            "signed with :443"
        );
        let with_port = URI.replace(".com", ".com:443");
        assert!(
            check(&req(&with_port, &params(), EXPECTED)).is_ok(),
            "configured with :443"
        );
        let http = URI.replace("https", "http");
        assert!(check(&req(&http, &params(), HTTP_WITH_80)).is_ok());
        let http_1234 = http.replace(".com", ".com:1234");
        assert!(check(&req(&http_1234, &params(), HTTP_PORT_1234)).is_ok());
    }

    #[test]
    fn a_non_default_port_is_not_dropped() {
        let other_port = URI.replace(".com", ".com:8443");
        assert_eq!(
            check(&req(&other_port, &params(), EXPECTED)),
            Err(Failure::Mismatch)
        );
    }

    /// The signature over forms that are not ASCII, computed apart from the verifier: the URL, then
    /// each (name, value) as `form_urlencoded` decodes it (invalid UTF-8 replaced per piece),
    /// sorted, concatenated. Covers the verifier's paths past its all-ASCII one.
    #[test]
    fn forms_beyond_ascii_verify_as_their_decoded_pairs_are_signed() {
        for body in [
            &b"SpeechResult=%C3%9Cn%C3%AFcode+caf%C3%A9&Digits=1"[..],
            b"Name=caf\xc3\xa9&Digits=2",
            b"Bad=%FF%FE&Digits=3&Odd=\xc3",
            b"a=\xc3&\xa9=b",
        ] {
            let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            pairs.sort();
            let mut signed = URI.to_owned();
            for (k, v) in &pairs {
                signed.push_str(k);
                signed.push_str(v);
            }
            let tag = mac(HmacAlgorithm::Sha1, TOKEN.as_bytes(), &[signed.as_bytes()]);
            let sig = to_base64(tag.as_ref());
            assert!(
                check(&req(URI, body, &sig)).is_ok(),
                "{}",
                String::from_utf8_lossy(body)
            );
            // A parameter added (one invalid byte swapped for another is not a change the scheme
            // can see: both decode to U+FFFD).
            let tampered = [body, b"&Digits=9"].concat();
            assert_eq!(
                check(&req(URI, &tampered, &sig)).map(|_| ()),
                Err(Failure::Mismatch),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// The shortcut past queries that cannot name `bodySHA256` finds what decoding every pair
    /// finds, for queries that spell it, escape it, almost spell it, or do neither.
    #[test]
    fn body_hash_param_finds_what_decoding_every_pair_finds() {
        let decoded = |url: &str| {
            let query = url.split_once('?')?.1;
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "bodySHA256")
                .map(|(_, v)| v.into_owned())
        };
        for query in [
            "",
            "route=main",
            "route=main&x=a+b",
            "bodySHA256=ab",
            "a=1&bodySHA256=ab&bodySHA256=cd",
            "body%53HA256=ab",
            "%62odySHA256=a%62",
            "bodySHA256",
            "bodysha256=ab",
            "body+SHA256=ab",
            "x=bodySHA256",
            "x=%41&y=2",
            "x=1%",
        ] {
            for url in [
                format!("https://h/p?{query}"),
                format!("https://h/p{query}"),
            ] {
                assert_eq!(body_hash_param(&url), decoded(&url), "{url}");
            }
        }
        assert_eq!(
            body_hash_param("https://h/p?body%53HA256=ab").as_deref(),
            Some("ab")
        );
    }

    #[test]
    fn tampering_fails() {
        let changed = params()
            .iter()
            .map(|&b| if b == b'4' { b'5' } else { b })
            .collect::<Vec<_>>();
        assert_eq!(
            check(&req(URI, &changed, EXPECTED)),
            Err(Failure::Mismatch),
            "param changed"
        );
        let mut added = params();
        added.extend_from_slice(b"&Extra=1");
        assert_eq!(
            check(&req(URI, &added, EXPECTED)),
            Err(Failure::Mismatch),
            "param added"
        );
        let path = URI.replace("myapp", "other");
        assert_eq!(
            check(&req(&path, &params(), EXPECTED)),
            Err(Failure::Mismatch),
            "path"
        );
        let query = URI.replace("foo=1", "foo=2");
        assert_eq!(
            check(&req(&query, &params(), EXPECTED)),
            Err(Failure::Mismatch),
            "query"
        );
        let wrong = Twilio.verify(&req(URI, &params(), EXPECTED).signed(), &[key("54321")]);
        assert_eq!(wrong, Err(Failure::Mismatch), "wrong token");
        assert_eq!(
            check(&req(URI, &params(), &EXPECTED[..27])),
            Err(Failure::Malformed)
        );
        assert_eq!(check(&req(URI, &params(), "")), Err(Failure::Malformed));
        let bad_hash = Req::new(
            &format!("{URI}&bodySHA256={BODY_HASH}"),
            b"{\"property\": 1}",
            0,
        )
        .header("x-twilio-signature", JSON_SIGNATURE);
        assert_eq!(
            check(&bad_hash),
            Err(Failure::Mismatch),
            "body changed under bodySHA256"
        );
    }

    #[test]
    fn an_unsigned_body_is_malformed() {
        let json = Req::new(URI, JSON_BODY.as_bytes(), 0)
            .header("content-type", "application/json")
            .header("x-twilio-signature", EXPECTED);
        assert_eq!(check(&json), Err(Failure::Malformed));
    }

    #[test]
    fn sha256_settings_and_websocket_urls_round_trip() {
        let ws = Req::new("wss://voice.example.com/media?x=1", b"", 0).header(
            "x-twilio-webhooks-signature-settings",
            "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
        );
        let signed = ws.sign_with(&Twilio, TOKEN.as_bytes());
        assert_eq!(
            signed.headers["x-twilio-signature"].len(),
            44,
            "32-byte MAC"
        );
        assert!(check(&signed).is_ok());
        let mut as_https = signed;
        as_https.url = as_https.url.replace("wss", "https");
        assert_eq!(check(&as_https), Err(Failure::Mismatch));
        let unknown = req(URI, &params(), EXPECTED)
            .header("x-twilio-webhooks-signature-settings", "algorithm=HMAC_MD5");
        assert_eq!(check(&unknown), Err(Failure::Malformed));
    }

    #[test]
    fn repeated_identical_params_verify_with_and_without_dedup() {
        // twilio-python signs sorted(set(values)): "A" + "1" once; the other SDKs sign it twice.
        let body = b"A=1&B=2&A=1";
        let once = to_base64(
            mac(
                HmacAlgorithm::Sha1,
                TOKEN.as_bytes(),
                &[URI.as_bytes(), b"A1B2"],
            )
            .as_ref(),
        );
        let twice = to_base64(
            mac(
                HmacAlgorithm::Sha1,
                TOKEN.as_bytes(),
                &[URI.as_bytes(), b"A1A1B2"],
            )
            .as_ref(),
        );
        assert!(check(&req(URI, body, &once)).is_ok(), "python's form");
        assert!(check(&req(URI, body, &twice)).is_ok(), "node's form");
        let thrice = to_base64(
            mac(
                HmacAlgorithm::Sha1,
                TOKEN.as_bytes(),
                &[URI.as_bytes(), b"A1A1A1B2"],
            )
            .as_ref(),
        );
        assert_eq!(check(&req(URI, body, &thrice)), Err(Failure::Mismatch));
    }

    #[test]
    fn the_idempotency_token_is_the_replay_id() {
        let r = req(URI, &params(), EXPECTED).header("i-twilio-idempotency-token", "tok-1");
        assert_eq!(check(&r).unwrap().replay_ids, vec![b"id:tok-1".to_vec()]);
        assert!(
            check(&req(URI, &params(), EXPECTED))
                .unwrap()
                .replay_ids
                .is_empty()
        );
    }

    /// A form of more than `MAX_PARAMS` parameters is refused before it is sorted or MACed, even
    /// correctly signed; one of exactly `MAX_PARAMS` verifies. Empty pieces (`&&`) are not
    /// parameters and do not count.
    #[test]
    fn a_form_of_more_parameters_than_the_limit_is_refused() {
        let signed = |n: usize| {
            let mut pairs: Vec<(String, String)> =
                (0..n).map(|i| (format!("P{i}"), "v".to_string())).collect();
            let body = form(&pairs.iter().map(|(k, v)| (&**k, &**v)).collect::<Vec<_>>());
            let body = [&b"&&"[..], &body].concat();
            pairs.sort();
            let data: String = pairs.iter().map(|(k, v)| format!("{k}{v}")).collect();
            let tag = mac(
                HmacAlgorithm::Sha1,
                TOKEN.as_bytes(),
                &[URI.as_bytes(), data.as_bytes()],
            );
            req(URI, &body, &to_base64(tag.as_ref()))
        };
        assert!(check(&signed(MAX_PARAMS)).is_ok());
        assert_eq!(
            check(&signed(MAX_PARAMS + 1)).err(),
            Some(Failure::Malformed)
        );
        // The costliest shape found (twenty-seventh session): half a million parameters in 1 MiB.
        assert!(Form::parse(&b"a&".repeat(512 * 1024)).is_none());
        let too_many = b"a&".repeat(MAX_PARAMS + 1);
        let unsigned = req(URI, &too_many, "");
        let refused = Twilio
            .sign(&unsigned.signed(), TOKEN.as_bytes())
            .unwrap_err();
        assert!(refused.contains("more than 1000 parameters"), "{refused}");
    }

    /// A decoded form's (name, value) pairs, in order.
    type Pairs = Vec<(String, String)>;

    /// The form as we decode it and as `form_urlencoded::parse` does, pair by pair.
    fn ours_and_reference(body: &[u8]) -> (Pairs, Pairs) {
        let form = Form::parse(body).expect("under the parameter limit");
        let ours = (0..form.params.len())
            .map(|i| form.pair(i))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let reference = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        (ours, reference)
    }

    /// What was signed must not change: the decoder gives what `form_urlencoded::parse` gives, for
    /// any bytes (escapes, stray `%`, `+`, invalid UTF-8, empty pairs, `=` in values).
    #[test]
    fn the_form_decodes_as_form_urlencoded_does() {
        use proptest::prelude::*;
        let alphabet = prop::sample::select(b"ab=&+%2BFfz9\x00\xc3\xa9\xff ;".to_vec());
        proptest!(ProptestConfig::with_cases(2000), |(body in prop::collection::vec(alphabet, 0..64))| {
            let (ours, reference) = ours_and_reference(&body);
            prop_assert_eq!(ours, reference);
        });
    }

    /// Long plain runs (whole plain words, and the `memchr3` skip inside a value) end at every kind
    /// of byte and escape, at every offset within a word, in names and in values.
    #[test]
    fn long_plain_runs_decode_as_form_urlencoded_does() {
        use proptest::prelude::*;
        let ends: [&[u8]; 10] = [
            b"&",
            b"=",
            b"+",
            b"%2B",
            b"%e9",
            b"%",
            b"%4",
            b"\xc3\xa9",
            b"\xc3",
            b"F",
        ];
        let piece = (prop::sample::select(ends.to_vec()), 0usize..40);
        proptest!(ProptestConfig::with_cases(2000), |(pieces in prop::collection::vec(piece, 0..12))| {
            let body: Vec<u8> = pieces
                .iter()
                .flat_map(|&(end, run)| end.iter().copied().chain(std::iter::repeat_n(b'x', run)))
                .collect();
            let (ours, reference) = ours_and_reference(&body);
            prop_assert_eq!(ours, reference);
        });
    }

    /// The word-at-a-time scan flags the first `&`, `=` or `%` of a word exactly, and finds every
    /// `+`, for any bytes (those one bit away included); a word of none flags nothing.
    #[test]
    fn the_word_scan_finds_the_first_special_byte_and_every_plus() {
        use proptest::prelude::*;
        let byte = prop::sample::select(
            b"&=+%*$kx<>\x2a\x2b\x2c\x24\x27\x3c\x3d\xab\xa5\x00\xff\xa6\xbd\x7f\x80".to_vec(),
        );
        proptest!(ProptestConfig::with_cases(4000), |(word in prop::array::uniform8(byte))| {
            let expected = word.iter().position(|b| b"&=%".contains(b));
            let flags = specials_in(u64::from_le_bytes(word));
            let found = (flags != 0).then(|| (flags.trailing_zeros() / 8) as usize);
            prop_assert_eq!(found, expected);
            let pluses = byte_equal_mask(u64::from_le_bytes(word), b'+').to_le_bytes();
            for (b, flag) in word.iter().zip(pluses) {
                prop_assert_eq!(flag == 0x80, *b == b'+');
                prop_assert!(flag == 0 || flag == 0x80);
            }
        });
        let long = [b"x".repeat(1000), b"%41=+&".to_vec()].concat();
        let form = Form::parse(&[b"a=", &long[..], b"b"].concat()).unwrap();
        assert_eq!(form.pair(0), ("a", &*format!("{}A= ", "x".repeat(1000))));
        assert_eq!(form.pair(1), ("b", ""));
    }

    #[test]
    fn a_form_reuses_the_last_forms_buffers_and_reads_nothing_of_it() {
        let long =
            Form::parse(b"Caller=%2B15551234567&Digits=4111111111111111&Body=hi+there").unwrap();
        let room = long.text.capacity();
        drop(long);
        let short = Form::parse(b"a=1&b").unwrap();
        assert_eq!(
            short.text.capacity(),
            room,
            "the dropped form's text buffer is reused"
        );
        assert_eq!(short.params.len(), 2);
        assert_eq!(short.pair(0), ("a", "1"));
        assert_eq!(short.pair(1), ("b", ""));
        drop(short);
        // An over-long form's buffers are freed, not kept for the thread.
        let huge = [b"a=".as_slice(), &vec![b'x'; KEPT_TEXT_BYTES + 1]].concat();
        drop(Form::parse(&huge).unwrap());
        assert_eq!(FormBuffers::take().text.capacity(), 0);
        // Nor are those of a form with too many parameters to keep.
        drop(Form::parse(&b"a&".repeat(KEPT_PARAMS + 1)).unwrap());
        assert_eq!(FormBuffers::take().params.capacity(), 0);
    }

    /// A character split across a value and the next name is valid UTF-8 in the joined text, but
    /// not in either piece: each piece is replaced on its own, as `form_urlencoded` does.
    #[test]
    fn a_character_split_across_pieces_is_replaced_in_each() {
        for body in [&b"a=\xc3&\xa9=b"[..], b"\xc3=\xa9", b"x=\xc3&&\xa9"] {
            let (ours, reference) = ours_and_reference(body);
            assert_eq!(ours, reference, "{body:?}");
        }
    }

    /// Sorted as Twilio's SDKs sort: by name, then value, as strings; a prefix sorts first.
    #[test]
    fn the_form_sorts_by_name_then_value() {
        use proptest::prelude::*;
        let alphabet = prop::sample::select(b"ab=&+%2BFfz9\x00\xc3\xa9\xff ;".to_vec());
        proptest!(ProptestConfig::with_cases(2000), |(body in prop::collection::vec(alphabet, 0..96))| {
            let mut form = Form::parse(&body).unwrap();
            form.sort();
            let ours: Vec<(&str, &str)> = (0..form.params.len()).map(|i| form.pair(i)).collect();
            let mut reference: Vec<(String, String)> = form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            reference.sort();
            let reference: Vec<(&str, &str)> =
                reference.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(ours, reference);
        });
        let mut names = Form::parse(
            b"CalledZip=1&Called=2&CalledCity=3&Caller=4&Called=1&AccountSid=5&CalledCountry=6",
        )
        .unwrap();
        names.sort();
        let order: Vec<(&str, &str)> = (0..names.params.len()).map(|i| names.pair(i)).collect();
        assert_eq!(
            order,
            [
                ("AccountSid", "5"),
                ("Called", "1"),
                ("Called", "2"),
                ("CalledCity", "3"),
                ("CalledCountry", "6"),
                ("CalledZip", "1"),
                ("Caller", "4")
            ]
        );
    }
}

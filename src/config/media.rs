//! `[route.media]`: how a WebSocket route's messages are decoded and what is redacted, in the
//! forwarded stream, the recording, or both. Defaults: every redactor on both, except `dtmf` events,
//! which IVR backends need (forwarded unchanged, masked in the recording).

use std::time::Duration;

use serde::Serialize;

use super::defaults as d;
use super::file::MediaFile;
use super::{Errors, ser_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Twilio,
    Pcm,
    /// Relayed untouched (session limits still apply); nothing is redacted or recorded.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMalformed {
    /// Drop the message, count it, keep the call.
    Drop,
    /// Close the call (1007 for undecodable payloads, 1008 for the wrong message type).
    Close,
}

/// A validated `[route.media]`.
#[derive(Debug, Clone, Serialize)]
pub struct MediaConfig {
    pub protocol: Protocol,
    pub sample_rate: u32,
    pub record: bool,
    pub on_malformed: OnMalformed,
    pub text: Scope,
    pub text_fields: Vec<String>,
    pub patterns: Vec<String>,
    pub dtmf_events: Scope,
    pub dtmf_tones: Scope,
    pub dtmf_lookahead_ms: u64,
    pub pause: Scope,
    pub pause_mark: Option<String>,
    pub resume_mark: Option<String>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub pause_on_dtmf: Option<Duration>,
    #[serde(serialize_with = "ser_duration")]
    pub max_pause: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max_duration: Duration,
    pub max_sessions: Option<u32>,
    /// Overrides `[recording] retention` for this route's recordings.
    #[serde(serialize_with = "ser_opt_duration")]
    pub retention: Option<Duration>,
    /// A `customParameter` that must be `"true"` before anything is recorded.
    pub consent_param: Option<String>,
    /// A `customParameter` naming the data subject (stored only as its keyed hash).
    pub subject_param: Option<String>,
}

fn ser_opt_duration<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(d) => ser_duration(d, s),
    }
}

pub(super) fn validate(e: &mut Errors, key: &str, f: &MediaFile) -> Option<MediaConfig> {
    let k = |s: &str| format!("{key}.{s}");
    let protocol = match f.protocol.as_deref() {
        Some("twilio") => Protocol::Twilio,
        Some("pcm") => Protocol::Pcm,
        Some("passthrough") => Protocol::Passthrough,
        Some(other) => {
            e.push(
                k("protocol"),
                format!("{other:?} is not one of \"twilio\", \"pcm\", \"passthrough\""),
            );
            return None;
        }
        None => {
            e.push(
                k("protocol"),
                "required: \"twilio\", \"pcm\" or \"passthrough\"",
            );
            return None;
        }
    };
    let sample_rate = match (protocol, f.sample_rate) {
        (Protocol::Pcm, None) => 8000,
        (Protocol::Pcm, Some(r @ (8000 | 16000))) => r,
        (Protocol::Pcm, Some(r)) => {
            e.push(k("sample_rate"), format!("{r} is not 8000 or 16000"));
            8000
        }
        (_, Some(_)) => {
            e.push(
                k("sample_rate"),
                "only used by protocol = \"pcm\" (Twilio streams are 8 kHz μ-law)",
            );
            8000
        }
        (_, None) => 8000,
    };
    let mut scope = |name: &str, v: Option<&str>, default: Scope| match v.map(str::parse::<Scope>) {
        None => default,
        Some(Ok(s)) => s,
        Some(Err(reason)) => {
            e.push(k(name), reason);
            default
        }
    };
    let text = scope("text", f.text.as_deref(), Scope::Both);
    let dtmf_events = scope("dtmf_events", f.dtmf_events.as_deref(), Scope::Record);
    let dtmf_tones = scope("dtmf_tones", f.dtmf_tones.as_deref(), Scope::Both);
    let pause = scope("pause", f.pause.as_deref(), Scope::Record);
    let on_malformed = match f.on_malformed.as_deref() {
        None | Some("drop") => OnMalformed::Drop,
        Some("close") => OnMalformed::Close,
        Some(other) => {
            e.push(
                k("on_malformed"),
                format!("{other:?} is not one of \"drop\", \"close\""),
            );
            OnMalformed::Drop
        }
    };
    let text_fields = f.text_fields.clone().unwrap_or_else(|| match protocol {
        Protocol::Twilio => vec!["start.customParameters".to_string()],
        _ => Vec::new(),
    });
    for (i, p) in text_fields.iter().enumerate() {
        if p.is_empty() || p.split('.').any(str::is_empty) {
            e.push(
                format!("{key}.text_fields[{i}]"),
                format!("{p:?} must be a dotted path like \"start.customParameters\""),
            );
        }
    }
    let patterns = f.patterns.clone().unwrap_or_default();
    for (i, p) in patterns.iter().enumerate() {
        if let Err(err) = regex::Regex::new(p) {
            e.push(
                format!("{key}.patterns[{i}]"),
                format!("not a valid regular expression: {err}"),
            );
        }
    }
    let dtmf_lookahead_ms = f.dtmf_lookahead_ms.unwrap_or(d::MEDIA_DTMF_LOOKAHEAD_MS);
    if dtmf_lookahead_ms > 500 {
        e.push(
            k("dtmf_lookahead_ms"),
            "at most 500 (it delays the forwarded audio by that much)",
        );
    }
    let pause_on_dtmf = f
        .pause_on_dtmf
        .as_deref()
        .map(|v| e.duration(&k("pause_on_dtmf"), Some(v), Duration::from_secs(5)));
    Some(MediaConfig {
        protocol,
        sample_rate,
        record: f.record.unwrap_or(true),
        on_malformed,
        text,
        text_fields,
        patterns,
        dtmf_events,
        dtmf_tones,
        dtmf_lookahead_ms,
        pause,
        pause_mark: Some(
            f.pause_mark
                .clone()
                .unwrap_or_else(|| d::MEDIA_PAUSE_MARK.into()),
        )
        .filter(|s| !s.is_empty()),
        resume_mark: Some(
            f.resume_mark
                .clone()
                .unwrap_or_else(|| d::MEDIA_RESUME_MARK.into()),
        )
        .filter(|s| !s.is_empty()),
        pause_on_dtmf,
        max_pause: e.duration(&k("max_pause"), f.max_pause.as_deref(), d::MEDIA_MAX_PAUSE),
        max_duration: e.duration(
            &k("max_duration"),
            f.max_duration.as_deref(),
            d::MEDIA_MAX_DURATION,
        ),
        max_sessions: f
            .max_sessions
            .map(|v| e.positive(&k("max_sessions"), Some(u64::from(v)), 1) as u32),
        retention: f
            .retention
            .as_deref()
            .map(|v| e.duration(&k("retention"), Some(v), d::RECORDING_RETENTION)),
        consent_param: f.consent_param.clone().filter(|s| !s.is_empty()),
        subject_param: f.subject_param.clone().filter(|s| !s.is_empty()),
    })
}

/// Where a redactor applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Both,
    Forward,
    Record,
    Off,
}

impl Scope {
    pub fn forward(self) -> bool {
        matches!(self, Scope::Both | Scope::Forward)
    }

    pub fn record(self) -> bool {
        matches!(self, Scope::Both | Scope::Record)
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "both" => Ok(Scope::Both),
            "forward" => Ok(Scope::Forward),
            "record" => Ok(Scope::Record),
            "off" => Ok(Scope::Off),
            other => Err(format!(
                "{other:?} is not one of \"both\", \"forward\", \"record\", \"off\""
            )),
        }
    }
}

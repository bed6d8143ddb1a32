//! Text PII in JSON string fields: payment card numbers (13–19 digits, spaces or dashes allowed,
//! Luhn-checked), US SSNs, phone numbers (E.164 and North American forms), e-mail addresses, and a
//! route's own patterns. Each match becomes `[REDACTED:<kind>]`. Cards go first so their digits are
//! not taken for phone numbers.

use regex::Regex;
use serde_json::Value;

use super::{Kind, Report};

pub struct TextPii {
    /// Runs of digits joined by single spaces or dashes: where card numbers are looked for.
    digit_runs: Regex,
    ssn: Regex,
    phone: Regex,
    email: Regex,
    custom: Vec<Regex>,
    /// JSON paths whose strings are scanned: segments, `*` matching any key or index.
    paths: Vec<Vec<String>>,
}

impl TextPii {
    /// `paths`: dotted JSON paths (`start.customParameters`, `transcript.*.text`).
    pub fn new(paths: &[String], custom: Vec<Regex>) -> Self {
        let re = |p: &str| Regex::new(p).expect("built-in pattern");
        Self {
            digit_runs: re(r"\b\d+(?:[ -]\d+)*\b"),
            ssn: re(r"\b(\d{3})[- ](\d{2})[- ](\d{4})\b"),
            phone: re(
                r"(?:\+\d{8,15}\b)|(?:(?:(?:\+|\b)1[ .-]?)?(?:\(\d{3}\)|\b\d{3})[ .-]?\d{3}[ .-]?\d{4}\b)",
            ),
            email: re(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
            custom,
            paths: paths
                .iter()
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect(),
        }
    }

    /// Redacts one string; `None` if nothing matched.
    pub fn redact_str(&self, s: &str, report: &mut Report) -> Option<String> {
        let mut out = match self.redact_cards(s, report) {
            Some(redacted) => std::borrow::Cow::Owned(redacted),
            None => std::borrow::Cow::Borrowed(s),
        };
        let mut replace = |re: &Regex, kind: Kind, keep: &dyn Fn(&regex::Captures) -> bool| {
            let mut n = 0;
            let replaced = re.replace_all(&out, |c: &regex::Captures| {
                if keep(c) {
                    c[0].to_string()
                } else {
                    n += 1;
                    format!("[REDACTED:{}]", kind.label())
                }
            });
            if n > 0 {
                let owned = replaced.into_owned();
                report.add(kind, n);
                out = std::borrow::Cow::Owned(owned);
            }
        };
        replace(&self.ssn, Kind::Ssn, &|c| {
            &c[1] == "000"
                || &c[1] == "666"
                || c[1].starts_with('9')
                || &c[2] == "00"
                || &c[3] == "0000"
        });
        replace(&self.phone, Kind::Phone, &|_| false);
        replace(&self.email, Kind::Email, &|_| false);
        for re in &self.custom {
            replace(re, Kind::Pattern, &|_| false);
        }
        match out {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(s) => Some(s),
        }
    }

    /// Card numbers: a run of digit groups (`4111 1111-1111 1111`) is redacted whole when some span
    /// of whole groups in it has 13–19 digits and passes Luhn. Looking inside runs matters: a card
    /// typed right after other digits ("210-20-5201 4111 …" with no word between) is still found.
    /// Which digits around it belong to the card cannot be known, so all of them go.
    fn redact_cards(&self, s: &str, report: &mut Report) -> Option<String> {
        let mut out = String::new();
        let mut copied = 0;
        let mut found = 0;
        for run in self.digit_runs.find_iter(s) {
            if has_card(run.as_str()) {
                out.push_str(&s[copied..run.start()]);
                out.push_str("[REDACTED:card]");
                copied = run.end();
                found += 1;
            }
        }
        if found == 0 {
            return None;
        }
        out.push_str(&s[copied..]);
        report.add(Kind::Card, found);
        Some(out)
    }

    /// Redacts the strings under the configured paths; returns whether anything changed.
    pub fn redact_json(&self, json: &mut Value, report: &mut Report) -> bool {
        let mut changed = false;
        for path in &self.paths {
            changed |= self.walk(json, path, report);
        }
        changed
    }

    fn walk(&self, v: &mut Value, path: &[String], report: &mut Report) -> bool {
        let Some((head, rest)) = path.split_first() else {
            return self.all_strings(v, report);
        };
        match v {
            Value::Object(map) if head == "*" => {
                let mut changed = false;
                for child in map.values_mut() {
                    changed |= self.walk(child, rest, report);
                }
                changed
            }
            Value::Object(map) => map
                .get_mut(head)
                .is_some_and(|c| self.walk(c, rest, report)),
            Value::Array(items) if head == "*" => {
                let mut changed = false;
                for child in items {
                    changed |= self.walk(child, rest, report);
                }
                changed
            }
            Value::Array(items) => head
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .is_some_and(|c| self.walk(c, rest, report)),
            _ => false,
        }
    }

    fn all_strings(&self, v: &mut Value, report: &mut Report) -> bool {
        match v {
            Value::String(s) => match self.redact_str(s, report) {
                Some(r) => {
                    *s = r;
                    true
                }
                None => false,
            },
            Value::Object(map) => {
                let mut changed = false;
                for child in map.values_mut() {
                    changed |= self.all_strings(child, report);
                }
                changed
            }
            Value::Array(items) => {
                let mut changed = false;
                for child in items {
                    changed |= self.all_strings(child, report);
                }
                changed
            }
            _ => false,
        }
    }
}

/// Luhn check over the digits of `s` (13–19 of them).
/// Whether whole consecutive groups of the run form a Luhn-valid 13–19 digit number.
fn has_card(run: &str) -> bool {
    let groups = digit_groups(run);
    // At most 19 digits from each start: linear in the run, however long a run an attacker sends.
    (0..groups.len()).any(|i| {
        let mut digits = 0;
        groups[i..]
            .iter()
            .map_while(|g| {
                digits += g.1 - g.0;
                (digits <= 19).then_some((digits, g.1))
            })
            .any(|(digits, end)| digits >= 13 && luhn(&run[groups[i].0..end]))
    })
}

/// Byte ranges of the digit groups in a run such as `4111 1111-1111 1111`.
fn digit_groups(run: &str) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut start = 0;
    for (i, b) in run.bytes().enumerate() {
        if b == b' ' || b == b'-' {
            groups.push((start, i));
            start = i + 1;
        }
    }
    groups.push((start, run.len()));
    groups
}

fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pii() -> TextPii {
        TextPii::new(
            &["start.customParameters".into(), "transcript.*.text".into()],
            vec![Regex::new(r"ACCT-\d{6}").unwrap()],
        )
    }

    fn red(s: &str) -> (String, Report) {
        let mut r = Report::default();
        let out = pii().redact_str(s, &mut r).unwrap_or_else(|| s.to_string());
        (out, r)
    }

    #[test]
    fn each_kind_is_replaced_and_counted() {
        let cases = [
            (
                "pay with 4111 1111 1111 1111 now",
                "pay with [REDACTED:card] now",
                Kind::Card,
            ),
            (
                "card 4111-1111-1111-1111",
                "card [REDACTED:card]",
                Kind::Card,
            ),
            ("amex 378282246310005.", "amex [REDACTED:card].", Kind::Card),
            ("ssn 123-45-6789", "ssn [REDACTED:ssn]", Kind::Ssn),
            ("call +14155550100", "call [REDACTED:phone]", Kind::Phone),
            (
                "call (415) 555-0100 today",
                "call [REDACTED:phone] today",
                Kind::Phone,
            ),
            ("call 415-555-0100", "call [REDACTED:phone]", Kind::Phone),
            ("call +1 415 555 0100", "call [REDACTED:phone]", Kind::Phone),
            (
                "mail jane.doe+x@example.co.uk",
                "mail [REDACTED:email]",
                Kind::Email,
            ),
            ("ref ACCT-123456", "ref [REDACTED:pattern]", Kind::Pattern),
        ];
        for (input, expected, kind) in cases {
            let (out, report) = red(input);
            assert_eq!(out, expected, "{input}");
            assert_eq!(report.count(kind), 1, "{input}");
        }
    }

    #[test]
    fn look_alikes_are_kept() {
        for s in [
            "order 4111 1111 1111 1112", // fails Luhn
            "ssn 000-12-3456",           // invalid area
            "version 1.2.3",
            "at 12:30 on 2026-12-02",
            "CA1234567890abcdef",
        ] {
            assert_eq!(red(s).0, s, "{s}");
        }
    }

    #[test]
    fn a_card_right_after_other_digits_is_found() {
        // Found by the redaction-idempotence property test: the card was hidden inside a longer
        // digit run that failed Luhn as a whole, and only a second pass redacted it.
        let (out, _) = red("210-20-5201 0000 1000 0000 0008");
        assert_eq!(out, "[REDACTED:card]");
        let (out, _) = red("ref 12 4111-1111-1111-1111 77");
        assert_eq!(out, "ref [REDACTED:card]");
        // A phone's optional leading 1 must start a number, not end another one.
        let (out, _) = red("00000000001 (200) 200-0000");
        assert_eq!(out, "00000000001 [REDACTED:phone]");
    }

    #[test]
    fn only_the_configured_paths_are_scanned() {
        let mut v: Value = serde_json::from_str(
            r#"{"start":{"callSid":"CA1","from":"+14155550100","customParameters":{"caller":"+14155550100","nested":{"n":"jane@example.com"}}},"transcript":[{"text":"my ssn is 123-45-6789"},{"text":"ok"}]}"#,
        )
        .unwrap();
        let mut r = Report::default();
        assert!(pii().redact_json(&mut v, &mut r));
        assert_eq!(v["start"]["customParameters"]["caller"], "[REDACTED:phone]");
        assert_eq!(
            v["start"]["customParameters"]["nested"]["n"],
            "[REDACTED:email]"
        );
        assert_eq!(v["transcript"][0]["text"], "my ssn is [REDACTED:ssn]");
        assert_eq!(v["start"]["from"], "+14155550100", "outside the paths");
        assert_eq!(r.total(), 3);
    }
}

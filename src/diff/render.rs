//! Writing a [`Report`]: plain text for a terminal, markdown for a merge-request
//! comment, JSON for tools. Text and markdown share one writer; only headings,
//! emphasis and code fences differ.

use std::fmt::Write;

use serde_json::Value;

use super::replay::ReplayDiff;
use super::semantic::{Direction, Example, SemanticDiff, Verdict};
use super::structural::{Change, PolicyChange, StructuralDiff};
use super::Report;

/// Undecided replayed requests listed by name (all are in the JSON report).
const MAX_UNDECIDED_SHOWN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(report).expect("a report serialises") + "\n",
        Format::Text | Format::Markdown => {
            let mut out = Writer {
                out: String::new(),
                markdown: format == Format::Markdown,
            };
            out.report(report);
            out.out
        }
    }
}

struct Writer {
    out: String,
    markdown: bool,
}

impl Writer {
    fn line(&mut self, text: &str) {
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn heading(&mut self, level: usize, title: &str) {
        if self.markdown {
            self.line(&format!("{} {title}\n", "#".repeat(level + 1)));
        } else {
            self.line(&format!("== {title}"));
        }
    }

    fn code(&mut self, lang: &str, text: &str) {
        if self.markdown {
            self.line(&format!("```{lang}"));
        }
        for line in text.lines() {
            let indent = if self.markdown { "" } else { "    " };
            self.line(&format!("{indent}{line}"));
        }
        if self.markdown {
            self.line("```");
        }
    }

    fn bullet(&mut self, text: &str) {
        self.line(&format!("- {text}"));
    }

    fn report(&mut self, report: &Report) {
        self.heading(0, &format!("Policy diff: {} → {}", report.old, report.new));
        self.structural(&report.structural);
        match &report.semantic {
            Some(semantic) => self.semantic(semantic),
            None => {
                self.heading(1, "Semantic");
                self.skipped_semantic(report.unproven_without_solver());
            }
        }
        if let Some(replay) = &report.replay {
            self.replay(replay);
        }
    }

    fn structural(&mut self, diff: &StructuralDiff) {
        self.heading(1, "Structural");
        let notable: Vec<&PolicyChange> = diff.notable().collect();
        if notable.is_empty() {
            self.line("policies: no change\n");
        }
        for policy in notable {
            self.policy(policy);
        }
        self.data(
            "derived data",
            "what these rules count",
            diff.derived.as_deref(),
        );
        self.data(
            "stored entities",
            "what this data allows",
            diff.entities.as_deref(),
        );
        let Some(schema) = &diff.schema else {
            self.line("schema: unchanged\n");
            return;
        };
        self.line(match schema.reformatted {
            true => "schema: reformatted (layout or comments only: same meaning)",
            false => "schema: changed",
        });
        for (label, items) in [
            ("signature added", &schema.signatures_added),
            ("signature removed", &schema.signatures_removed),
            ("entity type added", &schema.entity_types_added),
            ("entity type removed", &schema.entity_types_removed),
        ] {
            for item in items {
                self.bullet(&format!("{label}: {item}"));
            }
        }
        self.code("diff", &schema.text_diff);
        self.line("");
    }

    /// The semantic part was not run; when policies or the schema changed in
    /// meaning, nothing about them was proven.
    fn skipped_semantic(&mut self, unproven: bool) {
        if !unproven {
            self.line("not run (--no-semantic)\n");
            return;
        }
        let unproven = self.strong(
            "UNPROVEN: the policy and schema changes above are counted as possibly \
             widening and narrowing",
        );
        self.line(&format!(
            "not run (--no-semantic), so nothing was proven — {unproven}\n"
        ));
    }

    /// A change of data the solver does not see (derivation rules, stored
    /// entities): shown, and UNPROVEN.
    fn data(&mut self, what: &str, unseen: &str, text_diff: Option<&str>) {
        let Some(text_diff) = text_diff else {
            self.line(&format!("{what}: unchanged\n"));
            return;
        };
        let unproven = self.strong(
            "UNPROVEN: counted as possibly widening and narrowing; replay recorded \
             requests (--replay) to see its effect",
        );
        self.line(&format!(
            "{what}: changed (the solver compares the policies over every entity \
             store, so it does not see {unseen}) — {unproven}"
        ));
        self.code("diff", text_diff);
        self.line("");
    }

    fn policy(&mut self, policy: &PolicyChange) {
        let change = match policy.change {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Annotated => "annotations changed (same meaning)",
            Change::Reformatted => "reformatted (same meaning as text)",
            Change::Unchanged => "unchanged",
        };
        let moved = match (&policy.old_file, &policy.new_file) {
            (Some(old), Some(new)) if old != new => format!(", moved {old} → {new}"),
            (Some(file), _) | (_, Some(file)) => format!(" in {file}"),
            _ => String::new(),
        };
        let id = self.strong(&policy.id);
        self.bullet(&format!("{id} ({}): {change}{moved}", policy.effect));
        if let Some(source) = &policy.source {
            self.line(&format!("  source: {source}"));
        }
        if !policy.text_diff.is_empty() {
            self.code("diff", &policy.text_diff);
        }
        self.line("");
    }

    fn strong(&self, text: &str) -> String {
        if self.markdown {
            format!("**{text}**")
        } else {
            text.to_owned()
        }
    }

    fn semantic(&mut self, diff: &SemanticDiff) {
        self.heading(1, "Semantic (cvc5, per request signature)");
        for signature in &diff.signatures {
            let verdict = match signature.verdict {
                Verdict::Equivalent => "equivalent",
                Verdict::Narrows => "NARROWS (newly denied requests)",
                Verdict::Widens => "WIDENS (newly allowed requests)",
                Verdict::WidensAndNarrows => "WIDENS and NARROWS",
                Verdict::Unknown => "UNKNOWN (no proof either way)",
            };
            let name = self.strong(&signature.signature);
            self.bullet(&format!("{name}: {verdict} [{} ms]", signature.millis));
            if let Some(regrouped) = &signature.regrouped {
                self.line(&format!(
                    "  {regrouped}: OLD's policies were read with OLD's action groups"
                ));
            }
            self.direction(
                "newly allowed (NEW allows, OLD denies)",
                &signature.widening,
            );
            self.direction(
                "newly denied (OLD allows, NEW denies)",
                &signature.narrowing,
            );
        }
        for skipped in &diff.skipped {
            let unproven = match skipped.unproven {
                true => " (UNPROVEN: counted as possibly widening and narrowing)",
                false => "",
            };
            self.bullet(&format!(
                "{}: skipped{unproven}: {}",
                skipped.signature, skipped.reason
            ));
        }
        self.line(&format!(
            "\n{} signatures checked, {} skipped, in {} ms\n",
            diff.signatures.len(),
            diff.skipped.len(),
            diff.millis
        ));
    }

    fn direction(&mut self, title: &str, direction: &Direction) {
        match direction {
            Direction::None => {}
            Direction::Unknown { reason } => self.line(&format!("  {title}: unknown: {reason}")),
            Direction::Found { example } => {
                self.line(&format!("  {title}, for example:"));
                self.example(example);
            }
        }
    }

    fn example(&mut self, example: &Example) {
        let mut text = String::new();
        if !example.confirmed {
            let why = example
                .note
                .as_deref()
                .unwrap_or("the real authorizer does not reproduce this difference");
            let _ = writeln!(text, "!!! UNCONFIRMED: {why}");
        }
        let _ = writeln!(
            text,
            "request: {} {} {}",
            example.principal, example.action, example.resource
        );
        let _ = writeln!(text, "context: {}", compact(&example.context));
        let mut related = false;
        for entity in &example.entities {
            let uid = uid_text(&entity["uid"]);
            let label = if uid == example.principal {
                "principal: "
            } else if uid == example.resource {
                "resource:  "
            } else {
                if !related {
                    let _ = writeln!(text, "related entities:");
                    related = true;
                }
                "  "
            };
            let _ = writeln!(text, "{label}{}", entity_line(entity));
        }
        let reasons = |r: &[String]| {
            if r.is_empty() {
                "no policy applies".to_owned()
            } else {
                r.join(", ")
            }
        };
        let _ = writeln!(
            text,
            "OLD: {} ({})\nNEW: {} ({})",
            example.old_decision,
            reasons(&example.old_reasons),
            example.new_decision,
            reasons(&example.new_reasons)
        );
        self.code("", &text);
    }

    fn replay(&mut self, diff: &ReplayDiff) {
        self.heading(1, "Replay");
        self.line(&format!(
            "{} requests replayed, {} flipped ({} newly allowed, {} newly denied), {} undecided on both sides",
            diff.replayed,
            diff.flips.len(),
            diff.newly_allowed(),
            diff.newly_denied(),
            diff.undecided.len()
        ));
        for undecided in diff.undecided.iter().take(MAX_UNDECIDED_SHOWN) {
            self.bullet(&format!(
                "{}: undecided on both sides: {}",
                undecided.origin, undecided.error
            ));
        }
        if diff.undecided.len() > MAX_UNDECIDED_SHOWN {
            self.bullet(&format!(
                "… and {} more undecided",
                diff.undecided.len() - MAX_UNDECIDED_SHOWN
            ));
        }
        for flip in &diff.flips {
            self.bullet(&format!(
                "{}: {} {} {}: {} → {} (OLD: {}, NEW: {})",
                flip.origin,
                flip.principal,
                flip.action,
                flip.resource,
                flip.old,
                flip.new,
                decided_by(&flip.old_reasons, &flip.old_errors),
                decided_by(&flip.new_reasons, &flip.new_errors)
            ));
        }
        self.line("");
    }
}

/// `[policies]`, and the evaluation errors that made a Deny the fail-closed
/// rule's, if any.
fn decided_by(reasons: &[String], errors: &[String]) -> String {
    let reasons = format!("[{}]", reasons.join(", "));
    match errors {
        [] => reasons,
        _ => format!("{reasons}, errors (fail-closed): {}", errors.join("; ")),
    }
}

/// `Type::"id" in [parents] { attr: value, … } tags { … }`.
fn entity_line(entity: &Value) -> String {
    let uid = uid_text(&entity["uid"]);
    let parents: Vec<String> = entity["parents"]
        .as_array()
        .map(|ps| ps.iter().map(uid_text).collect())
        .unwrap_or_default();
    let mut line = uid;
    if !parents.is_empty() {
        let _ = write!(line, " in [{}]", parents.join(", "));
    }
    let _ = write!(line, " {}", compact(&entity["attrs"]));
    if entity["tags"].as_object().is_some_and(|t| !t.is_empty()) {
        let _ = write!(line, " tags {}", compact(&entity["tags"]));
    }
    line
}

fn uid_text(uid: &Value) -> String {
    let uid = uid.get("__entity").unwrap_or(uid);
    match (uid["type"].as_str(), uid["id"].as_str()) {
        (Some(ty), Some(id)) => format!("{ty}::{}", Value::String(id.to_owned())),
        _ => uid.to_string(),
    }
}

/// Cedar-like compact text of an attribute value: entity references as
/// `Type::"id"`, extension values as `datetime("…")`.
fn compact(value: &Value) -> String {
    match value {
        Value::Object(map) if map.contains_key("__entity") => uid_text(value),
        Value::Object(map) if map.contains_key("__extn") => extension(&map["__extn"]),
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", compact(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(compact).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `datetime("…")`, `duration("…")`, …; the solver's `offset(datetime, duration)`
/// form is computed into one datetime when it fits.
fn extension(extn: &Value) -> String {
    let name = extn["fn"].as_str().unwrap_or("?");
    if let Some(arg) = extn.get("arg") {
        return format!("{name}({})", compact(arg));
    }
    let args: Vec<&Value> = extn["args"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if let (&"offset", [base, delta]) = (&name, args.as_slice()) {
        if let Some(instant) = offset(base, delta) {
            return format!("datetime(\"{instant}\")");
        }
    }
    let args: Vec<String> = args.into_iter().map(compact).collect();
    format!("{name}({})", args.join(", "))
}

/// `datetime(date) + duration(Nms)` as an RFC 3339 instant, when representable.
fn offset(base: &Value, delta: &Value) -> Option<String> {
    let date = base.pointer("/__extn/arg")?.as_str()?;
    let millis: i64 = delta
        .pointer("/__extn/arg")?
        .as_str()?
        .strip_suffix("ms")?
        .parse()
        .ok()?;
    let start = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)?
        .and_utc();
    let instant = start.checked_add_signed(chrono::TimeDelta::try_milliseconds(millis)?)?;
    Some(instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entity_renders_on_one_line_with_references_and_computed_datetimes() {
        let entity = json!({
            "uid": {"type": "User", "id": "u"},
            "attrs": {
                "partner": {"__entity": {"type": "Partner", "id": "p"}},
                "since": {"__extn": {"fn": "offset", "args": [
                    {"__extn": {"fn": "datetime", "arg": "1970-01-01"}},
                    {"__extn": {"fn": "duration", "arg": "-2ms"}}
                ]}},
                "suspended": true
            },
            "parents": [{"type": "Group", "id": "g"}],
            "tags": {}
        });
        assert_eq!(
            entity_line(&entity),
            "User::\"u\" in [Group::\"g\"] { partner: Partner::\"p\", since: datetime(\"1969-12-31T23:59:59.998Z\"), suspended: true }"
        );
    }

    #[test]
    fn an_offset_out_of_range_stays_symbolic() {
        let value = json!({"__extn": {"fn": "offset", "args": [
            {"__extn": {"fn": "datetime", "arg": "1970-01-01"}},
            {"__extn": {"fn": "duration", "arg": "-9223372036854775808ms"}}
        ]}});
        assert!(
            compact(&value).starts_with("offset(datetime("),
            "{}",
            compact(&value)
        );
    }
}

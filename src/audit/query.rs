//! Filters over the decision log, shared by `cdap-authz audit query` and
//! `GET /v1/traces`. A query reads the files that can hold a match (none of a day
//! before `since`'s), newest first and
//! each from its end, until it has its newest `limit` records. A line is parsed
//! only if it holds the texts the filter's principal, resource and partners must
//! appear as ([`Needles`]): a query that matches few records reads the log at the
//! speed of a substring search, not of a JSON parser.

use std::ops::ControlFlow;
use std::path::Path;

use cedar_policy::{EntityId, EntityUid};
use chrono::{DateTime, Utc};
use memchr::memmem::Finder;

use super::record::{json_string, parse_record, Record};
use super::rotate::segments;
use super::AuditError;

/// Which records to return. Empty or `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Partner ids; a record matches if its partner is one of them.
    pub partners: Vec<String>,
    /// An entity reference (`User::"mau-t1"`) or a bare id (`mau-t1`).
    pub principal: Option<String>,
    pub resource: Option<String>,
    /// `Allow` or `Deny` (any case).
    pub decision: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// The newest records that match, at most `limit`, in log order.
#[derive(Debug, Clone)]
pub struct Found {
    pub records: Vec<Record>,
    /// Older matching records were left out.
    pub truncated: bool,
    /// Lines read that hold what the filter asks for but are not records (altered,
    /// or not written by the sidecar): records the answer may lack. `audit verify`
    /// says where.
    pub unreadable: usize,
}

impl Filter {
    /// Refuses a time range that holds no instant (`since` not before `until`),
    /// which would match nothing unseen.
    pub fn check_range(&self) -> Result<(), String> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since >= until => Err(format!(
                "since ({}) is not before until ({}): the range is empty",
                since.to_rfc3339(),
                until.to_rfc3339()
            )),
            _ => Ok(()),
        }
    }

    pub fn matches(&self, record: &Record) -> bool {
        let partner_ok = self.partners.is_empty()
            || record
                .partner
                .as_ref()
                .is_some_and(|p| self.partners.contains(p));
        let time = DateTime::parse_from_rfc3339(&record.time).map(|t| t.with_timezone(&Utc));
        let in_time = |bound: Option<DateTime<Utc>>, before: bool| {
            bound.is_none_or(|b| time.is_ok_and(|t| if before { t < b } else { t >= b }))
        };
        partner_ok
            && same_entity(self.principal.as_deref(), &record.principal)
            && same_entity(self.resource.as_deref(), &record.resource)
            && self
                .decision
                .as_ref()
                .is_none_or(|d| d.eq_ignore_ascii_case(&record.decision))
            && in_time(self.since, false)
            && in_time(self.until, true)
    }
}

/// An entity filter, as records write entities: a reference (`User::"mau-t1"`),
/// written back as Cedar displays it, or a bare id (`mau-t1`), escaped as Cedar
/// escapes it inside a reference's quotes (`a"b` as `a\"b`). A malformed reference,
/// or an empty value or one with spaces around it, which would match nothing
/// unseen, is refused (an id with spaces around it is asked for as a reference).
pub fn entity_filter(value: &str) -> Result<String, String> {
    if let Some(uid) = reference_or_id(value, "User")? {
        return Ok(uid.to_string());
    }
    let any_type = "T".parse().expect("a valid type name");
    let displayed = EntityUid::from_type_name_and_id(any_type, EntityId::new(value)).to_string();
    Ok(displayed["T::\"".len()..displayed.len() - 1].to_owned())
}

/// A partner filter: a partner's id (`ville-maubeuge`), as records hold it, or a
/// reference to it (`Partner::"ville-maubeuge"`), whose id is taken (records keep
/// the partner's id alone, so its type is not checked). Refused as
/// [`entity_filter`] refuses.
pub fn partner_filter(value: &str) -> Result<String, String> {
    Ok(match partner_reference(value)? {
        Some(uid) => uid.id().unescaped().to_owned(),
        None => value.to_owned(),
    })
}

/// A partner filter as given: the reference it is (`Some`), whose type a reader that
/// knows the partners checks, or `None` for a bare id. Refused as [`entity_filter`]
/// refuses.
pub fn partner_reference(value: &str) -> Result<Option<EntityUid>, String> {
    reference_or_id(value, "Partner")
}

/// The reference `value` is (`Some`), or `None` when it is a bare id; an empty value
/// or one with spaces around it is refused (`example_type` names a type in the
/// messages).
fn reference_or_id(value: &str, example_type: &str) -> Result<Option<EntityUid>, String> {
    if value.trim().is_empty() {
        return Err("empty: it would match nothing".into());
    }
    if value.trim() != value {
        return Err(format!(
            "`{value}` has spaces around it (write an id with spaces around it as a \
             reference, {example_type}::\" id\")"
        ));
    }
    if !value.contains("::") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| {
        format!("`{value}` is neither an id nor a reference like {example_type}::\"id\": {e}")
    })
}

/// A decision filter: `Allow` or `Deny`, in any case.
pub fn decision_filter(value: &str) -> Result<String, String> {
    ["allow", "deny"]
        .contains(&value.to_ascii_lowercase().as_str())
        .then(|| value.to_owned())
        .ok_or_else(|| format!("expected Allow or Deny, got `{value}`"))
}

fn same_entity(wanted: Option<&str>, recorded: &str) -> bool {
    wanted.is_none_or(|w| recorded == w || recorded.ends_with(&format!("::\"{w}\"")))
}

/// Runs `filter` over the log in `dir`: reads the files that can hold a match,
/// newest first, each from its end, and stops at the `limit`-th match from the end
/// (a query for the latest records reads the end of the newest file, not six
/// months of log). A file holds no record of a day after its own, so those of a day
/// before `since`'s are passed over; but one may hold records of days before its
/// own (written while the clock stood behind, [`super::rotate::Segment::next`]), so
/// `until` passes over none.
pub fn query(dir: &Path, filter: &Filter, limit: usize) -> Result<Found, AuditError> {
    let needles = Needles::new(filter);
    let mut newest_first = Vec::new();
    let mut truncated = false;
    let mut unreadable = 0;
    let segments = segments(dir)?;
    if segments.is_empty() {
        return Err(AuditError::NoLog(dir.to_owned()));
    }
    for segment in segments.into_iter().rev() {
        if filter.since.is_some_and(|s| segment.day < s.date_naive()) {
            continue;
        }
        let flow = segment.lines_from_end(|line| {
            let line = String::from_utf8_lossy(line);
            if !needles.all_in(&line) {
                return ControlFlow::Continue(());
            }
            match parse_record(&line) {
                Ok(record) if filter.matches(&record) => {
                    if newest_first.len() == limit {
                        truncated = true;
                        return ControlFlow::Break(());
                    }
                    newest_first.push(record);
                    ControlFlow::Continue(())
                }
                Ok(_) => ControlFlow::Continue(()),
                Err(_) => {
                    unreadable += 1;
                    ControlFlow::Continue(())
                }
            }
        })?;
        if flow.is_break() {
            break;
        }
    }
    newest_first.reverse();
    Ok(Found {
        records: newest_first,
        truncated,
        unreadable,
    })
}

/// Texts that the line of every record a filter matches contains: for the principal
/// and the resource, the text asked for; for the partners, one of their ids as a
/// whole JSON string. Each is searched for as the writer escapes it
/// ([`json_string`]: serde_json's escaping, character by character), so a text
/// inside a field's value is inside that value's JSON. A line without them cannot
/// match, and is skipped unparsed.
struct Needles {
    /// Each group: the line holds at least one of them.
    all_of: Vec<Vec<Finder<'static>>>,
}

impl Needles {
    fn new(filter: &Filter) -> Self {
        let entities = [&filter.principal, &filter.resource];
        let mut all_of: Vec<Vec<Finder<'static>>> = entities
            .into_iter()
            .flatten()
            .map(|text| vec![finder(json_inner(text))])
            .collect();
        if !filter.partners.is_empty() {
            all_of.push(
                filter
                    .partners
                    .iter()
                    .map(|p| finder(json_string(p)))
                    .collect(),
            );
        }
        Self { all_of }
    }

    fn all_in(&self, line: &str) -> bool {
        self.all_of.iter().all(|any_of| {
            any_of
                .iter()
                .any(|needle| needle.find(line.as_bytes()).is_some())
        })
    }
}

fn finder(text: String) -> Finder<'static> {
    Finder::new(text.as_bytes()).into_owned()
}

/// `text` escaped as inside a JSON string, without the quotes.
fn json_inner(text: &str) -> String {
    let quoted = json_string(text);
    quoted[1..quoted.len() - 1].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::GENESIS;
    use serde_json::Map;

    fn record(principal: &str, partner: Option<&str>, decision: &str, time: &str) -> Record {
        Record {
            seq: 0,
            prev: GENESIS.into(),
            time: time.into(),
            decision_id: "id".into(),
            principal: format!("User::\"{principal}\""),
            action: "Action::\"consult_file\"".into(),
            resource: "File::\"dossier-59-0001\"".into(),
            partner: partner.map(Into::into),
            caf: None,
            context: Map::new(),
            decision: decision.into(),
            reason: vec![],
            errors: vec![],
            policy_version: "v".into(),
            latency_us: 1,
        }
    }

    fn at(text: &str) -> Option<DateTime<Utc>> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn filters_match_partner_principal_decision_and_half_open_time_range() {
        let r = record(
            "mau-t1",
            Some("ville-maubeuge"),
            "Deny",
            "2026-11-23T10:00:00.000000Z",
        );
        let cases = [
            (Filter::default(), true),
            (
                Filter {
                    partners: vec!["ville-maubeuge".into()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    partners: vec!["mairie-bouscat".into()],
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    principal: Some("mau-t1".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    principal: Some("User::\"mau-t1\"".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    principal: Some("t1".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    resource: Some("dossier-59-0001".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    decision: Some("deny".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    decision: Some("Allow".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    since: at("2026-11-23T10:00:00Z"),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    until: at("2026-11-23T10:00:00Z"),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    since: at("2026-11-23T10:00:01Z"),
                    ..Filter::default()
                },
                false,
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&r), expected, "{filter:?}");
        }
        let no_partner = record("caf-nord-traces", None, "Allow", "2026-11-23T10:00:00Z");
        let by_partner = Filter {
            partners: vec!["ville-maubeuge".into()],
            ..Filter::default()
        };
        assert!(!by_partner.matches(&no_partner));
    }

    proptest::proptest! {
        /// The needles never skip a line whose record the filter matches, whatever
        /// the ids hold (quotes, backslashes, control characters, non-ASCII).
        #[test]
        fn needles_keep_every_line_a_filter_matches(
            principal in "[a\"\\\\é\n-]{0,4}",
            resource in "[a\"\\\\é\n-]{0,4}",
            partner in proptest::option::of("[a\"\\\\é\n-]{0,4}"),
            by_reference in proptest::bool::ANY,
            asked in proptest::collection::vec("[a\"\\\\é\n-]{0,3}", 0..3),
        ) {
            let mut r = record(&principal, partner.as_deref(), "Allow", "2026-11-23T10:00:00Z");
            r.principal = format!("User::\"{}\"", principal.escape_debug());
            r.resource = format!("File::\"{}\"", resource.escape_debug());
            let line = serde_json::to_string(&r).unwrap();
            // As `audit query` and `/v1/traces` take them; an empty id, or one with
            // spaces around it, is refused unless asked for as a reference.
            let entity = |id: &str, kind: &str| entity_filter(&if by_reference {
                format!("{kind}::\"{}\"", id.escape_debug())
            } else {
                id.to_owned()
            }).ok();
            let own = [
                entity(&principal, "User").map(|p| Filter { principal: Some(p), ..Filter::default() }),
                entity(&resource, "File").map(|r| Filter { resource: Some(r), ..Filter::default() }),
            ];
            for filter in own.iter().flatten() {
                proptest::prop_assert!(filter.matches(&r), "{filter:?} on {line}");
            }
            let others = [
                Filter { partners: asked.clone(), ..Filter::default() },
                Filter {
                    partners: asked.iter().cloned().chain(partner.clone()).collect(),
                    principal: asked.first().and_then(|a| entity(a, "User")),
                    ..Filter::default()
                },
            ];
            for filter in own.into_iter().flatten().chain(others) {
                if filter.matches(&r) {
                    proptest::prop_assert!(Needles::new(&filter).all_in(&line), "{filter:?} on {line}");
                }
            }
        }
    }

    #[test]
    fn entity_and_partner_filters_take_what_records_hold_and_refuse_what_matches_nothing() {
        assert_eq!(entity_filter("mau-t1").unwrap(), "mau-t1");
        assert_eq!(entity_filter("a\"b\tc").unwrap(), "a\\\"b\\tc");
        assert_eq!(
            entity_filter("User::\"a\\\"b\"").unwrap(),
            "User::\"a\\\"b\""
        );
        assert_eq!(
            partner_filter("Partner::\"ville-maubeuge\"").unwrap(),
            "ville-maubeuge"
        );
        assert_eq!(partner_filter("ville-maubeuge").unwrap(), "ville-maubeuge");
        for blank in ["", " ", " mau-t1", "mau-t1 "] {
            assert!(entity_filter(blank).is_err(), "{blank:?}");
            assert!(partner_filter(blank).is_err(), "{blank:?}");
        }
        assert_eq!(entity_filter("User::\" x\"").unwrap(), "User::\" x\"");
        assert!(entity_filter("Usr::\"mau-t1").is_err());
    }

    #[test]
    fn a_time_range_that_holds_no_instant_is_refused() {
        let range = |since: &str, until: &str| Filter {
            since: at(since),
            until: at(until),
            ..Filter::default()
        };
        assert!(range("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")
            .check_range()
            .is_ok());
        assert!(range("2026-12-02T00:00:00Z", "2026-12-02T00:00:00Z")
            .check_range()
            .is_err());
        assert!(range("2026-12-04T00:00:00Z", "2026-12-01T00:00:00Z")
            .check_range()
            .is_err());
    }

    #[test]
    fn lines_that_may_match_but_are_not_records_are_counted_and_a_dir_without_a_log_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            query(dir.path(), &Filter::default(), 10),
            Err(AuditError::NoLog(_))
        ));
        let lines = [
            record("mau-t1", None, "Allow", "2026-11-23T10:00:00Z"),
            record("mau-t2", None, "Allow", "2026-11-23T10:00:01Z"),
        ]
        .map(|r| {
            // A record's line: its JSON, then its hash (not checked by a query).
            let json = serde_json::to_string(&r).unwrap();
            format!("{},\"hash\":\"{GENESIS}\"}}", &json[..json.len() - 1])
        });
        // The first altered (a key repeated): no longer a record.
        let altered = lines[0].replacen("\"decision\":", "\"decision\":\"Deny\",\"decision\":", 1);
        let file = dir.path().join("decisions-2026-11-23.000.jsonl");
        std::fs::write(&file, format!("{altered}\n{}\n", lines[1])).unwrap();
        let by = |principal: &str| Filter {
            principal: Some(principal.into()),
            ..Filter::default()
        };
        let found = query(dir.path(), &by("mau-t1"), 10).unwrap();
        assert_eq!((found.records.len(), found.unreadable), (0, 1));
        // A line without the principal asked for is not read, so not counted.
        let found = query(dir.path(), &by("mau-t2"), 10).unwrap();
        assert_eq!((found.records.len(), found.unreadable), (1, 0));
    }

    #[test]
    fn needles_skip_lines_without_the_principal_or_partner_asked_for() {
        let r = record(
            "mau-t1",
            Some("ville-maubeuge"),
            "Allow",
            "2026-11-23T10:00:00Z",
        );
        let line = serde_json::to_string(&r).unwrap();
        let by = |principal: &str, partner: &str| Filter {
            principal: Some(principal.into()),
            partners: vec![partner.into()],
            ..Filter::default()
        };
        assert!(Needles::new(&by("mau-t1", "ville-maubeuge")).all_in(&line));
        assert!(!Needles::new(&by("mau-t2", "ville-maubeuge")).all_in(&line));
        // A partner id only inside another field is not the partner's.
        assert!(!Needles::new(&by("mau-t1", "maubeuge")).all_in(&line));
    }
}

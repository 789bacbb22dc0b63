//! Filters over the decision log, shared by `cdap-authz audit query` and
//! `GET /v1/traces`. A query reads the files whose day can match, newest first,
//! until it has its newest `limit` records.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::record::{parse_line, whole_lines, Record};
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
}

impl Filter {
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

/// An entity filter: a reference (`User::"mau-t1"`, the form records hold) or a bare
/// id (`mau-t1`). A malformed reference, which would match nothing unseen, is refused.
pub fn entity_filter(value: &str) -> Result<String, String> {
    if value.contains("::") {
        value.parse::<cedar_policy::EntityUid>().map_err(|e| {
            format!("`{value}` is neither an id nor a reference like User::\"id\": {e}")
        })?;
    }
    Ok(value.to_owned())
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

/// Runs `filter` over the log in `dir`: reads the files whose day can match,
/// newest first, one at a time, and stops at the `limit`-th match from the end (a
/// query for the latest records does not read six months of log).
pub fn query(dir: &Path, filter: &Filter, limit: usize) -> Result<Found, AuditError> {
    let mut newest_first = Vec::new();
    let mut truncated = false;
    'files: for segment in segments(dir)?.into_iter().rev() {
        let too_old = filter.since.is_some_and(|s| segment.day < s.date_naive());
        let too_new = filter.until.is_some_and(|u| segment.day > u.date_naive());
        if too_old || too_new {
            continue;
        }
        let text = segment.read_text()?;
        let matching = whole_lines(&text)
            .rev()
            .filter_map(|line| parse_line(line).ok())
            .map(|parsed| parsed.record)
            .filter(|record| filter.matches(record));
        for record in matching {
            if newest_first.len() == limit {
                truncated = true;
                break 'files;
            }
            newest_first.push(record);
        }
    }
    newest_first.reverse();
    Ok(Found {
        records: newest_first,
        truncated,
    })
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
}

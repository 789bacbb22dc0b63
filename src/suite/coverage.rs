//! What a run covers: the policies that determined at least one decision, and for
//! each DOMAIN.md rule the policies encode, whether a case tagged with it was
//! allowed and one was denied.
//!
//! A policy encodes a rule when its `@id` starts with the rule id (`P3-T2-…` → `P3`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::run::CaseResult;
use crate::api::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Every policy id, with the number of decisions it determined.
    pub policies: Vec<(String, usize)>,
    pub rules: Vec<RuleCoverage>,
    /// Rule tags of cases that no policy encodes (typos, or rules no policy can decide).
    pub unknown_rule_tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleCoverage {
    pub rule: String,
    pub allow_cases: usize,
    pub deny_cases: usize,
}

/// The DOMAIN.md rule id a policy id starts with: letters then digits, before a `-`.
pub fn rule_of(policy_id: &str) -> Option<&str> {
    let prefix = policy_id.split('-').next()?;
    let digits = prefix.trim_start_matches(|c: char| c.is_ascii_uppercase());
    let well_formed = digits.len() < prefix.len()
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit());
    well_formed.then_some(prefix)
}

impl Coverage {
    pub fn compute<'a>(
        policy_ids: impl IntoIterator<Item = &'a str>,
        results: &[CaseResult],
    ) -> Self {
        let mut policies: Vec<(String, usize)> = policy_ids
            .into_iter()
            .map(|id| (id.to_owned(), 0))
            .collect();
        let mut rules: BTreeMap<String, RuleCoverage> = BTreeMap::new();
        for (id, _) in &policies {
            if let Some(rule) = rule_of(id) {
                rules
                    .entry(rule.to_owned())
                    .or_insert_with(|| RuleCoverage {
                        rule: rule.to_owned(),
                        allow_cases: 0,
                        deny_cases: 0,
                    });
            }
        }
        let mut unknown_rule_tags = Vec::new();
        for result in results {
            let Some(decision) = &result.actual else {
                continue;
            };
            for (id, count) in &mut policies {
                if decision.diagnostics.reason.contains(id) {
                    *count += 1;
                }
            }
            for tag in &result.rules {
                match rules.get_mut(tag) {
                    Some(rule) if decision.outcome == Outcome::Allow => rule.allow_cases += 1,
                    Some(rule) => rule.deny_cases += 1,
                    None if !unknown_rule_tags.contains(tag) => unknown_rule_tags.push(tag.clone()),
                    None => {}
                }
            }
        }
        Self {
            policies,
            rules: rules.into_values().collect(),
            unknown_rule_tags,
        }
    }

    /// Policies that determined no decision.
    pub fn uncovered_policies(&self) -> impl Iterator<Item = &str> {
        self.policies
            .iter()
            .filter(|(_, count)| *count == 0)
            .map(|(id, _)| id.as_str())
    }

    /// Share of policies that determined at least one decision, in percent.
    pub fn policy_percent(&self) -> f64 {
        let covered = self.policies.len() - self.uncovered_policies().count();
        percent(covered, self.policies.len())
    }

    /// Share of (rule, allow) and (rule, deny) pairs with a tagged case, in percent.
    pub fn rule_percent(&self) -> f64 {
        let covered: usize = self
            .rules
            .iter()
            .map(|r| usize::from(r.allow_cases > 0) + usize::from(r.deny_cases > 0))
            .sum();
        percent(covered, 2 * self.rules.len())
    }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        100.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::rule_of;

    #[test]
    fn rule_ids_are_read_from_policy_ids() {
        assert_eq!(rule_of("P3-T2-prestataire-service-social"), Some("P3"));
        assert_eq!(rule_of("S1-user-suspended"), Some("S1"));
        assert_eq!(
            rule_of("T3-partner-managers-read-partner-traces"),
            Some("T3")
        );
        assert_eq!(rule_of("policy0"), None);
        assert_eq!(rule_of("PX-thing"), None);
        assert_eq!(rule_of("12-thing"), None);
    }
}

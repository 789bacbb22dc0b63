//! `cdap-authz validate`: parse and strictly validate a model, reporting every
//! problem at once. Exit 0 when valid, 3 when not, 1 on other failures. Three
//! things Cedar accepts are warned about: stored entities naming entities that are
//! not stored (the decisions that read them are denied), policies naming entities
//! that are not stored (a misspelt id?), and policies without an `@id` or a
//! `@source`. `--deny-warnings` makes a warning fail as a problem does.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::ExitCode;

use cedar_policy::PolicyId;
use clap::Args;

use super::{ModelArgs, EXIT_INVALID};
use crate::load::PolicyInfo;
use crate::slice::policy_literals;
use crate::snapshot::Snapshot;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Exit 3 on a warning too (for a CI gate).
    #[arg(long)]
    pub deny_warnings: bool,
}

/// Dangling references listed before "and N more".
const LISTED: usize = 20;

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let snapshot = args.model.load()?;
    let dangling = dangling_references(&snapshot);
    for (uid, holders) in dangling.iter().take(LISTED) {
        errln!(
            "warning: stored entities name {uid} ({}), which is not a stored entity (a \
             misspelt id?): a decision that reads its attributes is denied",
            named_by(holders)
        );
    }
    if dangling.len() > LISTED {
        errln!("warning: and {} more", dangling.len() - LISTED);
    }
    let mut policy_warnings = unannotated_policies(&snapshot.policy_info);
    policy_warnings.extend(policies_naming_unstored_entities(&snapshot));
    for warning in &policy_warnings {
        errln!("warning: {warning}");
    }
    let warned = !dangling.is_empty() || !policy_warnings.is_empty();
    if warned && args.deny_warnings {
        errln!("invalid: warnings denied (--deny-warnings)");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    outln!(
        "valid: {} policies, {} stored entities, version {}",
        snapshot.policy_info.len(),
        snapshot.entities.iter().count(),
        snapshot.version
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `file:line:column: …` for each policy written without an `@id` or a `@source`
/// (or with a source that says nothing: `@source("")`; an empty `@id` does not
/// load). Without `@id`, a policy goes by its place in its file (`a.cedar#policy1`)
/// in the decision log, in explanations and in diffs: a name that changes when a
/// policy is written above it. Without `@source`, nothing ties it to the clause it
/// encodes.
fn unannotated_policies(policies: &[PolicyInfo]) -> Vec<String> {
    policies
        .iter()
        .filter_map(|policy| {
            let source = match policy.source.as_deref() {
                None => Some("without @source"),
                Some(source) if source.trim().is_empty() => Some("with an empty @source"),
                Some(_) => None,
            };
            let lacks: Vec<&str> = [(!policy.named).then_some("without @id"), source]
                .into_iter()
                .flatten()
                .collect();
            if lacks.is_empty() {
                return None;
            }
            let (line, column) = policy.at;
            Some(format!(
                "{}:{line}:{column}: a policy {}: every policy names itself (@id, which the \
                 decision log records) and the clause it encodes (@source)",
                policy.file,
                lacks.join(" and ")
            ))
        })
        .collect()
}

/// `file:line:column: …` for each entity a policy names (`Partner::"ville-maubeug"`)
/// that is not stored though entities of its type are: a misspelt id, most likely,
/// and a scope or condition that only an entity a request brings can meet. Types
/// no stored entity has (files, or users under `serve --request-principals`, which
/// requests bring; enumerated entities) are left out.
fn policies_naming_unstored_entities(snapshot: &Snapshot) -> Vec<String> {
    let stored_types: HashSet<String> = snapshot
        .entities
        .iter()
        .map(|entity| entity.uid().type_name().to_string())
        .collect();
    let mut warnings = Vec::new();
    for info in &snapshot.policy_info {
        let Some(json) = snapshot
            .policies
            .policy(&PolicyId::new(&info.id))
            .and_then(|policy| policy.to_json().ok())
        else {
            continue;
        };
        let mut unstored: Vec<String> = policy_literals(&json)
            .into_iter()
            .filter(|uid| {
                snapshot.entities.get(uid).is_none()
                    && stored_types.contains(&uid.type_name().to_string())
            })
            .map(|uid| uid.to_string())
            .collect();
        unstored.sort();
        let (line, column) = info.at;
        warnings.extend(unstored.into_iter().map(|uid| {
            format!(
                "{}:{line}:{column}: policy `{}` names {uid}, which is not a stored entity \
                 (a misspelt id?): only an entity a request brings can meet it",
                info.file, info.id
            )
        }));
    }
    warnings
}

/// The entities that stored entities name (as parents, in attributes or tags) but
/// the store lacks, sorted, each with the stored entities naming it: Cedar allows
/// them, but a decision reading one's attributes errs, so is denied. Enumerated
/// entities, which the schema lists and no store holds, are left out, as are
/// actions.
fn dangling_references(snapshot: &Snapshot) -> BTreeMap<String, BTreeSet<String>> {
    snapshot
        .unstored_references
        .iter()
        .filter(|(named, _)| {
            !snapshot
                .entity_shapes
                .is_enumerated(&named.type_name().to_string())
        })
        .map(|(named, holders)| {
            let holders = holders.iter().map(ToString::to_string).collect();
            (named.to_string(), holders)
        })
        .collect()
}

/// `by User::"a"`, `by User::"a", User::"b" and 3 more`.
fn named_by(holders: &BTreeSet<String>) -> String {
    const SHOWN: usize = 3;
    let shown: Vec<&str> = holders.iter().take(SHOWN).map(String::as_str).collect();
    match holders.len().saturating_sub(SHOWN) {
        0 => format!("by {}", shown.join(", ")),
        more => format!("by {} and {more} more", shown.join(", ")),
    }
}

//! `cdap-authz validate`: parse and strictly validate a model, reporting every
//! problem at once. Exit 0 when valid, 3 when not, 1 on other failures. Two things
//! Cedar accepts are warned about: stored entities naming entities that are not
//! stored (the decisions that read them are denied), and policies without an `@id`
//! or a `@source`. `--deny-warnings` makes a warning fail as a problem does.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use cedar_policy_core::ast::AnyId;
use clap::Args;

use super::{ModelArgs, EXIT_INVALID};
use crate::load;
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
    for uid in dangling.iter().take(LISTED) {
        errln!(
            "warning: stored entities name {uid}, which is not a stored entity (a misspelt \
             id?): a decision that reads its attributes is denied"
        );
    }
    if dangling.len() > LISTED {
        errln!("warning: and {} more", dangling.len() - LISTED);
    }
    let unannotated = unannotated_policies(&args.model.sources().policies)?;
    for warning in &unannotated {
        errln!("warning: {warning}");
    }
    let warned = !dangling.is_empty() || !unannotated.is_empty();
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
/// (or with one that says nothing: `@source("")`).
/// Without `@id`, a policy goes by its place in its file (`a.cedar#policy1`) in the
/// decision log, in explanations and in diffs: a name that changes when a policy is
/// written above it. Without `@source`, nothing ties it to the clause it encodes.
/// The files have loaded, so each parses.
fn unannotated_policies(dir: &Path) -> anyhow::Result<Vec<String>> {
    let (id, source): (AnyId, AnyId) = ("id".parse()?, "source".parse()?);
    let mut warnings = Vec::new();
    for path in load::policy_files(dir)? {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let parsed = cedar_policy_core::parser::parse_policyset(&text)
            .map_err(|errors| anyhow::anyhow!("{}: {errors}", path.display()))?;
        for policy in parsed.policies() {
            let missing: Vec<_> = [&id, &source]
                .into_iter()
                .filter(|key| {
                    policy
                        .annotation(key)
                        .is_none_or(|a| a.val.trim().is_empty())
                })
                .map(|key| format!("@{key}"))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let (line, column) =
                load::line_and_column(&text, policy.loc().map_or(0, |l| l.start()));
            warnings.push(format!(
                "{}:{line}:{column}: a policy without {}: every policy names itself \
                 (@id, which the decision log records) and the clause it encodes (@source)",
                path.display(),
                missing.join(" or ")
            ));
        }
    }
    Ok(warnings)
}

/// The entities that stored entities name (as parents, in attributes or tags) but
/// the store lacks, sorted: Cedar allows them, but a decision reading one's
/// attributes errs, so is denied. Enumerated entities, which the schema lists and
/// no store holds, are left out, as are actions.
fn dangling_references(snapshot: &Snapshot) -> Vec<String> {
    let mut dangling: Vec<String> = snapshot
        .unstored_references
        .iter()
        .filter(|uid| {
            !snapshot
                .entity_shapes
                .is_enumerated(&uid.type_name().to_string())
        })
        .map(ToString::to_string)
        .collect();
    dangling.sort();
    dangling
}

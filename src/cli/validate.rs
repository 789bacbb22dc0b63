//! `cdap-authz validate`: parse and strictly validate a model, reporting every
//! problem at once. Exit 0 when valid, 3 when not, 1 on other failures. Stored
//! entities naming entities that are not stored are warned about (Cedar allows
//! them; the decisions that read them are denied).

use std::process::ExitCode;

use clap::Args;

use super::ModelArgs;
use crate::snapshot::Snapshot;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Dangling references listed before "and N more".
const LISTED: usize = 20;

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let snapshot = args.model.load()?;
    let dangling = dangling_references(&snapshot);
    for uid in dangling.iter().take(LISTED) {
        eprintln!(
            "warning: stored entities name {uid}, which is not a stored entity (a misspelt \
             id?): a decision that reads its attributes is denied"
        );
    }
    if dangling.len() > LISTED {
        eprintln!("warning: and {} more", dangling.len() - LISTED);
    }
    outln!(
        "valid: {} policies, {} stored entities, version {}",
        snapshot.policy_info.len(),
        snapshot.entities.iter().count(),
        snapshot.version
    )?;
    Ok(ExitCode::SUCCESS)
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

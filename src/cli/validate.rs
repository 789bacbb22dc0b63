//! `cdap-authz validate`: parse and strictly validate a model, reporting every
//! problem at once. Exit 0 when valid, 3 when not, 1 on other failures.

use std::process::ExitCode;

use clap::Args;

use super::ModelArgs;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let snapshot = args.model.load()?;
    println!(
        "valid: {} policies, {} stored entities, version {}",
        snapshot.policy_info.len(),
        snapshot.entities.iter().count(),
        snapshot.version
    );
    Ok(ExitCode::SUCCESS)
}

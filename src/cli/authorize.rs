//! `cdap-authz authorize`: decide one request offline; exit 0 on allow, 2 on deny.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::{read_request, ModelArgs, EXIT_DENY};
use crate::api::Outcome;
use crate::engine;

#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    /// The request, in the JSON body format of `POST /v1/is_authorized`.
    #[arg(long, value_name = "FILE")]
    pub request: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: AuthorizeArgs) -> anyhow::Result<ExitCode> {
    let snapshot = args.model.load()?;
    let request = read_request(&args.request)?;
    let decision = engine::decide(&snapshot, &request, chrono::Utc::now())
        .with_context(|| args.request.display().to_string())?;
    let response = decision.response(&snapshot.version);
    outln!("{}", serde_json::to_string_pretty(&response)?)?;
    Ok(match response.decision {
        Outcome::Allow => ExitCode::SUCCESS,
        Outcome::Deny => ExitCode::from(EXIT_DENY),
    })
}

//! `cdap-authz diff`: what a policy change newly allows or denies, proven.
//! Exit 0 when the `--fail-on` gate is not triggered, 4 when it is, 1 on errors
//! (including a missing solver).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::diff::render::{self, Format};
use crate::diff::{self, Options, Side};

/// Exit code when the `--fail-on` gate is triggered.
pub const EXIT_GATE: u8 = 4;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// OLD side: a directory with `policies/` and `schema/` (not with `--git`).
    #[arg(value_name = "OLD", required_unless_present = "git")]
    old: Option<PathBuf>,
    /// NEW side: a directory with `policies/` and `schema/`.
    #[arg(
        value_name = "NEW",
        required_unless_present = "git",
        conflicts_with = "git"
    )]
    new: Option<PathBuf>,
    /// Compare git revisions of the repository in the current directory:
    /// `--git OLDREV [NEWREV]`; NEWREV defaults to the working tree.
    #[arg(long, value_name = "REV", num_args = 1..=2, conflicts_with = "old")]
    git: Option<Vec<String>>,
    /// Output format (markdown suits a merge-request comment).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Exit 4 when the change widens (newly allows), narrows, or either. What is
    /// not proven counts: an "unknown" solver answer, changed derivation rules or
    /// stored entities, changed policies or schema with `--no-semantic`.
    #[arg(long, value_enum, value_name = "WHAT")]
    fail_on: Option<Gate>,
    /// Only the structural (and replay) parts: no solver, so a change of policies
    /// or schema (beyond annotations, layout and comments) proves nothing and
    /// trips `--fail-on`.
    #[arg(long)]
    no_semantic: bool,
    /// Time limit per solver query, in milliseconds; a query that reaches it is
    /// reported "unknown".
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
    /// Recorded requests to re-decide under both sides (request JSON files,
    /// arrays of requests, or JSON lines such as a decision log). Give it after
    /// OLD and NEW: it takes every following file.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    replay: Vec<PathBuf>,
    /// Stored entities for the replay [default: each side's examples/entities.json].
    #[arg(long, value_name = "FILE")]
    entities: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Gate {
    Widen,
    Narrow,
    Any,
}

pub fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let (old, new) = sides(&args)?;
    let options = Options {
        semantic: !args.no_semantic,
        query_timeout_ms: args.timeout_ms,
        replay: args.replay.clone(),
        entities: args.entities.clone(),
    };
    let report = diff::diff(&old, &new, &options)?;
    out!("{}", render::render(&report, args.format))?;
    let triggered = match args.fail_on {
        None => false,
        Some(Gate::Widen) => report.widens(),
        Some(Gate::Narrow) => report.narrows(),
        Some(Gate::Any) => report.widens() || report.narrows(),
    };
    Ok(if triggered {
        ExitCode::from(EXIT_GATE)
    } else {
        ExitCode::SUCCESS
    })
}

fn sides(args: &DiffArgs) -> anyhow::Result<(Side, Side)> {
    let here = PathBuf::from(".");
    Ok(match (&args.git, &args.old, &args.new) {
        (Some(revs), _, _) => {
            let old = Side::git_revision(&here, &revs[0])?;
            let new = match revs.get(1) {
                Some(rev) => Side::git_revision(&here, rev)?,
                None => Side::worktree(&here)?,
            };
            (old, new)
        }
        (None, Some(old), Some(new)) => (Side::dir(old), Side::dir(new)),
        _ => bail!("give OLD and NEW directories, or --git OLDREV [NEWREV]"),
    })
}

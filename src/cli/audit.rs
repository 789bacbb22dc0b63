//! `cdap-authz audit`: check the decision log's hash chain, and query it.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::audit::query::{decision_filter, entity_filter, partner_filter, query, Filter};
use crate::audit::verify::verify;
use crate::audit::DEFAULT_DIR;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain across all files; report the first altered, removed
    /// or reordered record and exit 1.
    Verify {
        /// Directory of the decision log.
        #[arg(value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// A record hash noted earlier outside the log (serve logs its chain head
        /// at every rotation and on shutdown): fail unless a record has it, which
        /// catches records cut off the end of the log.
        #[arg(long, value_name = "HASH")]
        expect_hash: Option<String>,
    },
    /// Print the matching records, one JSON line each, oldest first. Exit 1 if a
    /// line that may match is not a record (the answer may lack records: run
    /// `audit verify`), or when DIR holds no log file.
    Query(QueryArgs),
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// Directory of the decision log.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Partner, as `ville-maubeuge` or `Partner::"ville-maubeuge"`.
    #[arg(long, value_parser = partner_filter)]
    partner: Option<String>,
    /// Principal, as `User::"mau-t1"` or `mau-t1`.
    #[arg(long, value_parser = entity_filter)]
    principal: Option<String>,
    /// Resource, as `File::"dossier-59-0001"` or `dossier-59-0001`.
    #[arg(long, value_parser = entity_filter)]
    resource: Option<String>,
    /// `Allow` or `Deny` (any case).
    #[arg(long, value_parser = decision_filter)]
    decision: Option<String>,
    /// From this time on (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<DateTime<Utc>>,
    /// Most records printed (the newest).
    #[arg(
        long,
        value_name = "N",
        default_value_t = usize::MAX,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    limit: usize,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify { dir, expect_hash } => run_verify(&dir, expect_hash.as_deref()),
        AuditCommand::Query(args) => run_query(args),
    }
}

fn run_verify(dir: &std::path::Path, expect_hash: Option<&str>) -> anyhow::Result<ExitCode> {
    match verify(dir, expect_hash)? {
        Ok(verified) => {
            for (path, line) in &verified.torn {
                outln!(
                    "note: {}:{line}: incomplete last line (a torn write); the chain \
                     continues from the record before it",
                    path.display()
                )?;
            }
            if verified.first_seq > 0 {
                outln!(
                    "note: the chain starts at seq {}: the {} records before it are not \
                     here (files of days before {} deleted by retention, or records \
                     removed: if that day is within the retention period, removed)",
                    verified.first_seq,
                    verified.first_seq,
                    verified.first_day
                )?;
            }
            outln!(
                "ok: {} records in {} files, chain from {} to {}",
                verified.records,
                verified.files,
                verified.anchor,
                verified.last_hash
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err((path, line, why)) => {
            outln!("{}:{line}: {why}", path.display())?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run_query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        partners: args.partner.into_iter().collect(),
        principal: args.principal,
        resource: args.resource,
        decision: args.decision,
        since: args.since,
        until: args.until,
    };
    filter.check_range().map_err(anyhow::Error::msg)?;
    let found = query(&args.dir, &filter, args.limit)?;
    for record in &found.records {
        outln!("{}", serde_json::to_string(record)?)?;
    }
    if found.unreadable > 0 {
        errln!(
            "warning: {} lines that may match are not decision records (altered, or not \
             written by the sidecar), so records may be missing above: run `cdap-authz \
             audit verify`",
            found.unreadable
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

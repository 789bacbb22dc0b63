//! `cdap-authz fmt`: format `.cedar` files with Cedar's own formatter. With
//! `--check`, change nothing, list the files that are not formatted and exit 1.
//! A file that does not parse is reported (exit 1), and the others still done.
//! A file is rewritten by renaming a complete new one over it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use cedar_policy_formatter::{policies_str_to_pretty, Config};
use clap::Args;

use crate::load::{policy_files, policy_syntax_problem};

#[derive(Debug, Args)]
pub struct FmtArgs {
    /// Report unformatted files instead of rewriting them; exit 1 if any.
    #[arg(long)]
    pub check: bool,
    /// Files or directories (searched for `.cedar` files).
    #[arg(value_name = "PATH", default_value = crate::load::POLICIES_DIR)]
    pub paths: Vec<PathBuf>,
}

const STYLE: Config = Config {
    line_width: 100,
    indent_width: 2,
};

pub fn run(args: FmtArgs) -> anyhow::Result<ExitCode> {
    let (mut unformatted, mut failed) = (0, 0);
    // A file that does not parse is reported, and the others are still formatted
    // or checked.
    for path in cedar_files(&args.paths)? {
        match format_file(&path, args.check) {
            Ok(changed) => unformatted += usize::from(changed),
            Err(error) => {
                errln!("error: {error:#}");
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 || (args.check && unformatted > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Formats one file, or with `check` only reports it; whether it was not formatted.
fn format_file(path: &Path, check: bool) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let pretty = policies_str_to_pretty(&text, &STYLE).map_err(|report| {
        // The formatter's error has no position; the parser's has.
        let why = policy_syntax_problem(path, &text).unwrap_or_else(|| report.to_string());
        anyhow::anyhow!("{}: cannot format:\n{why}", path.display())
    })?;
    if pretty == text {
        return Ok(false);
    }
    if check {
        outln!("not formatted: {}", path.display())?;
    } else {
        replace(path, &pretty).with_context(|| format!("cannot write {}", path.display()))?;
        outln!("formatted: {}", path.display())?;
    }
    Ok(true)
}

/// Writes `text` to a hidden temporary file beside `path` (with `path`'s
/// permissions), then renames it over `path`: a sidecar reloading meanwhile reads
/// the old file or the new one, never a half-written one (an empty or cut policy
/// file is valid Cedar, and would drop its forbids).
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    // A symlinked policy file is formatted where it points, and stays a symlink.
    let path = &std::fs::canonicalize(path)?;
    let dir = path.parent().expect("a canonical file path has a parent");
    let mut temporary = tempfile::Builder::new().prefix(".fmt-").tempfile_in(dir)?;
    temporary.write_all(text.as_bytes())?;
    temporary
        .as_file()
        .set_permissions(std::fs::metadata(path)?.permissions())?;
    temporary.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Named files as given; directories searched for `.cedar` files.
fn cedar_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(
                policy_files(path).with_context(|| format!("cannot read {}", path.display()))?,
            );
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

//! Policy diff for security officers: what a change of policies (and schema) newly
//! allows or denies, proven.
//!
//! Two sides, OLD and NEW, are each a directory laid out like the repository
//! (`policies/` with `.cedar` files, `schema/` with one `.cedarschema`) or a git
//! revision materialised into a temporary directory. The diff has three parts:
//!
//! - [`structural`]: policies added, removed, changed, moved or reformatted,
//!   matched by `@id`, with a unified diff of their text; schema changes; the
//!   text diffs of the derivation rules and of the stored entities, which the
//!   solver does not see (counted as unproven).
//! - [`semantic`]: for each request signature of the schema, whether NEW is
//!   equivalent to OLD, narrows it, widens it or both, proven by the SMT solver
//!   cvc5 through `cedar-policy-symcc`, with counterexamples confirmed by the real
//!   authorizer on both sides.
//! - [`replay`]: recorded requests re-decided under both sides; the flips.
//!
//! [`render`] writes the report as text, markdown or JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::load::{self, LoadError, Model, Sources};

pub mod groups;
pub mod render;
pub mod replay;
pub mod semantic;
pub mod structural;

/// Everything that can keep a diff from being made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{side}: {path}: {reason}")]
    Layout {
        side: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{side}: the model does not load:\n{source}")]
    Load {
        side: String,
        #[source]
        source: LoadError,
    },
    #[error("git {args}: {reason}")]
    Git { args: String, reason: String },
    #[error("cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error(transparent)]
    Semantic(#[from] semantic::SemanticError),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
}

/// One side of the diff, materialised on disk.
pub struct Side {
    /// How the user named it: a directory or `git:REV`.
    pub label: String,
    pub root: PathBuf,
    /// Keeps a materialised git revision alive as long as the side.
    _checkout: Option<tempfile::TempDir>,
}

impl Side {
    /// A directory laid out like the repository.
    pub fn dir(root: &Path) -> Self {
        Self {
            label: root.display().to_string(),
            root: root.to_owned(),
            _checkout: None,
        }
    }

    /// The repository's working tree (the git top level of `repo`).
    pub fn worktree(repo: &Path) -> Result<Self, DiffError> {
        let top = git(repo, &["rev-parse", "--show-toplevel"])?;
        let root = PathBuf::from(String::from_utf8_lossy(&top).trim());
        Ok(Self {
            label: "working tree".to_owned(),
            root,
            _checkout: None,
        })
    }

    /// A git revision of the repository at `repo`: its `policies/` and `schema/`
    /// (and `examples/entities.json`, if any: compared, and read by the replay) in
    /// a temporary directory.
    pub fn git_revision(repo: &Path, rev: &str) -> Result<Self, DiffError> {
        let archive = git(
            repo,
            &["archive", "--format=tar", rev, "policies", "schema"],
        )?;
        let checkout = tempfile::tempdir().map_err(DiffError::TempDir)?;
        untar(&archive, checkout.path()).map_err(|reason| DiffError::Git {
            args: format!("archive {rev} | tar -x"),
            reason,
        })?;
        // Optional: the replay reads it; the structural part compares its text.
        if let Ok(bytes) = git(repo, &["show", &format!("{rev}:{}", load::ENTITIES_FILE)]) {
            let path = checkout.path().join(load::ENTITIES_FILE);
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, bytes))
                .map_err(DiffError::TempDir)?;
        }
        Ok(Self {
            label: format!("git:{rev}"),
            root: checkout.path().to_owned(),
            _checkout: Some(checkout),
        })
    }

    /// Where this side's model files are: `policies/` and the one `.cedarschema`
    /// in `schema/`; `entities` is this side's `examples/entities.json`, if any.
    pub fn sources(&self, entities: Option<&Path>) -> Result<Sources, DiffError> {
        let schema_dir = self.root.join("schema");
        let layout = |path: &Path, reason: &str| DiffError::Layout {
            side: self.label.clone(),
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let schemas: Vec<PathBuf> = std::fs::read_dir(&schema_dir)
            .map_err(|e| layout(&schema_dir, &format!("cannot list: {e}")))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cedarschema"))
            .collect();
        let [schema] = schemas.as_slice() else {
            return Err(layout(
                &schema_dir,
                "expected exactly one .cedarschema file",
            ));
        };
        let derived = schema_dir.join(load::DERIVED_FILE_NAME);
        let bundled = self.root.join(load::ENTITIES_FILE);
        Ok(Sources {
            policies: self.root.join(load::POLICIES_DIR),
            schema: schema.clone(),
            entities: entities
                .map(Path::to_owned)
                .or_else(|| bundled.exists().then_some(bundled)),
            derived: derived.exists().then_some(derived),
        })
    }

    /// The text of this side's stored entities (`examples/entities.json`), empty
    /// without one.
    pub fn entities_text(&self) -> Result<String, DiffError> {
        let path = self.root.join(load::ENTITIES_FILE);
        if !path.exists() {
            return Ok(String::new());
        }
        std::fs::read_to_string(&path).map_err(|e| DiffError::Layout {
            side: self.label.clone(),
            path,
            reason: format!("cannot read: {e}"),
        })
    }

    /// Loads schema, policies and derivation rules (not entities: the semantic part
    /// does not read them and the structural part only compares their text; the
    /// rules are checked against the schema, which may require them).
    pub fn load_model(&self) -> Result<Model, DiffError> {
        let sources = Sources {
            entities: None,
            ..self.sources(None)?
        };
        load::load(&sources).map_err(|source| DiffError::Load {
            side: self.label.clone(),
            source,
        })
    }
}

/// What to compute besides the structural part.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run the solver (the semantic part).
    pub semantic: bool,
    /// Time limit per solver query, in milliseconds.
    pub query_timeout_ms: u64,
    /// Recorded requests to re-decide under both sides.
    pub replay: Vec<PathBuf>,
    /// Stored entities for the replay, instead of each side's own.
    pub entities: Option<PathBuf>,
}

/// The whole diff.
#[derive(Debug, Serialize)]
pub struct Report {
    pub old: String,
    pub new: String,
    pub structural: structural::StructuralDiff,
    /// `None` when the semantic part was not asked for.
    pub semantic: Option<semantic::SemanticDiff>,
    /// `None` when no replay file was given.
    pub replay: Option<replay::ReplayDiff>,
}

impl Report {
    /// Whether anything is newly allowed (or could be: an unknown solver result,
    /// changed derivation rules or stored entities, which the solver does not see,
    /// or changed policies with the solver not run).
    pub fn widens(&self) -> bool {
        self.semantic.as_ref().is_some_and(|s| s.widens())
            || self.replay.as_ref().is_some_and(|r| r.newly_allowed() > 0)
            || self.unproven()
    }

    /// Whether anything is newly denied (or could be).
    pub fn narrows(&self) -> bool {
        self.semantic.as_ref().is_some_and(|s| s.narrows())
            || self.replay.as_ref().is_some_and(|r| r.newly_denied() > 0)
            || self.unproven()
    }

    /// The semantic part was skipped (`--no-semantic`) while policies or the
    /// schema changed in meaning: nothing about them was proven (a replay only
    /// samples), so the gates count them as possibly widening and narrowing.
    pub fn unproven_without_solver(&self) -> bool {
        self.semantic.is_none() && self.structural.meaning_may_differ()
    }

    /// A change that no part of the diff could judge.
    fn unproven(&self) -> bool {
        self.structural.derived.is_some()
            || self.structural.entities.is_some()
            || self.unproven_without_solver()
    }
}

/// Compares two sides.
pub fn diff(old: &Side, new: &Side, options: &Options) -> Result<Report, DiffError> {
    let old_model = old.load_model()?;
    let new_model = new.load_model()?;
    let structural = structural::compare(
        &old_model,
        &new_model,
        &old.entities_text()?,
        &new.entities_text()?,
    );
    let semantic = if options.semantic {
        Some(semantic::compare(
            &old_model,
            &new_model,
            options.query_timeout_ms,
        )?)
    } else {
        None
    };
    let replay = if options.replay.is_empty() {
        None
    } else {
        let entities = options.entities.as_deref();
        Some(replay::replay(
            &old.sources(entities)?,
            &new.sources(entities)?,
            &options.replay,
        )?)
    };
    Ok(Report {
        old: old.label.clone(),
        new: new.label.clone(),
        structural,
        semantic,
        replay,
    })
}

fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, DiffError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| git_error(args, e.to_string()))?;
    if !output.status.success() {
        let reason = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(git_error(args, reason));
    }
    Ok(output.stdout)
}

/// Extracts a tar archive into `dir` with the system's `tar`.
fn untar(archive: &[u8], dir: &Path) -> Result<(), String> {
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let written = tar.stdin.take().expect("piped").write_all(archive);
    let status = tar.wait().map_err(|e| e.to_string())?;
    match (written, status.success()) {
        (Ok(()), true) => Ok(()),
        (Err(e), _) => Err(format!("cannot feed tar: {e}")),
        (_, false) => Err(format!("tar failed: {status}")),
    }
}

fn git_error(args: &[&str], reason: String) -> DiffError {
    DiffError::Git {
        args: args.join(" "),
        reason,
    }
}

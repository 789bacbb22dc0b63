//! Reading a model from disk: the schema, the policy files, the entities and the
//! derivation rules, each parsed and strictly validated.
//!
//! Every problem names its file and, where Cedar locates it, the line, column and
//! offending source (rendered by miette). Loading reports all the problems it can
//! find at once, not only the first.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode,
};
use sha2::{Digest, Sha256};

use crate::context::EntityShapes;
use crate::derive::{self, DerivationRules, DerivedTypes};
use crate::diagnostic::describe;
use crate::strict_json::Strict;

// The bundled model's layout in a checkout of this repository, which the CLI reads
// by default from where it runs ([`Sources::bundled`] from anywhere).
/// The bundled policies' directory.
pub const POLICIES_DIR: &str = "policies";
/// The bundled schema.
pub const SCHEMA_FILE: &str = "schema/cdap.cedarschema";
/// The demo's stored entities (a side of `diff` keeps its own there too).
pub const ENTITIES_FILE: &str = "examples/entities.json";
/// The derivation rules' file name, beside the schema.
pub const DERIVED_FILE_NAME: &str = "derived.json";

/// Where a model lives on disk.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Directory of `.cedar` files (read recursively, in path order).
    pub policies: PathBuf,
    /// A `.cedarschema` file (or a JSON schema when it ends in `.json`).
    pub schema: PathBuf,
    /// Stored entities, in Cedar's entity JSON format.
    pub entities: Option<PathBuf>,
    /// Derivation rules (see [`crate::derive`]).
    pub derived: Option<PathBuf>,
}

impl Sources {
    /// The bundled Cdap model and its demo entities, in a checkout of this
    /// repository at `root`: what `serve` reads by default from the repository root.
    pub fn bundled(root: &Path) -> Self {
        let schema = root.join(SCHEMA_FILE);
        Self {
            policies: root.join(POLICIES_DIR),
            derived: Some(schema.with_file_name(DERIVED_FILE_NAME)),
            schema,
            entities: Some(root.join(ENTITIES_FILE)),
        }
    }

    /// The files beside the policy directory: the schema, then the entities and the
    /// derivation rules, when given.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.schema).chain(self.entities.iter().chain(&self.derived))
    }
}

/// One problem found while loading, already rendered for a human.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: PathBuf,
    pub message: String,
}

/// Everything wrong with a model; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError(pub Vec<Problem>);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(
            f,
            "{count} problem{} in the model:",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            writeln!(f, "{}", problem.message.trim_end())?;
        }
        Ok(())
    }
}

/// A policy as loaded: its `@id`, effect, `@source` clause and file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyInfo {
    pub id: String,
    pub effect: &'static str,
    pub source: Option<String>,
    pub file: String,
    /// Whether `id` is the policy's `@id`, rather than its place in its file
    /// (`a.cedar#policy1`).
    #[serde(skip)]
    pub named: bool,
    /// Line and column (from 1) where the policy starts in its file: at its first
    /// annotation.
    #[serde(skip)]
    pub at: (usize, usize),
}

/// A parsed, validated model, before the decision indexes are built.
#[derive(Clone)]
pub struct Model {
    pub schema: Schema,
    pub schema_text: String,
    pub policies: PolicySet,
    pub policy_info: Vec<PolicyInfo>,
    pub entities: Entities,
    /// The schema in Cedar's JSON format, type names resolved
    /// ([`crate::context::resolved_schema_json`]).
    pub schema_json: serde_json::Value,
    /// The derivation rules the entities were completed with.
    pub rules: DerivationRules,
    /// Their text (`derived.json`); empty without one.
    pub derived_text: String,
    /// The entity types' attribute and tag types, read from `schema_json`.
    pub entity_shapes: EntityShapes,
    /// The types whose tags the rules derive, read from the schema.
    pub derived: DerivedTypes,
    /// Digest of every input file (its role, or its path within the policy
    /// directory, and its bytes): the model's version, the same wherever the files
    /// are and however their paths are written.
    pub version: String,
}

/// SHA-256 of the texts stored entities are read from: the schema's, the
/// derivation rules' and the entities file's, each after its length. Two loads
/// whose texts have the same key read the same entities.
pub type EntitiesKey = [u8; 32];

/// How a load read the stored entities: the key of their texts (none without an
/// entities file), and whether they are the serving snapshot's, taken as they were.
#[derive(Debug, Clone, Copy)]
pub struct EntitiesRead {
    pub key: Option<EntitiesKey>,
    pub reused: bool,
}

fn entities_key(texts: [&str; 3]) -> EntitiesKey {
    let mut digest = Sha256::new();
    for text in texts {
        digest.update((text.len() as u64).to_le_bytes());
        digest.update(text.as_bytes());
    }
    digest.finalize().into()
}

/// Reads, parses and validates a model.
pub fn load(sources: &Sources) -> Result<Model, LoadError> {
    load_with(sources, None).map(|(model, _)| model)
}

/// [`load`] for a reload. `serving` is the stored entities of the snapshot serving,
/// with the key of the texts they were read from: when the texts have that key
/// still (a policy edited, a file touched), the model takes those entities, each
/// shared, instead of parsing, checking and closing the file again, which is most
/// of a load's time with a large store (BENCHMARKS.md, session 42). Also says how
/// it read the model's entities.
pub fn load_reusing(
    sources: &Sources,
    serving: Option<(&EntitiesKey, &Entities)>,
) -> Result<(Model, EntitiesRead), LoadError> {
    load_with(sources, serving)
}

fn load_with(
    sources: &Sources,
    serving: Option<(&EntitiesKey, &Entities)>,
) -> Result<(Model, EntitiesRead), LoadError> {
    let mut problems = Vec::new();
    let mut digest = Sha256::new();
    let schema_text = read(&sources.schema, "schema", &mut digest, &mut problems);
    let schema = schema_text
        .as_deref()
        .and_then(|text| parse_schema(&sources.schema, text, &mut problems));
    let policies = read_policies(
        &sources.policies,
        schema.as_ref(),
        &mut digest,
        &mut problems,
    );
    let (rules, derived_text) = match &sources.derived {
        Some(path) => match read_rules(path, &mut digest, &mut problems) {
            Some((rules, text)) => (Some(rules), text),
            None => (None, String::new()),
        },
        None => (Some(DerivationRules::default()), String::new()),
    };
    let derived = schema
        .as_ref()
        .and(schema_text.as_deref())
        .zip(rules.as_ref())
        .and_then(|(text, rules)| derived_types(sources, text, rules, &mut problems));
    let entities = schema
        .as_ref()
        .zip(schema_text.as_deref())
        .zip(rules.as_ref())
        .zip(derived.as_ref())
        .and_then(|(((schema, schema_text), rules), (_, _, types))| {
            let rules = ParsingRules {
                schema,
                schema_text,
                rules,
                rules_text: &derived_text,
                types,
            };
            read_entities(sources, &rules, serving, &mut digest, &mut problems)
        });
    match (schema, schema_text, policies, entities, rules, derived) {
        (
            Some(schema),
            Some(schema_text),
            Some((policies, policy_info)),
            Some((entities, entities_read)),
            Some(rules),
            Some((schema_json, entity_shapes, derived)),
        ) if problems.is_empty() => {
            let hash = digest.finalize();
            let model = Model {
                schema,
                schema_text,
                schema_json,
                policies,
                policy_info,
                entities,
                rules,
                derived_text,
                entity_shapes,
                derived,
                version: format!("sha256:{}", &format!("{hash:x}")[..16]),
            };
            Ok((model, entities_read))
        }
        _ => Err(LoadError(problems)),
    }
}

/// Reads a file into the digest under `label` (what the file is to the model).
fn read(
    path: &Path,
    label: &str,
    digest: &mut Sha256,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            digest.update(label.as_bytes());
            digest.update([0]);
            digest.update(text.as_bytes());
            digest.update([0]);
            Some(text)
        }
        Err(err) => {
            problems.push(Problem {
                path: path.to_owned(),
                message: format!("{}: cannot read: {err}", path.display()),
            });
            None
        }
    }
}

fn parse_schema(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<Schema> {
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        Schema::from_json_str(text).map_err(miette::Report::new)
    } else {
        Schema::from_cedarschema_str(text)
            .map(|(schema, _warnings)| schema)
            .map_err(miette::Report::new)
    };
    parsed
        .map_err(|report| problems.extend(located_problems(path, text, report)))
        .ok()
}

/// Reads every `.cedar` file under `dir`; each policy's id is its `@id` annotation.
fn read_policies(
    dir: &Path,
    schema: Option<&Schema>,
    digest: &mut Sha256,
    problems: &mut Vec<Problem>,
) -> Option<(PolicySet, Vec<PolicyInfo>)> {
    let files = match policy_files(dir) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => {
            problems.push(Problem {
                path: dir.to_owned(),
                message: format!("{}: no .cedar policy file found", dir.display()),
            });
            return None;
        }
        Err(err) => {
            problems.push(Problem {
                path: dir.to_owned(),
                message: format!("{}: cannot list policy files: {err}", dir.display()),
            });
            return None;
        }
    };
    let before = problems.len();
    let mut all = PolicySet::new();
    let mut info = Vec::new();
    // Each `@id` seen, and where: `file:line:column`.
    let mut seen: HashMap<String, String> = HashMap::new();
    for path in files {
        let relative = path.strip_prefix(dir).unwrap_or(&path).to_owned();
        let label = format!("policies/{}", relative.display());
        let Some(text) = read(&path, &label, digest, problems) else {
            continue;
        };
        let Some(parsed) = parse_policy_file(&path, &text, problems) else {
            continue;
        };
        let lines = Lines::new(&text);
        refuse_templates(&path, &lines, &parsed, problems);
        refuse_empty(&path, &parsed, problems);
        let mut file_set = PolicySet::new();
        let mut used_in_file: HashMap<String, usize> = HashMap::new();
        for policy in parsed.policies() {
            let (line, column) = lines.at(policy.as_ref().loc().map_or(0, |l| l.start()));
            if policy
                .annotation("id")
                .is_some_and(|id| id.trim().is_empty())
            {
                problems.push(Problem {
                    path: path.clone(),
                    message: format!(
                        "{}:{line}:{column}: a policy's @id is empty: the decision log and the diffs name \
                         policies by it",
                        path.display()
                    ),
                });
                continue;
            }
            let id = policy
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}#{}", relative.display(), policy.id()));
            let uses_here = used_in_file.entry(id.clone()).or_insert(0);
            *uses_here += 1;
            if let Some(first) = seen.get(&id) {
                // The repeat is this file's latest `@id("id")`.
                let at = id_position(&text, &lines, &id, *uses_here - 1)
                    .map(|(line, column)| format!(":{line}:{column}"))
                    .unwrap_or_default();
                problems.push(Problem {
                    path: path.clone(),
                    message: format!(
                        "{}{at}: policy id `{id}` is already used at {first}",
                        path.display(),
                    ),
                });
                continue;
            }
            seen.insert(id.clone(), format!("{}:{line}:{column}", path.display()));
            info.push(PolicyInfo {
                id: id.clone(),
                effect: match policy.effect() {
                    cedar_policy::Effect::Permit => "permit",
                    cedar_policy::Effect::Forbid => "forbid",
                },
                source: policy.annotation("source").map(str::to_owned),
                file: path.display().to_string(),
                named: policy.annotation("id").is_some(),
                at: (line, column),
            });
            file_set
                .add(policy.new_id(PolicyId::new(id)))
                .expect("policy ids are unique: checked above");
        }
        if let Some(schema) = schema {
            validate_file(&path, &text, &file_set, schema, problems);
        }
        all.merge(&file_set, false)
            .expect("policy ids are unique: checked above");
    }
    (problems.len() == before).then_some((all, info))
}

/// Line and column (from 1) of the `nth` (from 0) `@id("id")` written in `text`.
fn id_position(text: &str, lines: &Lines, id: &str, nth: usize) -> Option<(usize, usize)> {
    let written = format!("@id({})", serde_json::Value::from(id));
    let (offset, _) = text.match_indices(&written).nth(nth)?;
    Some(lines.at(offset))
}

/// Where each line of a text starts: line and column lookups without rescanning
/// the text (a file's thousands of policies are each located).
pub struct Lines {
    starts: Vec<usize>,
    len: usize,
}

impl Lines {
    pub fn new(text: impl AsRef<[u8]>) -> Self {
        let text = text.as_ref();
        let after_newlines = memchr::memchr_iter(b'\n', text).map(|at| at + 1);
        Self {
            starts: std::iter::once(0).chain(after_newlines).collect(),
            len: text.len(),
        }
    }

    /// Line and column (from 1, the column in bytes) of byte `offset`.
    pub fn at(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.len);
        let line = self.starts.partition_point(|&start| start <= offset);
        (line, offset - self.starts[line - 1] + 1)
    }
}

/// The `.cedar` files under `dir`, recursively, in path order (hidden entries skipped).
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next)? {
            let path = entry?.path();
            let within = path.strip_prefix(dir).unwrap_or(&path);
            if path.is_dir() {
                if !is_hidden(within) {
                    pending.push(path);
                }
            } else if is_policy_file(within) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Whether `within`, a path inside the policy directory, is a file a load reads
/// ([`policy_files`]): a `.cedar` file, with no hidden entry on its way.
pub fn is_policy_file(within: &Path) -> bool {
    within.extension().is_some_and(|e| e == "cedar") && !is_hidden(within)
}

/// Whether an entry on `within` is hidden (its name starts with `.`).
fn is_hidden(within: &Path) -> bool {
    within
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
}

/// Why the policy file `path` holding `text` does not parse, shown against its lines
/// as `validate` shows it; `None` when it parses.
pub fn policy_syntax_problem(path: &Path, text: &str) -> Option<String> {
    let mut problems = Vec::new();
    parse_policy_file(path, text, &mut problems);
    (!problems.is_empty()).then(|| {
        let messages: Vec<String> = problems.into_iter().map(|p| p.message).collect();
        messages.join("\n")
    })
}

fn parse_policy_file(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<PolicySet> {
    // Some editors write one, and files joined with `cat` carry theirs along;
    // Cedar's lexer reads it as an invalid token, shown at a place that looks right.
    if let Some(offset) = text.find('\u{feff}') {
        let (line, column) = Lines::new(text).at(offset);
        problems.push(Problem {
            path: path.to_owned(),
            message: format!(
                "{}:{line}:{column}: a byte-order mark (U+FEFF), which Cedar does not read: \
                 save the file as UTF-8 without one",
                path.display()
            ),
        });
        return None;
    }
    PolicySet::from_str(text)
        .map_err(|err| problems.extend(located_problems(path, text, miette::Report::new(err))))
        .ok()
}

/// Templates (policies with `?principal` or `?resource` slots) apply only once
/// linked, and the sidecar links none: one left in a file would silently never
/// apply, so it is refused.
fn refuse_templates(path: &Path, lines: &Lines, parsed: &PolicySet, problems: &mut Vec<Problem>) {
    for template in parsed.templates() {
        let id = template
            .annotation("id")
            .map_or_else(|| template.id().to_string(), str::to_owned);
        let (line, column) = lines.at(template.as_ref().loc().map_or(0, |l| l.start()));
        problems.push(Problem {
            path: path.to_owned(),
            message: format!(
                "{}:{line}:{column}: policy `{id}` is a template (it has a `?principal` or \
                 `?resource` slot); the sidecar links no templates, so it would never apply: \
                 write it as a static policy",
                path.display()
            ),
        });
    }
}

/// A file with no policy at all is what a file being rewritten in two steps
/// (emptied, then filled) reads as in between: loaded, it would drop every forbid it
/// held until the second step. It is refused; a file's policies are dropped by
/// removing the file.
fn refuse_empty(path: &Path, parsed: &PolicySet, problems: &mut Vec<Problem>) {
    if parsed.policies().next().is_none() && parsed.templates().next().is_none() {
        problems.push(Problem {
            path: path.to_owned(),
            message: format!(
                "{}: holds no policy (a file being rewritten, emptied before it is \
                 filled?); remove the file to drop its policies",
                path.display()
            ),
        });
    }
}

fn validate_file(
    path: &Path,
    text: &str,
    set: &PolicySet,
    schema: &Schema,
    problems: &mut Vec<Problem>,
) {
    let result = Validator::new(schema.clone()).validate(set, ValidationMode::Strict);
    for error in result.validation_errors() {
        problems.extend(located_problems(
            path,
            text,
            miette::Report::new(error.clone()),
        ));
    }
}

/// The schema as resolved JSON, its entity shapes, and the types the rules derive
/// (checked against them).
fn derived_types(
    sources: &Sources,
    schema_text: &str,
    rules: &DerivationRules,
    problems: &mut Vec<Problem>,
) -> Option<(serde_json::Value, EntityShapes, DerivedTypes)> {
    let schema_json = crate::context::resolved_schema_json(schema_text)
        .map_err(|err| {
            problems.push(Problem {
                path: sources.schema.clone(),
                message: format!("{}: schema as JSON: {err}", sources.schema.display()),
            })
        })
        .ok()?;
    let shapes = EntityShapes::from_resolved_schema(&schema_json);
    match derive::target_types(rules, &schema_json, &shapes) {
        Ok(types) => Some((schema_json, shapes, types)),
        Err(err) => {
            let path = sources.derived.as_ref().unwrap_or(&sources.schema);
            problems.push(Problem {
                path: path.clone(),
                message: format!("{}: derived data: {err}", path.display()),
            });
            None
        }
    }
}

/// What stored entities are read by: the schema and the derivation rules, with
/// their texts (which the key of the entities covers).
struct ParsingRules<'a> {
    schema: &'a Schema,
    schema_text: &'a str,
    rules: &'a DerivationRules,
    rules_text: &'a str,
    types: &'a DerivedTypes,
}

/// The stored entities, and how they were read: `serving`'s when the key of the
/// texts they are read from is `serving`'s, else the file's, parsed.
fn read_entities(
    sources: &Sources,
    parsing: &ParsingRules,
    serving: Option<(&EntitiesKey, &Entities)>,
    digest: &mut Sha256,
    problems: &mut Vec<Problem>,
) -> Option<(Entities, EntitiesRead)> {
    let Some(path) = &sources.entities else {
        let read = EntitiesRead {
            key: None,
            reused: false,
        };
        return Some((Entities::empty(), read));
    };
    let text = read(path, "entities", digest, problems)?;
    let key = entities_key([parsing.schema_text, parsing.rules_text, &text]);
    let (entities, reused) = match serving {
        Some((serving_key, entities)) if *serving_key == key => (entities.clone(), true),
        _ => (parse_entities(path, &text, parsing, problems)?, false),
    };
    let read = EntitiesRead {
        key: Some(key),
        reused,
    };
    Some((entities, read))
}

/// The entities of `text`, completed with derived data and checked against the
/// schema.
fn parse_entities(
    path: &Path,
    text: &str,
    parsing: &ParsingRules,
    problems: &mut Vec<Problem>,
) -> Option<Entities> {
    let ParsingRules {
        schema,
        rules,
        types,
        ..
    } = *parsing;
    // A repeated key is refused: serde_json keeps the last, so `"suspended": true,
    // "suspended": false` would load as not suspended while a reader sees both.
    let Strict(mut json) = serde_json::from_str(text)
        .map_err(|err| {
            problems.push(Problem {
                path: path.to_owned(),
                message: format!(
                    "{}:{}:{}: invalid JSON: {err}",
                    path.display(),
                    err.line(),
                    err.column()
                ),
            })
        })
        .ok()?;
    if let Err(err) = derive::apply(rules, types, &mut json) {
        problems.push(Problem {
            path: path.to_owned(),
            message: format!("{}: derived data: {err}", path.display()),
        });
        return None;
    }
    // Cedar's entity errors carry no position; their causes name the entity and
    // what is wrong with it (the report's headline alone says neither).
    Entities::from_json_value(json, Some(schema))
        .map_err(
            |err| match entity_problems(path, text, rules, types, schema) {
                Some(each) if !each.is_empty() => problems.extend(each),
                _ => problems.push(Problem {
                    path: path.to_owned(),
                    message: format!("{}: {}", path.display(), describe(&err)),
                }),
            },
        )
        .ok()
}

/// Files of more entities than this are not checked entity by entity when refused
/// (each check builds a store of one, tens of µs): Cedar's first error, which names
/// its entity, is given alone.
const ENTITIES_CHECKED_ONE_BY_ONE: usize = 10_000;

/// Every entity of the file in `text` that Cedar refuses on its own, at its line and
/// column (Cedar stops at the first, and says not where), then what Cedar refuses in
/// the others together (a uid given twice): read again, completed with derived data
/// again, once the whole file is refused (so that a load that succeeds keeps no
/// copy). `None` for a file of more than [`ENTITIES_CHECKED_ONE_BY_ONE`] entities,
/// or one that is not an array. Derived data adds tags to entities, never an entity,
/// so the file's entities and those of its completed array pair up in order.
fn entity_problems(
    path: &Path,
    text: &str,
    rules: &DerivationRules,
    types: &DerivedTypes,
    schema: &Schema,
) -> Option<Vec<Problem>> {
    let written = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text).ok()?;
    if written.len() > ENTITIES_CHECKED_ONE_BY_ONE {
        return None;
    }
    let mut json = serde_json::from_str(text).ok()?;
    derive::apply(rules, types, &mut json).ok()?;
    let serde_json::Value::Array(entities) = json else {
        return None;
    };
    let refused = |entities: Vec<serde_json::Value>| {
        Entities::from_json_value(serde_json::Value::Array(entities), Some(schema)).err()
    };
    let mut problems = Vec::new();
    let mut accepted = Vec::new();
    let lines = Lines::new(text);
    for (raw, entity) in written.iter().zip(entities) {
        match refused(vec![entity.clone()]) {
            None => accepted.push(entity),
            Some(err) => {
                let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
                let (line, column) = lines.at(offset);
                problems.push(Problem {
                    path: path.to_owned(),
                    message: format!("{}:{line}:{column}: {}", path.display(), describe(&err)),
                });
            }
        }
    }
    if let Some(err) = refused(accepted) {
        problems.push(Problem {
            path: path.to_owned(),
            message: format!("{}: {}", path.display(), describe(&err)),
        });
    }
    Some(problems)
}

/// Why entities given as JSON (not read from a file) were refused.
#[derive(Debug, thiserror::Error)]
pub enum EntitiesError {
    #[error("derived data: {0}")]
    Derive(#[from] derive::DeriveError),
    #[error("{0}")]
    Schema(String),
}

impl Model {
    /// Replaces the stored entities with `json` (Cedar entity JSON), completed with
    /// the model's derived data and validated against its schema.
    pub fn set_entities(&mut self, mut json: serde_json::Value) -> Result<(), EntitiesError> {
        derive::apply(&self.rules, &self.derived, &mut json)?;
        self.entities = Entities::from_json_value(json, Some(&self.schema))
            .map_err(|err| EntitiesError::Schema(describe(&err)))?;
        Ok(())
    }
}

/// The derivation rules in `path`, and their text.
fn read_rules(
    path: &Path,
    digest: &mut Sha256,
    problems: &mut Vec<Problem>,
) -> Option<(DerivationRules, String)> {
    let text = read(path, "derived", digest, problems)?;
    let rules = serde_json::from_str(&text)
        .map_err(|err| {
            problems.push(Problem {
                path: path.to_owned(),
                message: format!("{}:{}:{}: {err}", path.display(), err.line(), err.column()),
            })
        })
        .ok()?;
    Some((rules, text))
}

/// Renders a Cedar diagnostic against its file: `╭─[file:line:col]` and the source.
/// One problem per diagnostic of `report`, each shown against the named file: the
/// report's own, and those related to it (Cedar gives a file's second and later
/// syntax errors so, each with its own unnamed copy of the text).
fn located_problems(path: &Path, text: &str, report: miette::Report) -> Vec<Problem> {
    let source = NamedSource::new(path.display().to_string(), text.to_owned());
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor());
    let main: &dyn Diagnostic = report.as_ref();
    std::iter::once(main)
        .chain(main.related().into_iter().flatten())
        .map(|inner| {
            let located = Located {
                inner,
                source: &source,
            };
            let mut message = String::new();
            if handler.render_report(&mut message, &located).is_err() || located.labels().is_none()
            {
                message = format!("{}: {message}", path.display());
            }
            Problem {
                path: path.to_owned(),
                message,
            }
        })
        .collect()
}

/// A diagnostic shown against a named file, whatever source the error carries (its
/// related diagnostics are problems of their own).
struct Located<'a> {
    inner: &'a dyn Diagnostic,
    source: &'a NamedSource<String>,
}

impl fmt::Debug for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.inner, f)
    }
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner, f)
    }
}

impl std::error::Error for Located<'_> {}

impl Diagnostic for Located<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.code()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.help()
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner.labels()
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    #[test]
    fn lines_give_line_and_column_from_1() {
        let lines = Lines::new("ab\ncd\n\ne");
        let at = |offset| lines.at(offset);
        assert_eq!([at(0), at(1), at(2)], [(1, 1), (1, 2), (1, 3)]);
        assert_eq!([at(3), at(4), at(6)], [(2, 1), (2, 2), (3, 1)]);
        assert_eq!([at(7), at(8), at(99)], [(4, 1), (4, 2), (4, 2)]);
    }
}

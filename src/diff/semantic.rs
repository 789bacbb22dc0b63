//! The semantic part of a diff: for each request signature, whether NEW allows
//! exactly what OLD allows, less (narrows), more (widens) or both, proven with
//! `cedar-policy-symcc` and the cvc5 SMT solver.
//!
//! Widening means some request is allowed by NEW and denied by OLD, i.e. NEW does
//! not imply OLD; narrowing is the reverse. Each counterexample the solver gives
//! is decided again by Cedar's real authorizer on both sides, with the sidecar's
//! fail-closed rule (an evaluation error denies); an example whose decisions do
//! not differ is reported as unconfirmed. The solver picks the tags a side's
//! derivation rules compute as freely as any data (a negative count): they are
//! recounted over the example's entities, as the sidecar would store them, before
//! the example is decided again.
//!
//! Both policy sets are compiled against NEW's schema. When the schemas differ,
//! signatures only in OLD are skipped (NEW has no such requests), and so is any
//! signature for which OLD's policies do not type-check under NEW's schema. For a
//! signature whose action NEW's schema moves into or out of an action group, OLD's
//! policies are first pinned to that action under OLD's groups ([`groups::pin`]),
//! so that OLD's `action in G` keeps the meaning it had.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use cedar_policy::{Authorizer, Entities, PolicySet, Request, RequestEnv, Schema};
use cedar_policy_symcc::err::Error as SymccError;
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet, Env};
use serde::Serialize;
use serde_json::Value;

use super::groups::{self, ActionGroups};
use super::structural::{signature_name, signatures};
use crate::load::Model;

/// The command that installs the solver, named in every "missing solver" message.
pub const INSTALL_HINT: &str = "apt-get install -y cvc5";

#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    #[error(
        "the SMT solver cvc5 was not found: {looked} (install it with `{INSTALL_HINT}`, or \
         set the CVC5 variable to its path; `--no-semantic` skips the semantic part)"
    )]
    SolverMissing { looked: String },
    #[error("cannot start the SMT solver {path}: {reason}")]
    SolverStart { path: PathBuf, reason: String },
    #[error("cannot start the async runtime for the solver: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{side}: {source}")]
    Groups {
        side: &'static str,
        #[source]
        source: groups::GroupsError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Equivalent,
    Narrows,
    Widens,
    WidensAndNarrows,
    /// The solver gave no answer for at least one direction (time limit), or a
    /// policy one side lacks can raise an evaluation error (which denies in the
    /// sidecar, and which the proof does not model).
    Unknown,
}

/// One direction's answer.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Direction {
    /// Proven: no such request exists.
    None,
    Found {
        example: Box<Example>,
    },
    Unknown {
        reason: String,
    },
}

/// A request that one side allows and the other denies.
#[derive(Debug, Serialize)]
pub struct Example {
    /// Cedar's authorizer (fail-closed) on OLD and NEW: "Allow" or "Deny".
    pub old_decision: &'static str,
    pub new_decision: &'static str,
    /// The decisions really differ in the expected direction.
    pub confirmed: bool,
    /// Why an example is not confirmed, beyond its decisions: its derived tags,
    /// recounted, no longer give the difference, or the sidecar would not store its
    /// entities.
    pub note: Option<String>,
    /// The policies that decided on each side.
    pub old_reasons: Vec<String>,
    pub new_reasons: Vec<String>,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub context: Value,
    /// The entities the request reaches, principal first, then resource, each as
    /// `{uid, attrs, parents, tags}`.
    pub entities: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct SignatureDiff {
    pub signature: String,
    pub verdict: Verdict,
    /// A request NEW allows and OLD denies.
    pub widening: Direction,
    /// A request OLD allows and NEW denies.
    pub narrowing: Direction,
    /// How NEW's schema moves the action into or out of action groups, when it
    /// does: OLD's policies were then read with OLD's groups.
    pub regrouped: Option<String>,
    pub millis: u128,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub signature: String,
    pub reason: String,
    /// Nothing is proven for a signature both sides have (a side's policies do not
    /// compile for it): the gates count it as a possible widening and narrowing,
    /// like an unknown solver result. A signature NEW's schema removed is not.
    pub unproven: bool,
}

#[derive(Debug, Serialize)]
pub struct SemanticDiff {
    pub signatures: Vec<SignatureDiff>,
    pub skipped: Vec<Skipped>,
    pub millis: u128,
}

impl SemanticDiff {
    /// Whether some request may be newly allowed (found, or not ruled out).
    pub fn widens(&self) -> bool {
        self.any_unproven()
            || self.signatures.iter().any(|s| {
                matches!(
                    s.verdict,
                    Verdict::Widens | Verdict::WidensAndNarrows | Verdict::Unknown
                )
            })
    }

    /// Whether some request may be newly denied (found, or not ruled out).
    pub fn narrows(&self) -> bool {
        self.any_unproven()
            || self.signatures.iter().any(|s| {
                matches!(
                    s.verdict,
                    Verdict::Narrows | Verdict::WidensAndNarrows | Verdict::Unknown
                )
            })
    }

    fn any_unproven(&self) -> bool {
        self.skipped.iter().any(|s| s.unproven)
    }
}

/// The solver's path: `CVC5` if set, else `cvc5` found on `PATH`; when missing,
/// where it was looked for.
pub fn find_solver() -> Result<PathBuf, SemanticError> {
    if let Some(path) = std::env::var_os("CVC5").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => Ok(path),
            false => Err(SemanticError::SolverMissing {
                looked: format!("CVC5={} is not a file", path.display()),
            }),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("cvc5"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| SemanticError::SolverMissing {
            looked: "CVC5 is not set and no cvc5 on PATH".to_owned(),
        })
}

/// Compares OLD and NEW on every signature of NEW's schema.
pub fn compare(old: &Model, new: &Model, timeout_ms: u64) -> Result<SemanticDiff, SemanticError> {
    let solver_path = find_solver()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SemanticError::Runtime)?;
    let started = std::time::Instant::now();
    let mut diff = runtime.block_on(compare_all(old, new, &solver_path, timeout_ms))?;
    diff.millis = started.elapsed().as_millis();
    Ok(diff)
}

async fn compare_all(
    old: &Model,
    new: &Model,
    solver_path: &Path,
    timeout_ms: u64,
) -> Result<SemanticDiff, SemanticError> {
    let action_groups = |model: &Model, side| {
        ActionGroups::of(&model.schema).map_err(|source| SemanticError::Groups { side, source })
    };
    let mut checker = Checker {
        compiler: start_solver(solver_path, timeout_ms)?,
        old,
        new,
        old_groups: action_groups(old, "OLD")?,
        new_groups: action_groups(new, "NEW")?,
    };
    let mut skipped = removed_signatures(&old.schema, &new.schema);
    let mut signatures = Vec::new();
    let mut envs: Vec<RequestEnv> = new.schema.request_envs().collect();
    envs.sort_by_key(signature_name);
    for env in envs {
        match checker.signature(&env).await {
            Ok(result) => signatures.push(result),
            Err(reason) => skipped.push(Skipped {
                signature: signature_name(&env),
                reason,
                unproven: true,
            }),
        }
    }
    Ok(SemanticDiff {
        signatures,
        skipped,
        millis: 0,
    })
}

/// One cvc5 process for all the queries, each limited to `timeout_ms`.
fn start_solver(
    path: &Path,
    timeout_ms: u64,
) -> Result<CedarSymCompiler<LocalSolver>, SemanticError> {
    let failed = |reason: String| SemanticError::SolverStart {
        path: path.to_owned(),
        reason,
    };
    let solver = LocalSolver::from_command(
        tokio::process::Command::new(path)
            .args(["--lang", "smt"])
            .arg(format!("--tlimit-per={timeout_ms}")),
    )
    .map_err(|e| failed(e.to_string()))?;
    CedarSymCompiler::new(solver).map_err(|e| failed(e.to_string()))
}

fn removed_signatures(old: &Schema, new: &Schema) -> Vec<Skipped> {
    signatures(old)
        .difference(&signatures(new))
        .map(|signature| Skipped {
            signature: signature.clone(),
            reason: "not in NEW's schema: NEW has no such request".to_owned(),
            unproven: false,
        })
        .collect()
}

/// Both policy sets compiled for one signature under NEW's schema.
fn compile_pair(
    old_policies: &PolicySet,
    new: &Model,
    env: &RequestEnv,
) -> Result<(CompiledPolicySet, CompiledPolicySet), String> {
    let old_set = CompiledPolicySet::compile(old_policies, env, &new.schema)
        .map_err(|e| format!("OLD's policies do not compile under NEW's schema: {e}"))?;
    let new_set = CompiledPolicySet::compile(&new.policies, env, &new.schema)
        .map_err(|e| format!("NEW's policies do not compile: {e}"))?;
    Ok((old_set, new_set))
}

/// A direction the proof found empty, unless `side`'s policies in `erring` (those
/// the other side lacks) can err: an error denies in the sidecar, so it is then
/// unproven.
fn unless_erring(side: &str, erring: Result<Vec<String>, String>) -> Direction {
    let reason = match erring {
        Ok(erring) if erring.is_empty() => return Direction::None,
        Ok(erring) => format!(
            "{side}'s {} can raise an evaluation error on such a request, which denies in \
             the sidecar (fail-closed) and which the proof, on Cedar's rule (a policy in \
             error is skipped), does not see: not proven",
            erring
                .iter()
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(why) => format!("the solver could not settle {why}"),
    };
    Direction::Unknown { reason }
}

fn verdict(widening: &Direction, narrowing: &Direction) -> Verdict {
    match (widening, narrowing) {
        (Direction::Unknown { .. }, _) | (_, Direction::Unknown { .. }) => Verdict::Unknown,
        (Direction::None, Direction::None) => Verdict::Equivalent,
        (Direction::None, Direction::Found { .. }) => Verdict::Narrows,
        (Direction::Found { .. }, Direction::None) => Verdict::Widens,
        (Direction::Found { .. }, Direction::Found { .. }) => Verdict::WidensAndNarrows,
    }
}

/// Which side the example should be allowed by.
#[derive(Clone, Copy)]
enum Towards {
    New,
    Old,
}

impl Towards {
    /// Whether OLD's and NEW's decisions differ this way.
    fn differs(self, old_allows: bool, new_allows: bool) -> bool {
        match self {
            Towards::New => new_allows && !old_allows,
            Towards::Old => old_allows && !new_allows,
        }
    }
}

/// The solver and the two sides it compares.
struct Checker<'a> {
    compiler: CedarSymCompiler<LocalSolver>,
    old: &'a Model,
    new: &'a Model,
    old_groups: ActionGroups,
    new_groups: ActionGroups,
}

impl<'a> Checker<'a> {
    /// Both directions for one signature; `Err` says why it cannot be compared.
    async fn signature(&mut self, env: &RequestEnv) -> Result<SignatureDiff, String> {
        let regrouped = groups::regrouping(&self.old_groups, &self.new_groups, env.action());
        let old_policies = self.old_policies(env, regrouped.as_deref())?;
        let (old_set, new_set) = compile_pair(&old_policies, self.new, env)?;
        let started = std::time::Instant::now();
        let widening = self
            .direction(&new_set, &old_set, &old_policies, Towards::New)
            .await;
        let narrowing = self
            .direction(&old_set, &new_set, &old_policies, Towards::Old)
            .await;
        // An evaluation error denies in the sidecar; the proof, on Cedar's rule (a
        // policy in error is skipped), does not see it. A policy both sides hold as
        // it is errs on both for the same request, so both deny: only OLD's
        // policies that NEW lacks can deny what NEW allows, and NEW's that OLD lacks
        // what OLD allows.
        let new: &Model = self.new;
        let widening = self
            .unless_side_errs(widening, ("OLD", &old_policies), &new.policies, env)
            .await;
        let narrowing = self
            .unless_side_errs(narrowing, ("NEW", &new.policies), &old_policies, env)
            .await;
        Ok(SignatureDiff {
            signature: signature_name(env),
            verdict: verdict(&widening, &narrowing),
            widening,
            narrowing,
            regrouped,
            millis: started.elapsed().as_millis(),
        })
    }

    /// OLD's policies for the signature: as they are, or, when NEW's schema
    /// regroups its action, pinned to the action under OLD's groups.
    fn old_policies(
        &self,
        env: &RequestEnv,
        regrouped: Option<&str>,
    ) -> Result<Cow<'a, PolicySet>, String> {
        let old: &'a Model = self.old;
        let Some(regrouped) = regrouped else {
            return Ok(Cow::Borrowed(&old.policies));
        };
        groups::pin(&old.policies, env.action(), &self.old_groups)
            .map(Cow::Owned)
            .map_err(|e| {
                format!(
                    "{regrouped}, and OLD's policies cannot be read with OLD's groups \
                     (they are compiled under NEW's): {e}"
                )
            })
    }

    /// `direction`, unless it is proven empty and a policy of `side` (named, and
    /// its policies) that `other` lacks can err ([`unless_erring`]); an example or
    /// an unknown stays as it is.
    async fn unless_side_errs(
        &mut self,
        direction: Direction,
        (name, side): (&str, &PolicySet),
        other: &PolicySet,
        env: &RequestEnv,
    ) -> Direction {
        if !matches!(direction, Direction::None) {
            return direction;
        }
        let erring = self.may_err(side, other, env).await;
        unless_erring(name, erring)
    }

    /// The policies of `side` that `other` does not hold as they are and that can
    /// raise an evaluation error on a request of `env` (an overflow, an extension
    /// function's error…), by id; `Err` names a policy the solver could not settle.
    async fn may_err(
        &mut self,
        side: &PolicySet,
        other: &PolicySet,
        env: &RequestEnv,
    ) -> Result<Vec<String>, String> {
        let mut erring = Vec::new();
        for policy in side.policies() {
            if other
                .policy(policy.id())
                .is_some_and(|same| same.to_string() == policy.to_string())
            {
                continue;
            }
            let unsettled = |why: String| format!("whether `{}` can err: {why}", policy.id());
            let compiled = CompiledPolicy::compile(policy, env, &self.new.schema)
                .map_err(|e| unsettled(e.to_string()))?;
            match self.compiler.check_never_errors_opt(&compiled).await {
                Ok(true) => {}
                Ok(false) => erring.push(policy.id().to_string()),
                Err(e) => return Err(unsettled(e.to_string())),
            }
        }
        Ok(erring)
    }

    /// Looks for a request `allowing` allows and `denying` denies; an example is
    /// decided again with `old_policies` (OLD's, as compared) and NEW's.
    async fn direction(
        &mut self,
        allowing: &CompiledPolicySet,
        denying: &CompiledPolicySet,
        old_policies: &PolicySet,
        towards: Towards,
    ) -> Direction {
        match self
            .compiler
            .check_implies_with_counterexample_opt(allowing, denying)
            .await
        {
            Ok(None) => Direction::None,
            Ok(Some(env)) => Direction::Found {
                example: Box::new(self.confirm(&env, old_policies, towards)),
            },
            Err(SymccError::SolverUnknown) => Direction::Unknown {
                reason: "solver answered unknown (time limit per query reached)".to_owned(),
            },
            Err(error) => Direction::Unknown {
                reason: format!("solver failed: {error}"),
            },
        }
    }

    /// Decides the counterexample with the real authorizer on both sides.
    fn confirm(&self, env: &Env, old_policies: &PolicySet, towards: Towards) -> Example {
        // The example was made under NEW's schema, so both sides' entities are
        // built under it, each with its own side's derived tags. When a side would
        // not store them, both are decided on the solver's entities.
        let schema = &self.new.schema;
        let stored = as_stored(&env.entities, self.old, schema)
            .and_then(|old| Ok((old, as_stored(&env.entities, self.new, schema)?)));
        let (old_entities, new_entities) = match &stored {
            Ok((old, new)) => (
                old.as_ref().unwrap_or(&env.entities),
                new.as_ref().unwrap_or(&env.entities),
            ),
            Err(_) => (&env.entities, &env.entities),
        };
        let (old_allows, old_reasons) = decide(old_policies, &env.request, old_entities);
        let (new_allows, new_reasons) = decide(&self.new.policies, &env.request, new_entities);
        let differs = towards.differs(old_allows, new_allows);
        let note = match &stored {
            Err(why) => Some(format!("the sidecar would not store these entities: {why}")),
            Ok((None, None)) => None,
            Ok(_) if differs => None,
            Ok(_) => {
                let on_solvers_tags = towards.differs(
                    decide(old_policies, &env.request, &env.entities).0,
                    decide(&self.new.policies, &env.request, &env.entities).0,
                );
                on_solvers_tags.then(|| {
                    "the difference rests on derived tags the solver chose freely: recounted \
                     over these entities, as the sidecar stores them, both sides decide alike \
                     (a store with more entities may still differ)"
                        .to_owned()
                })
            }
        };
        let confirmed = differs && note.is_none();
        let uid = |u: Option<&cedar_policy::EntityUid>| u.map(ToString::to_string);
        let principal = uid(env.request.principal()).unwrap_or_default();
        let resource = uid(env.request.resource()).unwrap_or_default();
        Example {
            old_decision: outcome(old_allows),
            new_decision: outcome(new_allows),
            confirmed,
            note,
            old_reasons,
            new_reasons,
            action: uid(env.request.action()).unwrap_or_default(),
            context: env
                .request
                .context()
                .and_then(|c| c.to_json_value().ok())
                .unwrap_or(Value::Null),
            entities: ordered_entities(new_entities, &env.request),
            principal,
            resource,
        }
    }
}

fn outcome(allowed: bool) -> &'static str {
    if allowed {
        "Allow"
    } else {
        "Deny"
    }
}

/// The example's entities as `model`'s sidecar would store them under `schema`
/// (the one the example was made under): the tags `model`'s derivation rules
/// compute recounted over them, in place of the solver's. `None` when the model
/// derives nothing.
fn as_stored(
    entities: &Entities,
    model: &Model,
    schema: &Schema,
) -> Result<Option<Entities>, String> {
    if model.rules.counts.is_empty() {
        return Ok(None);
    }
    let derived = &model.derived;
    let mut json: Vec<Value> = Vec::new();
    for entity in entities.iter() {
        let type_name = entity.uid().type_name().clone();
        // Action entities come from the schema.
        if type_name.basename() == "Action" {
            continue;
        }
        let mut entity = entity.to_json_value().map_err(|e| e.to_string())?;
        if derived.referenced.contains(&type_name) || derived.ancestors.contains(&type_name) {
            if let Some(object) = entity.as_object_mut() {
                object.remove("tags");
            }
        }
        json.push(entity);
    }
    let mut json = Value::Array(json);
    crate::derive::apply(&model.rules, derived, &mut json).map_err(|e| e.to_string())?;
    Entities::from_json_value(json, Some(schema))
        .map(Some)
        .map_err(|e| crate::diagnostic::describe(&e))
}

/// Cedar's decision with the sidecar's fail-closed rule, and its reasons.
fn decide(policies: &PolicySet, request: &Request, entities: &Entities) -> (bool, Vec<String>) {
    let response = Authorizer::new().is_authorized(request, policies, entities);
    let errors = response.diagnostics().errors().count();
    let allowed = response.decision() == cedar_policy::Decision::Allow && errors == 0;
    let reasons = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    (allowed, reasons)
}

/// The entities the request reaches (from principal, resource and context, through
/// attributes, tags and parents) as JSON: principal first, then resource, then the
/// rest in the order they are reached. Actions are left out.
fn ordered_entities(entities: &Entities, request: &Request) -> Vec<Value> {
    let mut by_uid: BTreeMap<(String, String), Value> = entities
        .iter()
        .filter(|e| e.uid().type_name().basename() != "Action")
        .filter_map(|e| {
            let json = e.to_json_value().ok()?;
            Some((uid_key(&json["uid"])?, json))
        })
        .collect();
    let mut pending: VecDeque<(String, String)> = [request.principal(), request.resource()]
        .into_iter()
        .flatten()
        .map(|uid| (uid.type_name().to_string(), uid.id().unescaped().to_owned()))
        .collect();
    if let Some(context) = request.context().and_then(|c| c.to_json_value().ok()) {
        references(&context, &mut pending);
    }
    let mut ordered = Vec::new();
    while let Some(key) = pending.pop_front() {
        if let Some(entity) = by_uid.remove(&key) {
            references(&entity["attrs"], &mut pending);
            references(&entity["tags"], &mut pending);
            if let Some(parents) = entity["parents"].as_array() {
                pending.extend(parents.iter().filter_map(uid_key));
            }
            ordered.push(entity);
        }
    }
    ordered
}

/// `(type, id)` of an entity reference `{"type", "id"}` or `{"__entity": …}`.
fn uid_key(uid: &Value) -> Option<(String, String)> {
    let uid = uid.get("__entity").unwrap_or(uid);
    Some((
        uid["type"].as_str()?.to_owned(),
        uid["id"].as_str()?.to_owned(),
    ))
}

/// Every entity reference inside an attribute value.
fn references(value: &Value, found: &mut VecDeque<(String, String)>) {
    match value {
        Value::Object(map) if map.contains_key("__entity") => found.extend(uid_key(value)),
        Value::Object(map) => map.values().for_each(|v| references(v, found)),
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found() -> Direction {
        Direction::Found {
            example: Box::new(Example {
                old_decision: "Deny",
                new_decision: "Allow",
                confirmed: true,
                note: None,
                old_reasons: Vec::new(),
                new_reasons: Vec::new(),
                principal: String::new(),
                action: String::new(),
                resource: String::new(),
                context: Value::Null,
                entities: Vec::new(),
            }),
        }
    }

    fn unknown() -> Direction {
        Direction::Unknown {
            reason: "time limit".to_owned(),
        }
    }

    #[test]
    fn the_verdict_follows_both_directions_and_unknown_wins() {
        let table = [
            (Direction::None, Direction::None, Verdict::Equivalent),
            (found(), Direction::None, Verdict::Widens),
            (Direction::None, found(), Verdict::Narrows),
            (found(), found(), Verdict::WidensAndNarrows),
            (unknown(), Direction::None, Verdict::Unknown),
            (found(), unknown(), Verdict::Unknown),
        ];
        for (widening, narrowing, expected) in table {
            assert_eq!(verdict(&widening, &narrowing), expected);
        }
    }
}

//! Policy slicing: only the policies that can apply to a request are evaluated.
//!
//! Cedar evaluates every policy of the set it is given, so a set of 10k per-partner
//! rules would cost every request 10k scope checks. At load, each policy is filed
//! in buckets keyed by what its scope pins down: the action (one bucket per action
//! the scope admits, action groups expanded), and the entity its principal and
//! resource scopes name (`==`, `in` or `is … in`), or none. A request can only be
//! matched by policies whose principal entity is the principal or one of its
//! ancestors, and likewise for the resource; so a decision looks up those few
//! buckets and evaluates each, and never touches the rest.
//!
//! Within a bucket, the policies whose condition opens with a test of the same
//! attribute path against a string (the profile permits: `context.habilitation.
//! profile == "T2" && …`) are filed by that string (see [`crate::guard`]): a request
//! evaluates the bucket's other policies and only those filed under the value the
//! path has for it (all of them when the path cannot be evaluated safely). The path
//! is read by the borrowing evaluator where it answers, which remembers it for the
//! guarded conditions that read it again.
//!
//! Each policy is compiled once, at load, into the expression Cedar itself evaluates
//! for it (its scope constraints, its `when` clauses and its negated `unless`
//! clauses: Cedar's `condition()`), less the scope tests its bucket guarantees, and a
//! decision evaluates those expressions with one Cedar evaluator (where
//! `eval_expression` would set one up, cloning the request, for each policy).
//! Cedar's `Authorizer` would rebuild each policy's condition and gather a response
//! of hash sets on every call (about a quarter of a decision's time), and testing the
//! action and unconstrained scopes of every policy again cost another quarter of
//! what was left (BENCHMARKS.md).
//!
//! Combining the results is Cedar's own rule: Deny when a forbid is satisfied (the
//! reason lists the satisfied forbids), else Allow when a permit is (the reason lists
//! them), else Deny; every evaluation error is kept, worded as Cedar words it. A
//! property test checks that this equals Cedar's `Authorizer` on the whole set:
//! decision, determining policies and error messages.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Effect, Entities, EntityUid, EvalResult, Policy, PolicySet,
    PrincipalConstraint, Request, ResourceConstraint,
};
use cedar_policy_core::ast::{self, EntityUIDEntry, PrincipalOrResourceConstraint as Scope};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;
use serde_json::Value;

use crate::api::cut_message;
use crate::fast_eval;
use crate::fast_hash::{HashMap, HashSet};
use crate::guard::{AttrPath, Guard};
use crate::slice::policy_literals;
use crate::stored::StoredIndex;

/// The entity a principal or resource scope names, if any.
type ScopeKey = Option<EntityUid>;

/// The policies of one bucket, with the entity literals they mention.
pub struct Bucket {
    /// Policies evaluated for every request that reaches the bucket.
    unguarded: Vec<Rule>,
    /// Policies guarded by the bucket's most common guard path, by literal.
    guarded: Option<Guarded>,
    pub literals: Box<[EntityUid]>,
}

struct Guarded {
    path: AttrPath,
    /// The path, for the borrowing evaluator, which reads it once a request (the
    /// guarded conditions read it again).
    fast: Option<fast_eval::Condition>,
    by_literal: HashMap<String, Vec<Rule>>,
}

/// A policy compiled for evaluation.
#[derive(Clone)]
struct Rule {
    id: String,
    forbid: bool,
    /// What Cedar evaluates for the policy: scope constraints, `when` clauses and
    /// negated `unless` clauses, in Cedar's order.
    condition: ast::Expr,
    /// The same, for the borrowing evaluator (when it handles every part of it).
    fast: Option<Arc<fast_eval::Condition>>,
}

impl Rule {
    fn compile(policy: &Policy, json: &Value) -> Result<Self, IndexError> {
        let cannot = |reason: String| IndexError::Compile {
            id: policy.id().to_string(),
            reason,
        };
        let est: cedar_policy_core::est::Policy =
            serde_json::from_value(json.clone()).map_err(|e| cannot(e.to_string()))?;
        let template = est
            .try_into_ast_policy_or_template(None)
            .map_err(|e| cannot(e.to_string()))?;
        let condition = bucket_condition(&template);
        Ok(Self {
            id: policy.id().to_string(),
            forbid: policy.effect() == Effect::Forbid,
            fast: fast_eval::Condition::compile(&condition).map(Arc::new),
            condition,
        })
    }

    /// Whether the policy is satisfied by the request, or Cedar's error for it: the
    /// borrowing evaluator's answer when it has one, else Cedar's evaluator's. An
    /// error quoting the request (an entity's id) is cut as error messages are
    /// ([`cut_message`]): each policy that reads a missing entity quotes its id, and
    /// the answer and the log would otherwise repeat a long id once a policy.
    fn satisfied<'e>(
        &self,
        fast: Option<&fast_eval::Env<'_>>,
        cedar: impl FnOnce() -> &'e Evaluator<'e>,
    ) -> Result<bool, String> {
        if let (Some(condition), Some(env)) = (&self.fast, fast) {
            if let Some(satisfied) = condition.satisfied(env) {
                return Ok(satisfied);
            }
        }
        match cedar()
            .interpret(&self.condition, &ast::SlotEnv::new())
            .map(EvalResult::from)
        {
            Ok(EvalResult::Bool(satisfied)) => Ok(satisfied),
            Ok(other) => Err(cut_message(format!(
                "error while evaluating policy `{}`: condition evaluated to {other}, not a boolean",
                self.id
            ))),
            Err(error) => {
                // Cedar's wording (`AuthorizationError::PolicyEvaluationError`).
                let mut text = format!("error while evaluating policy `{}`: {error}", self.id);
                if let Some(help) = miette::Diagnostic::help(&error) {
                    text.push_str(&format!(" ({help})"));
                }
                Err(cut_message(text))
            }
        }
    }
}

/// Cedar's condition for a policy, less the scope tests that reaching the policy
/// through its bucket already passed: the action (a bucket holds one action's
/// policies), `principal in X` and `resource in X` (the bucket is keyed by X, which
/// the request's entity is or descends from), and unconstrained scopes. Each is a
/// `true` at the head of Cedar's `&&` chain, and a scope test never errors, so the
/// rest evaluates as it would in Cedar (the slicing property test checks it).
/// `==`, `is` and `is … in` tests stay.
fn bucket_condition(template: &ast::Template) -> ast::Expr {
    let kept = |scope: &Scope, test: ast::Expr| match scope {
        Scope::Any | Scope::In(_) => None,
        Scope::Eq(_) | Scope::Is(_) | Scope::IsIn(..) => Some(test),
    };
    let principal = template.principal_constraint();
    let resource = template.resource_constraint();
    let body = template
        .non_scope_constraints()
        .cloned()
        .unwrap_or_else(|| ast::Expr::val(true));
    [
        kept(principal.as_inner(), principal.as_expr()),
        kept(resource.as_inner(), resource.as_expr()),
    ]
    .into_iter()
    .flatten()
    .rev()
    .fold(body, |rest, test| ast::Expr::and(test, rest))
}

/// A policy with what the index reads from it once: its compiled form, its guard
/// and its entity literals.
struct Filed {
    rule: Rule,
    policy: Policy,
    guard: Option<Guard>,
    literals: std::collections::HashSet<EntityUid>,
}

impl Filed {
    fn new(policy: &Policy) -> Result<Self, IndexError> {
        let json = policy.to_json().map_err(|e| IndexError::Compile {
            id: policy.id().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            rule: Rule::compile(policy, &json)?,
            policy: policy.clone(),
            guard: Guard::of(&json),
            literals: policy_literals(&json),
        })
    }
}

impl Bucket {
    /// Files `members`, guarded by the path most of their guards test.
    fn new(members: &[&Filed]) -> Self {
        let literals: HashSet<&EntityUid> = members.iter().flat_map(|m| &m.literals).collect();
        let path = most_common_path(members.iter().filter_map(|m| m.guard.as_ref()));
        let mut unguarded = Vec::new();
        let mut by_literal: HashMap<String, Vec<Rule>> = HashMap::default();
        for member in members {
            let rules = match (&member.guard, &path) {
                (Some(guard), Some(path)) if guard.path == *path => {
                    by_literal.entry(guard.literal.clone()).or_default()
                }
                _ => &mut unguarded,
            };
            rules.push(member.rule.clone());
        }
        Self {
            unguarded,
            guarded: path.map(|path| Guarded {
                fast: fast_eval::Condition::compile(&path.expr()),
                path,
                by_literal,
            }),
            literals: literals.into_iter().cloned().collect(),
        }
    }

    /// The policies of this bucket that can apply to `request`.
    fn applicable<'a>(
        &'a self,
        request: &Request,
        entities: &Entities,
        fast: Option<&fast_eval::Env<'_>>,
    ) -> impl Iterator<Item = &'a Rule> {
        let guarded: Vec<&[Rule]> = match &self.guarded {
            None => Vec::new(),
            Some(guarded) => match guarded.value(request, entities, fast) {
                Some(Some(value)) => guarded
                    .by_literal
                    .get(&*value)
                    .map(Vec::as_slice)
                    .into_iter()
                    .collect(),
                Some(None) => Vec::new(),
                None => guarded.by_literal.values().map(Vec::as_slice).collect(),
            },
        };
        self.unguarded.iter().chain(guarded.into_iter().flatten())
    }
}

impl Guarded {
    /// The guarded path's value for the request: `Some(Some(text))` for a string,
    /// `Some(None)` for any other value (no guarded policy applies), `None` when it
    /// cannot be evaluated safely (every guarded policy is then evaluated). Read by
    /// the borrowing evaluator where it answers, else by [`AttrPath::resolve`].
    fn value<'v>(
        &self,
        request: &Request,
        entities: &Entities,
        fast: Option<&fast_eval::Env<'v>>,
    ) -> Option<Option<Cow<'v, str>>> {
        let string = |value: &'v ast::Value| match &value.value {
            ast::ValueKind::Lit(ast::Literal::String(text)) => Some(Cow::Borrowed(text.as_str())),
            _ => None,
        };
        let read_fast = self.fast.as_ref().zip(fast);
        match read_fast.and_then(|(path, env)| path.path_value(env)) {
            Some(value) => Some(string(value)),
            None => self
                .path
                .resolve(request, entities)
                .map(|value| match value {
                    EvalResult::String(text) => Some(Cow::Owned(text)),
                    _ => None,
                }),
        }
    }
}

/// The path the most guards test (the smallest such path on a tie).
fn most_common_path<'a>(guards: impl Iterator<Item = &'a Guard>) -> Option<AttrPath> {
    let mut counts: HashMap<&AttrPath, usize> = HashMap::default();
    for guard in guards {
        *counts.entry(&guard.path).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|(a, m), (b, n)| m.cmp(n).then_with(|| b.cmp(a)))
        .map(|(path, _)| path.clone())
}

/// The buckets of one action.
#[derive(Default)]
struct ActionBuckets {
    by_scope: HashMap<(ScopeKey, ScopeKey), Bucket>,
    /// Whether any bucket names a principal entity (else ancestors need no lookup).
    principal_scoped: bool,
    resource_scoped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("policy `{0}` is template-linked; policy slicing supports static policies only")]
    TemplateLinked(String),
    #[error("policy `{id}` cannot be compiled for evaluation: {reason}")]
    Compile { id: String, reason: String },
}

pub struct PolicyIndex {
    by_action: HashMap<EntityUid, ActionBuckets>,
}

impl PolicyIndex {
    /// Files every policy; `actions` are the schema's actions with their groups as
    /// ancestors (in `entities`).
    pub fn build(
        policies: &PolicySet,
        actions: &[EntityUid],
        entities: &Entities,
    ) -> Result<Self, IndexError> {
        let mut filed = Vec::new();
        for policy in policies.policies() {
            if !policy.is_static() {
                return Err(IndexError::TemplateLinked(policy.id().to_string()));
            }
            filed.push(Filed::new(policy)?);
        }
        let mut members: HashMap<EntityUid, HashMap<(ScopeKey, ScopeKey), Vec<&Filed>>> =
            HashMap::default();
        for member in &filed {
            let key = (principal_key(&member.policy), resource_key(&member.policy));
            for action in admitted_actions(&member.policy, actions, entities) {
                members
                    .entry(action)
                    .or_default()
                    .entry(key.clone())
                    .or_default()
                    .push(member);
            }
        }
        let by_action = members
            .into_iter()
            .map(|(action, buckets)| (action, action_buckets(buckets)))
            .collect();
        Ok(Self { by_action })
    }

    /// The buckets that can apply to `action` on `principal` and `resource`, given
    /// each one's ancestors (looked up only when some bucket of the action needs them).
    pub fn select<'a>(
        &'a self,
        action: &EntityUid,
        principal: &EntityUid,
        resource: &EntityUid,
        ancestors: impl Fn(&EntityUid) -> Vec<EntityUid>,
    ) -> Vec<&'a Bucket> {
        let Some(buckets) = self.by_action.get(action) else {
            return Vec::new();
        };
        let keys = |uid: &EntityUid, scoped: bool| -> Vec<ScopeKey> {
            let mut keys = vec![None];
            if scoped {
                keys.push(Some(uid.clone()));
                keys.extend(ancestors(uid).into_iter().map(Some));
            }
            keys
        };
        let principal_keys = keys(principal, buckets.principal_scoped);
        let resource_keys = keys(resource, buckets.resource_scoped);
        let mut selected = Vec::new();
        for p in &principal_keys {
            for r in &resource_keys {
                selected.extend(buckets.by_scope.get(&(p.clone(), r.clone())));
            }
        }
        selected
    }
}

fn action_buckets(members: HashMap<(ScopeKey, ScopeKey), Vec<&Filed>>) -> ActionBuckets {
    let mut buckets = ActionBuckets::default();
    for ((principal, resource), policies) in members {
        buckets.principal_scoped |= principal.is_some();
        buckets.resource_scoped |= resource.is_some();
        buckets
            .by_scope
            .insert((principal, resource), Bucket::new(&policies));
    }
    buckets
}

fn principal_key(policy: &Policy) -> ScopeKey {
    match policy.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
        PrincipalConstraint::In(uid)
        | PrincipalConstraint::Eq(uid)
        | PrincipalConstraint::IsIn(_, uid) => Some(uid),
    }
}

fn resource_key(policy: &Policy) -> ScopeKey {
    match policy.resource_constraint() {
        ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
        ResourceConstraint::In(uid)
        | ResourceConstraint::Eq(uid)
        | ResourceConstraint::IsIn(_, uid) => Some(uid),
    }
}

/// The schema actions a policy's action scope admits (groups expanded).
fn admitted_actions(policy: &Policy, actions: &[EntityUid], entities: &Entities) -> Vec<EntityUid> {
    match policy.action_constraint() {
        ActionConstraint::Any => actions.to_vec(),
        ActionConstraint::Eq(action) => vec![action],
        ActionConstraint::In(groups) => actions
            .iter()
            .filter(|action| {
                groups
                    .iter()
                    .any(|g| g == *action || entities.is_ancestor_of(g, action))
            })
            .cloned()
            .collect(),
    }
}

/// The request as Cedar's evaluator takes it (what `eval_expression` clones from the
/// request for each expression).
fn evaluated_request(request: &Request) -> ast::Request {
    let entry = |uid: Option<&EntityUid>| {
        uid.map_or_else(EntityUIDEntry::unknown, |uid| {
            EntityUIDEntry::known(uid.as_ref().clone(), None)
        })
    };
    ast::Request::new_unchecked(
        entry(request.principal()),
        entry(request.action()),
        entry(request.resource()),
        request.context().map(|context| context.as_ref().clone()),
    )
}

/// A decision over several buckets, by Cedar's rule.
pub struct Combined {
    pub allowed: bool,
    /// Policies that determined the decision, by id.
    pub reason: Vec<String>,
    /// Evaluation errors, by the id of their policy.
    pub errors: Vec<String>,
}

/// Evaluates the policies of each bucket that can apply, and combines the results as
/// Cedar would on the union of the buckets. `found` are entities of `entities` the
/// caller has already looked up (the principal and the resource, say); `stored`,
/// an index of `entities` when they are a snapshot's stored entities.
pub fn authorize(
    buckets: &[&Bucket],
    request: &Request,
    entities: &Entities,
    found: &[&ast::Entity],
    stored: Option<&StoredIndex>,
) -> Combined {
    let evaluated = evaluated_request(request);
    let fast = fast_eval::Env::new(&evaluated, entities.as_ref())
        .map(|env| env.knowing(found).indexed_by(stored));
    // Cedar's evaluator is set up only for a policy the borrowing one leaves to it.
    let evaluator = OnceCell::new();
    let cedar = || {
        evaluator.get_or_init(|| {
            Evaluator::new(
                evaluated.clone(),
                entities.as_ref(),
                Extensions::all_available(),
            )
        })
    };
    let mut forbids = Vec::new();
    let mut permits = Vec::new();
    let mut errors = Vec::new();
    for rule in buckets
        .iter()
        .flat_map(|bucket| bucket.applicable(request, entities, fast.as_ref()))
    {
        match rule.satisfied(fast.as_ref(), cedar) {
            Ok(true) if rule.forbid => forbids.push(rule.id.clone()),
            Ok(true) => permits.push(rule.id.clone()),
            Ok(false) => {}
            Err(error) => errors.push(error),
        }
    }
    // In policy-id order: the buckets' guarded lists come out of a hash map, whose
    // order changes from one process to the next, and the contract (and the log)
    // should not.
    forbids.sort_unstable();
    permits.sort_unstable();
    errors.sort_unstable();
    if !forbids.is_empty() {
        Combined {
            allowed: false,
            reason: forbids,
            errors,
        }
    } else {
        Combined {
            allowed: !permits.is_empty(),
            reason: permits,
            errors,
        }
    }
}

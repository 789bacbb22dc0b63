//! A borrowing evaluator for compiled policy conditions, tried before Cedar's.
//!
//! Cedar's evaluator clones every value it reads (an entity's attribute, the
//! context, each literal of the policy) and moves large `Result`s through each
//! step: about 0.6 µs a policy for conditions such as `principal.suspended`
//! (BENCHMARKS.md). This one reads entities and the context in place and builds
//! the policy's constant parts (literals, literal sets, extension values such as
//! `duration("730d")`) once, at load.
//!
//! **Contract.** [`Condition::satisfied`] answers `Some(b)` only where Cedar's
//! evaluator answers `Ok(Bool(b))` for the same condition on the same request and
//! entities. Wherever Cedar would raise an error (a missing attribute or entity, a
//! type error, an overflow…), meet an unknown, or where an expression form is not
//! handled here, it answers `None`, and the caller evaluates the policy with Cedar,
//! whose answer and error message are then the ones reported. So this evaluator
//! never words an error and never decides a case it is unsure of.
//!
//! A request reads each attribute path of a variable (`context.habilitation.
//! profile`, `principal.partner.kind`) once, however many of its conditions read
//! it: paths are numbered for the whole process at compile time, and [`Env`]
//! remembers each one's value (or that Cedar errors on it) for the request.
//!
//! Each operator is computed by the function Cedar's evaluator calls for it where
//! Cedar makes that function public (`binary_relation`, `binary_arith`,
//! `unary_app`, `Set::contains` / `is_subset` / `is_disjoint`, extension
//! functions, `Pattern::wildcard_match`, `Entity::is_descendant_of`); variables,
//! attribute access, `has`, `in`, tags and short-circuits follow Cedar's
//! `Evaluator::partial_interpret_internal` case by case. Three exceptions, for
//! speed: `==` in a condition is `binary_relation`'s value equality, compared
//! without building its boolean `Value`; `contains` on a set of at most 8 members
//! (`SCAN_AT_MOST`), and `in` on an entity with at most that many ancestors,
//! compare each member in turn (membership by the same equality) instead of
//! hashing. A property test holds the two
//! evaluators equal on random expressions over random entities (`tests` below),
//! and the slicing property test compares whole decisions with Cedar's
//! `Authorizer`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use cedar_policy_core::ast::{
    BinaryOp, Context, Entity, EntityType, EntityUID, EntityUIDEntry, Expr, ExprKind,
    ExtensionFunction, Literal, PartialValue, Pattern, Request, UnaryOp, Value, ValueKind, Var,
};
use cedar_policy_core::entities::{Dereference, Entities};
use cedar_policy_core::evaluator::{binary_arith, binary_relation, unary_app};
use cedar_policy_core::extensions::Extensions;
use smol_str::SmolStr;

use crate::stored::StoredIndex;

/// Deeper conditions are left to Cedar.
const MAX_DEPTH: usize = 64;

/// Cedar's evaluator errors when less than this much stack remains at any level
/// of its recursion (`REQUIRED_STACK_SPACE` in `cedar_policy_core::evaluator`).
const CEDAR_REQUIRED_STACK: usize = 100 * 1024;

/// More stack than Cedar's evaluator uses per level of nesting (≈4 KiB in a
/// release build, ≈50 KiB in a debug one, measured on nested `!`).
const STACK_PER_LEVEL: usize = 64 * 1024;

/// A policy condition prepared for this evaluator: its nodes in one array, each
/// after its operands (so a condition's nodes share a few cache lines, which the
/// server's request path, sharing its cores with its callers, finds cold).
pub struct Condition {
    nodes: Box<[Node]>,
    /// The literals and folded constant parts, apart so that nodes stay small.
    constants: Box<[Value]>,
    /// The attribute paths read from a variable, each step after its base.
    steps: Box<[Step]>,
    /// Levels of nesting, the root included.
    depth: usize,
}

/// A node's place in its condition's `nodes`.
type NodeId = u32;

enum Node {
    /// A literal, or a set or extension call whose parts are all constants: its
    /// place in `constants`.
    Const(u32),
    Var(Var),
    If([NodeId; 3]),
    And([NodeId; 2]),
    Or([NodeId; 2]),
    Unary(UnaryOp, NodeId),
    Binary(BinaryOp, [NodeId; 2]),
    Call(&'static ExtensionFunction, Box<[NodeId]>),
    /// An attribute of an expression that is not a variable's path.
    GetAttr(NodeId, SmolStr),
    /// A variable's attribute path (`context.habilitation.profile`): its place in
    /// `steps`.
    Path(u32),
    HasAttr(NodeId, SmolStr),
    Like(NodeId, Pattern),
    Is(NodeId, Box<EntityType>),
    Set(Box<[NodeId]>),
}

/// One step of a variable's attribute path: `attr` of the variable or of the
/// path before it.
struct Step {
    path: PathId,
    base: Base,
    attr: SmolStr,
}

#[derive(Clone, Copy)]
enum Base {
    Var(Var),
    /// The step before, by its place in `steps`.
    Step(u32),
}

/// A variable's attribute path, numbered for the whole process: a request reads
/// each path once, whichever of its conditions read it (the profile and contract
/// rules each read `context.habilitation` or `principal.partner` again), and any
/// condition can be evaluated with any [`Env`].
type PathId = u32;

/// A path by its base (a variable, or the path it extends) and last attribute.
#[derive(PartialEq, Eq, Hash)]
enum PathBase {
    Var(Var),
    Path(PathId),
}

/// Every path compiled so far. It grows only with paths never compiled before: a
/// reload of the same policies adds none.
static PATH_IDS: LazyLock<Mutex<HashMap<(PathBase, SmolStr), PathId>>> =
    LazyLock::new(Mutex::default);

/// The number of the path `base.attr`, given the first time it is compiled.
fn path_id(base: PathBase, attr: &SmolStr) -> PathId {
    let mut ids = PATH_IDS.lock().unwrap_or_else(PoisonError::into_inner);
    let next = PathId::try_from(ids.len())
        .ok()
        .filter(|id| *id != PathMemo::FREE)
        .expect("fewer than 2^32 - 1 attribute paths");
    *ids.entry((base, attr.clone())).or_insert(next)
}

impl Condition {
    /// The condition, if every part of it is a form this evaluator handles.
    pub fn compile(expr: &Expr) -> Option<Self> {
        let mut builder = Builder::default();
        let (_, depth) = builder.compile(expr, MAX_DEPTH)?;
        Some(Self {
            nodes: builder.nodes.into(),
            constants: builder.constants.into(),
            steps: builder.steps.into(),
            depth,
        })
    }

    /// Whether the condition holds, when Cedar would say so without error. Left to
    /// Cedar when the thread's stack might be too short for Cedar to evaluate it
    /// (Cedar would then answer with an error, not a value).
    pub fn satisfied(&self, env: &Env<'_>) -> Option<bool> {
        let needed = CEDAR_REQUIRED_STACK + self.depth * STACK_PER_LEVEL;
        // Like Cedar, assume enough stack when the remaining space is unknown.
        if stacker::remaining_stack().is_some_and(|left| left < needed) {
            return None;
        }
        self.boolean(self.root(), env)
    }

    /// The value of a condition that is a variable's attribute path alone (a
    /// guard's path), read once a request as every path is; `None` where Cedar would
    /// raise an error, or when the condition is not such a path.
    pub fn path_value<'e>(&self, env: &Env<'e>) -> Option<&'e Value> {
        match self.nodes[self.root() as usize] {
            Node::Path(at) => self.step(at, env),
            _ => None,
        }
    }

    /// The last node: each node comes after its operands.
    fn root(&self) -> NodeId {
        (self.nodes.len() - 1) as NodeId
    }
}

/// One request's variables, and the entities it is decided on.
pub struct Env<'e> {
    principal: Value,
    action: Value,
    resource: Value,
    context: Value,
    /// The context's attributes, read in place by paths.
    context_fields: &'e BTreeMap<SmolStr, Value>,
    entities: &'e Entities,
    /// The paths read so far for this request, and their values (`None` where
    /// Cedar errors).
    paths: RefCell<PathMemo<'e>>,
    /// The entities looked up so far for this request, and what was found. A
    /// request's conditions read a handful of entities (the principal, its partner,
    /// the file, its Caf) many times, and each look-up in `entities` hashes the uid
    /// (SipHash: a quarter of this evaluator's time before this memo). Most reads
    /// go through the same `Arc` (the request's principal, an attribute of a stored
    /// entity), which is found by address; a uid read through a new `Arc` is found
    /// by value, then remembered under that `Arc` too.
    seen: RefCell<Vec<(Arc<EntityUID>, Option<&'e Entity>)>>,
    /// `entities` by uid, when they are a snapshot's stored entities: an entity
    /// not in the memo under its `Arc` is then found there, without SipHash.
    stored: Option<&'e StoredIndex>,
}

impl<'e> Env<'e> {
    /// The request's variables as Cedar's evaluator sees them; `None` when one is
    /// unknown or the context is missing or partial (Cedar then evaluates alone).
    pub fn new(request: &'e Request, entities: &'e Entities) -> Option<Self> {
        let uid = |entry: &EntityUIDEntry| match entry {
            EntityUIDEntry::Known { euid, .. } => Some(Value::new(euid.clone(), None)),
            EntityUIDEntry::Unknown { .. } => None,
        };
        let record = match request.context()? {
            Context::Value(record) => record,
            Context::RestrictedResidual(_) => return None,
        };
        Some(Self {
            principal: uid(request.principal())?,
            action: uid(request.action())?,
            resource: uid(request.resource())?,
            context: Value::new(ValueKind::Record(record.clone()), None),
            context_fields: record,
            entities,
            paths: RefCell::new(PathMemo::new()),
            seen: RefCell::new(Vec::with_capacity(8)),
            stored: None,
        })
    }

    /// Finds entities through `stored`, which must index `entities` itself (the
    /// snapshot's stored entities, when the request brings none).
    pub fn indexed_by(self, stored: Option<&'e StoredIndex>) -> Self {
        Self { stored, ..self }
    }

    /// Starts the entity memo with `found`, entities of `entities` already looked
    /// up; the principal and the resource are remembered under the request's own
    /// `Arc`, which every read of `principal` or `resource` then finds first.
    pub fn knowing(self, found: &[&'e Entity]) -> Self {
        for &entity in found {
            let in_request = [&self.principal, &self.resource]
                .into_iter()
                .find_map(|value| match &value.value {
                    ValueKind::Lit(Literal::EntityUID(uid)) if **uid == *entity.uid() => {
                        Some(Arc::clone(uid))
                    }
                    _ => None,
                });
            let uid = in_request.unwrap_or_else(|| Arc::new(entity.uid().clone()));
            self.seen.borrow_mut().push((uid, Some(entity)));
        }
        self
    }

    /// The value of path `path`, read with `read` the first time.
    fn remembered(
        &self,
        path: PathId,
        read: impl FnOnce() -> Option<&'e Value>,
    ) -> Option<&'e Value> {
        if let Some(value) = self.paths.borrow().get(path) {
            return value;
        }
        // `read` may read the path's base, so the memo is not borrowed meanwhile.
        let value = read();
        self.paths.borrow_mut().insert(path, value);
        value
    }

    /// `entities.entity(uid)`, remembered for the request (a residual, which
    /// this evaluator never answers on, is not).
    fn entity(&self, uid: &Arc<EntityUID>) -> Dereference<'e, Entity> {
        let found = |entity: Option<&'e Entity>| {
            entity.map_or(Dereference::NoSuchEntity, Dereference::Data)
        };
        // The memo holds each `Arc` it was given, so an address it holds cannot have
        // been reused for another uid.
        let same_arc = self
            .seen
            .borrow()
            .iter()
            .find(|(seen, _)| Arc::ptr_eq(seen, uid))
            .map(|(_, e)| *e);
        if let Some(entity) = same_arc {
            return found(entity);
        }
        let entity = match self.stored {
            Some(stored) => stored.get(uid),
            None => match self.seen_equal(uid) {
                Some(entity) => entity,
                None => match self.entities.entity(uid) {
                    Dereference::Data(entity) => Some(entity),
                    Dereference::NoSuchEntity => None,
                    residual @ Dereference::Residual(_) => return residual,
                },
            },
        };
        self.seen.borrow_mut().push((Arc::clone(uid), entity));
        found(entity)
    }

    /// What the memo remembers for a uid equal to `uid`, read through another `Arc`.
    fn seen_equal(&self, uid: &EntityUID) -> Option<Option<&'e Entity>> {
        self.seen
            .borrow()
            .iter()
            .find(|(seen, _)| **seen == *uid)
            .map(|(_, e)| *e)
    }

    fn var(&self, var: Var) -> &Value {
        match var {
            Var::Principal => &self.principal,
            Var::Action => &self.action,
            Var::Resource => &self.resource,
            Var::Context => &self.context,
        }
    }
}

/// A request's path values by path id: a table of open addressing (the ids are
/// dense, so `id % slots` spreads them), sized by the paths the request reads and
/// not by how many the policy set has. A consultation reads 24 distinct paths, which
/// the first table holds without growing; a scan of the paths read had cost about
/// 1.7k instructions a consultation (BENCHMARKS.md, session 40).
struct PathMemo<'e> {
    /// `(id, value)`, or [`PathMemo::FREE`] in `id`; a power of two long.
    slots: Vec<(PathId, Option<&'e Value>)>,
    used: usize,
}

impl<'e> PathMemo<'e> {
    const FREE: PathId = PathId::MAX;
    const FIRST_SLOTS: usize = 64;

    fn new() -> Self {
        Self {
            slots: vec![(Self::FREE, None); Self::FIRST_SLOTS],
            used: 0,
        }
    }

    /// The value remembered for `path` (`Some(None)`: Cedar errors on it).
    fn get(&self, path: PathId) -> Option<Option<&'e Value>> {
        let (at, found) = self.slot_of(path);
        found.then(|| self.slots[at].1)
    }

    fn insert(&mut self, path: PathId, value: Option<&'e Value>) {
        // At most three quarters full, so that every search meets a free slot.
        if 4 * (self.used + 1) > 3 * self.slots.len() {
            self.grow();
        }
        let (at, found) = self.slot_of(path);
        if !found {
            self.used += 1;
        }
        self.slots[at] = (path, value);
    }

    /// Where `path` is, or the free slot where it would go; and whether it is there.
    fn slot_of(&self, path: PathId) -> (usize, bool) {
        debug_assert_ne!(path, Self::FREE, "fewer than 2^32 - 1 attribute paths");
        let mask = self.slots.len() - 1;
        let mut at = path as usize & mask;
        loop {
            match self.slots[at].0 {
                id if id == path => return (at, true),
                Self::FREE => return (at, false),
                _ => at = (at + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let slots = vec![(Self::FREE, None); 2 * self.slots.len()];
        let old = std::mem::replace(&mut self.slots, slots);
        self.used = 0;
        for (path, value) in old.into_iter().filter(|(id, _)| *id != Self::FREE) {
            self.insert(path, value);
        }
    }
}

/// Lays out a condition's nodes, operands first.
#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    constants: Vec<Value>,
    steps: Vec<Step>,
}

impl Builder {
    /// Adds the nodes of `expr`; its root's id and its levels of nesting.
    fn compile(&mut self, expr: &Expr, depth_left: usize) -> Option<(NodeId, usize)> {
        let depth_left = depth_left.checked_sub(1)?;
        let first = (self.nodes.len(), self.constants.len());
        let mut deepest = 0;
        let mut sub = |builder: &mut Self, e: &Expr| {
            let (id, depth) = builder.compile(e, depth_left)?;
            deepest = deepest.max(depth);
            Some(id)
        };
        let node = match expr.expr_kind() {
            ExprKind::Lit(literal) => {
                return Some((self.constant(Value::from(literal.clone())), 1))
            }
            ExprKind::Var(var) => Node::Var(*var),
            ExprKind::If {
                test_expr,
                then_expr,
                else_expr,
            } => Node::If([
                sub(self, test_expr)?,
                sub(self, then_expr)?,
                sub(self, else_expr)?,
            ]),
            ExprKind::And { left, right } => Node::And([sub(self, left)?, sub(self, right)?]),
            ExprKind::Or { left, right } => Node::Or([sub(self, left)?, sub(self, right)?]),
            ExprKind::UnaryApp { op, arg } => Node::Unary(*op, sub(self, arg)?),
            ExprKind::BinaryApp { op, arg1, arg2 } => {
                Node::Binary(*op, [sub(self, arg1)?, sub(self, arg2)?])
            }
            ExprKind::ExtensionFunctionApp { fn_name, args } => Node::Call(
                Extensions::all_available().func(fn_name).ok()?,
                args.iter()
                    .map(|arg| sub(self, arg))
                    .collect::<Option<_>>()?,
            ),
            ExprKind::GetAttr { expr, attr } => {
                let operand = sub(self, expr)?;
                self.path(operand, attr)
                    .unwrap_or_else(|| Node::GetAttr(operand, attr.clone()))
            }
            ExprKind::HasAttr { expr, attr } => Node::HasAttr(sub(self, expr)?, attr.clone()),
            ExprKind::Like { expr, pattern } => Node::Like(sub(self, expr)?, pattern.clone()),
            ExprKind::Is { expr, entity_type } => {
                Node::Is(sub(self, expr)?, Box::new(entity_type.clone()))
            }
            ExprKind::Set(items) => Node::Set(
                items
                    .iter()
                    .map(|item| sub(self, item))
                    .collect::<Option<_>>()?,
            ),
            ExprKind::Slot(_)
            | ExprKind::Unknown(_)
            | ExprKind::ExtHasAttr { .. }
            | ExprKind::Record(_) => return None,
        };
        let id = match self.fold_constant(&node) {
            Some(value) => {
                // The operands' nodes are the ones added since `first`.
                self.nodes.truncate(first.0);
                self.constants.truncate(first.1);
                self.constant(value)
            }
            None => self.push(node),
        };
        Some((id, deepest + 1))
    }

    /// `operand.attr` as a path step, when the operand (the last node added) is a
    /// variable or a path; the operand's node then gives way to the step's.
    fn path(&mut self, operand: NodeId, attr: &SmolStr) -> Option<Node> {
        if operand as usize + 1 != self.nodes.len() {
            return None;
        }
        let (base, path_base) = match self.nodes[operand as usize] {
            Node::Var(var) => (Base::Var(var), PathBase::Var(var)),
            Node::Path(at) => (Base::Step(at), PathBase::Path(self.steps[at as usize].path)),
            _ => return None,
        };
        self.nodes.pop();
        self.steps.push(Step {
            path: path_id(path_base, attr),
            base,
            attr: attr.clone(),
        });
        Some(Node::Path((self.steps.len() - 1) as u32))
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    fn constant(&mut self, value: Value) -> NodeId {
        self.constants.push(value);
        self.push(Node::Const((self.constants.len() - 1) as u32))
    }

    /// A set or extension call of constants, evaluated once (as Cedar would evaluate
    /// it on every request). A call that fails is kept, so that Cedar reports it.
    fn fold_constant(&self, node: &Node) -> Option<Value> {
        let constants = |items: &[NodeId]| -> Option<Vec<Value>> {
            items
                .iter()
                .map(|item| match self.nodes[*item as usize] {
                    Node::Const(at) => Some(self.constants[at as usize].clone()),
                    _ => None,
                })
                .collect()
        };
        match node {
            Node::Set(items) => Some(Value::set(constants(items)?, None)),
            Node::Call(function, args) => match function.call(&constants(args)?).ok()? {
                PartialValue::Value(value) => Some(value),
                PartialValue::Residual(_) => None,
            },
            _ => None,
        }
    }
}

impl Condition {
    fn eval<'a>(&'a self, id: NodeId, env: &'a Env<'_>) -> Option<Cow<'a, Value>> {
        let value = match &self.nodes[id as usize] {
            Node::Const(at) => Cow::Borrowed(&self.constants[*at as usize]),
            Node::Var(var) => Cow::Borrowed(env.var(*var)),
            Node::If([test, then, otherwise]) => {
                return if self.boolean(*test, env)? {
                    self.eval(*then, env)
                } else {
                    self.eval(*otherwise, env)
                };
            }
            Node::And(_)
            | Node::Or(_)
            | Node::Unary(UnaryOp::Not, _)
            | Node::HasAttr(..)
            | Node::Like(..)
            | Node::Is(..) => boolean(self.boolean(id, env)?),
            Node::Unary(op, arg) => {
                Cow::Owned(unary_app(*op, self.eval(*arg, env)?.into_owned(), None).ok()?)
            }
            Node::Binary(op, [left, right]) => {
                let left = self.eval(*left, env)?;
                let right = self.eval(*right, env)?;
                return binary(*op, &left, &right, env);
            }
            Node::Call(function, args) => {
                let args: Vec<Value> = args
                    .iter()
                    .map(|arg| self.eval(*arg, env).map(Cow::into_owned))
                    .collect::<Option<_>>()?;
                match function.call(&args).ok()? {
                    PartialValue::Value(value) => Cow::Owned(value),
                    PartialValue::Residual(_) => return None,
                }
            }
            Node::Path(at) => Cow::Borrowed(self.step(*at, env)?),
            Node::GetAttr(expr, attr) => {
                return match self.eval(*expr, env)? {
                    Cow::Borrowed(value) => attribute(value, attr, env).map(Cow::Borrowed),
                    Cow::Owned(value) => attribute(&value, attr, env).cloned().map(Cow::Owned),
                }
            }
            Node::Set(items) => Cow::Owned(Value::set(
                items
                    .iter()
                    .map(|item| self.eval(*item, env).map(Cow::into_owned))
                    .collect::<Option<Vec<_>>>()?,
                None,
            )),
        };
        Some(value)
    }

    /// The node's value when it is a boolean (`None` where Cedar errors, as
    /// [`Condition::eval`]); the boolean operators and `==` are computed here without
    /// building a `Value` for each step.
    fn boolean(&self, id: NodeId, env: &Env<'_>) -> Option<bool> {
        match &self.nodes[id as usize] {
            // Cedar: the right side is evaluated (and must be a boolean) only when
            // the left does not decide.
            Node::And([left, right]) => {
                Some(self.boolean(*left, env)? && self.boolean(*right, env)?)
            }
            Node::Or([left, right]) => {
                Some(self.boolean(*left, env)? || self.boolean(*right, env)?)
            }
            Node::Unary(UnaryOp::Not, arg) => Some(!self.boolean(*arg, env)?),
            // Cedar's `==` is value equality (`binary_relation`), which cannot fail
            // once both sides have values; `!=` is its negation.
            Node::Binary(BinaryOp::Eq, [left, right]) => {
                Some(*self.eval(*left, env)? == *self.eval(*right, env)?)
            }
            Node::If([test, then, otherwise]) => {
                if self.boolean(*test, env)? {
                    self.boolean(*then, env)
                } else {
                    self.boolean(*otherwise, env)
                }
            }
            Node::HasAttr(expr, attr) => has_attribute(&*self.eval(*expr, env)?, attr, env),
            Node::Like(expr, pattern) => match &self.eval(*expr, env)?.value {
                ValueKind::Lit(Literal::String(text)) => Some(pattern.wildcard_match(text)),
                _ => None,
            },
            Node::Is(expr, entity_type) => {
                Some(as_entity(&*self.eval(*expr, env)?)?.entity_type() == &**entity_type)
            }
            _ => as_bool(&*self.eval(id, env)?),
        }
    }
}

impl Condition {
    /// A path step's value, read once a request.
    fn step<'e>(&self, at: u32, env: &Env<'e>) -> Option<&'e Value> {
        let step = &self.steps[at as usize];
        env.remembered(step.path, || match step.base {
            Base::Var(Var::Context) => env.context_fields.get(&step.attr),
            Base::Var(var) => entity_attribute(as_entity(env.var(var))?, &step.attr, env),
            Base::Step(base) => attribute(self.step(base, env)?, &step.attr, env),
        })
    }
}

fn boolean<'a>(value: bool) -> Cow<'a, Value> {
    Cow::Owned(value.into())
}

fn as_bool(value: &Value) -> Option<bool> {
    match value.value {
        ValueKind::Lit(Literal::Bool(b)) => Some(b),
        _ => None,
    }
}

fn as_entity(value: &Value) -> Option<&Arc<EntityUID>> {
    match &value.value {
        ValueKind::Lit(Literal::EntityUID(uid)) => Some(uid),
        _ => None,
    }
}

fn as_set(value: &Value) -> Option<&cedar_policy_core::ast::Set> {
    match &value.value {
        ValueKind::Set(set) => Some(set),
        _ => None,
    }
}

/// `value.attr` of a record or a stored entity (Cedar errors on anything else).
fn attribute<'v, 'e: 'v>(value: &'v Value, attr: &str, env: &Env<'e>) -> Option<&'v Value> {
    match &value.value {
        ValueKind::Record(record) => record.get(attr),
        ValueKind::Lit(Literal::EntityUID(uid)) => entity_attribute(uid, attr, env),
        _ => None,
    }
}

/// `uid.attr` of a stored entity.
fn entity_attribute<'e>(uid: &Arc<EntityUID>, attr: &str, env: &Env<'e>) -> Option<&'e Value> {
    match env.entity(uid) {
        Dereference::Data(entity) => match entity.get(attr)? {
            PartialValue::Value(value) => Some(value),
            PartialValue::Residual(_) => None,
        },
        Dereference::NoSuchEntity | Dereference::Residual(_) => None,
    }
}

/// `value has attr`: an entity that does not exist has no attribute (Cedar's rule).
fn has_attribute(value: &Value, attr: &str, env: &Env<'_>) -> Option<bool> {
    match &value.value {
        ValueKind::Record(record) => Some(record.contains_key(attr)),
        ValueKind::Lit(Literal::EntityUID(uid)) => match env.entity(uid) {
            Dereference::Data(entity) => Some(entity.get(attr).is_some()),
            Dereference::NoSuchEntity => Some(false),
            Dereference::Residual(_) => None,
        },
        _ => None,
    }
}

fn binary<'a>(
    op: BinaryOp,
    left: &Value,
    right: &Value,
    env: &'a Env<'_>,
) -> Option<Cow<'a, Value>> {
    let value: Value = match op {
        BinaryOp::Eq | BinaryOp::Less | BinaryOp::LessEq => {
            binary_relation(op, left, right, Extensions::all_available()).ok()?
        }
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
            binary_arith(op, left.clone(), right.clone(), None).ok()?
        }
        BinaryOp::In => hierarchy_in(left, right, env)?.into(),
        BinaryOp::Contains => set_contains(as_set(left)?, right).into(),
        BinaryOp::ContainsAll => as_set(right)?.is_subset(as_set(left)?).into(),
        BinaryOp::ContainsAny => (!as_set(left)?.is_disjoint(as_set(right)?)).into(),
        BinaryOp::GetTag => {
            let (uid, tag) = (as_entity(left)?, as_string(right)?);
            let Dereference::Data(entity) = env.entity(uid) else {
                return None;
            };
            return match entity.get_tag(tag)? {
                PartialValue::Value(value) => Some(Cow::Borrowed(value)),
                PartialValue::Residual(_) => None,
            };
        }
        BinaryOp::HasTag => {
            let (uid, tag) = (as_entity(left)?, as_string(right)?);
            match env.entity(uid) {
                Dereference::Data(entity) => entity.get_tag(tag).is_some().into(),
                Dereference::NoSuchEntity => false.into(),
                Dereference::Residual(_) => return None,
            }
        }
    };
    Some(Cow::Owned(value))
}

fn as_string(value: &Value) -> Option<&SmolStr> {
    match &value.value {
        ValueKind::Lit(Literal::String(text)) => Some(text),
        _ => None,
    }
}

/// Below this many members, a set or an entity's ancestors are searched by
/// comparing each member: cheaper than the SipHash of Cedar's hash sets (a
/// string-keyed uid or literal hashes in a few hundred instructions).
const SCAN_AT_MOST: usize = 8;

/// `set.contains(value)`, as Cedar's `Set::contains` answers it.
fn set_contains(set: &cedar_policy_core::ast::Set, value: &Value) -> bool {
    if set.len() <= SCAN_AT_MOST {
        set.iter().any(|member| member == value)
    } else {
        set.contains(value)
    }
}

/// `entity.is_descendant_of(ancestor)`, comparing each ancestor when there are few.
fn descends_from(entity: &Entity, ancestor: &EntityUID) -> bool {
    let mut ancestors = entity.ancestors();
    match ancestors.size_hint() {
        (_, Some(count)) if count <= SCAN_AT_MOST => ancestors.any(|a| a == ancestor),
        _ => entity.is_descendant_of(ancestor),
    }
}

/// `left in right`: `right` an entity or a set of entities (all of them entities,
/// or Cedar errors); true when `left` is one of them or descends from one. An
/// entity that does not exist is only `in` itself.
fn hierarchy_in(left: &Value, right: &Value, env: &Env<'_>) -> Option<bool> {
    let uid = as_entity(left)?;
    let entity = match env.entity(uid) {
        Dereference::Data(entity) => Some(entity),
        Dereference::NoSuchEntity => None,
        Dereference::Residual(_) => return None,
    };
    let within = |ancestor: &Arc<EntityUID>| {
        uid == ancestor || entity.is_some_and(|e| descends_from(e, ancestor))
    };
    match &right.value {
        ValueKind::Lit(Literal::EntityUID(ancestor)) => Some(within(ancestor)),
        ValueKind::Set(set) => {
            let ancestors: Vec<&Arc<EntityUID>> =
                set.iter().map(as_entity).collect::<Option<_>>()?;
            Some(ancestors.into_iter().any(within))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::str::FromStr;

    use cedar_policy_core::ast::SlotEnv;
    use cedar_policy_core::evaluator::Evaluator;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::json;

    use super::*;

    /// Entities with attributes of every kind, tags, a hierarchy, and references
    /// to an entity that does not exist.
    fn entities() -> cedar_policy::Entities {
        let datetime = |text: &str| json!({"__extn": {"fn": "datetime", "arg": text}});
        cedar_policy::Entities::from_json_value(
            json!([
                {"uid": {"type": "E", "id": "a"}, "parents": [{"type": "E", "id": "b"}],
                 "attrs": {"flag": true, "n": 7, "s": "xyz", "set": [1, 2, 3],
                           "names": ["x", "T2"], "rec": {"x": 1, "e": {"__entity": {"type": "E", "id": "b"}}},
                           "ent": {"__entity": {"type": "E", "id": "b"}},
                           "gone": {"__entity": {"type": "E", "id": "missing"}},
                           "dt": datetime("2024-05-01")},
                 "tags": {"t": 3, "u": "T2"}},
                {"uid": {"type": "E", "id": "b"}, "parents": [{"type": "G", "id": "g"}],
                 "attrs": {"flag": false, "n": -2, "s": "T2", "set": [],
                           "ents": [{"__entity": {"type": "G", "id": "g"}}]}},
                {"uid": {"type": "G", "id": "g"}, "parents": [], "attrs": {}},
                {"uid": {"type": "G", "id": "a"}, "parents": [{"type": "G", "id": "g"}],
                 "attrs": {"flag": false, "n": 100, "s": "other"}},
                {"uid": {"type": "Action", "id": "act"}, "parents": [], "attrs": {}}
            ]),
            None,
        )
        .unwrap()
    }

    fn request() -> Request {
        let uid = |text: &str| EntityUIDEntry::known(EntityUID::from_str(text).unwrap(), None);
        let context = cedar_policy::Context::from_json_value(
            json!({"flag": false, "n": 9223372036854775807i64, "s": "x", "names": ["x", "y"],
                   "who": {"__entity": {"type": "E", "id": "a"}},
                   "dt": {"__extn": {"fn": "datetime", "arg": "2024-01-01"}},
                   "rec": {"x": 2, "inner": {"flag": true}}}),
            None,
        )
        .unwrap();
        Request::new_unchecked(
            uid(r#"E::"a""#),
            uid(r#"Action::"act""#),
            uid(r#"E::"b""#),
            Some(context.as_ref().clone()),
        )
    }

    fn leaf() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "principal",
            "action",
            "resource",
            "context",
            "true",
            "false",
            "0",
            "1",
            "-3",
            "9223372036854775807",
            "\"x\"",
            "\"T2\"",
            "\"\"",
            r#"E::"a""#,
            r#"E::"b""#,
            r#"E::"missing""#,
            r#"G::"g""#,
            // Same id as `E::"a"`, another type: a look-up must tell them apart.
            r#"G::"a""#,
            "[1, 2]",
            "[\"x\"]",
            "[]",
            r#"[E::"b", G::"g"]"#,
            "{x: 1}",
            r#"datetime("2024-01-01")"#,
            r#"duration("1d")"#,
            r#"decimal("1.5")"#,
            r#"ip("10.0.0.1")"#,
            r#"datetime("not a date")"#,
        ])
        .prop_map(str::to_owned)
    }

    const ATTRS: &[&str] = &[
        "flag", "n", "s", "set", "names", "rec", "e", "x", "ent", "ents", "gone", "who", "dt",
        "inner", "nope",
    ];

    /// Random expressions over every operator Cedar has, often ill-typed.
    fn expression() -> impl Strategy<Value = String> {
        leaf().prop_recursive(5, 48, 3, |inner| {
            let attr = prop::sample::select(ATTRS);
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("(({a}) && ({b}))")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("(({a}) || ({b}))")),
                inner.clone().prop_map(|a| format!("(!({a}))")),
                inner.clone().prop_map(|a| format!("(-({a}))")),
                (
                    inner.clone(),
                    inner.clone(),
                    prop::sample::select(vec![
                        "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "in",
                    ])
                )
                    .prop_map(|(a, b, op)| format!("(({a}) {op} ({b}))")),
                (
                    inner.clone(),
                    inner.clone(),
                    prop::sample::select(vec![
                        "contains",
                        "containsAll",
                        "containsAny",
                        "getTag",
                        "hasTag",
                        "offset",
                        "durationSince",
                        "lessThan",
                        "isInRange",
                    ])
                )
                    .prop_map(|(a, b, method)| format!("({a}).{method}({b})")),
                (
                    inner.clone(),
                    prop::sample::select(vec!["isEmpty", "toDate", "isIpv4"])
                )
                    .prop_map(|(a, method)| format!("({a}).{method}()")),
                (inner.clone(), attr.clone()).prop_map(|(a, attr)| format!("({a}).{attr}")),
                (inner.clone(), attr).prop_map(|(a, attr)| format!("(({a}) has {attr})")),
                inner.clone().prop_map(|a| format!("(({a}) like \"x*\")")),
                inner.clone().prop_map(|a| format!("(({a}) is E)")),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(a, b, c)| format!("(if ({a}) then ({b}) else ({c}))")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("[{a}, {b}]")),
            ]
        })
    }

    /// Conditions shaped like policies': boolean tests of every kind (some of which
    /// still error: a missing entity or attribute, an overflow) joined by `&&`,
    /// `||`, `!`, `if` and `==`.
    fn condition() -> impl Strategy<Value = String> {
        let test = prop::sample::select(vec![
            "principal.flag",
            "context.flag",
            "resource.flag",
            "context.rec.inner.flag",
            "principal has nope",
            "principal.rec has e",
            r#"principal in G::"g""#,
            // Same id as the principal's ancestor `G::"g"`, another type.
            r#"principal in E::"g""#,
            r#"principal in [E::"g", E::"missing"]"#,
            r#"resource in [G::"g", E::"a"]"#,
            "principal.set.contains(2)",
            "principal.names.containsAll(context.names)",
            r#"context.names.containsAny(["y"])"#,
            "principal.n < context.n",
            "context.dt < principal.dt",
            r#"principal.hasTag("t")"#,
            r#"E::"missing".hasTag("t")"#,
            r#"resource.hasTag("t")"#,
            r#"principal.getTag("t") == 3"#,
            r#"principal.getTag("u") == "T2""#,
            r#"principal.s like "x*""#,
            r#"principal.s like "*z""#,
            r#"context.s like "x""#,
            "principal.ent is E",
            r#"principal in [E::"b", 1]"#,
            r#"principal in [1, E::"b"]"#,
            "context has nope",
            "context has rec",
            "context.rec has x",
            "context.rec has nope",
            "principal.rec has nope",
            "context.rec.inner has flag",
            "-(-9223372036854775807 - 1) > 0",
            "principal in principal",
            r#"principal in E::"a""#,
            r#"E::"missing" in [E::"missing"]"#,
            r#"E::"missing" in G::"g""#,
            "principal.set.containsAll([1, 2])",
            "[1, 2].containsAll(principal.set)",
            "principal.set.containsAny([3, 4])",
            "resource.set.isEmpty()",
            "context.who == principal",
            r#"principal.rec.e in G::"g""#,
            r#"principal.gone in G::"g""#,
            "principal.gone has n",
            "principal.gone.n == 1",
            r#"context.dt.durationSince(principal.dt) <= duration("1d")"#,
            "principal.n + 1 == 8",
            "context.n + 1 > 0",
            "resource.ents.contains(G::\"g\")",
            r#"decimal("1.5").lessThan(decimal("2.0"))"#,
            r#"ip("10.0.0.1").isInRange(ip("10.0.0.0/8"))"#,
            "action == Action::\"act\"",
            r#"["password", "x"].contains(context.s)"#,
            "principal.nope",
            "context.s",
        ])
        .prop_map(str::to_owned);
        test.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} == {b})")),
                inner.clone().prop_map(|a| format!("!({a})")),
                (inner.clone(), inner.clone(), inner)
                    .prop_map(|(a, b, c)| format!("(if {a} then {b} else {c})")),
            ]
        })
    }

    /// Whenever the borrowing evaluator answers, Cedar's evaluator answers the same
    /// value without error; and it answers often enough for that to mean something.
    #[test]
    fn answers_only_as_cedar_answers() {
        let entities = entities();
        let request = request();
        let env = Env::new(&request, entities.as_ref()).unwrap();
        let cedar = Evaluator::new(
            request.clone(),
            entities.as_ref(),
            Extensions::all_available(),
        );
        let (answered, cedar_ok) = (Cell::new(0u32), Cell::new(0u32));
        let mut runner = TestRunner::new(Config::with_cases(4000));
        runner
            .run(&prop_oneof![expression(), condition()], |text| {
                let Ok(expr) = Expr::from_str(&text) else {
                    return Ok(());
                };
                let by_cedar = cedar.interpret(&expr, &SlotEnv::new());
                cedar_ok.set(cedar_ok.get() + u32::from(by_cedar.is_ok()));
                let Some(condition) = Condition::compile(&expr) else {
                    return Ok(());
                };
                if let Some(value) = condition.eval(condition.root(), &env) {
                    answered.set(answered.get() + 1);
                    prop_assert_eq!(Some(&*value), by_cedar.as_ref().ok(), "{}", text);
                }
                if let Some(satisfied) = condition.boolean(condition.root(), &env) {
                    let value = Value::from(satisfied);
                    prop_assert_eq!(Some(&value), by_cedar.as_ref().ok(), "{}", text);
                }
                Ok(())
            })
            .unwrap();
        // Most random expressions are ill-typed (Cedar errors); of those Cedar
        // evaluates, the borrowing evaluator must answer nearly all (it leaves only
        // records and `has a.b` to Cedar).
        assert!(
            cedar_ok.get() > 1000,
            "too few well-typed cases: {}",
            cedar_ok.get()
        );
        assert!(
            answered.get() * 10 >= cedar_ok.get() * 9,
            "answered {} of the {} cases Cedar evaluated",
            answered.get(),
            cedar_ok.get()
        );
    }

    /// A condition is left to Cedar on a thread whose remaining stack Cedar's
    /// evaluator might run short of (it would answer with an error). The depth is
    /// read against the stack the thread really has: glibc may hand a new thread a
    /// larger cached stack than the one asked for.
    #[test]
    fn leaves_to_cedar_what_the_stack_might_not_hold() {
        let (entities, request) = (entities(), request());
        let nested_negations = |depth: usize| {
            let text = format!("{}true{}", "!(".repeat(depth), ")".repeat(depth));
            let condition = Condition::compile(&Expr::from_str(&text).unwrap()).unwrap();
            condition.satisfied(&Env::new(&request, entities.as_ref()).unwrap())
        };
        let on_stack_of = |bytes: usize, depth: &(dyn Fn(usize) -> usize + Sync)| {
            std::thread::scope(|scope| {
                std::thread::Builder::new()
                    .stack_size(bytes)
                    .spawn_scoped(scope, || {
                        let remaining = stacker::remaining_stack().unwrap();
                        nested_negations(depth(remaining))
                    })
                    .unwrap()
                    .join()
                    .unwrap()
            })
        };
        assert_eq!(on_stack_of(8 << 20, &|_| 20), Some(true));
        let beyond = |remaining: usize| remaining / STACK_PER_LEVEL + 1;
        assert_eq!(on_stack_of(1 << 20, &beyond), None);
    }

    /// The path memo finds every path it was given, with its value (an error's
    /// `None` included), through collisions and growth, and no other path.
    #[test]
    fn the_path_memo_finds_each_path_remembered_and_no_other() {
        let values: Vec<Value> = (0..4).map(Value::from).collect();
        let remembered = |id: PathId| (!id.is_multiple_of(5)).then(|| &values[id as usize % 4]);
        let mut memo = PathMemo::new();
        // Ids 64 apart meet in the first table; 400 ids make it grow four times.
        let ids: Vec<PathId> = (0..200).flat_map(|n| [n * 64, n * 7 + 1]).collect();
        for (n, &id) in ids.iter().enumerate() {
            memo.insert(id, remembered(id));
            assert_eq!(memo.get(id), Some(remembered(id)), "just after {n} inserts");
        }
        for &id in &ids {
            assert_eq!(memo.get(id), Some(remembered(id)), "path {id}");
        }
        let unknown = (0..10_000).filter(|id| !ids.contains(id));
        assert!(unknown.into_iter().all(|id| memo.get(id).is_none()));
        memo.insert(64, None);
        assert_eq!(memo.get(64), Some(None), "a value is replaced");
    }

    /// One request's look-ups are remembered; two entities with the same id and
    /// different types stay apart, and a missing entity stays missing.
    #[test]
    fn remembered_entities_are_told_apart_by_type_and_id() {
        let (entities, request) = (entities(), request());
        let env = Env::new(&request, entities.as_ref()).unwrap();
        let value = |text: &str| {
            let condition = Condition::compile(&Expr::from_str(text).unwrap()).unwrap();
            condition.eval(condition.root(), &env).map(Cow::into_owned)
        };
        for _ in 0..2 {
            assert_eq!(value(r#"E::"a".n"#), Some(Value::from(7)));
            assert_eq!(value(r#"G::"a".n"#), Some(Value::from(100)));
            assert_eq!(value(r#"E::"a" in G::"g""#), Some(Value::from(true)));
            assert_eq!(value(r#"E::"missing" has n"#), Some(Value::from(false)));
        }
    }

    /// Requests with an unknown entity or without a context are Cedar's alone.
    #[test]
    fn partial_requests_are_left_to_cedar() {
        let entities = entities();
        let known = |text: &str| EntityUIDEntry::known(EntityUID::from_str(text).unwrap(), None);
        let (principal, action) = (known(r#"E::"a""#), known(r#"Action::"act""#));
        let without_context =
            Request::new_unchecked(principal.clone(), action.clone(), known(r#"E::"b""#), None);
        assert!(Env::new(&without_context, entities.as_ref()).is_none());
        let unknown_resource = Request::new_unchecked(
            principal,
            action,
            EntityUIDEntry::unknown(),
            Some(Context::empty()),
        );
        assert!(Env::new(&unknown_resource, entities.as_ref()).is_none());
    }

    /// The bundled policies are all in the forms the borrowing evaluator handles, and
    /// shallow enough for a server thread's stack, so Cedar's evaluator is only set
    /// up for a policy whose condition errors.
    #[test]
    fn every_bundled_policy_compiles() {
        let text: String = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
            .unwrap()
            .map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap())
            .collect();
        let policies = cedar_policy_core::parser::parse_policyset(&text).unwrap();
        let mut count = 0;
        for policy in policies.policies() {
            let condition = policy.condition();
            let compiled = Condition::compile(&condition);
            // Shallow enough to be evaluated here on a 2 MiB thread (tokio's).
            let needed = compiled
                .as_ref()
                .map(|c| CEDAR_REQUIRED_STACK + c.depth * STACK_PER_LEVEL);
            assert!(
                needed.is_some_and(|bytes| bytes < 1 << 20),
                "{}: {condition}",
                policy.id()
            );
            count += 1;
        }
        assert!(count > 30, "{count} policies");
    }
}

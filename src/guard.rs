//! Guards: the test a policy's condition opens with, when it compares one attribute
//! path of the request with a string literal (`context.habilitation.profile == "T2"`).
//!
//! Cedar evaluates a condition left to right and stops at the first false conjunct.
//! So when a policy's first condition is a `when` whose leftmost conjunct is
//! `path == "literal"`, and the path evaluates (without error) to anything but that
//! literal, the policy is not satisfied and raises no error: skipping it changes
//! nothing. [`AttrPath::resolve`] evaluates the path as Cedar would, and answers
//! `None` whenever Cedar could fail or the path leaves what this module follows
//! (then every guarded policy is evaluated, and Cedar reports what it finds).

use cedar_policy::{Entities, EvalResult, Request};
use cedar_policy_core::ast::{Expr, Var};
use serde_json::Value;

use crate::slice::stored_attr;

/// The request variable a path starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Root {
    Principal,
    Resource,
    Context,
}

/// A request variable followed by at least one attribute: `principal.partner.kind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrPath {
    root: Root,
    attrs: Vec<String>,
}

/// A policy's guard: its condition opens with `path == literal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub path: AttrPath,
    pub literal: String,
}

impl Guard {
    /// The guard of a policy, from its JSON form, if its condition opens with one.
    pub fn of(policy_json: &Value) -> Option<Self> {
        let first = policy_json.get("conditions")?.as_array()?.first()?;
        if first.get("kind")?.as_str()? != "when" {
            return None;
        }
        let mut test = first.get("body")?;
        while let Some(and) = test.get("&&") {
            test = and.get("left")?;
        }
        let equal = test.get("==")?;
        let (left, right) = (equal.get("left")?, equal.get("right")?);
        let (path, literal) = match (AttrPath::from_est(left), string_literal(right)) {
            (Some(path), Some(literal)) => (path, literal),
            _ => (AttrPath::from_est(right)?, string_literal(left)?),
        };
        Some(Self { path, literal })
    }
}

/// A string literal in Cedar's JSON policy format.
fn string_literal(expr: &Value) -> Option<String> {
    expr.get("Value")?.as_str().map(str::to_owned)
}

impl AttrPath {
    /// Reads `var.a.b…` in Cedar's JSON policy format.
    fn from_est(expr: &Value) -> Option<Self> {
        let mut attrs = Vec::new();
        let mut expr = expr;
        while let Some(access) = expr.get(".") {
            attrs.push(access.get("attr")?.as_str()?.to_owned());
            expr = access.get("left")?;
        }
        let root = match expr.get("Var")?.as_str()? {
            "principal" => Root::Principal,
            "resource" => Root::Resource,
            "context" => Root::Context,
            _ => return None,
        };
        if attrs.is_empty() {
            return None;
        }
        attrs.reverse();
        Some(Self { root, attrs })
    }

    /// The path as the expression Cedar evaluates.
    pub fn expr(&self) -> Expr {
        let var = match self.root {
            Root::Principal => Var::Principal,
            Root::Resource => Var::Resource,
            Root::Context => Var::Context,
        };
        self.attrs.iter().fold(Expr::var(var), |expr, attr| {
            Expr::get_attr(expr, attr.into())
        })
    }

    /// The path's value on this request, or `None` if evaluating it could fail.
    pub fn resolve(&self, request: &Request, entities: &Entities) -> Option<EvalResult> {
        let (first, rest) = self.attrs.split_first()?;
        let mut value = match self.root {
            Root::Principal => stored_attr(entities, request.principal()?, first)?,
            Root::Resource => stored_attr(entities, request.resource()?, first)?,
            Root::Context => request.context()?.get(first)?,
        };
        for attr in rest {
            value = match value {
                EvalResult::Record(record) => record.get(attr)?.clone(),
                EvalResult::EntityUid(uid) => stored_attr(entities, &uid, attr)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let root = match self.root {
            Root::Principal => "principal",
            Root::Resource => "resource",
            Root::Context => "context",
        };
        write!(f, "{root}.{}", self.attrs.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(text: &str) -> Option<(String, String)> {
        let policy = cedar_policy::Policy::parse(None, text).unwrap();
        Guard::of(&policy.to_json().unwrap()).map(|g| (g.path.to_string(), g.literal))
    }

    #[test]
    fn the_leading_equality_of_a_when_is_a_guard() {
        let expected = Some(("context.habilitation.profile".into(), "T2".into()));
        let text = r#"permit (principal, action, resource)
            when { context.habilitation.profile == "T2" && principal.suspended };"#;
        assert_eq!(guard(text), expected);
        let swapped = r#"permit (principal, action, resource)
            when { "T2" == context.habilitation.profile };"#;
        assert_eq!(guard(swapped), expected);
        let nested = r#"forbid (principal, action, resource)
            when { principal.role == "x" && resource.a && resource.b };"#;
        assert_eq!(guard(nested), Some(("principal.role".into(), "x".into())));
    }

    #[test]
    fn other_conditions_are_not_guards() {
        for text in [
            r#"permit (principal, action, resource);"#,
            r#"permit (principal, action, resource) unless { principal.role == "x" };"#,
            r#"permit (principal, action, resource) when { principal.a && principal.role == "x" };"#,
            r#"permit (principal, action, resource) when { principal.role == "x" || principal.a };"#,
            r#"permit (principal, action, resource) when { principal.level == 3 };"#,
            r#"permit (principal, action, resource) when { principal == resource.owner };"#,
            r#"permit (principal, action, resource) when { principal.role != "x" };"#,
        ] {
            assert_eq!(guard(text), None, "{text}");
        }
    }
}

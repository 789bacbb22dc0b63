//! Action groups across a schema change.
//!
//! Both policy sets are compiled under NEW's schema, so OLD's `action in G` would be
//! read with NEW's action groups too: a schema change that moves an action into or
//! out of a group would look "equivalent". For a signature whose action has other
//! groups in OLD's schema than in NEW's, OLD's policies are first *pinned* to that
//! action under OLD's groups ([`pin`]): every `action in …`, in the scope or in a
//! condition, is decided with OLD's groups, so no action hierarchy is left for
//! NEW's schema to reinterpret.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::{EntityUid, Policy, PolicySet, Schema};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    #[error("cannot read the action groups of the schema: {0}")]
    Schema(String),
    #[error("policy `{policy}`: {reason}")]
    Policy { policy: String, reason: String },
}

/// Each action's groups in one schema: the actions it is `in`, transitively.
pub struct ActionGroups(BTreeMap<EntityUid, BTreeSet<EntityUid>>);

impl ActionGroups {
    pub fn of(schema: &Schema) -> Result<Self, GroupsError> {
        let entities = schema
            .action_entities()
            .map_err(|e| GroupsError::Schema(e.to_string()))?;
        let groups = schema
            .actions()
            .map(|action| {
                let ancestors = entities
                    .ancestors(action)
                    .map(|a| a.cloned().collect())
                    .unwrap_or_default();
                (action.clone(), ancestors)
            })
            .collect();
        Ok(Self(groups))
    }

    /// The groups of `action`; none for an action the schema does not declare.
    fn of_action(&self, action: &EntityUid) -> BTreeSet<EntityUid> {
        self.0.get(action).cloned().unwrap_or_default()
    }

    /// Whether `action in group` holds under these groups.
    fn holds(&self, action: &EntityUid, group: &EntityUid) -> bool {
        action == group || self.0.get(action).is_some_and(|g| g.contains(group))
    }
}

/// How NEW's schema regroups `action`, e.g. `the schema moves Action::"a" into
/// Action::"g"`; `None` when its groups are the same on both sides.
pub fn regrouping(old: &ActionGroups, new: &ActionGroups, action: &EntityUid) -> Option<String> {
    let (before, after) = (old.of_action(action), new.of_action(action));
    let list = |groups: Vec<&EntityUid>| {
        let names: Vec<String> = groups.iter().map(ToString::to_string).collect();
        names.join(", ")
    };
    let into = list(after.difference(&before).collect());
    let out_of = list(before.difference(&after).collect());
    let moves = match (into.is_empty(), out_of.is_empty()) {
        (true, true) => return None,
        (false, true) => format!("into {into}"),
        (true, false) => format!("out of {out_of}"),
        (false, false) => format!("into {into} and out of {out_of}"),
    };
    Some(format!("the schema moves {action} {moves}"))
}

/// OLD's policies as they apply to requests for `action` under OLD's `groups`:
/// a policy whose action scope does not cover `action` is left out, the others get
/// an unconstrained action scope, and each `action in …` of a condition becomes
/// its value. Errs on a use of `action` in a hierarchy test other than
/// `action in <action literal or set of them>`, which cannot be decided here.
pub fn pin(
    policies: &PolicySet,
    action: &EntityUid,
    groups: &ActionGroups,
) -> Result<PolicySet, GroupsError> {
    let mut pinned = Vec::new();
    for policy in policies.policies() {
        let failed = |reason: String| GroupsError::Policy {
            policy: policy.id().to_string(),
            reason,
        };
        if let Some(policy) = pin_policy(policy, action, groups).map_err(failed)? {
            pinned.push(policy);
        }
    }
    PolicySet::from_policies(pinned).map_err(|e| GroupsError::Policy {
        policy: "(set)".to_owned(),
        reason: e.to_string(),
    })
}

/// One policy pinned to `action` (through its JSON form), or `None` when its
/// scope does not cover `action`.
fn pin_policy(
    policy: &Policy,
    action: &EntityUid,
    groups: &ActionGroups,
) -> Result<Option<Policy>, String> {
    let mut json = policy.to_json().map_err(|e| e.to_string())?;
    if !scope_covers(&json["action"], action, groups)? {
        return Ok(None);
    }
    json["action"] = json!({"op": "All"});
    if let Some(conditions) = json["conditions"].as_array_mut() {
        for condition in conditions {
            decide_action_in(&mut condition["body"], action, groups)?;
        }
    }
    Policy::from_json(Some(policy.id().clone()), json)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Whether an action scope (`{"op": "All" | "==" | "in", …}`) covers `action`.
fn scope_covers(scope: &Value, action: &EntityUid, groups: &ActionGroups) -> Result<bool, String> {
    let uid = |v: &Value| EntityUid::from_json(v.clone()).map_err(|e| e.to_string());
    match scope["op"].as_str() {
        Some("All") => Ok(true),
        Some("==") => Ok(&uid(&scope["entity"])? == action),
        Some("in") if scope.get("entity").is_some() => {
            Ok(groups.holds(action, &uid(&scope["entity"])?))
        }
        Some("in") => {
            let entities = scope["entities"].as_array().cloned().unwrap_or_default();
            for entity in &entities {
                if groups.holds(action, &uid(entity)?) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        _ => Err(format!("unexpected action scope {scope}")),
    }
}

/// Replaces each `action in <literal>` of a condition by its value under `groups`.
fn decide_action_in(
    expr: &mut Value,
    action: &EntityUid,
    groups: &ActionGroups,
) -> Result<(), String> {
    if let Some(operands) = expr.get("in").filter(|o| o.get("left").is_some()) {
        if mentions_action(operands) {
            let holds = action_in_literal(operands, action, groups)?;
            *expr = json!({"Value": holds});
            return Ok(());
        }
    }
    if let Some(test) = expr.get("is").filter(|t| t.get("in").is_some()) {
        if mentions_action(test) {
            return Err("`is … in` on the action cannot be decided per action".to_owned());
        }
    }
    match expr {
        Value::Object(map) => map
            .values_mut()
            .try_for_each(|v| decide_action_in(v, action, groups)),
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| decide_action_in(v, action, groups)),
        _ => Ok(()),
    }
}

/// The value of `action in X` where X is an entity literal or a set of them.
fn action_in_literal(
    operands: &Value,
    action: &EntityUid,
    groups: &ActionGroups,
) -> Result<bool, String> {
    let unsupported = || {
        format!(
            "a hierarchy test on the action other than `action in <action literals>`: {operands}"
        )
    };
    if operands["left"] != json!({"Var": "action"}) {
        return Err(unsupported());
    }
    let right = &operands["right"];
    let literals: Vec<&Value> = match right.get("Set").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![right],
    };
    for literal in literals {
        let entity = literal.pointer("/Value/__entity").ok_or_else(unsupported)?;
        let group = EntityUid::from_json(entity.clone()).map_err(|e| e.to_string())?;
        if groups.holds(action, &group) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether an expression reads the `action` variable.
fn mentions_action(expr: &Value) -> bool {
    match expr {
        Value::Object(map) => {
            map.get("Var").is_some_and(|v| v == "action") || map.values().any(mentions_action)
        }
        Value::Array(items) => items.iter().any(mentions_action),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
        entity User;
        action all;
        action manage in [all];
        action edit, delete in [manage] appliesTo { principal: User, resource: User };
        action view appliesTo { principal: User, resource: User };
    "#;

    fn groups() -> ActionGroups {
        ActionGroups::of(&Schema::from_cedarschema_str(SCHEMA).unwrap().0).unwrap()
    }

    fn action(name: &str) -> EntityUid {
        format!("Action::\"{name}\"").parse().unwrap()
    }

    fn pinned(policies: &str, name: &str) -> Result<Vec<String>, GroupsError> {
        let set: PolicySet = policies.parse().unwrap();
        let pinned = pin(&set, &action(name), &groups())?;
        let mut texts: Vec<String> = pinned.policies().map(|p| p.to_string()).collect();
        texts.sort();
        Ok(texts)
    }

    #[test]
    fn groups_are_transitive_and_an_undeclared_action_has_none() {
        let groups = groups();
        assert!(groups.holds(&action("edit"), &action("all")));
        assert!(groups.holds(&action("view"), &action("view")));
        assert!(!groups.holds(&action("view"), &action("manage")));
        assert!(groups.of_action(&action("nope")).is_empty());
    }

    #[test]
    fn a_scope_on_a_group_is_kept_unconstrained_or_left_out() {
        let policies = r#"
            permit (principal, action in Action::"manage", resource);
            forbid (principal, action in [Action::"view", Action::"all"], resource);
        "#;
        let edit = pinned(policies, "edit").unwrap();
        assert_eq!(edit.len(), 2, "{edit:?}");
        assert!(edit.iter().all(|p| !p.contains("Action::")), "{edit:?}");
        let view = pinned(policies, "view").unwrap();
        assert_eq!(view.len(), 1, "{view:?}");
        assert!(view[0].starts_with("forbid"), "{view:?}");
    }

    #[test]
    fn an_action_in_test_of_a_condition_becomes_its_value() {
        let policies = r#"
            permit (principal, action, resource)
            when { action in [Action::"manage", Action::"view"] && !(action in Action::"view") };
        "#;
        assert_eq!(
            pinned(policies, "edit").unwrap(),
            ["permit(principal, action, resource) when { true && (!false) };"]
        );
    }

    #[test]
    fn a_hierarchy_test_the_pin_cannot_decide_is_an_error() {
        let policies = r#"permit (principal, action, resource) when { Action::"all" in action };"#;
        let error = pinned(policies, "edit").unwrap_err().to_string();
        assert!(error.contains("hierarchy test on the action"), "{error}");
    }

    #[test]
    fn regrouping_names_the_groups_an_action_enters_and_leaves() {
        let old = groups();
        let moved = SCHEMA.replace("action view appliesTo", "action view in [manage] appliesTo");
        let new = ActionGroups::of(&Schema::from_cedarschema_str(&moved).unwrap().0).unwrap();
        let text = regrouping(&old, &new, &action("view")).unwrap();
        assert!(text.contains("moves Action::\"view\" into"), "{text}");
        assert!(text.contains("Action::\"manage\""), "{text}");
        assert_eq!(regrouping(&old, &new, &action("edit")), None);
        let back = regrouping(&new, &old, &action("view")).unwrap();
        assert!(back.contains("out of"), "{back}");
    }
}

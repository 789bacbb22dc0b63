//! How the full decision path scales: with the number of stored entities (100, 100k
//! and 1M users) and with the number of policies (the bundled set plus 1k and 10k
//! per-partner rules). Per-request work should depend on neither.
//!
//! Ratios between separate criterion runs move with the shared machine's load (by
//! ±25% within minutes), so the bench first prints the ratios the targets are stated
//! in (1M users / 100 users; 10k extra policies / the bundled set) from interleaved
//! rounds of both sides ([`common::interleaved_ratio`]).

mod common;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Instant;

use cdap_authz::load::{self, Model};
use cdap_authz::snapshot::missing_ancestors;
use cedar_policy::{Entity, EntityUid, Policy, PolicyId, RestrictedExpression};
use criterion::{black_box, criterion_group, BenchmarkId, Criterion};

use common::{bundled_model, cases, full_path, interleaved_ratio, snapshot};

/// Interleaved rounds, and decisions per side and round.
const AB_ROUNDS: usize = 21;
const AB_ITERATIONS: usize = 2_000;

/// `count` stored users of the Ville de Maubeuge, added to the demo data.
fn with_users(mut model: Model, count: usize) -> Model {
    let partner = EntityUid::from_str("Partner::\"ville-maubeuge\"").unwrap();
    let users = (0..count).map(|i| {
        let attrs = HashMap::from([
            (
                "role".to_owned(),
                RestrictedExpression::new_string("user".into()),
            ),
            (
                "partner".to_owned(),
                RestrictedExpression::new_entity_uid(partner.clone()),
            ),
            (
                "suspended".to_owned(),
                RestrictedExpression::new_bool(false),
            ),
            (
                "must_change_password".to_owned(),
                RestrictedExpression::new_bool(false),
            ),
            (
                "trace_reader".to_owned(),
                RestrictedExpression::new_bool(false),
            ),
            (
                "habilitation_admin".to_owned(),
                RestrictedExpression::new_bool(false),
            ),
        ]);
        let uid = EntityUid::from_str(&format!("User::\"generated-{i}\"")).unwrap();
        Entity::new(uid, attrs, HashSet::from([partner.clone()])).unwrap()
    });
    model.entities = model
        .entities
        .add_entities(users, Some(&model.schema))
        .unwrap();
    model
}

fn store_size(c: &mut Criterion) {
    let case = cases().remove(0);
    let mut group = c.benchmark_group("store_size");
    for users in [100, 100_000, 1_000_000] {
        let model = with_users(bundled_model(), users);
        let started = Instant::now();
        let snapshot = snapshot(model);
        let built = started.elapsed();
        let started = Instant::now();
        black_box(missing_ancestors(&snapshot.entities).count());
        println!(
            "snapshot of {users} users: indexes built in {:.0} ms; the missing-ancestors pass, timed again alone: {:.1} ms",
            built.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(full_path(&snapshot, &case.bytes).0, case.expected);
        group.bench_function(
            BenchmarkId::new(format!("{}/users", case.label), users),
            |b| b.iter(|| black_box(full_path(&snapshot, black_box(&case.bytes)))),
        );
    }
    group.finish();
}

/// `count` per-partner consultation rules, as a Caf would write one per partner:
/// each permits its own partner's T2 agents, so none applies to the timed request.
fn with_partner_policies(mut model: Model, count: usize) -> Model {
    for i in 0..count {
        let id = format!("generated-partner-{i}");
        let text = format!(
            "permit (principal in Partner::\"partner-{i}\", action == Action::\"consult_file\", resource)\n\
             when {{ context.habilitation.profile == \"T2\" && context.categories.containsAll([\"quotient_familial\"]) }};"
        );
        let policy = Policy::parse(Some(PolicyId::new(&id)), text).unwrap();
        model.policies.add(policy).unwrap();
        model.policy_info.push(load::PolicyInfo {
            id,
            effect: "permit",
            source: None,
            file: "generated".into(),
            named: true,
            at: (1, 1),
        });
    }
    model
}

fn policy_count(c: &mut Criterion) {
    let case = cases().remove(0);
    let mut group = c.benchmark_group("policy_count");
    for extra in [0, 1_000, 10_000] {
        let snapshot = snapshot(with_partner_policies(bundled_model(), extra));
        assert_eq!(full_path(&snapshot, &case.bytes).0, case.expected);
        let total = snapshot.policy_info.len();
        group.bench_function(
            BenchmarkId::new(format!("{}/policies", case.label), total),
            |b| b.iter(|| black_box(full_path(&snapshot, black_box(&case.bytes)))),
        );
    }
    group.finish();
}

/// The target ratios, each side timed in interleaved rounds.
fn interleaved() {
    let case = cases().remove(0);
    let pairs = [
        (
            "1,000,000 stored users / 100",
            with_users(bundled_model(), 100),
            with_users(bundled_model(), 1_000_000),
        ),
        (
            "10,000 more policies / the bundled set",
            bundled_model(),
            with_partner_policies(bundled_model(), 10_000),
        ),
    ];
    for (label, small, large) in pairs {
        let (small, large) = (snapshot(small), snapshot(large));
        for snapshot in [&small, &large] {
            assert_eq!(full_path(snapshot, &case.bytes).0, case.expected);
        }
        let (median, min, max) = interleaved_ratio(
            AB_ROUNDS,
            AB_ITERATIONS,
            || {
                black_box(full_path(&small, black_box(&case.bytes)));
            },
            || {
                black_box(full_path(&large, black_box(&case.bytes)));
            },
        );
        println!(
            "interleaved {}: {label}, median of {AB_ROUNDS} rounds = {median:.2} (min {min:.2}, max {max:.2})",
            case.label
        );
    }
}

criterion_group!(benches, store_size, policy_count);

fn main() {
    interleaved();
    benches();
    Criterion::default().configure_from_args().final_summary();
}

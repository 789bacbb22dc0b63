//! Snapshot build time (what a reload costs, off the request path): the bundled
//! model, and the bundled model plus 1k and 10k generated per-partner policies.

use std::path::{Path, PathBuf};

use cdap_authz::load::Sources;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The bundled policies plus `extra` generated ones, 100 per file.
fn policies_dir(extra: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(repo("policies")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    for chunk in 0..extra.div_ceil(100) {
        let text: String = (chunk * 100..((chunk + 1) * 100).min(extra))
            .map(|i| {
                format!(
                    "@id(\"generated-{i}\")\n@source(\"generated for the benchmark\")\n\
                     permit (principal == User::\"user-{i}\", action == Action::\"read_traces\", resource)\n\
                     when {{ resource.partner == Partner::\"partner-{i}\" }};\n\n"
                )
            })
            .collect();
        std::fs::write(dir.path().join(format!("generated-{chunk:04}.cedar")), text).unwrap();
    }
    dir
}

fn sources(policies: &Path) -> Sources {
    Sources {
        policies: policies.to_owned(),
        schema: repo("schema/cdap.cedarschema"),
        entities: Some(repo("examples/entities.json")),
        derived: Some(repo("schema/derived.json")),
    }
}

fn snapshot_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(10);
    for extra in [0, 1_000, 10_000] {
        let dir = policies_dir(extra);
        let sources = sources(dir.path());
        let bundled = Snapshot::load(&sources, DEFAULT_TIME_ATTRIBUTE)
            .unwrap()
            .policy_info
            .len()
            - extra;
        group.bench_with_input(
            BenchmarkId::new("policies", bundled + extra),
            &sources,
            |b, sources| {
                b.iter(|| {
                    let snapshot = Snapshot::load(sources, DEFAULT_TIME_ATTRIBUTE).unwrap();
                    assert_eq!(snapshot.policy_info.len(), bundled + extra);
                    snapshot
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, snapshot_build);
criterion_main!(benches);

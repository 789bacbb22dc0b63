//! Hot reload with real files and real file-system events.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdap_authz::http::AppState;
use cdap_authz::load::Sources;
use cdap_authz::reload::{self, Reloaded, Reloader, WatchHandle};
use cdap_authz::snapshot::DEFAULT_TIME_ATTRIBUTE;
use serde_json::Value;

use crate::util::{act, allowed_consultation, entity, pinned_time, repo, Decision, Server};

const DEBOUNCE: Duration = Duration::from_millis(50);

/// A sidecar serving a copy of the bundled model from a temporary directory.
struct Live {
    root: tempfile::TempDir,
    reloader: Arc<Reloader>,
    /// Kept alive for the test: dropping it stops watching.
    _watch: Option<WatchHandle>,
    server: Server,
}

impl Live {
    /// `model` is the directory holding `policies/`, `schema/` and `entities.json`
    /// as the sidecar sees it (it may be a symlink layout inside `root`).
    fn start(root: tempfile::TempDir, model: &Path, watching: bool) -> Self {
        let state = Arc::new(AppState::new(pinned_time()));
        let sources = Sources {
            policies: model.join("policies"),
            schema: model.join("schema/cdap.cedarschema"),
            entities: Some(model.join("entities.json")),
            derived: Some(model.join("schema/derived.json")),
        };
        let reloader = Arc::new(Reloader::new(
            sources,
            DEFAULT_TIME_ATTRIBUTE,
            state.clone(),
        ));
        reloader.reload().expect("the copied model loads");
        let watch = watching.then(|| reload::watch(reloader.clone(), DEBOUNCE).unwrap());
        Self {
            root,
            reloader,
            _watch: watch,
            server: Server::serve(state),
        }
    }

    fn copy_of_bundled_model(watching: bool) -> Self {
        let root = tempfile::tempdir().unwrap();
        copy_model(root.path());
        let model = root.path().to_owned();
        Self::start(root, &model, watching)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn policy_set(&self) -> Value {
        serde_json::from_str(&self.server.get("/v1/policy-set").1).unwrap()
    }
}

fn copy_model(to: &Path) {
    for dir in ["policies", "schema"] {
        std::fs::create_dir_all(to.join(dir)).unwrap();
        for file in std::fs::read_dir(repo(dir)).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(dir).join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(repo("examples/entities.json"), to.join("entities.json")).unwrap();
}

/// Writes like an editor: a temporary file renamed into place.
fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp~");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Polls `condition` for up to `limit`; returns how long it took.
#[track_caller]
fn within(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Like [`within`], but a timeout shows the sidecar's reload status.
fn within_or_report(live: &Live, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > Duration::from_secs(2) {
            panic!("not within 2 s: {what}; policy set: {}", live.policy_set());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

fn admin_reads_traces() -> Value {
    act(
        "mau-admin",
        "read_traces",
        entity("Trace", "ville-maubeuge"),
    )
}

fn without_partner_trace_permit(policy_file: &str) -> String {
    let start = policy_file.find("@id(\"T3-partner-managers").unwrap();
    let end = policy_file.find("@id(\"T3-authorised-caf-staff").unwrap();
    format!("{}{}", &policy_file[..start], &policy_file[end..])
}

#[test]
fn policy_edit_flips_a_decision_within_2_seconds() {
    let live = Live::copy_of_bundled_model(true);
    live.server
        .decide(&admin_reads_traces())
        .assert_allowed_by("T3-partner-managers-read-partner-traces");
    let traces = live.path("policies/traces.cedar");
    write_atomically(
        &traces,
        &without_partner_trace_permit(&std::fs::read_to_string(&traces).unwrap()),
    );
    within(
        Duration::from_secs(2),
        "the edited policy takes effect",
        || !live.server.decide(&admin_reads_traces()).allowed,
    );
}

/// A copy of the bundled model whose `policies/traces.cedar` `link` moves out of
/// the policy directory and replaces by symlinks (given the model's root and the
/// file's path), served and watched; checked to allow the partner managers' trace
/// reads, which the tests then take away.
fn serving_traces_through_links(link: impl FnOnce(&Path, &Path)) -> Live {
    let root = tempfile::tempdir().unwrap();
    copy_model(root.path());
    link(root.path(), &root.path().join("policies/traces.cedar"));
    let model = root.path().to_owned();
    let live = Live::start(root, &model, true);
    live.server
        .decide(&admin_reads_traces())
        .assert_allowed_by("T3-partner-managers-read-partner-traces");
    live
}

/// Waits (2 s at most) for the partner managers' trace reads to be denied.
fn partner_trace_reads_stop(live: &Live, what: &str) {
    within_or_report(live, what, || {
        !live.server.decide(&admin_reads_traces()).allowed
    });
}

/// A policy file that is a symlink to a file outside the policy directory (shared
/// between sidecars, say): an edit of the file it leads to is picked up too.
#[test]
fn an_edit_of_a_file_a_policy_symlink_leads_to_is_picked_up() {
    let mut target = PathBuf::new();
    let live = serving_traces_through_links(|root, policy| {
        std::fs::create_dir(root.join("shared")).unwrap();
        target = root.join("shared/traces.cedar");
        std::fs::rename(policy, &target).unwrap();
        std::os::unix::fs::symlink(&target, policy).unwrap();
    });
    let edited = without_partner_trace_permit(&std::fs::read_to_string(&target).unwrap());
    std::fs::write(&target, edited).unwrap();
    partner_trace_reads_stop(&live, "the edit of the linked file takes effect");
}

/// A policy file reached through a chain of symlinks: retargeting the link in the
/// middle of the chain is picked up.
#[test]
fn a_retargeted_link_in_the_middle_of_a_policy_symlink_chain_is_picked_up() {
    let (mut middle, mut second) = (PathBuf::new(), PathBuf::new());
    let live = serving_traces_through_links(|root, policy| {
        let shared = root.join("shared");
        middle = root.join("middle");
        std::fs::create_dir(&shared).unwrap();
        std::fs::create_dir(&middle).unwrap();
        let first = shared.join("first.cedar");
        second = shared.join("second.cedar");
        std::fs::rename(policy, &first).unwrap();
        let text = std::fs::read_to_string(&first).unwrap();
        std::fs::write(&second, without_partner_trace_permit(&text)).unwrap();
        std::os::unix::fs::symlink(&first, middle.join("traces.cedar")).unwrap();
        std::os::unix::fs::symlink(middle.join("traces.cedar"), policy).unwrap();
    });
    let staged = middle.join("traces.cedar.new");
    std::os::unix::fs::symlink(&second, &staged).unwrap();
    std::fs::rename(&staged, middle.join("traces.cedar")).unwrap();
    partner_trace_reads_stop(&live, "the retargeted middle link takes effect");
}

/// Waits (2 s at most) for a reload to be refused; its message, once checked that
/// `version` still serves.
fn refused_reload(live: &Live, version: &Value) -> String {
    within(
        Duration::from_secs(2),
        "the refused reload is reported",
        || !live.policy_set()["last_reload_error"].is_null(),
    );
    let report = live.policy_set();
    assert_eq!(&report["policy_version"], version);
    report["last_reload_error"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn broken_edit_keeps_the_last_good_snapshot_and_reports_the_error() {
    let live = Live::copy_of_bundled_model(true);
    let version = live.policy_set()["policy_version"].clone();
    std::fs::write(
        live.path("policies/broken.cedar"),
        "permit (principal,\n  action resource);\n",
    )
    .unwrap();
    let message = refused_reload(&live, &version);
    assert!(message.contains("broken.cedar:2:10"), "{message}");
    let (status, ready) = live.server.get("/readyz");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready["reload_error_at"],
        live.policy_set()["last_reload_error"]["at"]
    );
    assert!(ready["reload_error_at"].is_string(), "{ready}");
    live.server
        .decide(&admin_reads_traces())
        .assert_allowed_by("T3-partner-managers-read-partner-traces");
    let metrics = live.server.get("/metrics").1;
    assert!(
        metrics.contains(r#"cdap_authz_reloads_total{outcome="failure"}"#),
        "{metrics}"
    );

    std::fs::remove_file(live.path("policies/broken.cedar")).unwrap();
    within(Duration::from_secs(2), "fixing the file recovers", || {
        live.policy_set()["last_reload_error"].is_null()
    });
    assert!(live
        .server
        .get("/readyz")
        .1
        .contains(r#""reload_error_at":null"#));
}

/// A policy file rewritten in two steps (emptied, then filled a moment later) is
/// never served empty: that would drop every forbid it holds. The emptied file is
/// refused, the last snapshot serves on, and the filled one is picked up.
#[test]
fn an_emptied_policy_file_is_refused_until_it_is_filled_again() {
    let live = Live::copy_of_bundled_model(true);
    let version = live.policy_set()["policy_version"].clone();
    let file = live.path("policies/suspension.cedar");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, "// being rewritten\n").unwrap();
    let message = refused_reload(&live, &version);
    assert!(
        message.contains("suspension.cedar: holds no policy"),
        "{message}"
    );
    // S1 still denies the user whose habilitation the Caf suspended.
    let suspended = crate::util::consult(
        "mau-t2b",
        "mau-t2-02",
        "maubeuge-centre-loisirs-qf",
        &["quotient_familial"],
        "dossier-59-0004",
    );
    live.server
        .decide(&suspended)
        .assert_denied_by("S1-habilitation-suspended");
    std::fs::write(&file, text).unwrap();
    within(Duration::from_secs(2), "the filled file recovers", || {
        live.policy_set()["last_reload_error"].is_null()
    });
    assert_eq!(live.policy_set()["policy_version"], version);
}

#[test]
fn entities_edit_changes_a_decision() {
    let live = Live::copy_of_bundled_model(true);
    live.server
        .decide(&allowed_consultation())
        .assert_allowed_by("P3-T2-prestataire-service-social");
    set_mau_t2_suspended(&live.path("entities.json"), true);
    within(
        Duration::from_secs(2),
        "the suspension takes effect",
        || mau_t2_suspended(&live),
    );
}

/// Kubernetes mounts a ConfigMap as `..data -> ..<timestamp>/` with each entry a
/// symlink through `..data`; an update swaps `..data` atomically.
#[test]
fn config_map_symlink_swap_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let first = root.path().join("..2026_11_22_10_00_00.1");
    copy_model(&first);
    std::os::unix::fs::symlink(first.file_name().unwrap(), root.path().join("..data")).unwrap();
    for entry in ["policies", "schema", "entities.json"] {
        std::os::unix::fs::symlink(format!("..data/{entry}"), root.path().join(entry)).unwrap();
    }
    let model = root.path().to_owned();
    let live = Live::start(root, &model, true);
    live.server
        .decide(&admin_reads_traces())
        .assert_allowed_by("T3-partner-managers-read-partner-traces");

    let second = live.path("..2026_11_22_10_05_00.2");
    copy_model(&second);
    let traces = second.join("policies/traces.cedar");
    std::fs::write(
        &traces,
        without_partner_trace_permit(&std::fs::read_to_string(&traces).unwrap()),
    )
    .unwrap();
    std::os::unix::fs::symlink(second.file_name().unwrap(), live.path("..data_tmp")).unwrap();
    std::fs::rename(live.path("..data_tmp"), live.path("..data")).unwrap();
    std::fs::remove_dir_all(live.path("..2026_11_22_10_00_00.1")).unwrap();
    within_or_report(&live, "the swapped ConfigMap takes effect", || {
        !live.server.decide(&admin_reads_traces()).allowed
    });
}

/// Rewrites an entities file (as an editor does) with `User::"mau-t2"` suspended
/// or not.
fn set_mau_t2_suspended(path: &Path, suspended: bool) {
    let mut entities: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let user = entities
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["uid"] == serde_json::json!({"type": "User", "id": "mau-t2"}))
        .unwrap();
    user["attrs"]["suspended"] = Value::Bool(suspended);
    write_atomically(path, &entities.to_string());
}

/// Whether the sidecar now denies mau-t2's consultation for the suspension.
fn mau_t2_suspended(live: &Live) -> bool {
    let decision: Decision = live.server.decide(&allowed_consultation());
    decision.reason.iter().any(|r| r == "S1-user-suspended")
}

/// The directory holding every source is replaced by another (`mv model.new
/// model`), then a file in the new one is edited: both are picked up (the watches
/// follow the new directory).
#[test]
fn a_replaced_model_directory_is_picked_up_and_followed() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    copy_model(&model);
    let live = Live::start(root, &model, true);
    assert!(!mau_t2_suspended(&live));

    copy_model(&live.path("model.new"));
    set_mau_t2_suspended(&live.path("model.new/entities.json"), true);
    std::fs::rename(live.path("model"), live.path("model.old")).unwrap();
    std::fs::rename(live.path("model.new"), live.path("model")).unwrap();
    within_or_report(&live, "the replaced directory takes effect", || {
        mau_t2_suspended(&live)
    });

    set_mau_t2_suspended(&live.path("model/entities.json"), false);
    within_or_report(
        &live,
        "an edit inside the new directory takes effect",
        || !mau_t2_suspended(&live),
    );
}

/// A sidecar watching `current`, a symlink to the release `first` (a copy of the
/// bundled model), as deployments that keep releases side by side do.
fn live_on_release(first: &str) -> Live {
    let root = tempfile::tempdir().unwrap();
    copy_model(&root.path().join(first));
    std::os::unix::fs::symlink(first, root.path().join("current")).unwrap();
    let model = root.path().join("current");
    Live::start(root, &model, true)
}

/// `ln -sfn RELEASE current.tmp && mv -T current.tmp current`.
fn flip_to(live: &Live, release: &str) {
    std::os::unix::fs::symlink(release, live.path("current.tmp")).unwrap();
    std::fs::rename(live.path("current.tmp"), live.path("current")).unwrap();
}

/// Releases side by side and a `current` symlink flipped from one to the next.
#[test]
fn a_flipped_release_symlink_is_picked_up() {
    let live = live_on_release("v1");
    assert!(!mau_t2_suspended(&live));

    copy_model(&live.path("v2"));
    set_mau_t2_suspended(&live.path("v2/entities.json"), true);
    flip_to(&live, "v2");
    within_or_report(&live, "the flipped release takes effect", || {
        mau_t2_suspended(&live)
    });
}

/// A release flipped in, then edited while the sidecar may still be loading it: the
/// edit is seen whatever the delay (the new directory is watched before it is read).
#[test]
fn an_edit_right_after_a_release_flip_is_picked_up() {
    let live = live_on_release("v0");
    for (n, delay_ms) in [0, 20, 40, 60, 80, 100, 150, 200].into_iter().enumerate() {
        let release = format!("v{}", n + 1);
        copy_model(&live.path(&release));
        set_mau_t2_suspended(&live.path(&format!("{release}/entities.json")), n % 2 == 0);
        flip_to(&live, &release);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let suspended = n % 2 == 1;
        set_mau_t2_suspended(&live.path(&format!("{release}/entities.json")), suspended);
        within_or_report(
            &live,
            &format!("the edit {delay_ms} ms after flipping to {release}"),
            || mau_t2_suspended(&live) == suspended,
        );
    }
}

/// Requests fire continuously while the policies change 50 times: none fails, and
/// each answer comes from one of the two versions.
#[test]
fn fifty_reloads_under_load_lose_no_request() {
    let live = Arc::new(Live::copy_of_bundled_model(false));
    let traces = live.path("policies/traces.cedar");
    let original = std::fs::read_to_string(&traces).unwrap();
    let variants = [original.clone(), format!("{original}\n// edited\n")];
    let running = Arc::new(AtomicBool::new(true));
    let client = {
        let (live, running) = (live.clone(), running.clone());
        std::thread::spawn(move || {
            let mut versions = Vec::new();
            while running.load(Ordering::Relaxed) && versions.len() < 200_000 {
                let (status, body) = live.server.post("/v1/is_authorized", &admin_reads_traces());
                assert_eq!(status, 200, "{body}");
                Decision::from_json(&body)
                    .assert_allowed_by("T3-partner-managers-read-partner-traces");
                versions.push(body["policy_version"].as_str().unwrap().to_owned());
            }
            versions
        })
    };
    let mut installed = HashSet::new();
    installed.insert(
        live.policy_set()["policy_version"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    for round in 1..=50 {
        write_atomically(&traces, &variants[round % 2]);
        match live.reloader.reload().unwrap() {
            Reloaded::Swapped { version, .. } => installed.insert(version),
            Reloaded::Unchanged => panic!("round {round}: the edit was not seen"),
        };
        std::thread::sleep(Duration::from_millis(5));
    }
    running.store(false, Ordering::Relaxed);
    let versions = client.join().unwrap();
    assert_eq!(installed.len(), 2, "{installed:?}");
    assert!(
        versions.len() > 50,
        "only {} requests during the reloads",
        versions.len()
    );
    let seen: HashSet<_> = versions.into_iter().collect();
    assert!(seen.is_subset(&installed), "{seen:?} vs {installed:?}");
    assert_eq!(seen.len(), 2, "requests saw {seen:?}");
}

#[test]
fn a_reload_does_not_trigger_the_next_one() {
    // A reload reads every model file; those reads must not count as changes.
    let live = Live::copy_of_bundled_model(true);
    let watch = live._watch.as_ref().unwrap();
    watch.force_reload();
    let unchanged = |live: &Live| {
        let metrics = live.server.get("/metrics").1;
        metrics
            .lines()
            .find(|l| l.starts_with(r#"cdap_authz_reloads_total{outcome="unchanged"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    within(Duration::from_secs(2), "the forced reload", || {
        unchanged(&live) == 1
    });
    std::thread::sleep(DEBOUNCE * 10);
    assert_eq!(unchanged(&live), 1, "reloads went on with no file change");
}

/// A policy file written in place is not read until its writer closes it: cut off
/// midway (or emptied), it is still valid Cedar, and loading it would drop its
/// forbids (a suspended habilitation was allowed for the 2.5 s such a write took).
#[test]
fn a_policy_file_is_not_loaded_while_its_writer_still_writes_it() {
    use std::io::Write as _;
    let live = Live::copy_of_bundled_model(true);
    let before = live.policy_set();
    let count = |set: &Value| set["policies"].as_array().unwrap().len();
    let path = live.path("policies/suspension.cedar");
    let text = std::fs::read_to_string(&path).unwrap();
    // Cut after its first policy: valid Cedar, the other forbids missing.
    let cut = text.find("};\n").unwrap() + 3;
    let mut writer = std::fs::File::create(&path).unwrap(); // truncates it
    writer.write_all(&text.as_bytes()[..cut]).unwrap();
    writer.flush().unwrap();
    // A change of mode meanwhile says nothing of the writer.
    let mode = std::fs::metadata(&path).unwrap().permissions();
    std::fs::set_permissions(&path, mode).unwrap();
    // Longer than the debounce and its one-second cap.
    std::thread::sleep(Duration::from_millis(1500));
    let during = live.policy_set();
    assert_eq!(
        (&during["policy_version"], count(&during)),
        (&before["policy_version"], count(&before)),
        "a file still being written was loaded"
    );
    writer.write_all(&text.as_bytes()[cut..]).unwrap();
    writer.write_all(b"// edited\n").unwrap();
    drop(writer);
    within_or_report(&live, "the closed file is loaded", || {
        live.policy_set()["policy_version"] != before["policy_version"]
    });
    assert_eq!(count(&live.policy_set()), count(&before));
}

/// A writer that keeps a policy file open for 10 s is reported (`last_reload_error`
/// names the file, and SIGHUP) while the snapshot loaded before keeps serving; it is
/// still waited for, and the file is loaded once it closes it.
#[test]
fn a_writer_holding_a_file_open_for_10_s_is_reported_and_still_waited_for() {
    use std::io::Write as _;
    let live = Live::copy_of_bundled_model(true);
    let before = live.policy_set();
    let path = live.path("policies/suspension.cedar");
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writer.write_all(b"// being edited\n").unwrap();
    writer.flush().unwrap();
    let opened = Instant::now();
    let reported = |live: &Live| {
        let error = &live.policy_set()["last_reload_error"]["message"];
        error.as_str().is_some_and(|message| {
            message.contains("waiting for the writer of")
                && message.contains("suspension.cedar")
                && message.contains("kill -HUP")
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !reported(&live),
        "reported before 10 s: {}",
        live.policy_set()
    );
    within(Duration::from_secs(10), "the writer reported", || {
        reported(&live)
    });
    assert!(opened.elapsed() >= Duration::from_secs(10));
    assert_eq!(
        live.policy_set()["policy_version"],
        before["policy_version"]
    );
    drop(writer);
    within_or_report(&live, "the closed file is loaded", || {
        live.policy_set()["policy_version"] != before["policy_version"]
    });
    assert_eq!(live.policy_set()["last_reload_error"], Value::Null);
}

/// The reloads a sidecar refused so far, from `/metrics`.
fn refused_reloads(live: &Live) -> u64 {
    let metrics = live.server.get("/metrics").1;
    metrics
        .lines()
        .find(|l| l.starts_with(r#"cdap_authz_reloads_total{outcome="failure"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A refused reload is tried again after 250 ms, 500 ms and 1 s (files caught
/// mid-swap load on a retry), whatever else happens in the watched directories:
/// a file touched every 100 ms beside the model does not postpone the retries.
#[test]
fn unrelated_file_activity_does_not_postpone_the_retries() {
    let live = Live::copy_of_bundled_model(true);
    std::fs::write(live.path("policies/broken.cedar"), "permit (principal,\n").unwrap();
    let noise = live.path("noise.txt");
    let started = Instant::now();
    let make_noise_for = |span: Duration| {
        let until = Instant::now() + span;
        while Instant::now() < until {
            std::fs::write(&noise, format!("{:?}", started.elapsed())).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The first attempt and its three retries come 1.75 s after it plus the loads
    // (each up to a second in a debug build with other tests on both cores); noise
    // that postponed them would keep them from coming at all.
    while refused_reloads(&live) < 4 && started.elapsed() < Duration::from_secs(20) {
        make_noise_for(Duration::from_millis(500));
    }
    // And no attempt after them: the noise itself triggers no reload.
    make_noise_for(Duration::from_secs(2));
    let refused = refused_reloads(&live);
    assert_eq!(refused, 4, "{}", live.policy_set()["last_reload_error"]);
}

/// A source file that is a symlink into a directory the watches would not reach
/// (`/etc/cdap-authz/entities.json` → a deployment's own directory): an edit where
/// it leads is picked up, and so is a flip of the symlink to another target.
#[test]
fn an_edit_where_a_symlinked_source_leads_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("etc");
    copy_model(&model);
    let real = root.path().join("deploy/v1");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::rename(model.join("entities.json"), real.join("entities.json")).unwrap();
    std::os::unix::fs::symlink(real.join("entities.json"), model.join("entities.json")).unwrap();
    let live = Live::start(root, &model, true);
    assert!(!mau_t2_suspended(&live));
    set_mau_t2_suspended(&real.join("entities.json"), true);
    within_or_report(&live, "the edit where the symlink leads", || {
        mau_t2_suspended(&live)
    });
    // The symlink flipped to another target, then that target edited.
    let other = live.path("deploy/v2");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(real.join("entities.json"), other.join("entities.json")).unwrap();
    let link = model.join("entities.json");
    std::os::unix::fs::symlink(other.join("entities.json"), model.join("entities.json.new"))
        .unwrap();
    std::fs::rename(model.join("entities.json.new"), &link).unwrap();
    std::thread::sleep(DEBOUNCE * 10);
    set_mau_t2_suspended(&other.join("entities.json"), false);
    within_or_report(&live, "the edit where the flipped symlink leads", || {
        !mau_t2_suspended(&live)
    });
}

/// Waiting for writers never holds a reload back for good: a link created without
/// any open (a ConfigMap's per-key symlink, `ln`), or a directory moved away while a
/// file in it is still open for writing (its close is then never reported), is
/// picked up at once.
#[test]
fn a_link_or_a_moved_directory_does_not_leave_the_reload_waiting() {
    use std::io::Write as _;
    let live = Live::copy_of_bundled_model(true);
    let count = |live: &Live| live.policy_set()["policies"].as_array().unwrap().len();
    let before = count(&live);
    let staging = live.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.join("extra.cedar"),
        "@id(\"extra\")\nforbid (principal, action, resource) when { false };\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        staging.join("extra.cedar"),
        live.path("policies/extra.cedar"),
    )
    .unwrap();
    within_or_report(&live, "the symlinked policy file", || {
        count(&live) == before + 1
    });

    let team = live.path("policies/team");
    std::fs::create_dir_all(&team).unwrap();
    let mut writer = std::fs::File::create(team.join("notes.cedar")).unwrap();
    writer
        .write_all(b"@id(\"notes\")\nforbid (principal, action, resource) when { false };\n")
        .unwrap();
    writer.flush().unwrap();
    std::fs::rename(&team, live.path("policies/team2")).unwrap();
    within_or_report(&live, "the moved directory, its file still open", || {
        count(&live) == before + 2
    });
    drop(writer);
}

/// Changes that keep coming (a notes file in the policy directory written every
/// 100 ms, faster than a load) do not hold a reload back: each load is swapped in,
/// then the files are read again.
#[test]
fn changes_faster_than_a_load_do_not_hold_the_reload_back() {
    let live = Live::copy_of_bundled_model(true);
    let traces = live.path("policies/traces.cedar");
    let notes = live.path("policies/NOTES.txt");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(8) {
                std::fs::write(&notes, format!("{:?}", started.elapsed())).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        write_atomically(
            &traces,
            &without_partner_trace_permit(&std::fs::read_to_string(&traces).unwrap()),
        );
        // A failure here still ends: the writer stops after 8 s at most.
        within(
            Duration::from_secs(4),
            "the edit applied while the notes kept changing",
            || !live.server.decide(&admin_reads_traces()).allowed,
        );
        stop.store(true, Ordering::Relaxed);
    });
}

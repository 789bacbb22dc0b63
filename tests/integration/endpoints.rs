//! Health, readiness, metrics, policy-set listing, batches and time filling.

use std::collections::HashSet;

use chrono::{Duration, Utc};
use serde_json::{json, Value};

use crate::util::{
    allowed_consultation, consult, entity, spawn_serve, status_and_json, Decision, Server,
};

#[test]
fn health_and_readiness() {
    let server = Server::start();
    assert_eq!(server.get("/healthz").0, 200);
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200);
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert!(ready["policy_version"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
}

#[test]
fn response_carries_policy_version_and_unique_decision_ids() {
    let server = Server::start();
    let (_, ready) = server.get("/readyz");
    let version = serde_json::from_str::<Value>(&ready).unwrap()["policy_version"].clone();
    let mut ids = HashSet::new();
    for _ in 0..20 {
        let (status, body) = server.post("/v1/is_authorized", &allowed_consultation());
        assert_eq!(status, 200);
        assert_eq!(body["policy_version"], version);
        assert!(
            ids.insert(body["decision_id"].as_str().unwrap().to_owned()),
            "duplicate id"
        );
    }
}

#[test]
fn metrics_count_decisions_by_action_and_outcome() {
    let server = Server::start();
    server
        .decide(&allowed_consultation())
        .assert_allowed_by("P3-T2-prestataire-service-social");
    server.decide(&allowed_consultation());
    let mut denied = allowed_consultation();
    denied["resource"] = json!({"type": "File", "id": "dossier-33-0001"});
    server.decide(&denied);
    server.post_raw("/v1/is_authorized", "nope");
    let response = ureq::get(&server.url("/metrics")).call().unwrap();
    assert_eq!(response.status(), 200);
    // The text is OpenMetrics (`_total` samples, `# EOF`), and says so: read as
    // Prometheus' 0.0.4 text, its counters would parse as empty families.
    assert_eq!(
        response.content_type(),
        "application/openmetrics-text",
        "{:?}",
        response.header("content-type")
    );
    let text = response.into_string().unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(
        text.contains(r#"cdap_authz_decisions_total{action="consult_file",decision="Allow"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cdap_authz_decisions_total{action="consult_file",decision="Deny"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cdap_authz_request_errors_total{code="malformed_json"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("cdap_authz_decision_latency_seconds_count 3"),
        "{text}"
    );
}

#[test]
fn policy_set_lists_every_policy_with_its_clause() {
    let (status, body) = Server::start().get("/v1/policy-set");
    assert_eq!(status, 200);
    let listing: Value = serde_json::from_str(&body).unwrap();
    let policies = listing["policies"].as_array().unwrap();
    assert!(policies.len() >= 30, "{listing}");
    for policy in policies {
        let id = policy["id"].as_str().unwrap();
        let source = policy["source"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} has no @source"));
        let rule = id.split('-').next().unwrap();
        assert!(
            source.contains(&format!("({rule}"))
                || source.contains(&format!(" {rule})"))
                || source.contains(&format!("{rule},")),
            "@source of {id} does not name rule {rule}: {source}"
        );
    }
    assert!(listing["loaded_at"].is_string());
}

#[test]
fn batch_answers_in_order_with_per_request_errors() {
    let mut denied = allowed_consultation();
    denied["resource"] = json!({"type": "File", "id": "dossier-33-0001"});
    let batch = json!({"requests": [allowed_consultation(), {"principal": 1}, denied]});
    let (status, body) = Server::start().post("/v1/batch_is_authorized", &batch);
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    Decision::from_json(&results[0]).assert_allowed_by("P3-T2-prestataire-service-social");
    assert_eq!(results[1]["error"]["code"], "malformed_json");
    Decision::from_json(&results[2]).assert_denied_by("M3-file-of-another-caf");
}

/// With `now` left out, the sidecar decides at the current time: a file whose Rsa
/// ended 729 days ago is in the T19 window, one that ended 731 days ago is not.
#[test]
fn omitted_time_is_filled_with_the_current_time() {
    let server = Server::start();
    let decide_with_rsa_ended_days_ago = |days: i64| {
        let ended = (Utc::now() - Duration::days(days))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut request = consult(
            "dep-t19",
            "dep-t19-01",
            "departement-rsa-controle",
            &["rsa"],
            "f",
        );
        request["context"].as_object_mut().unwrap().remove("now");
        request["entities"] = json!([{"uid": entity("File", "f"), "parents": [], "attrs": {
            "caf": entity("Caf", "caf-nord"), "department": "59", "rsa_now": false,
            "rsa_last_date": ended, "categories": ["rsa"]}}]);
        server.decide(&request)
    };
    decide_with_rsa_ended_days_ago(729).assert_allowed_by("P7-T19-controle-rsa");
    decide_with_rsa_ended_days_ago(731).assert_denied_by_default();
}

/// Reasons and errors are listed in policy-id order, whatever order the policies
/// were evaluated in: here every profile permit errors (the habilitation does not
/// exist), the ones filed by profile among them, whose lists come out of a hash map.
#[test]
fn reasons_and_errors_are_listed_by_policy_id() {
    let server = Server::start();
    let request = consult(
        "mau-t2",
        "no-such-habilitation",
        "maubeuge-centre-loisirs-qf",
        &["quotient_familial"],
        "dossier-59-0004",
    );
    let (status, body) = server.post("/v1/is_authorized", &request);
    assert_eq!(status, 200, "{body}");
    for key in ["reason", "errors"] {
        let listed: Vec<&str> = body["diagnostics"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item.as_str().unwrap())
            .collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(listed, sorted, "{key}");
    }
    let errors = body["diagnostics"]["errors"].as_array().unwrap();
    assert!(errors.len() > 5, "{body}");
}

/// A request bringing hundreds of kilobytes of entities (Cedar reads them at about
/// 5 µs a value) is decided off its worker: another connection of the same, single,
/// worker is answered meanwhile. Decided on the worker, it held every connection
/// there, `/healthz` included, until it was done.
#[test]
fn a_large_request_does_not_hold_up_the_other_connections_of_its_worker() {
    let (_serve, _stderr, addr) = spawn_serve(&["--workers", "1", "--no-audit"]);
    let mut request = allowed_consultation();
    request["entities"] = (0..2000)
        .map(|i| {
            json!({"uid": entity("File", &format!("f{i}")), "parents": [], "attrs": {
                "caf": entity("Caf", "caf-nord"), "department": "59", "rsa_now": true,
                "categories": []}})
        })
        .collect();
    let body = serde_json::to_vec(&request).unwrap();
    assert!(body.len() > 64 * 1024, "{} bytes", body.len());
    let url = format!("http://{addr}/v1/is_authorized");
    let large = std::thread::spawn(move || status_and_json(ureq::post(&url).send_bytes(&body)));
    // Five probes, 50 ms apart: the first could slip in while the body is still
    // being read, not all five (the decision takes about a second in a debug build).
    for probe in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let health = ureq::get(&format!("http://{addr}/healthz")).call().unwrap();
        assert_eq!(health.status(), 200);
        assert!(
            !large.is_finished(),
            "/healthz probe {probe} was answered only once the large request was"
        );
    }
    let (status, reply) = large.join().unwrap();
    assert_eq!(status, 200, "{reply}");
    Decision::from_json(&reply).assert_allowed_by("P3-T2-prestataire-service-social");
}

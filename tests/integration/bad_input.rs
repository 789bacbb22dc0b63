//! Bad input gets a 4xx with `{"error":{"code","message"}}` saying what is wrong,
//! and never a decision; errors while evaluating give Deny, never Allow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdap_authz::http::{AppState, Limits};
use cdap_authz::load::Sources;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use serde_json::{json, Value};

use crate::util::{
    act, allowed_consultation, bundled_sources, consult, entity, pinned_time, repo,
    status_and_json, Decision, Server,
};

#[track_caller]
fn assert_error(reply: (u16, Value), status: u16, code: &str, message_part: &str) {
    let (got_status, body) = reply;
    assert_eq!(got_status, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(message_part),
        "message {message:?} lacks {message_part:?}"
    );
    assert!(body.get("decision").is_none(), "{body}");
}

#[test]
fn malformed_json_is_refused() {
    let server = Server::start();
    assert_error(
        server.post_raw("/v1/is_authorized", "{\"principal\": "),
        400,
        "malformed_json",
        "EOF",
    );
    assert_error(
        server.post_raw("/v1/is_authorized", "[]"),
        400,
        "malformed_json",
        "",
    );
}

/// A body that is not UTF-8 (here a byte 0xff inside the purpose's id, where the
/// handler would read the context by type) gets the JSON reader's error.
#[test]
fn a_body_that_is_not_utf8_is_refused() {
    let server = Server::start();
    let text = allowed_consultation().to_string();
    let at = text.find("centre").expect("the purpose's id");
    let mut body = text.into_bytes();
    body[at] = 0xff;
    assert_error(
        server.post_bytes("/v1/is_authorized", &body),
        400,
        "malformed_json",
        "invalid unicode code point",
    );
}

#[test]
fn missing_field_is_refused() {
    let mut request = allowed_consultation();
    request.as_object_mut().unwrap().remove("resource");
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "malformed_json",
        "resource",
    );
}

#[test]
fn unknown_entity_type_is_refused() {
    let mut request = allowed_consultation();
    request["principal"] = json!("Usr::\"mau-t2\"");
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "unknown_entity_type",
        "Usr",
    );
}

#[test]
fn unknown_action_is_refused() {
    let mut request = allowed_consultation();
    request["action"] = json!("Action::\"delete_everything\"");
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "unknown_action",
        "delete_everything",
    );
}

#[test]
fn malformed_entity_reference_is_refused() {
    let mut request = allowed_consultation();
    request["resource"] = json!({"type": "File"});
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_entity_ref",
        "resource",
    );
}

/// Cedar reads a text reference only as it displays it: an escape where it writes
/// none (`\u{2d}` for `-`) is refused with its words ("needs to be normalized (e.g.,
/// whitespace removed)", with no whitespace), and the message says what is meant.
#[test]
fn a_text_reference_cedar_does_not_read_points_to_the_object_form() {
    let mut request = allowed_consultation();
    request["principal"] = json!("User::\"mau\\u{2d}t2\"");
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_entity_ref",
        "the {\"type\", \"id\"} form takes any id as it is",
    );
}

#[test]
fn unknown_entity_is_refused() {
    let mut request = allowed_consultation();
    request["principal"] = json!({"type": "User", "id": "nobody"});
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "unknown_entity",
        "nobody",
    );
}

#[test]
fn context_missing_a_required_attribute_is_refused() {
    let mut request = allowed_consultation();
    request["context"]
        .as_object_mut()
        .unwrap()
        .remove("mission");
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_context",
        "mission",
    );
}

#[test]
fn context_with_a_wrong_type_is_refused() {
    let mut request = allowed_consultation();
    request["context"]["categories"] = json!("quotient_familial");
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_context",
        "`categories`: expected an array, each item a string, found \"quotient_familial\"",
    );
}

#[test]
fn context_entity_of_the_wrong_type_is_refused_naming_the_attribute() {
    let mut request = allowed_consultation();
    request["context"]["habilitation"] =
        json!({"type": "Mission", "id": "maubeuge-centre-loisirs-qf"});
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_context",
        "`habilitation`: expected a Habilitation entity reference",
    );
}

#[test]
fn context_with_an_invalid_datetime_is_refused() {
    let mut request = allowed_consultation();
    request["context"]["now"] = json!("yesterday");
    let (status, body) = Server::start().post("/v1/is_authorized", &request);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_context", "{body}");
}

#[test]
fn context_with_an_undeclared_attribute_is_refused() {
    let mut request = allowed_consultation();
    request["context"]["override"] = json!(true);
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_context",
        "override",
    );
}

#[test]
fn resource_of_the_wrong_type_for_the_action_is_refused() {
    let request = act(
        "mau-admin",
        "read_traces",
        entity("Trace", "ville-maubeuge"),
    );
    let mut request = request;
    request["resource"] = json!({"type": "File", "id": "dossier-59-0001"});
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_request",
        "File",
    );
}

/// By default the sidecar's clock decides: a request may not move a decision to
/// another day (here, back before this user's Rsa window closed).
#[test]
fn by_default_a_request_may_not_set_the_time() {
    let server = Server::start_with(Limits::default());
    assert_error(
        server.post("/v1/is_authorized", &allowed_consultation()),
        400,
        "time_not_accepted",
        "`now` is the sidecar's clock",
    );
    // Refused as set, not as an invalid time.
    let mut garbled = allowed_consultation();
    garbled["context"]["now"] = json!("garbage");
    assert_error(
        server.post("/v1/is_authorized", &garbled),
        400,
        "time_not_accepted",
        "`now` is the sidecar's clock",
    );
    let mut unpinned = allowed_consultation();
    unpinned["context"].as_object_mut().unwrap().remove("now");
    let (status, body) = server.post("/v1/is_authorized", &unpinned);
    assert_eq!(status, 200, "{body}");
}

/// By default the principal comes from the store: a request cannot mint a user
/// inside a habilitation it does not hold.
#[test]
fn by_default_a_request_may_not_bring_its_own_principal() {
    let mut request = consult(
        "minted",
        "dep-t18-01",
        "departement-rsa-contentieux",
        &["rsa"],
        "dossier-59-0002",
    );
    request["entities"] = json!([{"uid": entity("User", "minted"),
        "parents": [entity("Partner", "departement-nord"), entity("Habilitation", "dep-t18-01")],
        "attrs": {
        "role": "user", "partner": entity("Partner", "departement-nord"), "department": "59",
        "suspended": false, "must_change_password": false, "trace_reader": false,
        "habilitation_admin": false}}]);
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "principal_not_stored",
        "User::\"minted\" is not a stored entity",
    );
    // Why it is the default: let in, the minted user would be allowed.
    let trusting = Server::start_with(Limits {
        request_principals: true,
        ..pinned_time()
    });
    trusting
        .decide(&request)
        .assert_allowed_by("P6-T18-contentieux-rsa");
}

/// A server on the bundled model whose store lacks the entity `uid`, and that
/// entity as it was stored.
fn serve_without(uid: &Value) -> (Server, Value) {
    let mut entities = bundled_entities();
    let position = entities.iter().position(|e| e["uid"] == *uid).unwrap();
    let removed = entities.remove(position);
    (serve_store(entities), removed)
}

fn bundled_entities() -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(repo("examples/entities.json")).unwrap()).unwrap()
}

/// The bundled model on `entities` instead of the demo data.
fn serve_store(entities: Vec<Value>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entities.json");
    std::fs::write(&path, Value::Array(entities).to_string()).unwrap();
    let snapshot = Snapshot::load(
        &Sources {
            entities: Some(path),
            ..bundled_sources()
        },
        DEFAULT_TIME_ATTRIBUTE,
    )
    .unwrap();
    let state = Arc::new(AppState::new(pinned_time()));
    state.install(Arc::new(snapshot));
    Server::serve(state)
}

/// On a store without `uid`, dep-t18's consultation (of `categories`) that brings
/// that entity, as `edit` leaves it, is refused, naming it.
fn assert_bringing_it_is_refused(uid: Value, categories: &[&str], edit: impl FnOnce(&mut Value)) {
    let (server, mut removed) = serve_without(&uid);
    edit(&mut removed);
    let mut request = consult(
        "dep-t18",
        "dep-t18-01",
        "departement-rsa-contentieux",
        categories,
        "dossier-59-0002",
    );
    request["entities"] = json!([removed]);
    let named = format!(
        "{}::{} is named by stored entities",
        uid["type"].as_str().unwrap(),
        uid["id"]
    );
    assert_error(
        server.post("/v1/is_authorized", &request),
        400,
        "entity_conflict",
        &named,
    );
}

/// A stored user whose habilitation is missing from the store: a request may not
/// supply that habilitation (it would define what a stored user holds).
#[test]
fn by_default_a_request_may_not_define_a_parent_stored_entities_lack() {
    let habilitation = json!({"type": "Habilitation", "id": "dep-t18-01"});
    assert_bringing_it_is_refused(habilitation, &["rsa"], |_| {});
}

/// A mission a stored convention lists but the store lacks: a request may not
/// supply it (it would define which data the partner's mission may see: any).
#[test]
fn by_default_a_request_may_not_define_an_entity_stored_attributes_name() {
    let mission = json!({"type": "Mission", "id": "departement-rsa-contentieux"});
    assert_bringing_it_is_refused(mission, &["prestations"], |mission| {
        mission["attrs"]["categories"] = json!(["rsa", "ressources", "prestations"]);
    });
}

/// A bulletin's habilitation counts are derived from the store (H4): a bulletin a
/// request brought, with the counts it chose (or none, read as 0), would escape
/// the ceilings. Which types are derived comes from the schema, so a store with no
/// habilitation at all refuses it too.
#[test]
fn a_request_may_not_bring_an_entity_whose_tags_are_derived() {
    let stored = entity("Bulletin", "bouscat-cdap");
    let mut bulletin = bundled_entities()
        .into_iter()
        .find(|e| e["uid"] == stored)
        .unwrap();
    bulletin["uid"] = entity("Bulletin", "bouscat-cdap-bis");
    bulletin["tags"] = json!({"T2": 0, "*": 0});
    let mut request = act(
        "bou-admin",
        "grant_habilitation",
        entity("Habilitation", "bou-t2-new"),
    );
    request["entities"] = json!([bulletin, {"uid": entity("Habilitation", "bou-t2-new"), "parents": [],
        "attrs": {"bulletin": entity("Bulletin", "bouscat-cdap-bis"),
                  "partner": entity("Partner", "mairie-bouscat"), "profile": "T2", "suspended": false}}]);
    let no_habilitation: Vec<Value> = bundled_entities()
        .into_iter()
        .filter(|e| e["uid"]["type"] != "Habilitation")
        .collect();
    for server in [Server::start(), serve_store(no_habilitation)] {
        assert_error(
            server.post("/v1/is_authorized", &request),
            400,
            "entity_conflict",
            "Bulletin::\"bouscat-cdap-bis\" is of a type whose tags the sidecar derives",
        );
    }
}

/// Who holds a habilitation is derived from the stored users (H3): a request may
/// bring a new habilitation, which no stored user holds, but not the tags that say
/// who does.
#[test]
fn a_request_may_bring_a_habilitation_but_not_its_derived_tags() {
    let mut request = act(
        "mau-admin",
        "grant_habilitation",
        entity("Habilitation", "mau-t2-new"),
    );
    let mut habilitation = json!({"uid": entity("Habilitation", "mau-t2-new"), "parents": [],
        "attrs": {"bulletin": entity("Bulletin", "maubeuge-cdap"),
                  "partner": entity("Partner", "ville-maubeuge"), "profile": "T2", "suspended": false}});
    request["entities"] = json!([habilitation]);
    let server = Server::start();
    let (status, body) = server.post("/v1/is_authorized", &request);
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("Allow")),
        "{body}"
    );
    habilitation["tags"] = json!({"user": 1});
    request["entities"] = json!([habilitation]);
    assert_error(
        server.post("/v1/is_authorized", &request),
        400,
        "entity_conflict",
        "Habilitation::\"mau-t2-new\" has tags, which the sidecar derives",
    );
}

/// serde reads a struct from an array of its fields in order, and Cedar an entity:
/// neither is a request a backend means, nor one a proxy would read as such.
#[test]
fn a_request_or_an_entity_written_as_an_array_is_refused() {
    let server = Server::start();
    let request = allowed_consultation();
    let fields = ["principal", "action", "resource", "context"].map(|f| request[f].clone());
    let positional = json!(fields);
    assert_error(
        server.post("/v1/is_authorized", &positional),
        400,
        "malformed_json",
        "expected a JSON object",
    );
    let (status, body) = server.post(
        "/v1/batch_is_authorized",
        &json!({"requests": [positional.clone(), request.clone()]}),
    );
    assert_eq!(status, 200, "{body}");
    let item = &body["results"][0]["error"];
    assert_eq!(item["code"], "malformed_json", "{body}");
    assert!(
        item["message"]
            .to_string()
            .contains("expected a JSON object"),
        "{body}"
    );
    assert_eq!(body["results"][1]["decision"], "Allow", "{body}");
    assert_error(
        server.post("/v1/batch_is_authorized", &json!([[positional]])),
        400,
        "malformed_json",
        "expected a JSON object",
    );
    let mut request = act(
        "mau-admin",
        "grant_habilitation",
        entity("Habilitation", "new"),
    );
    request["entities"] = json!([[entity("Habilitation", "new"),
        {"bulletin": entity("Bulletin", "maubeuge-cdap"), "partner": entity("Partner", "ville-maubeuge"),
         "profile": "T1", "suspended": false}, []]]);
    assert_error(
        server.post("/v1/is_authorized", &request),
        400,
        "invalid_entities",
        "entity 0 is not a JSON object",
    );
}

#[test]
fn asking_about_an_action_group_says_it_applies_to_nothing() {
    assert_error(
        Server::start().post(
            "/v1/is_authorized",
            &act(
                "mau-admin",
                "manage_habilitations",
                entity("Habilitation", "mau-t2-01"),
            ),
        ),
        400,
        "invalid_request",
        "applies to no principal type (an action group?)",
    );
}

#[test]
fn a_duplicate_key_in_a_batch_item_is_that_items_error_as_in_a_single_request() {
    let server = Server::start();
    let item = r#"{"principal":"User::\"mau-suspended\"","principal":"User::\"mau-t2\"","action":"Action::\"consult_file\"","resource":"File::\"dossier-59-0004\""}"#;
    let (status, single) = server.post_raw("/v1/is_authorized", item);
    assert_eq!(
        (status, &single["error"]["code"]),
        (400, &json!("malformed_json")),
        "{single}"
    );
    let allowed = allowed_consultation();
    let (status, body) = server.post_raw(
        "/v1/batch_is_authorized",
        &format!(r#"{{"requests":[{item},{allowed}]}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let message = body["results"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("duplicate"), "{body}");
    Decision::from_json(&body["results"][1]).assert_allowed_by("P3-T2-prestataire-service-social");
    let (status, body) = server.post_raw(
        "/v1/batch_is_authorized",
        r#"{"requests":[],"requests":[]}"#,
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("malformed_json")),
        "{body}"
    );
}

/// A batch item's JSON error is placed in the body the backend sent, as a single
/// request's is in its own: the reported line and column hold the item's last brace,
/// where a missing field is found.
#[test]
fn a_batch_items_json_error_gives_its_line_and_column_in_the_body() {
    let server = Server::start();
    let one_line = r#"{"principal": "User::\"mau-t2\"", "resource": "File::\"dossier-59-0004\""}"#;
    let two_lines = one_line.replace(", ", ",\n  ");
    let body = format!(
        "{{\"requests\": [\n    {},\n    {two_lines},\n    {one_line}\n]}}",
        allowed_consultation()
    );
    let (status, reply) = server.post_raw("/v1/batch_is_authorized", &body);
    assert_eq!(status, 200, "{reply}");
    let lines: Vec<&str> = body.lines().collect();
    for item in [1, 2] {
        let message = reply["results"][item]["error"]["message"].as_str().unwrap();
        assert!(message.contains("missing field `action`"), "{message}");
        let (line, column) = message
            .rsplit_once(" at line ")
            .and_then(|(_, at)| at.split_once(" column "))
            .map(|(l, c)| (l.parse::<usize>().unwrap(), c.parse::<usize>().unwrap()))
            .unwrap_or_else(|| panic!("no position: {message}"));
        assert_eq!(
            lines[line - 1].as_bytes()[column - 1],
            b'}',
            "item {item} at line {line} column {column}: {message}\n{body}"
        );
        assert_eq!(line, [0, 4, 5][item], "{message}");
    }
}

/// A body's broken chunked framing is named (it said only "error reading a body
/// from connection").
#[test]
fn a_broken_chunked_body_is_refused_saying_why() {
    let reply = Server::start().exchange_raw(
        "POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("body_unreadable"), "{reply}");
    assert!(reply.contains("chunk size"), "{reply}");
}

#[test]
fn an_action_as_the_principal_or_resource_is_refused_as_such() {
    let server = Server::start();
    for (field, action) in [("resource", "consult_file"), ("principal", "nope")] {
        let mut request = allowed_consultation();
        request[field] = json!(format!("Action::\"{action}\""));
        assert_error(
            server.post("/v1/is_authorized", &request),
            400,
            "invalid_request",
            &format!("{field}: Action::\"{action}\" is an action"),
        );
    }
}

#[test]
fn a_stored_entity_of_the_wrong_type_as_principal_is_refused() {
    let mut request = allowed_consultation();
    request["principal"] = json!({"type": "File", "id": "dossier-59-0001"});
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_request",
        "principal type `File` is not valid",
    );
}

#[test]
fn request_entities_violating_the_schema_are_refused() {
    let mut request = allowed_consultation();
    request["entities"] =
        json!([{"uid": entity("File", "f"), "parents": [], "attrs": {"department": 59}}]);
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "invalid_entities",
        "File",
    );
}

/// dep-t18's consultation of `dossier-59-new`, a file the request brings as `file`.
fn consultation_of_a_brought_file(file: Value) -> Value {
    let mut request = consult(
        "dep-t18",
        "dep-t18-01",
        "departement-rsa-contentieux",
        &["rsa"],
        "dossier-59-new",
    );
    request["entities"] = json!([file]);
    request
}

/// Cedar's entity parser reads an escape and ignores keys beside it (or inside it):
/// a reader in front of the sidecar could take those for the value. Refused, as in
/// the context.
#[test]
fn a_request_entitys_escape_with_other_keys_is_refused() {
    let server = Server::start();
    let file = |rsa_last_date: Value, caf: Value| {
        let request = consultation_of_a_brought_file(json!({
            "uid": entity("File", "dossier-59-new"),
            "attrs": {"caf": caf, "department": "59", "rsa_now": false,
                      "rsa_last_date": rsa_last_date, "categories": ["rsa"]},
            "parents": []
        }));
        server.post("/v1/is_authorized", &request)
    };
    let date = |arg: &str| json!({"__extn": {"fn": "datetime", "arg": arg}});
    let caf = |id: &str| json!({"__entity": {"type": "Caf", "id": id}});
    let (status, body) = file(date("2026-01-01"), caf("caf-nord"));
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("Allow")),
        "{body}"
    );
    let mut outer_arg = date("2026-01-01");
    outer_arg["arg"] = json!("2010-01-01");
    let mut inner_key = date("2026-01-01");
    inner_key["__extn"]["junk"] = json!(true);
    let mut outer_id = caf("caf-nord");
    outer_id["type"] = json!("Caf");
    outer_id["id"] = json!("caf-gironde");
    for (rsa_last_date, caf, escape) in [
        (outer_arg, caf("caf-nord"), "__extn"),
        (inner_key, caf("caf-nord"), "__extn"),
        (date("2026-01-01"), outer_id, "__entity"),
    ] {
        assert_error(
            file(rsa_last_date, caf),
            400,
            "invalid_entities",
            &format!("entity 0: {escape} with other keys beside it, or in it other than `"),
        );
    }
    let offset = json!({"__extn": {"fn": "offset", "args": [date("2026-01-01"), {"__extn": {"fn": "duration", "arg": "1d"}}]}});
    assert_error(
        file(offset, caf("caf-nord")),
        400,
        "invalid_entities",
        "a call of several, `args`, is not read",
    );
}

/// A number Cedar has no value for, in a request entity, is named with its path (Cedar
/// said only that the data "did not match any variant of untagged enum").
#[test]
fn a_number_cedar_cannot_hold_in_a_request_entity_is_named() {
    let server = Server::start();
    for (number, shown) in [
        ("9223372036854775808", "9223372036854775808"),
        ("2.5", "2.5"),
    ] {
        let file = format!(
            r#"{{"uid": {{"type": "File", "id": "dossier-59-new"}}, "parents": [],
                "attrs": {{"caf": {{"type": "Caf", "id": "caf-nord"}}, "department": "59",
                "rsa_now": false, "categories": ["rsa"], "codes": [1, {number}]}}}}"#
        );
        let request = consultation_of_a_brought_file(serde_json::from_str(&file).unwrap());
        assert_error(
            server.post("/v1/is_authorized", &request),
            400,
            "invalid_entities",
            &format!("entity 0: `attrs.codes[1]`: {shown} is not a number Cedar reads"),
        );
    }
}

/// Cedar's parser passes over an entity's unknown fields and extra keys in its
/// references; the request's own fields and references are refused for such keys,
/// so its entities are too (`tag` for `tags` would drop the tags unseen).
#[test]
fn a_request_entitys_key_that_would_not_be_read_is_refused() {
    let server = Server::start();
    let brought =
        |file: Value| server.post("/v1/is_authorized", &consultation_of_a_brought_file(file));
    let file = json!({
        "uid": entity("File", "dossier-59-new"),
        "attrs": {"caf": entity("Caf", "caf-nord"), "department": "59", "rsa_now": false,
                  "rsa_last_date": {"__extn": {"fn": "datetime", "arg": "2026-01-01"}},
                  "categories": ["rsa"]},
        "parents": []
    });
    let (status, body) = brought(file.clone());
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("Allow")),
        "{body}"
    );
    let mut typo = file.clone();
    typo["tag"] = json!({"x": 1});
    let mut uid_key = file.clone();
    uid_key["uid"]["x"] = json!(1);
    let mut parent_key = file.clone();
    parent_key["parents"] = json!([{"type": "Caf", "id": "caf-nord", "x": 1}]);
    // An attribute the schema declares as an entity: `{"type", "id", "x"}` was read
    // as the entity, `x` ignored.
    let mut attribute_key = file;
    attribute_key["attrs"]["caf"]["x"] = json!(1);
    for (entity_json, expected) in [
        (typo, "entity 0: `tag` is not read"),
        (uid_key, "entity 0: `x` in `uid` is not read"),
        (parent_key, "entity 0: `x` in a parent is not read"),
        (
            attribute_key,
            "entity 0: `x` in attribute `caf` is not read",
        ),
    ] {
        assert_error(brought(entity_json), 400, "invalid_entities", expected);
    }
}

#[test]
fn request_entities_cannot_replace_stored_ones() {
    // Re-sending a suspended user as active must not un-suspend them.
    let mut request = consult(
        "mau-suspended",
        "mau-t2-03",
        "maubeuge-centre-loisirs-qf",
        &["quotient_familial"],
        "dossier-59-0004",
    );
    request["entities"] = json!([{"uid": entity("User", "mau-suspended"),
        "parents": [entity("Partner", "ville-maubeuge"), entity("Habilitation", "mau-t2-03")],
        "attrs": {"role": "user", "partner": entity("Partner", "ville-maubeuge"), "suspended": false,
                  "must_change_password": false, "trace_reader": false, "habilitation_admin": false}}]);
    assert_error(
        Server::start().post("/v1/is_authorized", &request),
        400,
        "entity_conflict",
        "mau-suspended",
    );
}

/// DNS rebinding: a web page whose name its author made resolve to 127.0.0.1 would
/// be the sidecar's own origin, free to set the trace headers and read the answers.
/// Such a name is refused; `localhost`, IP addresses and `--allow-host` names are not.
#[test]
fn a_request_addressed_to_another_host_name_is_refused() {
    let server = Server::start_with(Limits {
        allowed_hosts: vec!["authz.internal".into()],
        ..pinned_time()
    });
    let addressed_to = |host: &str| {
        status_and_json(
            ureq::post(&server.url("/v1/is_authorized"))
                .set("host", host)
                .send_string(&allowed_consultation().to_string()),
        )
    };
    for host in [
        "rebind.example",
        "rebind.example:8180",
        "localhost.rebind.example",
        "authz.internal.rebind.example",
        "localhost:99999999",
        "localhost:http",
        "localhost:+80",
        "rebind.example@localhost",
    ] {
        assert_error(addressed_to(host), 403, "host_not_allowed", host);
    }
    // A request line in absolute form names its host, which HTTP counts before
    // `Host`.
    let absolute = server.exchange_raw(
        "GET http://rebind.example/readyz HTTP/1.1\r\nHost: localhost\r\n\
         Connection: close\r\n\r\n",
    );
    assert!(absolute.starts_with("HTTP/1.1 403"), "{absolute}");
    assert!(absolute.contains("rebind.example"), "{absolute}");
    let absolute_own = server.exchange_raw(
        "GET http://127.0.0.1/readyz HTTP/1.1\r\nHost: localhost\r\n\
         Connection: close\r\n\r\n",
    );
    assert!(absolute_own.starts_with("HTTP/1.1 200"), "{absolute_own}");
    // Two Host headers: which one would count? Refused, whichever comes first.
    let twice = server.exchange_raw(
        "POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\nHost: rebind.example\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(twice.starts_with("HTTP/1.1 403"), "{twice}");
    assert!(twice.contains("host_not_allowed"), "{twice}");
    assert!(twice.contains("sent more than once"), "{twice}");
    for host in [
        "localhost",
        "LOCALHOST:8180",
        "127.0.0.1:8180",
        "[::1]:8180",
        "10.0.0.7",
        "authz.internal:8180",
    ] {
        let (status, body) = addressed_to(host);
        assert_eq!(
            (status, &body["decision"]),
            (200, &json!("Allow")),
            "{host}: {body}"
        );
    }
}

#[test]
fn an_encoded_body_gets_415_saying_so() {
    let server = Server::start();
    let reply = ureq::post(&server.url("/v1/is_authorized"))
        .set("content-type", "application/json")
        .set("content-encoding", "gzip")
        .send_string(&allowed_consultation().to_string());
    let (status, body) = status_and_json(reply);
    assert_error(
        (status, body),
        415,
        "body_encoded",
        "encoded (gzip): the sidecar reads plain JSON only",
    );
}

/// `identity` on one line and `gzip` on the next is still a gzip body.
#[test]
fn an_encoding_on_a_second_header_line_gets_415_too() {
    let server = Server::start();
    let body = allowed_consultation().to_string();
    let reply = server.exchange_raw(&format!(
        "POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\n\
         Content-Encoding: identity\r\nContent-Encoding: gzip\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(reply.starts_with("HTTP/1.1 415"), "{reply}");
    assert!(reply.contains("body_encoded"), "{reply}");
}

/// Empty items of a coding list are ignored, as RFC 9110 (5.6.1) asks: `identity,`
/// is identity (it was refused as the coding "").
#[test]
fn an_empty_item_in_a_coding_list_is_ignored() {
    let server = Server::start_with(pinned_time());
    for codings in ["identity,", ", identity", ""] {
        let reply = ureq::post(&server.url("/v1/is_authorized"))
            .set("content-encoding", codings)
            .send_string(&allowed_consultation().to_string());
        let (status, body) = status_and_json(reply);
        assert_eq!(status, 200, "{codings:?}: {body}");
    }
}

/// hyper undoes `chunked` and no other transfer coding: a body sent with
/// `Transfer-Encoding: gzip, chunked` would reach the reader still gzipped. Refused
/// as a content coding is; a plain chunked body is decided.
#[test]
fn a_transfer_coding_other_than_chunked_gets_415() {
    let server = Server::start_with(pinned_time());
    let body = allowed_consultation().to_string();
    let send = |codings: &str| {
        server.exchange_raw(&format!(
            "POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\n\
             Transfer-Encoding: {codings}\r\nConnection: close\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ))
    };
    let gzip = send("gzip, chunked");
    assert!(gzip.starts_with("HTTP/1.1 415"), "{gzip}");
    assert!(
        gzip.contains("body_encoded") && gzip.contains("(gzip)"),
        "{gzip}"
    );
    let chunked = send("chunked");
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");
    assert!(chunked.contains(r#""decision":"Allow""#), "{chunked}");
}

/// An error quoting the request quotes at most 1 KiB of it: a megabyte-long id is
/// not sent back whole.
#[test]
fn an_error_message_quotes_at_most_a_kibibyte_of_the_request() {
    let server = Server::start();
    let mut request = allowed_consultation();
    let long_id = "é".repeat(50_000);
    request["principal"] = json!(format!("User::\"{long_id}\""));
    let (status, body) = server.post("/v1/is_authorized", &request);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_entity", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert_cut(message, "principal: entity User::\"éé");
    // A short message is left whole.
    request["principal"] = json!("User::\"nobody\"");
    let (_, body) = server.post("/v1/is_authorized", &request);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("User::\"nobody\"") && !message.contains('…'),
        "{body}"
    );
}

/// A context naming a habilitation that does not exist is denied, and each policy
/// that reads it says so in `diagnostics.errors`, quoting its id: cut as error
/// messages are, or a long id would come back (and go into the log) once a policy.
#[test]
fn policy_errors_quote_at_most_a_kibibyte_of_the_request() {
    let server = Server::start();
    let mut request = allowed_consultation();
    request["context"]["habilitation"]["id"] = json!("h".repeat(100_000));
    let (status, body) = server.post("/v1/is_authorized", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "Deny", "{body}");
    let errors = body["diagnostics"]["errors"].as_array().unwrap();
    assert!(errors.len() > 1, "{body}");
    for error in errors {
        assert_cut(error.as_str().unwrap(), "error while evaluating policy `");
    }
}

/// `message` starts with `start`, quotes at most 1 KiB, and says it was cut.
fn assert_cut(message: &str, start: &str) {
    let (quoted, tail) = message.split_once('…').expect("a cut message");
    assert!(quoted.len() <= 1024, "{} bytes quoted", quoted.len());
    assert!(quoted.starts_with(start), "{message}");
    assert!(tail.contains("bytes in all"), "{tail}");
}

#[test]
fn body_over_the_cap_gets_413() {
    let server = Server::start_with(Limits {
        max_body: 512,
        ..pinned_time()
    });
    let mut request = allowed_consultation();
    request["padding"] = json!("x".repeat(1000));
    assert_error(
        server.post("/v1/is_authorized", &request),
        413,
        "body_too_large",
        "512",
    );
}

/// A client that stalls mid-headers is cut off, and one that stalls mid-body gets
/// 408: neither holds its connection past the read timeout.
#[test]
fn a_stalled_client_is_cut_off_after_the_read_timeout() {
    use std::io::{Read, Write};
    let server = Server::start_with(Limits {
        read_timeout: Duration::from_millis(300),
        ..pinned_time()
    });
    let stalled = |sent: &str| {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(sent.as_bytes()).unwrap();
        let started = Instant::now();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        (answer, started.elapsed())
    };
    let (answer, took) = stalled("POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\n");
    assert!(
        took < Duration::from_secs(5),
        "headers: closed after {took:?}"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    let (answer, took) = stalled(
        "POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"principal\"",
    );
    assert!(
        took < Duration::from_secs(5),
        "body: answered after {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}

#[test]
fn batch_over_the_cap_is_refused() {
    let server = Server::start_with(Limits {
        max_batch: 3,
        ..pinned_time()
    });
    let batch = json!({"requests": vec![allowed_consultation(); 4]});
    assert_error(
        server.post("/v1/batch_is_authorized", &batch),
        400,
        "batch_too_large",
        "limit of 3",
    );
}

#[test]
fn unknown_route_and_wrong_method() {
    let server = Server::start();
    assert_eq!(server.get("/v2/is_authorized").0, 404);
    // A 405 names the method the path answers (RFC 9110's `Allow`).
    for (request, allow) in [
        ("GET /v1/is_authorized", "POST"),
        ("DELETE /v1/batch_is_authorized", "POST"),
        ("POST /healthz", "GET"),
        ("PUT /v1/traces", "GET"),
    ] {
        let response = server.exchange_raw(&format!(
            "{request} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("\r\nallow: {}\r\n", allow.to_ascii_lowercase())),
            "{request}: {response}"
        );
        assert!(response.contains("method_not_allowed"), "{response}");
    }
}

/// A client that shuts its sending side once its request is written (`nc -N`,
/// `shutdown(SHUT_WR)`) still gets its answer.
#[test]
fn a_client_that_half_closes_after_its_request_is_answered() {
    use std::io::{Read, Write};
    let server = Server::start();
    let body = allowed_consultation().to_string();
    for _ in 0..20 {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(response.contains(r#""decision":"Allow""#), "{response}");
    }
}

#[test]
fn no_decision_before_a_snapshot_is_loaded() {
    let server = Server::serve(Arc::new(AppState::new(Limits::default())));
    assert_error(
        server.post("/v1/is_authorized", &allowed_consultation()),
        503,
        "not_ready",
        "snapshot",
    );
    assert_eq!(server.get("/readyz").0, 503);
    assert_eq!(server.get("/readyz").0, 503);
    assert_eq!(server.get("/healthz").0, 200);
    // The decision refused counts; the readiness probes' 503s are their answers.
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains(r#"cdap_authz_request_errors_total{code="not_ready"} 1"#),
        "{metrics}"
    );
}

/// Cedar skips a `forbid` whose evaluation errors and may then allow; the sidecar
/// denies. Here the user's convention does not exist, so the convention forbids
/// (S5, S6) error while the change-password permit holds.
#[test]
fn an_erroring_forbid_makes_the_decision_deny() {
    let mut request = act(
        "ghost-user",
        "change_password",
        entity("User", "ghost-user"),
    );
    request["entities"] = json!([
        {"uid": entity("Partner", "ghost-partner"), "parents": [], "attrs": {
            "name": "Partner whose convention is missing", "kind": "commune",
            "caf_social_action_subsidy": false, "convention": entity("Convention", "missing")}},
        {"uid": entity("User", "ghost-user"), "parents": [entity("Partner", "ghost-partner")], "attrs": {
            "role": "user", "partner": entity("Partner", "ghost-partner"), "suspended": false,
            "must_change_password": false, "trace_reader": false, "habilitation_admin": false}}
    ]);
    let server = Server::start_with(Limits {
        request_principals: true,
        ..pinned_time()
    });
    let decision = server.decide(&request);
    assert!(!decision.allowed, "{decision:?}");
    assert!(decision.reason.is_empty(), "{decision:?}");
    assert!(
        decision
            .errors
            .iter()
            .any(|e| e.contains("S5-convention-not-yet-in-force")),
        "{decision:?}"
    );
}

//! One allowed and one denied request per DOMAIN.md rule the policies encode,
//! over real HTTP on the bundled model. Test names start with the rule id.

use serde_json::{json, Value};

use crate::util::{act, allowed_consultation, consult, entity, Server};

const QF: &[&str] = &["quotient_familial"];

// ---------------------------------------------------------------- fixtures

/// A consultation with one context field replaced.
fn with_context(mut request: Value, key: &str, value: Value) -> Value {
    request["context"][key] = value;
    request
}

fn with_entities(mut request: Value, entities: Vec<Value>) -> Value {
    request["entities"] = Value::Array(entities);
    request
}

/// A fictional partner of the Caf du Nord, sent as request entities, whose
/// convention attributes can be overridden: `fx-admin` (administrator), `fx-user`
/// (T2 habilitation `fx-t2`) and a habilitation `fx-new` to grant.
fn fictional_partner(convention: Value) -> Vec<Value> {
    let mut attrs = json!({
        "number": "FX-1", "signed_on": "2020-01-01", "cnil_formalities_completed": true,
        "management_mode": "delegue", "delegation_withdrawn": false,
        "missions": [entity("Mission", "maubeuge-centre-loisirs-qf")]
    });
    for (k, v) in convention.as_object().unwrap() {
        attrs[k] = v.clone();
    }
    let hab = |id: &str| {
        json!({"uid": entity("Habilitation", id), "parents": [], "attrs": {
        "bulletin": entity("Bulletin", "fx-cdap"), "partner": entity("Partner", "fx-partner"),
        "profile": "T2", "suspended": false}})
    };
    let user = |id: &str, role: &str, parents: Vec<Value>| {
        json!({"uid": entity("User", id), "parents": parents, "attrs": {
        "role": role, "partner": entity("Partner", "fx-partner"), "suspended": false,
        "must_change_password": false, "trace_reader": false, "habilitation_admin": false}})
    };
    vec![
        json!({"uid": entity("Convention", "fx-conv"), "parents": [entity("Caf", "caf-nord")], "attrs": attrs}),
        json!({"uid": entity("Partner", "fx-partner"), "parents": [entity("Caf", "caf-nord")], "attrs": {
            "name": "Fictional partner", "kind": "commune", "caf_social_action_subsidy": true,
            "convention": entity("Convention", "fx-conv")}}),
        json!({"uid": entity("Bulletin", "fx-cdap"), "parents": [entity("Convention", "fx-conv")], "attrs": {
            "convention": entity("Convention", "fx-conv"), "service": entity("Service", "cdap"),
            "available_from": "2020-01-01", "profiles": ["T1", "T2", "T4", "T5", "T18", "T19"],
            "profile_ceilings": entity("Ceilings", "maubeuge-cdap")}}),
        hab("fx-t2"),
        hab("fx-new"),
        user(
            "fx-admin",
            "administrator",
            vec![entity("Partner", "fx-partner")],
        ),
        user(
            "fx-user",
            "user",
            vec![
                entity("Partner", "fx-partner"),
                entity("Habilitation", "fx-t2"),
            ],
        ),
    ]
}

fn fictional_consultation(convention: Value) -> Value {
    with_entities(
        consult(
            "fx-user",
            "fx-t2",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ),
        fictional_partner(convention),
    )
}

fn fictional_grant(convention: Value) -> Value {
    with_entities(
        act(
            "fx-admin",
            "grant_habilitation",
            entity("Habilitation", "fx-new"),
        ),
        fictional_partner(convention),
    )
}

/// A new habilitation to grant, sent as a request entity.
fn grant(principal: &str, partner: &str, bulletin: &str, profile: &str) -> Value {
    with_entities(
        act(
            principal,
            "grant_habilitation",
            entity("Habilitation", "new"),
        ),
        vec![
            json!({"uid": entity("Habilitation", "new"), "parents": [], "attrs": {
            "bulletin": entity("Bulletin", bulletin), "partner": entity("Partner", partner),
            "profile": profile, "suspended": false}}),
        ],
    )
}

// ---------------------------------------------------------------- profiles

#[test]
fn p1_bulletin_profile_is_honoured() {
    Server::start()
        .decide(&allowed_consultation())
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn p1_profile_t3_is_never_honoured_for_cdap() {
    let decision = Server::start().decide(&consult(
        "mau-t2",
        "mau-t3-legacy",
        "maubeuge-centre-loisirs-qf",
        QF,
        "dossier-59-0004",
    ));
    decision.assert_denied_by("P1-profile-outside-cdap");
    decision.assert_denied_by("P1-profile-not-opened-by-bulletin");
}

#[test]
fn p1_habilitation_for_another_service_opens_nothing_in_cdap() {
    Server::start()
        .decide(&consult(
            "mau-t2",
            "mau-aides-t2",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_denied_by("P1-habilitation-not-for-cdap");
}

#[test]
fn p2_t1_social_worker_consults_for_a_partner_mission() {
    Server::start()
        .decide(&consult(
            "mau-t1",
            "mau-t1-ccas",
            "maubeuge-petite-enfance-psu",
            &["ressources"],
            "dossier-59-0004",
        ))
        .assert_allowed_by("P2-T1-action-sociale");
}

#[test]
fn p2_t1_social_worker_cannot_use_a_mission_of_another_partner() {
    Server::start()
        .decide(&consult(
            "dep-t1",
            "dep-t1-01",
            "maubeuge-petite-enfance-psu",
            &["ressources"],
            "dossier-59-0004",
        ))
        .assert_denied_by("M1-mission-not-in-convention");
}

#[test]
fn p3_t2_provider_computes_participation_from_quotient_familial() {
    Server::start()
        .decide(&consult(
            "mau-t2",
            "mau-t2-01",
            "maubeuge-restauration-qf",
            QF,
            "dossier-59-0001",
        ))
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn p3_t2_provider_cannot_consult_for_another_purpose() {
    Server::start()
        .decide(&consult(
            "mau-t2",
            "mau-t2-01",
            "maubeuge-petite-enfance-psu",
            &["ressources"],
            "dossier-59-0004",
        ))
        .assert_denied_by_default();
}

#[test]
fn p3_t2_is_only_for_providers_receiving_caf_social_action_subsidies() {
    let mut entities = fictional_partner(json!({}));
    entities[1]["attrs"]["caf_social_action_subsidy"] = json!(false);
    let request = with_entities(
        consult(
            "fx-user",
            "fx-t2",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ),
        entities,
    );
    Server::start().decide(&request).assert_denied_by_default();
}

fn t4_consultation() -> Value {
    consult(
        "mau-t4",
        "mau-t4-01",
        "rsa-instruction",
        &["rsa"],
        "dossier-59-0001",
    )
}

#[test]
fn p4_t4_instructor_with_own_instructor_number() {
    let request = with_context(
        t4_consultation(),
        "instructor_number",
        json!("NORD-59-0042"),
    );
    Server::start()
        .decide(&request)
        .assert_allowed_by("P4-T4-service-instructeur");
}

#[test]
fn p4_t4_instructor_without_instructor_number_is_denied() {
    Server::start()
        .decide(&t4_consultation())
        .assert_denied_by_default();
}

#[test]
fn p4_t4_instructor_with_someone_elses_number_is_denied() {
    let request = with_context(
        t4_consultation(),
        "instructor_number",
        json!("NORD-59-0001"),
    );
    Server::start().decide(&request).assert_denied_by_default();
}

#[test]
fn p5_t5_follows_rsa_files_of_own_department() {
    Server::start()
        .decide(&consult(
            "dep-t5",
            "dep-t5-01",
            "departement-rsa-suivi",
            &["rsa"],
            "dossier-59-0004",
        ))
        .assert_allowed_by("P5-T5-suivi-rsa");
}

#[test]
fn p5_t5_cannot_follow_files_of_another_department() {
    Server::start()
        .decide(&consult(
            "dep-t5",
            "dep-t5-01",
            "departement-rsa-suivi",
            &["rsa"],
            "dossier-62-0001",
        ))
        .assert_denied_by_default();
}

#[test]
fn p6_t18_consults_files_with_rsa_within_two_years() {
    let server = Server::start();
    for file in ["dossier-59-0001", "dossier-59-0002"] {
        server
            .decide(&consult(
                "dep-t18",
                "dep-t18-01",
                "departement-rsa-contentieux",
                &["rsa"],
                file,
            ))
            .assert_allowed_by("P6-T18-contentieux-rsa");
    }
}

#[test]
fn p6_t18_cannot_consult_files_without_recent_rsa() {
    let server = Server::start();
    for file in ["dossier-59-0003", "dossier-59-0004"] {
        server
            .decide(&consult(
                "dep-t18",
                "dep-t18-01",
                "departement-rsa-contentieux",
                &["rsa"],
                file,
            ))
            .assert_denied_by_default();
    }
}

/// The two-year window is 730 days, to the second.
#[test]
fn p7_t19_two_year_window_boundary() {
    let server = Server::start();
    let file = json!({"uid": entity("File", "boundary"), "parents": [], "attrs": {
        "caf": entity("Caf", "caf-nord"), "department": "59", "rsa_now": false,
        "rsa_last_date": "2024-11-22T10:00:00Z", "categories": ["rsa"]}});
    let at = |now: &str| {
        let request = consult(
            "dep-t19",
            "dep-t19-01",
            "departement-rsa-controle",
            &["rsa"],
            "boundary",
        );
        with_entities(with_context(request, "now", json!(now)), vec![file.clone()])
    };
    // 2024-11-22 + 730 days = 2026-11-22
    server
        .decide(&at("2026-11-22T10:00:00Z"))
        .assert_allowed_by("P7-T19-controle-rsa");
    server
        .decide(&at("2026-11-22T10:00:01Z"))
        .assert_denied_by_default();
}

#[test]
fn p7_t19_cannot_consult_a_file_without_rsa() {
    Server::start()
        .decide(&consult(
            "dep-t19",
            "dep-t19-01",
            "departement-rsa-controle",
            &["rsa"],
            "dossier-59-0004",
        ))
        .assert_denied_by_default();
}

// ---------------------------------------------------------------- missions

#[test]
fn m1_mission_of_the_partners_convention() {
    Server::start()
        .decide(&consult(
            "mau-t1",
            "mau-t1-ccas",
            "maubeuge-restauration-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_allowed_by("P2-T1-action-sociale");
}

#[test]
fn m1_mission_outside_the_convention_is_denied() {
    Server::start()
        .decide(&consult(
            "mau-t2",
            "mau-t2-01",
            "bouscat-accueil-loisirs-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_denied_by("M1-mission-not-in-convention");
}

#[test]
fn m2_data_within_the_mission() {
    Server::start()
        .decide(&consult(
            "mau-t1",
            "mau-t1-ccas",
            "maubeuge-petite-enfance-psu",
            &["ressources", "composition_familiale"],
            "dossier-59-0004",
        ))
        .assert_allowed_by("P2-T1-action-sociale");
}

#[test]
fn m2_data_beyond_the_mission_is_denied() {
    Server::start()
        .decide(&consult(
            "mau-t1",
            "mau-t1-ccas",
            "maubeuge-centre-loisirs-qf",
            &["quotient_familial", "ressources"],
            "dossier-59-0004",
        ))
        .assert_denied_by("M2-data-beyond-mission");
}

#[test]
fn m2_consultation_without_declared_data_is_denied() {
    Server::start()
        .decide(&consult(
            "mau-t1",
            "mau-t1-ccas",
            "maubeuge-centre-loisirs-qf",
            &[],
            "dossier-59-0004",
        ))
        .assert_denied_by("M2-no-data-category-declared");
}

#[test]
fn m3_file_of_the_partners_caf() {
    Server::start()
        .decide(&consult(
            "bou-t2a",
            "bou-t2-01",
            "bouscat-accueil-loisirs-qf",
            QF,
            "dossier-33-0001",
        ))
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn m3_file_of_another_caf_is_denied() {
    Server::start()
        .decide(&consult(
            "mau-t2",
            "mau-t2-01",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-33-0001",
        ))
        .assert_denied_by("M3-file-of-another-caf");
}

// ---------------------------------------------------------------- habilitations

#[test]
fn h1_delegated_managers_manage_their_partner() {
    let server = Server::start();
    for manager in ["mau-admin", "mau-deputy", "mau-manager"] {
        server
            .decide(&grant(manager, "ville-maubeuge", "maubeuge-cdap", "T1"))
            .assert_allowed_by("H1-delegated-managers-manage-habilitations");
        server
            .decide(&act(manager, "manage_user", entity("User", "mau-t1")))
            .assert_allowed_by("H1-delegated-managers-manage-users-and-groups");
        server
            .decide(&act(manager, "manage_group", entity("Group", "mau-ccas")))
            .assert_allowed_by("H1-delegated-managers-manage-users-and-groups");
    }
    server
        .decide(&act(
            "mau-admin",
            "suspend_habilitation",
            entity("Habilitation", "mau-t2-01"),
        ))
        .assert_allowed_by("H1-delegated-managers-manage-habilitations");
    server
        .decide(&act(
            "mau-admin",
            "revoke_habilitation",
            entity("Habilitation", "mau-t2-01"),
        ))
        .assert_allowed_by("H1-delegated-managers-manage-habilitations");
}

#[test]
fn h1_managers_never_manage_people_of_another_partner() {
    let server = Server::start();
    server
        .decide(&act(
            "mau-manager",
            "manage_user",
            entity("User", "bou-t2a"),
        ))
        .assert_denied_by_default();
    server
        .decide(&act(
            "mau-admin",
            "revoke_habilitation",
            entity("Habilitation", "bou-t2-01"),
        ))
        .assert_denied_by_default();
    server
        .decide(&act("mau-t2", "manage_user", entity("User", "mau-t1")))
        .assert_denied_by_default();
}

#[test]
fn h2_caf_habilitation_administrator_manages_partners_of_its_caf() {
    let server = Server::start();
    server
        .decide(&grant(
            "caf-nord-habilitations",
            "ville-maubeuge",
            "maubeuge-cdap",
            "T1",
        ))
        .assert_allowed_by("H2-caf-administrator-manages-partner-rights");
    server
        .decide(&grant(
            "caf-gironde-habilitations",
            "ville-maubeuge",
            "maubeuge-cdap",
            "T1",
        ))
        .assert_denied_by_default();
}

#[test]
fn h2_centralised_mode_partner_managers_only_request() {
    let server = Server::start();
    server
        .decide(&fictional_grant(json!({"management_mode": "centralise"})))
        .assert_denied_by("H2-centralised-mode-partner-only-requests");
    server
        .decide(&fictional_grant(json!({"management_mode": "delegue"})))
        .assert_allowed_by("H1-delegated-managers-manage-habilitations");
}

#[test]
fn h3_caf_manages_administrators() {
    let server = Server::start();
    for admin in ["mau-admin", "mau-deputy"] {
        server
            .decide(&act(
                "caf-nord-habilitations",
                "manage_administrator",
                entity("User", admin),
            ))
            .assert_allowed_by("H2-caf-administrator-manages-partner-rights");
    }
}

#[test]
fn h3_partner_managers_cannot_manage_administrators() {
    let server = Server::start();
    server
        .decide(&act(
            "mau-admin",
            "manage_user",
            entity("User", "mau-deputy"),
        ))
        .assert_denied_by("H3-administrators-managed-by-caf-only");
    server
        .decide(&act(
            "mau-manager",
            "manage_user",
            entity("User", "mau-admin"),
        ))
        .assert_denied_by("H3-administrators-managed-by-caf-only");
    server
        .decide(&act(
            "mau-admin",
            "manage_administrator",
            entity("User", "mau-deputy"),
        ))
        .assert_denied_by_default();
}

#[test]
fn h4_grant_below_ceiling() {
    // Maubeuge holds 3 active T2 habilitations (a 4th is suspended) for a ceiling of 5.
    Server::start()
        .decide(&grant("mau-admin", "ville-maubeuge", "maubeuge-cdap", "T2"))
        .assert_allowed_by("H1-delegated-managers-manage-habilitations");
}

#[test]
fn h4_grant_at_profile_ceiling_is_denied() {
    // Bouscat holds 2 active T2 habilitations for a T2 ceiling of 2; other profiles are free.
    let server = Server::start();
    server
        .decide(&grant("bou-admin", "mairie-bouscat", "bouscat-cdap", "T2"))
        .assert_denied_by("H4-ceiling-per-profile");
    server
        .decide(&grant("bou-admin", "mairie-bouscat", "bouscat-cdap", "T1"))
        .assert_allowed_by("H1-delegated-managers-manage-habilitations");
}

#[test]
fn h4_grant_at_service_ceiling_is_denied() {
    Server::start()
        .decide(&grant(
            "mau-admin",
            "ville-maubeuge",
            "maubeuge-aides-financieres",
            "T1",
        ))
        .assert_denied_by("H4-ceiling-per-service");
}

#[test]
fn h4_grant_of_a_profile_the_bulletin_does_not_open_is_denied() {
    Server::start()
        .decide(&grant("mau-admin", "ville-maubeuge", "maubeuge-cdap", "T3"))
        .assert_denied_by("H4-profile-not-opened-by-bulletin");
}

#[test]
fn h5_habilitation_held_through_a_group() {
    Server::start()
        .decide(&consult(
            "mau-t1",
            "mau-t1-ccas",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_allowed_by("P2-T1-action-sociale");
}

#[test]
fn h5_habilitation_of_a_group_one_is_not_in_is_denied() {
    Server::start()
        .decide(&consult(
            "mau-t2",
            "mau-t1-ccas",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_denied_by("H5-habilitation-not-held");
}

#[test]
fn h6_web_service_with_the_users_own_credentials() {
    let request = allowed_consultation();
    let request = with_context(
        request,
        "authentication",
        json!("webservice_user_credentials"),
    );
    Server::start()
        .decide(&request)
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn h6_technical_or_shared_accounts_are_denied() {
    let server = Server::start();
    for method in ["technical_account", "shared_account"] {
        let request = allowed_consultation();
        server
            .decide(&with_context(request, "authentication", json!(method)))
            .assert_denied_by("H6-authentication-not-personal");
    }
}

// ---------------------------------------------------------------- suspension

#[test]
fn s1_active_user_and_habilitation() {
    Server::start()
        .decide(&allowed_consultation())
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn s1_suspended_user_is_denied_everything() {
    let server = Server::start();
    server
        .decide(&consult(
            "mau-suspended",
            "mau-t2-03",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_denied_by("S1-user-suspended");
    server
        .decide(&act(
            "mau-suspended",
            "change_password",
            entity("User", "mau-suspended"),
        ))
        .assert_denied_by("S1-user-suspended");
}

#[test]
fn s1_suspended_habilitation_grants_nothing() {
    Server::start()
        .decide(&consult(
            "mau-t2b",
            "mau-t2-02",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_denied_by("S1-habilitation-suspended");
}

#[test]
fn s2_user_who_must_change_password_may_change_it() {
    Server::start()
        .decide(&act(
            "mau-newpwd",
            "change_password",
            entity("User", "mau-newpwd"),
        ))
        .assert_allowed_by("S2-change-own-password");
}

#[test]
fn s2_user_who_must_change_password_may_do_nothing_else() {
    Server::start()
        .decide(&consult(
            "mau-newpwd",
            "mau-t2-04",
            "maubeuge-centre-loisirs-qf",
            QF,
            "dossier-59-0004",
        ))
        .assert_denied_by("S2-must-change-password");
}

#[test]
fn s2_nobody_changes_someone_elses_password() {
    Server::start()
        .decide(&act(
            "mau-admin",
            "change_password",
            entity("User", "mau-t2"),
        ))
        .assert_denied_by_default();
}

#[test]
fn s3_managers_keep_their_rights_while_delegation_stands() {
    Server::start()
        .decide(&fictional_grant(json!({"delegation_withdrawn": false})))
        .assert_allowed_by("H1-delegated-managers-manage-habilitations");
}

#[test]
fn s3_withdrawn_delegation_removes_management_rights() {
    Server::start()
        .decide(&fictional_grant(json!({"delegation_withdrawn": true})))
        .assert_denied_by("S3-delegation-withdrawn");
}

#[test]
fn s5_convention_signed_with_cnil_formalities_done() {
    Server::start()
        .decide(&fictional_consultation(json!({"signed_on": "2026-11-01"})))
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn s5_convention_not_yet_in_force_is_denied() {
    let server = Server::start();
    server
        .decide(&fictional_consultation(json!({"signed_on": "2026-12-01"})))
        .assert_denied_by("S5-convention-not-yet-in-force");
    server
        .decide(&fictional_consultation(
            json!({"cnil_formalities_completed": false}),
        ))
        .assert_denied_by("S5-convention-not-yet-in-force");
}

#[test]
fn s6_termination_in_the_future_leaves_access() {
    Server::start()
        .decide(&fictional_consultation(
            json!({"termination_effective_on": "2027-02-22"}),
        ))
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn s6_no_access_from_the_termination_date() {
    let server = Server::start();
    server
        .decide(&fictional_consultation(
            json!({"termination_effective_on": "2026-11-22T10:00:00Z"}),
        ))
        .assert_denied_by("S6-convention-terminated");
    server
        .decide(&fictional_grant(
            json!({"termination_effective_on": "2026-01-01"}),
        ))
        .assert_denied_by("S6-convention-terminated");
}

fn bouscat_consultation_at(now: &str) -> Value {
    let request = consult(
        "bou-t2a",
        "bou-t2-01",
        "bouscat-accueil-loisirs-qf",
        QF,
        "dossier-33-0001",
    );
    with_context(request, "now", json!(now))
}

#[test]
fn s7_service_open_from_its_availability_date() {
    // Bouscat: convention signed 2018-01-15, Cdap available from 2018-02-01.
    Server::start()
        .decide(&bouscat_consultation_at("2018-02-01T00:00:00Z"))
        .assert_allowed_by("P3-T2-prestataire-service-social");
}

#[test]
fn s7_service_closed_before_its_availability_date() {
    let decision = Server::start().decide(&bouscat_consultation_at("2018-01-20T00:00:00Z"));
    decision.assert_denied_by("S7-service-not-yet-available");
    assert!(
        !decision.reason.iter().any(|r| r.starts_with("S5")),
        "{decision:?}"
    );
}

// ---------------------------------------------------------------- traces

#[test]
fn t3_partner_managers_and_authorised_caf_staff_read_traces() {
    let server = Server::start();
    for reader in ["mau-admin", "mau-deputy"] {
        server
            .decide(&act(
                reader,
                "read_traces",
                entity("Trace", "ville-maubeuge"),
            ))
            .assert_allowed_by("T3-partner-managers-read-partner-traces");
    }
    server
        .decide(&act(
            "caf-nord-traces",
            "read_traces",
            entity("Trace", "ville-maubeuge"),
        ))
        .assert_allowed_by("T3-authorised-caf-staff-read-caf-traces");
}

#[test]
fn t3_everyone_else_is_denied_traces() {
    let server = Server::start();
    let cases = [
        ("mau-t2", "ville-maubeuge"),          // a plain user
        ("mau-manager", "ville-maubeuge"),     // a delegated manager
        ("mau-admin", "mairie-bouscat"),       // another partner's traces
        ("caf-nord-agent", "ville-maubeuge"),  // Caf staff not authorised for traces
        ("caf-nord-traces", "mairie-bouscat"), // another Caf's partner
    ];
    for (reader, partner) in cases {
        server
            .decide(&act(reader, "read_traces", entity("Trace", partner)))
            .assert_denied_by_default();
    }
}

use serde_json::json;

use super::*;
use crate::outcome::IssueSeverity;

/// Validates and returns the issues, or an empty list when valid.
fn issues(resource: &Value) -> Vec<OutcomeIssue> {
    match validate_resource(resource) {
        Ok(()) => Vec::new(),
        Err(outcome) => outcome.issues,
    }
}

/// Asserts that validation reports an issue of `code` at `path`.
#[track_caller]
fn assert_issue(resource: &Value, code: IssueType, path: &str) {
    let found = issues(resource);
    assert!(
        found
            .iter()
            .any(|i| i.code == code && i.expression.iter().any(|e| e == path)),
        "expected {code:?} at {path}, got {found:#?}"
    );
}

#[track_caller]
fn assert_valid(resource: &Value) {
    let found = issues(resource);
    assert!(found.is_empty(), "expected no issues, got {found:#?}");
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25"
    })
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01T10:30:00+01:00",
        "valueQuantity": {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
}

#[test]
fn minimal_resources_are_valid() {
    assert_valid(&patient());
    assert_valid(&observation());
}

#[test]
fn non_object_rejected() {
    for value in [json!([]), json!("Patient"), json!(1), json!(null)] {
        let found = issues(&value);
        assert_eq!(found.len(), 1, "{value}");
        assert_eq!(found[0].code, IssueType::Structure);
    }
}

#[test]
fn resource_type_checked() {
    assert_issue(&json!({"id": "1"}), IssueType::Required, "resourceType");
    assert_issue(
        &json!({"resourceType": "Patiant"}),
        IssueType::Value,
        "resourceType",
    );
    assert_issue(
        &json!({"resourceType": "patient"}),
        IssueType::Value,
        "resourceType",
    );
    assert_issue(
        &json!({"resourceType": "DomainResource"}),
        IssueType::Value,
        "resourceType",
    );
    assert_issue(
        &json!({"resourceType": "HumanName"}),
        IssueType::Value,
        "resourceType",
    );
    assert_issue(
        &json!({"resourceType": 7}),
        IssueType::Structure,
        "resourceType",
    );
}

#[test]
fn unknown_elements_rejected() {
    let mut p = patient();
    p["nickname"] = json!("Pete");
    assert_issue(&p, IssueType::Structure, "Patient.nickname");

    let mut p = patient();
    p["name"][0]["middle"] = json!("J");
    assert_issue(&p, IssueType::Structure, "Patient.name[0].middle");

    let mut p = patient();
    p["contact"] = json!([{"name": {"family": "X"}, "phone": "1"}]);
    assert_issue(&p, IssueType::Structure, "Patient.contact[0].phone");

    let mut o = observation();
    o["valueQuantity"]["amount"] = json!(1);
    assert_issue(&o, IssueType::Structure, "Observation.valueQuantity.amount");

    // `_name` is only for primitives.
    let mut p = patient();
    p["_name"] = json!([{"id": "x"}]);
    assert_issue(&p, IssueType::Structure, "Patient._name");
}

#[test]
fn json_types_of_primitives_checked() {
    let mut p = patient();
    p["active"] = json!("true");
    assert_issue(&p, IssueType::Structure, "Patient.active");

    let mut p = patient();
    p["birthDate"] = json!(1974);
    assert_issue(&p, IssueType::Structure, "Patient.birthDate");

    let mut o = observation();
    o["valueQuantity"]["value"] = json!("72.5");
    assert_issue(&o, IssueType::Structure, "Observation.valueQuantity.value");

    let mut p = patient();
    p["multipleBirthInteger"] = json!("2");
    assert_issue(&p, IssueType::Structure, "Patient.multipleBirthInteger");

    let mut p = patient();
    p["name"][0]["given"][1] = json!(5);
    assert_issue(&p, IssueType::Structure, "Patient.name[0].given[1]");
}

#[test]
fn lexical_forms_checked() {
    let cases = [
        ("birthDate", json!("1974-13-01")),
        ("birthDate", json!("1974-02-30")),
        ("birthDate", json!("74-12-25")),
        ("birthDate", json!("1974-12-25T10:00:00Z")),
        ("deceasedDateTime", json!("2020-01-01T10:00:00")),
        ("deceasedDateTime", json!("2020-01-01T25:00:00Z")),
        ("id", json!("has space")),
        ("id", json!("a".repeat(65))),
        ("id", json!("under_score")),
        ("gender", json!("male ")),
        ("implicitRules", json!("http://example.org/a b")),
        ("multipleBirthInteger", json!(1.5)),
        ("multipleBirthInteger", json!(1.0)),
        ("multipleBirthInteger", json!(2_147_483_648_i64)),
    ];
    for (field, bad) in cases {
        let mut p = patient();
        p[field] = bad.clone();
        let path = format!("Patient.{field}");
        assert_issue(&p, IssueType::Value, &path);
    }

    let mut p = patient();
    p["photo"] = json!([{"contentType": "image/png", "data": "not base64!"}]);
    assert_issue(&p, IssueType::Value, "Patient.photo[0].data");

    let mut p = patient();
    p["photo"] = json!([{"size": 0, "url": "http://x"}]);
    assert_valid(&p);
    p["photo"] = json!([{"size": -1, "url": "http://x"}]);
    assert_issue(&p, IssueType::Value, "Patient.photo[0].size");

    let mut o = observation();
    o["component"] = json!([{"code": {"text": "x"}, "valueTime": "10:61:00"}]);
    assert_issue(&o, IssueType::Value, "Observation.component[0].valueTime");

    let mut o = observation();
    o["valueQuantity"]["value"] = serde_json::from_str("1.50").expect("number");
    assert_valid(&o);
    o["issued"] = json!("2024-03-01");
    assert_issue(&o, IssueType::Value, "Observation.issued");

    let mut o = observation();
    o["valueSampledData"] =
        json!({"origin": {"value": 0}, "period": 1, "dimensions": 0, "data": "1 2"});
    o.as_object_mut().map(|m| m.remove("valueQuantity"));
    assert_issue(
        &o,
        IssueType::Value,
        "Observation.valueSampledData.dimensions",
    );
}

#[test]
fn valid_lexical_forms_accepted() {
    let mut p = patient();
    p["birthDate"] = json!("2000-02-29");
    p["deceasedDateTime"] = json!("2024-02-29T23:59:60.123-05:00");
    p["id"] = json!("A-1.b");
    p["name"][0]["text"] = json!("Zoë \u{1F600} \u{00A0}non-breaking\ttab");
    assert_valid(&p);
    p["birthDate"] = json!("1974");
    p["deceasedDateTime"] = json!("1974-05");
    assert_valid(&p);
}

#[test]
fn cardinality_shape_checked() {
    let mut p = patient();
    p["name"] = json!({"family": "X"});
    assert_issue(&p, IssueType::Structure, "Patient.name");

    let mut p = patient();
    p["gender"] = json!(["male"]);
    assert_issue(&p, IssueType::Structure, "Patient.gender");

    let mut p = patient();
    p["name"][0]["family"] = json!(["A", "B"]);
    assert_issue(&p, IssueType::Structure, "Patient.name[0].family");
}

#[test]
fn required_elements_checked() {
    let mut o = observation();
    o.as_object_mut().map(|m| m.remove("status"));
    assert_issue(&o, IssueType::Required, "Observation.status");

    let mut p = patient();
    p["communication"] = json!([{"preferred": true}]);
    assert_issue(&p, IssueType::Required, "Patient.communication[0].language");

    let mut p = patient();
    p["extension"] = json!([{"valueString": "x"}]);
    assert_issue(&p, IssueType::Required, "Patient.extension[0].url");

    let mut p = patient();
    p["text"] = json!({"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"});
    assert_issue(&p, IssueType::Required, "Patient.text.status");

    let mut o = observation();
    o["referenceRange"] = json!([{"text": "normal"}]);
    o["component"] = json!([{"valueString": "x"}]);
    assert_issue(&o, IssueType::Required, "Observation.component[0].code");
}

#[test]
fn required_choice_reported_with_x() {
    let mut bundle = json!({"resourceType": "Bundle", "type": "collection"});
    assert_valid(&bundle);
    bundle["entry"] =
        json!([{"resource": {"resourceType": "Flag", "status": "active", "code": {"text": "x"}}}]);
    assert_issue(
        &bundle,
        IssueType::Required,
        "Bundle.entry[0].resource.subject",
    );
    let timing = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "effectiveTiming": {"repeat": {"frequency": 1, "boundsDuration": {"value": 1}}}
    });
    assert_valid(&timing);
}

#[test]
fn choice_types_checked() {
    let mut o = observation();
    o["valueString"] = json!("72.5 kg");
    assert_issue(&o, IssueType::Structure, "Observation.valueString");

    let mut o = observation();
    o.as_object_mut().map(|m| m.remove("valueQuantity"));
    o["valueDate"] = json!("2024-01-01");
    assert_issue(&o, IssueType::Structure, "Observation.valueDate");

    let mut o = observation();
    o.as_object_mut().map(|m| m.remove("valueQuantity"));
    o["value"] = json!("x");
    assert_issue(&o, IssueType::Structure, "Observation.value");

    let mut o = observation();
    o.as_object_mut().map(|m| m.remove("valueQuantity"));
    o["valueBoolean"] = json!(true);
    assert_valid(&o);
}

#[test]
fn primitive_extensions_checked() {
    let ext = json!({"extension": [{"url": "http://example.org/x", "valueString": "y"}]});

    let mut p = patient();
    p["_birthDate"] = ext.clone();
    assert_valid(&p);

    // An extension without the value is allowed.
    let mut p = patient();
    p.as_object_mut().map(|m| m.remove("birthDate"));
    p["_birthDate"] = ext.clone();
    assert_valid(&p);

    let mut p = patient();
    p["_birthDate"] = json!({"id": "b", "value": "1974"});
    assert_issue(&p, IssueType::Structure, "Patient.birthDate.value");

    let mut p = patient();
    p["_birthDate"] = json!("1974");
    assert_issue(&p, IssueType::Structure, "Patient.birthDate");

    let mut p = patient();
    p["_birthDate"] = json!({"extension": [{"valueString": "y"}]});
    assert_issue(
        &p,
        IssueType::Required,
        "Patient.birthDate.extension[0].url",
    );

    // Arrays align: null pairs with an entry on the other side.
    let mut p = patient();
    p["name"][0]["given"] = json!(["Peter", null]);
    p["name"][0]["_given"] = json!([null, ext.clone()]);
    assert_valid(&p);

    let mut p = patient();
    p["name"][0]["given"] = json!(["Peter", null]);
    assert_issue(&p, IssueType::Structure, "Patient.name[0].given[1]");

    let mut p = patient();
    p["name"][0]["_given"] = json!([ext.clone()]);
    assert_issue(&p, IssueType::Structure, "Patient.name[0].given");

    let mut p = patient();
    p["name"][0]["given"] = json!(["Peter", null]);
    p["name"][0]["_given"] = json!([ext.clone(), null]);
    assert_issue(&p, IssueType::Structure, "Patient.name[0].given[1]");

    let mut p = patient();
    p["name"][0]["_given"] = json!(ext.clone());
    assert_issue(&p, IssueType::Structure, "Patient.name[0].given");
}

#[test]
fn required_bindings_checked() {
    let mut p = patient();
    p["gender"] = json!("M");
    assert_issue(&p, IssueType::CodeInvalid, "Patient.gender");

    let mut o = observation();
    o["status"] = json!("done");
    assert_issue(&o, IssueType::CodeInvalid, "Observation.status");

    let mut o = observation();
    o["valueQuantity"]["comparator"] = json!("=<");
    assert_issue(
        &o,
        IssueType::CodeInvalid,
        "Observation.valueQuantity.comparator",
    );

    let clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical";
    let mut condition = json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": clinical, "code": "active"}]},
        "subject": {"reference": "Patient/p1"}
    });
    assert_valid(&condition);
    condition["clinicalStatus"]["coding"] = json!([
        {"system": "http://example.org/local", "code": "on"},
        {"system": clinical, "code": "ongoing"}
    ]);
    assert_issue(
        &condition,
        IssueType::CodeInvalid,
        "Condition.clinicalStatus.coding[1].code",
    );
    assert_eq!(issues(&condition).len(), 1);
}

#[test]
fn reference_targets_checked() {
    let mut o = observation();
    o["subject"] = json!({"reference": "Organization/1"});
    assert_issue(&o, IssueType::Invalid, "Observation.subject.reference");

    let mut o = observation();
    o["subject"] = json!({"reference": "Organization/1/_history/2"});
    assert_issue(&o, IssueType::Invalid, "Observation.subject.reference");

    let mut o = observation();
    o["subject"] = json!({"reference": "Patiant/1"});
    assert_issue(&o, IssueType::Value, "Observation.subject.reference");

    let mut o = observation();
    o["performer"] = json!([{"reference": "Practitioner/1"}, {"reference": "Medication/2"}]);
    assert_issue(&o, IssueType::Invalid, "Observation.performer[1].reference");

    for allowed in [
        "Group/1",
        "Patient/1/_history/3",
        "http://example.org/fhir/Organization/1",
        "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
        "#contained",
        "Organization?identifier=x",
    ] {
        let mut o = observation();
        o["subject"] = json!({ "reference": allowed });
        assert_valid(&o);
    }

    // Reference(Any) allows every resource type.
    let provenance = json!({
        "resourceType": "Provenance",
        "target": [{"reference": "Organization/1"}, {"reference": "Observation/2"}],
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/1"}}]
    });
    assert_valid(&provenance);
}

#[test]
fn contained_resources_checked() {
    let mut o = observation();
    o["contained"] = json!([{"resourceType": "Patient", "id": "c1", "gender": "male"}]);
    o["subject"] = json!({"reference": "#c1"});
    assert_valid(&o);

    let mut bad = o.clone();
    bad["contained"][0]["gender"] = json!("boy");
    assert_issue(
        &bad,
        IssueType::CodeInvalid,
        "Observation.contained[0].gender",
    );

    let mut bad = o.clone();
    bad["contained"][0]["contained"] = json!([{"resourceType": "Patient", "id": "c2"}]);
    assert_issue(
        &bad,
        IssueType::Invalid,
        "Observation.contained[0].contained",
    );

    let mut bad = o.clone();
    bad["contained"][0]["meta"] = json!({"versionId": "1"});
    assert_issue(
        &bad,
        IssueType::Invalid,
        "Observation.contained[0].meta.versionId",
    );

    let mut bad = o.clone();
    bad["contained"][0]["meta"] = json!({"lastUpdated": "2024-01-01T00:00:00Z"});
    assert_issue(
        &bad,
        IssueType::Invalid,
        "Observation.contained[0].meta.lastUpdated",
    );

    let mut bad = o.clone();
    bad["contained"] = json!([{"id": "c1"}]);
    assert_issue(
        &bad,
        IssueType::Required,
        "Observation.contained[0].resourceType",
    );

    // The container itself may carry version metadata.
    let mut o = o.clone();
    o["meta"] = json!({"versionId": "3", "lastUpdated": "2024-01-01T00:00:00Z"});
    assert_valid(&o);
}

#[test]
fn bundle_entries_checked_with_paths() {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": patient()},
            {"resource": {"resourceType": "Observation", "code": {"text": "x"}}}
        ]
    });
    assert_issue(
        &bundle,
        IssueType::Required,
        "Bundle.entry[1].resource.status",
    );
    assert_eq!(issues(&bundle).len(), 1);
}

#[test]
fn empty_values_rejected() {
    let mut p = patient();
    p["maritalStatus"] = json!({});
    assert_issue(&p, IssueType::Structure, "Patient.maritalStatus");

    let mut p = patient();
    p["name"] = json!([{}]);
    assert_issue(&p, IssueType::Structure, "Patient.name[0]");

    let mut p = patient();
    p["telecom"] = json!([]);
    assert_issue(&p, IssueType::Structure, "Patient.telecom");

    let mut p = patient();
    p["name"][0]["family"] = json!("");
    assert_issue(&p, IssueType::Value, "Patient.name[0].family");

    let mut p = patient();
    p["gender"] = json!(null);
    assert_issue(&p, IssueType::Structure, "Patient.gender");

    assert_issue(
        &json!({"resourceType": "Patient", "name": [null]}),
        IssueType::Structure,
        "Patient.name[0]",
    );
}

#[test]
fn narrative_checked() {
    let mut p = patient();
    p["text"] = json!({
        "status": "generated",
        "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter</p></div>"
    });
    assert_valid(&p);

    let mut bad = p.clone();
    bad["text"]["div"] =
        json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>");
    assert_issue(&bad, IssueType::Invalid, "Patient.text.div");

    let mut bad = p.clone();
    bad["text"]["div"] = json!(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"x\" onerror=\"alert(1)\"/></div>"
    );
    assert_issue(&bad, IssueType::Invalid, "Patient.text.div");

    let mut bad = p.clone();
    bad["text"]["div"] = json!("<p>Peter</p>");
    assert_issue(&bad, IssueType::Value, "Patient.text.div");

    let mut bad = p.clone();
    bad["contained"] = json!([{
        "resourceType": "Organization",
        "id": "o",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"javascript:x()\">a</a></div>"}
    }]);
    assert_issue(&bad, IssueType::Invalid, "Patient.contained[0].text.div");
}

#[test]
fn extension_value_and_children_exclusive() {
    let mut p = patient();
    p["extension"] = json!([{
        "url": "http://example.org/x",
        "valueString": "a",
        "extension": [{"url": "b", "valueInteger": 1}]
    }]);
    assert_issue(&p, IssueType::Invalid, "Patient.extension[0]");
}

/// Builds `{"resourceType": "Patient", "extension": [{"url": "u",
/// "extension": [...]}]}` nested `levels` deep without recursion.
fn deep_patient(levels: usize) -> Value {
    // `json!` would serialize an interpolated Value recursively, so the
    // levels are built from maps.
    let mut inner = json!({"url": "u", "valueString": "leaf"});
    for _ in 0..levels {
        let mut map = Map::new();
        map.insert("url".to_string(), json!("u"));
        map.insert("extension".to_string(), Value::Array(vec![inner]));
        inner = Value::Object(map);
    }
    let mut root = Map::new();
    root.insert("resourceType".to_string(), json!("Patient"));
    root.insert("extension".to_string(), Value::Array(vec![inner]));
    Value::Object(root)
}

/// Drops a deep value one level at a time, so the test itself does not
/// overflow the stack in `Drop`.
fn dismantle(mut value: Value) {
    loop {
        let next = match &mut value {
            Value::Object(map) => map
                .values_mut()
                .find(|v| v.is_object() || v.is_array())
                .map(Value::take),
            Value::Array(items) => items
                .iter_mut()
                .find(|v| v.is_object() || v.is_array())
                .map(Value::take),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return,
        }
    }
}

#[test]
fn deep_nesting_rejected_without_overflow() {
    let deep = deep_patient(10_000);
    let found = issues(&deep);
    dismantle(deep);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].code, IssueType::Structure);
    assert!(found[0].diagnostics.contains("64"));

    // The resource is level 1 and the first extension level 2, so the
    // innermost extension sits at level `levels + 2`.
    let at_limit = deep_patient(MAX_DEPTH - 2);
    assert_valid(&at_limit);
    dismantle(at_limit);

    let over_limit = deep_patient(MAX_DEPTH - 1);
    let found = issues(&over_limit);
    dismantle(over_limit);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].code, IssueType::Structure);
}

#[test]
fn deep_json_text_fails_to_parse_or_validate() {
    let text = "[".repeat(10_000) + &"]".repeat(10_000);
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        assert!(validate_resource(&value).is_err());
        dismantle(value);
    }
}

#[test]
fn long_strings_limited() {
    let mut p = patient();
    p["name"][0]["text"] = json!("a".repeat(MAX_STRING_BYTES + 1));
    assert_issue(&p, IssueType::Value, "Patient.name[0].text");

    let mut p = patient();
    p["name"][0]["text"] = json!("a".repeat(MAX_STRING_BYTES));
    assert_valid(&p);

    let mut p = patient();
    p["photo"] = json!([{"contentType": "image/png", "data": "QUFB".repeat(MAX_STRING_BYTES / 2)}]);
    assert_valid(&p);
}

#[test]
fn control_characters_rejected() {
    let mut p = patient();
    p["name"][0]["text"] = json!("Peter\u{0}\u{1}\u{2}");
    assert_issue(&p, IssueType::Value, "Patient.name[0].text");
    let found = issues(&p);
    assert!(found[0].diagnostics.contains("U+0000"), "{found:#?}");

    let mut p = patient();
    p["name"][0]["given"][1] = json!("Ja\u{1b}mes");
    assert_issue(&p, IssueType::Value, "Patient.name[0].given[1]");

    let mut o = observation();
    o["code"]["text"] = json!("weight\u{7}");
    assert_issue(&o, IssueType::Value, "Observation.code.text");

    let mut o = observation();
    o["code"]["coding"][0]["system"] = json!("http://loinc.org\u{8}");
    assert_issue(&o, IssueType::Value, "Observation.code.coding[0].system");

    let mut o = observation();
    o["note"] = json!([{"text": "line one\r\nline two\tend"}]);
    assert_valid(&o);
}

#[test]
fn all_issues_collected() {
    let bad = json!({
        "resourceType": "Observation",
        "status": "done",
        "code": {"text": "x"},
        "issued": "yesterday",
        "color": "red",
        "subject": {"reference": "Medication/1"}
    });
    let found = issues(&bad);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found.iter().all(|i| i.severity == IssueSeverity::Error));
}

#[test]
fn issue_count_capped() {
    let mut p = patient();
    for i in 0..500 {
        p[format!("unknown{i}")] = json!(1);
    }
    let found = issues(&p);
    assert_eq!(found.len(), MAX_ISSUES + 1);
    assert_eq!(found[MAX_ISSUES].severity, IssueSeverity::Information);
}

#[test]
fn diagnostics_do_not_echo_values() {
    let mut p = patient();
    p["birthDate"] = json!("secret-1974");
    p["name"][0]["family"] = json!(["SecretName"]);
    for issue in issues(&p) {
        assert!(
            !issue.diagnostics.contains("secret-1974"),
            "{}",
            issue.diagnostics
        );
        assert!(
            !issue.diagnostics.contains("SecretName"),
            "{}",
            issue.diagnostics
        );
    }
}

/// Times validation of a typical Observation. Run with
/// `cargo test -p ward-fhir --lib -- --ignored --nocapture validation_speed`.
#[test]
#[ignore = "timing report, not a correctness check"]
fn validation_speed() {
    let mut o = observation();
    o["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>72.5 kg</p></div>"});
    o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]);
    o["referenceRange"] =
        json!([{"low": {"value": 50, "unit": "kg"}, "high": {"value": 90, "unit": "kg"}}]);
    assert_valid(&o);
    let rounds = 10_000;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        assert!(validate_resource(&o).is_ok());
    }
    let per = start.elapsed() / rounds;
    println!("validate_resource(Observation): {per:?} per call");
}

#[test]
fn array_over_item_limit_rejected() {
    let names: Vec<Value> = (0..=MAX_ARRAY_ITEMS)
        .map(|i| json!({"family": format!("F{i}")}))
        .collect();
    let resource = json!({"resourceType": "Patient", "name": names});
    assert_issue(&resource, IssueType::TooCostly, "Patient.name");

    let found = issues(&resource);
    assert_eq!(found.len(), 1, "one issue for the whole array: {found:#?}");
    let message = found
        .first()
        .map(|issue| issue.diagnostics.clone())
        .unwrap_or_default();
    assert!(message.contains("10000"), "names the limit: {message}");
}

#[test]
fn array_at_item_limit_accepted() {
    let identifiers: Vec<Value> = (0..MAX_ARRAY_ITEMS)
        .map(|i| json!({"system": "urn:example", "value": format!("v{i}")}))
        .collect();
    assert_valid(&json!({"resourceType": "Patient", "identifier": identifiers}));
}

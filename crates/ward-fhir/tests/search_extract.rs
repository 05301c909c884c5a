//! Search parameter definitions, FHIRPath evaluation and index extraction.

use serde_json::{Value, json};
use ward_fhir::fhirpath::{Expression, Item};
use ward_fhir::search::{
    IndexEntry, IndexValue, ParamType, all_search_params, index_resource, parse_date_range,
    search_param, search_params,
};

fn values<'e>(entries: &'e [IndexEntry], param: &str) -> Vec<&'e IndexValue> {
    entries
        .iter()
        .filter(|e| e.param == param)
        .map(|e| &e.value)
        .collect()
}

fn token(system: Option<&str>, code: &str) -> (Option<String>, String) {
    (system.map(str::to_owned), code.to_owned())
}

fn tokens(entries: &[IndexEntry], param: &str) -> Vec<(Option<String>, String)> {
    values(entries, param)
        .into_iter()
        .filter_map(|v| match v {
            IndexValue::Token { system, code, .. } => Some((system.clone(), code.clone())),
            _ => None,
        })
        .collect()
}

fn strings(entries: &[IndexEntry], param: &str) -> Vec<String> {
    values(entries, param)
        .into_iter()
        .filter_map(|v| match v {
            IndexValue::String { normalized, .. } => Some(normalized.clone()),
            _ => None,
        })
        .collect()
}

fn date(text: &str) -> (i64, i64) {
    parse_date_range(text).unwrap_or((0, 0))
}

#[test]
fn every_official_expression_parses() {
    let mut failures = Vec::new();
    let mut count = 0;
    for def in all_search_params() {
        count += 1;
        if let Some(err) = def.compile_error() {
            failures.push(format!("{}.{}: {err}", def.base, def.code));
        }
        if def.expression.is_some() && def.compiled().is_none() {
            failures.push(format!("{}.{}: not compiled", def.base, def.code));
        }
        for component in &def.components {
            if component.compiled().is_none() {
                failures.push(format!(
                    "{}.{} component {}",
                    def.base, def.code, component.code
                ));
            }
        }
    }
    assert!(count > 1500, "only {count} definitions loaded");
    assert!(failures.is_empty(), "unparsed expressions: {failures:#?}");
}

#[test]
fn every_expression_evaluates_on_fixtures() {
    // Evaluating on a resource of the right type must never panic, whatever
    // the shape of the data.
    for def in all_search_params() {
        let resource_type = if def.base == "Resource" {
            "Patient"
        } else {
            def.base.as_str()
        };
        let resource = json!({
            "resourceType": resource_type,
            "id": "x",
            "subject": {"reference": "Patient/1"},
            "value": [1, "a", {"b": null}],
            "code": {"coding": [{"system": "s", "code": "c"}]},
        });
        if let Some(expression) = def.compiled() {
            let _ = expression.evaluate(&resource);
        }
    }
}

#[test]
fn multi_base_expression_is_narrowed() {
    let def = search_param("Observation", "patient");
    let expression = def.and_then(|d| d.expression.as_deref());
    assert_eq!(
        expression,
        Some("Observation.subject.where(resolve() is Patient)")
    );
    let def = search_param("Patient", "_id").map(|d| d.param_type);
    assert_eq!(def, Some(ParamType::Token));
    assert!(search_param("Patient", "_text").is_none());
    assert!(search_param("Patient", "nonsense").is_none());
    let codes: Vec<&str> = search_params("Patient").map(|d| d.code.as_str()).collect();
    assert!(codes.contains(&"birthdate"));
    assert!(codes.contains(&"_lastUpdated"));
}

#[test]
fn composite_components_have_codes() {
    let def = search_param("Observation", "code-value-quantity");
    let components: Vec<(&str, ParamType)> = def
        .map(|d| {
            d.components
                .iter()
                .map(|c| (c.code.as_str(), c.param_type))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        components,
        vec![
            ("code", ParamType::Token),
            ("value-quantity", ParamType::Quantity)
        ]
    );
}

fn eval_strings(expression: &str, resource: &Value) -> Vec<String> {
    let Ok(expression) = Expression::parse(expression) else {
        return vec!["<parse error>".to_owned()];
    };
    expression
        .evaluate(resource)
        .into_iter()
        .map(|item| match item {
            Item::Node(node) => format!("{}:{}", node.fhir_type.unwrap_or("?"), node.value),
            Item::Boolean(b) => b.to_string(),
            Item::String(s) => s,
            Item::Number(n) => n.to_string(),
            Item::Resolved(t) => t,
        })
        .collect()
}

#[test]
fn fhirpath_choice_and_type_operators() {
    let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 5, "unit": "mg"}});
    assert_eq!(
        eval_strings("Observation.value", &obs),
        vec![r#"Quantity:{"value":5,"unit":"mg"}"#]
    );
    assert_eq!(
        eval_strings("(Observation.value as Quantity).unit", &obs).len(),
        1
    );
    assert!(eval_strings("(Observation.value as string)", &obs).is_empty());
    assert_eq!(
        eval_strings("Observation.value.as(Quantity)", &obs).len(),
        1
    );
    assert_eq!(
        eval_strings("Observation.value.ofType(Quantity)", &obs).len(),
        1
    );
    assert_eq!(
        eval_strings("Observation.value is Quantity", &obs),
        vec!["true"]
    );
    assert_eq!(
        eval_strings("Observation.value.is(string)", &obs),
        vec!["false"]
    );
    assert!(eval_strings("Patient.value", &obs).is_empty());
    let obs = json!({"resourceType": "Observation", "valueDateTime": "2020-01-01"});
    assert_eq!(
        eval_strings("Observation.value.as(DateTime)", &obs).len(),
        1
    );
}

#[test]
fn fhirpath_where_resolve_and_logic() {
    let obs = json!({
        "resourceType": "Observation",
        "subject": {"reference": "Group/1"},
        "performer": [
            {"reference": "Patient/2"},
            {"reference": "http://x.org/fhir/Practitioner/3/_history/1"},
            {"reference": "#c1"},
            {"type": "RelatedPerson", "identifier": {"value": "9"}}
        ],
        "contained": [{"resourceType": "Patient", "id": "c1"}]
    });
    assert!(eval_strings("Observation.subject.where(resolve() is Patient)", &obs).is_empty());
    let patients = eval_strings("Observation.performer.where(resolve() is Patient)", &obs);
    assert_eq!(patients.len(), 2, "{patients:?}");
    let practitioners = eval_strings(
        "Observation.performer.where(resolve() is Practitioner)",
        &obs,
    );
    assert_eq!(practitioners.len(), 1);
    let related = eval_strings(
        "Observation.performer.where(resolve() is RelatedPerson)",
        &obs,
    );
    assert_eq!(related.len(), 1);

    let patient = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01",
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
    let deceased = "Patient.deceased.exists() and Patient.deceased != false";
    assert_eq!(eval_strings(deceased, &patient), vec!["true"]);
    let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
    assert_eq!(eval_strings(deceased, &alive), vec!["false"]);
    let unknown = json!({"resourceType": "Patient"});
    assert_eq!(eval_strings(deceased, &unknown), vec!["false"]);
    assert_eq!(
        eval_strings("Patient.telecom.where(system='email')", &patient),
        vec![r#"ContactPoint:{"system":"email","value":"a@b"}"#]
    );
    assert_eq!(
        eval_strings("Patient.telecom.first().value", &patient).len(),
        1
    );
    assert_eq!(
        eval_strings("Patient.telecom.value | Patient.telecom.value", &patient).len(),
        2
    );
    assert_eq!(
        eval_strings("Patient.telecom.exists(system = 'fax')", &patient),
        vec!["false"]
    );
    assert_eq!(eval_strings("Patient.name.empty()", &patient), vec!["true"]);
}

#[test]
fn fhirpath_extensions() {
    let patient = json!({"resourceType": "Patient", "extension": [
        {"url": "http://a", "valueString": "x"},
        {"url": "http://b", "valueCode": "y"}
    ]});
    assert_eq!(
        eval_strings("Patient.extension('http://a').value", &patient),
        vec![r#"string:"x""#]
    );
    assert_eq!(
        eval_strings("Patient.hasExtension('http://b')", &patient),
        vec!["true"]
    );
    assert_eq!(
        eval_strings("Patient.extension('http://c')", &patient).len(),
        0
    );
}

#[test]
fn fhirpath_rejects_outside_subset() {
    for bad in [
        "Patient.name.",
        "Patient.(",
        "Patient.descendants()",
        "'open",
        "Patient.where()",
        "a ~ b",
    ] {
        assert!(Expression::parse(bad).is_err(), "{bad}");
    }
    let deep = format!("{}a{}", "(".repeat(200), ")".repeat(200));
    assert!(Expression::parse(&deep).is_err());
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": {
            "lastUpdated": "2024-03-01T10:00:00.123Z",
            "tag": [{"system": "http://tags", "code": "t1"}],
            "profile": ["http://example.org/StructureDefinition/p"]
        },
        "identifier": [{"system": "http://mrn", "value": "12345", "type": {"text": "Medical Record"}}],
        "active": true,
        "name": [{"family": "Müller", "given": ["Zoë", "Anne  Marie"], "prefix": ["Dr."]}],
        "telecom": [{"system": "phone", "value": "555-1234"}, {"system": "email", "value": "z@x.org"}],
        "gender": "female",
        "birthDate": "1980-05",
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345", "country": "US"}],
        "generalPractitioner": [
            {"reference": "Practitioner/gp1"},
            {"reference": "https://other.org/fhir/Organization/o9"},
            {"identifier": {"system": "http://npi", "value": "777"}},
            {"reference": "#contained1"}
        ]
    })
}

#[test]
fn extract_patient_parameters() {
    let entries = index_resource(&patient());
    assert_eq!(tokens(&entries, "_id"), vec![token(None, "p1")]);
    assert_eq!(
        tokens(&entries, "_tag"),
        vec![token(Some("http://tags"), "t1")]
    );
    assert_eq!(
        tokens(&entries, "gender"),
        vec![token(
            Some("http://hl7.org/fhir/administrative-gender"),
            "female"
        )]
    );
    assert_eq!(tokens(&entries, "active"), vec![token(None, "true")]);
    assert_eq!(
        tokens(&entries, "identifier"),
        vec![token(Some("http://mrn"), "12345")]
    );
    assert_eq!(tokens(&entries, "phone"), vec![token(None, "555-1234")]);
    assert_eq!(tokens(&entries, "email"), vec![token(None, "z@x.org")]);
    assert_eq!(tokens(&entries, "deceased"), vec![token(None, "false")]);

    let names = strings(&entries, "name");
    assert_eq!(names, vec!["muller", "zoe", "anne marie", "dr."]);
    assert_eq!(strings(&entries, "family"), vec!["muller"]);
    assert_eq!(strings(&entries, "address-city"), vec!["springfield"]);
    assert!(strings(&entries, "address").contains(&"1 main st".to_owned()));

    let birth = values(&entries, "birthdate");
    let (low, high) = date("1980-05");
    assert_eq!(birth, vec![&IndexValue::Date { low, high }]);
    let updated = values(&entries, "_lastUpdated");
    let (low, high) = date("2024-03-01T10:00:00.123Z");
    assert_eq!(updated, vec![&IndexValue::Date { low, high }]);
    assert_eq!(
        values(&entries, "_profile"),
        vec![&IndexValue::Uri {
            value: "http://example.org/StructureDefinition/p".to_owned()
        }]
    );
}

#[test]
fn extract_references() {
    let entries = index_resource(&patient());
    let refs = values(&entries, "general-practitioner");
    assert!(refs.contains(&&IndexValue::Reference {
        target_type: Some("Practitioner".to_owned()),
        id: Some("gp1".to_owned()),
        url: None,
    }));
    assert!(refs.contains(&&IndexValue::Reference {
        target_type: Some("Organization".to_owned()),
        id: Some("o9".to_owned()),
        url: Some("https://other.org/fhir/Organization/o9".to_owned()),
    }));
    assert!(refs.contains(&&IndexValue::Token {
        system: Some("http://npi".to_owned()),
        code: "777".to_owned(),
        text: None,
    }));
    // The contained reference is not indexed.
    assert_eq!(refs.len(), 3, "{refs:?}");
}

#[test]
fn extract_observation_values() {
    let mut obs = json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}], "text": "BP sys"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2020-01-01T10:00:00+10:00"},
        "valueQuantity": {"value": 120.50, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    // json! turns 120.50 into an f64; parse the text to keep its precision.
    obs["valueQuantity"]["value"] = serde_json::from_str("120.50").unwrap_or(Value::Null);
    let entries = index_resource(&obs);
    assert_eq!(
        values(&entries, "code"),
        vec![&IndexValue::Token {
            system: Some("http://loinc.org".to_owned()),
            code: "8480-6".to_owned(),
            text: Some("systolic".to_owned()),
        }]
    );
    assert_eq!(
        values(&entries, "patient"),
        vec![&IndexValue::Reference {
            target_type: Some("Patient".to_owned()),
            id: Some("p1".to_owned()),
            url: None,
        }]
    );
    let (low, _) = date("2020-01-01T00:00:00Z");
    assert_eq!(
        values(&entries, "date"),
        vec![&IndexValue::Date {
            low,
            high: i64::MAX
        }]
    );

    let quantity = values(&entries, "value-quantity");
    let [
        IndexValue::Quantity {
            value,
            low,
            high,
            code,
            unit,
            ..
        },
    ] = quantity.as_slice()
    else {
        panic!("expected one quantity, got {quantity:?}");
    };
    assert_eq!(*value, 120.5);
    assert!((low - 120.495).abs() < 1e-9);
    assert!((high - 120.505).abs() < 1e-9);
    assert_eq!(code.as_deref(), Some("mm[Hg]"));
    assert_eq!(unit.as_deref(), Some("mmHg"));

    let composite = values(&entries, "code-value-quantity");
    assert_eq!(composite.len(), 1);
    let Some(IndexValue::Composite { components }) = composite.first() else {
        panic!("expected a composite");
    };
    assert_eq!(components.len(), 2);
    assert_eq!(components.first().map(|c| c.0.as_str()), Some("code"));
    assert_eq!(
        components.get(1).map(|c| c.0.as_str()),
        Some("value-quantity")
    );

    // combo- covers the observation and its components.
    assert_eq!(values(&entries, "combo-code-value-quantity").len(), 2);
    assert_eq!(values(&entries, "component-code-value-quantity").len(), 1);
}

#[test]
fn extract_molecular_sequence_uses_resource_variable() {
    let seq = json!({
        "resourceType": "MolecularSequence",
        "referenceSeq": {"chromosome": {"coding": [{"code": "1"}]}},
        "variant": [{"start": 10, "end": 20}]
    });
    let entries = index_resource(&seq);
    let composite = values(&entries, "chromosome-variant-coordinate");
    assert_eq!(composite.len(), 1, "{composite:?}");
}

#[test]
fn extract_timing_and_numbers() {
    let request = json!({
        "resourceType": "MedicationRequest",
        "authoredOn": "2021-06-01",
        "dosageInstruction": [{"timing": {"event": ["2021-06-02", "2021-06-03T08:00:00Z"]}}]
    });
    let entries = index_resource(&request);
    assert_eq!(values(&entries, "authoredon").len(), 1);

    let risk =
        json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.25}]});
    let entries = index_resource(&risk);
    let [IndexValue::Number { value, low, high }] = values(&entries, "probability").as_slice()
    else {
        panic!("expected one number");
    };
    assert_eq!(*value, 0.25);
    assert!((low - 0.245).abs() < 1e-12);
    assert!((high - 0.255).abs() < 1e-12);
}

#[test]
fn extract_ignores_bad_input() {
    assert!(index_resource(&json!({"resourceType": "NoSuchType"})).is_empty());
    assert!(index_resource(&json!([1, 2])).is_empty());
    let odd = json!({
        "resourceType": "Patient",
        "birthDate": "not a date",
        "name": [null, 5, {"family": ["x"]}],
        "identifier": "oops",
        "meta": {"lastUpdated": 12}
    });
    let entries = index_resource(&odd);
    assert!(values(&entries, "birthdate").is_empty());
    assert!(values(&entries, "_lastUpdated").is_empty());
}

#[test]
fn extract_fixture_files() {
    for (name, text) in [
        ("patient", include_str!("fixtures/patient-example.json")),
        ("observation", include_str!("fixtures/observation-bp.json")),
    ] {
        let resource: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let entries = index_resource(&resource);
        assert!(entries.len() > 10, "{name}: {} entries", entries.len());
    }
}

//! Search request parsing and in-memory matching.

use serde_json::{Value, json};
use ward_fhir::IssueType;
use ward_fhir::search::{
    Criterion, Handling, IndexEntry, Modifier, ParamType, Prefix, SearchQuery, SearchValue,
    SortValue, SummaryMode, TotalMode, index_resource, matches, parse_date_range, parse_search,
    sort_value,
};

fn pairs(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parse(resource_type: &str, params: &[(&str, &str)]) -> SearchQuery {
    match parse_search(Some(resource_type), &pairs(params), Handling::Strict) {
        Ok(query) => query,
        Err(outcome) => panic!("unexpected error: {outcome}"),
    }
}

fn parse_err(
    resource_type: Option<&str>,
    params: &[(&str, &str)],
    handling: Handling,
) -> (IssueType, String) {
    match parse_search(resource_type, &pairs(params), handling) {
        Ok(query) => panic!("expected an error, got {query:?}"),
        Err(outcome) => {
            let issue = outcome.issues.first().cloned();
            issue
                .map(|i| (i.code, i.diagnostics))
                .unwrap_or((IssueType::Exception, String::new()))
        }
    }
}

fn criterion(resource_type: &str, name: &str, value: &str) -> Criterion {
    let query = parse(resource_type, &[(name, value)]);
    match query.criteria.into_iter().next() {
        Some(c) => c,
        None => panic!("no criterion for {name}={value}"),
    }
}

fn first_value(c: &Criterion) -> SearchValue {
    c.values
        .first()
        .cloned()
        .unwrap_or(SearchValue::Missing(false))
}

fn range(text: &str) -> (i64, i64) {
    parse_date_range(text).unwrap_or((0, 0))
}

// -- parsing -----------------------------------------------------------------

#[test]
fn parse_string_and_modifiers() {
    let c = criterion("Patient", "name", "Zoë");
    assert_eq!(c.param_type, ParamType::String);
    assert_eq!(
        first_value(&c),
        SearchValue::String {
            normalized: "zoe".to_owned(),
            exact: "Zoë".to_owned()
        }
    );
    assert_eq!(
        criterion("Patient", "name:exact", "x").modifier,
        Some(Modifier::Exact)
    );
    assert_eq!(
        criterion("Patient", "name:contains", "x").modifier,
        Some(Modifier::Contains)
    );
    let c = criterion("Patient", "name:missing", "true");
    assert_eq!(c.values, vec![SearchValue::Missing(true)]);
}

#[test]
fn parse_comma_or_and_escapes() {
    let c = criterion("Patient", "name", r"a\,b,c");
    let exact: Vec<String> = c
        .values
        .iter()
        .filter_map(|v| match v {
            SearchValue::String { exact, .. } => Some(exact.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(exact, vec!["a,b", "c"]);
    let query = parse("Patient", &[("name", "a"), ("name", "b")]);
    assert_eq!(query.criteria.len(), 2);
    let c = criterion("Patient", "identifier", r"http://a\|b|x\$y");
    assert_eq!(
        first_value(&c),
        SearchValue::Token {
            system: Some("http://a|b".to_owned()),
            code: Some("x$y".to_owned())
        }
    );
}

#[test]
fn parse_token_forms() {
    let token = |value: &str| first_value(&criterion("Observation", "code", value));
    assert_eq!(
        token("http://loinc.org|1234-5"),
        SearchValue::Token {
            system: Some("http://loinc.org".to_owned()),
            code: Some("1234-5".to_owned())
        }
    );
    assert_eq!(
        token("|abc"),
        SearchValue::Token {
            system: Some(String::new()),
            code: Some("abc".to_owned())
        }
    );
    assert_eq!(
        token("http://s|"),
        SearchValue::Token {
            system: Some("http://s".to_owned()),
            code: None
        }
    );
    assert_eq!(
        token("abc"),
        SearchValue::Token {
            system: None,
            code: Some("abc".to_owned())
        }
    );
    assert_eq!(
        criterion("Observation", "code:not", "x").modifier,
        Some(Modifier::Not)
    );
    let text = criterion("Observation", "code:text", "Blood Pressure");
    assert_eq!(text.modifier, Some(Modifier::Text));
    assert_eq!(
        first_value(&text),
        SearchValue::String {
            normalized: "blood pressure".to_owned(),
            exact: "Blood Pressure".to_owned()
        }
    );
    let (code, message) = parse_err(Some("Observation"), &[("code", "a|b|c")], Handling::Lenient);
    assert_eq!(code, IssueType::Invalid);
    assert!(message.contains("code"), "{message}");
}

#[test]
fn parse_date_prefixes_and_timezones() {
    let c = criterion("Patient", "birthdate", "ge2013-01-14T10:00:00+10:00");
    let (low, high) = range("2013-01-14T00:00:00Z");
    assert_eq!(
        first_value(&c),
        SearchValue::Date {
            prefix: Prefix::Ge,
            low,
            high: high.max(low + 1_000_000)
        }
    );
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::StartsAfter),
        ("eb", Prefix::EndsBefore),
        ("ap", Prefix::Approx),
    ];
    for (text, prefix) in prefixes {
        let c = criterion("Patient", "birthdate", &format!("{text}2013"));
        let (low, high) = range("2013");
        assert_eq!(
            first_value(&c),
            SearchValue::Date { prefix, low, high },
            "{text}"
        );
    }
    let (code, message) = parse_err(
        Some("Patient"),
        &[("birthdate", "2013-13-01")],
        Handling::Lenient,
    );
    assert_eq!(code, IssueType::Invalid);
    assert!(
        message.contains("birthdate") && message.contains("2013-13-01"),
        "{message}"
    );
}

#[test]
fn parse_number_and_quantity() {
    let c = criterion("RiskAssessment", "probability", "gt0.5");
    let SearchValue::Number {
        prefix,
        value,
        low,
        high,
    } = first_value(&c)
    else {
        panic!("not a number")
    };
    assert_eq!(prefix, Prefix::Gt);
    assert_eq!(value, 0.5);
    assert!((low - 0.45).abs() < 1e-12);
    assert!((high - 0.55).abs() < 1e-12);
    let c = criterion(
        "Observation",
        "value-quantity",
        "le5.4|http://unitsofmeasure.org|mg",
    );
    let SearchValue::Quantity {
        prefix,
        value,
        low,
        high,
        system,
        code,
    } = first_value(&c)
    else {
        panic!("not a quantity")
    };
    assert_eq!(prefix, Prefix::Le);
    assert_eq!(value, 5.4);
    assert!((low - 5.35).abs() < 1e-12);
    assert!((high - 5.45).abs() < 1e-12);
    assert_eq!(system.as_deref(), Some("http://unitsofmeasure.org"));
    assert_eq!(code.as_deref(), Some("mg"));
    let c = criterion("Observation", "value-quantity", "5.4||mg");
    let SearchValue::Quantity { system, code, .. } = first_value(&c) else {
        panic!("not a quantity")
    };
    assert_eq!(system, None);
    assert_eq!(code.as_deref(), Some("mg"));
    let (_, message) = parse_err(
        Some("RiskAssessment"),
        &[("probability", "abc")],
        Handling::Lenient,
    );
    assert!(
        message.contains("probability") && message.contains("abc"),
        "{message}"
    );
    let long = "9".repeat(300) + "x";
    let (_, message) = parse_err(
        Some("RiskAssessment"),
        &[("probability", &long)],
        Handling::Lenient,
    );
    assert!(
        message.len() < 250,
        "value not capped: {} chars",
        message.len()
    );
}

#[test]
fn parse_reference_forms() {
    let reference = |name: &str, value: &str| first_value(&criterion("Observation", name, value));
    assert_eq!(
        reference("subject", "Patient/123"),
        SearchValue::Reference {
            target_type: Some("Patient".to_owned()),
            id: Some("123".to_owned()),
            url: None
        }
    );
    assert_eq!(
        reference("subject:Patient", "123"),
        SearchValue::Reference {
            target_type: Some("Patient".to_owned()),
            id: Some("123".to_owned()),
            url: None
        }
    );
    // `patient` has Group and Patient targets in R4, so a bare id stays untyped.
    assert_eq!(
        reference("subject", "123"),
        SearchValue::Reference {
            target_type: None,
            id: Some("123".to_owned()),
            url: None
        }
    );
    assert_eq!(
        reference("specimen", "s1"),
        SearchValue::Reference {
            target_type: Some("Specimen".to_owned()),
            id: Some("s1".to_owned()),
            url: None
        }
    );
    let SearchValue::Reference { url, .. } = reference("subject", "http://x.org/fhir/Patient/1")
    else {
        panic!("not a reference")
    };
    assert_eq!(url.as_deref(), Some("http://x.org/fhir/Patient/1"));
    let c = criterion("Observation", "subject:identifier", "http://mrn|42");
    assert_eq!(c.modifier, Some(Modifier::Identifier));
    assert_eq!(
        first_value(&c),
        SearchValue::Token {
            system: Some("http://mrn".to_owned()),
            code: Some("42".to_owned())
        }
    );
}

#[test]
fn parse_chains() {
    let c = criterion("Observation", "subject:Patient.name", "peter");
    let chain = c
        .chain
        .as_ref()
        .map(|chain| (chain.target_type.clone(), chain.criterion.param.clone()));
    assert_eq!(chain, Some(("Patient".to_owned(), "name".to_owned())));
    let c = criterion("Observation", "specimen.type", "blood");
    assert_eq!(
        c.chain.map(|chain| chain.target_type),
        Some("Specimen".to_owned())
    );
    let (code, message) = parse_err(
        Some("Observation"),
        &[("subject.name", "x")],
        Handling::Lenient,
    );
    assert_eq!(code, IssueType::Invalid);
    assert!(message.contains("ambiguous"), "{message}");
    let (code, _) = parse_err(
        Some("Observation"),
        &[("subject:Patient.organization.name", "x")],
        Handling::Strict,
    );
    assert_eq!(code, IssueType::NotSupported);
}

#[test]
fn parse_composite_values() {
    let c = criterion(
        "Observation",
        "code-value-quantity",
        "http://loinc.org|8480-6$gt100",
    );
    assert_eq!(
        first_value(&c),
        SearchValue::Composite(vec![
            (
                "code".to_owned(),
                SearchValue::Token {
                    system: Some("http://loinc.org".to_owned()),
                    code: Some("8480-6".to_owned())
                }
            ),
            (
                "value-quantity".to_owned(),
                SearchValue::Quantity {
                    prefix: Prefix::Gt,
                    value: 100.0,
                    low: 99.5,
                    high: 100.5,
                    system: None,
                    code: None
                }
            ),
        ])
    );
    let (_, message) = parse_err(
        Some("Observation"),
        &[("code-value-quantity", "x")],
        Handling::Lenient,
    );
    assert!(message.contains("code-value-quantity"), "{message}");
}

#[test]
fn parse_result_parameters() {
    let query = parse(
        "Observation",
        &[
            ("_sort", "-date,_id,status"),
            ("_count", "10"),
            ("_include", "Observation:subject:Patient"),
            ("_include:iterate", "Patient:general-practitioner"),
            ("_revinclude", "Provenance:target"),
            ("_summary", "count"),
            ("_elements", "status, code"),
            ("_total", "none"),
            ("_format", "json"),
            ("_pretty", "true"),
            ("_id", "a,b"),
            ("_lastUpdated", "gt2020"),
        ],
    );
    let sort: Vec<(&str, bool)> = query
        .sort
        .iter()
        .map(|k| (k.param.as_str(), k.descending))
        .collect();
    assert_eq!(
        sort,
        vec![("date", true), ("_id", false), ("status", false)]
    );
    assert_eq!(query.count, Some(10));
    assert_eq!(query.includes.len(), 2);
    assert_eq!(query.includes.get(1).map(|i| i.iterate), Some(true));
    assert_eq!(
        query.includes.first().and_then(|i| i.target_type.clone()),
        Some("Patient".to_owned())
    );
    assert_eq!(
        query.revincludes.first().map(|i| i.source_type.as_str()),
        Some("Provenance")
    );
    assert_eq!(query.summary, Some(SummaryMode::Count));
    assert_eq!(
        query.elements,
        Some(vec!["status".to_owned(), "code".to_owned()])
    );
    assert_eq!(query.total, TotalMode::None);
    assert_eq!(query.criteria.len(), 2);
    assert!(query.ignored.is_empty());
    assert_eq!(
        parse("Patient", &[("_include", "*")])
            .includes
            .first()
            .map(|i| i.param.as_str()),
        Some("*")
    );
}

#[test]
fn parse_result_parameter_errors() {
    for (name, value) in [
        ("_count", "-1"),
        ("_count", "ten"),
        ("_summary", "maybe"),
        ("_total", "some"),
        ("_include", "Observation"),
        ("_include", "Nope:subject"),
    ] {
        let (code, message) = parse_err(Some("Observation"), &[(name, value)], Handling::Lenient);
        assert_eq!(code, IssueType::Invalid, "{name}={value}");
        assert!(message.contains(name), "{message}");
    }
}

#[test]
fn lenient_ignores_strict_rejects() {
    let params = [
        ("foo", "1"),
        ("name:nonsense", "x"),
        ("_sort", "nope"),
        ("_has:Observation:patient:code", "x"),
    ];
    let query = parse_search(Some("Patient"), &pairs(&params), Handling::Lenient);
    let ignored = query.map(|q| q.ignored).unwrap_or_default();
    assert_eq!(
        ignored,
        vec![
            "foo",
            "name:nonsense",
            "_sort",
            "_has:Observation:patient:code"
        ]
    );
    for param in params {
        let (code, message) = parse_err(Some("Patient"), &[param], Handling::Strict);
        assert_eq!(code, IssueType::NotSupported, "{param:?}");
        assert!(message.contains("supported"), "{message}");
    }
    let (_, message) = parse_err(Some("Patient"), &[("foo", "1")], Handling::Strict);
    assert!(
        message.contains("'foo'") && message.contains("birthdate"),
        "{message}"
    );
    let (_, message) = parse_err(Some("Patient"), &[("name:nonsense", "1")], Handling::Strict);
    assert!(message.contains(":exact"), "{message}");
}

#[test]
fn system_search_with_type() {
    let query = parse_search(
        None,
        &pairs(&[("_type", "Patient,Practitioner"), ("name", "x")]),
        Handling::Strict,
    );
    let query = query.unwrap_or_default();
    assert_eq!(query.types, vec!["Patient", "Practitioner"]);
    assert_eq!(
        query.criteria.first().map(|c| c.param.as_str()),
        Some("name")
    );
    let (code, _) = parse_err(None, &[("name", "x")], Handling::Strict);
    assert_eq!(code, IssueType::NotSupported);
    let (code, _) = parse_err(None, &[("_type", "Nope")], Handling::Strict);
    assert_eq!(code, IssueType::Invalid);
    let ok = parse_search(None, &pairs(&[("_id", "1")]), Handling::Strict);
    assert!(ok.is_ok());
}

// -- matching ------------------------------------------------------------------

fn matches_query(resource: &Value, name: &str, value: &str) -> bool {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let c = criterion(resource_type, name, value);
    let entries: Vec<IndexEntry> = index_resource(resource);
    matches(&c, &entries)
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "name": [{"family": "Müller-Lüdenscheidt", "given": ["Zoë"]}],
        "gender": "female",
        "birthDate": "2013-01-14",
        "identifier": [{"system": "http://mrn", "value": "42", "type": {"text": "Medical record"}}],
        "generalPractitioner": [{"reference": "Practitioner/d1"}, {"reference": "https://x.org/fhir/Organization/o1"}],
        "managingOrganization": {"identifier": {"system": "http://orgs", "value": "acme"}}
    })
}

#[test]
fn match_strings() {
    let p = patient();
    assert!(matches_query(&p, "name", "muller"));
    assert!(matches_query(&p, "name", "ZOE"));
    assert!(!matches_query(&p, "name", "lud"));
    assert!(matches_query(&p, "name:contains", "lud"));
    assert!(matches_query(&p, "name:exact", "Zoë"));
    assert!(!matches_query(&p, "name:exact", "zoë"));
    assert!(matches_query(&p, "name", "nobody,zo"));
    assert!(matches_query(&p, "address:missing", "true"));
    assert!(!matches_query(&p, "name:missing", "true"));
    assert!(matches_query(&p, "name:missing", "false"));
}

#[test]
fn match_tokens() {
    let p = patient();
    assert!(matches_query(&p, "gender", "female"));
    assert!(!matches_query(&p, "gender", "FEMALE"));
    assert!(matches_query(&p, "gender:not", "male"));
    assert!(!matches_query(&p, "gender:not", "female"));
    assert!(matches_query(&p, "identifier", "http://mrn|42"));
    assert!(matches_query(&p, "identifier", "42"));
    assert!(!matches_query(&p, "identifier", "|42"));
    assert!(matches_query(&p, "identifier", "http://mrn|"));
    assert!(!matches_query(&p, "identifier", "http://other|42"));
    assert!(matches_query(&p, "active", "true"));
    assert!(matches_query(&p, "_id", "p1"));
    let obs = json!({"resourceType": "Observation", "code": {
        "coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}],
        "text": "BP"}, "category": [{"text": "Vital Signs"}]});
    assert!(matches_query(&obs, "code:text", "systolic"));
    assert!(!matches_query(&obs, "code:text", "diastolic"));
    assert!(matches_query(&obs, "category:text", "vital"));
    assert!(!matches_query(&obs, "category", "vital signs"));
}

#[test]
fn match_references() {
    let p = patient();
    assert!(matches_query(&p, "general-practitioner", "Practitioner/d1"));
    assert!(matches_query(&p, "general-practitioner:Practitioner", "d1"));
    assert!(matches_query(&p, "general-practitioner", "d1"));
    assert!(!matches_query(
        &p,
        "general-practitioner:Organization",
        "d1"
    ));
    assert!(!matches_query(
        &p,
        "general-practitioner",
        "Organization/o1"
    ));
    assert!(matches_query(
        &p,
        "general-practitioner",
        "https://x.org/fhir/Organization/o1"
    ));
    assert!(matches_query(
        &p,
        "organization:identifier",
        "http://orgs|acme"
    ));
    assert!(!matches_query(
        &p,
        "organization:identifier",
        "http://orgs|other"
    ));
    let obs = json!({"resourceType": "Observation", "subject": {"reference": "Group/g1"}});
    assert!(!matches_query(&obs, "patient", "g1"));
    assert!(matches_query(&obs, "subject", "Group/g1"));
}

fn with_date(date: &str) -> Value {
    json!({"resourceType": "Patient", "birthDate": date})
}

/// The R4 search page's date examples, for a resource dated on one day.
#[test]
fn match_date_prefixes() {
    let day = with_date("2013-01-14");
    assert!(matches_query(&day, "birthdate", "2013-01-14"));
    assert!(matches_query(&day, "birthdate", "2013-01"));
    assert!(matches_query(&day, "birthdate", "2013"));
    assert!(!matches_query(&day, "birthdate", "2013-01-14T10:00"));
    assert!(matches_query(&day, "birthdate", "ne2013-01-15"));
    assert!(!matches_query(&day, "birthdate", "ne2013-01"));
    assert!(matches_query(&day, "birthdate", "gt2013-01-13"));
    assert!(!matches_query(&day, "birthdate", "gt2013-01-14"));
    assert!(matches_query(&day, "birthdate", "ge2013-01-14"));
    assert!(matches_query(&day, "birthdate", "lt2013-01-15"));
    assert!(!matches_query(&day, "birthdate", "lt2013-01-14"));
    assert!(matches_query(&day, "birthdate", "le2013-01-14"));
    assert!(matches_query(&day, "birthdate", "sa2013-01-13"));
    assert!(!matches_query(&day, "birthdate", "sa2013-01-14"));
    assert!(matches_query(&day, "birthdate", "eb2013-01-15"));
    assert!(!matches_query(&day, "birthdate", "eb2013-01-14"));
    // A search at a finer precision than the resource: the day partly lies
    // after 10:00, so gt matches and eq does not.
    assert!(matches_query(&day, "birthdate", "gt2013-01-14T10:00"));
    assert!(matches_query(&day, "birthdate", "lt2013-01-14T10:00"));
}

#[test]
fn match_date_timezones_and_approx() {
    let encounter = json!({"resourceType": "Encounter", "period": {
        "start": "2013-01-14T10:00:00+10:00", "end": "2013-01-14T11:00:00+10:00"}});
    assert!(matches_query(&encounter, "date", "2013-01-14"));
    assert!(!matches_query(
        &encounter,
        "date",
        "2013-01-14T00:00Z,2013-01-14T00:59Z"
    ));
    assert!(matches_query(&encounter, "date", "ge2013-01-14T00:00:00Z"));
    assert!(matches_query(&encounter, "date", "le2013-01-14T00:30:00Z"));
    assert!(!matches_query(&encounter, "date", "gt2013-01-14T01:00:00Z"));
    assert!(!matches_query(&encounter, "date", "2013-01-13"));
    let open = json!({"resourceType": "Encounter", "period": {"start": "2013-01-14"}});
    assert!(matches_query(&open, "date", "gt2020"));
    assert!(!matches_query(&open, "date", "2013"));
    let old = with_date("1990-06-15");
    assert!(matches_query(&old, "birthdate", "ap1991"));
    assert!(!matches_query(&old, "birthdate", "ap2020"));
}

#[test]
fn match_numbers_and_quantities() {
    let risk =
        json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 100}]});
    assert!(matches_query(&risk, "probability", "100"));
    assert!(
        !matches_query(&risk, "probability", "100.4"),
        "100.4 is [100.35, 100.45)"
    );
    assert!(matches_query(&risk, "probability", "1e2"));
    assert!(matches_query(&risk, "probability", "100.00"));
    assert!(
        !matches_query(&risk, "probability", "100.01"),
        "100.01 is [100.005, 100.015)"
    );
    assert!(matches_query(&risk, "probability", "ne101"));
    assert!(matches_query(&risk, "probability", "gt99"));
    assert!(!matches_query(&risk, "probability", "gt100"));
    assert!(matches_query(&risk, "probability", "ge100"));
    assert!(matches_query(&risk, "probability", "lt101"));
    assert!(matches_query(&risk, "probability", "le100"));
    assert!(matches_query(&risk, "probability", "ap105"));
    assert!(!matches_query(&risk, "probability", "ap120"));
    assert!(matches_query(&risk, "probability", "sa98"));
    assert!(matches_query(&risk, "probability", "eb102"));

    let obs = json!({"resourceType": "Observation", "valueQuantity": {
        "value": 5.4, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}});
    assert!(matches_query(
        &obs,
        "value-quantity",
        "5.4|http://unitsofmeasure.org|mg"
    ));
    assert!(matches_query(&obs, "value-quantity", "5.4||mg"));
    assert!(matches_query(&obs, "value-quantity", "5.4"));
    assert!(!matches_query(
        &obs,
        "value-quantity",
        "5.4|http://unitsofmeasure.org|g"
    ));
    assert!(!matches_query(
        &obs,
        "value-quantity",
        "5.4|http://other|mg"
    ));
    assert!(matches_query(
        &obs,
        "value-quantity",
        "gt5|http://unitsofmeasure.org|mg"
    ));
    assert!(!matches_query(&obs, "value-quantity", "lt5"));
}

#[test]
fn match_uris() {
    let vs = json!({"resourceType": "ValueSet", "url": "http://acme.org/fhir/ValueSet/123"});
    assert!(matches_query(
        &vs,
        "url",
        "http://acme.org/fhir/ValueSet/123"
    ));
    assert!(!matches_query(&vs, "url", "http://acme.org/fhir/ValueSet"));
    assert!(matches_query(&vs, "url:below", "http://acme.org/fhir/"));
    assert!(matches_query(
        &vs,
        "url:above",
        "http://acme.org/fhir/ValueSet/123/_history/5"
    ));
    assert!(!matches_query(
        &vs,
        "url:above",
        "http://other.org/fhir/ValueSet/123"
    ));
}

#[test]
fn match_composites() {
    let obs = json!({
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    assert!(matches_query(
        &obs,
        "component-code-value-quantity",
        "http://loinc.org|8480-6$gt100"
    ));
    assert!(matches_query(
        &obs,
        "component-code-value-quantity",
        "8462-4$lt90"
    ));
    // The values belong to different components, so they do not match together.
    assert!(!matches_query(
        &obs,
        "component-code-value-quantity",
        "http://loinc.org|8462-4$gt100"
    ));
    assert!(matches_query(
        &obs,
        "combo-code-value-quantity",
        "8480-6$120"
    ));
    assert!(!matches_query(&obs, "code-value-quantity", "85354-9$120"));
}

#[test]
fn sort_values_order() {
    let early = index_resource(&with_date("2000"));
    let late = index_resource(&with_date("2010-05-05"));
    let a = sort_value(&early, "birthdate", false);
    let b = sort_value(&late, "birthdate", false);
    assert!(a < b);
    assert!(matches!(a, Some(SortValue::Date(_))));
    let (_, high) = range("2000");
    assert_eq!(
        sort_value(&early, "birthdate", true),
        Some(SortValue::Date(high))
    );
    let names = index_resource(
        &json!({"resourceType": "Patient", "name": [{"family": "Ébert"}, {"family": "adams"}]}),
    );
    assert_eq!(
        sort_value(&names, "family", false),
        Some(SortValue::Text("adams".to_owned()))
    );
    assert_eq!(
        sort_value(&names, "family", true),
        Some(SortValue::Text("ebert".to_owned()))
    );
    assert_eq!(sort_value(&names, "birthdate", false), None);
    assert!(SortValue::Number(-1.0) < SortValue::Number(2.5));
}

//! End-to-end tests of FHIR search over HTTPS: every parameter type, the
//! modifiers and prefixes, chaining and includes, sorting, paging and the
//! result parameters.

mod common;

use std::collections::HashSet;

use common::fixtures::{Admin, entries, ids_with_mode, link, sorted};
use reqwest::StatusCode;
use serde_json::{Value, json};

const MRN: &str = "http://example.org/mrn";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// The three patients most tests search over.
struct Patients {
    zoe: String,
    adam: String,
    carl: String,
}

async fn create_patients(admin: &Admin) -> Patients {
    let zoe = admin
        .create(json!({
            "resourceType": "Patient",
            "identifier": [{ "system": MRN, "value": "A1" }],
            "name": [{ "family": "Bäcker", "given": ["Zoë"] }],
            "gender": "female",
            "birthDate": "1980-02-15",
            "maritalStatus": { "text": "Married" }
        }))
        .await;
    let adam = admin
        .create(json!({
            "resourceType": "Patient",
            "identifier": [
                { "system": MRN, "value": "B2" },
                { "value": "NOSYS" }
            ],
            "name": [{ "family": "Zimmer", "given": ["Adam"] }],
            "gender": "male",
            "birthDate": "1980-11-02"
        }))
        .await;
    let carl = admin
        .create(json!({
            "resourceType": "Patient",
            "name": [{ "family": "Mazon", "given": ["Carl"] }],
            "birthDate": "1960-06-01"
        }))
        .await;
    Patients { zoe, adam, carl }
}

fn observation(subject: &str, code: &str, value: f64, unit: &str, effective: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{ "system": LOINC, "code": code }],
            "text": match code {
                "8480-6" => "Systolic blood pressure",
                "8302-2" => "Body height",
                _ => "Body weight",
            }
        },
        "subject": { "reference": format!("Patient/{subject}") },
        "effectiveDateTime": effective,
        "valueQuantity": { "value": value, "unit": unit, "system": UCUM, "code": unit }
    })
}

#[tokio::test]
async fn string_search_modifiers() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;

    assert_eq!(admin.match_set("Patient?name=zo").await, sorted(&[&p.zoe]));
    assert_eq!(admin.match_set("Patient?name=ZO").await, sorted(&[&p.zoe]));
    assert_eq!(
        admin.match_set("Patient?family=backer").await,
        sorted(&[&p.zoe])
    );
    assert_eq!(
        admin.match_set("Patient?name:contains=zo").await,
        sorted(&[&p.zoe, &p.carl])
    );
    assert_eq!(
        admin.match_set("Patient?name:contains=IMME").await,
        sorted(&[&p.adam])
    );
    assert_eq!(
        admin.match_set("Patient?name:exact=Zo%C3%AB").await,
        sorted(&[&p.zoe])
    );
    assert!(
        admin
            .match_set("Patient?name:exact=zo%C3%AB")
            .await
            .is_empty()
    );
    assert!(admin.match_set("Patient?name:exact=Zoe").await.is_empty());
    assert!(admin.match_set("Patient?name:exact=Zo").await.is_empty());
    // Values longer than the indexed prefix are still matched exactly.
    let long = admin
        .create(json!({
            "resourceType": "Patient",
            "name": [{ "family": "Wolfeschlegelsteinhausen" }]
        }))
        .await;
    assert_eq!(
        admin.match_set("Patient?family=wolfeschlegelstein").await,
        sorted(&[&long])
    );
    assert!(
        admin
            .match_set("Patient?family=wolfeschlegelx")
            .await
            .is_empty()
    );
    assert!(
        admin
            .match_set("Patient?family=wolfeschlegelsteinhausenberger")
            .await
            .is_empty()
    );

    // Several values of one parameter are alternatives.
    assert_eq!(
        admin.match_set("Patient?name=carl,adam").await,
        sorted(&[&p.adam, &p.carl])
    );
    // Repeated parameters must all match.
    assert_eq!(
        admin.match_set("Patient?name=zim&name=adam").await,
        sorted(&[&p.adam])
    );
    assert!(
        admin
            .match_set("Patient?name=zim&name=carl")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn token_search_forms() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;

    let cases: [(&str, Vec<String>); 7] = [
        ("identifier=http://example.org/mrn|A1", sorted(&[&p.zoe])),
        ("identifier=A1", sorted(&[&p.zoe])),
        (
            "identifier=http://example.org/mrn|",
            sorted(&[&p.zoe, &p.adam]),
        ),
        ("identifier=|NOSYS", sorted(&[&p.adam])),
        ("identifier=|A1", sorted(&[])),
        ("gender:not=female", sorted(&[&p.adam, &p.carl])),
        ("gender=male,female", sorted(&[&p.zoe, &p.adam])),
    ];
    for (query, expected) in cases {
        assert_eq!(
            admin.match_set(&format!("Patient?{query}")).await,
            expected,
            "{query}"
        );
    }

    let systolic = admin
        .create(observation(&p.zoe, "8480-6", 120.0, "mm[Hg]", "2020-01-01"))
        .await;
    let weight = admin
        .create(observation(&p.adam, "29463-7", 80.0, "kg", "2020-01-01"))
        .await;
    assert_eq!(
        admin.match_set("Observation?code:text=systolic").await,
        sorted(&[&systolic])
    );
    assert_eq!(
        admin.match_set("Observation?code:text=BODY").await,
        sorted(&[&weight])
    );
    assert_eq!(
        admin
            .match_set("Observation?code:not=http://loinc.org|8480-6")
            .await,
        sorted(&[&weight])
    );
}

#[tokio::test]
async fn date_prefixes_on_birthdate() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;

    let cases: [(&str, Vec<String>); 13] = [
        ("1980", sorted(&[&p.zoe, &p.adam])),
        ("1980-02", sorted(&[&p.zoe])),
        ("1980-02-15", sorted(&[&p.zoe])),
        ("eq1980-02-15", sorted(&[&p.zoe])),
        ("ne1980-02-15", sorted(&[&p.adam, &p.carl])),
        ("gt1980-02-15", sorted(&[&p.adam])),
        ("lt1980-02-15", sorted(&[&p.carl])),
        ("ge1980-02-15", sorted(&[&p.zoe, &p.adam])),
        ("le1980-02-15", sorted(&[&p.zoe, &p.carl])),
        ("sa1980-02-15", sorted(&[&p.adam])),
        ("eb1980-02-15", sorted(&[&p.carl])),
        ("gt1980", sorted(&[])),
        ("lt1980", sorted(&[&p.carl])),
    ];
    for (value, expected) in cases {
        assert_eq!(
            admin.match_set(&format!("Patient?birthdate={value}")).await,
            expected,
            "birthdate={value}"
        );
    }

    // `ap` is approximate: the same day matches and a date twenty years
    // away does not.
    let approx = admin.match_set("Patient?birthdate=ap1980-02-15").await;
    assert!(approx.contains(&p.zoe), "ap: {approx:?}");
    assert!(!approx.contains(&p.carl), "ap: {approx:?}");

    // A range given by two criteria.
    assert_eq!(
        admin
            .match_set("Patient?birthdate=ge1980-01-01&birthdate=lt1980-06-01")
            .await,
        sorted(&[&p.zoe])
    );
}

#[tokio::test]
async fn date_with_timezone_and_period() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;
    // 2019-12-31T23:30Z and 2020-01-01T00:30Z.
    let early = admin
        .create(observation(
            &p.zoe,
            "8480-6",
            120.0,
            "mm[Hg]",
            "2020-01-01T09:30:00+10:00",
        ))
        .await;
    let late = admin
        .create(observation(
            &p.zoe,
            "8480-6",
            90.0,
            "mm[Hg]",
            "2020-01-01T10:30:00+10:00",
        ))
        .await;

    assert_eq!(
        admin
            .match_set("Observation?date=ge2020-01-01T10:00:00%2B10:00")
            .await,
        sorted(&[&late])
    );
    assert_eq!(
        admin
            .match_set("Observation?date=lt2020-01-01T10:00:00%2B10:00")
            .await,
        sorted(&[&early])
    );
    assert_eq!(
        admin.match_set("Observation?date=2020-01-01").await,
        sorted(&[&late])
    );
    assert_eq!(
        admin.match_set("Observation?date=2019-12-31").await,
        sorted(&[&early])
    );
    assert_eq!(
        admin
            .match_set("Observation?date=gt2020-01-01T00:00:00Z")
            .await,
        sorted(&[&late])
    );

    let encounter = admin
        .create(json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP" },
            "subject": { "reference": format!("Patient/{}", p.zoe) },
            "period": { "start": "2020-03-01T08:00:00Z", "end": "2020-03-05T08:00:00Z" }
        }))
        .await;
    let found = |value: &str| {
        let query = format!("Encounter?date={value}");
        let admin = &admin;
        async move { !admin.match_ids(&query).await.is_empty() }
    };
    assert!(found("2020-03").await, "the period lies within March");
    assert!(found("2020").await, "the period lies within 2020");
    assert!(
        !found("2020-03-02").await,
        "the period is longer than a day"
    );
    assert!(found("ne2020-03-02").await);
    assert!(found("ge2020-03-03").await, "the period ends after");
    assert!(found("lt2020-03-03").await, "the period starts before");
    assert!(!found("gt2020-03-05T09:00:00Z").await);
    assert!(!found("lt2020-03-01T07:00:00Z").await);
    assert!(found("eb2020-03-06").await);
    assert!(!found("eb2020-03-04").await);
    assert!(found("sa2020-02-28").await);
    assert!(!found("sa2020-03-01").await);
    assert!(found("ap2020-03-03").await);
    assert_eq!(
        admin.match_ids("Encounter?date=2020-03").await,
        vec![encounter]
    );
}

#[tokio::test]
async fn reference_chain_and_includes() {
    let admin = Admin::start();
    let organization = admin
        .create(json!({ "resourceType": "Organization", "name": "General Hospital" }))
        .await;
    let p = create_patients(&admin).await;
    // Give Zoë a managing organization for `_include:iterate`.
    let (status, _, mut zoe) = admin.get(&format!("Patient/{}", p.zoe)).await;
    assert_eq!(status, StatusCode::OK);
    zoe["managingOrganization"] = json!({ "reference": format!("Organization/{organization}") });
    let (status, _, body) = admin
        .server
        .put_json(&format!("Patient/{}", p.zoe), &admin.token, &zoe)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let a1 = admin
        .create(observation(&p.zoe, "8480-6", 120.0, "mm[Hg]", "2020-01-01"))
        .await;
    let a2 = admin
        .create(observation(&p.zoe, "8480-6", 90.0, "mm[Hg]", "2020-01-02"))
        .await;
    let b1 = admin
        .create(observation(
            &p.adam,
            "8480-6",
            150.0,
            "mm[Hg]",
            "2020-01-03",
        ))
        .await;
    let zoes = sorted(&[&a1, &a2]);

    for query in [
        format!("Observation?subject=Patient/{}", p.zoe),
        format!("Observation?subject:Patient={}", p.zoe),
        format!("Observation?subject={}", p.zoe),
        format!("Observation?patient=Patient/{}", p.zoe),
        format!("Observation?patient={}", p.zoe),
        "Observation?subject:Patient.name=zo".to_owned(),
        "Observation?subject:Patient.identifier=http://example.org/mrn|A1".to_owned(),
        "Observation?patient.birthdate=1980-02".to_owned(),
    ] {
        assert_eq!(admin.match_set(&query).await, zoes, "{query}");
    }
    assert_eq!(
        admin
            .match_set(&format!("Observation?subject={},{}", p.zoe, p.adam))
            .await,
        sorted(&[&a1, &a2, &b1])
    );
    assert!(
        admin
            .match_set(&format!("Observation?subject:Group={}", p.zoe))
            .await
            .is_empty()
    );

    // `_include` adds the subject once, marked as an include.
    let bundle = admin
        .search(&format!(
            "Observation?subject=Patient/{}&_include=Observation:subject",
            p.zoe
        ))
        .await;
    assert_eq!(ids_with_mode(&bundle, "match").len(), 2);
    assert_eq!(ids_with_mode(&bundle, "include"), vec![p.zoe.clone()]);
    assert_eq!(bundle["total"], 2, "total counts matches only");

    // Without `:iterate` the organization of the included patient is not
    // followed; with it, it is.
    let bundle = admin
        .search(&format!(
            "Observation?_id={a1}&_include=Observation:subject&_include=Patient:organization"
        ))
        .await;
    assert_eq!(ids_with_mode(&bundle, "include"), vec![p.zoe.clone()]);
    let bundle = admin
        .search(&format!(
            "Observation?_id={a1}&_include=Observation:subject&_include:iterate=Patient:organization"
        ))
        .await;
    assert_eq!(
        sorted(
            &ids_with_mode(&bundle, "include")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        sorted(&[&p.zoe, &organization])
    );

    // `_revinclude` adds the observations that point at the patient.
    let bundle = admin
        .search(&format!(
            "Patient?_id={}&_revinclude=Observation:subject",
            p.zoe
        ))
        .await;
    assert_eq!(ids_with_mode(&bundle, "match"), vec![p.zoe.clone()]);
    let mut included = ids_with_mode(&bundle, "include");
    included.sort();
    assert_eq!(included, zoes);
}

#[tokio::test]
async fn reference_forms_and_typed_includes() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;
    let a1 = admin
        .create(observation(&p.zoe, "8480-6", 120.0, "mm[Hg]", "2020-01-01"))
        .await;
    let b1 = admin
        .create(observation(
            &p.adam,
            "8480-6",
            150.0,
            "mm[Hg]",
            "2020-01-03",
        ))
        .await;
    let orphan = admin
        .create(json!({
            "resourceType": "Observation",
            "status": "final",
            "code": { "text": "Unattached" }
        }))
        .await;

    // A reference given as an absolute URL under this server's base is the
    // same as the relative one.
    let absolute = format!("{}/Patient/{}", admin.server.base(), p.zoe);
    assert_eq!(
        admin
            .match_set(&format!("Observation?subject={absolute}"))
            .await,
        sorted(&[&a1])
    );

    assert_eq!(
        admin.match_set("Observation?subject:missing=true").await,
        sorted(&[&orphan])
    );
    assert_eq!(
        admin.match_set("Observation?subject:missing=false").await,
        sorted(&[&a1, &b1])
    );

    let bundle = admin
        .search("Observation?_include=Observation:subject:Patient&_sort=_id")
        .await;
    let mut included = ids_with_mode(&bundle, "include");
    included.sort();
    assert_eq!(included, sorted(&[&p.zoe, &p.adam]));
    let bundle = admin
        .search("Observation?_include=Observation:subject:Group")
        .await;
    assert!(ids_with_mode(&bundle, "include").is_empty(), "{bundle}");

    let mut by_id = vec![a1.clone(), b1.clone(), orphan.clone()];
    by_id.sort();
    assert_eq!(admin.match_ids("Observation?_sort=_id").await, by_id);
    by_id.reverse();
    assert_eq!(admin.match_ids("Observation?_sort=-_id").await, by_id);
    assert_eq!(
        admin.match_ids("Observation?_sort=-_lastUpdated").await,
        vec![orphan.clone(), b1.clone(), a1.clone()]
    );
}

#[tokio::test]
async fn quantity_number_uri_composite() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;
    let high = admin
        .create(observation(&p.zoe, "8480-6", 120.0, "mm[Hg]", "2020-01-01"))
        .await;
    let low = admin
        .create(observation(&p.zoe, "8480-6", 90.0, "mm[Hg]", "2020-01-02"))
        .await;
    let weight = admin
        .create(observation(&p.adam, "29463-7", 150.0, "kg", "2020-01-03"))
        .await;

    let cases: [(&str, Vec<String>); 9] = [
        (
            "value-quantity=gt100|http://unitsofmeasure.org|mm[Hg]",
            sorted(&[&high]),
        ),
        ("value-quantity=gt100", sorted(&[&high, &weight])),
        ("value-quantity=120", sorted(&[&high])),
        ("value-quantity=lt100||mm[Hg]", sorted(&[&low])),
        ("value-quantity=ge90||mm[Hg]", sorted(&[&high, &low])),
        ("value-quantity=le90", sorted(&[&low])),
        (
            "value-quantity=ne120|http://unitsofmeasure.org|mm[Hg]",
            sorted(&[&low]),
        ),
        (
            "value-quantity=150|http://unitsofmeasure.org|mm[Hg]",
            sorted(&[]),
        ),
        (
            "code-value-quantity=http://loinc.org|8480-6$gt100",
            sorted(&[&high]),
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(
            admin.match_set(&format!("Observation?{query}")).await,
            expected,
            "{query}"
        );
    }
    assert_eq!(
        admin
            .match_set("Observation?code-value-quantity=http://loinc.org|29463-7$gt100")
            .await,
        sorted(&[&weight])
    );
    assert!(
        admin
            .match_set("Observation?code-value-quantity=http://loinc.org|8480-6$gt200")
            .await
            .is_empty()
    );

    let likely = admin
        .create(json!({
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": { "reference": format!("Patient/{}", p.zoe) },
            "prediction": [{ "probabilityDecimal": 0.8 }]
        }))
        .await;
    let unlikely = admin
        .create(json!({
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": { "reference": format!("Patient/{}", p.adam) },
            "prediction": [{ "probabilityDecimal": 0.2 }]
        }))
        .await;
    assert_eq!(
        admin.match_set("RiskAssessment?probability=gt0.5").await,
        sorted(&[&likely])
    );
    assert_eq!(
        admin.match_set("RiskAssessment?probability=0.8").await,
        sorted(&[&likely])
    );
    assert_eq!(
        admin.match_set("RiskAssessment?probability=lt0.5").await,
        sorted(&[&unlikely])
    );
    assert_eq!(
        admin.match_set("RiskAssessment?probability=ge0.2").await,
        sorted(&[&likely, &unlikely])
    );

    let one = admin
        .create(json!({
            "resourceType": "ValueSet",
            "status": "active",
            "url": "http://example.org/fhir/ValueSet/one"
        }))
        .await;
    let two = admin
        .create(json!({
            "resourceType": "ValueSet",
            "status": "active",
            "url": "http://example.org/fhir/ValueSet/two",
            "meta": { "profile": ["http://example.org/fhir/StructureDefinition/special"] }
        }))
        .await;
    assert_eq!(
        admin
            .match_set("ValueSet?url=http://example.org/fhir/ValueSet/one")
            .await,
        sorted(&[&one])
    );
    assert!(
        admin
            .match_set("ValueSet?url=http://example.org/fhir/ValueSet")
            .await
            .is_empty(),
        "uri matches whole values"
    );
    assert_eq!(
        admin
            .match_set("ValueSet?url:below=http://example.org/fhir/ValueSet")
            .await,
        sorted(&[&one, &two])
    );
    assert_eq!(
        admin
            .match_set("ValueSet?_profile=http://example.org/fhir/StructureDefinition/special")
            .await,
        sorted(&[&two])
    );
}

#[tokio::test]
async fn id_last_updated_and_missing() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;

    assert_eq!(
        admin
            .match_set(&format!("Patient?_id={},{}", p.zoe, p.carl))
            .await,
        sorted(&[&p.zoe, &p.carl])
    );
    assert!(admin.match_set("Patient?_id=unknown").await.is_empty());

    let (_, _, carl) = admin.get(&format!("Patient/{}", p.carl)).await;
    let carl_updated = carl["meta"]["lastUpdated"]
        .as_str()
        .expect("meta.lastUpdated")
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let later = admin
        .create(json!({ "resourceType": "Patient", "name": [{ "family": "Later" }] }))
        .await;
    assert_eq!(
        admin
            .match_set(&format!("Patient?_lastUpdated=gt{carl_updated}"))
            .await,
        sorted(&[&later])
    );
    assert_eq!(
        admin
            .match_set(&format!("Patient?_lastUpdated=le{carl_updated}"))
            .await,
        sorted(&[&p.zoe, &p.adam, &p.carl])
    );
    let today = &carl_updated[..10];
    assert_eq!(
        admin
            .match_set(&format!("Patient?_lastUpdated={today}"))
            .await
            .len(),
        4
    );
    assert!(
        admin
            .match_set("Patient?_lastUpdated=lt2000-01-01")
            .await
            .is_empty()
    );

    assert_eq!(
        admin.match_set("Patient?gender:missing=true").await,
        sorted(&[&p.carl, &later])
    );
    assert_eq!(
        admin.match_set("Patient?gender:missing=false").await,
        sorted(&[&p.zoe, &p.adam])
    );
    assert_eq!(
        admin.match_set("Patient?birthdate:missing=true").await,
        sorted(&[&later])
    );
    assert_eq!(
        admin.match_set("Patient?identifier:missing=true").await,
        sorted(&[&p.carl, &later])
    );
}

#[tokio::test]
async fn sort_by_several_keys() {
    let admin = Admin::start();
    let mut ids = Vec::new();
    for (family, given, birth) in [
        ("Smith", "Ann", "1990-01-01"),
        ("Jones", "Bob", "1985-05-05"),
        ("Smith", "Cat", "1970-03-03"),
        ("Adams", "Dan", "1990-01-01"),
        ("Smith", "Eve", "1995-12-12"),
    ] {
        ids.push(
            admin
                .create(json!({
                    "resourceType": "Patient",
                    "name": [{ "family": family, "given": [given] }],
                    "birthDate": birth
                }))
                .await,
        );
    }
    let order =
        |indexes: &[usize]| -> Vec<String> { indexes.iter().map(|i| ids[*i].clone()).collect() };

    // Ann and Dan share a birth date; their relative order is unspecified
    // when no further key is given.
    let by_birth = admin.match_ids("Patient?_sort=birthdate").await;
    assert_eq!(by_birth.len(), 5);
    assert_eq!(by_birth[..2], order(&[2, 1])[..]);
    assert_eq!(by_birth[4], ids[4]);
    let by_birth_descending = admin.match_ids("Patient?_sort=-birthdate").await;
    assert_eq!(by_birth_descending.len(), 5);
    assert_eq!(by_birth_descending[0], ids[4]);
    assert_eq!(by_birth_descending[3..], order(&[1, 2])[..]);
    assert_eq!(
        admin.match_ids("Patient?_sort=family,-birthdate").await,
        order(&[3, 1, 4, 0, 2])
    );
    assert_eq!(
        admin.match_ids("Patient?_sort=-family,birthdate").await,
        order(&[2, 0, 4, 1, 3])
    );
    assert_eq!(
        admin.match_ids("Patient?_sort=birthdate,given").await,
        order(&[2, 1, 0, 3, 4])
    );
    assert_eq!(
        admin.match_ids("Patient?_sort=-birthdate,-given").await,
        order(&[4, 3, 0, 1, 2])
    );
    assert_eq!(
        admin.match_ids("Patient?family=smith&_sort=given").await,
        order(&[0, 2, 4])
    );
}

/// Follows `next` links from `first` and returns every match id in order.
async fn visit_pages(
    admin: &Admin,
    first: Value,
    mut between: impl AsyncFnMut(usize),
) -> Vec<String> {
    let mut visited = Vec::new();
    let mut page = first;
    let mut pages = 0;
    loop {
        let matches = ids_with_mode(&page, "match");
        assert!(matches.len() <= 5, "a page holds at most _count entries");
        // At most one match disappears during these walks, so no page
        // (a trailing one included) is empty.
        assert!(!matches.is_empty(), "page {pages} is empty: {page}");
        visited.extend(matches);
        pages += 1;
        assert!(pages < 100, "paging does not end");
        let Some(next) = link(&page, "next") else {
            break;
        };
        between(pages).await;
        page = admin.search(&next).await;
    }
    visited
}

#[tokio::test]
async fn paging_visits_each_match_once() {
    let admin = Admin::start();
    let mut created = Vec::new();
    for i in 0..23 {
        created.push(
            admin
                .create(json!({
                    "resourceType": "Patient",
                    "name": [{ "family": "Pager", "given": [format!("P{i:02}")] }]
                }))
                .await,
        );
    }

    // A plain walk returns all 23, each once, in the sort order.
    let first = admin
        .search("Patient?family=pager&_count=5&_sort=given")
        .await;
    assert_eq!(first["total"], 23);
    assert!(link(&first, "self").is_some());
    let visited = visit_pages(&admin, first, async |_| {}).await;
    assert_eq!(visited, created);

    // Creating and deleting matches between pages neither repeats nor
    // skips the remaining ones.
    let first = admin.search("Patient?family=pager&_count=5").await;
    let first_page: HashSet<String> = ids_with_mode(&first, "match").into_iter().collect();
    let unvisited: Vec<String> = created
        .iter()
        .filter(|id| !first_page.contains(*id))
        .cloned()
        .collect();
    let doomed = unvisited[unvisited.len() - 1].clone();
    let mut added = Vec::new();
    let visited = visit_pages(&admin, first, async |page| {
        let id = admin
            .create(json!({
                "resourceType": "Patient",
                "name": [{ "family": "Pager", "given": [format!("New{page}")] }]
            }))
            .await;
        added.push(id);
        if page == 1 {
            let (status, _, body) = admin.delete(&format!("Patient/{doomed}")).await;
            assert!(status.is_success(), "{body}");
        }
    })
    .await;
    let unique: HashSet<&String> = visited.iter().collect();
    assert_eq!(unique.len(), visited.len(), "a match repeated: {visited:?}");
    for id in &created {
        if *id != doomed {
            assert!(visited.contains(id), "{id} was skipped");
        }
    }
    assert!(!visited.contains(&doomed), "a deleted match was returned");
    assert!(!added.is_empty());
}

#[tokio::test]
async fn count_zero_returns_total_only() {
    let admin = Admin::start();
    create_patients(&admin).await;
    let bundle = admin.search("Patient?_count=0").await;
    assert_eq!(bundle["total"], 3);
    assert!(entries(&bundle).is_empty(), "{bundle}");
    assert!(link(&bundle, "next").is_none(), "{bundle}");
}

#[tokio::test]
async fn later_pages_only_for_their_caller() {
    let admin = Admin::start();
    create_patients(&admin).await;
    let first = admin.search("Patient?_count=1").await;
    let next = link(&first, "next").expect("a next link");

    let narrower = admin.server.token("system/Patient.rs");
    let (status, _, body) = admin.server.get(&next, &narrower).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");

    let (status, _, body) = admin.server.get(&next, &admin.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(entries(&body).len(), 1);
}

#[tokio::test]
async fn later_pages_keep_includes_and_elements() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;
    for day in 1..=4 {
        admin
            .create(observation(
                &p.zoe,
                "8480-6",
                100.0 + f64::from(day),
                "mm[Hg]",
                &format!("2020-01-0{day}"),
            ))
            .await;
    }
    let first = admin
        .search(&format!(
            "Observation?subject=Patient/{}&_count=2&_sort=date&_include=Observation:subject&_elements=status,subject",
            p.zoe
        ))
        .await;
    let next = link(&first, "next").expect("a next link");
    let second = admin.search(&next).await;
    for page in [&first, &second] {
        assert_eq!(ids_with_mode(page, "match").len(), 2, "{page}");
        assert_eq!(
            ids_with_mode(page, "include"),
            vec![p.zoe.clone()],
            "{page}"
        );
        for entry in entries(page) {
            if entry["search"]["mode"] == "match" {
                assert_eq!(entry["resource"]["status"], "final");
                assert!(entry["resource"].get("valueQuantity").is_none(), "{entry}");
            }
        }
    }
    assert!(link(&second, "next").is_none(), "{second}");
    assert!(link(&second, "previous").is_some(), "{second}");
}

#[tokio::test]
async fn total_summary_and_elements() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;

    let bundle = admin.search("Patient?_total=accurate&_count=1").await;
    assert_eq!(bundle["total"], 3);
    assert_eq!(ids_with_mode(&bundle, "match").len(), 1);

    let bundle = admin.search("Patient?_summary=count").await;
    assert_eq!(bundle["total"], 3);
    assert!(
        entries(&bundle).is_empty(),
        "count has no entries: {bundle}"
    );
    assert!(link(&bundle, "next").is_none());

    let bundle = admin
        .search(&format!("Patient?_id={}&_summary=true", p.zoe))
        .await;
    let zoe = &entries(&bundle)[0]["resource"];
    assert_eq!(zoe["birthDate"], "1980-02-15");
    assert_eq!(zoe["name"][0]["family"], "Bäcker");
    assert!(zoe.get("maritalStatus").is_none(), "not a summary element");
    let tags = zoe["meta"]["tag"].to_string();
    assert!(tags.contains("SUBSETTED"), "summary is marked: {zoe}");

    let bundle = admin
        .search(&format!("Patient?_id={}&_elements=birthDate", p.zoe))
        .await;
    let zoe = &entries(&bundle)[0]["resource"];
    assert_eq!(zoe["resourceType"], "Patient");
    assert_eq!(zoe["id"], p.zoe.as_str());
    assert_eq!(zoe["birthDate"], "1980-02-15");
    assert!(zoe.get("name").is_none(), "{zoe}");
    assert!(zoe.get("gender").is_none(), "{zoe}");
}

#[tokio::test]
async fn post_search_and_system_search() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;
    let obs = admin
        .create(observation(&p.zoe, "8480-6", 120.0, "mm[Hg]", "2020-01-01"))
        .await;

    let response = admin
        .server
        .request(reqwest::Method::POST, "Patient/_search", &admin.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=zo&birthdate=1980")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let bundle: Value = response.json().await.expect("JSON");
    assert_eq!(ids_with_mode(&bundle, "match"), vec![p.zoe.clone()]);

    let bundle = admin
        .search(&format!(
            "/fhir?_type=Patient,Observation&_id={},{obs}",
            p.zoe
        ))
        .await;
    let mut found: Vec<String> = entries(&bundle)
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or(""),
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect();
    found.sort();
    let mut expected = vec![format!("Observation/{obs}"), format!("Patient/{}", p.zoe)];
    expected.sort();
    assert_eq!(found, expected);

    let bundle = admin
        .search(&format!("/fhir?_type=Patient&_id={},{obs}", p.zoe))
        .await;
    assert_eq!(ids_with_mode(&bundle, "match"), vec![p.zoe.clone()]);
}

#[tokio::test]
async fn unknown_parameter_handling() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;

    let bundle = admin.search("Patient?name=zo&frobnicate=1").await;
    assert_eq!(ids_with_mode(&bundle, "match"), vec![p.zoe.clone()]);
    let outcome: Vec<Value> = entries(&bundle)
        .into_iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .collect();
    assert_eq!(outcome.len(), 1, "{bundle}");
    assert_eq!(outcome[0]["resource"]["resourceType"], "OperationOutcome");
    assert!(outcome[0]["resource"].to_string().contains("frobnicate"));

    let (status, _, body) = common::send(
        admin
            .server
            .request(
                reqwest::Method::GET,
                "Patient?name=zo&frobnicate=1",
                &admin.token,
            )
            .header("prefer", "handling=strict"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(body.to_string().contains("frobnicate"), "{body}");

    let (status, _, _) = common::send(
        admin
            .server
            .request(reqwest::Method::GET, "Patient?name=zo", &admin.token)
            .header("prefer", "handling=strict"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn observations_of_patient_newest_first() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;
    let dates = [
        "2019-06-01T10:00:00Z",
        "2021-03-15",
        "2020-11-30T23:00:00-05:00",
        "2018-01-01",
    ];
    let mut heights = Vec::new();
    for (i, date) in dates.iter().enumerate() {
        let value = 170.0 + f64::from(u8::try_from(i).unwrap_or(0));
        heights.push(
            admin
                .create(observation(&p.zoe, "8302-2", value, "cm", date))
                .await,
        );
    }
    // Noise: another code for the same patient, the same code for another.
    admin
        .create(observation(&p.zoe, "29463-7", 60.0, "kg", "2022-01-01"))
        .await;
    admin
        .create(observation(&p.adam, "8302-2", 180.0, "cm", "2022-01-01"))
        .await;

    let query = format!(
        "Observation?subject=Patient/{}&code=http://loinc.org|8302-2&_sort=-date",
        p.zoe
    );
    let bundle = admin.search(&query).await;
    assert_eq!(bundle["total"], 4);
    // 2021-03-15, 2020-12-01T04:00Z, 2019-06-01, 2018-01-01.
    let expected = vec![
        heights[1].clone(),
        heights[2].clone(),
        heights[0].clone(),
        heights[3].clone(),
    ];
    assert_eq!(ids_with_mode(&bundle, "match"), expected);

    let ascending = admin
        .match_ids(&query.replace("_sort=-date", "_sort=date"))
        .await;
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(ascending, reversed);
}

/// Asserts a 400 `too-costly` OperationOutcome whose text contains `limit`.
async fn assert_too_costly(admin: &Admin, query: &str, limit: &str) {
    let (status, _, body) = admin.get(query).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "GET {query}: {body}");
    assert_eq!(body["issue"][0]["code"], "too-costly", "{body}");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(text.contains(limit), "names the limit {limit}: {text}");
}

#[tokio::test]
async fn long_or_lists_and_limits() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;
    let weight = admin
        .create(observation(&p.zoe, "29463-7", 60.0, "kg", "2022-01-01"))
        .await;

    // 500 system|code values: each is its own condition, ORed.
    let codes: Vec<String> = (0..499)
        .map(|i| format!("{LOINC}|{i}-0"))
        .chain([format!("{LOINC}|29463-7")])
        .collect();
    let query = format!("Observation?code={}", codes.join(","));
    assert_eq!(admin.match_set(&query).await, sorted(&[&weight]));

    // 600 codes without a system, names and dates.
    let bare: Vec<String> = (0..599)
        .map(|i| format!("{i}-0"))
        .chain(["29463-7".to_owned()])
        .collect();
    let query = format!("Observation?code={}", bare.join(","));
    assert_eq!(admin.match_set(&query).await, sorted(&[&weight]));

    let names: Vec<String> = (0..599)
        .map(|i| format!("nobody{i}"))
        .chain(["zimmer".to_owned()])
        .collect();
    let query = format!("Patient?name={}", names.join(","));
    assert_eq!(admin.match_set(&query).await, sorted(&[&p.adam]));

    let dates: Vec<String> = (0..599)
        .map(|i| format!("{}-01-01", 1000 + i))
        .chain(["1960-06-01".to_owned()])
        .collect();
    let query = format!("Patient?birthdate={}", dates.join(","));
    assert_eq!(admin.match_set(&query).await, sorted(&[&p.carl]));

    // 100 repeated parameters are ANDed; one more is rejected.
    let repeated = vec!["birthdate=le2000"; 100].join("&");
    let query = format!("Patient?{repeated}");
    assert_eq!(admin.match_set(&query).await.len(), 3);
    assert_too_costly(&admin, &format!("{query}&name=zimmer"), "100").await;
    let names = vec!["name=zimmer"; 1_000].join("&");
    assert_too_costly(&admin, &format!("Patient?{names}"), "100").await;

    let many: Vec<String> = (0..1_001).map(|i| format!("n{i}")).collect();
    let query = format!("Patient?name={}", many.join(","));
    assert_too_costly(&admin, &query, "1000").await;
}

#[tokio::test]
async fn code_token_with_bound_system() {
    let admin = Admin::start();
    let p = create_patients(&admin).await;

    let gender = "http://hl7.org/fhir/administrative-gender";
    let with_system = format!("Patient?gender={gender}|female");
    assert_eq!(admin.match_set(&with_system).await, sorted(&[&p.zoe]));
    assert_eq!(
        admin.match_set("Patient?gender=female").await,
        sorted(&[&p.zoe])
    );
    let other_system = "Patient?gender=http://example.org/other|female";
    assert!(admin.match_ids(other_system).await.is_empty());
    let not_female = format!("Patient?gender:not={gender}|female");
    assert_eq!(
        admin.match_set(&not_female).await,
        sorted(&[&p.adam, &p.carl])
    );
}

/// Reads a history Bundle, asserting 200.
async fn read_history(admin: &Admin, path: &str) -> Value {
    let (status, _, body) = admin.get(path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    assert_eq!(body["type"], "history", "GET {path}: {body}");
    body
}

/// Returns the version ids of a history Bundle, newest first.
fn history_versions(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter_map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn history_at_selects_current_versions() {
    let admin = Admin::start();
    let id = admin
        .create(json!({ "resourceType": "Patient", "gender": "male" }))
        .await;
    let path = format!("Patient/{id}");
    let mut stamps = Vec::new();
    let (_, _, body) = admin.get(&path).await;
    stamps.push(
        body["meta"]["lastUpdated"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    for gender in ["female", "other"] {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let resource = json!({ "resourceType": "Patient", "id": id, "gender": gender });
        let (status, _, body) = admin.server.put_json(&path, &admin.token, &resource).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        stamps.push(
            body["meta"]["lastUpdated"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, _, _) = admin.delete(&path).await;
    assert!(status.is_success(), "delete: {status}");
    let history = read_history(&admin, &format!("{path}/_history")).await;
    let deleted_at = entries(&history)
        .first()
        .and_then(|e| e["response"]["lastModified"].as_str().map(str::to_owned));

    let at = |when: &str| format!("{path}/_history?_at={when}");
    // Each version's own instant selects that version alone: the previous
    // one stopped being current at that instant.
    for (stamp, version) in stamps.iter().zip(["1", "2", "3"]) {
        assert_eq!(
            history_versions(&read_history(&admin, &at(stamp)).await),
            [version],
            "_at={stamp}"
        );
    }
    // A year covers every version that was current during it; the deletion
    // marker is not a version that was current.
    let year = stamps.first().map(|s| &s[..4]).unwrap_or_default();
    assert_eq!(
        history_versions(&read_history(&admin, &at(year)).await),
        ["3", "2", "1"]
    );
    assert!(history_versions(&read_history(&admin, &at("2000")).await).is_empty());
    if let Some(deleted_at) = deleted_at {
        let after_delete = read_history(&admin, &at(&deleted_at)).await;
        assert!(history_versions(&after_delete).is_empty(), "{after_delete}");
    }
}

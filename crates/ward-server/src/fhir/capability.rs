//! The CapabilityStatement served at `/fhir/metadata`: what this server
//! really supports, generated from the same definitions the handlers use.

use serde_json::{Value, json};
use ward_fhir::search::{ParamType, search_params};

fn type_code(param_type: ParamType) -> &'static str {
    match param_type {
        ParamType::Number => "number",
        ParamType::Date => "date",
        ParamType::String => "string",
        ParamType::Token => "token",
        ParamType::Reference => "reference",
        ParamType::Composite => "composite",
        ParamType::Quantity => "quantity",
        ParamType::Uri => "uri",
        ParamType::Special => "special",
    }
}

/// Builds the CapabilityStatement for a server whose FHIR base is `base`.
pub fn capability_statement(base: &str, security: Option<Value>) -> Value {
    let mut resources = Vec::new();
    for resource_type in ward_fhir::definitions::resource_types() {
        let mut params: Vec<Value> = search_params(resource_type)
            .chain(search_params(ward_fhir::search::RESOURCE))
            .filter(|p| p.param_type != ParamType::Special)
            .map(|p| json!({ "name": p.code, "type": type_code(p.param_type) }))
            .collect();
        params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        params.dedup();
        let interactions: Vec<Value> = [
            "read",
            "vread",
            "update",
            "delete",
            "history-instance",
            "history-type",
            "create",
            "search-type",
        ]
        .iter()
        .map(|code| json!({ "code": code }))
        .collect();
        resources.push(json!({
            "type": resource_type,
            "interaction": interactions,
            "versioning": "versioned-update",
            "readHistory": true,
            "updateCreate": true,
            "conditionalCreate": true,
            "conditionalRead": "full-support",
            "conditionalUpdate": true,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "local"],
            "searchInclude": ["*"],
            "searchRevInclude": ["*"],
            "searchParam": params,
        }));
    }
    let mut rest = json!({
        "mode": "server",
        "resource": resources,
        "interaction": [
            { "code": "transaction" },
            { "code": "batch" },
            { "code": "search-system" },
            { "code": "history-system" },
        ],
        "searchParam": [
            { "name": "_id", "type": "token" },
            { "name": "_lastUpdated", "type": "date" },
        ],
    });
    if let Some(security) = security {
        rest["security"] = security;
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-04",
        "kind": "instance",
        "software": { "name": "Ward", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Ward FHIR R4 server", "url": base },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "patchFormat": [],
        "rest": [rest],
    })
}

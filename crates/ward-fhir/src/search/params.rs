//! The official R4 search parameter definitions, loaded once from the
//! generated `definitions/search-parameters.json` (written by
//! `tools/gen-search-parameters.py`), with every FHIRPath expression parsed
//! at load time.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::ParamType;
use crate::fhirpath::{Expression, FhirPathError};

const DEFINITIONS: &str = include_str!("../../definitions/search-parameters.json");

/// The pseudo resource type that holds the parameters every type shares
/// (`_id`, `_lastUpdated`, `_tag`, `_profile`, `_security`, `_source`).
pub const RESOURCE: &str = "Resource";

/// One search parameter of one resource type.
#[derive(Debug)]
pub struct SearchParamDef {
    /// The code used in search requests, such as `birthdate`.
    pub code: String,
    /// The resource type the definition applies to (`Resource` for the
    /// shared parameters).
    pub base: String,
    /// The parameter type.
    pub param_type: ParamType,
    /// The FHIRPath expression narrowed to `base`, as written.
    pub expression: Option<String>,
    /// The resource types a reference parameter may point to.
    pub targets: Vec<String>,
    /// The components of a composite parameter, in definition order.
    pub components: Vec<ComponentDef>,
    compiled: Option<Expression>,
    compile_error: Option<FhirPathError>,
}

/// One component of a composite search parameter.
#[derive(Debug)]
pub struct ComponentDef {
    /// The code of the search parameter that defines the component.
    pub code: String,
    /// The component's parameter type.
    pub param_type: ParamType,
    /// The FHIRPath expression, relative to the composite's base node.
    pub expression: String,
    compiled: Option<Expression>,
}

impl SearchParamDef {
    /// The parsed expression, or `None` when the parameter has none or it
    /// falls outside the FHIRPath subset (see [`Self::compile_error`]).
    pub fn compiled(&self) -> Option<&Expression> {
        self.compiled.as_ref()
    }

    /// Why the expression (or a component's expression) could not be parsed.
    pub fn compile_error(&self) -> Option<&FhirPathError> {
        self.compile_error.as_ref()
    }
}

impl ComponentDef {
    /// The parsed component expression.
    pub fn compiled(&self) -> Option<&Expression> {
        self.compiled.as_ref()
    }
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "resourceTypes")]
    resource_types: Vec<String>,
    parameters: HashMap<String, Vec<RawParam>>,
}

#[derive(Deserialize)]
struct RawParam {
    code: String,
    #[serde(rename = "type")]
    param_type: String,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
}

#[derive(Deserialize)]
struct RawComponent {
    code: String,
    #[serde(rename = "type")]
    param_type: String,
    expression: String,
}

struct Registry {
    resource_types: Vec<String>,
    by_type: HashMap<String, Vec<SearchParamDef>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(load)
}

/// Builds the registry. The JSON is generated and embedded at build time, so
/// a parse failure means a broken build: the registry is then empty and the
/// crate's tests fail.
fn load() -> Registry {
    let raw: RawFile = match serde_json::from_str(DEFINITIONS) {
        Ok(raw) => raw,
        Err(_) => {
            return Registry {
                resource_types: Vec::new(),
                by_type: HashMap::new(),
            };
        }
    };
    let by_type = raw
        .parameters
        .into_iter()
        .map(|(base, params)| {
            let defs = params.into_iter().map(|p| build(&base, p)).collect();
            (base, defs)
        })
        .collect();
    let mut resource_types = raw.resource_types;
    resource_types.sort();
    Registry {
        resource_types,
        by_type,
    }
}

fn build(base: &str, raw: RawParam) -> SearchParamDef {
    let mut compile_error = None;
    let compiled = match raw.expression.as_deref().map(Expression::parse) {
        Some(Ok(expression)) => Some(expression),
        Some(Err(err)) => {
            compile_error = Some(err);
            None
        }
        None => None,
    };
    let components = raw
        .component
        .into_iter()
        .map(|c| {
            let compiled = match Expression::parse(&c.expression) {
                Ok(expression) => Some(expression),
                Err(err) => {
                    compile_error.get_or_insert(err);
                    None
                }
            };
            ComponentDef {
                code: c.code,
                param_type: param_type(&c.param_type),
                expression: c.expression,
                compiled,
            }
        })
        .collect();
    SearchParamDef {
        code: raw.code,
        base: base.to_owned(),
        param_type: param_type(&raw.param_type),
        expression: raw.expression,
        targets: raw.target,
        components,
        compiled,
        compile_error,
    }
}

fn param_type(code: &str) -> ParamType {
    match code {
        "number" => ParamType::Number,
        "date" => ParamType::Date,
        "string" => ParamType::String,
        "token" => ParamType::Token,
        "reference" => ParamType::Reference,
        "composite" => ParamType::Composite,
        "quantity" => ParamType::Quantity,
        "uri" => ParamType::Uri,
        _ => ParamType::Special,
    }
}

/// Looks up the search parameter `code` of `resource_type`, including the
/// parameters every resource type shares (`_id`, `_lastUpdated`…).
pub fn search_param(resource_type: &str, code: &str) -> Option<&'static SearchParamDef> {
    let registry = registry();
    let own = registry
        .by_type
        .get(resource_type)
        .and_then(|defs| defs.iter().find(|d| d.code == code));
    own.or_else(|| {
        registry
            .by_type
            .get(RESOURCE)
            .and_then(|defs| defs.iter().find(|d| d.code == code))
    })
}

/// Iterates over every search parameter of `resource_type`: its own, then the
/// shared ones. Yields only the shared ones for an unknown type.
pub fn search_params(resource_type: &str) -> impl Iterator<Item = &'static SearchParamDef> {
    let registry = registry();
    let own = registry
        .by_type
        .get(resource_type)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let shared = registry
        .by_type
        .get(RESOURCE)
        .map(Vec::as_slice)
        .unwrap_or_default();
    own.iter().chain(shared.iter())
}

/// Iterates over every search parameter definition of every type, including
/// the shared ones under [`RESOURCE`].
pub fn all_search_params() -> impl Iterator<Item = &'static SearchParamDef> {
    registry().by_type.values().flatten()
}

/// The R4 resource types (concrete ones only), sorted.
pub fn resource_types() -> &'static [String] {
    &registry().resource_types
}

/// Returns the canonical spelling of a resource type name, or `None` when it
/// is not an R4 resource type. Matching is case-sensitive.
pub fn static_resource_type(name: &str) -> Option<&'static str> {
    let types = resource_types();
    types
        .binary_search_by(|t| t.as_str().cmp(name))
        .ok()
        .and_then(|index| types.get(index))
        .map(String::as_str)
}

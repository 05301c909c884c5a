//! Validation of FHIR R4 resources in JSON form against the base
//! specification.
//!
//! Every rule comes from the generated structure definitions (see
//! [`crate::definitions`]): element names, JSON types, lexical forms,
//! cardinality, choice types, required bindings and reference targets.
//! Profiles, invariants written in FHIRPath and terminology outside the
//! package are not checked.
//!
//! All issues are collected, up to [`MAX_ISSUES`], each with a FHIRPath-style
//! location such as `Patient.name[0].given[1]` or
//! `Observation.valueQuantity.value`. Diagnostics do not repeat submitted
//! values, which can carry PHI. They name the element, the rule and the fix,
//! and at most quote an unknown property name (cut to 64 characters) or the
//! resource type of a relative reference.

mod narrative;

use serde_json::{Map, Value};

use crate::definitions::{
    Definitions, ElementDef, JsonKind, Primitive, TypeKind, TypeRef, ValueSetCodes, definitions,
};
use crate::outcome::{IssueType, OperationOutcome, OutcomeIssue};

/// Maximum JSON nesting depth of a resource, in objects: the resource itself
/// is level 1, `Patient.contact` level 2, `Patient.contact.name` level 3.
/// Arrays do not count. A deeper document is rejected with one `structure`
/// issue instead of being walked, so validation never exhausts the stack.
pub const MAX_DEPTH: usize = 64;

/// Maximum length of a string value in bytes (1 MiB, the limit the FHIR
/// datatypes page sets for `string`). `base64Binary` values are exempt, so
/// attachments are bounded only by the request body limit.
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Maximum number of items in one JSON array of a resource, such as
/// `Patient.name`. A longer array is rejected with one `too-costly` issue at
/// the element's path instead of being walked, which bounds validation and
/// search indexing time.
pub const MAX_ARRAY_ITEMS: usize = 10_000;

/// Maximum number of issues reported for one resource. Validation stops
/// once it is reached and notes that more issues may exist.
pub const MAX_ISSUES: usize = 100;

/// Validates a resource in FHIR JSON form against the R4 definitions.
///
/// Returns `Ok(())` for a valid resource. Otherwise the error contains every
/// issue found, up to [`MAX_ISSUES`]. The issue codes are `structure` for
/// unknown elements and wrong JSON shapes, `required` for missing elements,
/// `value` for invalid primitive values and `code-invalid` for codes outside
/// a required value set. Rule violations such as a disallowed reference
/// target get `invalid`.
pub fn validate_resource(resource: &Value) -> Result<(), OperationOutcome> {
    let defs = definitions();
    if let Some(error) = &defs.load_error {
        return Err(OperationOutcome::error(
            IssueType::Exception,
            format!("the built-in FHIR definitions failed to load: {error}"),
        ));
    }
    let mut validator = Validator {
        defs,
        issues: Vec::new(),
        path: String::new(),
        element_context: defs.context_index("Element"),
    };
    validator.resource(resource, 1, Nesting::Root);
    if validator.issues.is_empty() {
        return Ok(());
    }
    if validator.is_full() {
        validator.issues.push(OutcomeIssue::information(format!(
            "validation stopped after {MAX_ISSUES} issues; fix these and submit again to see any others"
        )));
    }
    Err(OperationOutcome {
        issues: validator.issues,
    })
}

/// The position of a resource inside the document being validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nesting {
    /// The resource submitted.
    Root,
    /// A resource inside another one's `contained`.
    Contained,
    /// A whole resource inside another one, such as `Bundle.entry.resource`.
    Inline,
}

struct Validator {
    defs: &'static Definitions,
    issues: Vec<OutcomeIssue>,
    /// The FHIRPath-style location of the value being checked.
    path: String,
    /// The context of `Element` (`id` and `extension`), which is what a
    /// primitive's `_name` object may contain.
    element_context: Option<usize>,
}

impl Validator {
    fn is_full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    fn report(&mut self, code: IssueType, diagnostics: impl Into<String>) {
        if !self.is_full() {
            let issue = OutcomeIssue::error(code, diagnostics);
            self.issues.push(if self.path.is_empty() {
                issue
            } else {
                issue.at(self.path.clone())
            });
        }
    }

    /// Appends `.name` to the path and returns the length to restore.
    fn enter(&mut self, name: &str) -> usize {
        let mark = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        mark
    }

    /// Appends `[index]` to the path and returns the length to restore.
    fn enter_index(&mut self, index: usize) -> usize {
        use std::fmt::Write;
        let mark = self.path.len();
        let _ = write!(self.path, "[{index}]");
        mark
    }

    fn leave(&mut self, mark: usize) {
        self.path.truncate(mark);
    }

    fn resource(&mut self, value: &Value, depth: usize, nesting: Nesting) {
        let Some(object) = value.as_object() else {
            self.report(
                IssueType::Structure,
                "a resource must be a JSON object with a resourceType",
            );
            return;
        };
        let resource_type = match object.get("resourceType") {
            Some(Value::String(name)) => name.as_str(),
            Some(_) => {
                let mark = self.enter("resourceType");
                self.report(IssueType::Structure, "resourceType must be a JSON string");
                self.leave(mark);
                return;
            }
            None => {
                let mark = self.enter("resourceType");
                self.report(
                    IssueType::Required,
                    "resourceType is missing; every resource must name its type, such as \"Patient\"",
                );
                self.leave(mark);
                return;
            }
        };
        if !self.defs.is_resource_type(resource_type) {
            let mark = self.enter("resourceType");
            self.report(
                IssueType::Value,
                "resourceType is not a FHIR R4 resource type (names are case-sensitive, such as \"Patient\")",
            );
            self.leave(mark);
            return;
        }

        let root_mark = (nesting == Nesting::Root).then(|| self.enter(resource_type));
        if nesting == Nesting::Contained {
            self.contained_rules(object);
        }
        if let Some(context) = self.defs.context_index(resource_type) {
            self.object(object, context, depth, true);
        }
        if let Some(mark) = root_mark {
            self.leave(mark);
        }
    }

    /// Checks the rules for contained resources: dom-2 (no nested contained
    /// resources) and dom-4 (no meta.versionId or meta.lastUpdated).
    fn contained_rules(&mut self, object: &Map<String, Value>) {
        if object.contains_key("contained") {
            let mark = self.enter("contained");
            self.report(
                IssueType::Invalid,
                "a contained resource must not contain other resources; move them into the container's contained list",
            );
            self.leave(mark);
        }
        if let Some(meta) = object.get("meta").and_then(Value::as_object) {
            for field in ["versionId", "lastUpdated"] {
                if meta.contains_key(field) {
                    let mark = self.enter("meta");
                    let inner = self.enter(field);
                    self.report(
                        IssueType::Invalid,
                        format!("a contained resource must not have meta.{field}; remove it"),
                    );
                    self.leave(inner);
                    self.leave(mark);
                }
            }
        }
    }

    /// Checks the properties of one JSON object against a context.
    fn object(
        &mut self,
        object: &Map<String, Value>,
        context_index: usize,
        depth: usize,
        is_resource: bool,
    ) {
        if depth > MAX_DEPTH {
            self.report(
                IssueType::Structure,
                format!("the content is nested more than {MAX_DEPTH} levels deep"),
            );
            return;
        }
        if object.is_empty() {
            self.report(
                IssueType::Structure,
                "empty objects are not allowed in FHIR JSON; omit the element instead",
            );
            return;
        }
        let defs = self.defs;
        let Some(context) = defs.contexts.get(context_index) else {
            return;
        };

        // For each element of the context, the type index of the first JSON
        // name seen for it, to detect a second choice such as valueString
        // next to valueQuantity.
        let mut seen: Vec<Option<usize>> = vec![None; context.elements.len()];
        for (key, value) in object {
            if self.is_full() {
                return;
            }
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, is_extension) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let Some(child) = context.by_name.get(name) else {
                self.unknown_element(key);
                continue;
            };
            let Some(element) = defs.elements.get(child.element) else {
                continue;
            };
            let Some(type_ref) = element.types.get(child.type_index) else {
                continue;
            };
            if is_extension {
                if !matches!(type_ref.kind, TypeKind::Primitive(_)) {
                    self.unknown_element(key);
                    continue;
                }
                if object.contains_key(name) {
                    // Checked together with its value.
                    continue;
                }
            }

            match seen.get_mut(child.slot) {
                Some(Some(first)) if *first != child.type_index => {
                    let mark = self.enter(name);
                    self.report(
                        IssueType::Structure,
                        format!(
                            "only one type of {}[x] is allowed; remove all but one",
                            element.name
                        ),
                    );
                    self.leave(mark);
                    continue;
                }
                Some(slot @ None) => *slot = Some(child.type_index),
                _ => {}
            }

            let (value, extension) = if is_extension {
                (None, Some(value))
            } else if matches!(type_ref.kind, TypeKind::Primitive(_)) {
                (Some(value), object.get(&format!("_{name}")))
            } else {
                (Some(value), None)
            };
            self.property(name, element, type_ref, value, extension, depth);
        }

        for (slot, &index) in context.elements.iter().enumerate() {
            let Some(element) = defs.elements.get(index) else {
                continue;
            };
            if element.min > 0 && seen.get(slot).is_some_and(Option::is_none) {
                let name = if element.is_choice() {
                    format!("{}[x]", element.name)
                } else {
                    element.name.clone()
                };
                let mark = self.enter(&name);
                self.report(
                    IssueType::Required,
                    format!(
                        "{name} is required (minimum cardinality {}) but missing",
                        element.min
                    ),
                );
                self.leave(mark);
            }
        }
    }

    fn unknown_element(&mut self, key: &str) {
        let shown: String = key.chars().take(64).collect();
        let mark = self.enter(&shown);
        self.report(
            IssueType::Structure,
            format!("unknown element '{shown}': it is not defined here in FHIR R4"),
        );
        self.leave(mark);
    }

    /// Checks one property: its value, its primitive extensions (`_name`),
    /// and the array or single shape its cardinality requires.
    fn property(
        &mut self,
        name: &str,
        element: &ElementDef,
        type_ref: &TypeRef,
        value: Option<&Value>,
        extension: Option<&Value>,
        depth: usize,
    ) {
        let mark = self.enter(name);
        if element.is_array() {
            self.array_property(element, type_ref, value, extension, depth);
        } else if matches!(value, Some(Value::Array(_)))
            || matches!(extension, Some(Value::Array(_)))
        {
            self.report(
                IssueType::Structure,
                format!("{name} has at most one value, so it must not be a JSON array"),
            );
        } else {
            match value {
                Some(Value::Null) => self.report(
                    IssueType::Structure,
                    "null is not allowed here; omit the element instead",
                ),
                Some(value) => self.value(value, element, type_ref, depth),
                None => {}
            }
            if let Some(extension) = extension {
                self.primitive_extension(extension, depth);
            }
        }
        self.leave(mark);
    }

    fn array_property(
        &mut self,
        element: &ElementDef,
        type_ref: &TypeRef,
        value: Option<&Value>,
        extension: Option<&Value>,
        depth: usize,
    ) {
        let values = match value {
            Some(Value::Array(items)) => Some(items),
            Some(_) => {
                self.report(
                    IssueType::Structure,
                    format!("{} repeats, so it must be a JSON array", element.name),
                );
                return;
            }
            None => None,
        };
        let extensions = match extension {
            Some(Value::Array(items)) => Some(items),
            Some(_) => {
                self.report(
                    IssueType::Structure,
                    format!(
                        "_{} must be a JSON array aligned with {}",
                        element.name, element.name
                    ),
                );
                return;
            }
            None => None,
        };
        if values.is_some_and(Vec::is_empty) || extensions.is_some_and(Vec::is_empty) {
            self.report(
                IssueType::Structure,
                "empty arrays are not allowed in FHIR JSON; omit the element instead",
            );
            return;
        }
        if let (Some(values), Some(extensions)) = (values, extensions)
            && values.len() != extensions.len()
        {
            self.report(
                IssueType::Structure,
                format!(
                    "_{} must have one entry (or null) for each entry of {}",
                    element.name, element.name
                ),
            );
            return;
        }
        let count = values
            .map_or(0, Vec::len)
            .max(extensions.map_or(0, Vec::len));
        if count > MAX_ARRAY_ITEMS {
            self.report(
                IssueType::TooCostly,
                format!(
                    "{} has {count} entries, more than the limit of {MAX_ARRAY_ITEMS} per array",
                    element.name
                ),
            );
            return;
        }
        if let Some(max) = element.max
            && count > max as usize
        {
            self.report(
                IssueType::Structure,
                format!("{} allows at most {max} entries", element.name),
            );
        }

        for index in 0..count {
            if self.is_full() {
                return;
            }
            let item = values.and_then(|v| v.get(index)).filter(|v| !v.is_null());
            let item_extension = extensions
                .and_then(|v| v.get(index))
                .filter(|v| !v.is_null());
            let mark = self.enter_index(index);
            if item.is_none() && item_extension.is_none() {
                self.report(
                    IssueType::Structure,
                    "null is allowed in an array only where the paired value or extension array has an entry",
                );
            }
            if let Some(item) = item {
                if item.is_array() {
                    self.report(IssueType::Structure, "arrays must not be nested");
                } else {
                    self.value(item, element, type_ref, depth);
                }
            }
            if let Some(item_extension) = item_extension {
                self.primitive_extension(item_extension, depth);
            }
            self.leave(mark);
        }
    }

    /// Checks the `_name` object of a primitive: only `id` and `extension`.
    fn primitive_extension(&mut self, value: &Value, depth: usize) {
        let Some(object) = value.as_object() else {
            self.report(
                IssueType::Structure,
                "the extension part of a primitive (_name) must be a JSON object with id and/or extension",
            );
            return;
        };
        if let Some(context) = self.element_context {
            self.object(object, context, depth + 1, false);
        }
    }

    fn value(&mut self, value: &Value, element: &ElementDef, type_ref: &TypeRef, depth: usize) {
        match type_ref.kind {
            TypeKind::Primitive(index) => {
                if let Some(primitive) = self.defs.primitives.get(index) {
                    self.primitive(value, primitive, element);
                }
            }
            TypeKind::Complex(context) => {
                let Some(object) = value.as_object() else {
                    self.report(
                        IssueType::Structure,
                        format!("{} must be a JSON object ({})", element.name, type_ref.code),
                    );
                    return;
                };
                self.object(object, context, depth + 1, false);
                self.datatype_rules(object, element, type_ref);
            }
            TypeKind::Resource => {
                let nesting = if element.name == "contained" {
                    Nesting::Contained
                } else {
                    Nesting::Inline
                };
                self.resource(value, depth + 1, nesting);
            }
        }
    }

    /// Checks the datatype rules that need more than the element list:
    /// reference targets, required bindings on codings, and ext-1.
    fn datatype_rules(
        &mut self,
        object: &Map<String, Value>,
        element: &ElementDef,
        type_ref: &TypeRef,
    ) {
        match type_ref.code.as_str() {
            "Reference" => self.reference_target(object, type_ref),
            "Coding" => {
                if let Some(codes) = element.required_codes() {
                    self.coding_binding(object, codes, element);
                }
            }
            "CodeableConcept" => {
                let Some(codes) = element.required_codes() else {
                    return;
                };
                let Some(codings) = object.get("coding").and_then(Value::as_array) else {
                    return;
                };
                let mark = self.enter("coding");
                for (index, coding) in codings.iter().enumerate() {
                    if let Some(coding) = coding.as_object() {
                        let item = self.enter_index(index);
                        self.coding_binding(coding, codes, element);
                        self.leave(item);
                    }
                }
                self.leave(mark);
            }
            "Extension" => {
                let has_value = object.keys().any(|k| k.starts_with("value"));
                if has_value && object.contains_key("extension") {
                    self.report(
                        IssueType::Invalid,
                        "an extension must have either nested extensions or a value[x], not both (ext-1)",
                    );
                }
            }
            _ => {}
        }
    }

    fn coding_binding(
        &mut self,
        coding: &Map<String, Value>,
        codes: &ValueSetCodes,
        element: &ElementDef,
    ) {
        let (Some(Value::String(system)), Some(Value::String(code))) =
            (coding.get("system"), coding.get("code"))
        else {
            return;
        };
        if codes.contains(system, code) == Some(false) {
            let mark = self.enter("code");
            self.report(
                IssueType::CodeInvalid,
                binding_message(element, codes, "the code is not in"),
            );
            self.leave(mark);
        }
    }

    /// Checks the type of a literal relative reference (`Patient/123`,
    /// `Patient/123/_history/2`) against the allowed target types. Absolute,
    /// contained (`#id`), `urn:` and conditional references are not checked.
    fn reference_target(&mut self, object: &Map<String, Value>, type_ref: &TypeRef) {
        let Some(Value::String(reference)) = object.get("reference") else {
            return;
        };
        let Some(target) = relative_reference_type(reference) else {
            return;
        };
        let mark = self.enter("reference");
        if !self.defs.is_resource_type(target) {
            self.report(
                IssueType::Value,
                format!(
                    "the reference names resource type '{target}', which is not a FHIR R4 resource type"
                ),
            );
        } else if !type_ref.allows_target(target) {
            self.report(
                IssueType::Invalid,
                format!(
                    "a reference to {target} is not allowed here; allowed targets: {}",
                    type_ref.target_profiles.join(", ")
                ),
            );
        }
        self.leave(mark);
    }

    fn primitive(&mut self, value: &Value, primitive: &Primitive, element: &ElementDef) {
        let number_text;
        let text: &str = match (primitive.json, value) {
            (JsonKind::Boolean, Value::Bool(_)) => return,
            (JsonKind::Number, Value::Number(number)) => {
                number_text = number.to_string();
                &number_text
            }
            (JsonKind::String, Value::String(text)) => text,
            (kind, _) => {
                let expected = match kind {
                    JsonKind::Boolean => "a JSON boolean (true or false)",
                    JsonKind::Number => "a JSON number",
                    JsonKind::String => "a JSON string",
                };
                self.report(
                    IssueType::Structure,
                    format!("a {} value must be {expected}", primitive.name),
                );
                return;
            }
        };

        if text.is_empty() {
            self.report(
                IssueType::Value,
                "empty strings are not allowed in FHIR JSON; omit the element instead",
            );
            return;
        }
        // R4 `string` (`[ \r\n\t\S]+`) allows tab, carriage return and line
        // feed as the only characters below U+0020. The byte-mode regexes let
        // other control characters through as `\S`, so they are checked here.
        if let Some(control) = text
            .chars()
            .find(|&c| c < ' ' && !matches!(c, '\t' | '\r' | '\n'))
        {
            self.report(
                IssueType::Value,
                format!(
                    "the {} value contains the control character U+{:04X}; FHIR strings allow only tab, carriage return and line feed below U+0020, so remove it",
                    primitive.name, u32::from(control)
                ),
            );
            return;
        }
        if text.len() > MAX_STRING_BYTES && primitive.name != "base64Binary" {
            self.report(
                IssueType::Value,
                format!(
                    "the {} value is longer than the limit of {MAX_STRING_BYTES} bytes",
                    primitive.name
                ),
            );
            return;
        }
        if let Some(regex) = &primitive.regex
            && !regex.is_match(text.as_bytes())
        {
            self.report(IssueType::Value, invalid_primitive_message(&primitive.name));
            return;
        }
        if let Err(message) = extra_lexical_rules(&primitive.name, text) {
            self.report(IssueType::Value, message);
            return;
        }
        if primitive.name == "xhtml" {
            if let Err(error) = narrative::check_narrative(text) {
                let code = if error == narrative::NarrativeError::NotXhtmlDiv {
                    IssueType::Value
                } else {
                    IssueType::Invalid
                };
                self.report(code, error.message());
            }
            return;
        }
        if primitive.name == "code"
            && let Some(codes) = element.required_codes()
            && !codes.contains_code(text)
        {
            self.report(
                IssueType::CodeInvalid,
                binding_message(element, codes, "the code is not in"),
            );
        }
    }
}

/// Returns the type of a literal relative reference `Type/id` or
/// `Type/id/_history/vid`, or `None` for other reference forms.
fn relative_reference_type(reference: &str) -> Option<&str> {
    let mut parts = reference.split('/');
    let target = parts.next()?;
    let id = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => {}
        (Some("_history"), Some(version), None) if is_id(version) => {}
        _ => return None,
    }
    let starts_upper = target
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase());
    if starts_upper && target.chars().all(|c| c.is_ascii_alphanumeric()) && is_id(id) {
        Some(target)
    } else {
        None
    }
}

fn is_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn binding_message(element: &ElementDef, codes: &ValueSetCodes, lead: &str) -> String {
    let url = element.binding.as_deref().unwrap_or("");
    let mut message = format!("{lead} the required value set {url}");
    if codes.len() <= 20 {
        message.push_str("; allowed codes: ");
        message.push_str(&codes.sample(20).join(", "));
    }
    message
}

fn invalid_primitive_message(name: &str) -> String {
    let hint = match name {
        "date" => " (expected YYYY, YYYY-MM or YYYY-MM-DD)",
        "dateTime" => {
            " (expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone such as Z or +01:00)"
        }
        "instant" => " (expected YYYY-MM-DDThh:mm:ss[.sss] with a time zone such as Z or +01:00)",
        "time" => " (expected hh:mm:ss)",
        "id" => " (expected 1 to 64 characters from A-Z, a-z, 0-9, '-' and '.')",
        "code" => " (expected no leading, trailing or repeated whitespace)",
        "integer" => " (expected a whole number without fraction or exponent)",
        "positiveInt" => " (expected a whole number of 1 or more)",
        "unsignedInt" => " (expected a whole number of 0 or more)",
        "decimal" => " (expected a JSON number such as 1.50)",
        "base64Binary" => " (expected base64 with padding)",
        "uri" | "url" | "canonical" => " (expected no whitespace)",
        "oid" => " (expected urn:oid:1.2.3)",
        "uuid" => " (expected urn:uuid: and a lowercase UUID)",
        "boolean" => " (expected true or false)",
        _ => "",
    };
    format!("the value is not a valid {name}{hint}")
}

/// Rules the published regexes do not carry: integer ranges (32-bit signed)
/// and real calendar dates ("Dates SHALL be valid dates").
fn extra_lexical_rules(name: &str, text: &str) -> Result<(), String> {
    match name {
        "integer" | "positiveInt" | "unsignedInt" => {
            let in_range = text.parse::<i64>().is_ok_and(|n| i32::try_from(n).is_ok());
            if in_range {
                Ok(())
            } else {
                Err(format!(
                    "the {name} value is outside the 32-bit range allowed for FHIR integers"
                ))
            }
        }
        "date" | "dateTime" | "instant" => {
            if is_real_date(text) {
                Ok(())
            } else {
                Err(format!(
                    "the {name} value names a day that does not exist in that month"
                ))
            }
        }
        _ => Ok(()),
    }
}

/// Checks the day of a `YYYY-MM-DD...` prefix against the month's length.
/// Shorter forms (year, year-month) pass; the regex has checked the digits.
fn is_real_date(text: &str) -> bool {
    let (Some(year), Some(month), Some(day)) = (
        text.get(0..4).and_then(|s| s.parse::<u32>().ok()),
        text.get(5..7).and_then(|s| s.parse::<u32>().ok()),
        text.get(8..10).and_then(|s| s.parse::<u32>().ok()),
    ) else {
        return true;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= days
}

#[cfg(test)]
mod tests;

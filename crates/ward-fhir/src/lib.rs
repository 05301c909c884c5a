//! FHIR R4 for Ward: the official R4 definitions (structure, search parameters,
//! required value sets) compiled into the binary, resource validation, search
//! parameter extraction and query parsing, and OperationOutcome building.
//!
//! Resources are handled as validated `serde_json::Value` trees rather than
//! hand-written structs: every rule comes from the generated definitions in
//! `definitions/`, which `tools/gen-fhir-definitions.py` builds from the
//! `hl7.fhir.r4.examples` 4.0.1 package.

pub mod compartment;
pub mod definitions;
pub mod fhirpath;
pub mod json;
pub mod outcome;
pub mod search;
pub mod summary;
pub mod validate;

pub use json::parse_json_strict;
pub use outcome::{IssueSeverity, IssueType, OperationOutcome, OutcomeIssue};

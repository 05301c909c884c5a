//! The FHIR R4 REST API: routes, the interaction engine, search and
//! history, batch and transaction Bundles, and the CapabilityStatement.

pub mod bundle;
pub mod capability;
pub mod engine;
pub mod operations;
pub mod response;
pub mod routes;
pub mod search;

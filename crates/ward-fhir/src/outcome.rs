//! OperationOutcome: the FHIR error and warning report, and the HTTP status
//! each failure maps to.

use serde_json::{Value, json};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    /// `fatal`
    Fatal,
    /// `error`
    Error,
    /// `warning`
    Warning,
    /// `information`
    Information,
}

impl IssueSeverity {
    fn code(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code` (the IssueType value set, the codes Ward uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    /// `invalid`: content invalid against the specification or a profile.
    Invalid,
    /// `structure`: a structural issue in the content, such as wrong JSON.
    Structure,
    /// `required`: a required element is missing.
    Required,
    /// `value`: an element or header value is invalid.
    Value,
    /// `invariant`: a content validation rule failed.
    Invariant,
    /// `security`: an authentication or authorization failure.
    Security,
    /// `login`: the client needs to authenticate.
    Login,
    /// `forbidden`: not allowed.
    Forbidden,
    /// `processing`: processing failed.
    Processing,
    /// `not-supported`: the operation or content is not supported.
    NotSupported,
    /// `duplicate`: an attempt to create a duplicate.
    Duplicate,
    /// `multiple-matches`: a conditional operation matched more than one.
    MultipleMatches,
    /// `not-found`: the resource does not exist.
    NotFound,
    /// `deleted`: the resource was deleted.
    Deleted,
    /// `too-long`: the content is too large.
    TooLong,
    /// `code-invalid`: a code is not in its value set.
    CodeInvalid,
    /// `conflict`: an edit conflict (version mismatch).
    Conflict,
    /// `too-costly`: the request would take too many resources.
    TooCostly,
    /// `exception`: an unexpected internal error.
    Exception,
    /// `informational`: no problem, just information.
    Informational,
    /// `timeout`: an internal timeout occurred.
    Timeout,
}

impl IssueType {
    fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::Invariant => "invariant",
            Self::Security => "security",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
            Self::Processing => "processing",
            Self::NotSupported => "not-supported",
            Self::Duplicate => "duplicate",
            Self::MultipleMatches => "multiple-matches",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::TooLong => "too-long",
            Self::CodeInvalid => "code-invalid",
            Self::Conflict => "conflict",
            Self::TooCostly => "too-costly",
            Self::Exception => "exception",
            Self::Informational => "informational",
            Self::Timeout => "timeout",
        }
    }
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeIssue {
    /// How bad the issue is.
    pub severity: IssueSeverity,
    /// What kind of issue it is.
    pub code: IssueType,
    /// A human-readable explanation that names the value and the fix.
    pub diagnostics: String,
    /// FHIRPath-style locations of the element at fault, such as
    /// `Patient.birthDate` or `Bundle.entry[2].resource.status`.
    pub expression: Vec<String>,
}

impl OutcomeIssue {
    /// Creates an error issue.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    /// Creates a warning issue.
    pub fn warning(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Warning,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    /// Creates an informational issue.
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Information,
            code: IssueType::Informational,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    /// Adds the location of the element at fault.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    /// Renders the issue as FHIR JSON.
    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.code(),
            "code": self.code.code(),
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            issue["expression"] = json!(self.expression);
        }
        issue
    }
}

/// An OperationOutcome: a list of issues, returned with failures and with
/// some successes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperationOutcome {
    /// The issues, most important first.
    pub issues: Vec<OutcomeIssue>,
}

impl OperationOutcome {
    /// Creates an outcome with one issue.
    pub fn single(issue: OutcomeIssue) -> Self {
        Self {
            issues: vec![issue],
        }
    }

    /// Creates an outcome with one error issue.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::single(OutcomeIssue::error(code, diagnostics))
    }

    /// True when any issue is an error or fatal.
    pub fn has_errors(&self) -> bool {
        self.issues
            .iter()
            .any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal))
    }

    /// Prefixes every issue's expression with `prefix`, such as
    /// `Bundle.entry[3].resource`, where the expression starts with the
    /// resource type `resource_type`.
    pub fn nest(mut self, resource_type: &str, prefix: &str) -> Self {
        for issue in &mut self.issues {
            for expr in &mut issue.expression {
                if let Some(rest) = expr.strip_prefix(resource_type) {
                    *expr = format!("{prefix}{rest}");
                } else {
                    *expr = format!("{prefix}.{expr}");
                }
            }
        }
        self
    }

    /// Renders the outcome as a FHIR OperationOutcome resource.
    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = if self.issues.is_empty() {
            vec![OutcomeIssue::information("all ok").to_json()]
        } else {
            self.issues.iter().map(OutcomeIssue::to_json).collect()
        };
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

impl std::fmt::Display for OperationOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for issue in &self.issues {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            f.write_str(&issue.diagnostics)?;
            if let Some(expr) = issue.expression.first() {
                write!(f, " (at {expr})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for OperationOutcome {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_renders_expression() {
        let outcome = OperationOutcome::single(
            OutcomeIssue::error(IssueType::Required, "missing status").at("Observation.status"),
        );
        let json = outcome.to_json();
        assert_eq!(json["resourceType"], "OperationOutcome");
        assert_eq!(json["issue"][0]["code"], "required");
        assert_eq!(json["issue"][0]["expression"][0], "Observation.status");
    }

    #[test]
    fn nest_rewrites_paths() {
        let outcome = OperationOutcome::single(
            OutcomeIssue::error(IssueType::Value, "bad").at("Patient.birthDate"),
        )
        .nest("Patient", "Bundle.entry[2].resource");
        assert_eq!(
            outcome.issues[0].expression[0],
            "Bundle.entry[2].resource.birthDate"
        );
    }
}

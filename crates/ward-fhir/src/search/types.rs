//! The types shared by index extraction, query parsing and the store that
//! executes queries.

/// One value a resource yields for one search parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter code, such as `name` or `subject` (also `_id`,
    /// `_lastUpdated`, `_tag`, `_profile`, `_security`, `_source`).
    pub param: String,
    /// The extracted value.
    pub value: IndexValue,
}

/// A search value extracted from a resource. Strings stay in memory only: the
/// store keeps keyed hashes of them, never the text.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// A string parameter.
    String {
        /// Lowercased, accents removed, whitespace collapsed (for default
        /// starts-with and `:contains` search).
        normalized: String,
        /// The value as written (for `:exact`).
        exact: String,
    },
    /// A token parameter (code, Coding, CodeableConcept, Identifier,
    /// ContactPoint, boolean, id).
    Token {
        /// The code system or identifier system, if any.
        system: Option<String>,
        /// The code or value.
        code: String,
        /// Normalized display or text, for `:text` (None when absent).
        text: Option<String>,
    },
    /// A reference parameter.
    Reference {
        /// The target resource type, when the reference is `Type/id` or a
        /// contained/absolute URL that names it.
        target_type: Option<String>,
        /// The target id (without version).
        id: Option<String>,
        /// The reference as written when it is an absolute URL or canonical.
        url: Option<String>,
    },
    /// A date, dateTime, instant or Period, as a closed-open range in
    /// microseconds since the Unix epoch, UTC. Open ends use `i64::MIN` or
    /// `i64::MAX`.
    Date {
        /// The first microsecond the value covers.
        low: i64,
        /// The first microsecond after the value.
        high: i64,
    },
    /// A number, with the range its written precision implies
    /// (`100` covers `[99.5, 100.5)`).
    Number {
        /// The value as written.
        value: f64,
        /// The lower bound implied by precision.
        low: f64,
        /// The upper bound implied by precision.
        high: f64,
    },
    /// A Quantity (also Money, Duration, Age, SimpleQuantity).
    Quantity {
        /// The numeric value as written.
        value: f64,
        /// The lower bound implied by precision.
        low: f64,
        /// The upper bound implied by precision.
        high: f64,
        /// The unit system (usually `http://unitsofmeasure.org`).
        system: Option<String>,
        /// The coded unit.
        code: Option<String>,
        /// The human-readable unit.
        unit: Option<String>,
    },
    /// A uri, url or canonical parameter.
    Uri {
        /// The value as written.
        value: String,
    },
    /// A composite parameter: component values that must match together.
    Composite {
        /// Each component's parameter code (as in the SearchParameter
        /// definition) and its value.
        components: Vec<(String, IndexValue)>,
    },
}

/// The search parameter types of FHIR R4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `number`
    Number,
    /// `date`
    Date,
    /// `string`
    String,
    /// `token`
    Token,
    /// `reference`
    Reference,
    /// `composite`
    Composite,
    /// `quantity`
    Quantity,
    /// `uri`
    Uri,
    /// `special`
    Special,
}

/// The comparison prefixes for number, date and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefix {
    /// `eq` (the default)
    #[default]
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `lt`
    Lt,
    /// `ge`
    Ge,
    /// `le`
    Le,
    /// `sa`
    StartsAfter,
    /// `eb`
    EndsBefore,
    /// `ap`
    Approx,
}

/// Modifiers supported on search parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    /// `:exact` on strings.
    Exact,
    /// `:contains` on strings and uris.
    Contains,
    /// `:missing=true|false`.
    Missing,
    /// `:not` on tokens.
    Not,
    /// `:text` on tokens.
    Text,
    /// `:below` on uris.
    Below,
    /// `:above` on uris.
    Above,
    /// `:identifier` on references (matches `Reference.identifier`).
    Identifier,
    /// `:[type]` on references, such as `subject:Patient`.
    Type(String),
}

/// One search value, already parsed according to its parameter's type.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// A string search value, normalized like [`IndexValue::String`] plus
    /// the raw form for `:exact`.
    String {
        /// Lowercased, accents removed.
        normalized: String,
        /// As sent.
        exact: String,
    },
    /// `[system]|[code]`, `|[code]`, `[system]|` or `[code]`.
    Token {
        /// `None`: any system; `Some("")`: no system; `Some(s)`: that system.
        system: Option<String>,
        /// `None` for `system|` (any code in that system).
        code: Option<String>,
    },
    /// A reference: `Type/id`, `id`, or an absolute URL.
    Reference {
        /// The type, when given in the value or by a type modifier.
        target_type: Option<String>,
        /// The id, when the value is `Type/id` or a bare id.
        id: Option<String>,
        /// The absolute URL, when given.
        url: Option<String>,
    },
    /// A date with its prefix, as a closed-open range (see
    /// [`IndexValue::Date`]).
    Date {
        /// The comparison.
        prefix: Prefix,
        /// The first microsecond of the value.
        low: i64,
        /// The first microsecond after the value.
        high: i64,
    },
    /// A number with its prefix and its implied precision range.
    Number {
        /// The comparison.
        prefix: Prefix,
        /// The value as sent.
        value: f64,
        /// The lower bound implied by precision.
        low: f64,
        /// The upper bound implied by precision.
        high: f64,
    },
    /// `[prefix][number]|[system]|[code]`.
    Quantity {
        /// The comparison.
        prefix: Prefix,
        /// The value as sent.
        value: f64,
        /// The lower bound implied by precision.
        low: f64,
        /// The upper bound implied by precision.
        high: f64,
        /// The unit system, if given.
        system: Option<String>,
        /// The unit code (matched against `code` or `unit`), if given.
        code: Option<String>,
    },
    /// A uri.
    Uri(String),
    /// `true` or `false` for `:missing`.
    Missing(bool),
    /// A composite value: one value per component, in definition order.
    Composite(Vec<(String, SearchValue)>),
}

/// One search parameter of a query: all its values are ORed, and the
/// criteria of a query are ANDed.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    /// The search parameter code.
    pub param: String,
    /// The parameter's type.
    pub param_type: ParamType,
    /// The modifier, if any.
    pub modifier: Option<Modifier>,
    /// For a chained parameter (`subject:Patient.name=x`): the criterion on
    /// the referenced resource, whose type is `chain_type`.
    pub chain: Option<Box<Chain>>,
    /// The values, any of which may match.
    pub values: Vec<SearchValue>,
}

/// The far side of a chained reference parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// The resource type the reference must point to.
    pub target_type: String,
    /// The criterion on that resource.
    pub criterion: Criterion,
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The search parameter code (`_id` and `_lastUpdated` included).
    pub param: String,
    /// The parameter's type.
    pub param_type: ParamType,
    /// True for `-param`.
    pub descending: bool,
}

/// An `_include` or `_revinclude` directive: `Source:param[:Target]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The resource type that holds the reference.
    pub source_type: String,
    /// The reference search parameter (`*` for all).
    pub param: String,
    /// The target type, if restricted.
    pub target_type: Option<String>,
    /// True for `:iterate` (or the R4 alias `:recurse`).
    pub iterate: bool,
}

/// `_summary` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryMode {
    /// `true`: summary elements only.
    True,
    /// `text`: text, id, meta and mandatory elements.
    Text,
    /// `data`: everything but the narrative.
    Data,
    /// `count`: the total only.
    Count,
    /// `false`: everything.
    False,
}

/// `_total` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotalMode {
    /// `none`
    None,
    /// `estimate`
    Estimate,
    /// `accurate` (Ward's default: totals are always exact)
    #[default]
    Accurate,
}

/// Whether unknown or unsupported parameters are errors
/// (`Prefer: handling=strict`) or ignored (`lenient`, the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handling {
    /// Ignore what cannot be understood, and report it in the bundle.
    #[default]
    Lenient,
    /// Reject with 400.
    Strict,
}

/// A parsed search request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    /// The resource type searched; `None` for a system-level search.
    pub resource_type: Option<String>,
    /// `_type` of a system-level search: the resource types to search
    /// (empty: all types).
    pub types: Vec<String>,
    /// The criteria, all of which must match.
    pub criteria: Vec<Criterion>,
    /// The sort keys, most significant first.
    pub sort: Vec<SortKey>,
    /// `_count`: the page size requested.
    pub count: Option<usize>,
    /// `_include` directives.
    pub includes: Vec<Include>,
    /// `_revinclude` directives.
    pub revincludes: Vec<Include>,
    /// `_summary`.
    pub summary: Option<SummaryMode>,
    /// `_elements`.
    pub elements: Option<Vec<String>>,
    /// `_total`.
    pub total: TotalMode,
    /// Parameters that were ignored under lenient handling, for the
    /// bundle's self link and an informational OperationOutcome.
    pub ignored: Vec<String>,
}

//! Search request parsing: turns the (already percent-decoded) query
//! parameters of a search into a [`SearchQuery`].
//!
//! Value syntax follows the R4 search page: a comma separates values that
//! are ORed, a repeated parameter is ANDed, and `\,`, `\|`, `\$` and `\\`
//! escape the separators.

use crate::outcome::{IssueType, OperationOutcome};

use super::params::{RESOURCE, SearchParamDef, search_param, search_params};
use super::primitives::{normalize_string, parse_date_range, parse_decimal, parse_reference};
use super::{
    Chain, Criterion, Handling, Include, Modifier, ParamType, Prefix, SearchQuery, SearchValue,
    SortKey, SummaryMode, TotalMode,
};

/// Values and names longer than this are cut in error messages.
const MAX_SHOWN: usize = 100;

/// The maximum number of search criteria (parameters other than `_count`,
/// `_sort`, `_include` and the other result parameters) in one search.
/// Each criterion becomes a nested condition of the SQL query, so more are
/// rejected with `too-costly` instead of running.
pub const MAX_CRITERIA: usize = 100;

/// The maximum number of comma-separated values in one search parameter.
pub const MAX_VALUES_PER_CRITERION: usize = 1_000;

/// The maximum number of values across all criteria of one search. Each
/// value binds up to three SQL parameters, and SQLite accepts at most 32,766
/// per statement.
pub const MAX_QUERY_VALUES: usize = 2_000;

/// Parses a search request.
///
/// `resource_type` is the type searched (`None` for a system-level search,
/// where `_type` selects the types). `params` are the decoded query
/// parameters in request order.
///
/// # Errors
///
/// Returns an OperationOutcome (to send with status 400) when a value is
/// invalid (a bad date, number, `_count`, `_summary`, `_total`, include or
/// composite), when a chain is ambiguous, when the search exceeds
/// [`MAX_CRITERIA`], [`MAX_VALUES_PER_CRITERION`] or [`MAX_QUERY_VALUES`]
/// (`too-costly`), and, under [`Handling::Strict`], when a parameter or
/// modifier is unknown or unsupported. Under
/// [`Handling::Lenient`] those are listed in [`SearchQuery::ignored`].
pub fn parse_search(
    resource_type: Option<&str>,
    params: &[(String, String)],
    handling: Handling,
) -> Result<SearchQuery, OperationOutcome> {
    if let Some(name) = resource_type
        && super::static_resource_type(name).is_none()
    {
        return Err(invalid(format!("unknown resource type '{}'", shown(name))));
    }
    let mut parser = QueryParser {
        handling,
        query: SearchQuery {
            resource_type: resource_type.map(str::to_owned),
            ..SearchQuery::default()
        },
    };
    if resource_type.is_none() {
        for (name, value) in params {
            if name == "_type" {
                parser.parse_types(value)?;
            }
        }
    }
    for (name, value) in params {
        parser.parse_param(name, value)?;
    }
    Ok(parser.query)
}

struct QueryParser {
    handling: Handling,
    query: SearchQuery,
}

fn too_costly(diagnostics: String) -> OperationOutcome {
    OperationOutcome::error(IssueType::TooCostly, diagnostics)
}

/// The number of values of a criterion, including those of a chained one.
fn criterion_value_count(criterion: &Criterion) -> usize {
    let chained = criterion
        .chain
        .as_ref()
        .map_or(0, |chain| criterion_value_count(&chain.criterion));
    criterion.values.len() + chained
}

fn invalid(diagnostics: String) -> OperationOutcome {
    OperationOutcome::error(IssueType::Invalid, diagnostics)
}

/// Cuts `text` to [`MAX_SHOWN`] characters for an error message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN) {
        Some((index, _)) => format!("{}...", text.get(..index).unwrap_or_default()),
        None => text.to_owned(),
    }
}

fn invalid_value(name: &str, value: &str, expected: &str) -> OperationOutcome {
    invalid(format!(
        "invalid value '{}' for search parameter '{}': expected {expected}",
        shown(value),
        shown(name)
    ))
}

impl QueryParser {
    /// Records an unknown or unsupported parameter: an error under strict
    /// handling, an ignored parameter otherwise.
    fn reject_or_ignore(
        &mut self,
        name: &str,
        diagnostics: String,
    ) -> Result<(), OperationOutcome> {
        match self.handling {
            Handling::Strict => Err(OperationOutcome::error(
                IssueType::NotSupported,
                diagnostics,
            )),
            Handling::Lenient => {
                if !self.query.ignored.iter().any(|n| n == name) {
                    self.query.ignored.push(name.to_owned());
                }
                Ok(())
            }
        }
    }

    fn scope(&self) -> String {
        match (&self.query.resource_type, self.query.types.as_slice()) {
            (Some(name), _) => name.clone(),
            (None, []) => "a system-level search".to_owned(),
            (None, types) => types.join(", "),
        }
    }

    fn parse_types(&mut self, value: &str) -> Result<(), OperationOutcome> {
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if super::static_resource_type(name).is_none() {
                return Err(invalid_value("_type", name, "a resource type"));
            }
            if !self.query.types.iter().any(|t| t == name) {
                self.query.types.push(name.to_owned());
            }
        }
        Ok(())
    }

    fn parse_param(&mut self, name: &str, value: &str) -> Result<(), OperationOutcome> {
        match name {
            "_format" | "_pretty" => Ok(()),
            "_type" if self.query.resource_type.is_none() => Ok(()),
            "_count" => {
                let count = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| invalid_value(name, value, "a non-negative integer"))?;
                self.query.count = Some(count);
                Ok(())
            }
            "_sort" => self.parse_sort(value),
            "_summary" => {
                self.query.summary = Some(match value {
                    "true" => SummaryMode::True,
                    "text" => SummaryMode::Text,
                    "data" => SummaryMode::Data,
                    "count" => SummaryMode::Count,
                    "false" => SummaryMode::False,
                    _ => {
                        return Err(invalid_value(
                            name,
                            value,
                            "true, text, data, count or false",
                        ));
                    }
                });
                Ok(())
            }
            "_total" => {
                self.query.total = match value {
                    "none" => TotalMode::None,
                    "estimate" => TotalMode::Estimate,
                    "accurate" => TotalMode::Accurate,
                    _ => return Err(invalid_value(name, value, "none, estimate or accurate")),
                };
                Ok(())
            }
            "_elements" => {
                let elements: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect();
                self.query.elements = Some(elements);
                Ok(())
            }
            _ if name.starts_with("_include") || name.starts_with("_revinclude") => {
                self.parse_include(name, value)
            }
            _ => self.parse_criterion_param(name, value),
        }
    }

    // -- _sort ---------------------------------------------------------------

    fn parse_sort(&mut self, value: &str) -> Result<(), OperationOutcome> {
        for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let (code, descending) = match key.strip_prefix('-') {
                Some(code) => (code, true),
                None => (key, false),
            };
            let sortable = self
                .lookup(code)
                .map(|def| def.param_type)
                .filter(|t| !matches!(t, ParamType::Composite | ParamType::Special));
            match sortable {
                Some(param_type) => self.query.sort.push(SortKey {
                    param: code.to_owned(),
                    param_type,
                    descending,
                }),
                None => {
                    let diagnostics = format!(
                        "sorting by '{}' is not supported: it is not a search parameter of {}; \
                         supported: _id, _lastUpdated and the non-composite parameters of the type",
                        shown(code),
                        self.scope()
                    );
                    self.reject_or_ignore("_sort", diagnostics)?;
                }
            }
        }
        Ok(())
    }

    // -- _include / _revinclude ---------------------------------------------

    fn parse_include(&mut self, name: &str, value: &str) -> Result<(), OperationOutcome> {
        let (base, modifier) = match name.split_once(':') {
            Some((base, modifier)) => (base, Some(modifier)),
            None => (name, None),
        };
        let reverse = match base {
            "_include" => false,
            "_revinclude" => true,
            _ => return self.reject_or_ignore(name, unknown_param_message(name, &self.scope())),
        };
        let iterate = match modifier {
            None => false,
            Some("iterate" | "recurse") => true,
            Some(other) => {
                let diagnostics = format!(
                    "unsupported modifier ':{}' on {base}; supported: :iterate, :recurse",
                    shown(other)
                );
                return self.reject_or_ignore(name, diagnostics);
            }
        };
        let expected = "Type:param[:TargetType] or *";
        let include = if value == "*" {
            Include {
                source_type: "*".to_owned(),
                param: "*".to_owned(),
                target_type: None,
                iterate,
            }
        } else {
            let parts: Vec<&str> = value.split(':').collect();
            let (source, param, target) = match parts.as_slice() {
                [source, param] => (*source, *param, None),
                [source, param, target] => (*source, *param, Some(*target)),
                _ => return Err(invalid_value(base, value, expected)),
            };
            if super::static_resource_type(source).is_none() {
                return Err(invalid_value(base, value, expected));
            }
            if let Some(target) = target
                && super::static_resource_type(target).is_none()
            {
                return Err(invalid_value(base, value, expected));
            }
            if param != "*" {
                let def =
                    search_param(source, param).filter(|d| d.param_type == ParamType::Reference);
                let Some(def) = def else {
                    let diagnostics = format!(
                        "{base}: '{}' is not a reference search parameter of {source}",
                        shown(param)
                    );
                    return self.reject_or_ignore(name, diagnostics);
                };
                if let Some(target) = target
                    && !def.targets.is_empty()
                    && !def.targets.iter().any(|t| t == target)
                {
                    return Err(invalid_value(
                        base,
                        value,
                        &format!(
                            "a target type of {source}.{param}: {}",
                            def.targets.join(", ")
                        ),
                    ));
                }
            }
            Include {
                source_type: source.to_owned(),
                param: param.to_owned(),
                target_type: target.map(str::to_owned),
                iterate,
            }
        };
        if reverse {
            self.query.revincludes.push(include);
        } else {
            self.query.includes.push(include);
        }
        Ok(())
    }

    // -- criteria ------------------------------------------------------------

    /// Finds a parameter in the searched type, or for a system-level search,
    /// in every `_type` (with one parameter type) or among the shared ones.
    fn lookup(&self, code: &str) -> Option<&'static SearchParamDef> {
        if let Some(resource_type) = &self.query.resource_type {
            return search_param(resource_type, code);
        }
        let types = &self.query.types;
        let Some(first) = types.first() else {
            return search_param(RESOURCE, code);
        };
        let def = search_param(first, code)?;
        types
            .iter()
            .all(|t| search_param(t, code).is_some_and(|d| d.param_type == def.param_type))
            .then_some(def)
    }

    fn parse_criterion_param(&mut self, name: &str, value: &str) -> Result<(), OperationOutcome> {
        if value.is_empty() {
            // The R4 search page: parameters with empty values are ignored.
            return Ok(());
        }
        let (head, chained) = match name.split_once('.') {
            Some((head, chained)) => (head, Some(chained)),
            None => (name, None),
        };
        let (code, modifier_text) = match head.split_once(':') {
            Some((code, modifier)) => (code, Some(modifier)),
            None => (head, None),
        };
        let Some(def) = self.lookup(code) else {
            let diagnostics = self.unknown_message(code);
            return self.reject_or_ignore(name, diagnostics);
        };
        if def.param_type == ParamType::Special {
            let diagnostics = format!(
                "search parameter '{}' of {} is not supported",
                shown(code),
                self.scope()
            );
            return self.reject_or_ignore(name, diagnostics);
        }
        let modifier = match modifier_text {
            None => None,
            Some(text) => match parse_modifier(text, def) {
                Some(modifier) => Some(modifier),
                None => {
                    let diagnostics = format!(
                        "unsupported modifier ':{}' on search parameter '{}' ({}); supported: {}",
                        shown(text),
                        shown(code),
                        type_name(def.param_type),
                        supported_modifiers(def.param_type)
                    );
                    return self.reject_or_ignore(name, diagnostics);
                }
            },
        };
        let criterion = match chained {
            Some(chained) => self.parse_chain(name, def, modifier, chained, value)?,
            None => Some(parse_values(name, def, modifier, value)?),
        };
        if let Some(criterion) = criterion {
            self.check_limits(&criterion)?;
            self.query.criteria.push(criterion);
        }
        Ok(())
    }

    /// Checks that adding `criterion` keeps the search within
    /// [`MAX_CRITERIA`] and [`MAX_QUERY_VALUES`].
    fn check_limits(&self, criterion: &Criterion) -> Result<(), OperationOutcome> {
        if self.query.criteria.len() >= MAX_CRITERIA {
            return Err(too_costly(format!(
                "the search has more than {MAX_CRITERIA} parameters, the limit; \
                 combine values into one parameter with commas or split the search"
            )));
        }
        let values = self
            .query
            .criteria
            .iter()
            .chain([criterion])
            .map(criterion_value_count)
            .sum::<usize>();
        if values > MAX_QUERY_VALUES {
            return Err(too_costly(format!(
                "the search has more than {MAX_QUERY_VALUES} values across its parameters, \
                 the limit; split the search"
            )));
        }
        Ok(())
    }

    fn unknown_message(&self, code: &str) -> String {
        unknown_param_message(code, &self.scope())
    }

    fn parse_chain(
        &mut self,
        name: &str,
        def: &'static SearchParamDef,
        modifier: Option<Modifier>,
        chained: &str,
        value: &str,
    ) -> Result<Option<Criterion>, OperationOutcome> {
        let unsupported_chain = match (&modifier, def.param_type) {
            (_, ParamType::Reference) if chained.contains('.') => {
                Some("chains of more than one level are not supported")
            }
            (None | Some(Modifier::Type(_)), ParamType::Reference) => None,
            (_, ParamType::Reference) => Some("only a type modifier may precede a chain"),
            _ => Some("only reference parameters can be chained"),
        };
        if let Some(reason) = unsupported_chain {
            let diagnostics = format!("search parameter '{}': {reason}", shown(name));
            return self.reject_or_ignore(name, diagnostics).map(|()| None);
        }
        let (chained_code, chained_modifier) = match chained.split_once(':') {
            Some((code, modifier)) => (code, Some(modifier)),
            None => (chained, None),
        };
        let target_type = match &modifier {
            Some(Modifier::Type(target)) => target.clone(),
            _ => {
                let candidates: Vec<&String> = def
                    .targets
                    .iter()
                    .filter(|t| search_param(t, chained_code).is_some())
                    .collect();
                match candidates.as_slice() {
                    [single] => (*single).clone(),
                    [] => {
                        let diagnostics = format!(
                            "chained search parameter '{}': no target of '{}' ({}) defines '{}'",
                            shown(name),
                            def.code,
                            def.targets.join(", "),
                            shown(chained_code)
                        );
                        return self.reject_or_ignore(name, diagnostics).map(|()| None);
                    }
                    several => {
                        let names: Vec<&str> = several.iter().map(|t| t.as_str()).collect();
                        return Err(invalid(format!(
                            "ambiguous chained search parameter '{}': '{}' may refer to {}; \
                             name the type, as in {}:{}.{}",
                            shown(name),
                            def.code,
                            names.join(", "),
                            def.code,
                            names.first().copied().unwrap_or_default(),
                            shown(chained_code)
                        )));
                    }
                }
            }
        };
        let Some(chained_def) = search_param(&target_type, chained_code) else {
            let diagnostics = unknown_param_message(chained_code, &target_type);
            return self.reject_or_ignore(name, diagnostics).map(|()| None);
        };
        if chained_def.param_type == ParamType::Special {
            let diagnostics = format!(
                "search parameter '{}' of {target_type} is not supported",
                shown(chained_code)
            );
            return self.reject_or_ignore(name, diagnostics).map(|()| None);
        }
        let inner_modifier = match chained_modifier {
            None => None,
            Some(text) => match parse_modifier(text, chained_def) {
                Some(modifier) => Some(modifier),
                None => {
                    let diagnostics = format!(
                        "unsupported modifier ':{}' on search parameter '{}' ({}); supported: {}",
                        shown(text),
                        shown(chained_code),
                        type_name(chained_def.param_type),
                        supported_modifiers(chained_def.param_type)
                    );
                    return self.reject_or_ignore(name, diagnostics).map(|()| None);
                }
            },
        };
        let inner = parse_values(name, chained_def, inner_modifier, value)?;
        Ok(Some(Criterion {
            param: def.code.clone(),
            param_type: ParamType::Reference,
            modifier: Some(Modifier::Type(target_type.clone())),
            chain: Some(Box::new(Chain {
                target_type,
                criterion: inner,
            })),
            values: Vec::new(),
        }))
    }
}

fn unknown_param_message(code: &str, scope: &str) -> String {
    let resource_type = if super::static_resource_type(scope).is_some() {
        scope
    } else {
        RESOURCE
    };
    let mut codes: Vec<&str> = search_params(resource_type)
        .filter(|d| d.param_type != ParamType::Special)
        .map(|d| d.code.as_str())
        .collect();
    codes.sort_unstable();
    format!(
        "unknown search parameter '{}' for {scope}; supported parameters: {}",
        shown(code),
        codes.join(", ")
    )
}

fn type_name(param_type: ParamType) -> &'static str {
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

fn supported_modifiers(param_type: ParamType) -> &'static str {
    match param_type {
        ParamType::String => ":exact, :contains, :missing",
        ParamType::Token => ":not, :text, :missing",
        ParamType::Uri => ":below, :above, :contains, :missing",
        ParamType::Reference => ":[type], :identifier, :missing",
        ParamType::Special => "none",
        _ => ":missing",
    }
}

fn parse_modifier(text: &str, def: &SearchParamDef) -> Option<Modifier> {
    let modifier = match (def.param_type, text) {
        (ParamType::Special, _) => return None,
        (_, "missing") => Modifier::Missing,
        (ParamType::String, "exact") => Modifier::Exact,
        (ParamType::String | ParamType::Uri, "contains") => Modifier::Contains,
        (ParamType::Token, "not") => Modifier::Not,
        (ParamType::Token, "text") => Modifier::Text,
        (ParamType::Uri, "below") => Modifier::Below,
        (ParamType::Uri, "above") => Modifier::Above,
        (ParamType::Reference, "identifier") => Modifier::Identifier,
        (ParamType::Reference, type_name) => {
            let type_name = super::static_resource_type(type_name)?;
            if !def.targets.is_empty() && !def.targets.iter().any(|t| t == type_name) {
                return None;
            }
            Modifier::Type(type_name.to_owned())
        }
        _ => return None,
    };
    Some(modifier)
}

fn parse_values(
    name: &str,
    def: &SearchParamDef,
    modifier: Option<Modifier>,
    value: &str,
) -> Result<Criterion, OperationOutcome> {
    let values = if modifier == Some(Modifier::Missing) {
        match value {
            "true" => vec![SearchValue::Missing(true)],
            "false" => vec![SearchValue::Missing(false)],
            _ => return Err(invalid_value(name, value, "true or false")),
        }
    } else {
        let raw_values = split_unescaped(value, ',');
        if raw_values.len() > MAX_VALUES_PER_CRITERION {
            return Err(too_costly(format!(
                "search parameter '{}' has more than {MAX_VALUES_PER_CRITERION} \
                 comma-separated values, the limit; split the search",
                shown(name)
            )));
        }
        let mut values = Vec::new();
        for raw in raw_values {
            if raw.is_empty() {
                continue;
            }
            values.push(parse_value(name, def, modifier.as_ref(), &raw)?);
        }
        values
    };
    Ok(Criterion {
        param: def.code.clone(),
        param_type: def.param_type,
        modifier,
        chain: None,
        values,
    })
}

/// Parses one (still escaped) value of a parameter.
fn parse_value(
    name: &str,
    def: &SearchParamDef,
    modifier: Option<&Modifier>,
    raw: &str,
) -> Result<SearchValue, OperationOutcome> {
    match (def.param_type, modifier) {
        (ParamType::Token, Some(Modifier::Text)) => Ok(string_value(&unescape(raw))),
        (ParamType::Reference, Some(Modifier::Identifier)) => parse_token(name, raw),
        (ParamType::Reference, Some(Modifier::Type(target))) => {
            parse_reference_value(name, def, Some(target), raw)
        }
        (ParamType::Reference, _) => parse_reference_value(name, def, None, raw),
        (ParamType::Composite, _) => parse_composite(name, def, raw),
        (param_type, _) => parse_simple(name, param_type, raw),
    }
}

/// Parses a value of a type that needs no definition details (also used for
/// composite components).
fn parse_simple(
    name: &str,
    param_type: ParamType,
    raw: &str,
) -> Result<SearchValue, OperationOutcome> {
    match param_type {
        ParamType::String => Ok(string_value(&unescape(raw))),
        ParamType::Token => parse_token(name, raw),
        ParamType::Uri => Ok(SearchValue::Uri(unescape(raw))),
        ParamType::Date => {
            let (prefix, text) = split_prefix(raw);
            let (low, high) = parse_date_range(text).ok_or_else(|| {
                invalid_value(
                    name,
                    raw,
                    "a date such as 2013-01-14 or 2013-01-14T10:00:00+10:00",
                )
            })?;
            Ok(SearchValue::Date { prefix, low, high })
        }
        ParamType::Number => {
            let (prefix, text) = split_prefix(raw);
            let decimal =
                parse_decimal(text).ok_or_else(|| invalid_value(name, raw, "a number"))?;
            Ok(SearchValue::Number {
                prefix,
                value: decimal.value,
                low: decimal.low,
                high: decimal.high,
            })
        }
        ParamType::Quantity => parse_quantity(name, raw),
        ParamType::Reference => {
            let parts = parse_reference(&unescape(raw))
                .ok_or_else(|| invalid_value(name, raw, "a reference such as Patient/123"))?;
            Ok(SearchValue::Reference {
                target_type: parts.target_type,
                id: parts.id,
                url: parts.url,
            })
        }
        ParamType::Composite | ParamType::Special => Err(invalid_value(
            name,
            raw,
            "a simple value inside a composite",
        )),
    }
}

fn string_value(text: &str) -> SearchValue {
    SearchValue::String {
        normalized: normalize_string(text),
        exact: text.to_owned(),
    }
}

fn parse_token(name: &str, raw: &str) -> Result<SearchValue, OperationOutcome> {
    let parts = split_unescaped(raw, '|');
    let value = match parts.as_slice() {
        [code] => SearchValue::Token {
            system: None,
            code: Some(unescape(code)),
        },
        [system, code] => SearchValue::Token {
            system: Some(unescape(system)),
            code: Some(unescape(code)).filter(|c| !c.is_empty()),
        },
        _ => return Err(invalid_value(name, raw, "[system]|[code]")),
    };
    if let SearchValue::Token {
        system: Some(system),
        code: None,
    } = &value
        && system.is_empty()
    {
        return Err(invalid_value(
            name,
            raw,
            "[system]|[code] with a system or a code",
        ));
    }
    Ok(value)
}

fn parse_quantity(name: &str, raw: &str) -> Result<SearchValue, OperationOutcome> {
    let expected = "[prefix]number[|system|code], such as gt5.4|http://unitsofmeasure.org|mg";
    let parts = split_unescaped(raw, '|');
    let (number, system, code) = match parts.as_slice() {
        [number] => (number.as_str(), None, None),
        [number, system, code] => (
            number.as_str(),
            Some(unescape(system)),
            Some(unescape(code)),
        ),
        _ => return Err(invalid_value(name, raw, expected)),
    };
    let (prefix, text) = split_prefix(number);
    let decimal = parse_decimal(text).ok_or_else(|| invalid_value(name, raw, expected))?;
    Ok(SearchValue::Quantity {
        prefix,
        value: decimal.value,
        low: decimal.low,
        high: decimal.high,
        system: system.filter(|s| !s.is_empty()),
        code: code.filter(|c| !c.is_empty()),
    })
}

fn parse_reference_value(
    name: &str,
    def: &SearchParamDef,
    type_modifier: Option<&String>,
    raw: &str,
) -> Result<SearchValue, OperationOutcome> {
    let text = unescape(raw);
    let expected = "Type/id, id or an absolute URL";
    let is_bare_id = !text.contains('/') && !text.contains(':');
    if is_bare_id {
        let target_type = type_modifier
            .cloned()
            .or_else(|| match def.targets.as_slice() {
                [single] => Some(single.clone()),
                _ => None,
            });
        return Ok(SearchValue::Reference {
            target_type,
            id: Some(text),
            url: None,
        });
    }
    let parts = parse_reference(&text).ok_or_else(|| invalid_value(name, raw, expected))?;
    if parts.url.is_none() && parts.target_type.is_none() {
        return Err(invalid_value(name, raw, expected));
    }
    if let (Some(modifier), Some(value_type)) = (type_modifier, &parts.target_type)
        && parts.url.is_none()
        && modifier != value_type
    {
        return Err(invalid_value(
            name,
            raw,
            &format!("a reference to {modifier}"),
        ));
    }
    Ok(SearchValue::Reference {
        target_type: parts.target_type,
        id: parts.id,
        url: parts.url,
    })
}

fn parse_composite(
    name: &str,
    def: &SearchParamDef,
    raw: &str,
) -> Result<SearchValue, OperationOutcome> {
    let parts = split_unescaped(raw, '$');
    if parts.len() != def.components.len() {
        let codes: Vec<&str> = def.components.iter().map(|c| c.code.as_str()).collect();
        return Err(invalid_value(
            name,
            raw,
            &format!(
                "{} values separated by '$' ({})",
                codes.len(),
                codes.join("$")
            ),
        ));
    }
    let mut values = Vec::with_capacity(parts.len());
    for (component, part) in def.components.iter().zip(&parts) {
        values.push((
            component.code.clone(),
            parse_simple(name, component.param_type, part)?,
        ));
    }
    Ok(SearchValue::Composite(values))
}

/// Splits a leading comparison prefix off a number, date or quantity value.
fn split_prefix(text: &str) -> (Prefix, &str) {
    let prefix = match text.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::StartsAfter,
        Some("eb") => Prefix::EndsBefore,
        Some("ap") => Prefix::Approx,
        _ => return (Prefix::Eq, text),
    };
    (prefix, text.get(2..).unwrap_or_default())
}

/// Splits on `separator` where it is not escaped by a backslash. Escapes stay
/// in the parts, so a part can be split again on another separator.
fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else if c == separator {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Removes the backslash before an escaped `,`, `|`, `$` or `\`. Other
/// backslashes stay as written.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, ',' | '|' | '$' | '\\')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

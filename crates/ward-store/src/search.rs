//! Planning searches: which criteria run as SQL over the blind indexes, and
//! which must be checked on the decrypted resource.
//!
//! The SQL this module writes uses `?` placeholders and only portable
//! constructs, so every backend can run it. A criterion that SQL evaluates
//! exactly is not checked again. The others select a superset in SQL (or
//! nothing at all) and are then checked by [`ward_fhir::search::matches`].

use ward_fhir::search::{
    Criterion, Modifier, ParamType, Prefix, SearchQuery, SearchValue, SortKey,
};

use crate::codec::ResourceCodec;
use crate::index::{self, MAX_PREFIX, MIN_PREFIX};

/// The maximum number of target ids a chained parameter may resolve to; it
/// stays below SQLite's limit of 32,766 bound values per statement.
const MAX_CHAIN_IDS: usize = 30_000;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    /// An integer.
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A planned search.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Selects `r.pk` of candidate resources, ordered when `sql_sorted`.
    pub sql: String,
    /// The bound values, in placeholder order.
    pub params: Vec<SqlValue>,
    /// Criteria to check on each decrypted candidate.
    pub post_filter: Vec<Criterion>,
    /// Sort keys that need the decrypted resource.
    pub memory_sort: Vec<SortKey>,
}

/// A fragment of SQL with its bound values.
#[derive(Debug, Default)]
struct Fragment {
    sql: String,
    params: Vec<SqlValue>,
}

impl Fragment {
    fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    fn bind(&mut self, value: SqlValue) {
        self.sql.push('?');
        self.params.push(value);
    }
}

/// Resolves chained criteria to the ids their targets have; the backend
/// supplies it because it runs a nested search.
pub(crate) type ChainResolver<'a> = dyn FnMut(&str, &Criterion) -> crate::Result<Vec<String>> + 'a;

/// Plans `query`. `resolve_chain` runs the nested search of a chained
/// parameter and returns the matching ids of its target type.
pub(crate) fn plan(
    codec: &ResourceCodec,
    query: &SearchQuery,
    resolve_chain: &mut ChainResolver<'_>,
) -> crate::Result<Plan> {
    let mut plan = Plan::default();
    let mut frag = Fragment::default();
    frag.push("SELECT r.pk FROM resources r WHERE r.deleted = 0");
    if let Some(resource_type) = &query.resource_type {
        frag.push(" AND r.type = ");
        frag.bind(SqlValue::Text(resource_type.clone()));
    } else if !query.types.is_empty() {
        frag.push(" AND r.type IN (");
        push_list(&mut frag, query.types.iter().cloned().map(SqlValue::Text));
        frag.push(")");
    }

    for criterion in &query.criteria {
        if let Some(chain) = &criterion.chain {
            let ids = resolve_chain(&chain.target_type, &chain.criterion)?;
            if ids.len() > MAX_CHAIN_IDS {
                return Err(crate::StoreError::TooCostly(format!(
                    "the chained parameter {} matches {} {} resources (limit {MAX_CHAIN_IDS}); make it more selective",
                    criterion.param,
                    ids.len(),
                    chain.target_type
                )));
            }
            frag.push(" AND r.pk IN (SELECT res_pk FROM idx_reference WHERE param = ");
            frag.bind(SqlValue::Text(criterion.param.clone()));
            frag.push(" AND target_type = ");
            frag.bind(SqlValue::Text(chain.target_type.clone()));
            frag.push(" AND target_id IN (");
            push_list(&mut frag, ids.into_iter().map(SqlValue::Text));
            frag.push("))");
            continue;
        }
        let exact = criterion_sql(codec, criterion, &mut frag);
        if !exact {
            plan.post_filter.push(criterion.clone());
        }
    }

    let memory_sort = query.sort.iter().any(|key| sort_expression(key).is_none());
    if memory_sort || !plan.post_filter.is_empty() {
        plan.memory_sort = query.sort.clone();
        frag.push(" ORDER BY r.pk");
    } else {
        frag.push(" ORDER BY ");
        for key in &query.sort {
            let (expr, binds) = sort_expression(key).unwrap_or_default();
            let direction = if key.descending { "DESC" } else { "ASC" };
            // Resources without a value sort last in both directions.
            frag.push("(");
            frag.push(&expr);
            frag.params.extend(binds.iter().cloned());
            frag.push(") IS NULL, ");
            frag.push(&expr);
            frag.params.extend(binds);
            frag.push(" ");
            frag.push(direction);
            frag.push(", ");
        }
        frag.push("r.pk");
    }

    plan.sql = frag.sql;
    plan.params = frag.params;
    Ok(plan)
}

fn push_list(frag: &mut Fragment, values: impl Iterator<Item = SqlValue>) {
    let mut any = false;
    for (i, value) in values.enumerate() {
        if i > 0 {
            frag.push(", ");
        }
        frag.bind(value);
        any = true;
    }
    if !any {
        // An empty IN list is not valid SQL everywhere; NULL matches nothing.
        frag.push("NULL");
    }
}

/// Appends the disjunction of `parts` as a balanced tree of `OR`s. A flat
/// `a OR b OR c` chain nests one level per term, and SQLite rejects
/// expressions nested more than 1,000 deep, so long value lists are split in
/// halves and the depth grows with the logarithm of the count. No parts
/// appends a condition that is never true.
fn push_any(frag: &mut Fragment, mut parts: Vec<Fragment>) {
    if parts.len() > 1 {
        let right = parts.split_off(parts.len() / 2);
        frag.push("(");
        push_any(frag, parts);
        frag.push(" OR ");
        push_any(frag, right);
        frag.push(")");
        return;
    }
    match parts.pop() {
        Some(part) => {
            frag.push(&part.sql);
            frag.params.extend(part.params);
        }
        None => frag.push("1 = 0"),
    }
}

/// A fragment holding one range condition with its bound values.
fn range_part(condition: &str, low: SqlValue, high: SqlValue) -> Fragment {
    let mut part = Fragment::default();
    push_range_condition(&mut part, condition, low, high);
    part
}

/// The SQL sort expression of a key, when SQL can sort by it.
fn sort_expression(key: &SortKey) -> Option<(String, Vec<SqlValue>)> {
    let param = SqlValue::Text(key.param.clone());
    match (key.param.as_str(), key.param_type) {
        ("_id", _) => Some(("r.id".into(), vec![])),
        ("_lastUpdated", _) => Some(("r.last_updated".into(), vec![])),
        (_, ParamType::Date) => {
            let agg = if key.descending {
                "MAX(high)"
            } else {
                "MIN(low)"
            };
            Some((
                format!("(SELECT {agg} FROM idx_date WHERE res_pk = r.pk AND param = ?)"),
                vec![param],
            ))
        }
        (_, ParamType::Number | ParamType::Quantity) => {
            let agg = if key.descending {
                "MAX(value)"
            } else {
                "MIN(value)"
            };
            Some((
                format!("(SELECT {agg} FROM idx_number WHERE res_pk = r.pk AND param = ?)"),
                vec![param],
            ))
        }
        _ => None,
    }
}

/// Appends the SQL of one criterion; returns true when the SQL is exact.
fn criterion_sql(codec: &ResourceCodec, criterion: &Criterion, frag: &mut Fragment) -> bool {
    let param = &criterion.param;
    if criterion.modifier == Some(Modifier::Missing) {
        return missing_sql(criterion, frag);
    }
    match criterion.param_type {
        ParamType::String => string_sql(codec, criterion, frag),
        ParamType::Token => token_sql(codec, criterion, frag),
        ParamType::Date => {
            if criterion.param == "_lastUpdated" {
                return last_updated_sql(criterion, frag);
            }
            date_sql(criterion, frag)
        }
        ParamType::Reference => reference_sql(codec, criterion, frag),
        ParamType::Uri => uri_sql(codec, criterion, frag),
        ParamType::Number | ParamType::Quantity => {
            number_sql(criterion, frag);
            false
        }
        ParamType::Composite | ParamType::Special => {
            let _ = param;
            false
        }
    }
}

fn table_of(param_type: ParamType) -> Option<&'static str> {
    match param_type {
        ParamType::String => Some("idx_string"),
        ParamType::Token => Some("idx_token"),
        ParamType::Date => Some("idx_date"),
        ParamType::Reference => Some("idx_reference"),
        ParamType::Uri => Some("idx_uri"),
        ParamType::Number | ParamType::Quantity => Some("idx_number"),
        ParamType::Composite | ParamType::Special => None,
    }
}

fn missing_sql(criterion: &Criterion, frag: &mut Fragment) -> bool {
    let Some(table) = table_of(criterion.param_type) else {
        return false;
    };
    if criterion.param == "_id" || criterion.param == "_lastUpdated" {
        return false;
    }
    let Some(SearchValue::Missing(missing)) = criterion.values.first() else {
        return false;
    };
    frag.push(if *missing {
        " AND NOT EXISTS"
    } else {
        " AND EXISTS"
    });
    frag.push(&format!(
        " (SELECT 1 FROM {table} m WHERE m.res_pk = r.pk AND m.param = "
    ));
    frag.bind(SqlValue::Text(criterion.param.clone()));
    frag.push(")");
    true
}

/// Opens `AND r.pk IN (SELECT res_pk FROM table WHERE param = ? AND (`.
fn open_subquery(frag: &mut Fragment, table: &str, param: &str, negate: bool) {
    frag.push(if negate {
        " AND r.pk NOT IN"
    } else {
        " AND r.pk IN"
    });
    frag.push(&format!(" (SELECT res_pk FROM {table} WHERE param = "));
    frag.bind(SqlValue::Text(param.to_owned()));
    frag.push(" AND (");
}

fn string_sql(codec: &ResourceCodec, criterion: &Criterion, frag: &mut Fragment) -> bool {
    let param = &criterion.param;
    let mut exact = true;
    let mut parts = Vec::new();
    for value in &criterion.values {
        let SearchValue::String {
            normalized,
            exact: raw,
        } = value
        else {
            return false;
        };
        match criterion.modifier {
            Some(Modifier::Exact) => parts.push(index::string_exact(codec, param, raw)),
            None => {
                let len = normalized.chars().count();
                if len < MIN_PREFIX {
                    // Too short to be indexed: every candidate is checked.
                    return false;
                }
                if len > MAX_PREFIX {
                    exact = false;
                }
                let prefix = index::char_prefix(normalized, MAX_PREFIX);
                parts.push(index::string_prefix(codec, param, prefix));
            }
            _ => return false,
        }
    }
    // Every value of a criterion has the same kind, because the modifier
    // applies to all of them.
    let kind = if criterion.modifier == Some(Modifier::Exact) {
        2
    } else {
        1
    };
    open_subquery(frag, "idx_string", param, false);
    frag.push("kind = ");
    frag.bind(SqlValue::Int(kind));
    frag.push(" AND hash IN (");
    push_list(frag, parts.into_iter().map(SqlValue::Blob));
    frag.push(")))");
    exact
}

fn token_sql(codec: &ResourceCodec, criterion: &Criterion, frag: &mut Fragment) -> bool {
    let negate = match criterion.modifier {
        None => false,
        Some(Modifier::Not) => true,
        _ => return false,
    };
    let param = &criterion.param;
    if param == "_id" {
        frag.push(if negate {
            " AND r.id NOT IN ("
        } else {
            " AND r.id IN ("
        });
        let ids = criterion.values.iter().filter_map(|v| match v {
            SearchValue::Token {
                code: Some(code), ..
            } => Some(SqlValue::Text(code.clone())),
            _ => None,
        });
        push_list(frag, ids);
        frag.push(")");
        return true;
    }
    let mut tokens = Vec::new();
    for value in &criterion.values {
        let SearchValue::Token { system, code } = value else {
            return false;
        };
        tokens.push((system.as_deref(), code.as_deref()));
    }
    open_subquery(frag, "idx_token", param, negate);
    let codes_only: Option<Vec<&str>> = tokens
        .iter()
        .map(|(system, code)| if system.is_none() { *code } else { None })
        .collect();
    if let Some(codes) = codes_only {
        let hashes = codes
            .into_iter()
            .map(|code| SqlValue::Blob(index::token_code(codec, param, code)));
        frag.push("code IN (");
        push_list(frag, hashes);
        frag.push(")))");
        return true;
    }
    let parts = tokens
        .into_iter()
        .map(|(system, code)| token_part(codec, param, system, code))
        .collect();
    push_any(frag, parts);
    frag.push("))");
    true
}

/// The condition of one `[system]|[code]` token value.
fn token_part(
    codec: &ResourceCodec,
    param: &str,
    system: Option<&str>,
    code: Option<&str>,
) -> Fragment {
    let mut part = Fragment::default();
    part.push("(1 = 1");
    match system {
        None => {}
        Some("") => part.push(" AND system IS NULL"),
        Some(system) => {
            part.push(" AND system = ");
            part.bind(SqlValue::Blob(index::token_system(codec, param, system)));
        }
    }
    if let Some(code) = code {
        part.push(" AND code = ");
        part.bind(SqlValue::Blob(index::token_code(codec, param, code)));
    }
    part.push(")");
    part
}

/// The SQL condition for a date prefix over a row range `[low, high)` and a
/// search range `[ql, qh)`, following the prefix table of the R4 search
/// specification. `None` for prefixes checked on the resource.
fn date_condition(prefix: Prefix, low_col: &str, high_col: &str) -> Option<String> {
    let (l, h) = (low_col, high_col);
    Some(match prefix {
        Prefix::Eq => format!("({l} >= ?1 AND {h} <= ?2)"),
        Prefix::Gt => format!("({h} > ?2)"),
        Prefix::Lt => format!("({l} < ?1)"),
        Prefix::Ge => format!("({h} > ?2 OR ({l} >= ?1 AND {h} <= ?2))"),
        Prefix::Le => format!("({l} < ?1 OR ({l} >= ?1 AND {h} <= ?2))"),
        Prefix::StartsAfter => format!("({l} >= ?2)"),
        Prefix::EndsBefore => format!("({h} <= ?1)"),
        Prefix::Ne | Prefix::Approx => return None,
    })
}

/// Expands `?1`/`?2` in a condition into bound placeholders.
fn push_range_condition(frag: &mut Fragment, condition: &str, low: SqlValue, high: SqlValue) {
    let mut rest = condition;
    while let Some(at) = rest.find('?') {
        frag.push(&rest[..at]);
        let which = rest.as_bytes().get(at + 1).copied();
        frag.bind(if which == Some(b'1') {
            low.clone()
        } else {
            high.clone()
        });
        rest = &rest[at + 2..];
    }
    frag.push(rest);
}

fn date_sql(criterion: &Criterion, frag: &mut Fragment) -> bool {
    let mut conditions = Vec::new();
    for value in &criterion.values {
        let SearchValue::Date { prefix, low, high } = value else {
            return false;
        };
        let Some(condition) = date_condition(*prefix, "low", "high") else {
            return false;
        };
        conditions.push((condition, *low, *high));
    }
    if criterion.modifier.is_some() {
        return false;
    }
    let parts = conditions
        .into_iter()
        .map(|(condition, low, high)| {
            range_part(&condition, SqlValue::Int(low), SqlValue::Int(high))
        })
        .collect();
    open_subquery(frag, "idx_date", &criterion.param, false);
    push_any(frag, parts);
    frag.push("))");
    true
}

fn last_updated_sql(criterion: &Criterion, frag: &mut Fragment) -> bool {
    if criterion.modifier.is_some() {
        return false;
    }
    let mut conditions = Vec::new();
    for value in &criterion.values {
        let SearchValue::Date { prefix, low, high } = value else {
            return false;
        };
        // lastUpdated is an instant: a one-microsecond range.
        let Some(condition) = date_condition(*prefix, "r.last_updated", "(r.last_updated + 1)")
        else {
            return false;
        };
        conditions.push((condition, *low, *high));
    }
    let parts = conditions
        .into_iter()
        .map(|(condition, low, high)| {
            range_part(&condition, SqlValue::Int(low), SqlValue::Int(high))
        })
        .collect();
    frag.push(" AND (");
    push_any(frag, parts);
    frag.push(")");
    true
}

fn number_sql(criterion: &Criterion, frag: &mut Fragment) {
    // A superset on the value alone; units and precision are checked on the
    // resource.
    let mut conditions = Vec::new();
    for value in &criterion.values {
        let (prefix, low, high) = match value {
            SearchValue::Number {
                prefix, low, high, ..
            }
            | SearchValue::Quantity {
                prefix, low, high, ..
            } => (*prefix, *low, *high),
            _ => return,
        };
        let condition = match prefix {
            Prefix::Eq => "(value >= ?1 AND value < ?2)",
            Prefix::Gt | Prefix::StartsAfter => "(value > ?1)",
            Prefix::Lt | Prefix::EndsBefore => "(value < ?2)",
            Prefix::Ge => "(value >= ?1)",
            Prefix::Le => "(value < ?2)",
            Prefix::Ne | Prefix::Approx => return,
        };
        conditions.push((condition, low, high));
    }
    if criterion.modifier.is_some() || conditions.is_empty() {
        return;
    }
    let parts = conditions
        .into_iter()
        .map(|(condition, low, high)| {
            range_part(condition, SqlValue::Real(low), SqlValue::Real(high))
        })
        .collect();
    open_subquery(frag, "idx_number", &criterion.param, false);
    push_any(frag, parts);
    frag.push("))");
}

fn reference_sql(codec: &ResourceCodec, criterion: &Criterion, frag: &mut Fragment) -> bool {
    let type_modifier = match &criterion.modifier {
        None => None,
        Some(Modifier::Type(t)) => Some(t.clone()),
        _ => return false,
    };
    let param = &criterion.param;
    let mut parts: Vec<Fragment> = Vec::new();
    for value in &criterion.values {
        let SearchValue::Reference {
            target_type,
            id,
            url,
        } = value
        else {
            return false;
        };
        let mut part = Fragment::default();
        part.push("(1 = 1");
        let target_type = target_type.clone().or_else(|| type_modifier.clone());
        match (id, url) {
            (Some(id), _) => {
                if let Some(t) = target_type {
                    part.push(" AND target_type = ");
                    part.bind(SqlValue::Text(t));
                }
                part.push(" AND target_id = ");
                part.bind(SqlValue::Text(id.clone()));
            }
            (None, Some(url)) => {
                part.push(" AND url = ");
                part.bind(SqlValue::Blob(index::uri(codec, param, url)));
            }
            (None, None) => return false,
        }
        part.push(")");
        parts.push(part);
    }
    open_subquery(frag, "idx_reference", param, false);
    push_any(frag, parts);
    frag.push("))");
    true
}

fn uri_sql(codec: &ResourceCodec, criterion: &Criterion, frag: &mut Fragment) -> bool {
    if criterion.modifier.is_some() {
        return false;
    }
    let param = &criterion.param;
    let mut hashes = Vec::new();
    for value in &criterion.values {
        let SearchValue::Uri(uri) = value else {
            return false;
        };
        hashes.push(index::uri(codec, param, uri));
    }
    open_subquery(frag, "idx_uri", param, false);
    frag.push("hash IN (");
    push_list(frag, hashes.into_iter().map(SqlValue::Blob));
    frag.push(")))");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_condition_binds_in_order() {
        let mut frag = Fragment::default();
        push_range_condition(
            &mut frag,
            "(low >= ?1 AND high <= ?2)",
            SqlValue::Int(1),
            SqlValue::Int(2),
        );
        assert_eq!(frag.sql, "(low >= ? AND high <= ?)");
        assert_eq!(frag.params, vec![SqlValue::Int(1), SqlValue::Int(2)]);
    }

    #[test]
    fn or_list_nests_logarithmically() {
        let parts = (0..1_000)
            .map(|i| {
                let mut part = Fragment::default();
                part.push("v = ");
                part.bind(SqlValue::Int(i));
                part
            })
            .collect();
        let mut frag = Fragment::default();
        push_any(&mut frag, parts);

        let mut depth = 0_usize;
        let mut max_depth = 0;
        for c in frag.sql.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            max_depth = max_depth.max(depth);
        }
        assert!(max_depth <= 10, "nested {max_depth} deep");
        assert_eq!(frag.sql.matches(" OR ").count(), 999);
        let expected: Vec<SqlValue> = (0..1_000).map(SqlValue::Int).collect();
        assert_eq!(frag.params, expected);
    }

    #[test]
    fn empty_or_list_matches_nothing() {
        let mut frag = Fragment::default();
        push_any(&mut frag, Vec::new());
        assert_eq!(frag.sql, "1 = 0");
    }

    #[test]
    fn ne_and_ap_dates_are_checked_on_resource() {
        assert!(date_condition(Prefix::Ne, "low", "high").is_none());
        assert!(date_condition(Prefix::Approx, "low", "high").is_none());
        assert!(date_condition(Prefix::Eq, "low", "high").is_some());
    }
}

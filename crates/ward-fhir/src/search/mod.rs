//! Search parameters: extracting index entries from resources, parsing search
//! requests into a [`SearchQuery`], and matching a criterion against a resource.

mod extract;
mod matching;
mod params;
mod parse;
mod primitives;
mod types;

pub use extract::{MAX_INDEX_ENTRIES, check_index_size, index_resource};
pub use matching::{SortValue, matches, sort_value};
pub use params::{
    ComponentDef, RESOURCE, SearchParamDef, all_search_params, resource_types, search_param,
    search_params, static_resource_type,
};
pub use parse::{MAX_CRITERIA, MAX_QUERY_VALUES, MAX_VALUES_PER_CRITERION, parse_search};
pub use primitives::{normalize_string, parse_date_range};
pub use types::*;

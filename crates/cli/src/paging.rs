//! The list commands' paging and filters: `--limit` and `--after` ask for one page (the
//! cursor of the next is said on stderr, so stdout stays the list), and the filters
//! the API takes (see `tandem_api::paging`).

use anyhow::{anyhow, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use tandem_api::Page;

#[derive(Args, Debug, Clone, Default)]
pub struct PageArgs {
    /// One page of at most this many (at most 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// One page, after this cursor (said on stderr after the page before).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
}

impl PageArgs {
    /// Whether one page was asked for rather than the whole list.
    pub fn one_page(&self) -> bool {
        self.limit.is_some() || self.after.is_some()
    }
}

/// A page's items; when more follow, says how to get them (on stderr).
pub fn items<T>(page: Page<T>, command: &str) -> Vec<T> {
    if let Some(next) = &page.next {
        eprintln!("more follow: {command} --after {next}");
    }
    page.items
}

/// One of a closed set of words (a role, a state…), in the API's spelling; the error
/// lists the choices.
pub fn word<T: DeserializeOwned>(what: &str, s: Option<String>) -> Result<Option<T>> {
    s.map(|s| {
        serde_json::from_value(serde_json::Value::String(s.clone()))
            .map_err(|e| anyhow!("--{what} {s:?}: {e}"))
    })
    .transpose()
}

//! `keys batch enable|disable|delete`: [`Keyvault::batch`](keyvault_core::Keyvault::batch)
//! over ids from the command line or a file, a result per id.

use std::path::Path;

use keyvault_core::BatchAction;
use serde::Serialize;

use super::{cli_actor, to_json};
use crate::{
    app::App,
    cli::{BatchActionArg, KeysBatchArgs},
    error::{Error, Problem, Result},
    out::{stderr_line, stdout_line},
};

/// One id's result, as `--json` prints it.
#[derive(Debug, Serialize)]
struct BatchLine {
    /// The id as given.
    id: String,
    ok: bool,
    /// The problem code the REST batch answers with (`not_found`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// Why, for people: the line the command would print for this id alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl BatchLine {
    fn failed(id: String, e: &Error) -> Self {
        Self {
            id,
            ok: false,
            error: Some(Problem::from(e).code()),
            message: Some(e.cli_line()),
        }
    }
}

/// An id as printed back: itself, unless it is a key or token pasted in the wrong place.
fn shown(text: &str) -> String {
    if keyvault_core::parse_key(text).is_some() {
        "[redacted]".to_owned()
    } else {
        text.to_owned()
    }
}

/// The ids of an ids file: one a line; blank lines and `#` comments (whole lines or the
/// rest of a line: an id never holds a `#`) are skipped.
fn read_ids(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("--ids-file {}", path.display()), e))?;
    let ids: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Err(Error::input(
            "ids-file",
            format!("{} lists no ids", path.display()),
        ));
    }
    Ok(ids)
}

fn names(a: BatchAction) -> (&'static str, &'static str) {
    match a {
        BatchAction::Enable => ("key.enable", "Enabled"),
        BatchAction::Disable => ("key.disable", "Disabled"),
        BatchAction::Delete => ("key.delete", "Deleted"),
    }
}

pub(super) async fn batch(app: &App, args: KeysBatchArgs) -> Result<()> {
    let action = match args.action {
        BatchActionArg::Enable => BatchAction::Enable,
        BatchActionArg::Disable => BatchAction::Disable,
        BatchActionArg::Delete => BatchAction::Delete,
    };
    let (audit_action, done_word) = names(action);
    let texts = match &args.ids_file {
        Some(path) => read_ids(path)?,
        None => args.ids,
    };
    let actor = cli_actor();
    // Ids that do not parse get their result (and their refused audit record) here, in
    // place; the rest go to the library in one call and fill the gaps in order.
    let mut ids = Vec::new();
    let mut lines: Vec<Option<BatchLine>> = Vec::with_capacity(texts.len());
    for text in &texts {
        match text.parse() {
            Ok(id) => {
                ids.push(id);
                lines.push(None);
            }
            Err(_) => {
                let e = Error::input("ID", format!("{:?} is not a key id", shown(text)));
                let e = app.refused(&actor, audit_action, None, e).await;
                lines.push(Some(BatchLine::failed(shown(text), &e)));
            }
        }
    }
    let mut done = app.kv.batch(action, &ids, &actor).await.into_iter();
    let mut lines: Vec<BatchLine> = lines
        .into_iter()
        .zip(&texts)
        .map(|(line, text)| {
            line.unwrap_or_else(|| match done.next() {
                Some((_, Ok(()))) => BatchLine {
                    id: text.clone(),
                    ok: true,
                    error: None,
                    message: None,
                },
                Some((_, Err(e))) => BatchLine::failed(text.clone(), &Error::from(e)),
                None => BatchLine::failed(
                    text.clone(),
                    &Error::Internal("a batch result is missing".into()),
                ),
            })
        })
        .collect();
    if args.json {
        stdout_line(&to_json(&lines)?);
    } else {
        for l in &lines {
            match &l.message {
                None => stdout_line(&format!("{}  ok", l.id)),
                Some(m) => stdout_line(&format!("{}  error: {m}", l.id)),
            }
        }
    }
    lines.retain(|l| !l.ok);
    let total = texts.len();
    if lines.is_empty() {
        stderr_line(&format!("{done_word} {total} key(s)."));
        Ok(())
    } else {
        Err(Error::Conflict(format!(
            "{} of {total} id(s) failed; the others succeeded",
            lines.len()
        )))
    }
}

//! The project's documentation stands alone: every link in `README.md`
//! and `docs/*.md` to a file, and every Markdown file named in backticks,
//! is a file in this repository.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The repository root (two levels above this crate).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned()
}

fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

/// The targets of `[text](target)` links in `text`, anchors removed.
fn link_targets(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            let end = rest.find(')')?;
            let target = rest[..end].split('#').next()?;
            (!target.is_empty() && !target.contains("://") && !target.starts_with("mailto:"))
                .then_some(target)
        })
        .collect()
}

/// Markdown file names quoted in backticks: `` `X.md` ``.
fn quoted_markdown(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|q| q.ends_with(".md") && !q.contains(char::is_whitespace))
        .collect()
}

#[test]
fn documents_name_only_files_in_the_repository() {
    let root = root();
    let mut missing = Vec::new();
    let docs = documents();
    assert!(docs.len() > 3, "{docs:?}");
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let dir = doc.parent().unwrap();
        for target in link_targets(&text)
            .into_iter()
            .chain(quoted_markdown(&text))
        {
            let found = !Path::new(target).is_absolute()
                && (dir.join(target).exists() || root.join(target).exists());
            if !found {
                missing.push(format!("{}: {target}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "outside the repository or absent: {missing:#?}"
    );
}

//! nstrace: a live timeline of Linux namespaces, from eBPF.
//!
//! The binary is a thin shell over this library. Data flows down the
//! modules in this order, and a module uses only those before it (checked by
//! `layering` in this file's tests; see ARCHITECTURE.md):
//! - [`model`]: the shared data (kinds, keys, records, start and stop lines);
//!   [`util`]: escaping, errno names, hinted errors;
//! - [`sys`]: /proc and nsfs, clocks, signals: the OS outside eBPF;
//! - [`kernel`]: BTF offsets, preflight, loading the programs, decoding
//!   their events;
//! - [`enrich`]: container attribution;
//! - [`state`]: what is alive ([`state::registry`]) and when it ended
//!   ([`state::ends`], one method per kind);
//! - [`output`]: the sinks (text, JSON, metrics, pictures) and the filter;
//! - [`cli`]: the command line;
//! - [`session`]: tracing, from start to stop; [`cmd`]: the other
//!   subcommands (`ls`, `report`, the man page and completions).

pub mod cli;
pub mod cmd;
pub mod enrich;
pub mod kernel;
pub mod model;
pub mod output;
pub mod session;
pub mod state;
pub mod sys;
pub mod util;

#[cfg(test)]
mod layering {
    //! The module order above is a rule the build checks: a module's code
    //! (its tests aside) names only modules of an earlier layer, or its own.

    /// Layers in the order data flows; each may use the ones before it.
    const LAYERS: &[&[&str]] = &[
        &["util"],
        &["model"],
        &["sys"],
        &["kernel"],
        &["enrich"],
        &["state"],
        &["output"],
        &["cli"],
        &["cmd", "session"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// The top-level modules `code` names through `crate::`.
    fn used(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::b, c::{d, e}}`: the first word of each item.
                let mut depth = 0;
                let mut item = String::new();
                for ch in group.chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.push(std::mem::take(&mut item));
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(ch);
                    }
                }
                out.push(item);
            } else {
                out.push(rest.to_string());
            }
        }
        out.into_iter()
            .filter_map(|s| {
                let word: String = s
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                (!word.is_empty()).then_some(word)
            })
            .collect()
    }

    #[test]
    fn no_module_uses_a_later_layer() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        let mut dirs = vec![src.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut wrong = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let Some(mine) = layer(&top) else {
                assert!(
                    ["lib", "main"].contains(&top.as_str()),
                    "{} is in no layer: add it to LAYERS and ARCHITECTURE.md",
                    rel.display()
                );
                continue;
            };
            let text = std::fs::read_to_string(&f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for m in used(code) {
                match layer(&m) {
                    Some(l) if l > mine || (l == mine && m != top) => {
                        wrong.push(format!("{} uses {m}", rel.display()));
                    }
                    _ => {}
                }
            }
        }
        assert!(wrong.is_empty(), "layers used out of order: {wrong:#?}");
    }

    #[test]
    fn the_checker_reads_use_groups() {
        let code = "use crate::{model::{A, B}, sys::procfs, util};\nlet x = crate::state::ends::X;";
        assert_eq!(used(code), ["model", "sys", "util", "state"]);
    }
}

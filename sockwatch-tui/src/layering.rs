//! The import graph of this crate, checked: no cycles between its files, and no stage of the
//! pipeline importing a later one (`socket` → `kernel` → `model` → `view`/`json` → `app`).
//!
//! Edges come from the source text: `use crate::…`, `use super::…`, `use self::…` (grouped
//! imports expanded), inline `crate::a::b` paths, and `child::item` paths to a module's own
//! children. Test modules (`#[cfg(test)]` to the end of a file, `*_tests.rs`) are left out: tests
//! may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Where each top-level module stands in the pipeline; a module may import only modules of its
/// own rank or lower.
const RANKS: &[(&str, u8)] = &[
    ("socket", 0),
    ("history", 0),
    ("clock", 0),
    ("logfile", 0),
    ("open_sockets", 0),
    ("owner", 0),
    ("kernel", 1),
    ("model", 2),
    ("view", 3),
    ("json", 3),
    ("metrics", 3),
    ("replay", 3),
    ("terminal", 3),
    ("cli", 4),
    ("check", 4),
    ("app", 5),
];

type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("reading src") {
            let path = entry.expect("a directory entry").path();
            let relative = path.strip_prefix(src).expect("under src");
            if path.is_dir() {
                if relative != Path::new("bin") {
                    stack.push(path);
                }
                continue;
            }
            let name = relative.to_string_lossy().replace('\\', "/");
            let Some(stem) = name.strip_suffix(".rs") else {
                continue;
            };
            if matches!(stem, "lib" | "main" | "layering") || stem.ends_with("_tests") {
                continue;
            }
            let mut module: Module = stem.split('/').map(str::to_owned).collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            let text = fs::read_to_string(&path).expect("reading a source file");
            found.insert(module, without_tests(&text));
        }
    }
    found
}

/// The file's own code: comments out, and an inline `#[cfg(test)] mod … { … }` (which closes a
/// file by convention) cut off; a `#[cfg(test)] mod x;` declaration is just a line.
fn without_tests(text: &str) -> String {
    let mut code = String::new();
    let mut test_attribute = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if test_attribute && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            break;
        }
        test_attribute = trimmed.starts_with("#[cfg(test)]");
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let Some(close) = tree.rfind('}').filter(|&close| close > open) else {
        return Vec::new();
    };
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// The paths a file refers to, as written (`crate::…`, `super::…`, `self::…`, `child::…`).
fn references(text: &str, children: &BTreeSet<String>) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` items start a line (after `pub` perhaps) and end at the next `;`.
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let mut trimmed = line.trim_start();
        // `pub use`, `pub(crate) use`, `pub(super) use`: re-exports are imports too.
        if let Some(rest) = trimmed.strip_prefix("pub") {
            let rest = match rest.strip_prefix('(') {
                Some(inner) => inner.split_once(')').map_or(rest, |(_, after)| after),
                None => rest,
            };
            trimmed = rest.trim_start();
        }
        let item = trimmed.strip_prefix("use ");
        if let Some(item) = item {
            let start = offset + (line.len() - item.len());
            if let Some(end) = text[start..].find(';') {
                paths.extend(expand(&text[start..start + end]));
            }
        }
        offset += line.len();
    }
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let words: Vec<&str> = text.split(|c: char| !(ident(c) || c == ':')).collect();
    for word in words {
        let first = word.split("::").next().unwrap_or_default();
        if word.contains("::") && (first == "crate" || children.contains(first)) {
            paths.push(word.to_owned());
        }
    }
    paths
}

/// The module a path names (its longest prefix that is a module), seen from `from`.
fn resolve(path: &str, from: &Module, known: &BTreeMap<Module, String>) -> Option<Module> {
    let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Module, &[&str]) = match *segments.first()? {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (from.clone(), &segments[1..]),
        "super" => {
            // A `mod.rs` is its folder's module: its `super` is the folder's parent.
            let mut base = from.clone();
            base.pop();
            (base, &segments[1..])
        }
        _ => (from.clone(), &segments[..]),
    };
    let mut found = None;
    for segment in rest {
        base.push((*segment).to_owned());
        if known.contains_key(&base) {
            found = Some(base.clone());
        }
    }
    found.or_else(|| {
        (!base.is_empty())
            .then(|| base[..1].to_vec())
            .filter(|m| known.contains_key(m))
    })
}

fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let known = modules(src);
    let mut edges = BTreeMap::new();
    for (module, text) in &known {
        let children: BTreeSet<String> = known
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .filter_map(|m| m.last().cloned())
            .collect();
        let targets: BTreeSet<Module> = references(text, &children)
            .iter()
            .filter(|p| {
                ["crate::", "self::", "super::"]
                    .iter()
                    .any(|s| p.starts_with(s))
                    || children.contains(p.split("::").next().unwrap_or_default())
            })
            .filter_map(|p| resolve(p, module, &known))
            .filter(|target| target != module)
            .collect();
        edges.insert(module.clone(), targets);
    }
    edges
}

fn rank(module: &Module) -> u8 {
    let top = module.first().map(String::as_str).unwrap_or_default();
    RANKS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, rank)| *rank)
        .unwrap_or_else(|| panic!("module {top} has no rank in layering.rs: give it one"))
}

fn cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_import_graph_has_no_cycles() {
    let edges = graph(&src());
    assert!(edges.len() > 20, "the crate's files were found: {edges:?}");
    if let Some(cycle) = cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        panic!("import cycle: {}", names.join(" → "));
    }
}

#[test]
fn no_stage_imports_a_later_one() {
    let edges = graph(&src());
    let wrong: Vec<String> = edges
        .iter()
        .flat_map(|(from, targets)| {
            targets
                .iter()
                .filter(|to| rank(to) > rank(from))
                .map(move |to| format!("{} imports {}", from.join("::"), to.join("::")))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    assert_eq!(
        expand("crate::{a::{b, c}, d}"),
        ["crate::a::b", "crate::a::c", "crate::d"]
    );
    let m = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    let known: BTreeMap<Module, String> = [("view", ""), ("view::state", ""), ("model", "")]
        .into_iter()
        .map(|(name, text)| (m(name), text.to_owned()))
        .collect();
    assert_eq!(
        resolve("super::Message", &m("view::state"), &known),
        Some(m("view"))
    );
    assert_eq!(
        resolve("crate::model::Model", &m("view::state"), &known),
        Some(m("model"))
    );
    assert_eq!(
        resolve("state::ViewState", &m("view"), &known),
        Some(m("view::state"))
    );
    let looped: BTreeMap<Module, BTreeSet<Module>> =
        [(m("a"), [m("b")].into()), (m("b"), [m("a")].into())].into();
    assert!(cycle(&looped).is_some());
    let text = "use crate::{kernel::tracker::Change, socket::Socket};\nlet x = crate::model::Model::new();";
    let refs = references(text, &BTreeSet::new());
    assert!(refs.contains(&"crate::kernel::tracker::Change".to_owned()));
    assert!(refs.contains(&"crate::model::Model::new".to_owned()));
    // A test declaration early in a mod.rs hides nothing after it; an inline test module and
    // comments are not the file's dependencies; restricted re-exports are.
    let text = "#[cfg(test)]\nmod snapshot_tests;\n// use crate::app::run;\npub(crate) use crate::app::run;\n#[cfg(test)]\nmod tests {\n    use crate::json::Record;\n}\n";
    let refs = references(&without_tests(text), &BTreeSet::new());
    assert!(refs.contains(&"crate::app::run".to_owned()), "{refs:?}");
    assert_eq!(
        refs.iter().filter(|r| r.contains("app")).count(),
        2,
        "{refs:?}"
    );
    assert!(!refs.iter().any(|r| r.contains("json")), "{refs:?}");
}

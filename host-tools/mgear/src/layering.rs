//! The library's modules are layered: a module uses the modules below it and
//! never one above, so the import graph has no cycle (issue #11: "no import
//! cycles between modules"). README.md ("Map of the crates and their seams")
//! lists the layers. This test reads `src/**.rs`, builds the graph of
//! `crate::MODULE` and `super::` paths (a module is the first path segment:
//! `src/x.rs` and everything under `src/x/` are module `x`), and fails
//! naming every cycle with the line of each edge, so the change that brings
//! one back is refused with the place to fix.
//!
//! The same holds one level up, between the workspace's crates: libraries
//! never depend on a tool crate (`mgear`, the appliance simulator, the
//! end-to-end tests), checked from `cargo metadata`.
//!
//! Only code counts: comments, doc comments and string literals are blanked
//! first (a doc link to a higher module is not an import). `lib.rs` and
//! `main.rs` are not modules of the graph: the crate root declares every
//! module and the binary sits above them all (nor is this test, nor the
//! binary's `cli/` tree).
//!
//! The library does not parse command lines (issue #11: "clap lives in the
//! binary only"): its pipelines take typed plans, and the clap structs are
//! in `src/cli/`, which only `main.rs` declares. Its errors are one typed
//! enum (`crate::Error`), not `anyhow`. A third test fails naming the
//! `file:line` of any library code that names `clap` or `anyhow` again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// For each module, the modules it names, each with where it first does.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// `src` with comments and the contents of string and char literals
/// replaced by spaces (newlines kept, so line numbers stay right).
fn blank_comments_and_strings(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
            && matches!(next, Some('"') | Some('#'))
            && c[i + 1..].iter().find(|&&x| x != '#') == Some(&'"')
        {
            let hashes = c[i + 1..].iter().take_while(|&&x| x == '#').count();
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            out.push('r');
            i += 2 + hashes;
            while i < c.len() && !c[i..].starts_with(&close) {
                blank(&mut out, c[i]);
                i += 1;
            }
            i += close.len();
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                let n = if c[i] == '\\' { 2 } else { 1 };
                for _ in 0..n.min(c.len() - i) {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            i += 1;
        } else if c[i] == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3;
        } else {
            // Code, or the quote of a lifetime.
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The module a path starting at `rest` (just after `crate::`) names:
/// its first segment, or each first segment of a `{a::B, c}` group.
fn first_segments(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    let word = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|&ch| ch.is_alphanumeric() || ch == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![word(rest)];
    };
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (k, ch) in group.char_indices() {
        if item_start && depth == 0 && !ch.is_whitespace() && ch != '}' {
            out.push(word(&group[k..]));
            item_start = false;
        }
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            _ => {}
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The top-level modules `code` (blanked) names, with the line of each
/// first naming. `depth` is how deep the file's own module is (`src/x.rs`:
/// 1, `src/x/y.rs`: 2): a `super::` chain that climbs to the crate root
/// names a top-level module; a shorter one stays inside the file's own.
fn named_modules(code: &str, depth: usize) -> Vec<(String, usize)> {
    let bytes = code.as_bytes();
    let at_word_start = |k: usize| {
        k == 0 || !(bytes[k - 1].is_ascii_alphanumeric() || matches!(bytes[k - 1], b'_' | b'$'))
    };
    // Inline `mod name {` blocks deepen the module path.
    let mut inline_opened: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut out = Vec::new();
    let mut line = 1;
    let mut k = 0;
    while k < bytes.len() {
        let rest = &code[k..];
        match bytes[k] {
            b'\n' => line += 1,
            b'{' => braces += 1,
            b'}' => {
                braces = braces.saturating_sub(1);
                if inline_opened.last() == Some(&braces) {
                    inline_opened.pop();
                }
            }
            _ => {}
        }
        if at_word_start(k) && rest.starts_with("mod ") {
            let after = rest[4..].trim_start();
            let name_len = after
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .unwrap_or(after.len());
            if after[name_len..].trim_start().starts_with('{') {
                inline_opened.push(braces);
            }
        }
        if at_word_start(k) && rest.starts_with("crate::") {
            for m in first_segments(&rest[7..]) {
                out.push((m, line));
            }
            k += 7;
            continue;
        }
        if at_word_start(k) && rest.starts_with("super::") {
            let mut ups = 0;
            let mut tail = rest;
            while let Some(t) = tail.strip_prefix("super::") {
                ups += 1;
                tail = t.trim_start();
            }
            if ups >= depth + inline_opened.len() {
                for m in first_segments(tail) {
                    out.push((m, line));
                }
            }
            k += 7 * ups;
            continue;
        }
        k += 1;
    }
    out
}

/// The module graph of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> Graph {
    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(src, &mut all);
    all.sort();
    let module_of = |p: &Path| -> (String, usize) {
        let rel = p.strip_prefix(src).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let top = parts[0].trim_end_matches(".rs").to_string();
        let depth = if parts.last().is_some_and(|f| f == "mod.rs") {
            parts.len() - 1
        } else {
            parts.len()
        };
        (top, depth)
    };
    let modules: BTreeSet<String> = all
        .iter()
        .map(|p| module_of(p).0)
        .filter(|m| !["lib", "main", "layering", "cli"].contains(&m.as_str()))
        .collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for p in &all {
        let (from, depth) = module_of(p);
        if !modules.contains(&from) {
            continue;
        }
        let text = std::fs::read_to_string(p).unwrap();
        let code = blank_comments_and_strings(&text);
        for (to, line) in named_modules(&code, depth) {
            if to != from && modules.contains(&to) {
                let at = format!("{}:{line}", p.strip_prefix(src).unwrap().display());
                graph.get_mut(&from).unwrap().entry(to).or_insert(at);
            }
        }
    }
    graph
}

/// Every cycle's strongly connected group of modules (Tarjan), each with
/// one concrete cycle through it as `a -> b (file:line)` steps.
fn cycles(g: &Graph) -> Vec<String> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        groups: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        for w in t.g[v].keys() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.stack.contains(&w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                group.push(w);
                if w == v {
                    break;
                }
            }
            t.groups.push(group);
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        groups: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    let mut out = Vec::new();
    for mut group in t.groups.into_iter().filter(|s| s.len() > 1) {
        group.sort();
        // The shortest way from the group's first module back to itself.
        let start = group[0];
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'search: while let Some(v) = queue.pop_front() {
            for w in g[v].keys().map(String::as_str) {
                if !group.contains(&w) || prev.contains_key(w) {
                    continue;
                }
                prev.insert(w, v);
                if w == start {
                    break 'search;
                }
                queue.push_back(w);
            }
        }
        let mut path = vec![start];
        let mut at = prev[start];
        while at != start {
            path.push(at);
            at = prev[at];
        }
        path.push(start);
        path.reverse();
        let steps: Vec<String> = path
            .windows(2)
            .map(|s| format!("{} -> {} ({})", s[0], s[1], g[s[0]][s[1]]))
            .collect();
        out.push(format!(
            "modules {{{}}} import each other: {}",
            group.join(", "),
            steps.join(", ")
        ));
    }
    out
}

/// Each module's layer: 0 for modules that use no other, else one above
/// the highest module it uses (only meaningful without cycles).
fn layers(g: &Graph) -> BTreeMap<String, usize> {
    fn layer(g: &Graph, m: &str, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(&l) = memo.get(m) {
            return l;
        }
        let l = g[m]
            .keys()
            .map(|d| layer(g, d, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(m.to_string(), l);
        l
    }
    let mut memo = BTreeMap::new();
    for m in g.keys() {
        layer(g, m, &mut memo);
    }
    memo
}

#[test]
fn the_library_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = module_graph(&src);
    assert!(
        g.len() > 20 && g["ingest"].contains_key("spec"),
        "the scan found too little ({} modules): {g:?}",
        g.len()
    );
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between the mgear library's modules (move what the lower module \
         needs down, see README.md's map of the layers):\n{}",
        found.join("\n")
    );
    // `cargo test -p mgear layering -- --nocapture` prints the layers.
    let mut by_layer: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (m, l) in layers(&g) {
        by_layer.entry(l).or_default().push(m);
    }
    for (l, ms) in by_layer {
        println!("layer {l}: {}", ms.join(", "));
    }
}

/// Writes `text` as `src/p` of a fixture source tree, creating its folders.
fn write_fixture(src: &Path, p: &str, text: &str) {
    let p = src.join(p);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn a_cycle_is_found_and_named_with_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |p: &str, text: &str| write_fixture(src, p, text);
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n");
    // a -> b through a group import; b -> c through `super::super::` from
    // b's child module; c -> a through a plain path. Comments, doc links,
    // strings and raw strings naming d, and `super::` that stays inside
    // the file's own module, are no edges.
    write(
        "a.rs",
        "//! see [`crate::d`]\nuse crate::{\n    b::{X, Y},\n};\n\
         fn f() { let _ = \"crate::d\"; let _ = r#\"crate::d \"x\" \"#; let _ = '\"'; }\n\
         mod tests {\n    use super::f;\n}\n",
    );
    write(
        "b.rs",
        "pub mod inner;\npub struct X;\npub struct Y;\n/* crate::d */\n",
    );
    write("b/inner.rs", "use super::X;\nuse super::super::c::Z;\n");
    write("c.rs", "pub struct Z;\nfn g() -> crate::a::T { todo!() }\n");
    write("d.rs", "pub fn h() {}\n");
    let g = module_graph(src);
    let edges = |m: &str| g[m].keys().cloned().collect::<Vec<_>>();
    assert_eq!(edges("a"), ["b"]);
    assert_eq!(edges("b"), ["c"]);
    assert_eq!(edges("c"), ["a"]);
    assert!(edges("d").is_empty());
    assert_eq!(g["b"]["c"], "b/inner.rs:2");
    let found = cycles(&g);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0],
        "modules {a, b, c} import each other: a -> b (a.rs:2), b -> c (b/inner.rs:2), \
         c -> a (c.rs:2)"
    );
    // Without the back edge the same modules are layered, d at the bottom.
    write("c.rs", "pub struct Z;\n");
    let g = module_graph(src);
    assert!(cycles(&g).is_empty());
    let l = layers(&g);
    assert_eq!((l["c"], l["b"], l["a"], l["d"]), (0, 1, 2, 0));
}

/// Every `file:line` under `src` outside the binary (`main.rs`, `cli/`)
/// whose code (not comments or strings) names the identifier `name`.
fn named_in_the_library(src: &Path, name: &str) -> Vec<String> {
    fn walk(dir: &Path, src: &Path, name: &str, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(src).unwrap();
            if rel == Path::new("main.rs") || rel == Path::new("cli") {
                continue;
            }
            if p.is_dir() {
                walk(&p, src, name, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let code = blank_comments_and_strings(&std::fs::read_to_string(&p).unwrap());
                let ident = |c: char| c.is_alphanumeric() || c == '_';
                for (n, line) in code.lines().enumerate() {
                    let named = line.match_indices(name).any(|(i, _)| {
                        !line[..i].ends_with(ident) && !line[i + name.len()..].starts_with(ident)
                    });
                    if named {
                        out.push(format!("{}:{}", rel.display(), n + 1));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, name, &mut out);
    out
}

#[test]
fn the_library_uses_neither_clap_nor_anyhow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert!(
        src.join("cli").is_dir() && src.join("capture.rs").is_file(),
        "no sources at {}",
        src.display()
    );
    let found = named_in_the_library(&src, "clap");
    assert!(
        found.is_empty(),
        "library code names clap (flags belong in the binary's src/cli/, which parses them \
         into the library's typed plans): {}",
        found.join(", ")
    );
    let found = named_in_the_library(&src, "anyhow");
    assert!(
        found.is_empty(),
        "library code names anyhow (the library's errors are crate::Error, src/error.rs): {}",
        found.join(", ")
    );
}

#[test]
fn clap_outside_the_binary_is_found_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |p: &str, text: &str| write_fixture(src, p, text);
    // The binary may use clap; comments, strings and longer identifiers
    // are no use of it.
    write("main.rs", "mod cli;\nuse clap::Parser;\n");
    write("cli/capture.rs", "#[derive(clap::Args)]\npub struct Cli;\n");
    write(
        "capture.rs",
        "//! not clap: a comment\nfn f() { let _ = \"clap\"; }\nfn clapper() {}\n\
         #[derive(Debug, clap::Args)]\npub struct Args;\n",
    );
    write("sync/mod.rs", "pub struct A;\nuse clap::Subcommand;\n");
    assert_eq!(
        named_in_the_library(src, "clap"),
        ["capture.rs:4", "sync/mod.rs:2"]
    );
    write(
        "ingest.rs",
        "fn f() -> anyhow::Result<()> { Ok(()) }
",
    );
    assert_eq!(named_in_the_library(src, "anyhow"), ["ingest.rs:1"]);
}

/// The workspace's tool crates: programs (and the tests driving them) that
/// sit above every library.
const TOOL_CRATES: [&str; 3] = ["mgear", "mgear-appliance-sim", "mgear-tests"];

#[test]
fn no_crate_depends_on_a_tool_crate() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(
        TOOL_CRATES.iter().all(|t| names.contains(t)) && names.contains("mgear-image-format"),
        "cargo metadata lists {names:?}"
    );
    let mut reaching_up = Vec::new();
    for p in packages {
        let from = p["name"].as_str().unwrap();
        for d in p["dependencies"].as_array().unwrap() {
            let to = d["name"].as_str().unwrap();
            // Only the end-to-end tests may pull the tools in (to run them).
            if TOOL_CRATES.contains(&to) && from != "mgear-tests" {
                reaching_up.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        reaching_up.is_empty(),
        "crates depending on a tool crate (move what they need into a library crate): {}",
        reaching_up.join(", ")
    );
}

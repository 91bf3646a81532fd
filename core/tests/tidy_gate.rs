//! Tidy checks for the tag gate (DESIGN.md invariants 5 and 6), by grepping the tree:
//!
//! - raw slices (`from_raw_parts`) are built only in `core::mem` (and the FFI places
//!   DESIGN.md allows: spdk-sys, the io_uring wrapper, the fio plugin);
//! - `core` has `unsafe` only in `core::mem`;
//! - every unsafe block in `core::mem` sits under a `// SAFETY:` comment, and every
//!   `unsafe fn` documents its contract in a `# Safety` section (or is a target_feature
//!   kernel whose only contract is the CPU feature);
//! - no `#[ignore]`d tests in `core`.

use std::fs;
use std::path::{Path, PathBuf};

/// How far above an unsafe block its SAFETY comment may start (multi-line comments and
/// a statement split over lines by rustfmt).
const SAFETY_LOOKBACK_LINES: usize = 8;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Cargo output (`build/`) and hidden directories hold no sources of ours.
        if name == "build" || name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn core_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rel(path: &Path) -> String {
    let root = core_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// This file names the banned patterns; build them so it does not flag itself.
fn banned(parts: &[&str]) -> String {
    parts.concat()
}

#[test]
fn raw_slices_only_in_allowed_modules() {
    let root = core_dir()
        .parent()
        .map(Path::to_path_buf)
        .expect("workspace root");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let pattern = banned(&["from_raw", "_parts"]);
    let allowed = |p: &str| {
        p.starts_with("core/src/mem/")
            || p.starts_with("spdk-sys/")
            || p.starts_with("tools/fio/")
            || p.contains("uring")
    };
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !allowed(&rel(f)))
        .filter_map(|f| {
            let text = fs::read_to_string(f).ok()?;
            let hits: Vec<usize> = code_lines(&text)
                .filter(|(_, l)| l.contains(&pattern))
                .map(|(i, _)| i + 1)
                .collect();
            (!hits.is_empty()).then(|| format!("{}:{hits:?}", rel(f)))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "raw slices outside core::mem: {offenders:?}"
    );
}

#[test]
fn core_has_unsafe_only_in_mem_and_every_block_says_why() {
    let mut files = Vec::new();
    rust_files(&core_dir().join("src"), &mut files);
    assert!(!files.is_empty());
    let unsafe_kw = banned(&["un", "safe"]);
    let mut problems = Vec::new();
    for f in &files {
        let path = rel(f);
        let text = fs::read_to_string(f).expect("readable source");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in code_lines(&text) {
            let has_block = line.contains(&format!("{unsafe_kw} {{"));
            let has_fn = line.contains(&format!("{unsafe_kw} fn"));
            let attr = line.contains(&format!("{unsafe_kw}_code"))
                || line.contains(&format!("{unsafe_kw}_op"));
            if !(has_block || has_fn) || attr {
                continue;
            }
            if !path.starts_with("core/src/mem/") {
                problems.push(format!("{path}:{}: unsafe outside core::mem", i + 1));
                continue;
            }
            let above = &lines[i.saturating_sub(SAFETY_LOOKBACK_LINES)..i];
            if has_block && !above.iter().any(|l| l.contains("// SAFETY:")) {
                problems.push(format!("{path}:{}: unsafe block without // SAFETY:", i + 1));
            }
            let documented = above
                .iter()
                .any(|l| l.contains("# Safety") || l.contains("#[target_feature"));
            if has_fn && !documented {
                problems.push(format!("{path}:{}: unsafe fn without # Safety", i + 1));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn no_ignored_tests_in_core() {
    let mut files = Vec::new();
    rust_files(&core_dir(), &mut files);
    let attr = banned(&["#[", "ignore"]);
    let hits: Vec<String> = files
        .iter()
        .filter(|f| {
            fs::read_to_string(f).is_ok_and(|t| code_lines(&t).any(|(_, l)| l.contains(&attr)))
        })
        .map(|f| rel(f))
        .collect();
    assert!(hits.is_empty(), "ignored tests: {hits:?}");
}

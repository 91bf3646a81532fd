//! The tidy test (after TigerBeetle's tidy.zig): greps the whole tree for patterns the
//! project bans, so the rules hold by construction rather than by review.
//!
//! - `unsafe` only where raw memory, FFI or the kernel's ring is handled (below), each
//!   block with a `// SAFETY:` line;
//! - raw slices over memory (`from_raw_parts`) only in `core::mem`;
//! - no `unwrap()`/`expect(` in the non-test code of wire-input parsers;
//! - no `#[ignore]`, `#[should_panic]`, `todo!`, `unimplemented!`;
//! - every crate root states its unsafe policy.

use std::path::{Path, PathBuf};

/// Where `unsafe` may appear: raw memory and mappings, the C bindings, the fio plugin's C
/// boundary and the io_uring submission wrappers (files, socket readiness); everything
/// else is safe Rust.
const UNSAFE_ALLOWED: &[&str] =
    &["core/src/mem/", "spdk-sys/", "tools/fio/", "bdev/src/modules/uring/sys.rs", "core/src/poll_ring.rs"];
/// Where raw slices over segment memory may be built.
const RAW_SLICES_ALLOWED: &[&str] = &["core/src/mem/", "spdk-sys/", "tools/fio/"];
/// Code that parses bytes from the wire or a socket: input errors must become statuses,
/// never panics.
const WIRE_PATHS: &[&str] = &[
    "core/src/rpc/stream.rs",
    "core/src/rpc/request.rs",
    "core/src/config.rs",
    "target/src/tcp/",
    "target/src/nvme/",
    "target/src/nvmf/auth/",
    "target/src/nvmf/qpair/auth_queue.rs",
];
/// Directories that hold build output or data, not source.
const SKIPPED_DIRS: &[&str] = &["build", ".git", "corpus", "artifacts", "results"];
const THIS_FILE: &str = "core/tests/tidy.rs";
/// How far above an `unsafe` its `// SAFETY:` (or `# Safety`) line may stand.
const SAFETY_LOOKBACK_LINES: usize = 8;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("core/ has a parent").to_path_buf()
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            // `target/` at the root is a crate; a `target/` anywhere else is cargo output.
            let cargo_output = name == "target" && dir != root;
            if !cargo_output && !SKIPPED_DIRS.contains(&name.as_str()) {
                rust_files(&path, root, out);
            }
        } else if name.ends_with(".rs") {
            let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((relative, text));
            }
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let root = repo_root();
    let mut files = Vec::new();
    rust_files(&root, &root, &mut files);
    assert!(files.len() > 10, "tidy found only {} Rust files under {}", files.len(), root.display());
    files
}

fn is_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.starts_with("//") || trimmed.starts_with("/*") || trimmed.starts_with('*')
}

/// The lines of a file before its `#[cfg(test)]` module, where production code lives.
fn production_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(index, line)| (index + 1, line))
}

fn allowed(path: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|prefix| path.starts_with(prefix))
}

fn has_word(line: &str, word: &str) -> bool {
    line.split(|c: char| !c.is_alphanumeric() && c != '_').any(|token| token == word)
}

#[test]
fn unsafe_stays_where_design_allows_it_and_says_why() {
    let mut problems = Vec::new();
    for (path, text) in all_sources() {
        if path == THIS_FILE {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if is_comment(line) || !has_word(line, "unsafe") {
                continue;
            }
            if !allowed(&path, UNSAFE_ALLOWED) {
                problems.push(format!("{path}:{}: `unsafe` outside the modules allowed to hold it", index + 1));
                continue;
            }
            let start = index.saturating_sub(SAFETY_LOOKBACK_LINES);
            let justified =
                lines[start..=index].iter().any(|near| near.contains("SAFETY:") || near.contains("# Safety"));
            if !justified {
                problems.push(format!("{path}:{}: `unsafe` without a `// SAFETY:` line above it", index + 1));
            }
        }
    }
    assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
}

#[test]
fn raw_slices_are_built_only_in_core_mem() {
    let mut problems = Vec::new();
    for (path, text) in all_sources() {
        if path == THIS_FILE || allowed(&path, RAW_SLICES_ALLOWED) {
            continue;
        }
        for (number, line) in text.lines().enumerate() {
            let raw = line.contains("from_raw_parts") || line.contains("as *const u8") || line.contains("as *mut u8");
            if !is_comment(line) && raw {
                problems.push(format!("{path}:{}: raw memory access outside core::mem (use a CpuView)", number + 1));
            }
        }
    }
    assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
}

#[test]
fn wire_parsers_do_not_unwrap() {
    let mut problems = Vec::new();
    for (path, text) in all_sources() {
        // Test modules that live in their own file are test code like inline ones.
        if !allowed(&path, WIRE_PATHS) || path.ends_with("/tests.rs") || path.contains("/tests/") {
            continue;
        }
        for (number, line) in production_lines(&text) {
            if !is_comment(line) && (line.contains(".unwrap()") || line.contains(".expect(")) {
                problems.push(format!("{path}:{number}: unwrap/expect on a wire-input path; return an error instead"));
            }
        }
    }
    assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
}

#[test]
fn no_ignored_tests_and_no_stubs() {
    let banned = ["#[ignore", "#[should_panic", "todo!(", "unimplemented!("];
    let mut problems = Vec::new();
    for (path, text) in all_sources() {
        if path == THIS_FILE {
            continue;
        }
        for (number, line) in text.lines().enumerate() {
            for pattern in banned {
                if !is_comment(line) && line.contains(pattern) {
                    problems.push(format!("{path}:{}: `{pattern}` is banned (STYLE.md)", number + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
}

#[test]
fn every_crate_root_states_its_unsafe_policy() {
    let mut problems = Vec::new();
    for (path, text) in all_sources() {
        let is_root = path.ends_with("src/lib.rs") || path.contains("src/bin/") || path.ends_with("src/main.rs");
        if !is_root || allowed(&path, &["spdk-sys/", "tools/fio/"]) {
            continue;
        }
        if !text.contains("#![forbid(unsafe_code)]") && !text.contains("#![deny(unsafe_code)]") {
            problems.push(format!("{path}: crate root without #![forbid(unsafe_code)] or #![deny(unsafe_code)]"));
        }
    }
    assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
}

#[test]
fn tidy_sees_what_it_is_meant_to_see() {
    // Guard against a walker that silently skips the tree.
    let sources = all_sources();
    for expected in ["core/src/reactor/thread.rs", "target/src/app.rs", "target/src/bin/peerless-tgt.rs", THIS_FILE] {
        assert!(sources.iter().any(|(path, _)| path == expected), "tidy did not read {expected}");
    }
    assert!(!sources.iter().any(|(path, _)| path.starts_with("build/")), "tidy read cargo output");
}

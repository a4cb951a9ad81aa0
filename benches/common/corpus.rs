//! Realistic, compressible benchmark content: the machine's own library and data files (shared
//! objects, headers, locale data, documentation), never random bytes, so codec speeds resemble
//! those of a container image layer.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Trees the corpus is drawn from, interleaved file by file so every part of the corpus mixes
/// machine code with text.
const ROOTS: [&str; 2] = ["/usr/lib", "/usr/share"];

/// Regular files under `root` in name order (symlinks skipped, unreadable entries ignored).
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        // Reversed so the stack visits sub-directories in name order.
        for e in entries.into_iter().rev() {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file() {
                out.push(e.path());
            }
        }
    }
    out.reverse();
    out
}

/// `len` bytes of file contents from [`ROOTS`], deterministic for a given machine. Panics if
/// the trees hold less than `len` bytes (a benchmark cannot run without its input).
pub fn corpus(len: usize) -> Vec<u8> {
    let lists: Vec<Vec<PathBuf>> = ROOTS.iter().map(|r| files_under(Path::new(r))).collect();
    let mut out = Vec::with_capacity(len);
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    'fill: for i in 0..longest {
        for list in &lists {
            let Some(path) = list.get(i) else { continue };
            let Ok(file) = fs::File::open(path) else {
                continue;
            };
            let want = (len - out.len()) as u64;
            let _ = file.take(want).read_to_end(&mut out);
            if out.len() >= len {
                break 'fill;
            }
        }
    }
    assert_eq!(out.len(), len, "{ROOTS:?} hold only {} bytes", out.len());
    out
}

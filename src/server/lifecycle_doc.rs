//! `LIFECYCLE.md` names the line that keeps each invariant. Lines move
//! when code changes; this catches a reference that no longer points at
//! code (past the end, a blank line, a lone brace or a comment), which is
//! what a moved line usually lands on.

use std::path::Path;

#[test]
fn every_line_lifecycle_md_names_is_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let doc = std::fs::read_to_string(dir.join("server/LIFECYCLE.md")).unwrap();
    let mut checked = 0;
    for reference in doc.split('`').skip(1).step_by(2) {
        let Some((file, line)) = reference.split_once(".rs:") else {
            continue;
        };
        let line: usize = line.parse().unwrap();
        // Relative to src/server/, else to src/ (`client/h1.rs`, `h2send.rs`).
        let path = Some(dir.join(format!("server/{file}.rs")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| dir.join(format!("{file}.rs")));
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.lines().nth(line - 1).unwrap_or("").trim();
        let not_code = code.is_empty()
            || matches!(code, "{" | "}" | "};" | "})" | "});")
            || code.starts_with("//");
        assert!(
            !not_code,
            "LIFECYCLE.md: `{reference}` points at `{code}`; find the line that keeps the invariant now"
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} references found");
}

//! Every config shipped in experiments/configs/ (and the built-in suites of configs/reproduce/)
//! resolves and validates.

use std::path::{Path, PathBuf};

use experiments::config::{self, TaskKind};

#[test]
fn shipped_configs_resolve() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let files = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    };
    let mut names = Vec::new();
    for path in files(&dir).into_iter().chain(files(&dir.join("reproduce"))) {
        let text = std::fs::read_to_string(&path).unwrap();
        let c = config::parse(&text, &path.display().to_string(), &[])
            .unwrap_or_else(|e| panic!("{e:#}"));
        // The corpus of the bytes task is fetched separately (scripts/fetch-shakespeare).
        if c.task.kind != TaskKind::Bytes {
            config::validate(&c).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        names.push(match path.parent() == Some(dir.as_path()) {
            true => stem,
            false => format!("reproduce/{stem}"),
        });
    }
    assert_eq!(
        names,
        [
            "demo",
            "induction_heads",
            "mamba2",
            "mqar",
            "scaling",
            "selective_copying",
            "shakespeare",
            "reproduce/induction_heads",
            "reproduce/mqar",
            "reproduce/selective_copying"
        ]
    );
    let demo = config::parse(experiments::demo::DEMO_CONFIG, "demo", &[]).unwrap();
    assert_eq!(demo.task.kind, TaskKind::InductionHeads);
}

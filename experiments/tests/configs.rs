//! Every config shipped in experiments/configs/ resolves and validates.

use std::path::Path;

use experiments::config::{self, TaskKind};

#[test]
fn shipped_configs_resolve() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let c = config::parse(&text, &path.display().to_string(), &[])
            .unwrap_or_else(|e| panic!("{e:#}"));
        // The corpus of the bytes task is fetched separately (scripts/fetch-shakespeare).
        if c.task.kind != TaskKind::Bytes {
            config::validate(&c).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
        names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "demo",
            "induction_heads",
            "mqar",
            "selective_copying",
            "shakespeare"
        ]
    );
    let demo = config::parse(experiments::demo::DEMO_CONFIG, "demo", &[]).unwrap();
    assert_eq!(demo.task.kind, TaskKind::InductionHeads);
}

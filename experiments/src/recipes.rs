//! Per-architecture training recipes and seeds, for comparisons on equal terms where each
//! architecture still trains the way that suits it.
//!
//! A `[train.<arch>]` section (`[train.mamba]`, `[train.transformer]`, `[train.hybrid]`) holds
//! `[train]` keys that override the shared `[train]` for that architecture only; nested tables
//! (`[train.transformer.adamw]`) merge key by key. The run's resolved config keeps only the merged
//! `[train]` of its own architecture. A `--set train.K=V` (or a sweep axis on `train.K`) is the
//! last word for every architecture: it replaces `K` in the per-architecture sections too; `--set
//! train.<arch>.K=V` changes one architecture's.
//!
//! A top-level `seeds = [0, 1, 2]` key is read by `compare` and `demo` (and replaced by their
//! `--seeds`): every architecture is trained once per seed, as the config's `seed`.

use anyhow::{Result, anyhow, bail};

use crate::config::{Arch, TrainConfig};
use crate::toml_keys::from_table_at;

/// Moves the `[train.<arch>]` sections out of `table`'s `[train]`, checks the keys of each, and
/// leaves in `[train]` the merge for `arch`. `overrides` are the `--set`
/// assignments already applied to `table`.
pub fn merge_train_sections(
    table: &mut toml::Table,
    arch: &str,
    overrides: &[String],
    origin: &str,
) -> Result<()> {
    let Some(toml::Value::Table(train)) = table.get_mut("train") else {
        return Ok(());
    };
    let shared_overrides: Vec<Vec<&str>> = overrides
        .iter()
        .filter_map(|o| o.split_once('=').map(|(k, _)| k.trim()))
        .filter_map(|k| k.strip_prefix("train."))
        .map(|k| k.split('.').collect::<Vec<_>>())
        .filter(|parts| Arch::parse(parts[0]).is_none())
        .collect();
    let mut chosen = None;
    for a in Arch::ALL {
        let name = a.name();
        let Some(section) = train.remove(name) else {
            continue;
        };
        let toml::Value::Table(mut section) = section else {
            bail!(
                "{origin}: config key `train.{name}`: must be a table of [train] keys for the {name} architecture"
            );
        };
        for parts in &shared_overrides {
            remove_path(&mut section, parts);
        }
        // The section alone: its own keys and types, named by their full path.
        from_table_at::<TrainConfig>(section.clone(), origin, &format!("train.{name}"))?;
        if name == arch {
            let mut merged = train.clone();
            merge(&mut merged, section);
            chosen = Some(merged);
        }
    }
    if let Some(merged) = chosen {
        *train = merged;
    }
    Ok(())
}

/// Copies every key of `over` into `base`, merging tables key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn remove_path(table: &mut toml::Table, parts: &[&str]) {
    match parts {
        [] => {}
        [last] => {
            table.remove(*last);
        }
        [first, rest @ ..] => {
            if let Some(toml::Value::Table(t)) = table.get_mut(*first) {
                remove_path(t, rest);
            }
        }
    }
}

/// The seeds of a comparison: `flag` (`--seeds 0,1,2`) when given, else the top-level `seeds` key
/// of the config `table` (its `--set` overrides applied), else its `seed` (default 0). Duplicates
/// are refused.
pub fn seeds(table: &toml::Table, flag: Option<&str>, origin: &str) -> Result<Vec<u64>> {
    let seeds = match (flag, table.get("seeds")) {
        (Some(text), _) => text
            .split(',')
            .map(|s| {
                s.trim().parse::<u64>().map_err(|_| {
                    anyhow!("--seeds: {s:?} is not a seed (expected a list like 0,1,2)")
                })
            })
            .collect::<Result<Vec<_>>>()?,
        (None, Some(value)) => value
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_integer().and_then(|i| u64::try_from(i).ok()))
                    .collect::<Option<Vec<u64>>>()
            })
            .ok_or_else(|| {
                anyhow!("{origin}: config key `seeds`: must be a list of seeds like [0, 1, 2]")
            })?,
        (None, None) => {
            let seed = match table.get("seed") {
                None => 0,
                Some(v) => v
                    .as_integer()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| anyhow!("{origin}: config key `seed`: must be a seed >= 0"))?,
            };
            vec![seed]
        }
    };
    let what = if flag.is_some() {
        "--seeds".to_string()
    } else {
        format!("{origin}: config key `seeds`")
    };
    if seeds.is_empty() {
        bail!("{what}: name at least one seed");
    }
    if let Some(s) = first_repeat(&seeds) {
        bail!("{what}: seed {s} is named twice");
    }
    Ok(seeds)
}

/// The first element of `xs` that an earlier one equals.
pub fn first_repeat<T: PartialEq>(xs: &[T]) -> Option<&T> {
    xs.iter()
        .enumerate()
        .find_map(|(i, x)| xs[..i].contains(x).then_some(x))
}

/// The `[train]` keys whose resolved values differ between `trains`, as "key: v1 / v2 / ...".
pub fn differences(trains: &[&TrainConfig]) -> Vec<String> {
    let tables: Vec<toml::Table> = trains
        .iter()
        .map(|t| toml::Table::try_from(t).expect("train configs serialize"))
        .collect();
    let mut out = Vec::new();
    flat_differences(&tables.iter().collect::<Vec<_>>(), "train", &mut out);
    out
}

fn flat_differences(tables: &[&toml::Table], prefix: &str, out: &mut Vec<String>) {
    for (k, v) in tables[0] {
        let key = format!("{prefix}.{k}");
        let values: Vec<Option<&toml::Value>> = tables.iter().map(|t| t.get(k)).collect();
        if let toml::Value::Table(_) = v {
            let subs: Vec<&toml::Table> = values
                .iter()
                .filter_map(|v| v.and_then(toml::Value::as_table))
                .collect();
            if subs.len() == tables.len() {
                flat_differences(&subs, &key, out);
            }
        } else if values.iter().any(|x| *x != values[0]) {
            let shown: Vec<String> = values
                .iter()
                .map(|v| v.map_or("-".into(), ToString::to_string))
                .collect();
            out.push(format!("{key}: {}", shown.join(" / ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::resolve;

    const TEXT: &str = "[train]\nlr = 1e-3\nsteps = 100\n[train.adamw]\nbeta2 = 0.99\n\
        [train.transformer]\nlr = 5e-4\nwarmup_steps = 7\n[train.transformer.adamw]\nweight_decay = 0.0\n";

    #[test]
    fn each_architecture_gets_its_section_over_the_shared_keys() {
        let m = resolve(TEXT, "t", &["model.arch=mamba".into()]).unwrap();
        assert_eq!(
            (m.train.lr, m.train.warmup_steps, m.train.steps),
            (1e-3, 100, 100)
        );
        assert_eq!(m.train.adamw.weight_decay, 0.1);
        let t = resolve(TEXT, "t", &["model.arch=transformer".into()]).unwrap();
        assert_eq!(
            (t.train.lr, t.train.warmup_steps, t.train.steps),
            (5e-4, 7, 100)
        );
        assert_eq!(
            (t.train.adamw.weight_decay, t.train.adamw.beta2),
            (0.0, 0.99)
        );
        // The run's config is the merge, without sections, and resolves to itself.
        assert!(!t.to_toml().contains("[train.transformer"));
        assert_eq!(resolve(&t.to_toml(), "again", &[]).unwrap(), t);
    }

    #[test]
    fn a_shared_override_reaches_every_architecture_and_a_sectioned_one_only_its_own() {
        let all = ["model.arch=transformer".into(), "train.lr=2e-3".into()];
        assert_eq!(resolve(TEXT, "t", &all).unwrap().train.lr, 2e-3);
        let one = [
            "model.arch=transformer".into(),
            "train.transformer.lr=3e-3".into(),
        ];
        assert_eq!(resolve(TEXT, "t", &one).unwrap().train.lr, 3e-3);
        let other = [
            "model.arch=mamba".into(),
            "train.transformer.lr=3e-3".into(),
        ];
        assert_eq!(resolve(TEXT, "t", &other).unwrap().train.lr, 1e-3);
        let nested = [
            "model.arch=transformer".into(),
            "train.adamw.weight_decay=0.05".into(),
        ];
        assert_eq!(
            resolve(TEXT, "t", &nested)
                .unwrap()
                .train
                .adamw
                .weight_decay,
            0.05
        );
    }

    #[test]
    fn a_bad_key_in_any_section_is_named_even_for_another_architecture() {
        let text = "[train.transformer]\nlrr = 1\n";
        let e = resolve(text, "t", &["model.arch=mamba".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.transformer.lrr"), "{e}");
        let e = resolve("[train.hybrid]\nlr = \"fast\"\n", "t", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.hybrid.lr"), "{e}");
        let e = resolve("[train]\nmamba = 3\n", "t", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.mamba"), "{e}");
    }

    #[test]
    fn seeds_come_from_the_flag_the_key_or_the_seed() {
        let table: toml::Table = toml::from_str("seed = 4\nseeds = [1, 2]\n").unwrap();
        assert_eq!(super::seeds(&table, Some("7, 8"), "t").unwrap(), [7, 8]);
        assert_eq!(super::seeds(&table, None, "t").unwrap(), [1, 2]);
        let only_seed: toml::Table = toml::from_str("seed = 4\n").unwrap();
        assert_eq!(super::seeds(&only_seed, None, "t").unwrap(), [4]);
        for (flag, text, needle) in [
            (Some("1,x"), "", "--seeds"),
            (Some("1,1"), "", "named twice"),
            (None, "seeds = [1, -2]", "`seeds`"),
            (None, "seeds = []", "at least one"),
        ] {
            let table: toml::Table = toml::from_str(text).unwrap();
            let e = super::seeds(&table, flag, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn differences_list_only_the_keys_that_differ() {
        let m = resolve(TEXT, "t", &["model.arch=mamba".into()]).unwrap();
        let t = resolve(TEXT, "t", &["model.arch=transformer".into()]).unwrap();
        assert_eq!(
            super::differences(&[&m.train, &t.train]),
            [
                "train.adamw.weight_decay: 0.1 / 0.0",
                "train.lr: 0.001 / 0.0005",
                "train.warmup_steps: 100 / 7"
            ]
        );
    }
}

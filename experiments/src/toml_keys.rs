//! Reading TOML into typed configs: dotted `--set` overrides, deserialization whose errors name
//! the dotted key (also below the tables serde's `flatten` hides), and the migration of keys an
//! older version of the config wrote elsewhere.

use anyhow::{Result, anyhow, bail};
use serde::de::DeserializeOwned;
use ssm::models::{AttentionConfig, MambaMixerConfig};

/// Deserializes `table`, reporting the dotted key path of the first problem.
pub fn from_table<T: DeserializeOwned>(table: toml::Table, origin: &str) -> Result<T> {
    from_table_at(table, origin, "")
}

/// `from_table` of the table found at the dotted key `prefix` ("" for the whole config).
pub fn from_table_at<T: DeserializeOwned>(
    table: toml::Table,
    origin: &str,
    prefix: &str,
) -> Result<T> {
    let doc = toml::Value::Table(table);
    serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
        let path = narrowed::<T>(&doc, segments(e.path())).join(".");
        let inner = e.into_inner();
        let inner = inner.message().trim();
        let path = match (prefix, path.as_str()) {
            ("", "") => return anyhow!("{origin}: {inner}"),
            (p, "") => p.to_string(),
            ("", path) => path.to_string(),
            (p, path) => format!("{p}.{path}"),
        };
        anyhow!("{origin}: config key `{path}`: {inner}")
    })
}

fn segments(path: &serde_path_to_error::Path) -> Vec<String> {
    path.iter().map(|s| s.to_string()).collect()
}

/// The path of a deserialization error, narrowed below the tables that serde's `flatten` hides:
/// the model configs flatten their layers' settings (`d_state` of `[model.mamba]`), and an error
/// inside a flattened struct carries only the path of its table (dtolnay/path-to-error#9). Each
/// key of that table is tried alone, the rest of `doc` unchanged, until one that still fails
/// there is found; its sub-tables are searched the same way.
fn narrowed<T: DeserializeOwned>(doc: &toml::Value, mut path: Vec<String>) -> Vec<String> {
    let table_at = |doc: &toml::Value, path: &[String]| {
        path.iter()
            .try_fold(doc, |v, k| v.get(k.as_str()))
            .and_then(toml::Value::as_table)
            .cloned()
    };
    while let Some(table) = table_at(doc, &path) {
        let fails_alone = |key: &String, value: &toml::Value| {
            let mut probe = doc.clone();
            let slot = path
                .iter()
                .try_fold(&mut probe, |v, k| v.get_mut(k.as_str()))
                .expect("the table was found there");
            *slot = toml::Value::Table(toml::Table::from_iter([(key.clone(), value.clone())]));
            // At or below the table, or at a flattened table above it.
            serde_path_to_error::deserialize::<_, T>(probe).is_err_and(|e| {
                let at = segments(e.path());
                at.starts_with(&path) || path.starts_with(&at)
            })
        };
        match table.iter().find(|(k, v)| fails_alone(k, v)) {
            Some((key, _)) => path.push(key.clone()),
            None => break,
        }
    }
    path
}

/// Sets one dotted key of `table`. The value is read as TOML (`64`, `1e-3`, `true`, `[64, 128]`,
/// `"text"`); anything that does not parse is taken as a string (`task.kind=mqar`).
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {assignment}: expected key=value"))?;
    let key = key.trim();
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {assignment}: `{key}` is not a dotted key");
    }
    let mut t = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| {
            anyhow!(
                "--set {assignment}: config key `{}` is not a table",
                parts[..=i].join(".")
            )
        })?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// A TOML value from command-line text; bare words become strings.
pub fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Moves the layer settings that `[model.hybrid]` held flat before they got tables of their own
/// (`d_state` → `[model.hybrid.mamba]`, `n_heads` → `[model.hybrid.attention]`), so that the run
/// folders written then still resume, plot and compare.
pub(crate) fn migrate_hybrid_keys(table: &mut toml::Table, origin: &str) {
    let Some(hybrid) = table
        .get_mut("model")
        .and_then(|m| m.get_mut("hybrid"))
        .and_then(toml::Value::as_table_mut)
    else {
        return;
    };
    // Every field of each table, the optional ones set so that they serialize.
    fn fields_of(c: impl serde::Serialize) -> toml::Table {
        toml::Table::try_from(c).expect("configs serialize to TOML")
    }
    let mamba = MambaMixerConfig {
        dt_rank: Some(1),
        ..Default::default()
    };
    let attention = AttentionConfig {
        n_kv_heads: Some(1),
        mlp_hidden: Some(1),
        ..Default::default()
    };
    let tables = [
        ("mamba", fields_of(mamba)),
        ("attention", fields_of(attention)),
    ];
    for (name, fields) in tables {
        let old: Vec<String> = hybrid
            .keys()
            .filter(|k| fields.contains_key(k.as_str()))
            .cloned()
            .collect();
        for key in old {
            let value = hybrid.remove(&key).expect("listed above");
            tracing::info!("{origin}: `model.hybrid.{key}` is read as `model.hybrid.{name}.{key}`");
            let sub = hybrid
                .entry(name)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(sub) = sub.as_table_mut() {
                sub.entry(key).or_insert(value);
            }
        }
    }
}

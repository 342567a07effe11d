//! Run configuration: a typed TOML file where every field has a documented default, `--set
//! key=value` overrides of any key, and validation of everything (shapes, files, ranges) before a
//! run folder is created. Unknown keys and wrong types are errors that name the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use ssm::models::hybrid::HybridConfig;
use ssm::models::transformer::TransformerConfig;
use ssm::models::{Mamba2Config, MambaConfig, ModelConfig as AnyConfig};
use ssm::optim::AdamWConfig;

use crate::toml_keys::{apply_override, from_table, migrate_hybrid_keys};

/// One training run: `out_dir/name/` receives the resolved config, metrics, checkpoints, plots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Folder name of the run under `out_dir` (default "run").
    pub name: String,
    /// Parent folder of run folders (default "runs").
    pub out_dir: PathBuf,
    /// Seeds the model initialisation and every data stream (default 0).
    pub seed: u64,
    /// CPU threads; 0 means one per core (default 0). Bit-identical resume needs the same count.
    pub threads: usize,
    pub task: TaskConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "run".into(),
            out_dir: "runs".into(),
            seed: 0,
            threads: 0,
            task: TaskConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    SelectiveCopying,
    InductionHeads,
    Mqar,
    Bytes,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::SelectiveCopying => "selective_copying",
            TaskKind::InductionHeads => "induction_heads",
            TaskKind::Mqar => "mqar",
            TaskKind::Bytes => "bytes",
        }
    }
}

/// `[task]`: what the model learns. Only the section of the chosen `kind` may be given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// selective_copying | induction_heads | mqar | bytes (default mqar).
    pub kind: TaskKind,
    /// Training length (default 64). For selective copying it is L, the noise positions: the
    /// model reads L + 2M tokens.
    pub seq_len: usize,
    /// Vocabulary: A for selective copying (default 16), V for induction heads (16) and MQAR
    /// (8192); bytes always use 256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selective_copying: Option<SelectiveCopyingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqar: Option<MqarConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<BytesConfig>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            kind: TaskKind::Mqar,
            seq_len: 64,
            vocab_size: None,
            selective_copying: None,
            mqar: None,
            bytes: None,
        }
    }
}

/// `[task.selective_copying]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectiveCopyingConfig {
    /// M, the data tokens to copy (default 16).
    pub num_tokens: usize,
}

impl Default for SelectiveCopyingConfig {
    fn default() -> Self {
        SelectiveCopyingConfig { num_tokens: 16 }
    }
}

/// `[task.mqar]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqarConfig {
    /// K, the key-value pairs (default 8).
    pub num_pairs: usize,
    /// a of the gap distribution p_i ∝ a·i^(a-1) (default 0.01, zoology's).
    pub power_a: f64,
}

impl Default for MqarConfig {
    fn default() -> Self {
        MqarConfig {
            num_pairs: 8,
            power_a: 0.01,
        }
    }
}

/// `[task.bytes]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BytesConfig {
    /// A text file, or a folder of documents (one per file), read as bytes (default
    /// data/shakespeare, one file per play; see scripts/fetch-shakespeare).
    pub path: PathBuf,
    /// Share held out for validation (default 0.1): the end of a file, or every k-th document of
    /// a folder in name order, k = round(1 / val_fraction).
    pub val_fraction: f64,
}

impl Default for BytesConfig {
    fn default() -> Self {
        BytesConfig {
            path: "data/shakespeare".into(),
            val_fraction: 0.1,
        }
    }
}

/// Sequence mixers the runner can train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Mamba,
    Mamba2,
    Transformer,
    Hybrid,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::Mamba, Arch::Mamba2, Arch::Transformer, Arch::Hybrid];

    /// The architecture of a config name ("mamba", ...).
    pub fn parse(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Mamba => "mamba",
            Arch::Mamba2 => "mamba2",
            Arch::Transformer => "transformer",
            Arch::Hybrid => "hybrid",
        }
    }
}

/// `[model]`: the architecture and one section per architecture (`[model.mamba]`,
/// `[model.mamba2]`, `[model.transformer]`, `[model.hybrid]`: ssm's configs with their
/// defaults), so that a
/// config can hold several and a sweep can switch `model.arch`; only the chosen one is used.
/// `vocab_size` comes from the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// mamba (default), mamba2, transformer or hybrid.
    pub arch: Arch,
    /// `[model.mamba]`: ssm's MambaConfig, whose defaults are mamba_simple's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mamba: Option<MambaConfig>,
    /// `[model.mamba2]`: ssm's Mamba2Config, whose mixer defaults are mamba_ssm's `Mamba2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mamba2: Option<Mamba2Config>,
    /// `[model.transformer]`: ssm's TransformerConfig (RoPE, SwiGLU, tied embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerConfig>,
    /// `[model.hybrid]`: ssm's HybridConfig (a layer pattern such as "MMAMMA").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hybrid: Option<HybridConfig>,
    /// Start from the weights of this folder instead of a random initialisation (fine-tuning): a
    /// Hugging Face Mamba or Mamba-2 folder, a run folder or a training checkpoint. The chosen
    /// architecture's keys must describe the same model, tensor for tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::Mamba,
            mamba: None,
            mamba2: None,
            transformer: None,
            hybrid: None,
            init_from: None,
        }
    }
}

/// `[train]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps (default 1000).
    pub steps: u64,
    /// Sequences per micro-batch (default 16).
    pub batch_size: usize,
    /// Micro-batches per step; gradients are averaged over them (default 1).
    pub grad_accum: usize,
    /// Peak learning rate (default 1e-3).
    pub lr: f64,
    /// Learning rate at the end of the cosine decay (default 1e-4).
    pub min_lr: f64,
    /// Linear warm-up steps (default 100).
    pub warmup_steps: u64,
    /// Global gradient-norm clip; 0 disables it (default 1.0).
    pub clip_grad_norm: f64,
    /// A metrics row every this many steps (default 1).
    pub log_every: u64,
    /// Evaluation every this many steps; 0 means only at the end (default 0).
    pub eval_every: u64,
    /// Checkpoint every this many steps; 0 means only at the end (default 100).
    pub checkpoint_every: u64,
    /// `[train.adamw]`: beta1 0.9, beta2 0.95, eps 1e-8, weight_decay 0.1.
    pub adamw: AdamWConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            clip_grad_norm: 1.0,
            log_every: 1,
            eval_every: 0,
            checkpoint_every: 100,
            adamw: AdamWConfig::default(),
        }
    }
}

/// `[eval]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Test lengths (same meaning as task.seq_len); empty means the training length (default []).
    pub lengths: Vec<usize>,
    /// Batches per length (default 4).
    pub batches: usize,
    /// Sequences per batch; 0 means train.batch_size (default 0).
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            lengths: Vec::new(),
            batches: 4,
            batch_size: 0,
        }
    }
}

impl RunConfig {
    /// The run folder.
    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }

    /// The evaluation lengths, the training length when none are given.
    pub fn eval_lengths(&self) -> Vec<usize> {
        if self.eval.lengths.is_empty() {
            vec![self.task.seq_len]
        } else {
            self.eval.lengths.clone()
        }
    }

    pub fn eval_batch_size(&self) -> usize {
        if self.eval.batch_size == 0 {
            self.train.batch_size
        } else {
            self.eval.batch_size
        }
    }

    /// The vocabulary of the task (see `TaskConfig::vocab_size`).
    pub fn task_vocab(&self) -> usize {
        match self.task.kind {
            TaskKind::Bytes => 256,
            TaskKind::SelectiveCopying | TaskKind::InductionHeads => {
                self.task.vocab_size.unwrap_or(16)
            }
            TaskKind::Mqar => self.task.vocab_size.unwrap_or(8192),
        }
    }

    /// The library config of the chosen architecture, with its vocabulary set from the task.
    pub fn model_config(&self) -> AnyConfig {
        let vocab_size = self.task_vocab();
        match self.model.arch {
            Arch::Mamba => AnyConfig::Mamba(MambaConfig {
                vocab_size,
                ..self.model.mamba.clone().unwrap_or_default()
            }),
            Arch::Mamba2 => AnyConfig::Mamba2(Mamba2Config {
                vocab_size,
                ..self.model.mamba2.clone().unwrap_or_default()
            }),
            Arch::Transformer => AnyConfig::Transformer(TransformerConfig {
                vocab_size,
                ..self.model.transformer.clone().unwrap_or_default()
            }),
            Arch::Hybrid => AnyConfig::Hybrid(HybridConfig {
                vocab_size,
                ..self.model.hybrid.clone().unwrap_or_default()
            }),
        }
    }

    /// The resolved config as TOML, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialize to TOML")
    }
}

/// Parses `text` as a config, applies `overrides` ("key.path=value"), fills the sections of the
/// chosen task and architecture with their defaults and validates the result. `origin` names the
/// source in errors.
pub fn resolve(text: &str, origin: &str, overrides: &[String]) -> Result<RunConfig> {
    let config = parse(text, origin, overrides)?;
    validate(&config)?;
    Ok(config)
}

/// `resolve` without `validate`: for configs of finished runs, whose data files may have moved.
pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<RunConfig> {
    let mut table: toml::Table =
        toml::from_str(text).with_context(|| format!("{origin}: invalid TOML"))?;
    for (section, command) in [("sweep", "sweep"), ("scaling", "scaling")] {
        if table.remove(section).is_some() {
            tracing::info!(
                "{origin}: ignoring the [{section}] table, which `ssm-lab {command}` reads"
            );
        }
    }
    migrate_hybrid_keys(&mut table, origin);
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    if table.remove("seeds").is_some() {
        tracing::debug!("{origin}: ignoring the `seeds` key, which `compare` and `demo` read");
    }
    let arch = table
        .get("model")
        .and_then(|m| m.get("arch"))
        .and_then(toml::Value::as_str)
        .unwrap_or("mamba")
        .to_string();
    crate::recipes::merge_train_sections(&mut table, &arch, overrides, origin)?;
    let arch = arch.as_str();
    let explicit_vocab = table
        .get("model")
        .and_then(|m| m.get(arch))
        .and_then(|m| m.get("vocab_size"))
        .and_then(toml::Value::as_integer);
    let mut config: RunConfig = from_table(table, origin)?;
    fill_sections(&mut config, explicit_vocab.map(|v| v as usize))?;
    Ok(config)
}

/// Reads and resolves a config file.
pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    resolve(&text, &path.display().to_string(), overrides)
}

fn fill_sections(c: &mut RunConfig, explicit_vocab: Option<usize>) -> Result<()> {
    let kind = c.task.kind;
    let sections = [
        (
            "selective_copying",
            c.task.selective_copying.is_some(),
            TaskKind::SelectiveCopying,
        ),
        ("mqar", c.task.mqar.is_some(), TaskKind::Mqar),
        ("bytes", c.task.bytes.is_some(), TaskKind::Bytes),
    ];
    for (name, present, owner) in sections {
        if present && owner != kind {
            bail!(
                "config key `task.{name}`: this section belongs to task.kind = \"{name}\", but task.kind = \"{}\"",
                kind.name()
            );
        }
    }
    match kind {
        TaskKind::SelectiveCopying => {
            _ = c
                .task
                .selective_copying
                .get_or_insert_with(Default::default)
        }
        TaskKind::Mqar => _ = c.task.mqar.get_or_insert_with(Default::default),
        TaskKind::Bytes => _ = c.task.bytes.get_or_insert_with(Default::default),
        TaskKind::InductionHeads => {}
    }
    if kind == TaskKind::Bytes && c.task.vocab_size.is_some_and(|v| v != 256) {
        bail!("config key `task.vocab_size`: the bytes task has 256 symbols; leave it out");
    }
    let vocab = c.task_vocab();
    c.task.vocab_size = Some(vocab);
    let section = format!("model.{}.vocab_size", c.model.arch.name());
    let given = match c.model.arch {
        Arch::Mamba => {
            &mut c
                .model
                .mamba
                .get_or_insert_with(Default::default)
                .vocab_size
        }
        Arch::Mamba2 => {
            &mut c
                .model
                .mamba2
                .get_or_insert_with(Default::default)
                .vocab_size
        }
        Arch::Transformer => {
            &mut c
                .model
                .transformer
                .get_or_insert_with(Default::default)
                .vocab_size
        }
        Arch::Hybrid => {
            &mut c
                .model
                .hybrid
                .get_or_insert_with(Default::default)
                .vocab_size
        }
    };
    if explicit_vocab.is_some_and(|v| v != vocab) {
        bail!(
            "config key `{section}`: {} differs from the task's vocabulary {vocab}; leave it out",
            *given
        );
    }
    *given = vocab;
    Ok(())
}

fn positive(key: &str, v: usize) -> Result<()> {
    if v == 0 {
        Err(anyhow!("config key `{key}`: must be at least 1"))
    } else {
        Ok(())
    }
}

/// Every check that can fail before any file is written.
pub fn validate(c: &RunConfig) -> Result<()> {
    if c.name.is_empty() || c.name.contains(['/', '\\']) || c.name == "." || c.name == ".." {
        bail!("config key `name`: {:?} is not a plain folder name", c.name);
    }
    crate::limits::check_sizes(c)?;
    validate_task(c)?;
    let model = c.model_config();
    model
        .validate()
        .map_err(|e| anyhow!("config key `model.{}`: {e}", c.model.arch.name()))?;
    let t = &c.train;
    for (key, v) in [
        ("train.steps", t.steps as usize),
        ("train.batch_size", t.batch_size),
        ("train.grad_accum", t.grad_accum),
        ("train.log_every", t.log_every as usize),
    ] {
        positive(key, v)?;
    }
    if !(t.lr > 0.0 && t.lr.is_finite()) {
        bail!(
            "config key `train.lr`: must be a positive number, got {}",
            t.lr
        );
    }
    if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
        bail!(
            "config key `train.min_lr`: must lie in [0, train.lr = {}], got {}",
            t.lr,
            t.min_lr
        );
    }
    if !(t.clip_grad_norm >= 0.0 && t.clip_grad_norm.is_finite()) {
        bail!(
            "config key `train.clip_grad_norm`: must be >= 0 (0 disables clipping), got {}",
            t.clip_grad_norm
        );
    }
    let a = &t.adamw;
    for (key, beta) in [
        ("train.adamw.beta1", a.beta1),
        ("train.adamw.beta2", a.beta2),
    ] {
        if !(0.0..1.0).contains(&beta) {
            bail!("config key `{key}`: must lie in [0, 1), got {beta}");
        }
    }
    if !(a.eps > 0.0 && a.eps.is_finite() && a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
        bail!(
            "config key `train.adamw`: eps must be positive and weight_decay >= 0, got {} and {}",
            a.eps,
            a.weight_decay
        );
    }
    positive("eval.batches", c.eval.batches)?;
    crate::limits::check_run(c, &model)
}

fn validate_task(c: &RunConfig) -> Result<()> {
    let task = &c.task;
    let vocab = c.task_vocab();
    let mut lengths = vec![("task.seq_len", task.seq_len)];
    lengths.extend(c.eval_lengths().into_iter().map(|l| ("eval.lengths", l)));
    for &(key, l) in &lengths {
        positive(key, l)?;
    }
    match task.kind {
        TaskKind::SelectiveCopying => {
            if vocab < 3 {
                bail!(
                    "config key `task.vocab_size`: selective copying needs A >= 3 (noise 0, data 1..A-2, marker A-1), got {vocab}"
                );
            }
            positive(
                "task.selective_copying.num_tokens",
                task.selective_copying.as_ref().map_or(0, |s| s.num_tokens),
            )?;
        }
        TaskKind::InductionHeads => {
            if vocab < 3 {
                bail!(
                    "config key `task.vocab_size`: induction heads needs V >= 3 (trigger V-1 and two ordinary tokens), got {vocab}"
                );
            }
            for &(key, l) in &lengths {
                if l < 3 {
                    bail!(
                        "config key `{key}`: induction heads needs length >= 3 (trigger, answer, final trigger), got {l}"
                    );
                }
            }
        }
        TaskKind::Mqar => {
            let m = task.mqar.as_ref().expect("filled");
            positive("task.mqar.num_pairs", m.num_pairs)?;
            if !(m.power_a > 0.0 && m.power_a <= 1.0) {
                bail!(
                    "config key `task.mqar.power_a`: must lie in (0, 1], got {}",
                    m.power_a
                );
            }
            if m.num_pairs >= vocab / 2 || m.num_pairs > vocab - vocab / 2 {
                bail!(
                    "config key `task.mqar.num_pairs`: {} distinct keys do not fit in [1, V/2) with V = {vocab}",
                    m.num_pairs
                );
            }
            for &(key, l) in &lengths {
                if 4 * m.num_pairs > l || l % 2 != 0 {
                    bail!(
                        "config key `{key}`: MQAR needs an even length L with 4K <= L (K = task.mqar.num_pairs = {}), got L = {l}",
                        m.num_pairs
                    );
                }
                if vocab <= l {
                    bail!(
                        "config key `task.vocab_size`: MQAR needs V > L, got V = {vocab} and L = {l} (`{key}`)"
                    );
                }
            }
        }
        TaskKind::Bytes => {
            let b = task.bytes.as_ref().expect("filled");
            if !(b.val_fraction > 0.0 && b.val_fraction < 1.0) {
                bail!(
                    "config key `task.bytes.val_fraction`: must lie in (0, 1), got {}",
                    b.val_fraction
                );
            }
            let pieces = crate::tasks::bytes::split(&b.path, b.val_fraction)?;
            let (train, val) = crate::tasks::bytes::split_sizes(&pieces);
            for &(key, l) in &lengths {
                if train < l + 1 || val < l + 1 {
                    bail!(
                        "config key `{key}`: {} has {train} training and {val} validation bytes, too few for windows of {} bytes",
                        b.path.display(),
                        l + 1
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_nested_keys_and_parse_types() {
        let c = resolve(
            "[task]\nkind = \"mqar\"\n",
            "t",
            &[
                "train.lr=3e-3".into(),
                "model.mamba.d_model=32".into(),
                "task.kind=mqar".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.lr, 3e-3);
        assert_eq!(c.model.mamba.as_ref().unwrap().d_model, 32);
        assert_eq!(c.model.mamba.as_ref().unwrap().vocab_size, 8192);
    }

    #[test]
    fn errors_name_the_key() {
        let e = resolve("[train]\nlrr = 1\n", "t", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = resolve("[train]\nlr = \"fast\"\n", "t", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.lr"), "{e}");
        let e = resolve("", "t", &["model.arch=rnn".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.arch"), "{e}");
        let e = resolve(
            "",
            "t",
            &["task.kind=bytes".into(), "task.mqar.num_pairs=3".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("task.mqar"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        for arch in ["mamba", "transformer", "hybrid"] {
            let sets = [
                "task.kind=selective_copying".to_string(),
                format!("model.arch={arch}"),
            ];
            let c = resolve("", "t", &sets).unwrap();
            let again = resolve(&c.to_toml(), "again", &[]).unwrap();
            assert_eq!(c, again, "{arch}");
        }
    }

    /// A hybrid config written when `[model.hybrid]` held the layers' settings flat still loads.
    #[test]
    fn flat_hybrid_settings_of_older_runs_still_load() {
        let old = "[model]\narch = \"hybrid\"\n[model.hybrid]\npattern = \"MA\"\nd_state = 8\nn_heads = 2\n";
        let c = resolve(old, "t", &[]).unwrap();
        let AnyConfig::Hybrid(h) = c.model_config() else {
            panic!("{c:?}")
        };
        assert_eq!((h.mixers.mamba.d_state, h.mixers.attention.n_heads), (8, 2));
    }

    /// The layers' settings are flattened into the model tables, where serde alone would name
    /// only the table; the error still names the key.
    #[test]
    fn a_bad_layer_setting_names_its_key() {
        for (set, key) in [
            ("model.mamba.d_state=\"fast\"", "model.mamba.d_state"),
            ("model.transformer.n_heads=-1", "model.transformer.n_heads"),
            ("model.hybrid.mamba.expand=1.5", "model.hybrid.mamba.expand"),
            (
                "model.hybrid.attention.mlp=\"relu\"",
                "model.hybrid.attention.mlp",
            ),
        ] {
            let arch = key.split('.').nth(1).unwrap();
            let sets = [format!("model.arch={arch}"), set.to_string()];
            let e = resolve("", "t", &sets).unwrap_err().to_string();
            assert!(e.contains(&format!("config key `{key}`")), "{set}: {e}");
        }
    }
}

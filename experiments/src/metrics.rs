//! Result files: CSV tables written row by row (a killed run keeps every row it finished) and read
//! back for plots and summaries, and the peak resident memory of the process.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub const METRICS_FILE: &str = "metrics.csv";
pub const EVAL_FILE: &str = "eval.csv";
pub const METRICS_HEADER: [&str; 8] = [
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
    "peak_mem_mb",
];
pub const EVAL_HEADER: [&str; 6] = [
    "step",
    "split",
    "length",
    "loss",
    "accuracy",
    "bits_per_byte",
];
/// Columns of metrics.csv that depend on the machine's speed, not on the computation.
pub const TIMING_COLUMNS: [&str; 3] = ["tokens_per_s", "elapsed_s", "peak_mem_mb"];

/// A CSV file opened for appending rows. The file appears with its whole header at once (written
/// aside and renamed into place), and each row is a single write ending in a newline, so a kill
/// leaves complete rows and at worst a torn last line without its newline, which [`Table::read`]
/// ignores and the next [`CsvWriter::open`] cuts off.
pub struct CsvWriter {
    path: PathBuf,
    file: File,
    columns: usize,
}

impl CsvWriter {
    /// Creates `path` with `header`, or reopens it for appending after checking its header.
    pub fn open(path: &Path, header: &[&str]) -> Result<Self> {
        if path.exists() {
            let table = Table::read(path)?;
            if table.header != header {
                bail!(
                    "{}: columns {:?}, expected {:?}",
                    path.display(),
                    table.header,
                    header
                );
            }
            if table.torn {
                table.write(path)?;
            }
        } else {
            ssm::io::atomic_write(path, (header.join(",") + "\n").as_bytes())?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(CsvWriter {
            path: path.to_path_buf(),
            file,
            columns: header.len(),
        })
    }

    pub fn row(&mut self, cells: &[String]) -> Result<()> {
        assert_eq!(cells.len(), self.columns, "one cell per column");
        ssm::io::fault::point("write", &self.path);
        self.file
            .write_all((cells.join(",") + "\n").as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// A CSV file read into memory (no quoting: our files hold numbers and plain words).
#[derive(Clone, Debug)]
pub struct Table {
    pub path: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The file ended in a line without its newline: a row torn by a kill, left out of `rows`.
    pub torn: bool,
}

impl Table {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let torn = !text.is_empty() && !text.ends_with('\n');
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => bail!("{}: empty file, expected a CSV header line", path.display()),
        };
        let mut lines = complete.split('\n');
        let header: Vec<String> = lines
            .next()
            .expect("split yields a first piece")
            .split(',')
            .map(str::to_string)
            .collect();
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            let row: Vec<String> = line.split(',').map(str::to_string).collect();
            if row.len() != header.len() {
                bail!(
                    "{}: line {} has {} cells, the header {}",
                    path.display(),
                    i + 2,
                    row.len(),
                    header.len()
                );
            }
            rows.push(row);
        }
        Ok(Table {
            path: path.to_path_buf(),
            header,
            rows,
            torn,
        })
    }

    pub fn index(&self, column: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == column)
            .with_context(|| format!("{}: no column `{column}`", self.path.display()))
    }

    /// The column as numbers; empty cells become NaN.
    pub fn f64s(&self, column: &str) -> Result<Vec<f64>> {
        let i = self.index(column)?;
        self.rows
            .iter()
            .enumerate()
            .map(|(r, row)| {
                if row[i].is_empty() {
                    return Ok(f64::NAN);
                }
                row[i].parse().with_context(|| {
                    format!(
                        "{}: row {}, column `{column}`: {:?} is not a number",
                        self.path.display(),
                        r + 2,
                        row[i]
                    )
                })
            })
            .collect()
    }

    pub fn strings(&self, column: &str) -> Result<Vec<String>> {
        let i = self.index(column)?;
        Ok(self.rows.iter().map(|r| r[i].clone()).collect())
    }

    /// Writes the table atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = self.header.join(",") + "\n";
        for r in &self.rows {
            text += &(r.join(",") + "\n");
        }
        ssm::io::atomic_write(path, text.as_bytes())?;
        Ok(())
    }
}

/// Drops the rows of a result file whose step is past `step`: the work a killed run did after its
/// last checkpoint, which the resumed run redoes.
pub fn truncate_after(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mut table = Table::read(path)?;
    let steps = table.f64s("step")?;
    let before = table.rows.len();
    let mut s = steps.into_iter();
    table
        .rows
        .retain(|_| s.next().is_some_and(|x| x <= step as f64));
    if table.rows.len() != before || table.torn {
        table.write(path)?;
    }
    Ok(())
}

/// A number for a CSV cell: the shortest text that reads back as the same f64, empty for NaN.
pub fn cell(x: f64) -> String {
    if x.is_nan() {
        String::new()
    } else {
        format!("{x}")
    }
}

//! Reading and writing named f32 tensors in the safetensors format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::atomic_write;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A safetensors file read into memory and validated (header, offsets and sizes).
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::checkpoint(
                path,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in open")
    }

    /// Names of every tensor in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .parsed()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        n.sort();
        n
    }

    pub fn contains(&self, name: &str) -> bool {
        self.parsed().tensor(name).is_ok()
    }

    /// The tensor `name` converted to f32 (from f32, f64, f16 or bf16); an error names the tensor
    /// when it is missing or of another dtype.
    pub fn f32(&self, name: &str) -> Result<Tensor<f32>> {
        let st = self.parsed();
        let view = st
            .tensor(name)
            .map_err(|_| Error::checkpoint(&self.path, format!("tensor `{name}` is missing")))?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::checkpoint(
                    &self.path,
                    format!("tensor `{name}` has dtype {other:?}; supported: F32, F64, F16, BF16"),
                ));
            }
        };
        Tensor::from_vec(view.shape(), values)
    }

    /// The tensor `name` as i64 (token ids of fixtures), from I64 or I32.
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let st = self.parsed();
        let view = st
            .tensor(name)
            .map_err(|_| Error::checkpoint(&self.path, format!("tensor `{name}` is missing")))?;
        let data = view.data();
        let values = match view.dtype() {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            other => {
                return Err(Error::checkpoint(
                    &self.path,
                    format!("tensor `{name}` has dtype {other:?}; expected I64 or I32"),
                ));
            }
        };
        Ok((view.shape().to_vec(), values))
    }

    /// The string metadata of the file's header.
    pub fn metadata(&self) -> HashMap<String, String> {
        let Ok((_, meta)) = SafeTensors::read_metadata(&self.bytes) else {
            return HashMap::new();
        };
        meta.metadata().clone().unwrap_or_default()
    }
}

/// Writes named f32 tensors (and string metadata) to `path`, atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.to_host_vec()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                t.dims().to_vec(),
            ))
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(n, b, s)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::checkpoint(path, format!("cannot serialize: {e}")))?;
    let buf = safetensors::serialize(views, metadata)
        .map_err(|e| Error::checkpoint(path, format!("cannot serialize: {e}")))?;
    atomic_write(path, &buf)
}

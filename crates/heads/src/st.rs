//! f32 tensors in `safetensors` files: what trained heads and the feature cache are stored as.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::HeadsError;

/// Write named f32 arrays and string metadata to `path`, atomically (a temporary file renamed
/// into place, so a crash never leaves half a file under the final name).
pub fn write<S: AsRef<str>>(
    path: &Path,
    tensors: &[(S, ArrayD<f32>)],
    metadata: HashMap<String, String>,
) -> Result<(), HeadsError> {
    let fail = |reason: String| HeadsError::Write {
        path: path.to_owned(),
        reason,
    };
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, a)| {
            let data = a.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.as_ref().to_string(), data, a.shape().to_vec())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let buf = safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &buf).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e.to_string())
    })
}

/// A safetensors file read whole: its f32 tensors and its metadata.
#[derive(Debug, Clone)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: HashMap<String, ArrayD<f32>>,
    /// The `__metadata__` strings.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Read `path`; any tensor that is not f32 is an error.
    pub fn read(path: &Path) -> Result<TensorFile, HeadsError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HeadsError::NotFound(path.to_owned()),
            _ => HeadsError::Checkpoint {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        })?;
        Self::parse(&bytes).map_err(|reason| HeadsError::Checkpoint {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parse safetensors bytes.
    pub fn parse(bytes: &[u8]) -> Result<TensorFile, String> {
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a readable safetensors file ({e})"))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a readable safetensors file ({e})"))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.iter() {
            if view.dtype() != Dtype::F32 {
                return Err(format!("tensor `{name}` is {:?}, not F32", view.dtype()));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let a = ArrayD::from_shape_vec(IxDyn(view.shape()), data)
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            tensors.insert(name.to_string(), a);
        }
        Ok(TensorFile { tensors, metadata })
    }

    /// Whether `bytes` start like a safetensors file (an 8-byte header length, then `{`).
    pub fn sniff(bytes: &[u8]) -> bool {
        bytes.len() > 9
            && bytes[8] == b'{'
            && u64::from_le_bytes(bytes[..8].try_into().unwrap()) < (1 << 27)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.safetensors");
        let a = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32 - 1.5);
        let meta = HashMap::from([("task".to_string(), "segmentation".to_string())]);
        write(&p, &[("weight", a.clone())], meta).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(TensorFile::sniff(&bytes));
        let f = TensorFile::read(&p).unwrap();
        assert_eq!(f.tensors["weight"], a);
        assert_eq!(f.metadata["task"], "segmentation");
        assert!(TensorFile::parse(b"PK\x03\x04 not a tensor file").is_err());
    }
}

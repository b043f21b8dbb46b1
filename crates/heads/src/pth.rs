//! PyTorch checkpoints (`.pth`, the zip format of `torch.save`) read in Rust: a small
//! pickle machine that understands what torch, mmcv and numpy put in such files, and the
//! tensors' raw storages from the zip. No Python, no code from the file is run: unknown
//! classes become opaque values.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use crate::HeadsError;

/// A value from the pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A class or function named by the pickle (`module.name`).
    Global(String),
    /// A tensor's storage: dtype name (`FloatStorage`, …) and its key in the zip.
    Storage {
        /// The storage class name.
        kind: String,
        /// The entry name under `data/`.
        key: String,
    },
    /// A tensor view of a storage.
    Tensor(TensorRef),
    /// Anything else (numpy scalars, dtypes, unknown classes): not interpreted.
    Opaque(String),
}

/// Where a tensor's values are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage class name (`FloatStorage`, `LongStorage`, `HalfStorage`, …).
    pub kind: String,
    /// Entry under `data/` in the zip.
    pub key: String,
    /// Offset in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

impl Value {
    /// The value under `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The items of a list or tuple.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> HeadsError {
    HeadsError::Checkpoint {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Run the pickle program `data` and return the object it builds.
pub fn unpickle(data: &[u8], path: &Path) -> Result<Value, HeadsError> {
    let err = |pos: usize, what: &str| bad(path, format!("pickle byte {pos}: {what}"));
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    // Every memo read or write copies a value: a pickle that doubles a list through the memo
    // forty times would ask for 2^40 values from a few hundred bytes. The copies may add up
    // to what a file of this size could plausibly hold, no more.
    let mut copy_budget = MEMO_COPIES_PER_BYTE * data.len() + MEMO_COPIES_MIN;
    let mut copied = |v: &Value, at: usize| -> Result<(), HeadsError> {
        let w = weight(v, copy_budget);
        if w > copy_budget {
            return Err(err(
                at,
                "its memo copies more values than a file of this size can hold (a memo bomb?)",
            ));
        }
        copy_budget -= w;
        Ok(())
    };
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], HeadsError> {
        let s = data
            .get(*pos..*pos + n)
            .ok_or_else(|| bad(path, "the pickle ends early"))?;
        *pos += n;
        Ok(s)
    };
    macro_rules! pop {
        () => {
            stack.pop().ok_or_else(|| err(pos, "stack underflow"))?
        };
    }
    macro_rules! pop_mark {
        () => {{
            let m = marks.pop().ok_or_else(|| err(pos, "no MARK"))?;
            if m > stack.len() {
                return Err(err(pos, "MARK beyond the stack"));
            }
            stack.split_off(m)
        }};
    }
    loop {
        let op = *data
            .get(pos)
            .ok_or_else(|| bad(path, "the pickle has no STOP"))?;
        let at = pos;
        pos += 1;
        match op {
            0x80 => {
                take(&mut pos, 1)?; // PROTO
            }
            0x95 => {
                take(&mut pos, 8)?; // FRAME
            }
            b'.' => return stack.pop().ok_or_else(|| err(at, "empty stack at STOP")),
            b'(' => marks.push(stack.len()),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => {
                let b = take(&mut pos, 1)?[0];
                stack.push(Value::Int(b as i64));
            }
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
            }
            b'J' => {
                let b = take(&mut pos, 4)?;
                stack.push(Value::Int(
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                ));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = take(&mut pos, 1)?[0] as usize;
                let b = take(&mut pos, n)?;
                if n > 8 {
                    return Err(err(at, "integer too large"));
                }
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(
                    b.try_into().expect("8 bytes"),
                )));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => {
                        let b = take(&mut pos, 4)?;
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                    }
                    0x8c => take(&mut pos, 1)?[0] as usize,
                    _ => {
                        let b = take(&mut pos, 8)?;
                        u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize
                    }
                };
                let s = take(&mut pos, n)?;
                let s = std::str::from_utf8(s).map_err(|_| err(at, "string is not UTF-8"))?;
                stack.push(Value::Str(s.to_owned()));
            }
            b'C' | b'B' | 0x8e => {
                let n = match op {
                    b'C' => take(&mut pos, 1)?[0] as usize,
                    b'B' => {
                        let b = take(&mut pos, 4)?;
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                    }
                    _ => {
                        let b = take(&mut pos, 8)?;
                        u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize
                    }
                };
                stack.push(Value::Bytes(take(&mut pos, n)?.to_vec()));
            }
            b'q' => {
                let i = take(&mut pos, 1)?[0] as u32;
                let top = stack
                    .last()
                    .ok_or_else(|| err(at, "BINPUT on empty stack"))?;
                copied(top, at)?;
                memo.insert(i, top.clone());
            }
            b'r' => {
                let b = take(&mut pos, 4)?;
                let i = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let top = stack
                    .last()
                    .ok_or_else(|| err(at, "LONG_BINPUT on empty stack"))?;
                copied(top, at)?;
                memo.insert(i, top.clone());
            }
            0x94 => {
                let top = stack
                    .last()
                    .ok_or_else(|| err(at, "MEMOIZE on empty stack"))?;
                copied(top, at)?;
                memo.insert(memo.len() as u32, top.clone());
            }
            b'h' | b'j' => {
                let i = if op == b'h' {
                    take(&mut pos, 1)?[0] as u32
                } else {
                    let b = take(&mut pos, 4)?;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                };
                let v = memo.get(&i).ok_or_else(|| err(at, "memo key not set"))?;
                copied(v, at)?;
                stack.push(v.clone());
            }
            b'c' => {
                let line = |pos: &mut usize| -> Result<String, HeadsError> {
                    let end = data[*pos..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| err(at, "unterminated GLOBAL"))?;
                    let s = String::from_utf8_lossy(&data[*pos..*pos + end]).into_owned();
                    *pos += end + 1;
                    Ok(s)
                };
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => return Err(err(at, "STACK_GLOBAL needs two strings")),
                }
            }
            b't' => {
                let items = pop_mark!();
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(err(at, "stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark!();
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark!();
                stack.push(Value::Dict(pairs(items, at, path)?));
            }
            b'a' => {
                let v = pop!();
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(err(at, "APPEND to a non-list")),
                }
            }
            b'e' => {
                let items = pop_mark!();
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(err(at, "APPENDS to a non-list")),
                }
            }
            b's' => {
                let v = pop!();
                let k = pop!();
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    Some(Value::Opaque(_)) => {}
                    _ => return Err(err(at, "SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let items = pop_mark!();
                let items = pairs(items, at, path)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(items),
                    Some(Value::Opaque(_)) => {}
                    _ => return Err(err(at, "SETITEMS on a non-dict")),
                }
            }
            b'Q' => {
                // BINPERSID: torch's ('storage', StorageClass, key, location, numel)
                let pid = pop!();
                let items = pid.items().unwrap_or(&[]);
                match items {
                    [Value::Str(tag), Value::Global(class), key, ..] if tag == "storage" => {
                        let key = match key {
                            Value::Str(s) => s.clone(),
                            Value::Int(i) => i.to_string(),
                            _ => return Err(err(at, "storage key is not a string")),
                        };
                        let kind = class.rsplit('.').next().unwrap_or(class).to_owned();
                        stack.push(Value::Storage { kind, key });
                    }
                    _ => return Err(err(at, "unknown persistent id (not a torch storage)")),
                }
            }
            b'R' | 0x81 => {
                // REDUCE (callable, args) / NEWOBJ (class, args)
                let args = pop!();
                let callable = pop!();
                stack.push(reduce(callable, args, at, path)?);
            }
            b'b' => {
                // BUILD: object state; tensors' and dicts' extra state is not needed
                let _state = pop!();
                if stack.is_empty() {
                    return Err(err(at, "BUILD on empty stack"));
                }
            }
            b'0' => {
                pop!();
            }
            b'1' => {
                let _ = pop_mark!();
            }
            b'2' => {
                let top = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| err(at, "DUP on empty stack"))?;
                stack.push(top);
            }
            _ => return Err(err(at, &format!("unsupported pickle opcode 0x{op:02x}"))),
        }
    }
}

/// Memo copies allowed per byte of pickle, and at least (see [`unpickle`]): a real checkpoint's
/// memo copies a few values per tensor, well under one per byte.
const MEMO_COPIES_PER_BYTE: usize = 16;
const MEMO_COPIES_MIN: usize = 1 << 20;

/// The size of a value in copy units (one per value, one per 16 bytes of text or bytes),
/// counted up to `limit` and no further, without recursion (a value may be deeply nested).
fn weight(v: &Value, limit: usize) -> usize {
    let mut total = 0usize;
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        total += 1;
        match v {
            Value::Str(s) | Value::Global(s) | Value::Opaque(s) => total += s.len() / 16,
            Value::Bytes(b) => total += b.len() / 16,
            Value::List(items) | Value::Tuple(items) => todo.extend(items),
            Value::Dict(items) => todo.extend(items.iter().flat_map(|(k, v)| [k, v])),
            _ => {}
        }
        if total > limit {
            break;
        }
    }
    total
}

fn pairs(items: Vec<Value>, at: usize, path: &Path) -> Result<Vec<(Value, Value)>, HeadsError> {
    if !items.len().is_multiple_of(2) {
        return Err(bad(
            path,
            format!("pickle byte {at}: odd number of dict items"),
        ));
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn usizes(v: &Value) -> Option<Vec<usize>> {
    v.items()?
        .iter()
        .map(|x| x.as_int().and_then(|i| usize::try_from(i).ok()))
        .collect()
}

fn reduce(callable: Value, args: Value, at: usize, path: &Path) -> Result<Value, HeadsError> {
    let Value::Global(name) = &callable else {
        return Ok(Value::Opaque("call of a non-global".into()));
    };
    let a = args.items().unwrap_or(&[]);
    Ok(match name.as_str() {
        "collections.OrderedDict" | "builtins.dict" => Value::Dict(Vec::new()),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let (Some(Value::Storage { kind, key }), Some(offset), Some(shape), Some(stride)) = (
                a.first(),
                a.get(1).and_then(Value::as_int),
                a.get(2).and_then(usizes),
                a.get(3).and_then(usizes),
            ) else {
                return Err(bad(path, format!("pickle byte {at}: malformed tensor")));
            };
            if shape.len() != stride.len() || offset < 0 {
                return Err(bad(path, format!("pickle byte {at}: malformed tensor")));
            }
            Value::Tensor(TensorRef {
                kind: kind.clone(),
                key: key.clone(),
                offset: offset as usize,
                shape,
                stride,
            })
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            a.first().cloned().unwrap_or(Value::None)
        }
        "_codecs.encode" => match a.first() {
            // bytes pickled by protocol 2: latin-1 text
            Some(Value::Str(s)) => Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()),
            _ => Value::Opaque(name.clone()),
        },
        "builtins.set" | "builtins.frozenset" => a.first().cloned().unwrap_or(Value::List(vec![])),
        _ => Value::Opaque(name.clone()),
    })
}

/// A loaded checkpoint: the unpickled object and access to its tensors.
pub struct Checkpoint {
    path: PathBuf,
    /// The top-level object.
    pub root: Value,
    storages: HashMap<String, Vec<u8>>,
}

impl Checkpoint {
    /// Read a `torch.save` zip file.
    pub fn open(path: &Path) -> Result<Checkpoint, HeadsError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HeadsError::NotFound(path.to_owned()),
            _ => bad(path, e.to_string()),
        })?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| {
            bad(
                path,
                format!("not a PyTorch zip checkpoint ({e}); legacy (pre-1.6) .pth files are not read: re-save with torch.save"),
            )
        })?;
        let names: Vec<String> = zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(path, format!("bad zip entry name: {e}")))?;
        let pkl_name = names
            .iter()
            .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .cloned()
            .ok_or_else(|| bad(path, "no data.pkl in the zip: not a torch.save file"))?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
        let read =
            |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| -> Result<Vec<u8>, HeadsError> {
                let mut entry = zip
                    .by_name(name)
                    .map_err(|e| bad(path, format!("{name}: {e}")))?;
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(path, format!("{name}: {e}")))?;
                Ok(buf)
            };
        let pkl = read(&mut zip, &pkl_name)?;
        if let Ok(order) = read(&mut zip, &format!("{prefix}byteorder"))
            && order != b"little"
        {
            return Err(bad(path, "big-endian checkpoints are not supported"));
        }
        let root = unpickle(&pkl, path)?;
        let mut storages = HashMap::new();
        let data_prefix = format!("{prefix}data/");
        for name in names.iter().filter(|n| n.starts_with(&data_prefix)) {
            let key = name[data_prefix.len()..].to_owned();
            let bytes = read(&mut zip, name)?;
            storages.insert(key, bytes);
        }
        Ok(Checkpoint {
            path: path.to_owned(),
            root,
            storages,
        })
    }

    /// The tensor as f32 (from f32, f64, f16, bf16 or integer storages).
    pub fn tensor(&self, t: &TensorRef) -> Result<ArrayD<f32>, HeadsError> {
        let bytes = self.storages.get(&t.key).ok_or_else(|| {
            bad(
                &self.path,
                format!("storage {} is missing from the zip", t.key),
            )
        })?;
        let (size, convert): (usize, fn(&[u8]) -> f32) = match t.kind.as_str() {
            "FloatStorage" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            "DoubleStorage" => (8, |b| {
                f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            }),
            "HalfStorage" => (2, |b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            "BFloat16Storage" => (2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            "LongStorage" => (8, |b| {
                i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            }),
            "IntStorage" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
            other => {
                return Err(bad(
                    &self.path,
                    format!("tensor storage type {other} is not supported"),
                ));
            }
        };
        let numel: usize = t.shape.iter().product();
        // the largest element index this view touches must be inside the storage
        let last = t.offset
            + t.shape
                .iter()
                .zip(&t.stride)
                .map(|(&n, &s)| n.saturating_sub(1) * s)
                .sum::<usize>();
        if numel > 0 && (last + 1) * size > bytes.len() {
            return Err(bad(
                &self.path,
                format!("tensor {} {:?} runs past its storage", t.key, t.shape),
            ));
        }
        let mut out = Vec::with_capacity(numel);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let e = t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.push(convert(&bytes[e * size..(e + 1) * size]));
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        ArrayD::from_shape_vec(IxDyn(&t.shape), out).map_err(|e| bad(&self.path, e.to_string()))
    }

    /// The state dict: `root["state_dict"]` (mmcv/mmseg checkpoints), `root["model"]`, or
    /// the root itself when it maps names to tensors. Entries that are not tensors are skipped.
    pub fn state_dict(&self) -> Result<Vec<(String, ArrayD<f32>)>, HeadsError> {
        let dict = ["state_dict", "model"]
            .iter()
            .find_map(|k| self.root.get(k))
            .unwrap_or(&self.root);
        let Value::Dict(items) = dict else {
            return Err(bad(&self.path, "the checkpoint holds no state dict"));
        };
        let mut out = Vec::new();
        for (k, v) in items {
            if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
                out.push((name.clone(), self.tensor(t)?));
            }
        }
        Ok(out)
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_bomb_is_refused_before_it_grows() {
        // x = []; forty times: x = [x, x] through memo slot 0: 2^40 values if copied out
        let mut data = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            data.extend_from_slice(b"(h\x00h\x00lq\x00");
        }
        data.push(b'.');
        let e = unpickle(&data, Path::new("bomb.pth")).unwrap_err();
        assert!(e.to_string().contains("memo bomb"), "{e}");
        // ten doublings (2^10 values) are fine
        let mut data = b"\x80\x02]q\x00".to_vec();
        for _ in 0..10 {
            data.extend_from_slice(b"(h\x00h\x00lq\x00");
        }
        data.push(b'.');
        assert!(matches!(
            unpickle(&data, Path::new("ok.pth")),
            Ok(Value::List(_))
        ));
    }

    #[test]
    fn small_pickles() {
        let p = Path::new("t.pkl");
        // {'a': [1, 2.5, 'x'], 'b': (True, None, -3)} pickled with protocol 2
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88NJ\xfd\xff\xff\xff\x87q\x05u.";
        let v = unpickle(data, p).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::Str("x".into())
            ]))
        );
        assert_eq!(
            v.get("b"),
            Some(&Value::Tuple(vec![
                Value::Bool(true),
                Value::None,
                Value::Int(-3)
            ]))
        );
        assert!(unpickle(b"\x80\x02}q\x00(", p).is_err());
        assert!(unpickle(b"\xff", p).is_err());
        assert!(unpickle(b"a.", p).is_err());
    }
}

//! Loading a DINOv2 ONNX file into a tract plan at a fixed resolution, and running it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView4, Axis, s};
use tract_core::internal::*;
use tract_core::prelude::multithread::Executor;
use tract_onnx::prelude::{Framework, InferenceModelExt};

use crate::Int8Sums as Sums;
use crate::cache::{self, CacheMode, Entry, EntryMeta};
use crate::config::{DepthConfig, ModelConfigs};
use crate::error::{ModelError, Result};
use crate::features::{BlockFeatures, Features, TokenLayout, layer_norm};
use crate::graph::{GraphInfo, Precision};
use crate::preprocess::{Normalization, Preprocessor, ResizeMode};
use crate::resolution::Resolution;
use crate::runtime::{CudaStatus, Runtime, cuda_status};

/// What to compile, chosen at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneOptions {
    /// Input size; `None` takes the crop size of `preprocessor_config.json`, else 224x224.
    pub resolution: Option<Resolution>,
    /// Images per run (1 for live video).
    pub batch: usize,
    /// Intermediate blocks to return (0-based). Empty: only the final output.
    pub blocks: Vec<usize>,
    /// Apply the final LayerNorm to the intermediate blocks.
    pub normalize_blocks: bool,
    /// Return the last block's CLS attention.
    pub attention: bool,
    /// Backbone threads; `None` uses every core.
    pub threads: Option<usize>,
    /// Compile cache.
    pub cache: CacheMode,
    /// Where the backbone runs (tract's CPU runtime unless asked otherwise).
    pub runtime: Runtime,
    /// How the AVX2 int8 kernel sums a dynamic int8 file's products with 8-bit signed weights:
    /// exactly (the default), or saturating each pair's sum as onnxruntime does on AVX2
    /// (faster; its numbers, not the exact ones). QDQ files stay exact. Defaults to
    /// `$DINOEDGE_INT8_SUMS` (`exact` or `saturating`).
    pub int8_sums: Sums,
}

impl Default for BackboneOptions {
    fn default() -> Self {
        BackboneOptions {
            resolution: None,
            batch: 1,
            blocks: vec![],
            normalize_blocks: false,
            attention: false,
            threads: None,
            cache: CacheMode::Auto,
            runtime: Runtime::Cpu,
            int8_sums: crate::qmatmul::int8_sums(),
        }
    }
}

/// A model file read and analysed, not yet compiled: what `dinoedge info` shows.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The ONNX file.
    pub path: PathBuf,
    /// What the graph says.
    pub graph: GraphInfo,
    /// `config.json` / `preprocessor_config.json` found beside it.
    pub configs: ModelConfigs,
    /// Register tokens, from the config or the graph's register initializer.
    pub registers: Option<usize>,
    /// Attention heads, from the config.
    pub heads: Option<usize>,
    proto: Arc<tract_onnx::pb::ModelProto>,
}

impl ModelInfo {
    /// Read an ONNX file and the configs beside it.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (proto, graph) = GraphInfo::read(path)?;
        let mut configs = ModelConfigs::find(path)?;
        // a config.json of other sizes is another model's (one left in the directory above,
        // say): none of it applies, not its register count or image size either
        if let Some((cfg_path, c)) = &configs.model
            && let (Some(width), Some(layers)) = (c.hidden_size, c.num_hidden_layers)
            && (width != graph.embed_dim || layers != graph.num_blocks)
        {
            tracing::warn!(
                "{} says hidden_size {} / {} layers, the graph has {} / {}: another model's \
                 config, ignored",
                cfg_path.display(),
                width,
                layers,
                graph.embed_dim,
                graph.num_blocks
            );
            configs.model = None;
        }
        let cfg = configs.model.as_ref().map(|(_, c)| c);
        if let Some((cfg_path, c)) = &configs.model
            && let Some(model_type) = c.model_type.as_deref()
            && !graph.family().model_types().contains(&model_type)
        {
            tracing::warn!(
                "{} says model_type {model_type}, the graph is {} ({}): using the graph",
                cfg_path.display(),
                graph.family(),
                if graph.rope {
                    "rotary position embeddings"
                } else {
                    "a learned position embedding"
                }
            );
        }
        let registers = cfg
            .map(|c| c.num_register_tokens)
            .or_else(|| registers_from_graph(&proto, graph.embed_dim));
        Ok(ModelInfo {
            path: path.to_owned(),
            registers,
            heads: cfg.and_then(|c| c.num_attention_heads),
            graph,
            configs,
            proto: Arc::new(proto),
        })
    }

    /// A human name: `ViT-S/14`, `ViT-B/14 + 4 registers`, or the raw sizes for others.
    pub fn variant(&self) -> String {
        let g = &self.graph;
        let size = match (g.embed_dim, g.num_blocks) {
            (384, 12) => "ViT-S".to_string(),
            (768, 12) => "ViT-B".to_string(),
            (1024, 24) => "ViT-L".to_string(),
            (1536, 40) => "ViT-g".to_string(),
            (d, b) => format!("ViT (dim {d}, {b} blocks)"),
        };
        let mut s = format!("{} {size}/{}", g.family(), g.patch_size);
        if let Some(r) = self.registers.filter(|r| *r > 0) {
            s.push_str(&format!(" + {r} registers"));
        }
        s
    }

    /// What the file's depth output means, if it has a depth head: from `config.json`
    /// (`depth_estimation_type`), relative when no config says.
    pub fn depth(&self) -> Option<DepthConfig> {
        self.graph.depth_head.as_ref()?;
        Some(
            self.configs
                .model
                .as_ref()
                .and_then(|(_, c)| c.depth)
                .unwrap_or(DepthConfig::Relative),
        )
    }

    /// The head inside the file, in words (`None` for an encoder alone): for `dinoedge info`.
    pub fn head_description(&self) -> Option<String> {
        let head = self.graph.depth_head.as_ref()?;
        let blocks: Vec<String> = head.blocks.iter().map(|b| b.to_string()).collect();
        let output = match self.depth()? {
            DepthConfig::Relative => "relative inverse depth (no unit)".to_string(),
            DepthConfig::Metric { max_depth } => format!("metric depth, metres (0 to {max_depth})"),
        };
        Some(format!(
            "DPT depth head on blocks {}: {output}",
            blocks.join(", ")
        ))
    }

    /// The resolution used when none is asked for: the processor's crop, else its fixed
    /// resize (518x518 for Depth Anything's `DPTImageProcessor`), else 224x224.
    pub fn default_resolution(&self) -> Resolution {
        self.configs
            .preprocessor
            .as_ref()
            .and_then(|(_, p)| p.crop_hw().or_else(|| p.size_hw()))
            .map(|(h, w)| Resolution::new(h, w))
            .or_else(|| self.declared_resolution())
            .filter(|r| r.validate(self.graph.patch_size as u32).is_ok())
            .unwrap_or(Resolution::square(224))
    }

    /// The height and width the file's input declares, when both are fixed numbers (a
    /// torch.hub export at 224 declares `[1, 3, 224, 224]`).
    pub fn declared_resolution(&self) -> Option<Resolution> {
        match self.graph.input_dims.as_slice() {
            [_, _, Some(h), Some(w)] => Some(Resolution::new(*h as u32, *w as u32)),
            _ => None,
        }
    }

    /// The position-embedding grid the checkpoint was trained with (37 for 518-pixel DINOv2):
    /// from the config, else from the position embedding in the file.
    pub fn native_grid(&self) -> Option<usize> {
        let from_config = self.configs.model.as_ref().and_then(|(_, c)| c.image_size);
        match from_config {
            Some(s) => Some(s / self.graph.patch_size),
            None => position_grid_from_graph(&self.proto, self.graph.embed_dim),
        }
    }

    /// Normalisation the model expects.
    pub fn normalization(&self) -> Normalization {
        Preprocessor::normalization_from(self.configs.preprocessor.as_ref().map(|(_, p)| p))
    }
}

/// The side of the square position grid the file's position embedding holds: the constant
/// that its `Resize` (the position-embedding resize) reads, `n²` tokens of width `D` (with or
/// without the CLS token's), whatever the exporter named it.
fn position_grid_from_graph(proto: &tract_onnx::pb::ModelProto, dim: usize) -> Option<usize> {
    let graph = proto.graph.as_ref()?;
    let resize = graph.node.iter().find(|n| n.op_type == "Resize")?;
    let mut name = resize.input.first()?.as_str();
    for _ in 0..8 {
        if let Some(t) = graph.initializer.iter().find(|t| t.name == name) {
            let values: i64 = t.dims.iter().product();
            let tokens = usize::try_from(values).ok()? / dim.max(1);
            let square = |m: usize| {
                let n = (m as f64).sqrt().round() as usize;
                (n > 1 && n * n == m).then_some(n)
            };
            return square(tokens).or_else(|| square(tokens.checked_sub(1)?));
        }
        let producer = graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == name))?;
        name = producer.input.first()?.as_str();
    }
    None
}

fn registers_from_graph(proto: &tract_onnx::pb::ModelProto, dim: usize) -> Option<usize> {
    let graph = proto.graph.as_ref()?;
    let found = graph
        .initializer
        .iter()
        .find(|t| t.name.contains("register") && t.dims.len() == 3 && t.dims[2] as usize == dim);
    match found {
        Some(t) => Some(t.dims[1] as usize),
        None if graph
            .initializer
            .iter()
            .any(|t| t.name.contains("cls_token")) =>
        {
            Some(0)
        }
        None => None,
    }
}

/// How the model was brought up, for reporting start-up cost.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Where the decluttered graph came from.
    pub source: LoadSource,
    /// Reading and analysing the ONNX protobuf.
    pub read: Duration,
    /// Parsing, type analysis and decluttering (zero on a cache hit).
    pub compile: Duration,
    /// Loading the NNEF cache entry (zero on a miss).
    pub cache_load: Duration,
    /// tract's kernel selection and plan building.
    pub optimize: Duration,
    /// Everything.
    pub total: Duration,
    /// The cache entry used or written.
    pub cache_entry: Option<PathBuf>,
    /// Why the cache was not used or not written, when that happened.
    pub cache_note: Option<String>,
    /// How many of tract's operators were replaced by dinoedge's faster ones
    /// (see [`crate::ops`]).
    pub dinoedge_ops: usize,
    /// How many blocks' attention runs as one fused operator
    /// ([`crate::attention::FusedAttention`]; not a block whose attention map is asked for).
    pub fused_attention: usize,
    /// How many of the int8 products on dinoedge's kernels have 7-bit weights (every value in
    /// −64..=64 as packed: `reduce_range` exports), which the AVX2 kernel multiplies as bytes
    /// ([`dinoedge_kernels::qgemm::PackedWeights::narrow`]).
    pub seven_bit_products: usize,
    /// How many int8 products run on dinoedge's kernels ([`dinoedge_kernels::qgemm`]).
    pub int8_products: usize,
    /// How many of those the AVX2 kernel multiplies as bytes: the 7-bit ones, and 8-bit ones
    /// whose few pairs of weights beyond `VPMADDUBSW`'s range were split off
    /// ([`dinoedge_kernels::qgemm::PackedWeights::split_pairs`]; only where the AVX2 kernel runs).
    pub byte_products: usize,
    /// How many weights were split off in all ([`dinoedge_kernels::qgemm::PackedWeights::split`]).
    pub split_weights: usize,
    /// How many of the byte products saturate their pair sums instead of splitting pairs
    /// (`DINOEDGE_INT8_SUMS=saturating`: [`dinoedge_kernels::qgemm::Sums::Saturating`]).
    pub saturating_products: usize,
    /// How many int8 products requantise their output themselves (a QDQ file's
    /// quantise/dequantise pair after the product, fused: [`crate::qmatmul::fuse_requantize`]).
    pub requantized_products: usize,
    /// How many of those add the bias after the requantisation themselves too.
    pub requantized_biases: usize,
    /// The runtime the backbone runs on: [`Runtime::Cpu`] or [`Runtime::Cuda`] (never
    /// `CudaOrCpu`: that one resolves to one of the two).
    pub runtime: Runtime,
    /// Why `cuda-or-cpu` ended up on the CPU, when it did.
    pub runtime_note: Option<String>,
}

/// Where the decluttered graph came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Parsed and decluttered from the ONNX file.
    Compiled,
    /// Loaded from the NNEF compile cache.
    Cache,
}

/// Time spent in one kind of operator, per run.
#[derive(Debug, Clone)]
pub struct OpProfile {
    /// tract's operator name.
    pub op: String,
    /// Total time per run in nodes of this kind.
    pub per_run: Duration,
    /// Number of such nodes in the plan.
    pub nodes: usize,
}

/// A DINOv2 backbone compiled for one resolution and batch size.
#[derive(Debug)]
pub struct Backbone {
    info: ModelInfo,
    resolution: Resolution,
    batch: usize,
    layout: TokenLayout,
    heads: Option<usize>,
    blocks: Vec<usize>,
    normalize_blocks: bool,
    attention: bool,
    threads: usize,
    /// The plan's threads (the same pool), which a run starts on (see `run_with`).
    executor: Executor,
    plan: Arc<TypedSimplePlan>,
    state: TypedSimpleState,
    input: Arc<Tensor>,
    input_allocations: usize,
    report: LoadReport,
}

impl Backbone {
    /// Load `path` with `options`.
    pub fn load(path: impl AsRef<Path>, options: &BackboneOptions) -> Result<Self> {
        let t0 = Instant::now();
        let info = ModelInfo::read(path)?;
        let read = t0.elapsed();
        Self::from_info(info, options, t0, read)
    }

    /// Compile an already analysed model.
    pub fn from_model_info(info: ModelInfo, options: &BackboneOptions) -> Result<Self> {
        Self::from_info(info, options, Instant::now(), Duration::ZERO)
    }

    fn from_info(
        info: ModelInfo,
        options: &BackboneOptions,
        t0: Instant,
        read: Duration,
    ) -> Result<Self> {
        let g = &info.graph;
        let resolution = options
            .resolution
            .unwrap_or_else(|| info.default_resolution())
            .validate(g.patch_size as u32)?;
        if options.batch == 0 {
            return Err(ModelError::InvalidOption(
                "batch size must be at least 1".into(),
            ));
        }
        if let Some(b) = options.blocks.iter().find(|b| **b >= g.num_blocks) {
            return Err(ModelError::InvalidOption(format!(
                "block {b} does not exist: the model has blocks 0..={}",
                g.num_blocks - 1
            )));
        }
        let threads = match options.threads {
            Some(0) => {
                return Err(ModelError::InvalidOption(
                    "threads must be at least 1".into(),
                ));
            }
            Some(n) if n > MAX_THREADS => {
                return Err(ModelError::InvalidOption(format!(
                    "{n} threads: at most {MAX_THREADS} (this machine has {} cores)",
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                )));
            }
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let mut blocks = options.blocks.clone();
        blocks.dedup();
        let (runtime, runtime_note) = resolve_runtime(options.runtime)?;

        // The tensors the compiled graph exposes, in this order.
        let mut taps = vec![g.tokens_output.clone()];
        taps.extend(blocks.iter().map(|b| g.block_outputs[*b].clone()));
        if options.attention {
            taps.push(g.attention_probs[g.num_blocks - 1].clone());
        }
        if let Some(head) = &g.depth_head {
            taps.push(head.output.clone());
        }
        // dinoedge's operators are CPU kernels: on CUDA the graph keeps tract's own, the ones
        // tract-cuda knows how to place.
        let fast_ops = runtime == Runtime::Cpu
            && std::env::var_os("DINOEDGE_TRACT_OPS_ONLY").is_none_or(|v| v.is_empty() || v == "0");
        let options_key = format!(
            "{resolution} batch {} taps [{}]{}",
            options.batch,
            taps.join(", "),
            // the version of dinoedge's graph rewrites: entries compiled by an older dinoedge
            // are rebuilt once, so they pick up its newer fusions
            match (fast_ops, crate::layer_norm::enabled()) {
                (true, true) => " dinoedge-ops 7",
                (true, false) => " dinoedge-ops 7, tract's LayerNorm",
                (false, _) => " tract-ops-only",
            }
        );

        let mut report = LoadReport {
            source: LoadSource::Compiled,
            read,
            compile: Duration::ZERO,
            cache_load: Duration::ZERO,
            optimize: Duration::ZERO,
            total: Duration::ZERO,
            cache_entry: None,
            cache_note: None,
            dinoedge_ops: 0,
            fused_attention: 0,
            seven_bit_products: 0,
            int8_products: 0,
            byte_products: 0,
            split_weights: 0,
            saturating_products: 0,
            requantized_products: 0,
            requantized_biases: 0,
            runtime,
            runtime_note,
        };
        let model = cached_or_compiled(
            &info,
            options,
            &taps,
            resolution,
            fast_ops,
            options_key,
            &mut report,
        )?;

        // Shapes are concrete now: check them against the layout dinoedge expects.
        let layout = token_layout(&model, &info, resolution, options.batch)?;
        let heads = if options.attention {
            let shape = concrete_shape(&model, taps.len() - 1)?;
            Some(shape[1])
        } else {
            info.heads
        };

        let t = Instant::now();
        let executor = executor_for(threads);
        let sums = options.int8_sums;
        let plan = build_plan(
            model,
            runtime,
            fast_ops,
            sums,
            executor.clone(),
            &mut report,
        )?;
        let state = plan
            .spawn()
            .map_err(|e| ModelError::tract("start the model", e))?;
        report.optimize = t.elapsed();
        report.total = t0.elapsed();
        let input = Arc::new(
            Tensor::zero::<f32>(&[
                options.batch,
                3,
                resolution.height as usize,
                resolution.width as usize,
            ])
            .map_err(|e| ModelError::tract("allocate the input", e))?,
        );
        Ok(Backbone {
            info,
            resolution,
            batch: options.batch,
            layout,
            heads,
            blocks,
            normalize_blocks: options.normalize_blocks,
            attention: options.attention,
            threads,
            executor,
            plan,
            state,
            input,
            input_allocations: 1,
            report,
        })
    }

    /// The analysed model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The compiled resolution.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// The compiled batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Token layout (registers, grid, width).
    pub fn layout(&self) -> TokenLayout {
        self.layout
    }

    /// Attention heads, when known.
    pub fn heads(&self) -> Option<usize> {
        self.heads
    }

    /// Weight precision.
    pub fn precision(&self) -> Precision {
        self.info.graph.precision
    }

    /// Threads the backbone runs on (on CUDA: for the operators that stay on the CPU).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The runtime the backbone runs on: [`Runtime::Cpu`] or [`Runtime::Cuda`].
    pub fn runtime(&self) -> Runtime {
        self.report.runtime
    }

    /// How loading went.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// Number of floats one batch of input holds: `batch * 3 * H * W`.
    pub fn input_len(&self) -> usize {
        self.batch * 3 * self.resolution.pixels()
    }

    /// A second backbone on the same compiled graph (weights shared, not copied; nothing
    /// recompiled) with its own state, input buffer and `threads` threads: one of several
    /// workers that each take a frame (`dinoedge run --workers`).
    pub fn worker(&self, threads: usize) -> Result<Backbone> {
        if threads == 0 {
            return Err(ModelError::InvalidOption(
                "threads must be at least 1".into(),
            ));
        }
        if self.report.runtime == Runtime::Cuda {
            // tract's CUDA plan carries its own session state: one backbone per GPU
            return Err(ModelError::InvalidOption(
                "several workers run on the CPU only: on CUDA use one worker".into(),
            ));
        }
        let executor = executor_for(threads);
        let run_options = RunOptions {
            executor: Some(executor.clone()),
            ..RunOptions::default()
        };
        let plan = TypedSimplePlan::new_with_options(self.plan.model().clone(), &run_options)
            .map_err(|e| ModelError::tract("build the execution plan", e))?;
        let state = plan
            .spawn()
            .map_err(|e| ModelError::tract("start the model", e))?;
        let input = Arc::new(
            Tensor::zero::<f32>(self.input.shape())
                .map_err(|e| ModelError::tract("allocate the input", e))?,
        );
        Ok(Backbone {
            info: self.info.clone(),
            resolution: self.resolution,
            batch: self.batch,
            layout: self.layout,
            heads: self.heads,
            blocks: self.blocks.clone(),
            normalize_blocks: self.normalize_blocks,
            attention: self.attention,
            threads,
            executor,
            plan,
            state,
            input,
            input_allocations: 1,
            report: self.report.clone(),
        })
    }

    /// How many times the input buffer had to be (re)allocated; stays 1 in a steady stream.
    pub fn input_allocations(&self) -> usize {
        self.input_allocations
    }

    /// A preprocessor for this backbone's resolution and the model's normalisation.
    pub fn preprocessor(&self, mode: ResizeMode) -> Result<Preprocessor> {
        Preprocessor::new(self.resolution, mode, self.info.normalization())
    }

    /// Fill the reusable input buffer with `fill` (which receives `batch*3*H*W` floats in
    /// NCHW order), then run. This is the allocation-free path of a live stream.
    pub fn run_with(
        &mut self,
        fill: impl FnOnce(&mut [f32]) -> Result<()>,
    ) -> Result<Vec<Features>> {
        if Arc::get_mut(&mut self.input).is_none() {
            // Still shared (tract kept a reference): start a fresh buffer.
            self.input = Arc::new(
                Tensor::zero::<f32>(self.input.shape())
                    .map_err(|e| ModelError::tract("allocate the input", e))?,
            );
            self.input_allocations += 1;
        }
        let buf = Arc::get_mut(&mut self.input).expect("just made exclusive");
        let mut view = buf
            .to_plain_array_view_mut::<f32>()
            .map_err(|e| ModelError::tract("write the input", e))?;
        let slice = view
            .as_slice_mut()
            .ok_or_else(|| ModelError::Input("input buffer is not contiguous".into()))?;
        fill(slice)?;
        let input = tvec![TValue::from_const(self.input.clone())];
        let state = &mut self.state;
        // On a thread of the plan's own pool: each operator that splits its work over threads
        // then works on one part itself and wakes one other thread, instead of handing every
        // part to the pool and waiting (two wake-ups per operator, from outside it).
        let outputs = match &self.executor {
            Executor::MultiThread(pool) if crate::awake::enabled() => {
                crate::awake::install(pool, || state.run(input))
            }
            Executor::MultiThread(pool) => pool.install(|| state.run(input)),
            _ => state.run(input),
        }
        .map_err(|e| ModelError::tract("run the model", e))?;
        self.collect(outputs)
    }

    /// The input shape this backbone takes: `[batch, 3, H, W]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [
            self.batch,
            3,
            self.resolution.height as usize,
            self.resolution.width as usize,
        ]
    }

    fn check_input(&self, pixel_values: &ArrayView4<f32>) -> Result<()> {
        let expected = self.input_shape();
        if pixel_values.shape() == expected {
            return Ok(());
        }
        let s = pixel_values.shape();
        Err(ModelError::Input(format!(
            "input has shape {s:?}, the model was loaded for {expected:?}: load it with --size {}x{} (and batch {}) or resize the input",
            s[2], s[3], s[0],
        )))
    }

    /// Run on a normalised `[batch, 3, H, W]` tensor.
    pub fn run(&mut self, pixel_values: ArrayView4<f32>) -> Result<Vec<Features>> {
        self.check_input(&pixel_values)?;
        self.run_with(|buf| {
            for (o, v) in buf.iter_mut().zip(pixel_values.iter()) {
                *o = *v;
            }
            Ok(())
        })
    }

    /// Preprocess one RGB image with `pre` and run (batch-1 models).
    pub fn run_image(
        &mut self,
        pre: &mut Preprocessor,
        image: &image::RgbImage,
    ) -> Result<Features> {
        if self.batch != 1 {
            return Err(ModelError::Input(format!(
                "run_image takes one image; this model was loaded for batch {}",
                self.batch
            )));
        }
        if pre.resolution() != self.resolution {
            return Err(ModelError::Input(format!(
                "preprocessor resizes to {}, the model was loaded for {}",
                pre.resolution(),
                self.resolution
            )));
        }
        let mut out = self.run_with(|buf| pre.run(image, buf).map(|_| ()))?;
        Ok(out.remove(0))
    }

    fn collect(&self, outputs: TVec<TValue>) -> Result<Vec<Features>> {
        let view = |ix: usize| -> Result<ndarray::ArrayViewD<'_, f32>> {
            outputs[ix]
                .to_plain_array_view::<f32>()
                .map_err(|e| ModelError::tract("read an output", e))
        };
        let tokens = view(0)?;
        let t = self.layout.tokens();
        let mut all = Vec::with_capacity(self.batch);
        for b in 0..self.batch {
            let seq = tokens.index_axis(Axis(0), b);
            let seq = seq
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|e| ModelError::Input(e.to_string()))?;
            let mut blocks = Vec::with_capacity(self.blocks.len());
            for (i, block) in self.blocks.iter().enumerate() {
                let out = view(1 + i)?;
                let mut seq: Array2<f32> = out
                    .index_axis(Axis(0), b)
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|e| ModelError::Input(e.to_string()))?
                    .to_owned();
                if self.normalize_blocks {
                    layer_norm(&mut seq, &self.info.graph.final_norm);
                }
                blocks.push(BlockFeatures {
                    block: *block,
                    normalized: self.normalize_blocks,
                    tokens: self.layout.split(seq.view()),
                });
            }
            let attention = if self.attention {
                let attn = view(1 + self.blocks.len())?;
                let heads = attn.shape()[1];
                let (gh, gw) = self.layout.grid;
                let row = attn.slice(s![b, .., 0, 1 + self.layout.registers..t]);
                Some(
                    row.to_owned()
                        .into_shape_with_order((heads, gh, gw))
                        .map_err(|e| ModelError::Input(e.to_string()))?,
                )
            } else {
                None
            };
            let depth = match &self.info.graph.depth_head {
                Some(_) => {
                    let depth = view(outputs.len() - 1)?;
                    Some(
                        depth
                            .index_axis(Axis(0), b)
                            .into_dimensionality::<ndarray::Ix2>()
                            .map_err(|e| ModelError::Input(format!("the depth output: {e}")))?
                            .to_owned(),
                    )
                }
                None => None,
            };
            all.push(Features {
                tokens: self.layout.split(seq),
                blocks,
                attention,
                depth,
            });
        }
        Ok(all)
    }

    /// Run `runs` times on `pixel_values`, timing every node of the plan; returns the time
    /// per run by operator name, largest first (tract's own profile of where time goes).
    pub fn profile(
        &mut self,
        pixel_values: ArrayView4<f32>,
        runs: usize,
    ) -> Result<Vec<OpProfile>> {
        self.check_input(&pixel_values)?;
        let input = Tensor::from(pixel_values.to_owned().into_dyn());
        let mut times: std::collections::HashMap<String, (Duration, usize)> = Default::default();
        for _ in 0..runs.max(1) {
            let mut record = |name: String, d: Duration| {
                let e = times.entry(name).or_default();
                e.0 += d;
                e.1 += 1;
            };
            self.state
                .run_plan_with_eval(
                    tvec![input.clone().into_tvalue()],
                    |ctx, state, node, inputs| {
                        let t = Instant::now();
                        let r = tract_core::plan::eval(ctx, state, node, inputs);
                        record(node.op().name().to_string(), t.elapsed());
                        r
                    },
                )
                .map_err(|e| ModelError::tract("run the model", e))?;
        }
        let runs = runs.max(1) as u32;
        let mut out: Vec<OpProfile> = times
            .into_iter()
            .map(|(op, (d, n))| OpProfile {
                op,
                per_run: d / runs,
                nodes: n / runs as usize,
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.per_run));
        Ok(out)
    }

    /// Number of nodes in the optimised plan (for reports).
    pub fn plan_nodes(&self) -> usize {
        self.plan.model().nodes().len()
    }
}

/// The token layout the compiled graph's output 0 (`[batch, tokens, dim]`) has: registers and
/// patch grid, or why it is not a DINOv2 output.
fn token_layout(
    model: &TypedModel,
    info: &ModelInfo,
    resolution: Resolution,
    batch: usize,
) -> Result<TokenLayout> {
    let g = &info.graph;
    let token_shape = concrete_shape(model, 0)?;
    let (gh, gw) = resolution.grid(g.patch_size as u32);
    let [b, t, d] = token_shape[..] else {
        return Err(ModelError::NotDinov2 {
            path: info.path.clone(),
            reason: format!(
                "the final LayerNorm output has shape {token_shape:?}, expected [batch, tokens, dim]"
            ),
        });
    };
    if b != batch || d != g.embed_dim || t < 1 + gh * gw {
        return Err(ModelError::NotDinov2 {
            path: info.path.clone(),
            reason: format!(
                "tokens of shape {token_shape:?} do not fit a {gh}x{gw} patch grid of width {} (batch {batch})",
                g.embed_dim
            ),
        });
    }
    Ok(TokenLayout {
        registers: t - 1 - gh * gw,
        grid: (gh, gw),
        dim: d,
    })
}

/// tract's executor for `threads`: inline on one, its own pool on more.
fn executor_for(threads: usize) -> Executor {
    if threads == 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(threads)
    }
}

/// Optimise the graph for `runtime` (on the CPU with dinoedge's operators swapped in when
/// `fast_ops`, the int8 products summed as `sums` says) and make the plan that runs it on
/// `executor`.
fn build_plan(
    model: TypedModel,
    runtime: Runtime,
    fast_ops: bool,
    sums: Sums,
    executor: Executor,
    report: &mut LoadReport,
) -> Result<Arc<TypedSimplePlan>> {
    let run_options = RunOptions {
        executor: Some(executor),
        ..RunOptions::default()
    };
    Ok(match runtime {
        Runtime::Cuda => cuda_plan(model, &run_options)?,
        _ => {
            let mut model = model;
            // the weight products on dinoedge's kernels, where this CPU runs them
            if fast_ops {
                if crate::rotary::enabled() {
                    let n = crate::rotary::swap_rotary(&mut model)
                        .map_err(|e| ModelError::tract("fuse the rotary embeddings", e))?;
                    tracing::debug!("{n} rotary embeddings fused");
                }
                let kernels = crate::qmatmul::Kernels {
                    sums,
                    ..crate::qmatmul::Kernels::available()
                };
                // attention first: its products are the ones swap_products would take
                if crate::qmatmul::Kernels::fused_attention() && crate::attention::enabled() {
                    let n = crate::attention::swap_attention(&mut model)
                        .map_err(|e| ModelError::tract("fuse the attention", e))?;
                    tracing::debug!("{n} attention blocks fused");
                    report.fused_attention = n;
                }
                let n = crate::qmatmul::swap_products(&mut model, kernels)
                    .map_err(|e| ModelError::tract("swap in dinoedge's products", e))?;
                tracing::debug!("{n} products on dinoedge's kernels ({kernels:?})");
            }
            let mut optimized = model
                .into_optimized()
                .map_err(|e| ModelError::tract("optimise the model", e))?;
            // tract forms its static quantisers while optimising: swap those now.
            if fast_ops {
                crate::ops::swap_static_quantizers(&mut optimized);
                crate::ops::swap_static_dequantizers(&mut optimized);
                let (n, biases) = crate::qmatmul::fuse_requantize(&mut optimized)
                    .map_err(|e| ModelError::tract("fuse the requantisations", e))?;
                tracing::debug!("{n} QDQ requantisations ({biases} with a bias) fused");
                report.requantized_products = n;
                report.requantized_biases = biases;
                let n = crate::resize::swap_resizes(&mut optimized);
                tracing::debug!("{n} resizes on dinoedge's plane-by-plane loop");
                let n = crate::element_wise::swap_element_wise(&mut optimized)
                    .map_err(|e| ModelError::tract("swap in dinoedge's GELU", e))?;
                tracing::debug!("{n} GELUs and u8 offsets on dinoedge's loops");
            }
            let products: Vec<_> = optimized
                .nodes()
                .iter()
                .filter_map(|n| n.op_as::<crate::qmatmul::MatMulInt8>())
                .map(|op| &op.weights)
                .collect();
            report.int8_products = products.len();
            report.seven_bit_products = products.iter().filter(|w| w.narrow()).count();
            report.byte_products = products.iter().filter(|w| w.bytes()).count();
            report.split_weights = products.iter().map(|w| w.split()).sum();
            report.saturating_products = products.iter().filter(|w| w.saturating()).count();
            report.dinoedge_ops = optimized
                .nodes()
                .iter()
                .filter(|n| {
                    n.op_as::<crate::ops::FastDynamicQuantizeLinearU8>()
                        .is_some()
                        || n.op_as::<crate::ops::FastQuantizeLinearI8>().is_some()
                        || n.op_as::<crate::ops::DequantizeI32>().is_some()
                        || n.op_as::<crate::ops::ScaleI32>().is_some()
                        || n.op_as::<crate::ops::FastDequantizeLinearF32>().is_some()
                        || n.op_as::<crate::qmatmul::MatMulInt8>().is_some()
                        || n.op_as::<crate::qmatmul::MatMulF32>().is_some()
                        || n.op_as::<crate::attention::FusedAttention>().is_some()
                        || n.op_as::<crate::layer_norm::LayerNorm>().is_some()
                        || n.op_as::<crate::resize::Resize2d>().is_some()
                        || n.op_as::<crate::rotary::Rotary>().is_some()
                        || n.op_as::<crate::element_wise::Gelu>().is_some()
                        || n.op_as::<crate::element_wise::OffsetU8AsI8>().is_some()
                })
                .count();
            TypedSimplePlan::new_with_options(optimized, &run_options)
                .map_err(|e| ModelError::tract("build the execution plan", e))?
        }
    })
}

/// The most threads a backbone takes (`--threads 99999` would spend minutes starting them).
pub const MAX_THREADS: usize = 256;

/// The decluttered graph for these taps: from the compile cache when it has a sound entry, else
/// compiled from the ONNX file (and stored). What happened goes into `report`.
fn cached_or_compiled(
    info: &ModelInfo,
    options: &BackboneOptions,
    taps: &[String],
    resolution: Resolution,
    fast_ops: bool,
    options_key: String,
    report: &mut LoadReport,
) -> Result<TypedModel> {
    let nnef = crate::nnef::framework;
    // external data that is missing is said as such (not as tract's message later)
    let external = cache::external_data(&info.path, &info.proto)?;
    // Try the cache, under the digest of every file the model reads.
    let entry = match options.cache.dir() {
        Some(dir) => match cache::model_digest(&info.path, &external) {
            Ok(sha) => {
                let meta = EntryMeta::new(&sha, options_key);
                Some((Entry::new(&dir, &meta), meta))
            }
            Err(e) => {
                report.cache_note = Some(format!("cache skipped: {e}"));
                None
            }
        },
        None => None,
    };
    let mut decluttered: Option<TypedModel> = None;
    if let Some((entry, meta)) = &entry {
        let t = Instant::now();
        match entry.check(meta) {
            Ok(()) => match nnef().model_for_path(&entry.model) {
                Ok(m) if m.outputs.len() == taps.len() => {
                    // NNEF writes some operators as several (a transpose comes back before
                    // each quantised product's operand): decluttering again folds them, or a
                    // cached ViT-S plan ran 49 `MoveAxis` (2–3 ms) more than a fresh one
                    let m = m
                        .into_decluttered()
                        .map_err(|e| ModelError::tract("simplify the cached graph", e))?;
                    report.source = LoadSource::Cache;
                    report.cache_load = t.elapsed();
                    report.cache_entry = Some(entry.model.clone());
                    decluttered = Some(m);
                }
                Ok(m) => {
                    report.cache_note = Some(format!(
                        "cache entry {} has {} outputs, expected {}: rebuilt",
                        entry.model.display(),
                        m.outputs.len(),
                        taps.len()
                    ));
                    entry.remove();
                }
                Err(e) => {
                    tracing::warn!(
                        "cache entry {} is corrupt ({e:#}); rebuilding it",
                        entry.model.display()
                    );
                    report.cache_note = Some(format!(
                        "cache entry {} was corrupt: rebuilt",
                        entry.model.display()
                    ));
                    entry.remove();
                }
            },
            Err(why) if why == "no entry" => {}
            Err(why) => {
                tracing::info!(
                    "cache entry {}: {why}; rebuilding it",
                    entry.model.display()
                );
                report.cache_note = Some(format!("cache entry {why}: rebuilt"));
                entry.remove();
            }
        }
    }

    let model = match decluttered {
        Some(m) => m,
        None => {
            let t = Instant::now();
            let m = compile(info, taps, options.batch, resolution, fast_ops)?;
            report.compile = t.elapsed();
            if let Some((entry, meta)) = &entry {
                let stored = entry.store(meta, |f| {
                    nnef()
                        .write_to_tar(&m, f)
                        .map(|_| ())
                        .map_err(|e| format!("{e:#}"))
                });
                match stored {
                    Ok(()) => report.cache_entry = Some(entry.model.clone()),
                    Err(e) => {
                        // Some graphs hold ops tract cannot write as NNEF (e.g. the
                        // dynamic int8 quantiser): they just start uncached.
                        tracing::info!("{e}");
                        report.cache_note = Some(format!("not cached: {e}"));
                    }
                }
            }
            m
        }
    };
    Ok(model)
}

/// The runtime `asked` resolves to here, and why `cuda-or-cpu` fell back to the CPU.
fn resolve_runtime(asked: Runtime) -> Result<(Runtime, Option<String>)> {
    match (asked, cuda_status()) {
        (Runtime::Cpu, _) => Ok((Runtime::Cpu, None)),
        (_, CudaStatus::Ready) => Ok((Runtime::Cuda, None)),
        (Runtime::Cuda, CudaStatus::NotBuilt) => Err(ModelError::CudaNotBuilt),
        (Runtime::Cuda, CudaStatus::Unavailable(reason)) => {
            Err(ModelError::CudaUnavailable { reason })
        }
        (Runtime::CudaOrCpu, status) => {
            let why = match status {
                CudaStatus::NotBuilt => "this dinoedge was built without the `cuda` feature".into(),
                CudaStatus::Unavailable(reason) => reason,
                CudaStatus::Ready => unreachable!("matched above"),
            };
            tracing::info!("CUDA cannot run here ({why}): the backbone runs on the CPU");
            Ok((
                Runtime::Cpu,
                Some(format!("CUDA unavailable, on the CPU: {why}")),
            ))
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_plan(model: TypedModel, options: &RunOptions) -> Result<Arc<TypedSimplePlan>> {
    crate::runtime::cuda_plan(model, options)
        .map_err(|e| ModelError::tract("build the CUDA plan", e))
}

#[cfg(not(feature = "cuda"))]
fn cuda_plan(_model: TypedModel, _options: &RunOptions) -> Result<Arc<TypedSimplePlan>> {
    // `resolve_runtime` never picks CUDA in a build without it.
    Err(ModelError::CudaNotBuilt)
}

/// Parse, tap the requested tensors, fix the input fact and declutter.
/// `fast_ops`: swap in dinoedge's operators (off only to measure tract's own, with
/// `DINOEDGE_TRACT_OPS_ONLY=1`).
fn compile(
    info: &ModelInfo,
    taps: &[String],
    batch: usize,
    res: Resolution,
    fast_ops: bool,
) -> Result<TypedModel> {
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    if fast_ops && crate::layer_norm::enabled() {
        crate::layer_norm::register_onnx(&mut onnx);
    }
    let dir = info.path.parent().and_then(|p| p.to_str());
    // int8 files: the patch embedding as an exact float convolution (see `conv`); QDQ files:
    // their weight products as int8 products (see `qdq`)
    let rewritten;
    let proto = if fast_ops && info.graph.precision.is_int8() {
        let mut p = (*info.proto).clone();
        if info.graph.precision == Precision::QdqInt8 {
            let n = crate::qdq::integer_products(&mut p);
            tracing::debug!("{n} QDQ products rewritten as int8 products");
        }
        let n = crate::conv::float_convolutions(&mut p);
        tracing::debug!("{n} int8 convolutions rewritten as float convolutions");
        rewritten = p;
        &rewritten
    } else {
        &*info.proto
    };
    let parsed = onnx
        .parse(proto, dir)
        .map_err(|e| ModelError::tract("parse the ONNX graph", e))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(ModelError::InvalidOnnx {
            path: info.path.clone(),
            reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        });
    }
    let mut model = parsed.model;
    let outlets = taps
        .iter()
        .map(|name| {
            parsed
                .outlets_by_name
                .get(name)
                .copied()
                .ok_or_else(|| ModelError::NotDinov2 {
                    path: info.path.clone(),
                    reason: format!("tensor {name} not found in the graph"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    model
        .select_output_outlets(&outlets)
        .map_err(|e| ModelError::tract("select the outputs", e))?;
    for (ix, name) in taps.iter().enumerate() {
        let _ = model.set_outlet_label(outlets[ix], name.clone());
    }
    let fact = f32::fact([batch, 3, res.height as usize, res.width as usize]);
    model
        .set_input_fact(0, fact.into())
        .map_err(|e| ModelError::tract("set the input size", e))?;
    let typed = model
        .into_typed()
        .map_err(|e| ModelError::tract("analyse the graph at this input size", e))?;
    let mut model = typed
        .into_decluttered()
        .map_err(|e| ModelError::tract("simplify the graph", e))?;
    let swapped = if fast_ops {
        crate::ops::swap_dynamic_quantizers(&mut model)
    } else {
        0
    };
    if swapped > 0 {
        tracing::debug!("{swapped} quantizers swapped for dinoedge's vectorised ones");
    }
    if fast_ops {
        let fused = crate::ops::fuse_dequantize(&mut model)
            .map_err(|e| ModelError::tract("fuse the int8 products' epilogues", e))?;
        tracing::debug!("{fused} int8 product epilogues fused");
    }
    Ok(model)
}

fn concrete_shape(model: &TypedModel, output: usize) -> Result<Vec<usize>> {
    let fact = model
        .output_fact(output)
        .map_err(|e| ModelError::tract("read the output shapes", e))?;
    fact.shape
        .as_concrete()
        .map(|s| s.to_vec())
        .ok_or_else(|| ModelError::Tract {
            stage: "resolve output shapes",
            message: format!("output {output} has a symbolic shape {:?}", fact.shape),
        })
}

"""The training configuration's schema: nested dataclasses, one per recipe section, each field documented by
the string under it (`cvae train --help` prints these). Defaults equal the reference setup (SVG on BAIR, the
lab's train_fixed_prior.py); `CHOICES` lists the values of the string fields that take one of a few.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.eval.protocols import PROTOCOLS


@dataclass
class DataConfig:
    shards: str = "shards/pushing"
    """Directory or http(s) URL holding `manifest.json` and the `{split}-NNNNNN.tar` shards."""
    train_split: str = "train"
    """Split used for training (resampled, shuffled, the same number of batches on every rank)."""
    val_split: str = "validate"
    """Split used for validation PSNR (ordered, complete)."""
    use_cond: bool = True
    """Condition on the per-frame action + end-effector position; false trains an unconditional model."""
    n_past: int = 2
    """Context frames given to the model."""
    n_future: int = 10
    """Frames predicted after the context (training and evaluation use the first n_past+n_future frames)."""
    random_window: bool = False
    """Train on a random n_past+n_future window of each sequence instead of its first frames."""
    batch_size: int = 12
    """Sequences per batch per process (the reference uses 12 on one GPU)."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 256
    """Sequences held in the training shuffle buffer (per worker)."""
    val_sequences: int = 0
    """Validate on the first N sequences of the split only; 0 means the full split."""


@dataclass
class ModelConfig:
    width: float = 1.0
    """Multiplier on the VGG64 channel widths (64, 128, 256, 512); 0.125 gives a tiny CPU model."""
    g_dim: int = 128
    """Frame encoding size (encoder output, decoder input)."""
    z_dim: int = 64
    """Latent size per frame."""
    rnn_size: int = 256
    """Hidden size of the LSTMs."""
    predictor_layers: int = 2
    """LSTM layers of the frame predictor."""
    posterior_layers: int = 1
    """LSTM layers of the Gaussian posterior q(z_t | x_1..t)."""
    prior: str = "fixed"
    """`fixed`: p(z_t) = N(0, I) (SVG-FP, the reference); `learned`: Gaussian LSTM p(z_t | x_1..t-1) (SVG-LP)."""
    prior_layers: int = 1
    """LSTM layers of the learned prior (used when prior = learned)."""
    skip_from: str = "last_context"
    """Which frame's encoder features the decoder's skip connections use for predicted frames: `last_context`
    (the paper's wording: x_{n_past-1}; chosen by the ablation in docs/model.md, where it puts the first predicted
    frame above copy-last-frame), `reference` (edenton/svg's code: the context frame before the last,
    x_{n_past-2}; not with n_past = 1) or `previous` (the input frame of every step: `--last_frame_skip`)."""
    predictor_bn: bool = False
    """BatchNorm1d on the frame predictor's output before its tanh (edenton/svg has it commented out)."""
    bn_stats: str = "step"
    """Training-mode BatchNorm statistics of the batched encoder/decoder calls: `step` (per time step over the B
    sequences, as the reference's per-step calls) or `batch` (one statistic over all B*T frames of a call)."""
    decoder_cond: str = "none"
    """Where-conditioning of the decoder (not in SVG; toolkit/model/spatial_cond.py): each skip block's first layer
    gets a learned bias linear in the pixel's coordinates and in conditioning rows, so the decoder can draw the arm
    where the actions put it (CoordConv, Liu et al. 2018). `none`: the reference's decoder; `step`: the row the
    predictor reads (cond_{i-1} for frame i); `step_and_skip`: that row and the row of the frame the skips come
    from (where the arm it must paint over is)."""


@dataclass
class OptimConfig:
    lr: float = 0.002
    """Adam learning rate (the reference's 0.002); the peak of the schedule."""
    lr_schedule: str = "constant"
    """`constant` (the reference) or `cosine`: from lr down to lr * lr_final over the run's optimizer steps."""
    lr_final: float = 0.05
    """With the cosine schedule, the last step's learning rate as a fraction of lr."""
    warmup_steps: int = 0
    """Optimizer steps over which the learning rate rises linearly from 0 to lr first."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping (the reference does not clip)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""


@dataclass
class ScheduleConfig:
    tfr: float = 1.0
    """Initial teacher forcing ratio: probability that a batch feeds ground-truth frames as inputs."""
    tfr_start_decay_epoch: int = 0
    """First epoch after which the teacher forcing ratio decreases."""
    tfr_decay_step: float = 0.0
    """Decrease of the teacher forcing ratio per epoch once decay has started."""
    tfr_lower_bound: float = 0.0
    """The teacher forcing ratio never goes below this."""
    kl_anneal: str = "monotonic"
    """KL weight schedule: `monotonic` (one 0->1 ramp), `cyclical` (Fu et al. 2019) or `none` (always 1)."""
    kl_anneal_cycle: int = 3
    """Number of cycles over the whole run (cyclical)."""
    kl_anneal_ratio: float = 0.5
    """Fraction of each cycle (of the run, for monotonic) spent ramping the weight from 0 to 1."""
    kl_per_step: bool = False
    """Update the KL weight every optimizer step instead of once per epoch."""
    beta: float = 1e-4
    """KL weight at the top of the ramp (the reference's beta)."""


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    """Directory for config.yaml, metrics.jsonl, checkpoints/, samples/ and the W&B run; `{run_id}` in it is
    replaced by the W&B run id (one directory per sweep run)."""
    epochs: int = 300
    """Number of epochs (the reference trains 300)."""
    epoch_size: int = 600
    """Batches per rank per epoch (the reference's epoch_size)."""
    seed: int = 1
    """Seed for model init, data order and sampling; a run is reproducible given the seed and world size."""
    mixed_precision: str = "auto"
    """`auto` (what `accelerate launch`'s config sets, else none), `no`, `bf16` or `fp16` (with a gradient
    scaler; needs a GPU: on CPU accelerate runs fp16 requests in float32)."""
    eval_every: int = 5
    """Validate (PSNR on the validation split) every N epochs and after the last one."""
    checkpoint_every: int = 1
    """Save a checkpoint every N epochs (and always after the last epoch or on SIGTERM/SIGINT)."""
    keep_last: int = 3
    """Periodic checkpoints to keep besides `best`."""
    resume: str = ""
    """`auto`: continue from the newest checkpoint in run_dir if any; a path: resume from that checkpoint."""
    log_every: int = 50
    """Write a step record to metrics.jsonl (and W&B) every N optimizer steps."""
    max_nonfinite: int = 20
    """Abort once more than this many steps had a non-finite loss (each is skipped; counted every log_every
    steps and at the end of an epoch)."""
    num_gifs: int = 4
    """Validation sequences rendered as prediction GIFs at each validation."""
    progress: bool = True
    """Show a progress bar on the main process."""
    channels_last: bool = True
    """Keep convolution weights in channels-last memory format (faster convolutions on CPU and tensor cores)."""
    compile: bool = False
    """`torch.compile` the encoder and the decoder (in place: checkpoints are unchanged); the first steps take
    longer while it compiles."""
    cuda_graphs: bool = False
    """Capture each training step (forward, backward, clipping, Adam) in a CUDA graph and replay it: one launch
    per step instead of thousands (toolkit/train/graphs.py). Needs a CUDA GPU, optim.grad_accum = 1, no fp16
    gradient scaler and train.compile off; otherwise the run says why at start-up and runs eager."""
    bn_batches: int = 20
    """Before every validation and checkpoint, replace the BatchNorm running statistics by their average over
    this many training batches with the current weights (0: keep the running averages of training, which
    reflect little more than the last batch or two; see toolkit/train/batchnorm.py). With N > 0 the training
    steps do not update the running statistics at all (nothing reads them before they are replaced)."""
    eval_precision: str = "no"
    """Precision of validation: `no` (float32, as `cvae eval` by default) or `bf16`/`fp16` autocast."""
    val_protocol: str = "lab"
    """Evaluation protocol of validation (`cvae eval --protocol`; toolkit/eval/protocols.py): `lab` (the model's
    own frame counts, one sample) picks the best checkpoint by its best-of-1 PSNR; another protocol must fit the
    model (e.g. `svg` needs data.n_past = 2) and costs its samples at every validation."""
    val_samples: int = 0
    """Samples per validation video; 0: the protocol's own (1 for `lab`). With more than one, every validation
    also logs mean-of-N, best-minus-mean PSNR and the sample diversity, and the best checkpoint is the one with
    the best best-of-N PSNR."""


@dataclass
class WandbConfig:
    mode: str = "auto"
    """`auto` (online if the W&B server is reachable and logged in, else offline), `online`, `offline`, `disabled`."""
    project: str = "cvae-video"
    """W&B project."""
    entity: str = ""
    """W&B entity (team or user); empty uses the default."""
    name: str = ""
    """Run name; empty uses the run directory's name."""
    tags: list[str] = field(default_factory=list)
    """Tags added to the W&B run."""
    log_videos: bool = True
    """Log validation predictions as videos."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


CHOICES = {
    "model.prior": ("fixed", "learned"),
    "optim.lr_schedule": ("constant", "cosine"),
    "model.skip_from": ("reference", "last_context", "previous"),
    "model.bn_stats": ("step", "batch"),
    "model.decoder_cond": ("none", "step", "step_and_skip"),
    "schedule.kl_anneal": ("monotonic", "cyclical", "none"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "train.eval_precision": ("no", "bf16", "fp16"),
    "train.val_protocol": tuple(PROTOCOLS),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
}

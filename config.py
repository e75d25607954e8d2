"""One configuration module for every script: read params.json, validate it
against the schema below, merge command-line overrides, report user errors.

    params = load_params("params.json", overrides={"sea_ice.batch_size": 7})
    params["sea_ice"]["batch_size"]  -> 7

The schema is plain data: every key has a type, a default (or is required), a
unit and a one-line doc. `python config.py --markdown` prints the reference
table that the README carries (`--readme README.md` rewrites it there);
`python config.py [--config PATH]` validates a file.

User mistakes raise `UserError` (one line, naming the key/file/value and what
was expected); scripts wrap `main` in `run_main`, which prints that line on
stderr and exits with status 2, with no traceback.
"""
import argparse
import copy
import datetime
import difflib
import json
import math
import os
import sys

from atomic import atomic_path

DEFAULT_CONFIG = "params.json"
REQUIRED = object()  # marker: the key has no default and must be given


class UserError(Exception):
    """A mistake the user can fix (bad flag, bad file, bad key). One line."""


def run_main(main, argv=None):
    """Call `main(argv)`; turn a UserError into one stderr line and exit 2."""
    try:
        status = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(status or 0)


# --------------------------------------------------------------------------- schema
class Key:
    """A leaf of the schema: expected type(s), default, allowed values, doc."""

    def __init__(self, types, default=REQUIRED, doc="", unit="", choices=None, items=None,
                 minimum=None, nullable=False, date=False, maximum=None, below=None, min_items=0,
                 ascending=False, distinct=False):
        self.types = types if isinstance(types, tuple) else (types,)
        self.default, self.doc, self.unit = default, doc, unit
        self.choices, self.items, self.minimum, self.nullable = choices, items, minimum, nullable
        self.date = date  # an int YYYYMMDD that must be a real calendar day
        self.maximum, self.below = maximum, below  # value <= maximum, value < below (list: every item)
        self.min_items = min_items  # a list: at least this many items
        self.ascending, self.distinct = ascending, distinct  # a list: strictly ascending / no item twice


class Section(dict):
    """A nested group of keys with fixed names."""

    def __init__(self, doc="", required=False, **keys):
        super().__init__(**keys)
        self.doc, self.required = doc, required


class MapOf:
    """A dict whose keys are free (e.g. source names) and whose values share one Key."""

    def __init__(self, value, default=REQUIRED, doc=""):
        self.value, self.default, self.doc = value, default, doc


NUM = (int, float)
STR_LIST = Key(list, items=str, min_items=1, distinct=True)
RAIN_RATE_MAX = 1000.0  # mm/h: above any rain rate ever measured (the world record is about 400 mm/h)
SEED_MAX = 2**32 - 1  # the seeds numpy accepts

CELL_KEYS = dict(  # the ConvLSTM cell options every ConvLSTM model shares
    kernel_size=Key(int, 3, "ConvLSTM kernel size", minimum=1),
    peephole=Key(bool, True, "peephole terms W_c o C in the cells"),
    peephole_size=Key(list, None, "null: peephole weights per channel, shared by all pixels (any frame size); "
                      "[H, W]: per channel and pixel as in Shi et al. (2015), for input frames of exactly "
                      "H x W", "pixels", items=int, nullable=True, minimum=1),
)

LAGRANGIAN_DOC = ("forecast in Lagrangian coordinates (L-CNN): inputs moved to the last input time along the "
                  "stored motion, the network predicts growth and decay, the result is advected to each lead; "
                  "needs data.motion")
SMOOTHING_DOC = ("with lagrangian: smooth each lead's forecast with a Gaussian whose width is learned (starts at "
                 "none), removing the scales that are no longer predictable at that lead (model.LeadSmoothing)")

SCHEMA = Section(
    task=Key(str, "nowcast", "what training.py trains on", choices=("nowcast", "sea_ice")),
    paths=Section(
        required=True, doc="where data and outputs live (relative to the working directory)",
        raw_dataset=Key(str, "data/raw_dataset", "raw nowcasting cases: <case>/<source>/<YYYYmmddHHMM>.npy"),
        processed_data=Key(str, "data/processed_data", "preproc.py output: stats.json and <split>/<case>.zarr"),
        sea_ice_data=Key(str, "data", "folder of daily asi-AMSR2-*.nc files (download.py output)"),
        checkpoints=Key(str, "outputs/checkpoints", "folder holding best.pt and last.pt"),
        outputs=Key(str, "outputs", "run outputs: logs, eval/, plots/"),
    ),
    sea_ice=Section(
        required=True, doc="sea-ice toolbox (download.py, consolidate_data.py, create_mask.py, sea-ice training)",
        product=Key(str, "n3125", "Bremen ASI grid", choices=("n3125", "n6250", "s3125", "s6250")),
        base_url=Key(str, "https://data.seaice.uni-bremen.de/amsr2/asi_daygrid_swath/{product}/netcdf",
                     "download root; {product} is substituted; files at <base_url>/<YYYY>/<name>"),
        start_date=Key(int, 20240401, "first day (YYYYMMDD)", date=True),
        end_date=Key(int, 20240430, "last day, inclusive (YYYYMMDD)", date=True),
        consolidated_file=Key(str, "data/sea_ice_concentration.nc", "consolidate_data.py output (.nc or .zarr)"),
        land_mask_file=Key(str, "", "land mask NetCDF (create_mask.py output); empty: none"),
        batch_size=Key(int, 30, "frames filled per batch (memory grows with it, results do not change)", "days", minimum=1),
        time_window=Key(int, 3, "Gaussian fill: half-width of the time box", "days", minimum=0),
        space_window=Key(int, 10, "Gaussian fill: half-width of the space box", "pixels", minimum=0),
        alpha=Key(NUM, 25.0, "Gaussian fill: weight of time against space (w uses dy^2+dx^2+alpha*dt^2)", minimum=0),
        sigma=Key(NUM, 5.0, "Gaussian fill: kernel width", "pixels", minimum=1e-6),
        max_time_gap=Key(int, 5, "longest NaN run filled linearly in time", "days", minimum=0),
        mask_threshold=Key(NUM, 0.85, "create_mask.py: land (or the pole hole) where the NaN frequency is at least "
                           "this", "fraction", minimum=0),
        input_length=Key(int, 5, "sea-ice task: input days", "days", minimum=1),
        pred_length=Key(int, 3, "sea-ice task: predicted days", "days", minimum=1),
        input_gap=Key(int, 1, "sea-ice task: days between input frames", "days", minimum=1),
        pred_gap=Key(int, 1, "sea-ice task: days between predicted frames", "days", minimum=1),
        pred_shift=Key(int, 1, "sea-ice task: first target this many days after the last input", "days", minimum=1),
        samples_gap=Key(int, 1, "sea-ice task: days between sample starts", "days", minimum=1),
        roi=Key(list, None, "sea-ice task: [ymin, ymax, xmin, xmax] crop in pixels; null: full frame",
                items=int, nullable=True),
        max_missing_fraction=Key(NUM, 0.5, "sea-ice task: a sample is dropped when one of its days has more than "
                                 "this fraction of its pixels (land and pole hole left out) not observed "
                                 "(fill_flag); 1: keep all", "fraction", minimum=0),
    ),
    data=Section(
        required=True, doc="nowcasting data (preproc.py, dataset.py)",
        inputs=MapOf(STR_LIST, {"radar": ["rain_rate"], "nwp": ["t2m", "tcwv", "cape"]},
                     "source -> channel names, in the order of the file's channels"),
        target=Section(
            "what the model predicts",
            source=Key(str, "radar", "source folder of the target"),
            channel=Key(str, "rain_rate", "channel of that source"),
        ),
        time_step_minutes=Key(int, 5, "step of the common time axis", "min", minimum=1),
        max_gap_steps=Key(int, 3, "longest NaN run filled linearly in time", "steps", minimum=0),
        split=Section(
            "train/val/test split of cases: ratios with a seed, or explicit lists of case ids",
            train=Key((NUM, list), 0.7, "fraction of cases, or a list of case ids"),
            val=Key((NUM, list), 0.15, "fraction of cases, or a list of case ids"),
            test=Key((NUM, list), 0.15, "fraction of cases, or a list of case ids"),
            seed=Key(int, 42, "shuffle seed for ratio splits", minimum=0, maximum=SEED_MAX),
        ),
        transform=MapOf(Key(str, choices=("log1p", "none")), {"rain_rate": "log1p"},
                        "channel -> transform applied before min/max normalisation"),
        input_steps=Key(int, 6, "input frames per sample", "steps", minimum=1),
        lead_steps=Key(int, 24, "first target is this many steps after the last input", "steps", minimum=1),
        output_steps=Key(int, 1, "target frames per sample", "steps", minimum=1),
        patch_size=Key(int, 128, "square crop side (a smaller grid is zero-padded to it, without coverage)",
                       "pixels", minimum=8, maximum=4096),
        rain_threshold=Key(NUM, 0.5, "a patch 'has rain' when its target exceeds this somewhere", "mm/h",
                           minimum=0, maximum=RAIN_RATE_MAX),
        rain_patch_prob=Key(NUM, 0.8, "probability that a training crop is drawn among rainy patches", "fraction",
                            minimum=0, maximum=1),
        crop_tries=Key(int, 10, "random crops tried to find a rainy patch", minimum=1),
        cache_mb=Key(NUM, 1024, "decoded Zarr chunks each loading process keeps in memory (dataset.ChunkCache; "
                     "random crops overlap, so a warm cache reads 6-15x faster); 0: none", "MB", minimum=0),
        eval_full_frame=Key(bool, False, "val/test samples: false = the centre patch_size crop, true = the full "
                            "frame (a batch is zero-padded to its largest grid, padding has coverage False)"),
        rain_filter_fraction=Key(NUM, 0.0, "NL-50-style sample filter (every split, and evaluate.py): keep a window "
                                 "only when, in every target frame, at least this fraction of the covered pixels "
                                 "exceeds rain_filter_threshold; 0: keep all; NL-50: 0.5", "fraction", minimum=0,
                                 maximum=1),
        rain_filter_threshold=Key(NUM, 0.0, "the rain of rain_filter_fraction: value > this (NL-50, SmaAt-UNet's "
                                  "create_datasets.py: > 0)", "mm/h", minimum=0, maximum=RAIN_RATE_MAX),
        motion=Key(bool, True, "preproc.py stores the target's motion field per step (baselines.motion_field of the "
                   "last motion_frames frames, full frames), which Lagrangian models and augmentation use"),
        motion_frames=Key(int, 3, "frames up to a step that its motion is estimated from (also the "
                          "extrapolation baseline's)", "steps", minimum=2),
        augment=Key(bool, True, "training crops are flipped and turned by multiples of 90 degrees at random, "
                    "their motion vectors with them"),
    ),
    model=Section(
        required=True, doc="the network; `name` picks one, its options are in the section of that name",
        name=Key(str, REQUIRED, "model registry name",
                 choices=("convlstm_unet", "encoder_forecaster", "smaat_unet", "spark_unet")),
        convlstm_unet=Section(
            "ConvLSTM U-Net (seed 000)",
            base_channels=Key(int, 16, "hidden channels at the finest scale (doubled per level)", minimum=1),
            depth=Key(int, 3, "number of scales", minimum=1),
            **CELL_KEYS,
            upsample=Key(str, "transposed", "decoder x2 upsampling: 2x2 transposed convolution, the same with ICNR "
                         "initialisation, or bilinear x2 + 3x3 convolution",
                         choices=("transposed", "transposed_icnr", "bilinear")),
            lagrangian=Key(bool, False, LAGRANGIAN_DOC),
            smoothing=Key(bool, False, SMOOTHING_DOC),
        ),
        encoder_forecaster=Section(
            "encoder-forecaster of Shi et al. (2015)",
            hidden_channels=Key(list, [32, 32], "hidden channels per stacked layer", items=int, min_items=1,
                                minimum=1),
            **CELL_KEYS,
            lagrangian=Key(bool, False, LAGRANGIAN_DOC),
            smoothing=Key(bool, False, SMOOTHING_DOC),
        ),
        smaat_unet=Section(
            "SmaAt-UNet of Trebing et al. (2021), input frames stacked as channels (seed 004's baseline)",
            base_channels=Key(int, 64, "channels at the finest scale (doubled per level, the deepest repeats)", minimum=1),
            depth=Key(int, 5, "number of scales (5: four 2x2 poolings, as the paper)", minimum=1),
            kernels_per_layer=Key(int, 2, "depthwise filters per input channel", minimum=1),
            reduction=Key(int, 16, "CBAM channel-attention reduction ratio", minimum=1),
        ),
        spark_unet=Section(
            "SpaT-SparK encoder-decoder (seed 004): ResNet encoder, translation network, light U-Net decoder; "
            "input frames stacked as channels; pretrain.py pretrains it",
            arch=Key(str, "resnet18", "encoder layout (torchvision's ResNet-18 / ResNet-50 blocks, random init)",
                     choices=("resnet18", "resnet50")),
            base_width=Key(int, 64, "encoder channels of the first stage (64 in torchvision; x2 per stage)", minimum=1),
            decoder_width=Key(int, 512, "decoder channels at stride 32, halved at each of its 5 upsamplings "
                              "(multiple of 32)", minimum=32),
            densify_norm=Key(str, "bn", "norm of the encoder features before the decoder (bn: mask-aware batch norm)",
                             choices=("bn", "ln", "none")),
            transition=Key(str, "linearA", "translation network: linearA = a 1x1 conv per scale starting as the "
                           "identity; conv = residual 3x3 convs per scale; none = identity",
                           choices=("none", "linearA", "conv")),
        ),
    ),
    training=Section(
        required=True, doc="training.py",
        epochs=Key(int, 20, "epochs", minimum=1),
        batch_size=Key(int, 8, "samples per step", minimum=1),
        lr=Key(NUM, 1e-3, "AdamW learning rate", minimum=0),
        weight_decay=Key(NUM, 1e-2, "AdamW weight decay", minimum=0),
        num_workers=Key(int, 2, "DataLoader worker processes", minimum=0),
        steps_per_epoch=Key(int, 200, "training steps per epoch", minimum=1),
        val_steps=Key(int, 50, "validation batches per epoch", minimum=1),
        seed=Key(int, 0, "seed of all random number generators", minimum=0, maximum=SEED_MAX),
        device=Key(str, "auto", "auto: CUDA when present, else CPU", choices=("auto", "cpu", "cuda")),
        compile=Key(bool, False, "torch.compile the model"),
        amp=Key(bool, True, "bf16 autocast on CUDA (ignored on CPU)"),
        lr_patience=Key(int, 2, "ReduceLROnPlateau patience", "epochs", minimum=0),
        lr_factor=Key(NUM, 0.5, "ReduceLROnPlateau factor", minimum=0, below=1),
        init_weight=Key(str, "", "fine-tuning: a pretrain.py or training.py checkpoint; its weights whose name and "
                        "shape match the model's are copied in before training (not on --resume); '' = none"),
        freeze=Key(str, "no", "fine-tuning: 'encoder' keeps the encoder's weights and batch-norm statistics fixed "
                   "(spark_unet)", choices=("no", "encoder")),
        early_stop_patience=Key(int, 0, "stop when the validation score (select_on) has not improved for this many epochs "
                                "(0: never)", "epochs", minimum=0),
        select_on=Key(str, "loss", "what picks best.pt and drives the learning-rate schedule and early stopping: "
                      "the validation loss (lower is better), or the validation CSI at select_threshold (higher is "
                      "better; counted over all validation pixels)", choices=("loss", "csi")),
        select_threshold=Key(NUM, 1.0, "select_on csi: the event threshold, in the target's physical units", "mm/h",
                             minimum=0),
        cpu_minutes=Key(NUM, 0, "stop after the epoch in which this run's CPU time (all threads and loader "
                        "workers) passes this budget (0: no budget)", "min", minimum=0),
        loss=Section(
            "loss on the target (pixels outside coverage, and land, carry no weight)",
            name=Key(str, "weighted_mse", "loss function; weighted_mse_mae is the B-MSE + B-MAE of Shi et al. (2017)",
                     choices=("weighted_mse", "weighted_mse_mae", "mse", "mae")),
            thresholds=Key(list, [2.0, 5.0, 10.0, 30.0], "weighted_mse: rain-rate thresholds", "mm/h", items=NUM,
                           minimum=0, maximum=RAIN_RATE_MAX, ascending=True),
            weights=Key(list, [1.0, 2.0, 5.0, 10.0, 30.0],
                        "weighted_mse: weight below the first threshold, then above each", items=NUM),
            csi_weight=Key(NUM, 0.0, "weight of a soft-CSI term added to the loss (1 - CSI of soft forecast events "
                           "at csi_threshold; training.soft_csi_loss); 0: none", minimum=0),
            csi_threshold=Key(NUM, 1.0, "the event threshold of the soft-CSI term", "mm/h", minimum=0.001,
                              maximum=RAIN_RATE_MAX),
        ),
    ),
    downscaling=Section(
        doc="physics-constrained downscaling, seed 003 (make_downscaling_data.py, downscaling.py)",
        data_dir=Key(str, "data/downscaling", "LR-HR stores <data_dir>/<dataset>.zarr"),
        outputs=Key(str, "outputs/downscaling", "runs <outputs>/<model_id>/ (checkpoints, train_log.csv, scores), "
                    "experiment tables and panels"),
        source=Key(str, "radar", "HR fields: radar = <radar_dir>/<event>.npz (rain_rate, mm/h); raw = raw cases "
                   "<paths.raw_dataset>/<case>/radar/*.npy; sea_ice = sea_ice.consolidated_file (fraction, "
                   "land from sea_ice.land_mask_file); generated = generate_data.py rain cases",
                   choices=("radar", "raw", "sea_ice", "generated")),
        radar_dir=Key(str, "../shared/data/radar", "folder of radar events <event>.npz; when it is absent, "
                      "source radar falls back to generated rain cases"),
        factor=Key(int, 4, "make_downscaling_data.py: LR = means of factor x factor HR blocks (2, 4, 8)", minimum=2),
        frames=Key(int, 1, "make_downscaling_data.py: consecutive frames per sample (3: the temporal set T1)",
                   "frames", minimum=1),
        crop_size=Key(int, 128, "HR crop side (a multiple of 8)", "pixels", minimum=16),
        wet_threshold=Key(NUM, 0.1, "a pixel is wet at or above this (rain; sea ice counts ice >= 0.15)", "mm/h",
                          minimum=0, maximum=RAIN_RATE_MAX),
        min_wet_fraction=Key(NUM, 0.05, "crops with a smaller wet fraction (mean over the frames) are left out",
                             "fraction", minimum=0, maximum=1),
        max_crops=Section(
            "crops per split at most, chosen evenly among the candidates (in time and space)",
            train=Key(int, 1024, "training crops", minimum=1),
            val=Key(int, 128, "validation crops", minimum=1),
            test=Key(int, 256, "test crops", minimum=1),
        ),
        val_events=Key(list, ["fmi-20170509"], "validation events (model selection)", items=str),
        test_events=Key(list, ["fmi-20160928"], "held-out test events (the tables); never used to choose "
                        "settings. When none of val_events/test_events exists in the source, the last event "
                        "is the test event and the one before it the validation event", items=str),
        dataset=Key(str, "rr4", "store name under data_dir (rr2, rr4, rr8, rr4t3, sic4, ...)"),
        model=Key(str, "cnn", "network", choices=("cnn", "gan", "convgru", "flowconvgru")),
        model_id=Key(str, "", "run name (folder under outputs); empty: <dataset>_<model>_<constraints>"),
        constraints=Key(str, "none", "constraint layer on the output (soft: penalty in the loss, no layer)",
                        choices=("none", "soft", "add", "mult", "softmax", "scadd")),
        loss=Key(str, "mse", "mse, or mass_constraints = alpha * MSE(agg(y), x) + (1 - alpha) * MSE(y, hr) "
                 "(constraints soft implies it)", choices=("mse", "mass_constraints")),
        alpha=Key(NUM, 0.99, "weight of the mass term of mass_constraints (0..1)", minimum=0),
        adv_factor=Key(NUM, 1e-4, "gan: weight of the adversarial loss beside the MSE content loss", minimum=0),
        input_transform=Key(str, "auto", "what the networks see of the LR input (the constraint layers use it "
                            "unchanged): log1p of the physical value scaled to 0..1, or the [0, 1] value itself; "
                            "auto: log1p for rain rate (mm/h), none otherwise", choices=("auto", "log1p", "none")),
        number_channels=Key(int, 32, "feature channels of the networks", minimum=1),
        number_residual_blocks=Key(int, 4, "residual blocks at LR", minimum=0),
        upsampling_factor=Key(int, None, "null: the dataset's factor; a value must equal it", nullable=True,
                              minimum=2),
        epochs=Key(int, 20, "training epochs", minimum=1),
        steps_per_epoch=Key(int, 0, "optimiser steps per epoch (validation and checkpoints after each); 0: one "
                            "pass over the training crops, as the seed", "steps", minimum=0),
        batch_size=Key(int, 8, "crops per step (the seed: 64; on a CPU budget more, smaller steps learn faster)",
                       minimum=1),
        lr=Key(NUM, 1e-3, "AdamW learning rate", minimum=0),
        weight_decay=Key(NUM, 1e-9, "AdamW weight decay (the seed's default)", minimum=0),
        cpu_budget=Key(NUM, 0, "stop training before an epoch that would pass this much CPU time (process "
                       "time, all threads; at the mean cost of the epochs so far; the first epoch always runs); "
                       "0: no limit", "s", minimum=0),
        ensemble_members=Key(int, 10, "gan: generator draws per crop at evaluation (CRPS; scores use their "
                             "mean)", minimum=1),
        eval_split=Key(str, "test", "split that the scores are computed on (the seed's --test_val_train)",
                       choices=("train", "val", "test")),
        seed=Key(int, 0, "seed of the random number generators (training, noise of the GAN)", minimum=0,
                 maximum=SEED_MAX),
        panels=Key(int, 3, "test crops shown in the panel figures (the rainiest)", minimum=0),
        experiment_budget=Key(NUM, 60, "--experiments: CPU seconds of training per experiment (epochs of "
                              "steps_per_epoch steps, 32 when that is 0; at least one epoch)", "s", minimum=1),
    ),
    pretraining=Section(
        "pretrain.py: SparK masked image modelling of model.spark_unet on every frame of the training cases "
        "(flag names as seed 004's)",
        in_channels=Key(int, None, "stacked input channels = frames x data.inputs channels; null: data.input_steps "
                        "x channels (must equal the fine-tuning model's for its first layer to load)",
                        minimum=1, nullable=True),
        bs=Key(int, 16, "batch size (seed: 128)", "samples", minimum=1),
        mask=Key(NUM, 0.3, "ratio of the 32 x 32-pixel patches masked (seed pretraining: 0.3; SparK: 0.6)",
                 "fraction", minimum=0),
        mask_mode=Key(str, "spatial", "spatial: the same patches masked in every frame; spatiotemporal: drawn "
                      "independently per frame", choices=("spatial", "spatiotemporal")),
        ep=Key(int, 10, "epochs (seed: 1600)", "epochs", minimum=1),
        wp_ep=Key(int, 1, "linear warm-up epochs, then cosine decay to 0 (seed: 40)", "epochs", minimum=0),
        base_lr=Key(NUM, 2e-4, "AdamW peak learning rate = base_lr x bs / 256", minimum=0),
        weight_decay=Key(NUM, 0.05, "AdamW weight decay", minimum=0),
        norm_eps=Key(NUM, 4e-4, "variance added in the per-patch normalisation of the targets, (x - mean) / "
                     "sqrt(var + norm_eps), in normalised units squared; 4e-4 = 0.02^2, about a 0.1 mm/h rain "
                     "variation after log1p and a 90 mm/h maximum: patches of trace rain stay near 0 instead of "
                     "becoming unit-variance noise (SparK: 1e-6, for photographs)", minimum=1e-12),
        steps_per_epoch=Key(int, 100, "training steps per epoch", minimum=1),
        val_steps=Key(int, 10, "held-out batches (val split, fixed masks) scored per epoch", minimum=1),
        exp_name=Key(str, "spark_pretrain", "run name: checkpoints in <paths.checkpoints>/<exp_name>/, log and "
                     "panels in <paths.outputs>/<exp_name>/"),
    ),
    evaluation=Section(
        required=True, doc="evaluate.py and the final test of training.py",
        thresholds=Key(list, [0.5, 1.0, 2.0, 5.0, 10.0], "categorical score thresholds", "mm/h", items=NUM,
                       min_items=1, minimum=0, maximum=RAIN_RATE_MAX, ascending=True),
        fss_windows=Key(list, [1, 5, 9], "FSS window sizes", "pixels", items=int, min_items=1, minimum=1,
                        ascending=True),
        methods=Key(list, ["model", "persistence", "extrapolation"], "methods compared", items=str, min_items=1,
                    choices=("model", "persistence", "extrapolation"), distinct=True),
    ),
)


# --------------------------------------------------------------------------- validation
def _type_name(types):
    names = {int: "int", float: "float", str: "string", bool: "bool", list: "list", dict: "object"}
    flat = []
    for t in types:
        flat.extend(t if isinstance(t, tuple) else (t,))
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in flat))


def _is_instance(value, types):
    flat = []
    for t in types:
        flat.extend(t if isinstance(t, tuple) else (t,))
    if isinstance(value, bool):  # bool is an int in Python; never accept it as a number
        return bool in flat
    return isinstance(value, tuple(flat))


def parse_date(value):
    """A datetime.date from an int or str YYYYMMDD of exactly 8 digits; None when it is not a real day."""
    text = str(value)
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _check_leaf(path, key, value):
    if value is None and key.nullable:
        return value
    if not _is_instance(value, key.types):
        raise UserError(f"{path}: expected {_type_name(key.types)}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path}: expected a finite number, got {value!r}")
    if key.date and parse_date(value) is None:
        raise UserError(f"{path}: expected a calendar day as YYYYMMDD (8 digits), got {value!r}")
    if not isinstance(value, list):
        _check_range(path, key, value)
        return value
    if key.items is not None:
        item_types = key.items if isinstance(key.items, tuple) else (key.items,)
        for i, item in enumerate(value):
            if not _is_instance(item, item_types) or (isinstance(item, float) and not math.isfinite(item)):
                raise UserError(f"{path}[{i}]: expected {'a finite ' if isinstance(item, float) else ''}"
                                f"{_type_name(item_types)}, got {type(item).__name__} {item!r}")
            _check_range(f"{path}[{i}]", key, item)
    _check_list(path, key, value)
    return value


def _check_range(path, key, value):
    """A single value (or list item) against key.choices, minimum, maximum and below."""
    if key.choices is not None and value not in key.choices:
        raise UserError(f"{path}: expected one of {', '.join(map(str, key.choices))}, got {value!r}")
    if key.minimum is not None and value < key.minimum:
        raise UserError(f"{path}: expected a value >= {key.minimum}, got {value!r}")
    if key.maximum is not None and value > key.maximum:
        raise UserError(f"{path}: expected a value <= {_number(key.maximum)}{key.unit and f' ({key.unit})'}, got {value!r}")
    if key.below is not None and not value < key.below:
        raise UserError(f"{path}: expected a value below {key.below}, got {value!r}")


def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_list(path, key, value):
    """A list against key.min_items, ascending and distinct."""
    if len(value) < key.min_items:
        raise UserError(f"{path}: expected at least {key.min_items} item{'s' * (key.min_items > 1)}, got {value!r}")
    if key.ascending and any(b <= a for a, b in zip(value, value[1:])):
        raise UserError(f"{path}: expected values in strictly ascending order, got {value!r}")
    if key.distinct and len(set(map(json.dumps, value))) < len(value):
        twice = next(v for i, v in enumerate(value) if v in value[:i])
        raise UserError(f"{path}: expected each value once, got {twice!r} twice in {value!r}")


def _validate(node, schema, path):
    """Return a validated copy of `node` with defaults filled in."""
    prefix = f"{path}." if path else ""
    if not isinstance(node, dict):
        raise UserError(f"{path or 'top level'}: expected an object, got {type(node).__name__} {node!r}")
    for name in node:
        if name not in schema:
            close = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else \
                f"; valid keys: {', '.join(schema)}"
            raise UserError(f"{prefix}{name}: unknown key{hint}")
    out = {}
    for name, spec in schema.items():
        key_path = prefix + name
        if isinstance(spec, Section):
            if spec.required and name not in node:
                raise UserError(f"{key_path}: required section missing")
            out[name] = _validate(node.get(name, {}), spec, key_path)
        elif isinstance(spec, MapOf):
            if name not in node:
                if spec.default is REQUIRED:
                    raise UserError(f"{key_path}: required key missing")
                out[name] = copy.deepcopy(spec.default)
                continue
            value = node[name]
            if not isinstance(value, dict):
                raise UserError(f"{key_path}: expected object, got {type(value).__name__} {value!r}")
            out[name] = {k: _check_leaf(f"{key_path}.{k}", spec.value, v) for k, v in value.items()}
        elif name in node:
            out[name] = _check_leaf(key_path, spec, node[name])
        elif spec.default is REQUIRED:
            raise UserError(f"{key_path}: required key missing")
        else:
            out[name] = copy.deepcopy(spec.default)
    return out


def _check_consistency(params):
    """Rules that involve several keys."""
    loss = params["training"]["loss"]
    if len(loss["weights"]) != len(loss["thresholds"]) + 1:
        raise UserError(f"training.loss.weights: expected {len(loss['thresholds']) + 1} weights "
                        f"(one more than training.loss.thresholds), got {len(loss['weights'])}")
    split = params["data"]["split"]
    kinds = {isinstance(split[s], list) for s in ("train", "val", "test")}
    if len(kinds) > 1:
        raise UserError("data.split: give train, val and test all as ratios or all as lists of case ids")
    if kinds == {False}:
        total = split["train"] + split["val"] + split["test"]
        if abs(total - 1.0) > 1e-6 or min(split["train"], split["val"], split["test"]) < 0:
            raise UserError(f"data.split: ratios must be >= 0 and sum to 1, got "
                            f"{split['train']} + {split['val']} + {split['test']} = {total:g}")
    target = params["data"]["target"]
    if target["source"] in params["data"]["inputs"] and \
            target["channel"] not in params["data"]["inputs"][target["source"]]:
        raise UserError(f"data.target.channel: {target['channel']!r} is not a channel of input source "
                        f"{target['source']!r} {params['data']['inputs'][target['source']]}")
    seen = {}
    for source, channels in params["data"]["inputs"].items():
        for channel in channels:
            if channel in seen:
                raise UserError(f"data.inputs.{source}: channel {channel!r} is also in data.inputs.{seen[channel]}; "
                                "expected each channel name once (data.transform is keyed by channel)")
            seen[channel] = source
    for name, section in params["model"].items():
        if isinstance(section, dict) and section.get("kernel_size", 1) % 2 == 0:
            raise UserError(f"model.{name}.kernel_size: expected an odd size (the padding keeps the frame size), "
                            f"got {section['kernel_size']}")
    for key in ("mask_threshold", "max_missing_fraction"):
        if params["sea_ice"][key] > 1:
            raise UserError(f"sea_ice.{key}: expected a fraction between 0 and 1, got {params['sea_ice'][key]!r}")
    down = params["downscaling"]
    if down["alpha"] > 1:
        raise UserError(f"downscaling.alpha: expected a weight between 0 and 1, got {down['alpha']}")
    if down["crop_size"] % 8:
        raise UserError(f"downscaling.crop_size: expected a multiple of 8 (the largest factor), got {down['crop_size']}")
    if not params["pretraining"]["mask"] < 1:
        raise UserError(f"pretraining.mask: expected a ratio below 1 (some patches must stay visible), "
                        f"got {params['pretraining']['mask']}")
    if not params["pretraining"]["exp_name"] or os.sep in params["pretraining"]["exp_name"]:
        raise UserError(f"pretraining.exp_name: expected a folder name without '{os.sep}', "
                        f"got {params['pretraining']['exp_name']!r}")
    roi = params["sea_ice"]["roi"]
    if roi is not None and (len(roi) != 4 or roi[0] >= roi[1] or roi[2] >= roi[3]):
        raise UserError(f"sea_ice.roi: expected [ymin, ymax, xmin, xmax] with min < max, got {roi}")


def validate(params):
    """Validate a params dict; return a copy with every default filled in."""
    out = _validate(params, SCHEMA, "")
    _check_consistency(out)
    return out


# --------------------------------------------------------------------------- loading
def set_dotted(params, dotted, value):
    """Set params['a']['b'] = value for dotted='a.b' (creating sections as needed)."""
    node = params
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


def get_dotted(params, dotted):
    node = params
    for name in dotted.split("."):
        node = node[name]
    return node


BUILTIN_MODEL = "convlstm_unet"  # the one required key; the sea-ice tools never use it


def builtin_params():
    """Every key at its schema default (model.name: BUILTIN_MODEL): the configuration of a tool run
    without a params.json."""
    skeleton = {name: {} for name, spec in SCHEMA.items() if isinstance(spec, Section)}
    skeleton["model"] = {"name": BUILTIN_MODEL}
    return validate(skeleton)


def load_params(path=None, overrides=None, builtin_defaults=False):
    """Read, merge and validate a configuration.

    path: params.json to read; None: ./params.json (the --config default). A file that is missing
        is a UserError, except when path is None, ./params.json does not exist and
        builtin_defaults is True (the sea-ice tools, which run from any folder): then the schema
        defaults are used (`builtin_params()`), and one note on stderr says so.
    overrides: {"section.key": value}; None values are ignored (flag not given).
    Returns the validated dict with every default filled in.
    """
    if path is None and builtin_defaults and not os.path.exists(DEFAULT_CONFIG):
        print(f"note: no ./{DEFAULT_CONFIG} here: using the built-in defaults (python config.py --dump "
              "shows them; --config PATH reads a file)", file=sys.stderr)
        params = builtin_params()
    else:
        params = _read_params(DEFAULT_CONFIG if path is None else path, explicit=path is not None)
    overrides = overrides or {}
    for dotted, value in overrides.items():
        if value is not None:
            set_dotted(params, dotted, value)
    try:
        return validate(params)
    except UserError as exc:  # name the flag when the bad value came from the command line
        flags = getattr(overrides, "flags", {})
        given = [k for k, v in overrides.items() if v is not None and str(exc).startswith(k)]
        flag = flags.get(max(given, key=len)) if given else None
        raise UserError(f"{flag}: {exc}" if flag else str(exc)) from None


def _read_params(path, explicit):
    """The validated contents of the params.json at `path`; UserError naming the file when it is
    missing, unreadable, not JSON or not valid."""
    if not os.path.isfile(path):
        what = "is a folder, expected a params.json file" if os.path.isdir(path) else "config file not found"
        hint = "" if explicit else " (run from the repository root or pass --config PATH)"
        raise UserError(f"{path}: {what}{hint}")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object at the top level")
    try:
        return validate(raw)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def add_config_arg(parser, builtin_defaults=False):
    """Add the `--config PATH` flag every script shares (default None: ./params.json; pass
    builtin_defaults=True to load_params too when the script may run without one)."""
    fallback = ", or the built-in defaults when there is none" if builtin_defaults else ""
    parser.add_argument("--config", default=None, metavar="PATH",
                        help=f"params.json to read (default: ./{DEFAULT_CONFIG}{fallback}); flags override its values")
    return parser


def path_arg(text):
    """argparse `type` of a file or folder flag: the text, refusing an empty string (which would otherwise
    silently mean "the default")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def ensure_folder(folder, what="output folder"):
    """Create `folder` and its parents; UserError naming it when that is impossible (a file is in the way,
    no permission). Returns folder."""
    try:
        os.makedirs(folder or ".", exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = folder
        while blocker and not os.path.isfile(blocker) and os.path.dirname(blocker) != blocker:
            blocker = os.path.dirname(blocker)
        raise UserError(f"{what} {folder}: {blocker} is a file, expected a folder") from None
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(folder or ".", os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder}: no permission to write there")
    return folder


def list_folder(folder, what="folder"):
    """Sorted entry names of `folder`; UserError naming it when it is missing, a file or unreadable."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        raise UserError(f"{what} {folder}: not found") from None
    except NotADirectoryError:
        raise UserError(f"{what} {folder}: is a file, expected a folder") from None
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot read it ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------- command-line overrides
_FLAG_DEST = "override:"  # argparse dest prefix of flags that override a params.json key
_PY_TYPES = {int: int, float: float, str: str}


def _flag_type(key):
    """argparse `type` for a schema key: numbers parsed, dates checked, errors name the flag."""
    if key.date:
        def parse(text):
            if parse_date(text) is None:
                raise argparse.ArgumentTypeError(f"expected a calendar day as YYYYMMDD, got {text!r}")
            return int(text)
        return parse
    flat = [t for t in key.types for t in (t if isinstance(t, tuple) else (t,))]
    return float if float in flat else _PY_TYPES.get(flat[0], str)


def add_override_flags(parser, table):
    """Add one flag per row of `table`, each overriding one params.json key.

    table: rows (flags, dotted key) or (flags, dotted key, {argparse kwargs}); flags is a name
    ("--batch_size") or a tuple of names ("-o", "--output_dir"). Type, choices, default, unit and
    help come from SCHEMA (kwargs may add "help" text or a "metavar"). Every underscore name also
    answers to its hyphenated spelling. A flag not given leaves the file's value; collect the
    given ones with `overrides_from(args)`. Returns the parser.
    """
    for row in table:
        flags, dotted, extra = (tuple(row) + ({},))[:3]
        flags = (flags,) if isinstance(flags, str) else tuple(flags)
        names = list(dict.fromkeys(n for f in flags for n in (f, f.replace("_", "-")) if n.startswith("-")))
        key = get_dotted(SCHEMA, dotted)
        kwargs = dict(extra)
        unit = f" {key.unit}" if key.unit else ""
        default = "required" if key.default is REQUIRED else json.dumps(key.default)
        kwargs["help"] = f"{kwargs.get('help', key.doc)} (default: {dotted} in params.json, {default}{unit})"
        if key.choices is not None:
            kwargs.setdefault("choices", key.choices)
        if key.types == (bool,):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif key.types == (list,):
            items = key.items if isinstance(key.items, tuple) else (key.items,)
            kwargs.update(nargs="+", type=float if float in items else _PY_TYPES.get(items[0], str))
        else:
            kwargs.setdefault("type", _flag_type(key))
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs.setdefault("metavar", "YYYYMMDD" if key.date else dotted.rsplit(".", 1)[-1].upper())
        flag = next((n for n in names if n.startswith("--")), names[0])
        parser.add_argument(*names, dest=f"{_FLAG_DEST}{dotted}|{flag}", default=None, **kwargs)
    return parser


class Overrides(dict):
    """{dotted key: value} from the command line; `.flags` maps each key to its flag for error messages."""

    def __init__(self, values=(), flags=None):
        super().__init__(values)
        self.flags = dict(flags or {})


def overrides_from(args):
    """Overrides {dotted key: value} of the override flags in parsed `args` (None: not given), after
    the values of `--protocol NAME` (add_protocol_arg) where given; a flag given explicitly wins."""
    values, flags = {}, {}
    protocol = getattr(args, "protocol", None)
    for dotted, value in (PROTOCOLS[protocol][0] if protocol else {}).items():
        values[dotted], flags[dotted] = copy.deepcopy(value), f"--protocol {protocol}"
    for dest, value in vars(args).items():
        if dest.startswith(_FLAG_DEST):
            dotted, flag = dest[len(_FLAG_DEST):].split("|")
            if value is not None or dotted not in values:
                values[dotted], flags[dotted] = value, flag
    return Overrides(values, flags)


PROTOCOLS = {  # name -> (params.json values, description); `--protocol NAME` of training/evaluate/pretrain.py
    "seed004": ({"data.input_steps": 12, "data.lead_steps": 6, "data.output_steps": 1,
                 "data.rain_filter_fraction": 0.5, "data.rain_filter_threshold": 0.0, "evaluation.thresholds": [0.5]},
                "seed 004's NL-50 protocol (SmaAt-UNet, SpaT-SparK): 12 input frames (1 h of 5-minute steps) -> "
                "the frame 30 min ahead (data.input_steps 12, lead_steps 6, output_steps 1), only windows whose "
                "target has rain (> 0 mm/h) on at least 50 %% of its covered pixels (data.rain_filter_fraction "
                "0.5, rain_filter_threshold 0), scores at 0.5 mm/h (evaluation.thresholds [0.5])"),
}


def add_protocol_arg(parser):
    """Add `--protocol NAME`: set the params.json keys of a published protocol (PROTOCOLS) at once."""
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), help="; ".join(
        f"{name}: {doc}" for name, (_, doc) in PROTOCOLS.items()) + " (default: none; other flags win)")
    return parser


def flag_value(args, dotted):
    """The value given on the command line for the flag of `dotted` (None when not given)."""
    return overrides_from(args).get(dotted)


# --------------------------------------------------------------------------- reference
def reference_rows(schema=SCHEMA, path=""):
    """(dotted key, type, default, unit, doc) for every key, for the README."""
    rows = []
    for name, spec in schema.items():
        key_path = f"{path}.{name}" if path else name
        if isinstance(spec, Section):
            rows.extend(reference_rows(spec, key_path))
        elif isinstance(spec, MapOf):
            rows.append((key_path, f"object of {_type_name(spec.value.types)}",
                         json.dumps(spec.default), spec.value.unit, spec.doc))
        else:
            doc = spec.doc + (f" ({' / '.join(map(str, spec.choices))})" if spec.choices else "")
            rows.append((key_path, _type_name(spec.types) + (" or null" if spec.nullable else ""),
                         "required" if spec.default is REQUIRED else json.dumps(spec.default), spec.unit, doc))
    return rows


def markdown_reference():
    lines = ["| key | type | default | unit | meaning |", "|---|---|---|---|---|"]
    for key, typ, default, unit, doc in reference_rows():
        lines.append(f"| `{key}` | {typ} | `{default}` | {unit} | {doc} |")
    return "\n".join(lines)


def update_readme(path):
    """Rewrite the reference table between the params markers of README.md."""
    import re
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    table = f"<!-- params:start -->\n{markdown_reference()}\n<!-- params:end -->"
    text, count = re.subn(r"<!-- params:start -->.*?<!-- params:end -->", lambda _: table, text, flags=re.S)
    if count != 1:
        raise UserError(f"{path}: expected one '<!-- params:start -->' ... '<!-- params:end -->' block")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Validate params.json or print its reference table.")
    add_config_arg(parser)
    parser.add_argument("--markdown", action="store_true", help="print the key reference as a Markdown table")
    parser.add_argument("--readme", metavar="PATH", help="rewrite the reference table in this README.md")
    parser.add_argument("--dump", action="store_true", help="print the full configuration with defaults filled in "
                        "(the built-in defaults when there is no ./params.json)")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_reference())
        return 0
    if args.readme:
        update_readme(args.readme)
        print(f"updated the params.json reference in {args.readme}")
        return 0
    params = load_params(args.config, builtin_defaults=args.dump)
    if args.dump:
        print(json.dumps(params, indent=2))
    else:
        print(f"{args.config or DEFAULT_CONFIG}: valid")
    return 0


if __name__ == "__main__":
    run_main(main)

"""Every setting of every entry point, each defined once: type, default, range and help.

``ConvLSTMConfig`` (the model and how it is trained) and ``RegionConfig`` (the two regions) are the
configs that go into checkpoints and rebuild a model; ``TrainSettings``, ``SweepSettings``, ``InferSettings``,
``CompareSettings`` and ``MakeDataSettings`` are what each entry point takes. The click options, the
MLproject parameters and the validation are derived from these classes (``convlstm.settings``), so
to change a default, a range or a help text, change it here and regenerate ``MLproject`` with
``python -m convlstm.mlproject``.

The defaults are sized for the built-in demo atmosphere on a 2-core CPU (three U-Net levels, 12
epochs: a few minutes a run). The README's "Settings for real data" says what to raise on ERA5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convlstm.checks import check_split_ratios, require_odd_kernel
from convlstm.errors import ConfigError
from convlstm.settings import Settings, flag_of, setting

DEVICES = ("auto", "cuda", "mps", "cpu")
NAN_POLICIES = ("raise", "drop", "fill")
SPLITS = ("all", "train", "val", "test")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_REGISTERED_NAME = "convlstm-precipitation"
DEFAULT_THRESHOLDS_MM = (0.1, 1.0, 5.0, 10.0, 20.0)  # rain thresholds of the categorical scores and the FSS
DEFAULT_FSS_WINDOWS = (1, 3, 5)  # FSS neighbourhood sizes, grid cells
#: Time steps per chunk of a prepared store (``--time-chunk``; ``convlstm.data.store`` writes with it).
DEFAULT_TIME_CHUNK = 8
DEMO_LEVELS = [1000.0, 925.0, 850.0, 700.0, 600.0, 500.0, 400.0, 300.0, 250.0, 200.0, 150.0]

_DATA, _MODEL, _TRAINING = "Data", "Model", "Training"
_REGIONS = "Regions (degrees; upstream lies west of downstream, same latitudes)"
_SYSTEM, _TRACKING = "System", "Checkpoints and tracking"
#: What a ``data`` setting takes, for the help texts.
DATA_FORMS = ("a netCDF or GRIB file, a glob ('era5/*.nc'), a folder, a comma-separated list, a Zarr store (path or "
              "URL), or a store written by prepare")
_POSITIVE = {"low": 0.0, "low_open": True}
_RATIO = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}


def _time_step() -> int:
    return setting(12, "The model's time step in hours: finer data is aggregated to it (fields sampled at the step, "
                       "precipitation summed over it).", low=1, high=24 * 31, group=_DATA)


def _train_ratio() -> float:
    return setting(0.7, "Fraction of time steps for training.", group=_DATA, **_RATIO)


def _val_ratio() -> float:
    return setting(0.15, "Fraction for validation; the rest is the test split.", group=_DATA, **_RATIO)


@dataclass
class ConvLSTMConfig(Settings):
    """Everything that defines a model and how it was trained (the regions live in ``RegionConfig``).

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    input_channels: int = setting(56, "Input channels: 5 variables × levels + precipitation (from the data).",
                                  low=1, cli=False, mlproject=False)
    hidden_channels: list[int] = setting([16, 32, 64], "Hidden channels per U-Net level, e.g. 32 64.", low=1, group=_MODEL)
    output_channels: int = setting(1, "Output channels (precipitation).", low=1, cli=False, mlproject=False)
    kernel_size: int = setting(3, "Odd convolution kernel size.", low=1, group=_MODEL)
    learning_rate: float = setting(1e-3, "AdamW learning rate (cosine-annealed).", group=_TRAINING, **_POSITIVE)
    weight_decay: float = setting(1e-2, "AdamW weight decay.", low=0.0, group=_TRAINING)
    batch_size: int = setting(4, "Windows per optimizer step (split among the processes with --nproc-per-node).",
                              low=1, group=_TRAINING)
    num_epochs: int = setting(12, "Maximum number of epochs.", low=1, group=_TRAINING)
    time_step: int = _time_step()
    window_size: int = setting(6, "Input time steps per window (6 = 3 days of 12-hourly data).", low=1, group=_DATA)
    target_offset: int = setting(1, "Steps ahead of the last input to predict.", low=1, group=_DATA)
    train_ratio: float = _train_ratio()
    val_ratio: float = _val_ratio()
    high_precip_threshold: float = setting(10.0, "Rain (mm per step) from which errors weigh more in the loss.",
                                           low=0.0, group=_TRAINING)
    high_precip_weight: float = setting(3.0, "Loss weight of cells at or above the threshold.", group=_TRAINING, **_POSITIVE)
    use_amp: bool = setting(True, "Mixed precision on CUDA (bf16, or fp16 with loss scaling).", group=_TRAINING)
    compile_gates: bool = setting(False, "Compile each step's gate arithmetic with torch.compile (fused kernels; "
                                         "seconds to compile; measured slower on CPUs and an H200).", group=_TRAINING)
    cudnn_benchmark: bool = setting(False, "Let cuDNN time its algorithms for each convolution shape once (CUDA only).",
                                    group=_TRAINING)
    gradient_accumulation_steps: int = setting(1, "Batches per optimizer step (effective batch = batch size × this).",
                                               low=1, group=_TRAINING)
    gradient_clip_norm: float = setting(1.0, "Max gradient norm.", group=_TRAINING, **_POSITIVE)
    early_stopping_patience: int = setting(5, "Stop after this many epochs without a better validation loss (0: never).",
                                           low=0, group=_TRAINING)
    checkpoint_frequency: int = setting(5, "Keep checkpoint_epoch_N.pt every N epochs (last.pt and best_model.pt "
                                           "are always written).", low=1, group=_TRACKING)
    seed: int = setting(42, "Random seed (CPU runs repeat exactly).", low=0, group=_TRAINING)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_odd_kernel("kernel_size", self.kernel_size)
        check_split_ratios(self.train_ratio, self.val_ratio)


def _region(value: float, region: str, bound: str, coord: str) -> float:
    what = "latitude (°N)" if coord == "lat" else "longitude (°E)"
    limits = {"low": -90.0, "high": 90.0} if coord == "lat" else {}
    return setting(value, f"{region.capitalize()} region {bound}imum {what}.", group=_REGIONS, **limits)


@dataclass
class RegionConfig(Settings):
    """Bounds in degrees (inclusive) of the downstream target region and the upstream region west of it.

    Both span 25–40 °N by default: the upstream block is joined to the west of the downstream block
    along longitude, which needs the same latitude rows (the original documentation's 25–50 °N
    upstream default could not be joined).

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    downstream_lat_min: float = _region(25.0, "downstream", "min", "lat")
    downstream_lat_max: float = _region(40.0, "downstream", "max", "lat")
    downstream_lon_min: float = _region(110.0, "downstream", "min", "lon")
    downstream_lon_max: float = _region(125.0, "downstream", "max", "lon")
    upstream_lat_min: float = _region(25.0, "upstream", "min", "lat")
    upstream_lat_max: float = _region(40.0, "upstream", "max", "lat")
    upstream_lon_min: float = _region(70.0, "upstream", "min", "lon")
    upstream_lon_max: float = _region(110.0, "upstream", "max", "lon")

    def __post_init__(self) -> None:
        super().__post_init__()
        for region in ("downstream", "upstream"):
            lat_min, lat_max = getattr(self, f"{region}_lat_min"), getattr(self, f"{region}_lat_max")
            lon_min, lon_max = getattr(self, f"{region}_lon_min"), getattr(self, f"{region}_lon_max")
            if not lat_min < lat_max:
                raise ConfigError(f"{region} latitudes must satisfy lat_min < lat_max, got {lat_min}..{lat_max}.",
                                  f"{region}_lat_min")
            if not 0.0 < lon_max - lon_min < 360.0:
                raise ConfigError(f"{region} longitudes must satisfy lon_min < lon_max < lon_min + 360 (west to east), "
                                  f"got {lon_min}..{lon_max}.", f"{region}_lon_min")

    @property
    def downstream_box(self) -> tuple[float, float, float, float]:
        """``(lat_min, lat_max, lon_min, lon_max)`` of the downstream region, as the maps outline it."""
        return self.downstream_lat_min, self.downstream_lat_max, self.downstream_lon_min, self.downstream_lon_max

    def check_upstream(self) -> None:
        """Refuse an upstream region that cannot be joined west of the downstream one."""
        if (self.upstream_lat_min, self.upstream_lat_max) != (self.downstream_lat_min, self.downstream_lat_max):
            raise ConfigError(
                f"The upstream region ({self.upstream_lat_min}..{self.upstream_lat_max} °N) must span the same latitudes as the "
                f"downstream region ({self.downstream_lat_min}..{self.downstream_lat_max} °N): the two are joined side by side "
                "along longitude. Set --upstream-lat-min/--upstream-lat-max to the downstream values.", "upstream_lat_min")
        if self.upstream_lon_max > self.downstream_lon_min + 1e-6:
            raise ConfigError(
                f"The upstream region ({self.upstream_lon_min}..{self.upstream_lon_max} °E) overlaps the downstream region "
                f"({self.downstream_lon_min}..{self.downstream_lon_max} °E): it must lie to the west, with "
                "upstream_lon_max <= downstream_lon_min.", "upstream_lon_max")
        if self.downstream_lon_max - self.upstream_lon_min >= 360.0:
            raise ConfigError("Upstream and downstream regions together must span less than 360° of longitude.",
                              "upstream_lon_min")


def _existing_file(value: str | None, name: str) -> None:
    if value and not Path(value).is_file():
        raise ConfigError(f"{flag_of(name)} {value}: the file does not exist.", name)


def _existing_source(value: str | None, name: str) -> None:
    """Refuse data that names a missing file (or a glob matching nothing) before any run starts."""
    if not value:
        return
    from convlstm.data.sources import input_paths, is_zarr_source  # xarray: only when data is given, not for --help
    from convlstm.errors import DataError

    try:
        paths = input_paths(value)
    except DataError as exc:
        raise ConfigError(f"{flag_of(name)} {value}: {exc}", name) from None
    missing = [path for path in paths if not is_zarr_source(path) and not Path(path).exists()]
    if missing:
        what = "the file does not exist" if missing == [value] else f"{', '.join(missing)} not found"
        raise ConfigError(f"{flag_of(name)} {value}: {what}.", name)


def _data(help_text: str) -> str | None:
    return setting(None, help_text + " Default: the built-in demo atmosphere.", group=_DATA)


def _member() -> int | None:
    return setting(None, "Ensemble member (GRIB 'number') to read from input that holds several.", low=0, group=_DATA)


def _nan_policy() -> str:
    return setting("raise", "Missing values in the regions the model reads (elsewhere they are ignored): refuse them, "
                            "leave out the windows that read them, or interpolate them in time.",
                   choices=NAN_POLICIES, group=_DATA)


def _device() -> str:
    return setting("auto", "auto picks cuda, then mps, then cpu.", choices=DEVICES, group=_SYSTEM)


def _experiment_name(default: str) -> str | None:
    return setting(None, f"MLflow experiment (default: {default}; under `mlflow run`, the experiment it runs in).",
                   group=_TRACKING, mlproject=False)


def _log_level() -> str:
    return setting("INFO", "Logging detail on the console and in the log file.", choices=LOG_LEVELS, group=_SYSTEM)


def _registered_model_name(help_text: str) -> str:
    return setting(DEFAULT_REGISTERED_NAME, help_text, group=_TRACKING)


@dataclass
class TrainSettings(Settings):
    """The ``train`` entry point: data, regions, model and training configs, and where things go.

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    data: str | None = _data(f"Reanalysis data: {DATA_FORMS}.")
    output_dir: str | None = setting(None, "Where checkpoints, normalizer, log and figures go. "
                                           "Default: outputs/<baseline|upstream>-<time>.", group=_DATA)
    nan_policy: str = _nan_policy()
    member: int | None = _member()
    include_upstream: bool = setting(False, "Join the upstream region west of the downstream one (the upstream "
                                            "experiment).", group=_REGIONS)
    regions: RegionConfig = field(default_factory=RegionConfig)
    model: ConvLSTMConfig = field(default_factory=ConvLSTMConfig)
    seeds: list[int] | None = setting(None, "Train the same configuration once per seed (e.g. 0,1,2,3,4), each a nested "
                                            "child run of one ensemble parent run; one value acts as --seed.",
                                      low=0, group=_TRAINING)
    visualize: bool = setting(True, "Write loss_curve.png and precipitation_maps.png (a few seconds a run).",
                              group=_TRACKING)
    device: str = _device()
    num_workers: int = setting(0, "DataLoader worker processes; 0 reads windows in the training loop, fastest on CPU "
                               "from memory and from a store alike.", low=0, group=_SYSTEM)
    pin_memory: bool = setting(True, "Pinned host memory for faster GPU copies (CUDA only).", group=_SYSTEM)
    nproc_per_node: int = setting(1, "Training processes on this machine (torchrun --standalone, PyTorch DDP): one per "
                                     "GPU on CUDA, else CPU processes (gloo); --batch-size is split among them.",
                                  low=1, group=_SYSTEM)
    master_port: int | None = setting(None, "With --nproc-per-node > 1: the port the processes meet on (default: a "
                                            "free one).", low=1, high=65535, group=_SYSTEM)
    resume: str | None = setting(None, "Continue a run: its MLflow run id, output directory or a checkpoint file.",
                                 group=_TRACKING)
    experiment_name: str | None = _experiment_name("$MLFLOW_EXPERIMENT_NAME, else MLflow's Default, as for `mlflow run`")
    registered_model_name: str = _registered_model_name(
        "Register the best model under this name in the MLflow model registry ('' to skip).")
    upload_wait: int = setting(600, "Seconds to wait at the end for a tracking server that went away during training; "
                                    "what it has not taken stays in <output dir>/tracking for `python -m "
                                    "entrypoints.sync`.", low=0, group=_TRACKING)
    log_level: str = _log_level()

    def __post_init__(self) -> None:
        super().__post_init__()
        _existing_source(self.data, "data")
        if self.include_upstream:
            self.regions.check_upstream()
        if self.seeds is not None:
            self._check_seeds(self.seeds)

    def _check_seeds(self, seeds: list[int]) -> None:
        """One seed is ``--seed``; several must differ, and a resumed run is one run, not an ensemble."""
        if len(set(seeds)) < len(seeds):
            raise ConfigError(f"seeds (--seeds) must be distinct, got {','.join(map(str, seeds))}.", "seeds")
        if len(seeds) == 1:
            self.model.seed, self.seeds = seeds[0], None
        elif self.resume:
            raise ConfigError("--resume continues one run, not an ensemble: leave out --seeds, and resume the seed's "
                              "child run by its run id.", "seeds")

    @property
    def ensemble(self) -> bool:
        """Whether several seeds are trained, each a child run of one parent run."""
        return bool(self.seeds)

    @property
    def experiment_type(self) -> str:
        """``upstream`` or ``baseline``: the tag that tells the two experiments apart."""
        return "upstream" if self.include_upstream else "baseline"


EXPERIMENTS = ("one", "both")
SWEEP_OBJECTIVES = ("val_rmse_mm", "val_loss")
_SWEEP = "Sweep (Optuna)"


@dataclass
class SweepSettings(TrainSettings):
    """The ``sweep`` entry point: an Optuna study over the training settings, each trial a child training run.

    The training flags are the base configuration: the values the search space does not vary, and the first
    trial of a new study (the defaults, as far as the space holds them). ``--output-dir`` holds the study's
    SQLite storage and one folder per trial.

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    output_dir: str | None = setting(None, "Holds the study (optuna.db) and one folder per trial; rerun with the same "
                                           "folder to continue the study. Default: outputs/sweep-<experiment>.",
                                     group=_DATA)
    seeds: list[int] | None = setting(None, "Not used by a sweep.", low=0, cli=False, mlproject=False)
    resume: str | None = setting(None, "Not used by a sweep: rerun the same command to continue it.", cli=False,
                                 mlproject=False)
    nproc_per_node: int = setting(1, "Not used by a sweep: each trial trains in one process.", low=1, cli=False,
                                  mlproject=False)
    master_port: int | None = setting(None, "Not used by a sweep.", cli=False, mlproject=False)
    registered_model_name: str = _registered_model_name(
        "Register the best trial's model under this name ('' to skip); trials themselves register nothing.")
    experiments: str = setting("one", "one: the experiment --include-upstream chooses; both: the baseline, then the "
                                      "upstream experiment, with the same budget and search space.",
                               choices=EXPERIMENTS, group=_SWEEP)
    n_trials: int = setting(20, "Trials each study runs to in all (complete and pruned; a failed trial does not count: rerun to make it up).",
                            low=1, group=_SWEEP)
    space: str | None = setting(None, "A YAML search space (see convlstm/tuning/space.yaml, the default).", group=_SWEEP)
    objective: str = setting("val_rmse_mm", "What is minimized: the best epoch's validation RMSE (mm), or its "
                                            "val_loss (which --high-precip-weight changes, so not comparable when the "
                                            "space varies it). The pruner is fed the same metric each epoch.",
                             choices=SWEEP_OBJECTIVES, group=_SWEEP)
    study_name: str | None = setting(None, "Default: <MLflow experiment>-<baseline|upstream>.", group=_SWEEP)
    study_storage: str | None = setting(None, "An Optuna RDB URL. Default: sqlite:///<output dir>/optuna.db.",
                                        group=_SWEEP)
    pruner_startup_trials: int = setting(5, "The median pruner prunes nothing until this many trials finished.", low=0,
                                         group=_SWEEP)
    pruner_warmup_epochs: int = setting(2, "Epochs of each trial the median pruner never prunes.", low=0, group=_SWEEP)
    heartbeat_s: int = setting(30, "A running trial writes a heartbeat this often; one silent for twice as long (its "
                                   "process was killed) is marked failed when a sweep on the study next starts a trial.",
                               low=1, group=_SWEEP)


@dataclass
class RunSettings(Settings):
    """How a forecasting command (``infer``, ``compare``) runs: batch, missing values, device, logging, MLflow
    experiment."""

    batch_size: int = setting(8, "Windows per forward pass.", low=1, group=_SYSTEM)
    nan_policy: str = _nan_policy()
    member: int | None = _member()
    device: str = _device()
    experiment_name: str | None = _experiment_name("the experiment of the (baseline) model's training run")
    log_level: str = _log_level()


@dataclass
class InferSettings(Settings):
    """The ``infer`` entry point: one trained model, the data to forecast, and what to write.

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    checkpoint: str | None = setting(None, "A checkpoint file (best_model.pt) or a training output directory.")
    model: str | None = setting(None, "Instead of --checkpoint: a training run id, runs:/<run id>, "
                                      "models:/<name>/<version> or models:/<name>@<alias>.")
    data: str | None = _data(f"Data to forecast from: {DATA_FORMS}.")
    split: str = setting("test", "Forecast every window of the file, or only one split of it, cut as in training.",
                         choices=SPLITS, group=_DATA)
    output_dir: str | None = setting(None, "Default: outputs/infer-<baseline|upstream>-<time>.", group=_DATA)
    visualize: bool = setting(False, "Write prediction_map_<time>.png (forecast beside the observation).")
    max_maps: int = setting(12, "At most this many maps, evenly spread in time.", low=1)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.checkpoint) == bool(self.model):
            raise ConfigError("Give exactly one of --checkpoint (a file or directory) and --model (a run id or "
                              "models:/ URI).", "checkpoint")
        _existing_source(self.data, "data")


@dataclass
class CompareSettings(Settings):
    """The ``compare`` entry point: two models (or two predictions files and the truth) and how to score them.

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    baseline: str | None = setting(None, "Baseline model: training run id, runs:/ or models:/ URI, or checkpoint; or "
                                         "several trainings (seeds): a parent run id (its finished child runs) or "
                                         "references separated by commas. With no models and no files: the newest "
                                         "finished baseline and upstream runs.")
    upstream: str | None = setting(None, "Upstream model(s), likewise.")
    data: str | None = _data(f"With models: the data whose test split is scored ({DATA_FORMS}).")
    baseline_predictions: str | None = setting(None, "Instead of models: the baseline's predictions.nc.",
                                               aliases=("--predictions-exp1",))
    upstream_predictions: str | None = setting(None, "The upstream model's predictions.nc.",
                                               aliases=("--predictions-exp2",))
    ground_truth: str | None = setting(None, "With predictions files: the netCDF with the observed precipitation.")
    output_dir: str | None = setting(None, "Default: outputs/compare-<time>.")
    thresholds: list[float] = setting(list(DEFAULT_THRESHOLDS_MM), "Rain thresholds (mm per step) for the categorical "
                                                                  "scores.", low=0.0, group="Scores")
    fss_windows: list[int] = setting(list(DEFAULT_FSS_WINDOWS), "FSS neighbourhood sizes (grid cells).", low=1, group="Scores")
    n_boot: int = setting(1000, "Bootstrap resamples.", low=100, group="Scores")
    block_length: int | None = setting(None, "Bootstrap block length in steps (default: n^(1/3)).", low=1, group="Scores")
    set_aliases: bool = setting(True, "Give the better model's registered version the alias champion.", group=_TRACKING)
    registered_model_name: str = _registered_model_name("The registered model whose versions get the aliases.")
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        files = ("baseline_predictions", "upstream_predictions", "ground_truth")
        if any(getattr(self, name) for name in files) and (self.baseline or self.upstream):
            raise ConfigError("Give either --baseline and --upstream (models), or --baseline-predictions, "
                              "--upstream-predictions and --ground-truth (files), not both.", "baseline")
        if self.uses_files:
            missing = [flag_of(name) for name in files if not getattr(self, name)]
            if missing:
                raise ConfigError(f"Missing {', '.join(missing)}.", files[0])
        elif bool(self.baseline) != bool(self.upstream):
            raise ConfigError("Give both --baseline and --upstream, or neither (then the newest finished runs are "
                              "compared).", "baseline")
        _existing_source(self.data, "data")
        for name in files:
            _existing_file(getattr(self, name), name)

    @property
    def uses_files(self) -> bool:
        """Whether predictions files are compared (rather than two models forecasting the data)."""
        return bool(self.baseline_predictions or self.upstream_predictions or self.ground_truth)


@dataclass
class PrepareSettings(Settings):
    """The ``prepare`` entry point: raw reanalysis data in → a chunked Zarr store that training reads in bounded memory.

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    data: str | None = _data(f"Raw input: {DATA_FORMS}.")
    output: str = setting("data/prepared.zarr", "The Zarr store to write; an existing one is refused, never replaced.",
                          group=_DATA)
    member: int | None = _member()
    regions: RegionConfig = field(default_factory=RegionConfig)
    time_step: int = _time_step()
    train_ratio: float = _train_ratio()
    val_ratio: float = _val_ratio()
    time_chunk: int = setting(DEFAULT_TIME_CHUNK, "Time steps per Zarr chunk (training reads whole chunks, about 16 "
                                                  "MiB at a time).", low=1, group=_SYSTEM)
    experiment_name: str | None = _experiment_name("$MLFLOW_EXPERIMENT_NAME, else MLflow's Default, as for `mlflow run`")
    log_level: str = _log_level()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_split_ratios(self.train_ratio, self.val_ratio)
        _existing_source(self.data, "data")


@dataclass
class DemoAtmosphere(Settings):
    """What the synthetic demo atmosphere (``convlstm.data.demo``) is generated from: the same values give
    bit-identical fields, so these values (``to_dict()``) name the cached file and are recorded in it.

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).

    Raises
    ------
    ConfigError
        When made with a bad value; ``setting`` names it (so a command line can name its flag).
    """

    start: str = setting("2000-01-01", "First time stamp (a date, or a date with 00 or 12 UTC).")
    years: float = setting(2.0, "Length of the record in years (12-hourly steps).", low=0.0, high=200.0, low_open=True)
    resolution: float = setting(1.0, "Grid spacing in degrees (e.g. 1.0 or 0.25).", low=0.05, high=10.0)
    levels: list[float] = setting(DEMO_LEVELS, "Pressure levels (hPa), from the surface up.", low=50.0, high=1100.0,
                                  cli=False, mlproject=False)
    lat_range: tuple[float, float] = setting((25.0, 40.0), "Southern and northern edge (°N).", low=5.0, high=80.0,
                                             mlproject=False)
    lon_range: tuple[float, float] = setting((70.0, 125.0), "Western and eastern edge (°E).", low=-360.0, high=720.0,
                                             mlproject=False)
    seed: int = setting(0, "Random seed: the same settings give the same file contents.", low=0)

    def __post_init__(self) -> None:
        import pandas as pd

        super().__post_init__()
        try:
            stamp = pd.Timestamp(self.start)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"start must be a date such as '2000-01-01', got {self.start!r} ({exc}).", "start") from None
        if stamp is pd.NaT or stamp.tzinfo is not None or stamp.hour not in (0, 12) or stamp != stamp.floor("h"):
            raise ConfigError(f"start must be a time-zone-naive date at 00 or 12 UTC (12-hourly steps), got {self.start!r}; "
                              "e.g. '2000-01-01' or '2000-01-01T12'.", "start")
        self.start = stamp.strftime("%Y-%m-%dT%H:%M")  # one spelling per time, for the cache key and the provenance
        if self.n_steps < 1:
            raise ConfigError(f"years must cover at least one 12-hour step (>= {0.5 / 730.5:.6f}), got {self.years!r}.", "years")
        if any(a <= b for a, b in zip(self.levels, self.levels[1:])):
            raise ConfigError(f"levels must be strictly descending from the surface up, e.g. [1000, 850, 500], got "
                              f"{self.levels}.", "levels")
        for name, direction in (("lat_range", "south to north"), ("lon_range", "west to east")):
            low, high = getattr(self, name)
            if not low < high:
                raise ConfigError(f"{name} must run {direction} (first < second), got ({low:g}, {high:g}).", name)
            if high - low >= 360.0:
                raise ConfigError(f"{name} must span less than 360 degrees, got ({low:g}, {high:g}).", name)
            cells = (high - low) / self.resolution
            if cells < 1 - 1e-9 or abs(cells - round(cells)) > 1e-6:
                raise ConfigError(f"{name} ({low:g}, {high:g}) is not a whole number of {self.resolution:g}-degree cells; "
                                  f"choose a resolution that divides {high - low:g}.", name)

    @property
    def n_steps(self) -> int:
        """Number of 12-hourly time steps."""
        return int(round(self.years * 365.25 * 2.0))


@dataclass
class MakeDataSettings(Settings):
    """The ``make_data`` entry point: write the demo atmosphere to a netCDF file.

    Its Parameters section is appended from the fields' help texts (see :class:`~convlstm.settings.Settings`).
    """

    output: str = setting("data/demo.nc", "netCDF file to write (its folder is created if needed).")
    atmosphere: DemoAtmosphere = field(default_factory=DemoAtmosphere)
    compress: bool = setting(True, "zlib level 1: about a third smaller, a few seconds slower to write at 1°.")
    overwrite: bool = setting(False, "Replace --output if it already exists.")
    log_level: str = _log_level()

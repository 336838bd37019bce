"""Training configuration: a TOML file validated into nested dataclasses.

Every key is checked where it enters: an unknown key, a wrong type or an out-of-range
value raises :class:`ConfigError` naming the file, the table and the key. The tables and
their defaults are the dataclasses below; docs/training.md lists them.

Rules other than backprop add their own sub-table under ``[trainer]`` (e.g.
``[trainer.es]``); :data:`RULE_OPTIONS` (the registry :data:`training.rules.options.RULES`)
maps a rule name to the dataclass that validates it.

The file is read through :func:`diffractive._read.read_toml` (a folder, a FIFO, gzip or
non-UTF-8 bytes, invalid TOML: one line naming the file). Beyond its type, every value is
checked against the bounds below (:data:`MAXIMA`, :data:`MAX_LENGTH_M`, :data:`LISTS`,
:data:`SEEDS`): numbers must be finite (TOML allows ``nan`` and ``inf``; no key takes
them), booleans are not integers, and lists have the length and element type their key
needs. The bounds are generous for real experiments and are there so that a typo
(``learning_rate = 5e3``, ``layer_shape = [200000, 200000]``) is refused with its reason
instead of exhausting memory, overflowing the optimiser or training a chance-level design.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from diffractive._read import InputFileError, read_toml
from diffractive.errors import D2NNError, FieldError
from diffractive.materials import LIN2018, Material

from .datasets import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION
from .losses import LOSSES
from .rules.options import RULES


class ConfigError(D2NNError):
    """A configuration file is unreadable or holds a bad key or value."""


# Defaults: the Lin et al. 2018 experiment, from its one home in the physics core.
@dataclass
class GeometryConfig:
    wavelength_m: float = LIN2018.wavelength_m
    pitch_m: float = LIN2018.pitch_m
    layer_shape: list = field(default_factory=lambda: list(LIN2018.layer_shape))  # [ny, nx]
    n_layers: int = LIN2018.n_layers
    distance_m: float = LIN2018.spacing_m     # every gap, unless distances_m is given
    distances_m: typing.Optional[list] = None  # n_layers + 1 gaps, input -> ... -> output
    window_shape: typing.Optional[list] = None  # default: 2x, fast FFT size


@dataclass
class InputConfig:
    encoding: str = "amplitude"
    size_yx_m: typing.Optional[list] = None   # [h, w]; default: half the layer
    phase_scale: float = math.pi


@dataclass
class DetectorConfig:
    layout: str = "lin"                       # "lin" (one per class), "differential" (+/- pairs) or "spectral"
    size_m: typing.Optional[float] = None
    spacing_m: typing.Optional[float] = None


@dataclass
class ModelConfig:
    modulation: str = "phase"                 # "phase" or "complex" (amplitude trained too)
    init: str = "uniform"                     # "uniform" random phases or "zeros"
    init_from: typing.Optional[str] = None    # a design folder to start from (relative to the config file)


@dataclass
class MaterialConfig:
    name: str = LIN2018.material.name
    n: float = LIN2018.material.n
    kappa: float = LIN2018.material.kappa
    dispersion: typing.Optional[str] = None   # a CSV table (frequency_thz, n, kappa); then n, kappa are its values

    def load_dispersion(self, cfg):
        """The :class:`~diffractive.materials.Dispersion` of ``dispersion`` (a path relative to the config), or ``None``."""
        from diffractive.materials import read_dispersion  # noqa: PLC0415

        if self.dispersion is None:
            return None
        try:
            return read_dispersion(cfg.resolve_path(self.dispersion))
        except D2NNError as e:
            raise ConfigError(f"{cfg.source} [material] dispersion: {e}") from None

    def material(self, cfg):
        """The :class:`~diffractive.materials.Material` of the design (with its dispersion table)."""
        return Material(self.name, self.n, self.kappa, dispersion=self.load_dispersion(cfg))


#: [source] objectives: what the loss sees of a spectrum (training/robust.py, diffractive/spectrum.py)
OBJECTIVES = ("band", "each")


@dataclass
class SourceConfig:
    """``[source]``: the lines the stack is lit with (default: one, at ``[geometry] wavelength_m``)."""

    wavelengths_m: typing.Optional[list] = None  # the lines, metres
    band_hz: typing.Optional[list] = None     # or [low, high] in Hz with `count` lines equally spaced in frequency
    count: typing.Optional[int] = None
    weights: typing.Optional[list] = None     # relative power of each line (default equal)
    sample: typing.Optional[int] = None       # lines per training step (default all)
    objective: str = "band"                   # "band": loss of the band-summed powers; "each": mean loss per line
    jitter: bool = False                      # each step moves every line within its share of the band

    def spectrum(self, source: str = "<config>"):
        """The :class:`~diffractive.spectrum.Spectrum` asked for, or ``None`` (monochromatic)."""
        from diffractive.spectrum import Spectrum  # noqa: PLC0415

        if self.wavelengths_m is None and self.band_hz is None:
            return None
        try:
            if self.wavelengths_m is not None:
                return Spectrum(tuple(self.wavelengths_m), None if self.weights is None else tuple(self.weights))
            return Spectrum.from_band(self.band_hz[0], self.band_hz[1], self.count,
                                      None if self.weights is None else tuple(self.weights))
        except FieldError as e:
            raise ConfigError(f"{source} [source]: '{e.field}' {e.problem}") from None


@dataclass
class FabricationConfig:
    base_m: float = LIN2018.fabrication.base_m
    z_step_m: float = LIN2018.fabrication.z_step_m


@dataclass
class DataConfig:
    dataset: str = "digits"
    train_limit: typing.Optional[int] = None
    val_limit: typing.Optional[int] = None
    val_fraction: float = DEFAULT_VAL_FRACTION  # the split's defaults live with the splits (training.datasets)
    split_seed: int = DEFAULT_SPLIT_SEED
    shuffle_labels: bool = False              # a control: accuracy must stay at chance


@dataclass
class TrainerConfig:
    rule: str = "backprop"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.05
    schedule: str = "cosine"                  # "cosine", "step", "constant"
    step_every: int = 5                       # epochs, for schedule = "step"
    step_gamma: float = 0.5
    loss: str = "cross_entropy"               # or "mse": detector shares vs one-hot (training/losses.py)
    temperature: float = 0.1
    seed: int = 0
    checkpoint_every: int = 200               # optimisation steps between mid-epoch checkpoints
    max_loss: float = 1e6                     # above this (or NaN) the run stops
    workers: typing.Optional[int] = None      # CPU threads for the physics core
    options: dict = field(default_factory=dict)  # the rule's own table, validated by RULE_OPTIONS


@dataclass
class RobustnessConfig:
    """``[robustness]``: train through a fresh as-built stack every batch (training/robust.py)."""

    budget: typing.Optional[str] = None       # a shipped budget name ("holder", "hand") or a TOML file
    oversample: int = 1                       # simulation cells per printed pixel (exact sub-pixel errors)
    seed: typing.Optional[int] = None         # seed of the draws (default trainer.seed)
    feature_px: int = 1                       # printed feature: phases constant over b x b pixels
    smoothness: float = 0.0                   # weight of the phasor-smoothness prior (0: none)
    val_draws: int = 2                        # fixed stacks the validation accuracy is measured on
    as_built: typing.Optional[str] = None     # a known stack as built (d2nn diagnose fit.json): train through it
    freeze_layers: list = field(default_factory=list)  # layers (1 = nearest the input) kept as printed

    def load_as_built(self, cfg, n_layers: int):
        """The :class:`~diffractive.asbuilt.AsBuilt` of ``as_built`` (a path relative to the config file), or ``None``."""
        from diffractive.asbuilt import read_as_built  # noqa: PLC0415

        if self.as_built is None:
            return None
        try:
            return read_as_built(cfg.resolve_path(self.as_built), n_layers)
        except D2NNError as e:
            raise ConfigError(f"{cfg.source} [robustness] as_built: {e}") from None

    def load_budget(self, cfg):
        """The :class:`~diffractive.budget.ErrorBudget` named (a path is relative to the config file)."""
        from diffractive.budget import budget_names, load_budget  # noqa: PLC0415

        if self.budget is None:
            return None
        name = self.budget if self.budget in budget_names() else str(cfg.resolve_path(self.budget))
        try:
            return load_budget(name)
        except D2NNError as e:
            raise ConfigError(f"{cfg.source} [robustness] budget: {e}") from None


@dataclass
class Config:
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    input: InputConfig = field(default_factory=InputConfig)
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    material: MaterialConfig = field(default_factory=MaterialConfig)
    fabrication: FabricationConfig = field(default_factory=FabricationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    source_spectrum: SourceConfig = field(default_factory=SourceConfig)
    name: str = "d2nn"
    source: str = "<defaults>"

    def resolve_path(self, path: str) -> Path:
        """A path written in the config: absolute, or relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source.startswith("<"):
            return p
        return Path(self.source).parent / p

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


CHOICES = {
    ("input", "encoding"): ("amplitude", "phase"),
    ("detectors", "layout"): ("lin", "differential", "spectral"),
    ("model", "modulation"): ("phase", "complex"),
    ("model", "init"): ("uniform", "zeros"),
    ("trainer", "schedule"): ("cosine", "step", "constant"),
    ("trainer", "loss"): LOSSES,
    ("data", "dataset"): ("fashion-mnist", "mnist", "digits"),
    ("source_spectrum", "objective"): OBJECTIVES,
}
POSITIVE = {"wavelength_m", "pitch_m", "distance_m", "n_layers", "phase_scale", "epochs", "batch_size",
            "learning_rate", "temperature", "checkpoint_every", "max_loss", "step_every", "step_gamma",
            "val_fraction", "z_step_m", "size_m", "spacing_m", "train_limit", "val_limit", "workers", "count",
            "sample"}

NON_NEGATIVE = {"base_m", "kappa", "smoothness"}

# rule name -> class of its options ([trainer.<rule>]): the one registry, training/rules/options.py
RULE_OPTIONS: dict[str, type] = RULES

#: The largest learning rate accepted: 2 pi. Phases are radians and every rule's optimiser
#: (Adam, for backprop, DFA, HSIC, PAT, ES and SPSA) moves each phase by about
#: ``learning_rate`` radians per step, so a step of a full turn or more per iteration only
#: scrambles the phases: such runs "succeed" at chance accuracy (1e6 did), and from about
#: 1e38 Adam's step overflows float32. The shipped configs use 0.002 to 0.1.
MAX_LEARNING_RATE = 2 * math.pi
#: Every length (keys ending ``_m``, and their lists) must be below 10 m: a THz bench is
#: well under a metre, and 6e+3 for 6e-3 is a typo, not a geometry.
MAX_LENGTH_M = 10.0
#: Pixels along one axis of a layer (Lin 2018: 200), of the simulation window, and the
#: most layers and trained values (n_layers x ny x nx, 512 MB of float32) a config may ask for.
MAX_LAYER_PIXELS = 8192
MAX_WINDOW_PIXELS = 4 * MAX_LAYER_PIXELS
MAX_LAYERS = 64
MAX_PARAMETERS = 2 ** 27
#: Seeds are integers from 0 (NumPy refuses negative seeds) to 2**63 - 1 (torch's limit is 2**64 - 1).
MAX_SEED = 2 ** 63 - 1
SEEDS = {"seed", "split_seed", "feedback_seed", "mismatch_seed"}
#: key -> (largest value, why); keys of the rules' tables included.
MAXIMA = {
    "learning_rate": (MAX_LEARNING_RATE, "phases are radians: a larger step per iteration only scrambles them"),
    "phase_scale": (2 * math.pi, "a phase encoding beyond a full turn wraps onto itself"),
    "step_gamma": (1.0, "the step schedule decays the learning rate; a factor above 1 would grow it without bound"),
    "n_layers": (MAX_LAYERS, "more plates than any stack a lab can align"),
    "epochs": (100_000, "a typo rather than a run"),
    "batch_size": (65_536, "a typo rather than a batch"),
    "workers": (1024, "more threads than any machine here has cores"),
    "val_draws": (1000, "each draw is a full validation pass every epoch"),
    "feature_px": (MAX_LAYER_PIXELS, "larger than any layer"),
    "block": (MAX_LAYER_PIXELS, "larger than any layer"),
    "pool": (MAX_LAYER_PIXELS, "larger than any layer"),
    "pairs": (65_536, "each pair is two forward passes per step"),
    "population": (65_536, "each individual is a forward pass per step"),
    "parents": (65_536, "at most the population"),
    "averages": (65_536, "each average is two forward passes per step"),
    "n": (10.0, "no printable material has a terahertz refractive index near that (silicon: 3.42)"),
    "kappa": (10.0, "a plate with that extinction transmits nothing"),
    "shift_std_px": (MAX_LAYER_PIXELS, "larger than any layer"),
}
#: (table, key) -> (element kind, exact length or None): what each list must hold.
#: Kinds: "pixels" (integers 1..MAX_LAYER_PIXELS), "window" (1..MAX_WINDOW_PIXELS), "length"
#: (numbers in metres, > 0), "offset_m" (finite numbers in metres, any sign), "pair_px"
#: ([dy, dx] pixel shifts).
LISTS = {
    ("geometry", "layer_shape"): ("pixels", 2),
    ("geometry", "window_shape"): ("window", 2),
    ("geometry", "distances_m"): ("length", None),
    ("input", "size_yx_m"): ("length", 2),
    ("trainer.pat", "shift_px"): ("pair_px", None),
    ("trainer.pat", "distance_error_m"): ("offset_m", None),
    ("source", "wavelengths_m"): ("length", None),
    ("source", "band_hz"): ("hertz", 2),
    ("source", "weights"): ("weight", None),
}


_TYPE_WORDS = {int: "an integer", bool: "true or false", str: "a string", list: "a list", dict: "a table"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_number(where, key, value):
    """Range checks of one number (already of the right type) of ``key``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"{where}: '{key}' must be positive, got {value!r}")
    if key in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{where}: '{key}' must not be negative, got {value!r}")
    if key in SEEDS and not (0 <= value <= MAX_SEED):
        raise ConfigError(f"{where}: '{key}' must be a seed from 0 to 2**63 - 1, got {value!r}")
    if key.endswith("_m") and abs(value) >= MAX_LENGTH_M:
        raise ConfigError(f"{where}: '{key}' must be below {MAX_LENGTH_M:g} m (lengths are in metres), got {value!r}")
    if key in MAXIMA and value > MAXIMA[key][0]:
        bound, why = MAXIMA[key]
        raise ConfigError(f"{where}: '{key}' must be at most {bound:.6g} ({why}), got {value!r}")


def _check_list(where, key, value, spec):
    """``value`` (a list) of ``key`` checked against its :data:`LISTS` entry."""
    kind, length = spec
    if length is not None and len(value) != length:
        raise ConfigError(f"{where}: '{key}' must hold {length} values, got {len(value)}: {value!r}"[:300])
    if len(value) > MAX_LAYERS + 1:
        raise ConfigError(f"{where}: '{key}' holds {len(value)} values, more than any stack needs")
    out = []
    for i, v in enumerate(value):
        item = f"'{key}[{i}]'"
        if kind in ("pixels", "window"):
            top = MAX_LAYER_PIXELS if kind == "pixels" else MAX_WINDOW_PIXELS
            if isinstance(v, bool) or not isinstance(v, int) or not (1 <= v <= top):
                raise ConfigError(f"{where}: {item} must be a whole number of pixels from 1 to {top}, got {v!r}")
        elif kind == "pair_px":
            if not (isinstance(v, list) and len(v) == 2 and all(_is_number(a) and math.isfinite(a)
                                                               and abs(a) <= MAX_LAYER_PIXELS for a in v)):
                raise ConfigError(f"{where}: {item} must be a [dy, dx] pair of finite pixel shifts "
                                  f"(at most {MAX_LAYER_PIXELS}), got {v!r}")
            v = [float(a) for a in v]
        elif kind in ("hertz", "weight"):
            if not _is_number(v) or not math.isfinite(v) or v < 0 or (kind == "hertz" and not 0 < v < 1e16):
                what = "a frequency in Hz (0.4 THz is 4e11)" if kind == "hertz" else "a weight >= 0"
                raise ConfigError(f"{where}: {item} must be {what}, got {v!r}")
            v = float(v)
        else:
            if not _is_number(v) or not math.isfinite(v):
                raise ConfigError(f"{where}: {item} must be a finite number of metres, got {v!r}")
            if kind == "length" and v <= 0:
                raise ConfigError(f"{where}: {item} must be positive, got {v!r}")
            if abs(v) >= MAX_LENGTH_M:
                raise ConfigError(f"{where}: {item} must be below {MAX_LENGTH_M:g} m (lengths are in metres), got {v!r}")
            v = float(v)
        out.append(v)
    return out


def _check_value(where, key, value, annotation, table=""):
    origin = typing.get_origin(annotation)
    optional = origin is typing.Union and type(None) in typing.get_args(annotation)
    base = [a for a in typing.get_args(annotation) if a is not type(None)][0] if optional else annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: '{key}' must not be empty")
    if base is float:
        if not _is_number(value) or not math.isfinite(value):
            raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}"[:300])
        value = float(value)
    elif base in _TYPE_WORDS and (not isinstance(value, base) or (base is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: '{key}' must be {_TYPE_WORDS[base]}, got {value!r}"[:300])
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{where}: '{key}' must not hold control characters (a newline, a NUL), got {value!r}"[:300])
    if _is_number(value):
        _check_number(where, key, value)
    if isinstance(value, list) and (table, key) in LISTS:
        value = _check_list(where, key, value, LISTS[(table, key)])
    return value


def _build(cls, table: dict, where: str, name: str = ""):
    """``cls`` built from the TOML table ``table`` (the config's ``[name]``), each key checked."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in fields or key in ("options", "source"):
            known = ", ".join(k for k in fields if k not in ("options", "source"))
            raise ConfigError(f"{where}: unknown key '{key}' (known keys: {known})")
        kwargs[key] = _check_value(where, key, value, hints[key], name)
    return cls(**kwargs)


def parse_config(doc: dict, source: str = "<config>") -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    sections = {"geometry": GeometryConfig, "input": InputConfig, "detectors": DetectorConfig,
                "model": ModelConfig, "material": MaterialConfig, "fabrication": FabricationConfig,
                "data": DataConfig, "trainer": TrainerConfig, "robustness": RobustnessConfig, "source": SourceConfig}
    attribute = {"source": "source_spectrum"}  # Config.source is the file the config came from
    kwargs = {}
    for key, value in doc.items():
        if key == "name":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{source}: 'name' must be a non-empty string")
            kwargs["name"] = _check_value(source, "name", value, str)
            continue
        if key not in sections:
            raise ConfigError(f"{source}: unknown table '[{key}]' (known: {', '.join(sections)}, name)")
        table = dict(value) if isinstance(value, dict) else value
        options = {}
        if key == "trainer" and isinstance(table, dict):
            for rule in list(RULE_OPTIONS):
                if isinstance(table.get(rule), dict):
                    options[rule] = table.pop(rule)
        kwargs[attribute.get(key, key)] = _build(sections[key], table, f"{source} [{key}]", key)
        if key == "trainer":
            kwargs[key].options = options
    cfg = Config(**kwargs, source=source)
    for (sec, key), allowed in CHOICES.items():
        v = getattr(getattr(cfg, sec), key)
        if v not in allowed:
            table = "source" if sec == "source_spectrum" else sec
            raise ConfigError(f"{source} [{table}]: '{key}' must be one of {list(allowed)}, got {v!r}")
    rule = cfg.trainer.rule
    if rule not in RULE_OPTIONS:
        raise ConfigError(f"{source} [trainer]: 'rule' must be one of {sorted(RULE_OPTIONS)}, got {rule!r}")
    for name in cfg.trainer.options:
        if name != rule:
            raise ConfigError(f"{source}: table [trainer.{name}] given but rule = {rule!r}")
    opts_cls = RULE_OPTIONS[rule]
    if dataclasses.is_dataclass(opts_cls):
        cfg.trainer.options = _build(opts_cls, cfg.trainer.options.get(rule, {}), f"{source} [trainer.{rule}]",
                                     f"trainer.{rule}")
        problem = cfg.trainer.options.validate(cfg) if hasattr(cfg.trainer.options, "validate") else None
        if problem:
            raise ConfigError(f"{source} [trainer.{rule}]: {problem}")
    elif cfg.trainer.options.get(rule):
        raise ConfigError(f"{source}: rule {rule!r} takes no [trainer.{rule}] options")
    else:
        cfg.trainer.options = None
    if cfg.model.init_from is not None and not cfg.model.init_from.strip():
        raise ConfigError(f"{source} [model]: 'init_from' must name a design folder")
    g = cfg.geometry
    if g.distances_m is not None and len(g.distances_m) != g.n_layers + 1:
        raise ConfigError(f"{source} [geometry]: 'distances_m' must hold n_layers + 1 = {g.n_layers + 1} values")
    n_values = g.n_layers * g.layer_shape[0] * g.layer_shape[1]
    if n_values > MAX_PARAMETERS:
        raise ConfigError(f"{source} [geometry]: n_layers x layer_shape = {g.n_layers} x {g.layer_shape} is "
                          f"{n_values:,} trained values, more than the {MAX_PARAMETERS:,} accepted")
    if not (0 < cfg.data.val_fraction < 1):
        raise ConfigError(f"{source} [data]: 'val_fraction' must lie between 0 and 1, got {cfg.data.val_fraction}")
    try:  # the material's rules (n > 1, kappa >= 0) are the core's, checked once there
        Material(cfg.material.name, cfg.material.n, cfg.material.kappa)
    except FieldError as e:
        raise ConfigError(f"{source} [material]: '{e.field}' {e.problem}") from None
    check_source(cfg, doc)
    from diffractive.asbuilt import check_oversample  # noqa: PLC0415

    try:
        check_oversample(cfg.robustness.oversample)
    except FieldError as e:
        raise ConfigError(f"{source} [robustness]: '{e.field}' {e.problem}") from None
    r = cfg.robustness
    if r.feature_px < 1 or r.feature_px > min(cfg.geometry.layer_shape):
        raise ConfigError(f"{source} [robustness]: 'feature_px' must be from 1 to the layer size, got {r.feature_px}")
    if r.val_draws < 1:
        raise ConfigError(f"{source} [robustness]: 'val_draws' must be >= 1, got {r.val_draws}")
    if r.smoothness < 0:
        raise ConfigError(f"{source} [robustness]: 'smoothness' must be >= 0, got {r.smoothness}")
    r.load_budget(cfg)  # a bad budget fails here, naming the config and the budget file
    check_redesign(cfg)
    return cfg


def check_source(cfg, doc: dict) -> None:
    """Check ``[source]`` and ``[material] dispersion`` of ``cfg``; with a dispersion table,
    set ``cfg.material.n`` and ``kappa`` to the table's values at ``[geometry] wavelength_m``
    (giving them as well is refused: two sources for one number)."""
    source, sp, m = cfg.source, cfg.source_spectrum, cfg.material
    mat_doc = doc.get("material", {}) if isinstance(doc.get("material"), dict) else {}
    table = m.load_dispersion(cfg)
    if table is not None:
        given = [k for k in ("n", "kappa") if k in mat_doc]
        if given:
            raise ConfigError(f"{source} [material]: give either 'dispersion' or '{given[0]}': with a dispersion "
                              "table, n and kappa are the table's values at [geometry] wavelength_m")
        try:
            m.n, m.kappa = table.at(cfg.geometry.wavelength_m)
        except FieldError as e:
            raise ConfigError(f"{source} [material] dispersion: the design wavelength: {e.problem}") from None
    if sp.wavelengths_m is not None and sp.band_hz is not None:
        raise ConfigError(f"{source} [source]: give either 'wavelengths_m' or 'band_hz' (with 'count'), not both")
    if sp.band_hz is not None and sp.count is None:
        raise ConfigError(f"{source} [source]: 'band_hz' needs 'count' (how many lines across the band)")
    if sp.count is not None and sp.band_hz is None:
        raise ConfigError(f"{source} [source]: 'count' goes with 'band_hz'")
    spectrum = sp.spectrum(source)
    if cfg.detectors.layout == "spectral":
        if spectrum is None or len(spectrum) != 10:
            raise ConfigError(f"{source} [detectors]: layout 'spectral' reads class c at line c of the source: "
                              f"[source] needs 10 lines (one per class), got {0 if spectrum is None else len(spectrum)}")
        if sp.objective != "band" or sp.sample is not None:
            raise ConfigError(f"{source} [source]: layout 'spectral' needs every line in every step and the "
                              "band-summed readout: objective = \"band\" and no 'sample'")
    if sp.jitter and (spectrum is None or len(spectrum) < 2 or cfg.detectors.layout == "spectral"):
        raise ConfigError(f"{source} [source]: 'jitter' moves each line within its share of the band: it needs two "
                          "or more lines and detectors that integrate over the band")
    if spectrum is None:
        for key in ("weights", "sample"):
            if getattr(sp, key) is not None:
                raise ConfigError(f"{source} [source]: '{key}' needs the lines: give 'wavelengths_m' or 'band_hz'")
        return
    if sp.sample is not None and sp.sample > len(spectrum):
        raise ConfigError(f"{source} [source]: 'sample' = {sp.sample} is more than the {len(spectrum)} lines")
    if cfg.trainer.rule != "backprop":
        raise ConfigError(f"{source} [source]: a spectrum is supported by trainer.rule = 'backprop' only, not "
                          f"{cfg.trainer.rule!r}")
    material = Material(m.name, m.n, m.kappa, dispersion=table)
    for j, lam in enumerate(spectrum.wavelengths_m):
        try:
            material.at(lam)
        except FieldError as e:
            raise ConfigError(f"{source} [source]: line {j}: {e.problem}") from None


def check_redesign(cfg) -> None:
    """Check ``[robustness] as_built`` and ``freeze_layers`` of ``cfg`` (also after ``d2nn train
    --as-built / --freeze-layers`` set them): a readable as-built record for this geometry,
    frozen layers that exist, leave one to train and come from ``[model] init_from``."""
    source, g, r = cfg.source, cfg.geometry, cfg.robustness
    if r.as_built is not None and not isinstance(r.as_built, str):
        raise ConfigError(f"{source} [robustness]: 'as_built' must be a path (a d2nn diagnose fit.json), "
                          f"got {r.as_built!r}")
    r.load_as_built(cfg, g.n_layers)  # and a bad as-built record here
    if r.as_built is not None and cfg.trainer.rule != "backprop":
        raise ConfigError(f"{source} [robustness]: 'as_built' is supported by trainer.rule = 'backprop' only, "
                          f"not {cfg.trainer.rule!r}")
    check_freeze_layers(r.freeze_layers, g.n_layers, source)
    if r.freeze_layers:
        if cfg.model.init_from is None:
            raise ConfigError(f"{source} [robustness]: 'freeze_layers' keeps layers as printed, so it needs the "
                              "printed design: set [model] init_from to its folder")
        if cfg.trainer.rule != "backprop":
            raise ConfigError(f"{source} [robustness]: 'freeze_layers' is supported by trainer.rule = 'backprop' "
                              f"only, not {cfg.trainer.rule!r}")


def check_freeze_layers(layers, n_layers: int, source: str = "<config>") -> list:
    """``layers`` (1 = nearest the input) as a sorted list, checked: integers from 1 to
    ``n_layers``, no repeats, at least one layer left to train. Raises :class:`ConfigError`."""
    if not isinstance(layers, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in layers):
        raise ConfigError(f"{source} [robustness]: 'freeze_layers' must be a list of layer numbers (1 = nearest "
                          f"the input), got {layers!r}")
    bad = [v for v in layers if not 1 <= v <= n_layers]
    if bad:
        raise ConfigError(f"{source} [robustness]: 'freeze_layers' names layer {bad[0]}; the design has layers "
                          f"1 to {n_layers}")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{source} [robustness]: 'freeze_layers' names a layer twice: {list(layers)}")
    if len(layers) >= n_layers:
        raise ConfigError(f"{source} [robustness]: 'freeze_layers' freezes all {n_layers} layers: nothing is left "
                          "to train")
    return sorted(layers)


def load_config(path) -> Config:
    """Read and validate a TOML config file (through :func:`diffractive._read.read_toml`)."""
    path = Path(path)
    try:
        doc = read_toml(path)
    except InputFileError as e:
        if e.problem == "no such file":
            raise ConfigError(f"{path}: no such config file") from None
        raise ConfigError(str(e)) from None
    return parse_config(doc, source=str(path))

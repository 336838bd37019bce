"""Malformed training inputs (issue 17): a clean one-line D2NNError naming the file, or a
documented acceptance -- never another exception, and nothing written when refused.

Property-based (hypothesis, few examples each so the default suite stays fast) and explicit:

* config TOML: byte flips, truncation, insertions, deletions; gzip, UTF-16/Latin-1 bytes, a
  folder, a FIFO, deep nesting, huge integers; a wrong value for any key (another type, a bool
  for an int, nan/inf, negative, zero, huge, lists of the wrong length or element type). An
  accepted config must then describe a design (``design_from_config``) or be refused naming
  the file -- the documented acceptance is "it parses and builds a design".
* error budgets and material files read through the same layer (gzip, non-UTF-8, a folder, a
  FIFO, nan).
* checkpoints: byte damage (truncation, flips, random bytes, zeroed ranges), structural damage
  (a field removed, retyped, or made non-finite anywhere in the nested dict), a folder, a FIFO,
  an empty file, only the config, no ``sums``, ``epoch = -5``, a damaged ``best.pt``. Accepted
  damage (a change the format cannot detect, e.g. a finite parameter altered) must resume
  and take a step, or stop with a D2NNError.
* a blow-up (a huge learning rate, an update that turns the parameters infinite) with
  ``checkpoint_every = 1`` keeps a finite last.pt, and resuming from it works.
* stale ``.last.pt.XXXX.tmp`` files are removed on start and resume, nothing else is;
  ``out_dir`` onto a file, below a file, onto the init_from design or the config's folder is
  refused; an init_from of another layer shape is reported in config terms.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from diffractive.budget import load_budget
from diffractive.design import Design, save_design
from diffractive.errors import D2NNError
from fabrication.materials import load_material_file
from training.config import ConfigError, load_config
from training.model import design_from_config
from training.trainer import Trainer, TrainingError


def _settings(n):
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def quiet(*a, **k):
    pass


def _note(outcome: str):
    """Count refusals and acceptances in hypothesis' statistics (--hypothesis-show-statistics)."""
    with contextlib.suppress(Exception):  # outside a @given test there is nothing to count into
        event(outcome)


#: The conftest ``tiny_config(checkpoint_every=1)`` as a file (test_toml_is_the_tiny_config ties them).
TINY_TOML = """\
name = "tiny-backprop"

[geometry]
layer_shape = [24, 24]
n_layers = 2
distance_m = 6e-3
pitch_m = 0.4e-3

[input]
size_yx_m = [6.4e-3, 6.4e-3]

[detectors]
size_m = 1.2e-3
spacing_m = 2.4e-3

[trainer]
rule = "backprop"
epochs = 2
batch_size = 32
learning_rate = 0.05
workers = 1
checkpoint_every = 1
"""


def _one_line_naming(e: BaseException, *names) -> str:
    msg = str(e)
    assert isinstance(e, D2NNError), f"{type(e).__name__}: {msg}"
    assert "\n" not in msg, msg
    assert any(str(n) in msg for n in names), f"{msg!r} names none of {names}"
    return msg


@contextlib.contextmanager
def _no_hang(seconds=20):
    """Fail (instead of hanging the suite) if the block blocks, as opening a FIFO would."""
    def boom(*a):
        raise AssertionError(f"blocked for {seconds} s (a FIFO opened for reading?)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("malformed-training")


@pytest.fixture(scope="module")
def data(digits_split):
    """Train 96 (3 steps of 32), validation 32, test 100 of the first 300 sklearn digits."""
    x, y = digits_split()
    return (x[:96], y[:96]), (x[96:128], y[96:128]), (x[128:228], y[128:228])


@pytest.fixture(scope="module")
def cfg(tiny_config):
    return lambda: tiny_config(checkpoint_every=1)


def _fresh(work: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=work))


# ================================================================== config files
def test_toml_is_the_tiny_config(work, cfg):
    path = _fresh(work) / "tiny.toml"
    path.write_text(TINY_TOML)
    assert load_config(path).to_dict() == cfg().to_dict()


def _load_and_build(path: Path):
    """Load the config file and build its design: a Design, or a clean error naming the file."""
    before = path.read_bytes() if path.is_file() else None
    try:
        design = design_from_config(load_config(path))
    except Exception as e:  # noqa: BLE001  (anything but a one-line D2NNError is a failure)
        _one_line_naming(e, path)
        design = None
        _note("refused")
    else:
        assert isinstance(design, Design)
        _note("accepted")
    if before is not None:
        assert path.read_bytes() == before  # never touched
    return design


@_settings(60)
@given(st.data())
def test_random_byte_damage_to_a_config_is_refused_or_builds_a_design(work, hdata):
    raw = bytearray(TINY_TOML.encode())
    for _ in range(hdata.draw(st.integers(1, 3), label="edits")):
        kind = hdata.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "byte"]), label="kind")
        at = hdata.draw(st.integers(0, max(0, len(raw) - 1)), label="at")
        if not raw:
            break
        if kind == "flip":
            raw[at] ^= 1 << hdata.draw(st.integers(0, 7))
        elif kind == "truncate":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = hdata.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del raw[at:at + hdata.draw(st.integers(1, 12))]
        else:
            raw[at] = hdata.draw(st.integers(0, 255))
    path = _fresh(work) / "damaged.toml"
    path.write_bytes(bytes(raw))
    _load_and_build(path)


# every key of the tiny config, and keys it leaves at their defaults
KEYS = [("geometry", k) for k in ("layer_shape", "n_layers", "distance_m", "pitch_m", "wavelength_m", "distances_m",
                                  "window_shape")] + \
       [("input", k) for k in ("size_yx_m", "phase_scale", "encoding")] + \
       [("detectors", k) for k in ("size_m", "spacing_m", "layout")] + \
       [("trainer", k) for k in ("rule", "epochs", "batch_size", "learning_rate", "workers", "checkpoint_every",
                                 "seed", "max_loss", "temperature", "step_gamma", "step_every", "schedule")] + \
       [("model", k) for k in ("init", "init_from", "modulation")] + \
       [("material", k) for k in ("n", "kappa", "name")] + [("fabrication", k) for k in ("base_m", "z_step_m")] + \
       [("data", k) for k in ("split_seed", "val_fraction", "train_limit", "shuffle_labels")] + \
       [("robustness", k) for k in ("oversample", "feature_px", "val_draws", "smoothness", "seed", "budget")] + \
       [(None, "name")]

BAD_VALUES = ["0.4mm", "", "a\u0000b", "x\ny", True, False, 0, -1, -5, 3, 10**6, 10**25, 0.0, -1e-3, 7.0, 1e6, 1e38,
              1e300, 1e-300, math.nan, math.inf, -math.inf, [], [24], [24, 24, 24], ["24", 24], [1e9, 24], [24.0, 24],
              [math.nan, 1e-3], [[1, 2]], {"a": 1}]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _with_value(table, key, value) -> str:
    """TINY_TOML with ``[table] key`` set to ``value`` (replaced, or added)."""
    lines = TINY_TOML.splitlines()
    if table is None:
        lines = [f"{key} = {_toml_value(value)}" if ln.startswith(f"{key} =") else ln for ln in lines]
        return "\n".join(lines) + "\n"
    out, section, done = [], None, False
    for ln in lines:
        if ln.startswith("["):
            section = ln.strip("[]")
        if section == table and ln.startswith(f"{key} ="):
            ln, done = f"{key} = {_toml_value(value)}", True
        out.append(ln)
    text = "\n".join(out) + "\n"
    if not done:
        if f"[{table}]" in text:
            text = text.replace(f"[{table}]\n", f"[{table}]\n{key} = {_toml_value(value)}\n", 1)
        else:
            text += f"\n[{table}]\n{key} = {_toml_value(value)}\n"
    return text


@_settings(80)
@given(st.sampled_from(KEYS), st.sampled_from(BAD_VALUES))
def test_any_key_with_a_wrong_value_is_refused_naming_it_or_builds_a_design(work, where, value):
    table, key = where
    path = _fresh(work) / "retyped.toml"
    path.write_text(_with_value(table, key, value))
    design = _load_and_build(path)
    if design is None:
        return
    # accepted: then the value had the key's type and a sane range (never a bool for a number,
    # a non-finite float, a list where a scalar goes or the reverse)
    assert not (isinstance(value, float) and not math.isfinite(value)), (where, value)
    assert not (isinstance(value, bool) and key not in ("shuffle_labels",)), (where, value)
    assert not isinstance(value, dict), (where, value)
    list_keys = {"layer_shape", "distances_m", "window_shape", "size_yx_m"}
    assert isinstance(value, list) == (key in list_keys), (where, value)


@pytest.mark.parametrize("table, key, value, needle", [
    ("geometry", "pitch_m", "0.4mm", "'pitch_m' must be a finite number"),
    ("trainer", "epochs", True, "'epochs' must be an integer"),
    ("trainer", "batch_size", 32.0, "'batch_size' must be an integer"),
    ("trainer", "learning_rate", math.nan, "'learning_rate' must be a finite number"),
    ("trainer", "learning_rate", math.inf, "'learning_rate' must be a finite number"),
    ("trainer", "learning_rate", 1e38, "'learning_rate' must be at most 6.28319"),
    ("trainer", "learning_rate", 1e300, "'learning_rate' must be at most"),
    ("trainer", "learning_rate", 1e6, "'learning_rate' must be at most"),
    ("trainer", "learning_rate", 7.0, "phases are radians"),
    ("trainer", "step_gamma", 2.0, "'step_gamma' must be at most 1"),
    ("trainer", "seed", -1, "'seed' must be a seed from 0"),
    ("trainer", "workers", 10**6, "'workers' must be at most"),
    ("data", "split_seed", 10**25, "'split_seed' must be a seed"),
    ("geometry", "layer_shape", [24], "'layer_shape' must hold 2 values"),
    ("geometry", "layer_shape", [24, 24, 24], "'layer_shape' must hold 2 values"),
    ("geometry", "layer_shape", ["24", 24], "'layer_shape[0]' must be a whole number of pixels"),
    ("geometry", "layer_shape", [10**6, 10**6], "'layer_shape[0]' must be a whole number of pixels from 1 to 8192"),
    ("geometry", "layer_shape", [24.0, 24], "'layer_shape[0]'"),
    ("geometry", "n_layers", 10**6, "'n_layers' must be at most 64"),
    ("geometry", "distances_m", [6e-3, 6e-3], "n_layers + 1"),
    ("geometry", "distances_m", [6e-3, math.nan, 6e-3], "'distances_m[1]' must be a finite number"),
    ("geometry", "distance_m", 6e3, "'distance_m' must be below 10 m"),
    ("geometry", "window_shape", [10, 10], "[geometry]: the design this config describes is invalid"),
    ("input", "size_yx_m", [1.0, 1.0], "[input]: the design this config describes is invalid"),
    ("input", "phase_scale", math.inf, "'phase_scale' must be a finite number"),
    ("input", "phase_scale", 100.0, "'phase_scale' must be at most"),
    ("detectors", "size_m", 5e-3, "[detectors]: the design this config describes is invalid"),
    ("model", "init_from", "a\u0000b", "must not hold control characters"),
    (None, "name", "x\ny", "must not hold control characters"),
    ("robustness", "val_draws", 10**9, "'val_draws' must be at most"),
    ("material", "n", math.nan, "'n' must be a finite number"),
    ("fabrication", "base_m", -1e-3, "'base_m' must not be negative"),
])
def test_wrong_values_are_refused_in_one_line_naming_file_and_key(work, table, key, value, needle):
    path = _fresh(work) / "bad.toml"
    path.write_text(_with_value(table, key, value))
    with pytest.raises(ConfigError) as e:
        design_from_config(load_config(path))
    msg = _one_line_naming(e.value, path)
    assert needle in msg, msg


def test_pat_shift_lists_are_checked_element_by_element(work):
    path = _fresh(work) / "pat.toml"
    path.write_text(TINY_TOML.replace('rule = "backprop"', 'rule = "pat"') + "\n[trainer.pat]\nshift_px = [[0, 1], [nan, 0]]\n")
    with pytest.raises(ConfigError, match=r"'shift_px\[1\]' must be a \[dy, dx\] pair of finite") as e:
        load_config(path)
    _one_line_naming(e.value, path)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_bytes(gzip.compress(TINY_TOML.encode())), "gzip-compressed"),
    (lambda p: p.write_bytes(TINY_TOML.encode("utf-16")), "not UTF-8"),
    (lambda p: p.write_bytes(TINY_TOML.replace("tiny-backprop", "tiny-\u00e9").encode("latin-1")), "not UTF-8"),
    (lambda p: p.mkdir(), "is a folder"),
    (_fifo, "not a regular file"),
    (lambda p: p.write_text("a = " + "[" * 200 + "]" * 200), "nests"),
    (lambda p: p.write_text(TINY_TOML.replace("epochs = 2", "epochs = " + "9" * 40)), "integer of"),
    (lambda p: p.write_text(TINY_TOML[:-30]), "not valid TOML"),
    (lambda p: None, "no such config file"),
])
def test_unreadable_config_files_give_one_line(work, make, needle):
    path = _fresh(work) / "config.toml"
    make(path)
    with _no_hang(), pytest.raises(ConfigError) as e:
        load_config(path)
    assert needle in _one_line_naming(e.value, path)


# ================================================================== budgets and material files
BUDGET = "[lateral_m]\nuniform = 1e-4\n"
MATERIAL = 'name = "R"\nn = 1.6\nkappa = 0.02\n'


@pytest.mark.parametrize("make, needle", [
    (lambda p, t: p.write_bytes(gzip.compress(t.encode())), "gzip-compressed"),
    (lambda p, t: p.write_bytes(b"name = \"\xff\xfe\"\n" + t.encode()), "not UTF-8"),
    (lambda p, t: p.mkdir(), "is a folder"),
    (lambda p, t: _fifo(p), "not a regular file"),
    (lambda p, t: p.write_text(t.replace("1e-4", "nan").replace("0.02", "nan")), "nan"),
    (lambda p, t: p.write_text(t + "x = [" + "[" * 100 + "]" * 100 + "]\n"), "nests"),
])
@pytest.mark.parametrize("reader, text", [(load_budget, BUDGET), (load_material_file, MATERIAL)],
                         ids=["budget", "material"])
def test_budget_and_material_files_go_through_the_reading_layer(work, make, needle, reader, text):
    path = _fresh(work) / "file.toml"
    make(path, text)
    with _no_hang(), pytest.raises(D2NNError) as e:
        reader(path)
    assert needle in _one_line_naming(e.value, path).lower() or needle in str(e.value)


def test_material_files_refuse_unknown_keys_and_non_string_names(work):
    path = _fresh(work) / "m.toml"
    path.write_text(MATERIAL + "colour = 'black'\n")
    with pytest.raises(D2NNError, match="unknown key 'colour'") as e:
        load_material_file(path)
    _one_line_naming(e.value, path)
    path.write_text(MATERIAL.replace('"R"', "5"))
    with pytest.raises(D2NNError, match="name") as e:
        load_material_file(path)
    _one_line_naming(e.value, path)


def test_a_bad_budget_named_by_a_config_names_both_files(work):
    folder = _fresh(work)
    (folder / "b.toml").write_bytes(gzip.compress(BUDGET.encode()))
    path = folder / "c.toml"
    path.write_text(TINY_TOML + '\n[robustness]\nbudget = "b.toml"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = _one_line_naming(e.value, path)
    assert str(folder / "b.toml") in msg and "gzip" in msg


# ================================================================== checkpoints
@pytest.fixture(scope="module")
def run(work, cfg, data):
    """A valid run folder stopped at step 4 (epoch 2, step 1 of 3): last.pt of step 4, best.pt of epoch 1."""
    out = work / "valid-run"
    assert Trainer(cfg(), out, data=data, log=quiet, stop_after_steps=4).run() is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    return out


def _copy(run: Path, work: Path) -> Path:
    dst = _fresh(work) / "run"
    shutil.copytree(run, dst)
    return dst


def _resume_or_refuse(folder, cfg, data, *names):
    """Resume (and take a step) from ``folder``, or a clean refusal naming one of ``names``;
    returns the Trainer, or None when refused. Nothing may change when refused."""
    ck = folder / "checkpoints"
    before = {p.name: (p.read_bytes() if p.is_file() else None) for p in ck.iterdir()} if ck.is_dir() else None
    try:
        with _no_hang():
            t = Trainer(cfg(), folder, resume=True, data=data, log=quiet, stop_after_steps=1)
    except Exception as e:  # noqa: BLE001
        _one_line_naming(e, *names)
        if before is not None:
            assert {p.name: (p.read_bytes() if p.is_file() else None) for p in ck.iterdir()} == before
        _note("refused")
        return None
    try:  # accepted: the state must be usable
        assert t.run() is None
        _note("accepted, resumed a step")
    except Exception as e:  # noqa: BLE001
        _one_line_naming(e, *names, "diverged")
        _note("accepted, then stopped cleanly")
    return t


def test_a_valid_checkpoint_resumes_where_it_stopped(run, work, cfg, data):
    t = _resume_or_refuse(_copy(run, work), cfg, data, "last.pt")
    assert t is not None and t.state["global_step"] == 5 and t.state["epoch"] == 1


@_settings(40)
@given(st.data())
def test_random_byte_damage_to_last_pt_is_refused_or_resumes(run, work, cfg, data, hdata):
    folder = _copy(run, work)
    last = folder / "checkpoints" / "last.pt"
    raw = bytearray(last.read_bytes())
    kind = hdata.draw(st.sampled_from(["truncate", "flip", "random", "zero", "append"]), label="kind")
    at = hdata.draw(st.integers(0, len(raw) - 1), label="at")
    if kind == "truncate":
        del raw[at:]
    elif kind == "flip":
        for _ in range(hdata.draw(st.integers(1, 8))):
            raw[hdata.draw(st.integers(0, len(raw) - 1))] ^= 1 << hdata.draw(st.integers(0, 7))
    elif kind == "random":
        raw = bytearray(hdata.draw(st.binary(min_size=0, max_size=4096)))
    elif kind == "zero":
        n = len(raw[at:at + hdata.draw(st.integers(1, 4096))])
        raw[at:at + n] = bytes(n)
    else:
        raw += hdata.draw(st.binary(min_size=1, max_size=64))
    last.write_bytes(bytes(raw))
    _resume_or_refuse(folder, cfg, data, last)


def _nodes(obj, path=()):
    """Every (path, value) of a nested checkpoint dict (dicts and lists descended, tensors leaves)."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


def _set(obj, path, value=None, delete=False):
    """``obj`` with the node at ``path`` replaced by ``value`` (or removed); tuples are rebuilt."""
    head, rest = path[0], path[1:]
    items = list(obj) if isinstance(obj, tuple) else obj
    if rest:
        items[head] = _set(items[head], rest, value, delete)
    elif delete:
        del items[head]
    else:
        items[head] = value
    return tuple(items) if isinstance(obj, tuple) else items


REPLACEMENTS = st.sampled_from(["x", None, -5, 0, 3.5, math.nan, math.inf, True, [], {}, 10**20,
                                "tensor3", "nan-tensor", "int-tensor"])


def _replacement(name, like):
    if name == "tensor3":
        return torch.zeros(3)
    if name == "nan-tensor":
        return torch.full(tuple(like.shape), math.nan) if isinstance(like, torch.Tensor) else torch.tensor([math.nan])
    if name == "int-tensor":
        return torch.zeros(tuple(like.shape) if isinstance(like, torch.Tensor) else (2,), dtype=torch.int64)
    return name


@_settings(60)
@given(st.data())
def test_structural_damage_to_last_pt_is_refused_or_resumes(run, work, cfg, data, hdata):
    """A field anywhere in the nested checkpoint removed, retyped, or (a float tensor) made non-finite."""
    folder = _copy(run, work)
    last = folder / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    nodes = dict(_nodes(ck))
    del nodes[()]
    action = hdata.draw(st.sampled_from(["remove", "retype", "non-finite"]), label="action")
    if action == "non-finite":
        floats = [p for p, v in nodes.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
        path = hdata.draw(st.sampled_from(floats), label="field")
        like = nodes[path].clone()
        like.view(-1)[hdata.draw(st.integers(0, like.numel() - 1))] = hdata.draw(
            st.sampled_from([math.nan, math.inf, -math.inf]))
        ck = _set(ck, path, like)
    else:
        path = hdata.draw(st.sampled_from(sorted(nodes, key=repr)), label="field")
        if action == "remove":
            ck = _set(ck, path, delete=True)
        else:
            ck = _set(ck, path, _replacement(hdata.draw(REPLACEMENTS, label="value"), nodes[path]))
    torch.save(ck, last)
    t = _resume_or_refuse(folder, cfg, data, last)
    if t is not None:  # accepted: then the damage was not to a field the run depends on being finite
        assert action != "non-finite" or path[0] not in ("model", "rule"), path
        assert not (action == "remove" and len(path) == 1)


def _save(path, obj):
    torch.save(obj, path)


@pytest.mark.parametrize("damage, needle", [
    (lambda p, ck: (p.unlink(), p.mkdir()), "is a folder"),
    (lambda p, ck: (p.unlink(), os.mkfifo(p)), "not a regular file"),
    (lambda p, ck: p.write_bytes(b""), "empty"),
    (lambda p, ck: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a d2nn checkpoint"),
    (lambda p, ck: p.write_bytes(b"PK\x03\x04" + np.random.default_rng(1).bytes(500)), "not a readable d2nn checkpoint"),
    (lambda p, ck: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "not a readable d2nn checkpoint"),
    (lambda p, ck: _save(p, {"config": ck["config"]}), "field 'model' is missing"),
    (lambda p, ck: _save(p, [ck]), "holds a list"),
    (lambda p, ck: _save(p, torch.zeros(3)), "holds a Tensor"),
    (lambda p, ck: _save(p, dict(ck, state={k: v for k, v in ck["state"].items() if k != "sums"})),
     "field 'state.sums' is missing"),
    (lambda p, ck: _save(p, dict(ck, state=dict(ck["state"], epoch=-5))), "field 'state.epoch' must be an integer"),
    (lambda p, ck: _save(p, dict(ck, state=dict(ck["state"], epoch=True))), "field 'state.epoch'"),
    (lambda p, ck: _save(p, dict(ck, state=dict(ck["state"], global_step=99))), "field 'state.global_step'"),
    (lambda p, ck: _save(p, dict(ck, state=dict(ck["state"], sums=[math.nan, 0, 0]))), "field 'state.sums'"),
    (lambda p, ck: _save(p, dict(ck, model={"phase": ck["model"]["phase"] * math.inf, "masks": ck["model"]["masks"],
                                            "score_matrix": ck["model"]["score_matrix"]})),
     "field 'model.phase' holds NaN or infinite values"),
    (lambda p, ck: _save(p, dict(ck, model=dict(ck["model"], phase=torch.zeros(2, 10, 10)))),
     "field 'model.phase' has shape (2, 10, 10)"),
    (lambda p, ck: _save(p, dict(ck, config=dict(ck["config"], name="other"))), "different config"),
    (lambda p, ck: torch.save(ck, p, _use_new_zipfile_serialization=False), "not an archive written by torch.save"),
])
def test_damaged_last_pt_is_refused_in_one_line_naming_file_and_field(run, work, cfg, data, damage, needle):
    folder = _copy(run, work)
    last = folder / "checkpoints" / "last.pt"
    damage(last, torch.load(last, weights_only=True))
    with _no_hang(), pytest.raises(D2NNError) as e:
        Trainer(cfg(), folder, resume=True, data=data, log=quiet)
    assert needle in _one_line_naming(e.value, last)


def test_adam_state_of_the_wrong_shape_or_a_negative_step_is_refused(run, work, cfg, data):
    for change, needle in ((lambda s: s.update(exp_avg=torch.zeros(3)), "exp_avg' must be a float tensor"),
                           (lambda s: s.update(step=torch.tensor(-5.0)), "step' must be a count"),
                           (lambda s: s.pop("exp_avg_sq"), "exp_avg_sq' is missing")):
        folder = _copy(run, work)
        last = folder / "checkpoints" / "last.pt"
        ck = torch.load(last, weights_only=True)
        change(ck["rule"]["optimizer"]["state"][0])
        torch.save(ck, last)
        with pytest.raises(TrainingError) as e:
            Trainer(cfg(), folder, resume=True, data=data, log=quiet)
        assert needle in _one_line_naming(e.value, last)


def test_a_damaged_best_pt_is_found_on_resume_not_after_the_last_epoch(run, work, cfg, data):
    folder = _copy(run, work)
    best = folder / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(TrainingError) as e:
        Trainer(cfg(), folder, resume=True, data=data, log=quiet)
    _one_line_naming(e.value, best)


def test_a_fresh_start_refuses_a_last_pt_that_is_not_a_file(run, work, cfg, data):
    folder = _copy(run, work)
    last = folder / "checkpoints" / "last.pt"
    last.unlink()
    last.mkdir()
    with pytest.raises(TrainingError) as e:
        Trainer(cfg(), folder, force=True, data=data, log=quiet)
    assert "is a folder" in _one_line_naming(e.value, last)


# ================================================================== blow-ups
def test_a_huge_learning_rate_is_refused_by_the_trainer_too(work, cfg, data):
    for lr in (1e38, 1e300, 1e6, 0.0, -1.0, math.nan):
        c = cfg()
        c.trainer.learning_rate = lr   # a config built in code skips the file's checks
        out = _fresh(work) / "out"
        with pytest.raises(TrainingError) as e:
            Trainer(c, out, data=data, log=quiet)
        assert "learning_rate" in _one_line_naming(e.value, "learning_rate")
        assert not out.exists()


@pytest.mark.parametrize("lr", [1e38, 1e300])
def test_an_overflowing_optimiser_step_stops_cleanly_and_keeps_a_finite_last_pt(work, cfg, data, lr):
    out = _fresh(work) / "out"
    t = Trainer(cfg(), out, data=data, log=quiet, stop_after_steps=2)
    t.run()
    # the learning rate becomes huge from step 3 on (what Adam saw with learning_rate = 1e38 or 1e300)
    t.rule.scheduler.base_lrs = [lr]
    for g in t.rule.optimizer.param_groups:
        g["lr"] = lr
    t.stop_after_steps = None
    with pytest.raises(TrainingError) as e:
        t.run()
    msg = _one_line_naming(e.value, "last.pt")
    assert "step 3" in msg and "learning_rate" in msg and "after step 2" in msg, msg
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ck["state"]["global_step"] == 2 and torch.isfinite(ck["model"]["phase"]).all()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]
    resumed = Trainer(cfg(), out, resume=True, data=data, log=quiet, stop_after_steps=2)
    assert resumed.state["global_step"] == 2
    assert resumed.run() is None and resumed.state["global_step"] == 4


def test_parameters_that_become_infinite_are_never_checkpointed(work, cfg, data):
    """checkpoint_every = 1: the step that turns the parameters infinite is followed by a
    checkpoint at once; it must be refused, not written as last.pt."""
    out = _fresh(work) / "out"
    t = Trainer(cfg(), out, data=data, log=quiet)
    real = t.rule.step
    calls = {"n": 0}

    def diverging(x, y):  # step 5's update turns the phases infinite
        calls["n"] += 1
        result = real(x, y)
        if calls["n"] == 5:
            with torch.no_grad():
                t.model.phase.mul_(math.inf)
        return result

    t.rule.step = diverging
    with pytest.raises(TrainingError) as e:
        t.run()
    msg = _one_line_naming(e.value, "last.pt")
    assert "diverged at step 5 (epoch 2)" in msg and "after step 4" in msg and "learning_rate" in msg, msg
    last = out / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    assert ck["state"]["global_step"] == 4 and torch.isfinite(ck["model"]["phase"]).all()
    assert torch.isfinite(torch.load(out / "checkpoints" / "best.pt", weights_only=True)["model"]["phase"]).all()
    t2 = Trainer(cfg(), out, resume=True, data=data, log=quiet, stop_after_steps=2)
    assert t2.state["global_step"] == 4
    assert t2.run() is None and t2.state["global_step"] == 6  # the rest of epoch 2


def test_training_at_chance_warns(work, cfg, data):
    """A test split whose labels are a random permutation cannot be classified above chance."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:1000] / 16).astype(np.float32)
    y = np.random.default_rng(0).integers(0, 10, 1000)
    logs = []
    c = cfg()
    c.trainer.epochs = 1
    Trainer(c, _fresh(work) / "out", data=(data[0], data[1], (x, y)), log=logs.append).run()
    assert any("at chance" in line and "learning_rate" in line for line in logs), logs


# ================================================================== stale temporaries
def _stray(folder: Path, name: str) -> Path:
    """A temporary exactly as diffractive._io.atomic_write names it, left behind as by a SIGKILL."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.write(fd, b"half a checkpoint")
    os.close(fd)
    return Path(tmp)


@pytest.mark.parametrize("resume", [True, False])
def test_stale_temporaries_are_removed_on_start_and_nothing_else(run, work, cfg, data, resume):
    folder = _copy(run, work)
    ck = folder / "checkpoints"
    stale = [_stray(ck, "last.pt"), _stray(ck, "last.pt"), _stray(ck, "best.pt")]
    keep = [ck / "notes.txt", ck / ".last.pt.tmp", ck / ".other.pt.abcd1234.tmp", ck / "last.pt.abcd1234.tmp"]
    for p in keep:
        p.write_text("mine")
    (ck / ".last.pt.dir12345.tmp").mkdir()
    (ck / ".best.pt.link1234.tmp").symlink_to(ck / "notes.txt")
    Trainer(cfg(), folder, resume=resume, force=not resume, data=data, log=quiet)
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in keep)
    assert (ck / ".last.pt.dir12345.tmp").is_dir() and (ck / ".best.pt.link1234.tmp").is_symlink()


# ================================================================== out_dir
def test_out_dir_onto_or_below_a_file_is_one_line_and_leaves_it(work, cfg, data):
    f = _fresh(work) / "a-file"
    f.write_text("keep")
    for out in (f, f / "sub"):
        with pytest.raises(TrainingError) as e:
            Trainer(cfg(), out, force=True, data=data, log=quiet)
        _one_line_naming(e.value, f)
        assert f.read_text() == "keep"


def test_cli_out_onto_a_file_is_one_line(work, capsys):
    from d2nn.cli import main

    folder = _fresh(work)
    (folder / "c.toml").write_text(TINY_TOML + "\n[data]\ntrain_limit = 64\nval_limit = 32\n")
    (folder / "f").write_text("keep")
    assert main(["train", str(folder / "c.toml"), "--out", str(folder / "f"), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(folder / "f") in err, err
    assert (folder / "f").read_text() == "keep"


def test_out_dir_is_never_an_input(work, cfg, data, small_design):
    folder = _fresh(work)
    design = save_design(small_design(layer_shape=(24, 24)), folder / "stage1")
    before = {p.name: p.read_bytes() for p in design.iterdir() if p.is_file()}
    cfg_file = folder / "ft.toml"
    cfg_file.write_text(TINY_TOML.replace("[trainer]", '[model]\ninit_from = "stage1"\n\n[trainer]'))
    c = load_config(cfg_file)
    for out in (design, folder):  # the init_from design itself; the folder holding it and the config
        with pytest.raises(D2NNError) as e:
            Trainer(c, out, force=True, data=data, log=quiet)
        assert "input" in _one_line_naming(e.value, out)
    assert {p.name: p.read_bytes() for p in design.iterdir() if p.is_file()} == before


def test_init_from_of_another_layer_shape_is_said_in_config_terms(work, small_design):
    folder = _fresh(work)
    save_design(small_design(layer_shape=(32, 32)), folder / "stage1")
    cfg_file = folder / "ft.toml"
    cfg_file.write_text(TINY_TOML.replace("[trainer]", '[model]\ninit_from = "stage1"\n\n[trainer]'))
    with pytest.raises(ConfigError) as e:
        design_from_config(load_config(cfg_file))
    msg = _one_line_naming(e.value, cfg_file)
    assert "that design has 2 layers of 32 x 32 pixels, the config asks for 2 of 24 x 24" in msg, msg
    assert "make_design" not in msg

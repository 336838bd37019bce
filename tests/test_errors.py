"""diffractive/errors.py: one root error class, D2NNError (a ValueError), under every library error."""
import importlib
import inspect
import pickle
import pkgutil
import re
from pathlib import Path

import pytest

import diffractive
from diffractive._validate import finite_real, non_negative_finite, one_of, positive_finite, positive_int, shape2
from diffractive.errors import D2NNError, DesignError, InputTypeError, OutputExists

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("diffractive", "fabrication", "training", "d2nn")

# Files whose owners still raise plain ValueError/TypeError/RuntimeError for bad input (to convert to
# D2NNError or a _validate helper); every other library file must not. Shrink this list, never grow it.
PENDING: set[str] = set()


def library_modules():
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        yield mod
        for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
            if info.name in ("d2nn.__main__",):
                continue
            yield importlib.import_module(info.name)


def test_every_library_error_class_derives_from_d2nnerror():
    classes = {obj for mod in library_modules() for _, obj in inspect.getmembers(mod, inspect.isclass)
               if issubclass(obj, Exception) and not issubclass(obj, Warning)
               and obj.__module__.split(".")[0] in PACKAGES}
    names = {c.__qualname__ for c in classes}
    assert {"DesignError", "FieldError", "SamplingError", "MeasuredDataError", "FabricationError", "ConfigError",
            "TrainingError", "DatasetMissing", "IdxFormatError", "UserError", "OutputExists"} <= names
    assert [c.__qualname__ for c in classes if not issubclass(c, D2NNError)] == []


def test_the_old_bases_still_catch():
    from training.datasets import DatasetMissing
    from training.trainer import TrainingError

    assert issubclass(D2NNError, ValueError) and issubclass(InputTypeError, TypeError)
    assert issubclass(DatasetMissing, FileNotFoundError) and issubclass(TrainingError, RuntimeError)
    assert issubclass(OutputExists, FileExistsError) and issubclass(DesignError, D2NNError)
    assert diffractive.D2NNError is D2NNError


def test_no_plain_raises_outside_the_pending_files():
    pattern = re.compile(r"raise (ValueError|TypeError|RuntimeError)\(")
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in PENDING and pattern.search(path.read_text()):
                bad.append(rel)
    assert bad == []


def test_output_exists_names_the_parameter_and_can_be_worded():
    e = OutputExists("/x", "is not empty", {"resume": "continue the run there", "force": "start over"})
    assert str(e) == "/x is not empty; pass resume=True to continue the run there or pass force=True to start over"
    assert e.worded({"force": "--force"}) == ("/x is not empty; pass resume=True to continue the run there or pass "
                                              "--force to start over")
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


@pytest.mark.parametrize("check,value,exc,msg", [
    (positive_finite, 0.0, D2NNError, "pitch_m must be a positive finite number, got 0.0"),
    (positive_finite, "0.4mm", InputTypeError, "pitch_m must be a real number"),
    (non_negative_finite, -1, D2NNError, "pitch_m must be a non-negative finite number"),
    (finite_real, float("nan"), D2NNError, "pitch_m must be finite"),
    (positive_int, 0, D2NNError, "pitch_m must be a positive integer"),
    (positive_int, 1.5, InputTypeError, "pitch_m must be an integer"),
    (shape2, (3,), D2NNError, r"pitch_m must be a pair \[ny, nx\]"),
])
def test_validate_helpers_raise_d2nnerror_naming_the_parameter(check, value, exc, msg):
    with pytest.raises(exc, match=msg):
        check("pitch_m", value)
    with pytest.raises(D2NNError):
        check("pitch_m", value)


def test_validate_helpers_return_converted_values():
    assert positive_finite("x", 2) == 2.0 and non_negative_finite("x", 0) == 0.0 and positive_int("n", 3) == 3
    assert shape2("s", [2, 3]) == (2, 3) and one_of("mode", "a", ("a", "b")) == "a"
    with pytest.raises(D2NNError, match="mode must be one of 'a', 'b', got 'c'"):
        one_of("mode", "c", ("a", "b"))

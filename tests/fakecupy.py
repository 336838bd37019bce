"""A stand-in for CuPy that runs on the CPU and is as strict as CuPy at the host boundary.

Why: the physics core (``diffractive/``) is written once for NumPy and CuPy, with the array
module ``xp`` taken from the input arrays. Most CuPy bugs in such code are not GPU bugs but
boundary bugs: a NumPy function applied to a device array (CuPy refuses, or the code silently
depends on NumPy's dispatch protocols), a device array handed to something that converts it
implicitly (``np.asarray(cupy_array)`` raises), or a host array mixed into device arithmetic.
The CI machines have no GPU, so :mod:`tests.test_cupy_contract` runs the core through this
module instead and compares every result with NumPy's.

What it is: a module usable as ``xp``. Its arrays are :class:`FakeArray`, a wrapper (not a
subclass) around a NumPy array. Like ``cupy.ndarray`` a ``FakeArray``

* refuses implicit conversion: ``__array__`` raises ``TypeError`` with CuPy's message, so
  ``np.asarray(a)``, ``np.float32(a)`` and ``host_array[...] = a`` fail (``np.float64(a)``
  goes through ``float(a)`` and works, as it does with CuPy);
* is a copy when made from host data (``fakecupy.asarray(h)`` does not alias ``h``);
* is copied to the host only by ``a.get()``, ``fakecupy.asnumpy(a)`` (or the core's
  ``diffractive.backend.to_numpy``), and by the syncing scalar conversions CuPy allows:
  ``float(a)``, ``int(a)``, ``complex(a)``, ``bool(a)`` of a one-element array, ``a.item()``,
  ``a.tolist()``, ``repr``/``format``; it has no ``__index__`` (CuPy has none either);
* refuses host arrays in its arithmetic (``a + numpy_array`` raises ``TypeError``) while
  taking Python and NumPy scalars; ``a[...] = numpy_array`` follows CuPy: allowed only as the
  whole-array copy ``a[:] = h`` with the same shape and dtype (or through advanced indexing),
  otherwise ``ValueError`` (CuPy's ``fill`` refuses non-scalar NumPy arrays);
* returns 0-d arrays, not NumPy scalars, from reductions and full indexing (``a.sum()``);
* iterates (``list(a)``) into sub-arrays, as CuPy does.

**Stricter than CuPy, on purpose:** CuPy implements ``__array_ufunc__`` and
``__array_function__``, so ``np.exp(cupy_array)`` or ``np.sum(cupy_array)`` often work by
dispatching to CuPy (and fail for functions CuPy lacks). Code that relies on that works only
by accident, so here every ``numpy.*`` function and ufunc refuses a ``FakeArray``
(``__array_ufunc__ = None``; ``__array_function__`` raises). The core must call ``xp.*``, or
copy to the host explicitly with ``to_numpy`` where a host copy is genuinely meant.

The namespace (``fakecupy.exp``, ``fakecupy.fft.fft``, ``fakecupy.zeros``, ...) is generated:
any NumPy callable is wrapped so that it takes ``FakeArray`` arguments, refuses NumPy arrays
(CuPy functions do, except the explicit host-to-device ``asarray``/``array``/``asanyarray``),
and wraps its array results. NumPy types and constants (``fakecupy.float32``, ``pi``) are
NumPy's, as in CuPy. CuPy-only entry points the core touches are faked minimally:
``is_available``, ``get_array_module``, ``asnumpy``, ``ndarray``, ``get_default_memory_pool``,
``fft.config.get_plan_cache``. Anything else CuPy-specific (``cupy.cuda``, ``cupyx``, streams,
DLPack) is absent and raises ``AttributeError``.

How the core sees it: ``FakeArray.__module__`` is ``"cupy"``, the module CuPy's own
``ndarray`` reports, and the ``fake_cupy`` fixture of the contract test puts this module in
``sys.modules["cupy"]`` for the test's duration, so the core's own detection
(``diffractive.backend.get_array_module``, ``to_numpy``, ``resolve_backend("cupy")``,
``diffractive.heights.array_kind``) runs unchanged and picks it up.

What it cannot catch: anything about the device itself (asynchrony, streams, memory, cuFFT
precision and plans, DLPack to torch), NumPy functions that CuPy lacks (the namespace offers
all of NumPy's), CuPy's wrap-around of out-of-range integer indices and its undefined result
for repeated scatter indices, and dtype-promotion differences between CuPy and NumPy. A real
GPU run (the ``gpu`` marker) remains the test of those.
"""
from __future__ import annotations

import types as _types
import warnings as _warnings

import numpy as _np

__all__ = ["FakeArray", "asnumpy", "get_array_module", "is_available"]

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")
_SCALARS = (bool, int, float, complex, _np.generic)
#: ndarray attributes a FakeArray does not expose: host pointers and buffers (CuPy's ``data``
#: is a device pointer), and NumPy-only methods.
_HIDDEN = frozenset({"ctypes", "data", "flat", "setflags", "tofile", "dump", "dumps", "itemset", "newbyteorder",
                     "getfield", "setfield", "byteswap", "ptp"})


def _host_error(where: str) -> TypeError:
    return TypeError(f"{where}: a NumPy (host) array was given where a device array is needed; CuPy does not "
                     "convert implicitly (use xp.asarray(...) to copy it to the device)")


class FakeArray:
    """A NumPy array pretending to live on a device; see the module docstring."""

    __slots__ = ("_a",)
    # NumPy ufuncs (np.exp(a)) refuse it, and NumPy's binary operators (host + a) defer to ours
    __array_ufunc__ = None

    def __init__(self, a):
        if not isinstance(a, _np.ndarray):
            raise TypeError(f"FakeArray wraps a numpy.ndarray, got {type(a).__name__}")
        self._a = a

    # -- the host boundary ---------------------------------------------------------------
    def get(self, stream=None, order="C", out=None):
        """A copy on the host (``numpy.ndarray``), as ``cupy.ndarray.get``."""
        if out is not None:
            if not isinstance(out, _np.ndarray) or out.dtype != self._a.dtype or out.shape != self._a.shape:
                raise TypeError("out must be a numpy.ndarray of the same dtype and shape")
            out[...] = self._a
            return out
        return _np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy a host array of the same dtype and shape into this array (``cupy.ndarray.set``)."""
        if not isinstance(arr, _np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self._a.dtype or arr.shape != self._a.shape:
            raise ValueError("set() needs the same dtype and shape")
        self._a[...] = arr

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__}() was called on a device array (fakecupy.FakeArray); call the xp "
                        f"function instead, or copy to the host explicitly (to_numpy / .get()) where that is meant")

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __complex__(self):
        return complex(self._a)

    def __bool__(self):
        if self._a.size == 0:  # CuPy: deprecated, False
            _warnings.warn("The truth value of an empty array is ambiguous.", DeprecationWarning, stacklevel=2)
            return False
        return bool(self._a)

    def item(self, *args):
        return self._a.item(*args)

    def tolist(self):
        return self._a.tolist()

    def __repr__(self):
        return f"fakecupy.{self._a!r}"

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    def __copy__(self):
        return FakeArray(self._a.copy())

    def __deepcopy__(self, memo):
        return FakeArray(self._a.copy())

    def __reduce__(self):
        return (_from_host, (self.get(),))

    # -- attributes ------------------------------------------------------------------------
    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    @property
    def nbytes(self):
        return self._a.nbytes

    @property
    def itemsize(self):
        return self._a.itemsize

    @property
    def strides(self):
        return self._a.strides

    @property
    def real(self):
        return _wrap(self._a.real)

    @real.setter
    def real(self, value):
        self._a.real = _operand(value, "real")

    @property
    def imag(self):
        return _wrap(self._a.imag)

    @imag.setter
    def imag(self, value):
        self._a.imag = _operand(value, "imag")

    @property
    def T(self):
        return _wrap(self._a.T)

    @property
    def device(self):
        return "fakecupy device 0"

    def __getattr__(self, name):
        # methods (astype, reshape, sum, conj, ...) and the rest of the metadata, from NumPy;
        # dunder lookups (__array_interface__, __array_struct__, __dlpack__) must fail, or NumPy
        # would find a way round __array__
        if name.startswith("_") or name in _HIDDEN:
            raise AttributeError(f"'FakeArray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if callable(attr):
            return _Function(attr, f"ndarray.{name}")
        return _wrap(attr)

    # -- container ------------------------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        k = _index(key)
        if isinstance(value, _np.ndarray):
            if type(key) is slice and key == slice(None):
                if value.dtype != self._a.dtype or value.shape != self._a.shape:
                    raise ValueError("copying a numpy.ndarray to a cupy.ndarray by empty slice assignment must "
                                     "ensure arrays have same shape and dtype")
            elif not _advanced(key) and value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            self._a[k] = value
            return
        if isinstance(value, (list, tuple)) and not _advanced(key):
            raise TypeError(f"fakecupy: assigning a {type(value).__name__} to a device array (convert it with "
                            f"xp.asarray first)")
        self._a[k] = _unwrap(value, allow_host=True)


def _operand(x, op):
    if isinstance(x, FakeArray):
        return x._a
    if isinstance(x, _SCALARS):
        return x
    if isinstance(x, _np.ndarray):
        raise _host_error(f"operator {op}")
    return NotImplemented


def _binary(name, op, reflected=False):
    def method(self, other):
        o = _operand(other, name)
        if o is NotImplemented:
            return NotImplemented
        return _wrap(op(o, self._a) if reflected else op(self._a, o))
    method.__name__ = name
    return method


def _inplace(name, op):
    def method(self, other):
        o = _operand(other, name)
        if o is NotImplemented:
            return NotImplemented
        op(self._a, o, out=self._a)
        return self
    method.__name__ = name
    return method


for _name, _op in (("add", _np.add), ("sub", _np.subtract), ("mul", _np.multiply), ("truediv", _np.true_divide),
                   ("floordiv", _np.floor_divide), ("mod", _np.remainder), ("pow", _np.power),
                   ("matmul", _np.matmul), ("and", _np.bitwise_and), ("or", _np.bitwise_or),
                   ("xor", _np.bitwise_xor), ("lshift", _np.left_shift), ("rshift", _np.right_shift)):
    setattr(FakeArray, f"__{_name}__", _binary(f"__{_name}__", _op))
    setattr(FakeArray, f"__r{_name}__", _binary(f"__r{_name}__", _op, reflected=True))
    if _name != "matmul":
        setattr(FakeArray, f"__i{_name}__", _inplace(f"__i{_name}__", _op))
for _name, _op in (("eq", _np.equal), ("ne", _np.not_equal), ("lt", _np.less), ("le", _np.less_equal),
                   ("gt", _np.greater), ("ge", _np.greater_equal)):
    setattr(FakeArray, f"__{_name}__", _binary(f"__{_name}__", _op))
FakeArray.__divmod__ = _binary("__divmod__", _np.divmod)
FakeArray.__rdivmod__ = _binary("__rdivmod__", _np.divmod, reflected=True)
FakeArray.__neg__ = lambda self: _wrap(_np.negative(self._a))
FakeArray.__pos__ = lambda self: self
FakeArray.__abs__ = lambda self: _wrap(_np.absolute(self._a))
FakeArray.__invert__ = lambda self: _wrap(_np.invert(self._a))
FakeArray.__hash__ = None
FakeArray.__module__ = "cupy"  # what cupy.ndarray reports: the core detects CuPy arrays by it


# ------------------------------------------------------------------------------ (un)wrapping
def _from_host(h):
    return FakeArray(_np.array(h))


def _wrap(x):
    """Array results become FakeArrays (NumPy scalars 0-d ones, as CuPy returns); containers recursively."""
    if isinstance(x, _np.ndarray):
        return FakeArray(x)
    if isinstance(x, _np.generic):
        return FakeArray(_np.asarray(x))
    if type(x) in (tuple, list):
        return type(x)(_wrap(v) for v in x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # named results (np.linalg.svd, ...)
        return type(x)(*(_wrap(v) for v in x))
    return x


def _unwrap(x, allow_host=False, where="fakecupy"):
    if isinstance(x, FakeArray):
        return x._a
    if isinstance(x, _np.ndarray):
        if not allow_host:
            raise _host_error(where)
        return x.copy()  # host to device is a copy: the device array must not alias the host one
    if type(x) in (tuple, list):
        return type(x)(_unwrap(v, allow_host, where) for v in x)
    if type(x) is dict:
        return {k: _unwrap(v, allow_host, where) for k, v in x.items()}
    return x


def _index(key):
    # CuPy converts NumPy arrays and lists used as indices (an explicit, small host-to-device copy)
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, FakeArray):
        return key._a
    return key


def _advanced(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (FakeArray, _np.ndarray, list, bool, _np.bool_)) for k in keys)


#: NumPy functions that take host data explicitly (host-to-device copies), as CuPy's do
_HOST_OK = frozenset({"asarray", "array", "asanyarray"})


class _Function:
    """A NumPy callable taking FakeArrays and returning them (ufunc methods such as ``reduce`` too)."""

    def __init__(self, fn, name):
        self._fn = fn
        self._name = name
        self.__name__ = getattr(fn, "__name__", name)
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args, **kwargs):
        host = self.__name__ in _HOST_OK
        where = f"fakecupy {self._name}()"
        return _wrap(self._fn(*_unwrap(args, host, where), **_unwrap(kwargs, host, where)))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._fn, name)
        return _Function(attr, f"{self._name}.{name}") if callable(attr) and not isinstance(attr, type) else attr

    def __repr__(self):
        return f"<fakecupy function {self._name}>"


def _adapt(obj, qualname):
    if isinstance(obj, _types.ModuleType):
        return _Namespace(obj, qualname)
    if isinstance(obj, (type, _np.dtype)) or not callable(obj):
        return obj  # dtypes, scalar types, constants: NumPy's own, as in CuPy
    return _Function(obj, qualname)


class _Namespace:
    """A NumPy submodule (``numpy.fft``, ``numpy.linalg``, ...) seen through the fake."""

    def __init__(self, module, qualname, **extra):
        self._module = module
        self._qualname = qualname
        self.__name__ = f"fakecupy.{qualname}"
        self._cache = dict(extra)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cache = self.__dict__["_cache"]
        if name not in cache:
            try:
                obj = getattr(self._module, name)
            except AttributeError:
                raise AttributeError(f"fakecupy.{self._qualname} has no attribute {name!r}") from None
            cache[name] = _adapt(obj, f"{self._qualname}.{name}")
        return cache[name]


# ------------------------------------------------------------------------------ CuPy-only entry points
class _PlanCache:
    """Stands for cuFFT's plan cache: the core only clears it (diffractive.clear_caches)."""

    cleared = 0

    def clear(self):
        _PlanCache.cleared += 1

    def get_size(self):
        return 0


class _MemoryPool:
    """Stands for CuPy's memory pools: nothing is held, so nothing is freed."""

    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


_plan_cache = _PlanCache()
_pool = _MemoryPool()
fft = _Namespace(_np.fft, "fft", config=_types.SimpleNamespace(get_plan_cache=lambda: _plan_cache))
linalg = _Namespace(_np.linalg, "linalg")
random = _Namespace(_np.random, "random")
ndarray = FakeArray


def is_available() -> bool:
    """CuPy's "a CUDA device is usable": always, for the fake."""
    return True


def get_array_module(*args):
    """This module if any argument is a FakeArray, else NumPy (``cupy.get_array_module``)."""
    import sys  # noqa: PLC0415

    return sys.modules[__name__] if any(isinstance(a, FakeArray) for a in args) else _np


def asnumpy(a, stream=None, order="C", out=None):
    """The explicit device-to-host copy (``cupy.asnumpy``); host input passes through ``numpy.asarray``."""
    if isinstance(a, FakeArray):
        return a.get(stream, order, out)
    return _np.asarray(a, order=order)


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pool


def __getattr__(name):
    """Every other name: NumPy's, adapted (see the module docstring); cached after the first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        obj = getattr(_np, name)
    except AttributeError:
        raise AttributeError(f"module 'fakecupy' has no attribute {name!r} (not in NumPy; a CuPy-only entry point "
                             f"that is not faked)") from None
    value = _adapt(obj, name)
    globals()[name] = value
    return value

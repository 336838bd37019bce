"""Error classes of the physics core.

:class:`D2NNError` is the root of every library error (a ``ValueError``).
:class:`DesignError` is what reading, writing or building a design raises.
:class:`FieldError` is the one a constructor raises for a bad value of one of its fields:
it carries the field's name, so that a container (a :class:`~diffractive.design.Design`
holding detectors, the design reader naming the file) can say *which* value is wrong
(``field 'detectors[3].sign' must be 1 or -1, got 2``) without re-checking it.
"""
from __future__ import annotations

import contextlib


class D2NNError(ValueError):
    """Root of every error the d2nn library raises for bad input or an unusable file or state.

    A :class:`ValueError`, so callers that catch ``ValueError`` keep working. The ``d2nn``
    command catches this class once (:func:`d2nn.cli.main`) and prints its message as one
    line; messages therefore name the library's parameters (``overwrite=True``), never
    command-line flags, which the command line words itself.
    """


class InputTypeError(D2NNError, TypeError):
    """A value of the wrong type (e.g. a string where a number of metres is expected).

    Also a :class:`TypeError`, as Python's own type errors are.
    """


class BackendUnavailable(D2NNError, RuntimeError):
    """An array library was asked for (``backend="cupy"``) that this machine cannot run."""


class OutputExists(D2NNError, FileExistsError):
    """Writing would replace what is at ``path``; ``remedies`` maps a parameter to what ``=True`` does.

    The message names the library's parameters (``pass overwrite=True to replace it``);
    :meth:`worded` lets a caller with its own names (the command line's ``--force``) say
    the same. Also a :class:`FileExistsError`.
    """

    def __init__(self, path, problem: str = "exists", remedies: dict | None = None):
        self.path = str(path)
        self.problem = problem
        self.remedies = dict(remedies if remedies is not None else {"overwrite": "replace it"})
        super().__init__(self.worded({p: f"{p}=True" for p in self.remedies}))

    def __reduce__(self):  # picklable with its arguments
        return (type(self), (self.path, self.problem, self.remedies))

    def __str__(self) -> str:
        return self.args[0]

    def worded(self, names: dict) -> str:
        """The message with each parameter ``p`` written as ``names.get(p, p + "=True")``."""
        how = " or ".join(f"pass {names.get(p, p + '=True')} to {what}" for p, what in self.remedies.items())
        return f"{self.path} {self.problem}" + (f"; {how}" if how else "")


class DesignError(D2NNError):
    """A design folder or design.json is missing, malformed or inconsistent, or a design value is bad."""


class FieldError(DesignError):
    """A bad value for the field ``field`` (a dotted path such as ``material.n``); ``problem`` says why."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"field '{field}' {problem}")

    def __reduce__(self):  # picklable with its two arguments (ValueError's default passes only the message)
        return (type(self), (self.field, self.problem))

    def within(self, prefix: str) -> "FieldError":
        """The same error for the field seen from a container (``prefix`` such as ``"detectors[3]."``)."""
        return FieldError(prefix + self.field, self.problem)


@contextlib.contextmanager
def field_errors(field: str):
    """Re-raise what the block raises as a :class:`FieldError` naming ``field``.

    A ``FieldError`` from a nested object (``Material`` inside ``material``) gets
    ``field + "."`` in front of its name. A plain ``ValueError``/``TypeError`` (from the
    checks in :mod:`diffractive._validate`, whose messages start with the parameter's name)
    becomes ``FieldError(field, ...)`` with that leading name dropped, so it is named once.
    """
    try:
        yield
    except FieldError as e:
        raise e.within(f"{field}.") from None
    except (ValueError, TypeError) as e:
        msg = str(e)
        for lead in (field, field.rsplit(".", 1)[-1]):
            if msg.startswith(lead + " "):
                msg = msg[len(lead) + 1:]
                break
        raise FieldError(field, msg) from None


class FabricationError(D2NNError):
    """Bad input to the printed-plate model or to fabrication (material, heights, printer
    settings, STL files): :mod:`diffractive.heights` and every module of ``fabrication``
    raise it; ``d2nn export`` and ``simulate --from-stl`` report it as one line."""

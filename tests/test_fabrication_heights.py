"""Phase <-> height <-> transmission model, materials and bad input (fast, analytic checks)."""
import math
import subprocess
import sys

import numpy as np
import pytest

from fabrication.heights import (height_to_phase, height_to_transmission, phase_period_m, phase_to_height,
                                 phase_to_steps, phase_to_transmission)
from diffractive.errors import FieldError
from fabrication.materials import (MATERIALS, FabricationError, Material, get_material, load_material_file,
                                   resolve_material)

LAM, N, KAPPA, Z, BASE = 0.75e-3, 1.7227, 0.031, 16e-6, 0.5e-3


def _to_np(a):
    if type(a).__module__.startswith("cupy"):
        return a.get()
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def test_quantised_round_trip_reproduces_exp_i_phi(xp):
    # phases over several turns, including exact multiples of 2 pi and negative values
    phi = np.concatenate([np.linspace(-4 * np.pi, 4 * np.pi, 2001), 2 * np.pi * np.arange(-3, 4)])
    h = _to_np(phase_to_height(xp.asarray(phi), LAM, N, base_m=BASE, z_step_m=Z))
    steps = h / Z
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-9)            # whole printer layers
    period = LAM / (N - 1)
    nb = round(BASE / Z)
    assert h.min() >= nb * Z - 1e-15 and h.max() <= nb * Z + period + Z / 2 + 1e-15
    t = _to_np(height_to_transmission(xp.asarray(h), LAM, N, KAPPA))
    # analytic: amplitude exp(-2 pi kappa h / lambda), phase 2 pi (n-1) h / lambda = base phase + phi (mod 2 pi)
    np.testing.assert_allclose(np.abs(t), np.exp(-2 * np.pi * KAPPA * h / LAM), rtol=1e-12)
    base_phase = 2 * np.pi * (N - 1) * nb * Z / LAM
    err = np.angle(t * np.exp(-1j * base_phase) * np.exp(-1j * phi))
    max_err = np.pi * Z * (N - 1) / LAM                                       # half a printer layer
    assert np.abs(err).max() <= max_err + 1e-9
    assert np.abs(err).max() > 0.5 * max_err                                  # quantisation really happened


def test_continuous_heights_are_exact_and_match_diffractive_layers():
    from diffractive.layers import transmission

    phi = np.random.default_rng(0).uniform(-10, 10, (7, 9))
    h = phase_to_height(phi, LAM, N)                                          # base 0, no quantisation
    assert h.min() >= 0 and h.max() < LAM / (N - 1)
    np.testing.assert_allclose(height_to_transmission(h, LAM, N, 0.0), transmission(phi), atol=1e-12)
    # a thicker pixel delays more: phase grows with height (exp(+i phi) convention)
    assert np.all(np.diff(height_to_phase(np.linspace(0, 1e-3, 5), LAM, N)) > 0)
    np.testing.assert_allclose(phase_period_m(LAM, N), LAM / (N - 1))


def test_steps_and_dtypes():
    phi = np.float32([0, np.pi, 2 * np.pi - 1e-3])
    s = phase_to_steps(phi, LAM, N, Z, BASE)
    assert s.dtype == np.int32
    assert s[0] == round(BASE / Z) and s[2] == round(BASE / Z) + round(LAM / (N - 1) / Z)
    assert height_to_transmission(np.float32([1e-3]), LAM, N, KAPPA).dtype == np.complex64
    assert height_to_transmission(np.float64([1e-3]), LAM, N, KAPPA).dtype == np.complex128
    np.testing.assert_allclose(phase_to_transmission(phi.astype(np.float64), LAM, N, KAPPA, base_m=BASE, z_step_m=Z),
                               height_to_transmission(s * Z, LAM, N, KAPPA))


def test_torch_tensors_in_and_out_with_gradients():
    torch = pytest.importorskip("torch")
    phi = np.random.default_rng(1).uniform(-7, 7, (5, 6))
    ht = phase_to_height(torch.tensor(phi), LAM, N, base_m=BASE, z_step_m=Z)
    assert isinstance(ht, torch.Tensor)
    np.testing.assert_allclose(ht.numpy(), phase_to_height(phi, LAM, N, base_m=BASE, z_step_m=Z))
    st = phase_to_steps(torch.tensor(phi), LAM, N, Z, BASE)
    assert st.dtype == torch.int32 and np.array_equal(st.numpy(), phase_to_steps(phi, LAM, N, Z, BASE))
    # differentiable model: d/dh sum(Re t) = Re(t * (i (n-1) - kappa) * 2 pi / lambda)
    h = torch.tensor(np.linspace(0.1e-3, 1.5e-3, 11), requires_grad=True)
    t = height_to_transmission(h, LAM, N, KAPPA)
    t.real.sum().backward()
    tn = t.detach().numpy()
    np.testing.assert_allclose(h.grad.numpy(), np.real(tn * (1j * (N - 1) - KAPPA) * 2 * np.pi / LAM), rtol=1e-9)
    p = torch.tensor(phi, requires_grad=True)
    phase_to_transmission(p, LAM, N, KAPPA, base_m=BASE).real.sum().backward()   # continuous: gradient flows
    assert p.grad is not None and torch.all(torch.isfinite(p.grad))


def test_fabrication_never_imports_torch_at_module_level():
    code = ("import sys, fabrication, fabrication.heights, fabrication.mesh, fabrication.plate, fabrication.holder, "
            "fabrication.export, fabrication.roundtrip, fabrication.validate, d2nn.commands.export; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ bad input: one clear error each
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_phases(bad):
    phi = np.zeros((3, 3))
    phi[1, 2] = bad
    for f in (lambda: phase_to_height(phi, LAM, N, base_m=BASE, z_step_m=Z), lambda: phase_to_steps(phi, LAM, N, Z)):
        with pytest.raises(FabricationError, match="phases contain 1 non-finite value"):
            f()


@pytest.mark.parametrize("n", [1.0, 0.5, -2.0, np.nan])
def test_index_must_exceed_one(n):
    with pytest.raises(FabricationError, match="refractive index n must"):
        phase_to_height(np.zeros(3), LAM, n)
    with pytest.raises(FieldError, match="'n' must"):  # the core's Material names its field
        Material("x", n, 0.0)


def test_negative_kappa():
    with pytest.raises(FabricationError, match=r"kappa must be >= 0.*-0.01"):
        height_to_transmission(np.ones(2) * 1e-3, LAM, N, -0.01)
    with pytest.raises(FieldError, match="'kappa' must be >= 0"):
        Material("x", 1.5, -1e-3)


@pytest.mark.parametrize("z", [0.0, -16e-6, np.inf])
def test_non_positive_z_step(z):
    with pytest.raises(FabricationError, match="z step"):
        phase_to_height(np.zeros(3), LAM, N, z_step_m=z)


def test_negative_base():
    with pytest.raises(FabricationError, match=r"base thickness must be >= 0, got -0.0001"):
        phase_to_height(np.zeros(3), LAM, N, base_m=-1e-4, z_step_m=Z)


def test_negative_heights_rejected():
    with pytest.raises(FabricationError, match="heights must be >= 0"):
        height_to_transmission(np.array([-1e-4]), LAM, N, KAPPA)


# ------------------------------------------------------------------ materials
def test_material_table_and_lookup():
    m = get_material("veroblackplus")
    assert m is MATERIALS["VeroBlackPlus RGD875"] and m.n == 1.7227 and "Lin" in m.source
    assert m.assumption  # kappa is flagged as not verified against its source
    assert get_material("VeroBlackPlus RGD875") is m
    with pytest.raises(FabricationError, match="unknown material 'pla'"):
        get_material("pla")


def test_material_file_and_overrides(tmp_path):
    p = tmp_path / "resin.toml"
    p.write_text('name = "MyResin"\nn = 1.65\nkappa = 0.02\nwavelength_m = 0.75e-3\n')
    m = load_material_file(p)
    assert (m.name, m.n, m.kappa, m.wavelength_m) == ("MyResin", 1.65, 0.02, 0.75e-3)
    t = tmp_path / "table.toml"
    t.write_text('[material]\nname = "T"\nn = 1.5\nkappa = 0\n')
    assert load_material_file(t).n == 1.5
    assert resolve_material(None, material_file=p, kappa=0.05).kappa == 0.05
    c = resolve_material({"name": "VeroBlackPlus RGD875", "n": 1.7227, "kappa": 0.031}, n=1.6, kappa=0.01)
    assert (c.name, c.n, c.kappa) == ("custom", 1.6, 0.01)
    bad = tmp_path / "bad.toml"
    bad.write_text("n = 0.9\nkappa = 0.0\n")
    with pytest.raises(FabricationError, match=r"bad.toml: refractive index n must be greater than 1"):
        load_material_file(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("n = = 2")
    with pytest.raises(FabricationError, match="not valid TOML"):
        load_material_file(broken)
    missing = tmp_path / "m.toml"
    missing.write_text("n = 1.5\n")
    with pytest.raises(FabricationError, match="missing kappa"):
        load_material_file(missing)
    assert math.isclose(resolve_material(None).n, 1.7227)

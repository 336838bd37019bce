"""Broadband and multi-wavelength stacks (diffractive/spectrum.py, issue 15).

Checked against analytic results: a Gaussian beam's width at each line, the thin-plate phase
``2 pi (n(lambda) - 1) h / lambda`` and amplitude ``exp(-2 pi kappa(lambda) h / lambda)`` with n,
kappa interpolated by hand, energy conservation per line, the adjoint identity and central
finite differences of the band-summed readout; and the one-line spectrum against the
monochromatic path bit for bit.
"""
import dataclasses
import json
import math

import numpy as np
import pytest

from diffractive.asbuilt import AsBuilt, build, build_lines, simulate_built
from diffractive.design import Design, load_design, make_design, save_design
from diffractive.detectors import Detector
from diffractive.errors import D2NNError, DesignError, FieldError
from diffractive.materials import Dispersion, Material, read_dispersion
from diffractive.propagation import Engine
from diffractive.simulate import frequency_sweep, simulate
from diffractive.spectrum import SPEED_OF_LIGHT_M_S, Spectrum, readout_weights, sample_lines

LAM0 = 0.75e-3


def _design(n=24, spectrum=None, material=None, detectors="lin", **kw):
    kw = {"layer_shape": (n, n), "n_layers": 2, "spacing_m": 4e-3, "input_size_yx_m": (4.8e-3, 4.8e-3),
          "detector_size_m": 0.8e-3, "detector_spacing_m": 1.6e-3, **kw}
    return make_design(spectrum=spectrum, material=material, detectors=detectors, **kw)


def _table():
    """A made-up dispersive resin (numbers for the tests, not a measurement)."""
    f = (0.36e12, SPEED_OF_LIGHT_M_S / LAM0, 0.44e12)
    return Dispersion(f, (1.70, 1.72, 1.75), (0.02, 0.03, 0.05), source="test table")


def _dispersive():
    return Material("test resin", 1.72, 0.03, dispersion=_table())


# ---------------------------------------------------------------- the spectrum itself
def test_weights_are_normalised_and_bands_are_equally_spaced_in_frequency():
    s = Spectrum((0.7e-3, 0.8e-3), (1, 3))
    assert s.weights == (0.25, 0.75)
    b = Spectrum.from_band(3.8e11, 4.2e11, 5)
    np.testing.assert_allclose(b.frequencies_hz, [3.8e11, 3.9e11, 4.0e11, 4.1e11, 4.2e11], rtol=1e-12)
    assert b.weights == pytest.approx((0.2,) * 5)
    assert Spectrum.from_json(json.loads(json.dumps(b.to_json()))) == b


@pytest.mark.parametrize("args, field", [
    (((),), "wavelengths_m"), (((1e-3, 1e-3),), "wavelengths_m"), (((-1e-3,),), "wavelengths_m[0]"),
    (((1e-3, 2e-3), (1, -1)), "weights[1]"), (((1e-3, 2e-3), (0, 0)), "weights"), (((1e-3,), (1, 2)), "weights"),
    (((float("nan"),),), "wavelengths_m[0]")])
def test_bad_spectra_name_the_field(args, field):
    with pytest.raises(FieldError) as e:
        Spectrum(*args)
    assert e.value.field == field


def test_sampled_lines_are_unbiased():
    """E over the draws of sum_{j in S} (J/m) w_j x_j = sum_j w_j x_j (the docstring's claim)."""
    s = Spectrum((0.7e-3, 0.72e-3, 0.75e-3, 0.8e-3), (1, 2, 3, 4))
    x = np.array([3.0, -1.0, 2.0, 5.0])
    full = float(np.dot(s.weights, x))
    rng = np.random.default_rng(0)
    est = []
    for _ in range(4000):
        idx, f = sample_lines(s, 2, rng)
        assert len(set(idx)) == 2
        est.append(float(np.sum(np.asarray(s.weights)[idx] * f * x[idx])))
    assert abs(np.mean(est) - full) < 4 * np.std(est) / math.sqrt(len(est))
    idx, f = sample_lines(s, None, rng)
    assert list(idx) == [0, 1, 2, 3] and np.all(f == 1)


# ---------------------------------------------------------------- materials
def test_dispersion_interpolates_linearly_in_frequency_and_refuses_outside_its_range():
    t = _table()
    f_mid = 0.5 * (t.frequency_hz[1] + t.frequency_hz[2])
    n, k = t.at(SPEED_OF_LIGHT_M_S / f_mid)
    assert n == pytest.approx(0.5 * (1.72 + 1.75), rel=1e-12) and k == pytest.approx(0.04, rel=1e-12)
    with pytest.raises(FieldError, match=r"0\.3 THz.*outside.*0\.36 to 0\.44 THz"):
        t.at(SPEED_OF_LIGHT_M_S / 0.3e12)
    assert Material("plain", 1.7, 0.01).at(1e-3) == (1.7, 0.01)  # no table: the one value everywhere


def test_a_dispersive_material_gives_each_line_its_own_exact_phase_and_absorption():
    """Same printed heights, three lines: t = exp(i 2 pi (n(l) - 1) h / l) exp(-2 pi kappa(l) h / l)."""
    d = _design(material=_dispersive())
    h = np.random.default_rng(0).uniform(0.5e-3, 1.5e-3, (2, 24, 24))
    f_mid = 0.5 * (SPEED_OF_LIGHT_M_S / LAM0 + 0.44e12)
    for f, n, kappa in ((0.36e12, 1.70, 0.02), (0.44e12, 1.75, 0.05), (f_mid, 1.735, 0.04)):
        lam = SPEED_OF_LIGHT_M_S / f
        t = build(d, AsBuilt(absorption=True), wavelength_m=lam).transmissions(heights_m=h)
        want = np.exp(1j * 2 * np.pi * (n - 1) * h / lam) * np.exp(-2 * np.pi * kappa * h / lam)
        np.testing.assert_allclose(t, want, rtol=1e-12, atol=1e-12)
    t36 = build(d, wavelength_m=SPEED_OF_LIGHT_M_S / 0.36e12).transmissions(heights_m=h)
    t44 = build(d, wavelength_m=SPEED_OF_LIGHT_M_S / 0.44e12).transmissions(heights_m=h)
    assert np.max(np.abs(np.angle(t36 / t44))) > 0.5  # the lines really differ


def test_read_dispersion_csv_and_its_errors(tmp_path):
    p = tmp_path / "resin.csv"
    p.write_text("# source: a THz-TDS run\nfrequency_thz,n,kappa\n0.36,1.70,0.02\n0.44,1.75,0.05\n")
    t = read_dispersion(p)
    assert t.frequency_hz == (0.36e12, 0.44e12) and t.source == "a THz-TDS run"
    for text, needle in (("frequency_thz,n\n0.36,1.7\n", "columns"),
                         ("frequency_thz,n,kappa\n0.36,1.7,x\n0.4,1.7,0\n", "line 2, column 'kappa'"),
                         ("frequency_thz,n,kappa\n0.4,1.7,0\n0.36,1.7,0\n", "increasing frequency"),
                         ("frequency_thz,n,kappa\n0.36,0.7,0\n0.4,1.7,0\n", "greater than 1"),
                         ("frequency_thz,n,kappa\n0.36,1.7,0\n", "2 to 10000 rows")):
        p.write_text(text)
        with pytest.raises(D2NNError, match=needle) as e:
            read_dispersion(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- the design file
def test_a_broadband_design_round_trips_and_an_old_one_reads_as_monochromatic(tmp_path):
    s = Spectrum.from_band(0.37e12, 0.43e12, 3, (1, 2, 1))
    d = _design(spectrum=s, material=_dispersive())
    save_design(d, tmp_path / "bb")
    back = load_design(tmp_path / "bb")
    assert back.spectrum == s and back.material.dispersion == _table() and not back.is_monochromatic
    old = _design()
    save_design(old, tmp_path / "mono")
    assert "spectrum" not in json.loads((tmp_path / "mono" / "design.json").read_text())
    m = load_design(tmp_path / "mono")
    assert m.spectrum is None and m.is_monochromatic and m.lines == Spectrum.monochromatic(m.wavelength_m)


@pytest.mark.parametrize("change, field", [
    (lambda d: dataclasses.replace(d, material=Material("r", 1.6, 0.03, dispersion=_table())), "material.n"),
    (lambda d: dataclasses.replace(d, spectrum=Spectrum((1e-3,))), "spectrum.wavelengths_m[0]"),
    (lambda d: dataclasses.replace(d, detectors=(Detector(0, (0, 0), (1e-3, 1e-3), band=2),
                                                 Detector(1, (2e-3, 0), (1e-3, 1e-3))), n_classes=2),
     "detectors[0].band"),
])
def test_inconsistent_broadband_designs_are_refused(change, field):
    d = _design(material=_dispersive(), spectrum=Spectrum.from_band(0.38e12, 0.42e12, 2))
    with pytest.raises(DesignError) as e:
        change(d)
    assert getattr(e.value, "field", "") == field or field in str(e.value)


def test_a_design_json_with_a_bad_spectrum_names_the_field(tmp_path):
    d = _design()
    save_design(d, tmp_path / "d")
    p = tmp_path / "d" / "design.json"
    doc = json.loads(p.read_text())
    doc["spectrum"] = {"wavelengths_m": [7e-4, "x"]}
    p.write_text(json.dumps(doc))
    with pytest.raises(D2NNError, match=r"design\.json.*spectrum.*wavelengths_m\[1\]"):
        load_design(tmp_path / "d")


# ---------------------------------------------------------------- simulation
def test_one_line_at_the_design_wavelength_is_the_monochromatic_path_bit_for_bit():
    d = _design()
    imgs = np.random.default_rng(0).random((6, 12, 12))
    ref = simulate(d, imgs, keep_intensity=True)
    one = dataclasses.replace(d, spectrum=Spectrum.monochromatic(d.wavelength_m))
    for res in (simulate(one, imgs, keep_intensity=True),
                simulate_built(d, imgs, spectrum=Spectrum.monochromatic(d.wavelength_m), keep_intensity=True),
                simulate_built(d, imgs, stack=build_lines(d), keep_intensity=True)):
        assert np.array_equal(res.powers, ref.powers) and np.array_equal(res.intensity, ref.intensity)


def test_the_band_readout_is_the_weighted_sum_of_the_lines_alone():
    s = Spectrum((0.72e-3, 0.75e-3, 0.79e-3), (1, 2, 5))
    d = _design(spectrum=s, material=_dispersive())
    imgs = np.random.default_rng(1).random((4, 12, 12))
    band = simulate(d, imgs, keep_intensity=True)
    alone = [simulate_built(d, imgs, spectrum=Spectrum.monochromatic(lam), keep_intensity=True)
             for lam in s.wavelengths_m]
    want = sum(w * r.powers for w, r in zip(s.weights, alone))
    np.testing.assert_allclose(band.powers, want, rtol=1e-6)
    np.testing.assert_allclose(band.intensity, sum(w * r.intensity for w, r in zip(s.weights, alone)), rtol=1e-6)
    np.testing.assert_allclose(band.total_power, sum(w * r.total_power for w, r in zip(s.weights, alone)),
                               rtol=1e-6)
    assert not np.allclose(alone[0].powers, alone[2].powers, rtol=0.05)


def test_a_detector_of_one_band_reads_that_line_only():
    """Spectrally encoded readout: two detectors at one place, class c reading line c."""
    s = Spectrum((0.72e-3, 0.79e-3), (1, 1))
    dets = (Detector(0, (0.0, 0.0), (1.6e-3, 1.6e-3), band=0), Detector(1, (0.0, 0.0), (1.6e-3, 1.6e-3), band=1))
    d = _design(spectrum=s, detectors=dets, n_classes=2)
    imgs = np.random.default_rng(2).random((3, 12, 12))
    p = simulate(d, imgs).powers
    plain = dataclasses.replace(d, spectrum=None, detectors=(Detector(0, (0.0, 0.0), (1.6e-3, 1.6e-3)),
                                                             Detector(1, (2e-3, 0.0), (1e-3, 1e-3))))
    p0 = simulate_built(plain, imgs, spectrum=Spectrum.monochromatic(s.wavelengths_m[0])).powers[:, 0]
    p1 = simulate_built(plain, imgs, spectrum=Spectrum.monochromatic(s.wavelengths_m[1])).powers[:, 0]
    np.testing.assert_allclose(p[:, 0], 0.5 * p0, rtol=1e-6)
    np.testing.assert_allclose(p[:, 1], 0.5 * p1, rtol=1e-6)
    assert np.array_equal(readout_weights(s, dets), [[0.5, 0.0], [0.0, 0.5]])
    with pytest.raises(D2NNError, match="band"):
        frequency_sweep(d, imgs, [0, 1, 0], [0.4e12])


@pytest.mark.parametrize("lam", [0.68e-3, 0.75e-3, 0.83e-3])
def test_each_line_spreads_a_gaussian_beam_as_its_own_wavelength_and_conserves_energy(lam):
    """w(z) = w0 sqrt(1 + (z / zR)^2), zR = pi w0^2 / lambda, at each line of a spectrum; the
    beam's power is unchanged (it stays far inside the window)."""
    n, pitch, w0, z = 320, 0.2e-3, 4.0e-3, 150e-3  # w0 >> lambda: the paraxial formula holds to ~0.3 %
    x = (np.arange(n) - n / 2 + 0.5) * pitch
    X, Y = np.meshgrid(x, x)
    u = np.exp(-(X ** 2 + Y ** 2) / w0 ** 2).astype(np.complex128)
    eng = Engine((n, n), wavelength_m=lam, pitch_m=pitch, distances_m=(z,), dtype=np.complex128, check="ignore")
    out = eng.hop(u)
    I0, I = np.abs(u) ** 2, np.abs(out) ** 2
    assert I.sum() == pytest.approx(I0.sum(), rel=1e-6)
    w2 = 4 * (I * X ** 2).sum() / I.sum()  # second-moment width along x: w^2 = 4 <x^2>
    zr = np.pi * w0 ** 2 / lam
    # the lines' widths differ by ~20 %; the paraxial formula is good to a few 1e-3 here
    assert math.sqrt(w2) == pytest.approx(w0 * math.sqrt(1 + (z / zr) ** 2), rel=5e-3)


def test_the_broadband_stack_passes_the_adjoint_identity_line_by_line():
    """<A_j x, y_j> = <x, A_j^H y_j> for every line's engine, so the band-summed adjoint
    sum_j w_j A_j^H y_j is the adjoint of the weighted forward map."""
    d = _design(spectrum=Spectrum((0.71e-3, 0.75e-3, 0.8e-3)), material=_dispersive())
    lines = build_lines(d)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 24, 24)) + 1j * rng.normal(size=(1, 24, 24))
    lhs = rhs = 0.0
    for w, st in zip(lines.line_weights, lines.stacks):
        eng = st.engine(np.complex128)
        t = np.asarray(st.transmissions(), dtype=np.complex128)
        y = rng.normal(size=(1, 24, 24)) + 1j * rng.normal(size=(1, 24, 24))
        out, arr = eng.forward(t, x, keep_arrivals=True)
        _, g_in = eng.backward(out, arr, t, grad_output=y, need_input_grad=True)
        lhs += w * np.vdot(y, out)
        rhs += w * np.vdot(g_in, x)
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


def test_the_band_summed_readout_has_the_finite_difference_gradient():
    torch = pytest.importorskip("torch")
    from training.robust import through_stack

    s = Spectrum((0.71e-3, 0.75e-3, 0.8e-3), (1, 2, 1))
    d = _design(spectrum=s, material=_dispersive())
    lines = build_lines(d, AsBuilt(absorption=True))
    imgs = torch.from_numpy(np.random.default_rng(4).random((2, 12, 12)).astype(np.float32))

    class M:  # the two things through_stack reads of a model
        phase = torch.tensor(d.phases.astype(np.float64), requires_grad=True)

        @staticmethod
        def amplitudes():
            return None
    weights = torch.tensor(np.random.default_rng(5).random((2, len(d.detectors))))

    def loss(ph):
        M.phase = ph
        return (through_stack(M, imgs, lines)[0] * weights).sum()

    phase = torch.tensor(d.phases.astype(np.float64), requires_grad=True)
    g, = torch.autograd.grad(loss(phase), phase)
    rng = np.random.default_rng(6)
    for _ in range(4):
        l, i, j = rng.integers(0, 2), rng.integers(4, 20), rng.integers(4, 20)
        e = torch.zeros_like(phase)
        e[l, i, j] = 1e-3
        with torch.no_grad():
            fd = (loss(phase + e) - loss(phase - e)) / 2e-3
        # the bridge runs complex64: central differences of 1e-3 rad agree to a few 1e-4 of the largest gradient
        assert abs(float(fd) - float(g[l, i, j])) < 2e-3 * float(g.abs().max())


def test_a_frequency_sweep_at_the_design_frequency_is_the_design_accuracy():
    d = _design()
    imgs = np.random.default_rng(7).random((20, 12, 12))
    labels = simulate(d, imgs).predictions
    rows = frequency_sweep(d, imgs, labels, [SPEED_OF_LIGHT_M_S / d.wavelength_m, 0.3e12])
    assert rows[0]["accuracy"] == 1.0 and rows[1]["accuracy"] < 1.0
    assert rows[1]["frequency_thz"] == pytest.approx(0.3)


def test_a_frequency_sweep_of_printed_heights_simulates_those_heights_at_each_frequency():
    d = _design()
    imgs = np.random.default_rng(8).random((20, 12, 12))
    flat = np.zeros((d.n_layers,) + d.layer_shape, np.float32)
    lam = SPEED_OF_LIGHT_M_S / 0.39e12
    labels = simulate_built(d, imgs, heights_m=flat, spectrum=Spectrum.monochromatic(lam)).predictions
    as_printed = frequency_sweep(d, imgs, labels, [0.39e12], heights_m=flat)
    as_designed = frequency_sweep(d, imgs, labels, [0.39e12])
    assert as_printed[0]["accuracy"] == 1.0 and as_designed[0]["accuracy"] < 0.9


def test_a_source_outside_the_dispersion_table_is_refused_with_the_numbers():
    d = _design(material=_dispersive())
    with pytest.raises(D2NNError, match=r"0\.3 THz.*0\.36 to 0\.44 THz"):
        simulate_built(d, np.zeros((1, 12, 12)), spectrum=Spectrum.monochromatic(SPEED_OF_LIGHT_M_S / 0.3e12))


# ---------------------------------------------------------------- configs and training
def _doc(source=None, material=None, **trainer):
    doc = {"name": "bb", "geometry": {"layer_shape": [24, 24], "n_layers": 2, "distance_m": 4e-3},
           "input": {"size_yx_m": [4.8e-3, 4.8e-3]}, "detectors": {"size_m": 0.8e-3, "spacing_m": 1.6e-3},
           "data": {"dataset": "digits"},
           "trainer": {"epochs": 1, "batch_size": 16, "learning_rate": 0.05, "workers": 1, "seed": 2, **trainer}}
    if source is not None:
        doc["source"] = source
    if material is not None:
        doc["material"] = material
    return doc


@pytest.mark.parametrize("source, material, trainer, needle", [
    ({"wavelengths_m": [7e-4], "band_hz": [3.8e11, 4.2e11], "count": 2}, None, {}, "either 'wavelengths_m' or"),
    ({"band_hz": [3.8e11, 4.2e11]}, None, {}, "needs 'count'"),
    ({"band_hz": [4.2e11, 3.8e11], "count": 2}, None, {}, "band_hz"),
    ({"band_hz": [3.8e11, 4.2e11], "count": 3, "sample": 4}, None, {}, "more than the 3 lines"),
    ({"sample": 2}, None, {}, "needs the lines"),
    ({"wavelengths_m": [7e-4, 8e-4], "objective": "sum"}, None, {}, "objective"),
    ({"wavelengths_m": [7e-4, 8e-4]}, None, {"rule": "es"}, "'backprop' only"),
    ({"wavelengths_m": [7e-4, 8e-4], "weights": [1, -1]}, None, {}, "weight"),
    ({"band_hz": [3.8e11, 1e17], "count": 2}, None, {}, "frequency in Hz"),
    (None, {"dispersion": "resin.csv", "n": 1.7}, {}, "either 'dispersion' or 'n'"),
    ({"wavelengths_m": [1e-3]}, {"dispersion": "resin.csv"}, {}, "line 0.*outside"),
    (None, {"dispersion": "missing.csv"}, {}, "dispersion"),
])
def test_bad_source_tables_name_the_config(tmp_path, source, material, trainer, needle):
    from training.config import ConfigError, parse_config

    (tmp_path / "resin.csv").write_text("frequency_thz,n,kappa\n0.36,1.70,0.02\n0.44,1.75,0.05\n")
    with pytest.raises(ConfigError, match=needle) as e:
        parse_config(_doc(source, material, **trainer), str(tmp_path / "c.toml"))
    assert "c.toml" in str(e.value)


def test_a_dispersion_table_sets_the_design_material_at_the_design_wavelength(tmp_path):
    pytest.importorskip("torch")
    from training.config import parse_config
    from training.model import design_from_config

    (tmp_path / "resin.csv").write_text("frequency_thz,n,kappa\n0.36,1.70,0.02\n0.44,1.75,0.05\n")
    cfg = parse_config(_doc({"band_hz": [3.8e11, 4.2e11], "count": 3}, {"dispersion": "resin.csv"}),
                       str(tmp_path / "c.toml"))
    d = design_from_config(cfg)
    f0 = SPEED_OF_LIGHT_M_S / d.wavelength_m
    assert d.material.n == pytest.approx(1.70 + 0.05 * (f0 - 0.36e12) / 0.08e12, rel=1e-12)
    assert d.material.is_dispersive and len(d.lines) == 3


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16).astype(np.float32), d.target.astype(np.int64)
    return (x[:160], y[:160]), (x[160:240], y[160:240]), (x[1000:1200], y[1000:1200])


def test_objective_each_is_the_weighted_mean_of_each_lines_loss(tmp_path, digits):
    torch = pytest.importorskip("torch")
    from training.config import parse_config
    from training.model import detector_loss
    from training.trainer import Trainer

    cfg = parse_config(_doc({"wavelengths_m": [7.1e-4, 7.5e-4, 7.9e-4], "weights": [1, 2, 1], "sample": 2,
                             "objective": "each"}), "c.toml")
    t = Trainer(cfg, tmp_path / "run", data=digits, log=lambda *a: None)
    rule, vac = t.rule, t.rule.vaccination
    x, y = torch.from_numpy(digits[0][0][:8]), torch.from_numpy(digits[0][1][:8])
    with torch.no_grad():
        loss, _ = rule.loss(x, y)
        step = rule.scheduler.last_epoch
        idx, f = sample_lines(vac.design.lines, 2, np.random.default_rng([vac.seed, step, 1]))
        want = 0.0
        for j, fac in zip(idx, f):
            st = build(vac.design, None, wavelength_m=vac.design.lines.wavelengths_m[j])
            p = simulate_built(vac.design, x.numpy(), stack=st).powers
            l_j, _ = detector_loss(torch.from_numpy(p).float(), None, y, t.model.score_matrix, "cross_entropy",
                                   cfg.trainer.temperature)
            want += fac * vac.design.lines.weights[j] * float(l_j)
    assert float(loss) == pytest.approx(want, rel=1e-4)


def test_broadband_training_runs_and_reports_each_line(tmp_path, digits):
    pytest.importorskip("torch")
    from training.config import parse_config
    from training.trainer import Trainer

    cfg = parse_config(_doc({"band_hz": [3.9e11, 4.1e11], "count": 3, "sample": 2}), "c.toml")
    t = Trainer(cfg, tmp_path / "run", data=digits, log=lambda *a: None)
    t.run()
    m = t.finish()
    sp = m["spectrum"]
    assert len(sp["test_accuracy_per_line"]) == 3 and sp["objective"] == "band" and sp["sample"] == 2
    row = m["history"][-1]
    assert row["val_accuracy_lowest_line"] <= 1 and m["best_val_accuracy"] == max(r["val_accuracy"]
                                                                                  for r in m["history"])
    d = load_design(tmp_path / "run")
    assert d.spectrum == Spectrum.from_band(3.9e11, 4.1e11, 3)
    res = simulate(d, digits[2][0])  # the design's own accuracy is the band-summed one
    assert float(np.mean(res.predictions == digits[2][1])) == pytest.approx(sp["test_accuracy_band"], abs=1e-9)
    one = simulate_built(d, digits[2][0], spectrum=Spectrum.monochromatic(d.lines.wavelengths_m[0]))
    assert float(np.mean(one.predictions == digits[2][1])) == pytest.approx(sp["test_accuracy_per_line"][0],
                                                                            abs=1e-9)


def test_d2nn_simulate_sweeps_frequencies_and_draws_them(tmp_path, capsys):
    from d2nn import cli

    save_design(_design(n=40, input_size_yx_m=(8e-3, 8e-3), detector_size_m=1.2e-3, detector_spacing_m=3e-3),
                tmp_path / "d")
    fig = tmp_path / "sweep.png"
    rc = cli.main(["simulate", str(tmp_path / "d"), "--dataset", "digits", "--limit", "30",
                   "--frequencies", "0.38THz:0.42THz:3", "--figure", str(fig), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [round(r["frequency_thz"], 6) for r in out["sweep"]] == [0.38, 0.4, 0.42]
    assert out["min_accuracy"] == min(r["accuracy"] for r in out["sweep"]) and fig.stat().st_size > 1000
    assert cli.main(["simulate", str(tmp_path / "d"), "--dataset", "digits", "--figure", str(fig)]) == 2
    assert "give --frequencies too" in capsys.readouterr().err
    before = (tmp_path / "d" / "design.json").read_bytes()
    assert cli.main(["simulate", str(tmp_path / "d"), "--dataset", "digits", "--frequencies", "0.4THz",
                     "--figure", str(tmp_path / "d" / "design.json")]) == 2
    assert (tmp_path / "d" / "design.json").read_bytes() == before


def test_the_export_manifest_records_the_band_and_the_stl_round_trip_keeps_the_dispersion(tmp_path):
    pytest.importorskip("trimesh")
    from fabrication.export import export_design
    from fabrication.roundtrip import printed_from_stl

    s = Spectrum.from_band(0.38e12, 0.42e12, 3)
    d = _design(n=16, spectrum=s, material=_dispersive(), input_size_yx_m=(3.2e-3, 3.2e-3),
                detector_size_m=0.4e-3, detector_spacing_m=1.0e-3)
    export_design(d, tmp_path / "print")
    man = json.loads((tmp_path / "print" / "manifest.json").read_text())
    src = man["design"]["source"]
    assert src["frequencies_thz"] == pytest.approx([0.38, 0.40, 0.42]) and src["monochromatic"] is False
    assert man["material"]["dispersion"]["n"] == [1.70, 1.72, 1.75]
    printed, heights, _ = printed_from_stl(d, tmp_path / "print")
    assert printed.material.dispersion == d.material.dispersion and printed.spectrum == s


def test_d2nn_simulate_sweeps_the_stack_re_read_from_its_stl_files(tmp_path, capsys):
    pytest.importorskip("trimesh")
    from d2nn import cli

    save_design(_design(n=40, input_size_yx_m=(8e-3, 8e-3), detector_size_m=1.2e-3, detector_spacing_m=3e-3),
                tmp_path / "d")
    assert cli.main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "print")]) == 0
    capsys.readouterr()
    common = [str(tmp_path / "d"), "--dataset", "digits", "--limit", "30", "--from-stl", str(tmp_path / "print"),
              "--json"]
    assert cli.main(["simulate", *common]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli.main(["simulate", *common, "--frequencies", "0.38THz,0.4THz"]) == 0
    swept = json.loads(capsys.readouterr().out)
    assert swept["source"] == "stl" and len(swept["sweep"]) == 2
    # at the design frequency (0.4 THz) the sweep is the plain re-read simulation
    assert swept["sweep"][1]["correct"] == plain["correct"]


def test_d2nn_tolerance_sweeps_the_source_frequency_into_its_report(tmp_path, capsys):
    from d2nn import cli

    save_design(_design(n=40, input_size_yx_m=(8e-3, 8e-3), detector_size_m=1.2e-3, detector_spacing_m=3e-3),
                tmp_path / "d")
    rc = cli.main(["tolerance", str(tmp_path / "d"), "--dataset", "digits", "--samples", "20", "--draws", "1",
                   "--kinds", "none", "--frequencies", "0.39THz,0.4THz", "--report", str(tmp_path / "r"), "--quiet",
                   "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [round(r["frequency_thz"], 6) for r in doc["frequency_sweep"]] == [0.39, 0.4]
    assert doc["summary"]["frequency_sweep"][1]["accuracy"] == doc["frequency_sweep"][1]["accuracy"]
    assert (tmp_path / "r" / "frequency.png").stat().st_size > 1000
    assert "0.39 THz" in (tmp_path / "r" / "tolerance.md").read_text()


def test_a_spectrally_encoded_classifier_trains_with_one_detector_read_at_ten_lines(tmp_path, digits):
    pytest.importorskip("torch")
    from training.config import ConfigError, parse_config
    from training.trainer import Trainer

    src = {"band_hz": [3.6e11, 4.4e11], "count": 10}
    with pytest.raises(ConfigError, match="needs 10 lines"):
        parse_config({**_doc({"band_hz": [3.6e11, 4.4e11], "count": 3}), "detectors": {"layout": "spectral"}}, "c")
    with pytest.raises(ConfigError, match="objective"):
        parse_config({**_doc({**src, "objective": "each"}), "detectors": {"layout": "spectral"}}, "c")
    cfg = parse_config({**_doc(src), "detectors": {"layout": "spectral", "size_m": 1.6e-3}}, "c.toml")
    t = Trainer(cfg, tmp_path / "run", data=digits, log=lambda *a: None)
    t.run()
    m = t.finish()
    d = load_design(tmp_path / "run")
    assert [det.band for det in d.detectors] == list(range(10)) and {det.center_xy_m for det in d.detectors} == {(0, 0)}
    assert "test_accuracy_per_line" not in m["spectrum"]  # one line alone has no classes to compare
    res = simulate(d, digits[2][0])
    assert float(np.mean(res.predictions == digits[2][1])) == pytest.approx(m["test_accuracy"], abs=1e-9)


def test_a_drawn_stack_is_built_at_the_sampled_lines_only():
    pytest.importorskip("torch")
    from diffractive.budget import load_budget
    from training.robust import Vaccination

    d = _design(spectrum=Spectrum((0.71e-3, 0.75e-3, 0.79e-3, 0.83e-3), (1, 2, 3, 4)))
    v = Vaccination(d, load_budget("holder"), 1, 5, sample=2)
    only = sample_lines(d.lines, 2, np.random.default_rng([5, 7, 1]))
    a, b = v.step_lines(7), v.lines(7).subset(*only)
    assert len(a.stacks) == 2 and np.array_equal(a.weights, b.weights)
    assert np.array_equal(a.line_weights, b.line_weights)
    imgs = np.random.default_rng(8).random((3, 12, 12))
    for sa, sb in zip(a.stacks, b.stacks):
        assert sa.as_built == sb.as_built and sa.geometry == sb.geometry
        np.testing.assert_array_equal(simulate_built(d, imgs, stack=sa).powers, simulate_built(d, imgs, stack=sb).powers)


def test_jitter_covers_the_band_exactly_and_each_line_stays_in_its_share():
    from training.robust import jittered_frequencies

    s = Spectrum.from_band(3.8e11, 4.2e11, 5)
    rng = np.random.default_rng(0)
    f = np.array([jittered_frequencies(s, np.arange(5), rng) for _ in range(2000)])
    assert f.min() >= 3.8e11 and f.max() <= 4.2e11
    np.testing.assert_allclose(f.min(0), [3.8e11, 3.85e11, 3.95e11, 4.05e11, 4.15e11], atol=2e8)
    np.testing.assert_allclose(f.max(0), [3.85e11, 3.95e11, 4.05e11, 4.15e11, 4.2e11], atol=2e8)
    pytest.importorskip("torch")
    from training.robust import Vaccination

    d = _design(spectrum=s)
    v = Vaccination(d, None, sample=2, jitter=True, seed=3)
    a, b = v.step_lines(4), v.step_lines(5)
    assert len(a.stacks) == 2 and a.stacks[0].geometry.wavelength_m not in s.wavelengths_m
    assert a.stacks[0].geometry.wavelength_m != b.stacks[0].geometry.wavelength_m
    assert v.step_lines(4).stacks[1].geometry.wavelength_m == a.stacks[1].geometry.wavelength_m  # by step only

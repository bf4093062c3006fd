"""Every solver against an exact denoiser, plus determinism, the a = 0 first step, evaluation counts, the configs
and a tiny sampling run per sampler.

Data drawn from N(mu, s^2) per dimension has the exact x0 denoiser in closed form: for x_t = a x0 + sqrt(1 - a^2)
eps, E[x0 | x_t] = mu + a s^2 (x_t - a mu) / (a^2 s^2 + 1 - a^2). So the samples' moments show a solver's own error,
apart from any network's.
"""

import math

import pytest
import torch

import cogvid
from cogvid.config.compose import conf_dir
from cogvid.config.schema import Solver
from cogvid.diffusion.sampling import sample_latents, sampling_plan
from cogvid.diffusion.schedules import sampling_schedule
from cogvid.diffusion.solvers import (
    SOLVERS,
    lms_coefficients,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp2m_edm,
    sample_dpmpp2m_ode,
    sample_euler,
    sample_euler_ancestral,
)

TORCH_THREADS = 1

SAMPLERS = sorted(p.stem for p in (conf_dir() / "sampler").glob("*.yaml"))
PRESETS = {"fast"}  # a solver with other settings (conf/sampler/fast.yaml), not a solver of its own
STOCHASTIC = {"dpmpp2m_sde", "ddpm", "euler_ancestral", "dpmpp2s_ancestral"}

# The data: 8 dimensions, each its own N(mu, s^2); N samples of each.
N = 16384
MU = torch.linspace(-1.5, 1.5, 8)
S = torch.linspace(0.3, 1.5, 8)

# Tolerances, the worst of the 8 dimensions, on the real 50-step schedule (shift 3, subset rescale), seed 0.
# The standard error of a mean is s / sqrt(N) = 0.008 s, of a std ratio 1 / sqrt(2N) = 0.006. Measured values:
# from a = 0, then from the schedule without its a = 0 entry.
MEAN_TOL = 0.03  # |mean - mu| / s; measured <= 0.016 for every solver
STD_TOL = {  # |std / target - 1|
    "ddpm": 0.12,  # 0.080, 0.090: first order, stochastic (each step drops Var[x0 | x_t] from its variance)
    "euler_ancestral": 0.12,  # 0.080, 0.090: the same step in sigma
    "ddim": 0.06,  # 0.037, 0.040: first order, deterministic (0.035 exactly; the rest is sampling noise)
    "euler": 0.06,  # 0.037, 0.040: the same step in sigma
    "dpmpp2m_sde": 0.04,  # 0.020, 0.024
    "dpmpp2m_ode": 0.04,  # 0.011, 0.018
    "dpmpp2m_edm": 0.04,  # 0.011, 0.018
    "heun": 0.04,  # 0.011, 0.017
    "dpmpp2s_ancestral": 0.04,  # 0.011, 0.016
    "lms": 0.04,  # 0.013, 0.015
}


def exact_denoiser(alphas: torch.Tensor):
    """denoise(x, i) = E[x0 | x_t] at a = alphas[i] for the Gaussian data."""

    def denoise(x, i):
        a = alphas[i]
        return MU + a * S**2 * (x - a * MU) / (a**2 * S**2 + 1 - a**2)

    return denoise


def target_std(solver: str, alphas: torch.Tensor) -> torch.Tensor:
    """The std a perfect solver's result has. All but LMS end, as SAT's video solvers do, on the x0 estimate at
    the last timestep (a = alphas[-2], t = 19): a posterior mean, whose std is a s^2 / sqrt(a^2 s^2 + 1 - a^2),
    not s (0.79 s for s = 0.3). LMS integrates on to sigma = 0 and has s itself."""
    if solver == "lms":
        return S
    a = alphas[-2]
    return a * S**2 / (a**2 * S**2 + 1 - a**2) ** 0.5


def fifty_steps() -> torch.Tensor:
    cfg = cogvid.compose(["model=tiny"])
    assert cfg.sampler.num_steps == 50
    return sampling_plan(cfg.sampler, cfg.model.shift_scale).schedule.alphas


def run(solver, denoise, alphas, seed=0, x=None, zero_noise=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 8, generator=g) if x is None else x
    noise = (lambda: torch.zeros(N, 8)) if zero_noise else (lambda: torch.randn(N, 8, generator=g))
    return solver(denoise, x, alphas, noise)


def moment_errors(name: str, out: torch.Tensor, alphas: torch.Tensor) -> tuple[float, float]:
    """(max |mean - mu| / s, max |std / target - 1|) over the dimensions."""
    mean_err = ((out.mean(0) - MU) / S).abs().max().item()
    std_err = (out.std(0) / target_std(name, alphas) - 1).abs().max().item()
    return mean_err, std_err


def moments_match(name: str, out: torch.Tensor, alphas: torch.Tensor) -> bool:
    mean_err, std_err = moment_errors(name, out, alphas)
    return bool(torch.isfinite(out).all()) and mean_err < MEAN_TOL and std_err < STD_TOL[name]


@pytest.fixture(scope="module")
def alphas() -> torch.Tensor:
    return fifty_steps()


# ------------------------------------------------------------------------------------------------------------
# Moments


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solver_samples_the_gaussian_with_the_exact_denoiser(name, alphas):
    out = run(SOLVERS[name], exact_denoiser(alphas), alphas)
    assert torch.isfinite(out).all()
    mean_err, std_err = moment_errors(name, out, alphas)
    assert mean_err < MEAN_TOL, (name, mean_err)
    assert std_err < STD_TOL[name], (name, std_err)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_schedule_starting_above_zero_takes_the_ordinary_first_step(name, alphas):
    # Without the a = 0 entry, x starts as x_t at a0 = alphas[1] exactly: N(a0 mu, a0^2 s^2 + 1 - a0^2)
    later = alphas[1:]
    a0 = later[0]
    z = torch.randn(N, 8, generator=torch.Generator().manual_seed(1))
    x = a0 * MU + (a0**2 * S**2 + 1 - a0**2) ** 0.5 * z
    out = run(SOLVERS[name], exact_denoiser(later), later, seed=2, x=x)  # the solver's noise: another stream
    assert moments_match(name, out, later), (name, moment_errors(name, out, later))


def test_the_moment_check_fails_broken_solvers(alphas):
    # Proof that the check above can fail. The ancestral solvers without their noise collapse onto the mean
    # (std error 1.0); a denoiser told the neighbouring step's alpha (an off-by-one) gives a std error of at
    # least 0.35 and a mean error of at least 0.07 s, for every solver.
    denoise = exact_denoiser(alphas)
    for name in sorted(STOCHASTIC):
        assert not moments_match(name, run(SOLVERS[name], denoise, alphas, zero_noise=True), alphas), name
    ahead = exact_denoiser(torch.cat([alphas[1:], alphas[-1:]]))
    behind = exact_denoiser(torch.cat([alphas[:1], alphas[:-1]]))
    for name, solver in sorted(SOLVERS.items()):
        for wrong in (ahead, behind):
            assert not moments_match(name, run(solver, wrong, alphas), alphas), name


# ------------------------------------------------------------------------------------------------------------
# Determinism, the first step, evaluation counts


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_same_seed_same_result_and_the_stochastic_ones_use_their_noise(name):
    alphas = sampling_schedule(10, 3.0).alphas
    denoise = exact_denoiser(alphas)
    first, second = run(SOLVERS[name], denoise, alphas), run(SOLVERS[name], denoise, alphas)
    assert torch.equal(first, second)
    x = torch.randn(N, 8, generator=torch.Generator().manual_seed(0))
    other_noise = run(SOLVERS[name], denoise, alphas, seed=5, x=x)
    assert torch.equal(first, other_noise) == (name not in STOCHASTIC)


class Recorder:
    """A denoiser that answers a fixed x0 and records its inputs, and a noise source that records its draws."""

    def __init__(self, x0: torch.Tensor):
        self.x0, self.inputs, self.steps, self.draws = x0, [], [], []

    def denoise(self, x, i):
        self.inputs.append(x.clone())
        self.steps.append(i)
        return self.x0

    def noise(self):
        self.draws.append(torch.randn(self.x0.shape))
        return self.draws[-1]


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_the_first_step_from_alpha_zero_is_a_pure_x0_prediction_without_nan(name):
    alphas = sampling_schedule(5, 3.0).alphas
    assert alphas[0] == 0
    x = torch.randn(2, 8)
    rec = Recorder(torch.randn(2, 8))
    out = SOLVERS[name](rec.denoise, x, alphas, rec.noise)
    assert all(torch.isfinite(v).all() for v in rec.inputs) and torch.isfinite(out).all()
    # the network's second input: a1 x0 + sqrt(1 - a1^2) e, e the starting noise itself for the deterministic
    # solvers, the first fresh draw for the stochastic ones
    a1 = alphas[1]
    e = rec.draws[0] if name in STOCHASTIC else x
    assert rec.steps[:2] == [0, 1]
    torch.testing.assert_close(rec.inputs[1], a1 * rec.x0 + (1 - a1**2) ** 0.5 * e, rtol=1e-5, atol=1e-5)
    # a denoiser that always knows x0: every solver lands on it
    torch.testing.assert_close(out, rec.x0, rtol=1e-5, atol=1e-5)


# network evaluations per step: the first (a = 0) and last (a_next = 1) steps of Heun and DPM++(2S) take one
NFE = {"heun": lambda n: 2 * n - 2, "dpmpp2s_ancestral": lambda n: 2 * n - 2}
# noise draws: dpmpp2m_sde is SAT's 2n - 3 (tests/test_diffusion.py); the others 1 per step but the last
DRAWS = {"dpmpp2m_sde": lambda n: 2 * n - 3, "ddpm": lambda n: n - 1}
DRAWS |= {"euler_ancestral": DRAWS["ddpm"], "dpmpp2s_ancestral": DRAWS["ddpm"]}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_network_evaluations_and_noise_draws_per_run(name):
    n = 6
    rec = Recorder(torch.zeros(1, 4))
    SOLVERS[name](rec.denoise, torch.randn(1, 4), sampling_schedule(n, 3.0).alphas, rec.noise)
    assert len(rec.inputs) == NFE.get(name, lambda n: n)(n)
    assert len(rec.draws) == DRAWS.get(name, lambda n: 0)(n)
    assert max(rec.steps) == n - 1  # never a step beyond the schedule


def test_edm_forms_equal_their_vp_twins():
    # Euler in sigma is DDIM, DPMPP2M in log-sigma is the VP-ODE DPM++(2M), Euler ancestral (eta = 1) is the DDPM
    # posterior step: the same numbers up to float32 rounding, for the same noise.
    alphas = sampling_schedule(50, 3.0).alphas
    denoise = exact_denoiser(alphas)
    pairs = [
        (sample_euler, sample_ddim),
        (sample_dpmpp2m_edm, sample_dpmpp2m_ode),
        (sample_euler_ancestral, sample_ddpm),
    ]
    for edm, vp in pairs:
        torch.testing.assert_close(run(edm, denoise, alphas), run(vp, denoise, alphas), rtol=0, atol=1e-4)


def test_lms_coefficients_integrate_polynomials_exactly():
    nodes = [3.0, 2.0, 1.2, 0.7]
    coeffs = lms_coefficients(nodes, 0.7, 0.3)
    cubic = lambda s: 2 * s**3 - s + 0.5  # noqa: E731

    def antiderivative(s):
        return s**4 / 2 - s**2 / 2 + 0.5 * s

    assert sum(c * cubic(s) for c, s in zip(coeffs, nodes, strict=True)) == pytest.approx(
        antiderivative(0.3) - antiderivative(0.7), rel=1e-12
    )
    assert lms_coefficients([0.7], 0.7, 0.3) == pytest.approx([-0.4])  # order 1: Euler
    assert math.isclose(sum(lms_coefficients(nodes[1:], 0.7, 0.3)), -0.4)


# ------------------------------------------------------------------------------------------------------------
# Configs and a tiny end-to-end run


def test_every_solver_has_a_config_and_every_config_a_solver():
    names = [name for name in SAMPLERS if name not in PRESETS]
    solvers = {cogvid.compose([f"sampler={name}"]).sampler.solver for name in names}
    assert {Solver(s).value for s in solvers} == set(SOLVERS) == {s.value for s in Solver}
    assert len(names) == len(SOLVERS)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_config_composes_and_samples_the_tiny_model(name):
    cfg = cogvid.compose(["model=tiny", f"sampler={name}", "sampler.num_steps=3"])
    plan = sampling_plan(cfg.sampler, cfg.model.shift_scale)
    assert plan.solver is SOLVERS[Solver(cfg.sampler.solver).value] and plan.schedule.num_steps == 3
    model = cogvid.build_model(cfg)
    cond = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return sample_latents(model, cfg.sampler, cond, shape=(3, 16, 6, 8), generator=g)

    latents = sample(3)
    assert latents.shape == (1, 3, 16, 6, 8) and torch.isfinite(latents).all()
    assert torch.equal(latents, sample(3))

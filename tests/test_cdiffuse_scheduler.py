"""CDiffuSEScheduler as a diffusers scheduler: built from a training scheduler, saved and loaded, its steps
the closed form of reverse_schedule's coefficients, no host synchronisation when the loop has checked the
prior, and errors that name the argument."""

import math

import numpy as np
import pytest
import torch

from restoregrad_adapter import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6, LearnedPriorScheduler
from restoregrad_adapter.integrations.cdiffuse import (
    CDiffuSEScheduler,
    cdiffuse_scheduler,
    reverse_schedule,
    training_betas,
)

#: The ways a tensor's value reaches Python: on an accelerator, each one waits for the device.
HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero")


def host_reads(call):
    """``(number of host reads of tensor values during call(), its result)``."""
    reads = []
    with pytest.MonkeyPatch.context() as patch:
        for name in HOST_READS:
            def counted(self, *args, _original=getattr(torch.Tensor, name), _name=name, **kwargs):
                reads.append(_name)
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        result = call()
    return len(reads), result


TRAINING_SCHEDULERS = {
    "cdiffuse": cdiffuse_scheduler,
    "x0": lambda: LearnedPriorScheduler.from_config(cdiffuse_scheduler().config, prediction_type="sample"),
    "v": lambda: LearnedPriorScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.05,
                                       prediction_type="v_prediction"),
    "trained_betas": lambda: LearnedPriorScheduler(num_train_timesteps=50,
                                                   trained_betas=np.linspace(1e-4, 0.035, 50).tolist()),
    "scaled_linear": lambda: LearnedPriorScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.035,
                                                   beta_schedule="scaled_linear"),
}

SAMPLING_OPTIONS = [dict(), dict(initial="noisy", clamp=True, mix_noisy=0.2), dict(mix_noisy=1), dict(clamp=True)]


def chain(scheduler, inference_betas, seed=0, shape=(2, 1, 64), dtype=torch.float32, validate_args=True):
    """Run a whole reverse chain with a fixed stand-in for the network; every step's sample."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=dtype)
    sigma = (torch.rand(shape, generator=g) + 0.2).to(dtype)
    if inference_betas is None:
        scheduler.set_timesteps(len(scheduler.training_betas))
    else:
        scheduler.set_timesteps(inference_betas=inference_betas)
    x = scheduler.sample_prior(sigma, generator=g, condition=y, validate_args=validate_args)
    samples = [x]
    for t in scheduler.timesteps:
        output = torch.tanh(x + 0.1 * t.item())
        x = scheduler.step(output, t, x, sigma, condition=y, generator=g, validate_args=validate_args).prev_sample
        samples.append(x)
    return samples


# ---------------------------------------------------------------------- construction, saving and loading
@pytest.mark.parametrize("name", list(TRAINING_SCHEDULERS))
def test_from_training_scheduler_reproduces_the_training_schedule(name):
    training = TRAINING_SCHEDULERS[name]()
    scheduler = CDiffuSEScheduler.from_training_scheduler(training, initial="noisy", clamp=True, mix_noisy=0.2)
    assert torch.equal(scheduler.alphas_cumprod, training.alphas_cumprod)
    assert scheduler.alphas_cumprod.dtype == training.alphas_cumprod.dtype
    assert torch.equal(scheduler.training_betas, training_betas(training))
    assert scheduler.training_betas.dtype == torch.float64
    assert scheduler.config.prediction_type == training.config.prediction_type
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "rescale_betas_zero_snr"):
        assert scheduler.config[key] == training.config[key], key
    assert (scheduler.config.initial, scheduler.config.clamp, scheduler.config.mix_noisy) == ("noisy", True, 0.2)
    assert scheduler.needs_condition and scheduler.order == 1


def test_cdiffuse_training_schedule_is_linear_in_float64():
    scheduler = CDiffuSEScheduler.from_training_scheduler(cdiffuse_scheduler())
    assert torch.equal(scheduler.training_betas, torch.from_numpy(np.linspace(1e-4, 0.035, 50)))


@pytest.mark.parametrize("options", SAMPLING_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("name", ["cdiffuse", "x0", "trained_betas"])
def test_save_pretrained_and_from_pretrained_round_trip(tmp_path, name, options):
    scheduler = CDiffuSEScheduler.from_training_scheduler(TRAINING_SCHEDULERS[name](), **options)
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = CDiffuSEScheduler.from_pretrained(tmp_path)
    assert type(loaded) is CDiffuSEScheduler and loaded.config["_class_name"] == "CDiffuSEScheduler"
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert torch.equal(loaded.alphas_cumprod, scheduler.alphas_cumprod)
    assert torch.equal(loaded.training_betas, scheduler.training_betas)
    for betas in (FAST_INFERENCE_BETAS_6, None):
        for a, b in zip(chain(scheduler, betas), chain(loaded, betas)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("options", SAMPLING_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_from_config_round_trips(options):
    scheduler = CDiffuSEScheduler.from_training_scheduler(TRAINING_SCHEDULERS["v"](), **options)
    again = CDiffuSEScheduler.from_config(scheduler.config)
    assert dict(again.config) == dict(scheduler.config)
    assert torch.equal(again.alphas_cumprod, scheduler.alphas_cumprod)
    for a, b in zip(chain(scheduler, FAST_INFERENCE_BETAS_3), chain(again, FAST_INFERENCE_BETAS_3)):
        assert torch.equal(a, b)
    # A sampling option changed on the way, as diffusers' from_config allows.
    noisy = CDiffuSEScheduler.from_config(scheduler.config, initial="noisy")
    assert noisy.config.initial == "noisy" and noisy.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("training", [cdiffuse_scheduler, LearnedPriorScheduler], ids=["cdiffuse", "defaults"])
def test_a_training_schedulers_config_loads_as_from_training_scheduler(training):
    """The training-schedule arguments have DDPMScheduler's defaults, so a configuration that relied on them
    (diffusers leaves such keys out of from_config) still gives the same schedule."""
    training = training()
    loaded = CDiffuSEScheduler.from_config(training.config)
    built = CDiffuSEScheduler.from_training_scheduler(training)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(built.config)
    assert torch.equal(loaded.alphas_cumprod, training.alphas_cumprod)


# ---------------------------------------------------------------------- the step's numbers
@pytest.mark.parametrize("betas", [FAST_INFERENCE_BETAS_6, FAST_INFERENCE_BETAS_3, None], ids=["fast6", "fast3", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", SAMPLING_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_steps_are_the_reverse_schedules_closed_form(betas, dtype, options):
    """x_N = sqrt(abar_N) y + sqrt(delta_N) sigma z (or y), then x_{t-1} = c1 x_t + c2 y - c3 C_hat +
    sqrt(delta_bar) sigma z, the last step blended and every step clipped as asked: the same operations
    on the same numbers, so bit for bit."""
    scheduler = CDiffuSEScheduler.from_training_scheduler(cdiffuse_scheduler(), **options)
    samples = chain(scheduler, betas, seed=4, dtype=dtype)
    schedule = reverse_schedule(np.linspace(1e-4, 0.035, 50), betas)
    g = torch.Generator().manual_seed(4)
    y = torch.randn(2, 1, 64, generator=g, dtype=dtype)
    sigma = (torch.rand(2, 1, 64, generator=g) + 0.2).to(dtype)
    if options.get("initial") == "noisy":
        x = y.clone()
    else:
        z = torch.randn(y.shape, generator=g, dtype=dtype)
        x = schedule.alphas_cumprod[-1].sqrt().item() * y + schedule.delta[-1].sqrt().item() * (sigma * z)
    assert torch.equal(samples[0], x)
    mix = float(options.get("mix_noisy", 0.0))
    for i, t in enumerate(schedule.timesteps.flip(0)):
        n = len(schedule) - 1 - i
        output = torch.tanh(x + 0.1 * t.item())
        x = schedule.c1[n].item() * x + schedule.c2[n].item() * y - schedule.c3[n].item() * output
        if n > 0:
            x = x + schedule.delta_bar[n].sqrt().item() * (sigma * torch.randn(y.shape, generator=g, dtype=dtype))
        elif mix:
            x = (1 - mix) * x + mix * y
        if options.get("clamp"):
            x = x.clamp(-1.0, 1.0)
        assert samples[i + 1].dtype == dtype
        assert torch.equal(samples[i + 1], x), n


def test_return_dict_false_gives_the_sample_alone():
    scheduler = CDiffuSEScheduler.from_training_scheduler(cdiffuse_scheduler())
    scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_3)
    y, sigma = torch.randn(1, 1, 16), torch.ones(1, 1, 16)
    x = scheduler.sample_prior(sigma, generator=torch.manual_seed(0), condition=y)
    as_tuple = scheduler.step(x, scheduler.timesteps[0], x, sigma, condition=y, generator=torch.manual_seed(1),
                              return_dict=False)
    scheduler.sample_prior(sigma, generator=torch.manual_seed(0), condition=y)
    as_dict = scheduler.step(x, scheduler.timesteps[0], x, sigma, condition=y, generator=torch.manual_seed(1))
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], as_dict.prev_sample)


# ---------------------------------------------------------------------- host synchronisations
@pytest.mark.parametrize("initial", ["prior", "noisy"])
def test_validate_args_false_makes_no_host_synchronisation(initial):
    """The restoration loop checks the prior once and passes validate_args=False: the chain then makes no host
    synchronisation at all; each checked call makes one."""
    unchecked, checked = (CDiffuSEScheduler.from_training_scheduler(cdiffuse_scheduler(), initial=initial)
                          for _ in range(2))
    for scheduler in (unchecked, checked):
        scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_6)
    y, sigma = torch.randn(2, 1, 32), torch.rand(2, 1, 32) + 0.1

    def run(scheduler, validate_args):
        g = torch.Generator().manual_seed(0)
        x = scheduler.sample_prior(sigma, generator=g, condition=y, validate_args=validate_args)
        for t in scheduler.timesteps:
            x = scheduler.step(torch.tanh(x), t, x, sigma, condition=y, generator=g,
                               validate_args=validate_args).prev_sample
        return x

    reads, a = host_reads(lambda: run(unchecked, False))
    assert reads == 0
    reads, b = host_reads(lambda: run(checked, True))
    assert reads == 1 + len(checked.timesteps)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(initial="zeros"), "`initial` must be one of"),
    (dict(clamp="yes"), "`clamp` must be"),
    (dict(mix_noisy=1.5), "`mix_noisy` must be a finite number"),
    (dict(mix_noisy=True), "`mix_noisy`"),
    (dict(mix_noisy=math.nan), "`mix_noisy`"),
])
def test_bad_sampling_options_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CDiffuSEScheduler.from_training_scheduler(cdiffuse_scheduler(), **kwargs)
    with pytest.raises(ValueError, match=message):
        CDiffuSEScheduler(**kwargs)


def test_bad_training_schedulers_are_refused():
    with pytest.raises(ValueError, match="training_scheduler"):
        CDiffuSEScheduler.from_training_scheduler(object())
    changed = cdiffuse_scheduler()
    changed.alphas_cumprod = changed.alphas_cumprod * 0.99
    with pytest.raises(ValueError, match="training_scheduler"):
        CDiffuSEScheduler.from_training_scheduler(changed)
    with pytest.raises(ValueError, match="prediction_type"):
        CDiffuSEScheduler(prediction_type="x0")
    with pytest.raises(ValueError, match="trained_betas"):
        CDiffuSEScheduler(num_train_timesteps=2, trained_betas=[0.1, 1.5])


def test_bad_sampling_calls_are_refused_by_name():
    scheduler = CDiffuSEScheduler.from_training_scheduler(cdiffuse_scheduler())
    y, sigma = torch.randn(1, 1, 16), torch.ones(1, 1, 16)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.sample_prior(sigma, condition=y)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="only one of"):
        scheduler.set_timesteps(50, inference_betas=FAST_INFERENCE_BETAS_3)
    scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_3)
    with pytest.raises(ValueError, match="condition=y"):
        scheduler.sample_prior(sigma)
    for bad, message in ((torch.zeros_like(sigma), "must be > 0"), (torch.full_like(sigma, math.nan), "non-finite"),
                         (torch.ones(1, 1, 8), "does not broadcast"), (torch.ones(1, 1, 16).long(), "floating")):
        with pytest.raises(ValueError, match=f"prior_std.*{message}"):
            scheduler.sample_prior(bad, condition=y)
    x = scheduler.sample_prior(sigma, condition=y)
    t = scheduler.timesteps[0]
    with pytest.raises(ValueError, match="condition=y"):
        scheduler.step(x, t, x, sigma)
    with pytest.raises(ValueError, match="`condition`"):
        scheduler.step(x, t, x, sigma, condition=y[..., :8])
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(x[..., :8], t, x, sigma, condition=y)
    with pytest.raises(ValueError, match="prior_std.*must be > 0"):
        scheduler.step(x, t, x, torch.zeros_like(sigma), condition=y)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x, sigma, condition=y).prev_sample
    with pytest.raises(ValueError, match="steps of the chain"):
        scheduler.step(x, t, x, sigma, condition=y)

"""LearnedPriorScheduler: the checks of diffusers' own scheduler tests, equality with DDPMScheduler
when no prior is given, Algorithm 2 in closed form with one, fast sampling, and whitening."""

import inspect
import io
import logging
import math
import re
import textwrap
import tokenize
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging as diffusers_logging

import restoregrad_adapter.scheduler as scheduler_module
from restoregrad_adapter import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6, LearnedPriorScheduler
from restoregrad_adapter.scheduler import (fractional_timesteps, scale_model_input_whitened, whitened_initial_sample,
                                           whitened_step)

# ---------------------------------------------------------------------------- fixtures

#: The diffusers checks below are transcribed from diffusers' tests/schedulers/test_schedulers.py
#: (SchedulerCommonTest) and tests/schedulers/test_scheduler_ddpm.py (DDPMSchedulerTest), and run on
#: DDPMScheduler too: the reference class passing them shows that the transcription is faithful.
SCHEDULER_CLASSES = pytest.mark.parametrize("scheduler_class", [LearnedPriorScheduler, DDPMScheduler],
                                            ids=lambda c: c.__name__)
DEFAULT_NUM_INFERENCE_STEPS = 50  # SchedulerCommonTest.default_num_inference_steps


def ddpm_test_config(**overrides):
    """The configuration diffusers' DDPMSchedulerTest uses (note clip_sample=True)."""
    config = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                  variance_type="fixed_small", clip_sample=True)
    config.update(overrides)
    return config


def default_timesteps(scheduler_class):
    """SchedulerCommonTest.default_timestep and default_timestep_2: the first two of a 50-step chain."""
    scheduler = scheduler_class(**ddpm_test_config())
    scheduler.set_timesteps(DEFAULT_NUM_INFERENCE_STEPS)
    return scheduler.timesteps[0], scheduler.timesteps[1]


def random_sample():
    return torch.rand((4, 3, 8, 8))


def deterministic_sample():
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def deterministic_noise():
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def dummy_model(sample, t):
    if isinstance(t, torch.Tensor):  # as diffusers' dummy model: t broadcast over the sample
        t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device, dtype=sample.dtype)
    return sample * t / (t + 1)


@contextmanager
def captured_log(name):
    """What a diffusers logger writes (diffusers' CaptureLogger)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = diffusers_logging.get_logger(name)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def step_after_save_load(tmp_path, scheduler_class=LearnedPriorScheduler, time_step=0, num_inference_steps=None,
                         **config):
    """check_over_configs / check_over_forward: a scheduler and its save_config/from_pretrained copy
    step with the same seed to the same output."""
    scheduler = scheduler_class(**ddpm_test_config(**config))
    sample = random_sample()
    residual = 0.1 * sample
    scheduler.save_config(tmp_path)
    loaded = scheduler_class.from_pretrained(tmp_path)
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
        loaded.set_timesteps(num_inference_steps)
    scheduler.scale_model_input(sample, scheduler.timesteps[-1])
    loaded.scale_model_input(sample, scheduler.timesteps[-1])
    out = scheduler.step(residual, time_step, sample, generator=torch.manual_seed(0)).prev_sample
    new = loaded.step(residual, time_step, sample, generator=torch.manual_seed(0)).prev_sample
    assert torch.sum(torch.abs(out - new)) < 1e-5


# ---------------------------------------------------------------------------- SchedulerCommonTest checks
# check_over_configs, as DDPMSchedulerTest calls it: test_timesteps, test_betas, test_schedules,
# test_variance_type (with "other", which DDPMScheduler falls through), test_clip_sample,
# test_thresholding, test_prediction_type, test_rescale_betas_zero_snr.


@SCHEDULER_CLASSES
@pytest.mark.parametrize("config", [
    *[dict(num_train_timesteps=n) for n in (1, 5, 100, 1000)],
    # diffusers' grid ends at beta_end = 2, whose linear betas exceed 1: refused here (tests/test_bad_inputs.py).
    *[dict(beta_start=s, beta_end=e) for s, e in zip([1e-4, 1e-3, 1e-2, 0.1], [0.002, 0.02, 0.2, 0.5])],
    *[dict(beta_schedule=s) for s in ("linear", "squaredcos_cap_v2", "scaled_linear", "sigmoid")],
    *[dict(variance_type=v) for v in ("fixed_small", "fixed_large", "other", "fixed_small_log", "fixed_large_log")],
    *[dict(clip_sample=c) for c in (True, False)],
    dict(thresholding=False),
    *[dict(thresholding=True, prediction_type=p, sample_max_value=m)
      for m in (0.5, 1.0, 2.0) for p in ("epsilon", "sample", "v_prediction")],
    *[dict(prediction_type=p) for p in ("epsilon", "sample", "v_prediction")],
    *[dict(rescale_betas_zero_snr=r) for r in (True, False)],
])
def test_save_load_same_step_over_configs(tmp_path, scheduler_class, config):
    step_after_save_load(tmp_path, scheduler_class, **config)


@SCHEDULER_CLASSES
@pytest.mark.parametrize("t", [0, 500, 999])
def test_save_load_same_step_over_time_indices(tmp_path, scheduler_class, t):
    """DDPMSchedulerTest.test_time_indices (check_over_forward)."""
    step_after_save_load(tmp_path, scheduler_class, time_step=t)


@SCHEDULER_CLASSES
def test_from_save_pretrained(tmp_path, scheduler_class):
    """SchedulerCommonTest.test_from_save_pretrained: a 50-step chain, stepped at its first timestep."""
    step_after_save_load(tmp_path, scheduler_class, time_step=default_timesteps(scheduler_class)[0],
                         num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS)


@SCHEDULER_CLASSES
def test_from_pretrained(tmp_path, scheduler_class):
    """SchedulerCommonTest.test_from_pretrained: the whole config round-trips, less `_use_default_values`."""
    scheduler = scheduler_class(**ddpm_test_config())
    scheduler.save_pretrained(tmp_path)
    loaded = scheduler_class.from_pretrained(tmp_path)
    config = dict(scheduler.config)
    del config["_use_default_values"]
    assert config == loaded.config


def test_from_pretrained_round_trips_config_as_scheduler_config_json(tmp_path):
    scheduler = LearnedPriorScheduler(**ddpm_test_config())
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = LearnedPriorScheduler.from_pretrained(tmp_path)
    # diffusers records which values were defaults in a private `_use_default_values` key of the
    # *original* config only (DDPMScheduler does the same); every public key must round-trip.
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert loaded.config["_class_name"] == "LearnedPriorScheduler"
    assert type(loaded) is LearnedPriorScheduler


@SCHEDULER_CLASSES
def test_compatibles(scheduler_class):
    scheduler = scheduler_class(**ddpm_test_config())
    assert len(scheduler.compatibles) > 0 and all(c is not None for c in scheduler.compatibles)
    for compatible in scheduler.compatibles:
        other = compatible.from_config(scheduler.config)
        assert other is not None
        back = scheduler_class.from_config(other.config)
        same_keys = {k: v for k, v in back.config.items() if k in scheduler.config}
        assert same_keys == dict(scheduler.config)
        extra = {k for k in back.config if k not in scheduler.config}
        init_keys = inspect.signature(scheduler_class.__init__).parameters.keys()
        assert extra.intersection(init_keys) == set()


def test_config_mirrors_ddpm_scheduler():
    # A diffusers scheduler of its own (no DDPMScheduler subclass) with DDPMScheduler's configuration.
    assert issubclass(LearnedPriorScheduler, SchedulerMixin) and issubclass(LearnedPriorScheduler, ConfigMixin)
    assert not issubclass(LearnedPriorScheduler, DDPMScheduler)
    assert LearnedPriorScheduler._compatibles == DDPMScheduler._compatibles
    assert LearnedPriorScheduler.order == DDPMScheduler.order == 1
    ours = inspect.signature(LearnedPriorScheduler.__init__).parameters
    theirs = inspect.signature(DDPMScheduler.__init__).parameters
    assert list(ours) == list(theirs)
    for name in theirs:
        if name not in ("self", "clip_sample"):
            assert ours[name].default == theirs[name].default, name
    assert ours["clip_sample"].default is False
    assert LearnedPriorScheduler().config.clip_sample is False
    # A DDPM config loads into ours and back without loss.
    ddpm = DDPMScheduler(**ddpm_test_config())
    ours_from_ddpm = LearnedPriorScheduler.from_config(ddpm.config)
    for key, value in ddpm.config.items():
        if not key.startswith("_"):
            assert ours_from_ddpm.config[key] == value, key


@SCHEDULER_CLASSES
def test_step_shape(scheduler_class):
    scheduler = scheduler_class(**ddpm_test_config())
    sample = random_sample()
    out0 = scheduler.step(0.1 * sample, 0, sample).prev_sample
    out1 = scheduler.step(0.1 * sample, 1, sample).prev_sample
    assert out0.shape == sample.shape == out1.shape
    # SchedulerCommonTest.test_step_shape today: the first two timesteps of a 50-step chain.
    t0, t1 = default_timesteps(scheduler_class)
    scheduler.set_timesteps(DEFAULT_NUM_INFERENCE_STEPS)
    out0 = scheduler.step(0.1 * sample, t0, sample).prev_sample
    out1 = scheduler.step(0.1 * sample, t1, sample).prev_sample
    assert out0.shape == sample.shape == out1.shape


@SCHEDULER_CLASSES
@pytest.mark.parametrize("first", [False, True], ids=["t=0", "default_timestep"])
def test_tuple_and_dict_outputs_are_equal(scheduler_class, first):
    """SchedulerCommonTest.test_scheduler_outputs_equivalence (stricter: no NaN is accepted either)."""
    scheduler = scheduler_class(**ddpm_test_config())
    timestep = default_timesteps(scheduler_class)[0] if first else 0
    scheduler.set_timesteps(50)
    sample = random_sample()
    as_dict = scheduler.step(0.1 * sample, timestep, sample, generator=torch.manual_seed(0))
    scheduler.set_timesteps(50)
    as_tuple = scheduler.step(0.1 * sample, timestep, sample, generator=torch.manual_seed(0), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    for a, b in zip(as_tuple, as_dict.values()):
        assert torch.allclose(a, b, atol=1e-5)


@SCHEDULER_CLASSES
@pytest.mark.parametrize("num_inference_steps", [DEFAULT_NUM_INFERENCE_STEPS, 100])
def test_public_api_and_add_noise_shapes(scheduler_class, num_inference_steps):
    """SchedulerCommonTest.test_scheduler_public_api and test_add_noise_device."""
    scheduler = scheduler_class(**ddpm_test_config())
    assert hasattr(scheduler, "init_noise_sigma") and hasattr(scheduler, "scale_model_input")
    assert hasattr(scheduler, "step")
    assert scheduler.init_noise_sigma == 1.0
    sample = random_sample()
    assert scheduler.scale_model_input(sample, 0.0).shape == sample.shape
    assert torch.equal(scheduler.scale_model_input(sample, 0.0), sample)
    scheduler.set_timesteps(num_inference_steps)
    scaled = scheduler.scale_model_input(sample, 0.0)
    noise = torch.randn(scaled.shape)
    noised = scheduler.add_noise(scaled, noise, scheduler.timesteps[5][None])
    assert noised.shape == sample.shape


@SCHEDULER_CLASSES
def test_no_undeclared_kwargs(scheduler_class):
    """SchedulerCommonTest.test_deprecated_kwargs: **kwargs in __init__ iff deprecated kwargs are declared."""
    has_kwargs = "kwargs" in inspect.signature(scheduler_class.__init__).parameters
    assert has_kwargs == (len(scheduler_class._deprecated_kwargs) > 0)


@SCHEDULER_CLASSES
def test_trained_betas(tmp_path, scheduler_class):
    scheduler = scheduler_class(**ddpm_test_config(num_train_timesteps=2, trained_betas=np.array([0.1, 0.3])))
    scheduler.save_pretrained(tmp_path)
    loaded = scheduler_class.from_pretrained(tmp_path)
    assert loaded.betas.tolist() == scheduler.betas.tolist()
    assert torch.allclose(scheduler.betas, torch.tensor([0.1, 0.3]))
    # As diffusers writes it: the test config (num_train_timesteps=1000) plus two trained betas.
    scheduler = scheduler_class(**ddpm_test_config(), trained_betas=np.array([0.1, 0.3]))
    scheduler.save_pretrained(tmp_path)
    assert scheduler_class.from_pretrained(tmp_path).betas.tolist() == scheduler.betas.tolist()


@SCHEDULER_CLASSES
def test_getattr_is_correct(scheduler_class):
    """SchedulerCommonTest.test_getattr_is_correct: attributes, config access and its deprecation."""
    scheduler = scheduler_class(**ddpm_test_config())
    scheduler.dummy_attribute = 5
    scheduler.register_to_config(test_attribute=5)
    with captured_log("diffusers.configuration_utils") as log:
        assert hasattr(scheduler, "dummy_attribute")
        assert getattr(scheduler, "dummy_attribute") == 5
        assert scheduler.dummy_attribute == 5
    assert log.getvalue() == ""
    with captured_log("diffusers.schedulers.scheduling_utils") as log:
        assert hasattr(scheduler, "save_pretrained")
        assert scheduler.save_pretrained == getattr(scheduler, "save_pretrained")
    assert log.getvalue() == ""
    with pytest.warns(FutureWarning):
        assert scheduler.test_attribute == 5
    with pytest.warns(FutureWarning):
        assert getattr(scheduler, "test_attribute") == 5
    with pytest.raises(AttributeError) as error:
        scheduler.does_not_exist
    assert str(error.value) == f"'{type(scheduler).__name__}' object has no attribute 'does_not_exist'"


# ---------------------------------------------------------------------------- DDPMSchedulerTest checks


@SCHEDULER_CLASSES
def test_variance_closed_form_values(scheduler_class):
    """DDPMSchedulerTest.test_variance: the posterior variance of Ho et al. eq. 7 at t = 0, 487, 999."""
    scheduler = scheduler_class(**ddpm_test_config())
    assert torch.sum(torch.abs(scheduler._get_variance(0) - 0.0)) < 1e-5
    assert torch.sum(torch.abs(scheduler._get_variance(487) - 0.00979)) < 1e-5
    assert torch.sum(torch.abs(scheduler._get_variance(999) - 0.02)) < 1e-5


@SCHEDULER_CLASSES
@pytest.mark.parametrize("prediction_type, expected_sum, expected_mean", [
    ("epsilon", 258.9606, 0.3372),
    ("v_prediction", 202.0296, 0.2631),
])
def test_full_loop_without_noise_reference_values(scheduler_class, prediction_type, expected_sum, expected_mean):
    """The reference sums of diffusers' DDPMSchedulerTest full loops (test_full_loop_no_noise and
    test_full_loop_with_v_prediction; as there, prev_sample includes each step's noise)."""
    scheduler = scheduler_class(**ddpm_test_config(prediction_type=prediction_type))
    sample = deterministic_sample()
    generator = torch.manual_seed(0)
    for t in reversed(range(len(scheduler))):
        sample = scheduler.step(dummy_model(sample, t), t, sample, generator=generator).prev_sample
    assert abs(sample.abs().sum().item() - expected_sum) < 1e-2
    assert abs(sample.abs().mean().item() - expected_mean) < 1e-3


@SCHEDULER_CLASSES
def test_full_loop_with_noise_reference_values(scheduler_class):
    scheduler = scheduler_class(**ddpm_test_config())
    timesteps = scheduler.timesteps[(len(scheduler) - 2) * scheduler.order:]
    sample = scheduler.add_noise(deterministic_sample(), deterministic_noise(), timesteps[:1])
    generator = torch.manual_seed(0)
    for t in timesteps:
        sample = scheduler.step(dummy_model(sample, t), t, sample, generator=generator).prev_sample
    assert abs(sample.abs().sum().item() - 387.9466) < 1e-2
    assert abs(sample.abs().mean().item() - 0.5051) < 1e-3


@SCHEDULER_CLASSES
def test_custom_timesteps_previous_timestep(scheduler_class):
    scheduler = scheduler_class(**ddpm_test_config())
    timesteps = [100, 87, 50, 1, 0]
    scheduler.set_timesteps(timesteps=timesteps)
    for i, t in enumerate(scheduler.timesteps):
        expected = -1 if i == len(timesteps) - 1 else timesteps[i + 1]
        assert scheduler.previous_timestep(t).item() == expected


@SCHEDULER_CLASSES
def test_custom_timesteps_errors_as_diffusers_checks_them(scheduler_class):
    """test_custom_timesteps_increasing_order, ..._passing_both_num_inference_steps_and_timesteps,
    ..._too_large: each a ValueError."""
    scheduler = scheduler_class(**ddpm_test_config())
    with pytest.raises(ValueError):
        scheduler.set_timesteps(timesteps=[100, 87, 50, 51, 0])
    with pytest.raises(ValueError):
        scheduler.set_timesteps(num_inference_steps=5, timesteps=[100, 87, 50, 1, 0])
    with pytest.raises(ValueError):
        scheduler.set_timesteps(timesteps=[scheduler.config.num_train_timesteps])


def test_custom_timesteps_errors():
    scheduler = LearnedPriorScheduler(**ddpm_test_config())
    with pytest.raises(ValueError, match="descending"):
        scheduler.set_timesteps(timesteps=[100, 87, 50, 51, 0])
    with pytest.raises(ValueError, match="only one of"):
        scheduler.set_timesteps(num_inference_steps=5, timesteps=[100, 87, 50, 1, 0])
    with pytest.raises(ValueError, match="num_train_timesteps"):
        scheduler.set_timesteps(timesteps=[scheduler.config.num_train_timesteps])
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(num_inference_steps=1001)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="`timestep`"):
        scheduler.step(torch.zeros(1, 1, 4), 17, torch.zeros(1, 1, 4))


def test_integral_float_timesteps_index_like_integers():
    scheduler = LearnedPriorScheduler()
    x = torch.randn(1, 1, 8)
    expected = scheduler.step(x, 500, x, generator=torch.manual_seed(0)).prev_sample
    for t in (500.0, torch.tensor(500.0), torch.tensor(500)):
        assert torch.equal(scheduler.step(x, t, x, generator=torch.manual_seed(0)).prev_sample, expected)
    with pytest.raises(ValueError, match="`timestep`"):
        scheduler.step(x, 500.5, x)


def test_rescale_betas_zero_snr_matches_ddpm():
    ours = LearnedPriorScheduler(rescale_betas_zero_snr=True)
    theirs = DDPMScheduler(rescale_betas_zero_snr=True)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    assert ours.alphas_cumprod[-1] == 0


def test_unknown_config_values_raise():
    for key, value in (("prediction_type", "x0"), ("timestep_spacing", "even"), ("beta_schedule", "quadratic")):
        with pytest.raises(ValueError, match=key):
            LearnedPriorScheduler(**{key: value})


def test_unknown_variance_type_falls_through_like_ddpm():
    """DDPMScheduler treats a variance_type it does not know ("other" in DDPMSchedulerTest) as no special
    case: the posterior variance of "fixed_small". So does ours, with or without a prior."""
    x = torch.randn(2, 1, 32)
    sigma = torch.rand(2, 1, 32) + 0.1
    other, small = LearnedPriorScheduler(variance_type="other"), LearnedPriorScheduler()
    stock = DDPMScheduler(variance_type="other", clip_sample=False)
    assert torch.equal(other._get_variance(321), stock._get_variance(321))
    assert torch.equal(other._get_variance(321), small._get_variance(321))
    for scheduler in (other, small, stock):
        scheduler.set_timesteps(20)
    for t in other.timesteps[:3]:
        a = other.step(0.5 * x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        b = stock.step(0.5 * x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        c = small.step(0.5 * x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        assert torch.equal(a, b) and torch.equal(a, c)
        a = other.step(0.5 * x, t, x, generator=torch.Generator().manual_seed(1), prior_std=sigma).prev_sample
        c = small.step(0.5 * x, t, x, generator=torch.Generator().manual_seed(1), prior_std=sigma).prev_sample
        assert torch.equal(a, c)


# ---------------------------------------------------------------------------- prior_std=None is DDPMScheduler

EQUIVALENCE_CONFIGS = [
    dict(),
    dict(clip_sample=True),
    dict(thresholding=True, sample_max_value=1.5, dynamic_thresholding_ratio=0.9),
    *[dict(prediction_type=p) for p in ("sample", "v_prediction")],
    *[dict(variance_type=v) for v in ("fixed_small_log", "fixed_large", "learned", "learned_range", "other")],
    dict(clip_sample=True, clip_sample_range=0.5, prediction_type="sample"),
    dict(thresholding=True, prediction_type="v_prediction", sample_max_value=3.0),
    *[dict(timestep_spacing=s, steps_offset=o) for s in ("linspace", "leading", "trailing") for o in (0, 1)],
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="sigmoid"),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(num_train_timesteps=50, beta_end=0.05),
]


@pytest.mark.parametrize("config", EQUIVALENCE_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_without_prior_equals_ddpm_scheduler(config):
    config = {"clip_sample": False, **config}
    ours, theirs = LearnedPriorScheduler(**config), DDPMScheduler(**config)
    learned = config.get("variance_type", "").startswith("learned")
    torch.manual_seed(1)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    sample_ours = sample_theirs = torch.randn(2, 3, 8, 8)
    gen_ours, gen_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for t in ours.timesteps:
        out = 0.3 * sample_ours + 0.2 * x0
        if learned:  # a predicted variance (learned) or interpolation weight in [-1, 1] (learned_range)
            extra = torch.sigmoid(sample_ours) * 1e-2 if config["variance_type"] == "learned" else torch.tanh(sample_ours)
            out = torch.cat([out, extra], dim=1)
        a = ours.step(out, t, sample_ours, generator=gen_ours)
        b = theirs.step(out, t, sample_theirs, generator=gen_theirs)
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=1e-6, rtol=0)
        assert torch.allclose(a.pred_original_sample, b.pred_original_sample, atol=1e-6, rtol=0)
        sample_ours, sample_theirs = a.prev_sample, b.prev_sample


def test_fixed_large_log_is_a_valid_variance():
    """DDPMScheduler.step takes the square root of log(beta_t) for "fixed_large_log" and returns NaN;
    here the log-variance is exponentiated, so the step equals "fixed_large" (std sqrt(beta_t))."""
    x = torch.randn(1, 1, 16)
    stock = DDPMScheduler(variance_type="fixed_large_log", clip_sample=False)
    assert torch.isnan(stock.step(x, 500, x, generator=torch.manual_seed(0)).prev_sample).all()
    log_type = LearnedPriorScheduler(variance_type="fixed_large_log")
    plain = LearnedPriorScheduler(variance_type="fixed_large")
    a = log_type.step(x, 500, x, generator=torch.manual_seed(0)).prev_sample
    b = plain.step(x, 500, x, generator=torch.manual_seed(0)).prev_sample
    assert torch.allclose(a, b, atol=1e-6)


def test_add_noise_and_velocity_equal_ddpm():
    ours, theirs = LearnedPriorScheduler(), DDPMScheduler()
    x0, noise = torch.randn(3, 1, 64), torch.randn(3, 1, 64)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    assert torch.equal(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "fixed_small_log", "learned_range"])
@pytest.mark.parametrize("chain", ["training", "custom", "trailing"])
def test_without_prior_equals_ddpm_scheduler_over_whole_chains(prediction_type, variance_type, chain):
    """Drift check: every step of whole chains equals the installed DDPMScheduler's, bit for bit."""
    config = dict(num_train_timesteps=60, beta_end=0.04, prediction_type=prediction_type, variance_type=variance_type,
                  timestep_spacing="trailing" if chain == "trailing" else "leading")
    ours, theirs = LearnedPriorScheduler(**config), DDPMScheduler(clip_sample=False, **config)
    for scheduler in (ours, theirs):
        if chain == "custom":
            scheduler.set_timesteps(timesteps=[59, 41, 40, 17, 3, 1])
        elif chain == "trailing":
            scheduler.set_timesteps(7)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x = torch.randn(2, 2, 16, generator=torch.Generator().manual_seed(3))
    gen_ours, gen_theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in ours.timesteps:
        out = torch.tanh(x) * 0.5
        if variance_type == "learned_range":
            out = torch.cat([out, torch.tanh(2 * x)], dim=1)
        a = ours.step(out, t, x, generator=gen_ours)
        b = theirs.step(out, t, x, generator=gen_theirs)
        assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.pred_original_sample, b.pred_original_sample)
        assert int(ours.previous_timestep(t)) == int(theirs.previous_timestep(t))
        x = a.prev_sample


def test_stock_step_reads_only_the_promoted_schedule():
    """Drift check for the step: DDPMScheduler.step (and the _get_variance it calls) read the schedule only
    from `alphas_cumprod` and `one`, the two tensors LearnedPriorScheduler's step reads (in float64 for
    float64 samples)."""
    scheduler = DDPMScheduler()
    source = inspect.getsource(DDPMScheduler.step) + inspect.getsource(DDPMScheduler._get_variance)
    tensors = {a for a in re.findall(r"self\.(\w+)", source) if isinstance(getattr(scheduler, a, None), torch.Tensor)}
    assert tensors == {"alphas_cumprod", "one"}


def test_float64_step_without_prior_is_ddpm_in_float64():
    """A float64 sample gets DDPM's step with float64 scalar coefficients (Ho et al. eq. 15 and 7); a
    float32 sample gets DDPMScheduler's float32 numbers; the scheduler's schedule stays float32."""
    scheduler = LearnedPriorScheduler()
    x, eps = torch.randn(2, 1, 64, dtype=torch.float64), torch.randn(2, 1, 64, dtype=torch.float64)
    t = 700
    abar = scheduler.alphas_cumprod.double()
    beta = 1 - abar[t] / abar[t - 1]
    x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
    mean = abar[t - 1].sqrt() * beta / (1 - abar[t]) * x0 + (1 - beta).sqrt() * (1 - abar[t - 1]) / (1 - abar[t]) * x
    std = ((1 - abar[t - 1]) / (1 - abar[t]) * beta).sqrt()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(2))
    assert out.prev_sample.dtype == torch.float64
    assert torch.allclose(out.pred_original_sample, x0, atol=1e-12, rtol=1e-12)
    assert torch.allclose(out.prev_sample, mean + std * z, atol=1e-12, rtol=1e-12)
    assert scheduler.alphas_cumprod.dtype == torch.float32 and scheduler.one.dtype == torch.float32
    stock = DDPMScheduler(clip_sample=False)
    a = scheduler.step(eps.float(), t, x.float(), generator=torch.Generator().manual_seed(2)).prev_sample
    b = stock.step(eps.float(), t, x.float(), generator=torch.Generator().manual_seed(2)).prev_sample
    assert a.dtype == torch.float32 and torch.equal(a, b)


# ---------------------------------------------------------------------------- Algorithm 2 in closed form


def test_add_noise_closed_form_with_prior_noise():
    scheduler = LearnedPriorScheduler()
    x0 = torch.randn(2, 1, 32)
    sigma = torch.rand(2, 1, 32) + 0.1
    z = torch.randn(2, 1, 32)
    t = torch.tensor([10, 900])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].view(2, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * sigma.double() * z.double()
    assert torch.allclose(scheduler.add_noise(x0, sigma * z, t).double(), expected, atol=1e-5)


def test_sample_prior_is_sigma_times_standard_normal():
    scheduler = LearnedPriorScheduler()
    sigma = torch.rand(1, 2, 5000) * 3 + 0.1
    draw = scheduler.sample_prior(sigma, generator=torch.Generator().manual_seed(3))
    z = torch.randn(sigma.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(draw, sigma * z)


def algorithm2_step(eps_hat, t, x_t, sigma, z, alphas_cumprod):
    """Paper Algorithm 2, one step, written from the equations in float64.

    ``alphas_cumprod`` is the scheduler's stored (float32) schedule, so that the comparison measures
    the step, not the rounding of the schedule: for a small beta_t float32 keeps only about three
    digits of ``beta_t = 1 - abar_t / abar_{t-1}``, in DDPMScheduler as here.
    """
    abar = alphas_cumprod.double()
    abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    alpha_t = abar[t] / abar_prev
    beta_t = 1 - alpha_t
    mean = (x_t - beta_t / (1 - abar[t]).sqrt() * eps_hat) / alpha_t.sqrt()
    if t == 0:
        return mean
    s2 = (1 - abar_prev) / (1 - abar[t]) * beta_t
    return mean + s2.sqrt() * sigma * z


@pytest.mark.parametrize("t", [999, 500, 10, 1, 0])
def test_step_with_prior_is_algorithm_2(t):
    scheduler = LearnedPriorScheduler()
    shape = (2, 3, 16, 16)
    x_t, eps_hat = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    sigma = torch.rand(shape, dtype=torch.float64) * 2 + 0.1
    gen = torch.Generator().manual_seed(0)
    out = scheduler.step(eps_hat, t, x_t, generator=gen, prior_std=sigma).prev_sample
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = algorithm2_step(eps_hat, t, x_t, sigma, z, scheduler.alphas_cumprod)
    assert torch.allclose(out, expected, atol=1e-10, rtol=1e-10)


def test_step_with_unit_prior_equals_no_prior():
    scheduler = LearnedPriorScheduler()
    x_t, eps_hat = torch.randn(1, 1, 100), torch.randn(1, 1, 100)
    a = scheduler.step(eps_hat, 321, x_t, generator=torch.Generator().manual_seed(5)).prev_sample
    b = scheduler.step(eps_hat, 321, x_t, generator=torch.Generator().manual_seed(5),
                       prior_std=torch.ones_like(x_t)).prev_sample
    assert torch.equal(a, b)


def test_oracle_chain_with_prior_recovers_x0():
    """With the exact noise of a known x0, the strided chain lands on x0 (no noise at the last step)."""
    scheduler = LearnedPriorScheduler()
    scheduler.set_timesteps(20)
    x0 = torch.rand(1, 1, 64) * 2 - 1
    sigma = torch.rand(1, 1, 64) + 0.2
    x = scheduler.sample_prior(sigma, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        abar = scheduler.alphas_cumprod[t]
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        x = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(int(t)), prior_std=sigma).prev_sample
    assert torch.allclose(x, x0, atol=1e-4)


def test_prior_std_errors():
    scheduler = LearnedPriorScheduler()
    x = torch.randn(1, 1, 8)
    with pytest.raises(ValueError, match="prior_std"):
        scheduler.step(x, 5, x, prior_std=-torch.ones_like(x))
    with pytest.raises(ValueError, match="prior_std"):
        scheduler.step(x, 5, x, prior_std=torch.ones(1, 1, 9))
    with pytest.raises(ValueError, match="prior_std"):
        scheduler.step(x, 5, x, prior_std=torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="prior_std"):
        scheduler.sample_prior(torch.ones(3, dtype=torch.long))


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_step_with_prior_and_learned_variance_scales_the_learned_noise(variance_type):
    """Learned variance types: the mean is Algorithm 2's and the fresh noise is the learned std times
    prior_std * z (the predicted variance is that of the whitened step, left unscaled)."""
    scheduler = LearnedPriorScheduler(variance_type=variance_type)
    shape, t = (2, 3, 16), 400
    x_t, eps_hat = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    predicted = torch.rand(shape, dtype=torch.float64) * (1e-2 if variance_type == "learned" else 2) - (
        0 if variance_type == "learned" else 1)
    sigma = torch.rand(shape, dtype=torch.float64) * 2 + 0.1
    out = scheduler.step(torch.cat([eps_hat, predicted], dim=1), t, x_t, generator=torch.Generator().manual_seed(4),
                         prior_std=sigma).prev_sample
    z = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    abar = scheduler.alphas_cumprod.double()
    beta = 1 - abar[t] / abar[t - 1]
    mean = algorithm2_step(eps_hat, t, x_t, sigma, torch.zeros_like(z), scheduler.alphas_cumprod)
    if variance_type == "learned":
        std = predicted.sqrt()
    else:
        small = (1 - abar[t - 1]) / (1 - abar[t]) * beta
        frac = (predicted + 1) / 2
        std = torch.exp(0.5 * (frac * beta.log() + (1 - frac) * small.log()))
    assert torch.allclose(out, mean + std * sigma * z, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("flag", [dict(clip_sample=True), dict(thresholding=True)])
def test_step_with_prior_refuses_clipping_and_thresholding(flag):
    """Clipping x_0 does not commute with the whitening that applies the prior: refused by name.
    Without a prior the step clips as DDPMScheduler does."""
    scheduler = LearnedPriorScheduler(**flag)
    x = torch.randn(1, 1, 8) * 3
    with pytest.raises(ValueError, match=next(iter(flag))):
        scheduler.step(x, 5, x, prior_std=torch.ones_like(x))
    stock = DDPMScheduler(**{"clip_sample": False, **flag})
    a = scheduler.step(x, 5, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = stock.step(x, 5, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(a, b)


def test_step_with_prior_return_tuple():
    scheduler = LearnedPriorScheduler()
    x, sigma = torch.randn(1, 1, 32), torch.rand(1, 1, 32) + 0.1
    as_dict = scheduler.step(x, 10, x, generator=torch.Generator().manual_seed(0), prior_std=sigma)
    as_tuple = scheduler.step(x, 10, x, generator=torch.Generator().manual_seed(0), prior_std=sigma, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert torch.equal(as_tuple[0], as_dict.prev_sample) and torch.equal(as_tuple[1], as_dict.pred_original_sample)


# ---------------------------------------------------------------------------- fast sampling


def cdiffuse_train_scheduler():
    return LearnedPriorScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.035)


def fractional_steps_reference(train_betas, infer_betas):
    """DiffWave's fast-sampling step alignment, computed independently in float64 with numpy."""
    train_sqrt = np.sqrt(np.cumprod(1 - np.asarray(train_betas, dtype=np.float64)))
    infer_sqrt = np.sqrt(np.cumprod(1 - np.asarray(infer_betas, dtype=np.float64)))
    steps = []
    for target in infer_sqrt:
        for t in range(len(train_sqrt) - 1):
            if train_sqrt[t + 1] <= target <= train_sqrt[t] + 1e-7:
                steps.append(t + (train_sqrt[t] - target) / (train_sqrt[t] - train_sqrt[t + 1]))
                break
    return np.array(steps)


@pytest.mark.parametrize("infer", [FAST_INFERENCE_BETAS_6, FAST_INFERENCE_BETAS_3])
def test_fast_sampling_fractional_timesteps(infer):
    scheduler = cdiffuse_train_scheduler()
    scheduler.set_timesteps(inference_betas=infer)
    reference = fractional_steps_reference(np.linspace(1e-4, 0.035, 50), infer)
    assert len(reference) == len(infer)
    assert np.allclose(scheduler.timesteps.flip(0).double().numpy(), reference, atol=1e-4)
    # The model's timestep reproduces the noise level: interpolated sqrt(abar) equals the inference one.
    train_sqrt = scheduler.alphas_cumprod.double().sqrt().numpy()
    interp = np.interp(reference, np.arange(50), train_sqrt)
    assert np.allclose(interp, np.sqrt(np.cumprod(1 - np.asarray(infer))), atol=1e-6)
    assert scheduler.timesteps.is_floating_point()
    assert torch.all(scheduler.timesteps[:-1] > scheduler.timesteps[1:])


def test_fast_sampling_first_step_is_train_step_zero():
    scheduler = cdiffuse_train_scheduler()
    scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_6)
    assert abs(scheduler.timesteps[-1].item()) < 1e-3  # beta_1 = 1e-4 equals the first training beta


def test_fast_sampling_step_closed_form():
    scheduler = cdiffuse_train_scheduler()
    scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_6)
    abar = torch.cumprod(1 - torch.tensor(FAST_INFERENCE_BETAS_6, dtype=torch.float64), 0)
    assert torch.allclose(scheduler.inference_alphas_cumprod.double(), abar, atol=1e-7)
    x = torch.randn(2, 1, 256, dtype=torch.float64)
    sigma = torch.rand(2, 1, 256, dtype=torch.float64) + 0.1
    for i, t in enumerate(scheduler.timesteps):
        s = len(abar) - 1 - i
        eps_hat = torch.randn_like(x)
        out = scheduler.step(eps_hat, t, x, generator=torch.Generator().manual_seed(i), prior_std=sigma).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        expected = algorithm2_step(eps_hat, s, x, sigma, z, scheduler.inference_alphas_cumprod)
        assert torch.allclose(out, expected, atol=1e-10, rtol=1e-10), s
        x = out


def test_fast_sampling_errors():
    scheduler = cdiffuse_train_scheduler()
    with pytest.raises(ValueError, match="inference_betas"):
        scheduler.set_timesteps(inference_betas=[0.5, 0.9, 0.9])  # noisier than training ever was
    with pytest.raises(ValueError, match="inference_betas"):
        scheduler.set_timesteps(inference_betas=[0.0, 1.2])
    with pytest.raises(ValueError, match="only one of"):
        scheduler.set_timesteps(num_inference_steps=3, inference_betas=FAST_INFERENCE_BETAS_3)
    scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_3)
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(torch.zeros(1, 1, 4), 17.5, torch.zeros(1, 1, 4))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_fast_sampling_is_the_ddpm_step_of_the_inference_schedule(prediction_type, variance_type):
    """Fast sampling reuses DDPM's step: without a prior each step equals the installed DDPMScheduler
    trained on the inference betas (its alphas_cumprod set to ours) stepped at the inference index."""
    scheduler = LearnedPriorScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.035,
                                      prediction_type=prediction_type, variance_type=variance_type)
    scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_6)
    stock = DDPMScheduler(num_train_timesteps=len(FAST_INFERENCE_BETAS_6), trained_betas=list(FAST_INFERENCE_BETAS_6),
                          prediction_type=prediction_type, variance_type=variance_type, clip_sample=False)
    stock.alphas_cumprod = scheduler.inference_alphas_cumprod.clone()
    assert torch.allclose(stock.alphas_cumprod, DDPMScheduler(trained_betas=list(FAST_INFERENCE_BETAS_6),
                                                              num_train_timesteps=6).alphas_cumprod, atol=1e-6)
    x = torch.randn(2, 1, 64)
    gen_ours, gen_stock = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for i, t in enumerate(scheduler.timesteps):
        s = len(scheduler.timesteps) - 1 - i
        out = torch.sin(x)
        a = scheduler.step(out, t, x, generator=gen_ours)
        b = stock.step(out, s, x, generator=gen_stock)
        assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.pred_original_sample, b.pred_original_sample)
        x = a.prev_sample
    # Back to strided steps: the fast-sampling state is cleared.
    scheduler.set_timesteps(5)
    assert not scheduler.fast_sampling and scheduler.inference_alphas_cumprod is None


def test_fractional_timesteps_is_identity_for_the_training_schedule():
    scheduler = cdiffuse_train_scheduler()
    steps = fractional_timesteps(scheduler.alphas_cumprod, scheduler.alphas_cumprod.double())
    assert torch.allclose(steps, torch.arange(50, dtype=torch.float64), atol=1e-3)


# ---------------------------------------------------------------------------- whitening


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_whitened_stock_ddpm_equals_learned_prior_step(variance_type):
    ours = LearnedPriorScheduler(variance_type=variance_type)
    stock = DDPMScheduler(variance_type=variance_type, clip_sample=False)
    for s in (ours, stock):
        s.set_timesteps(25)
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.rand(2, 3, 8, 8) + 0.1
    for t in ours.timesteps[:5]:
        out = torch.randn_like(x)
        if variance_type == "learned_range":
            out = torch.cat([out, torch.tanh(x)], dim=1)
        a = ours.step(out, t, x, generator=torch.Generator().manual_seed(int(t)), prior_std=sigma).prev_sample
        b = whitened_step(stock, out, t, x, sigma, generator=torch.Generator().manual_seed(int(t))).prev_sample
        assert torch.equal(a, b)
        x = a
    with pytest.raises(ValueError, match="model_output"):
        whitened_step(DDIMScheduler(clip_sample=False), torch.zeros(2, 6, 8, 8), 10, x, sigma)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("t", [500, 0])
def test_the_prior_step_leaves_its_inputs_alone_and_works_under_autograd(prediction_type, variance_type, t):
    """The prior step scales its own results back in place: both outputs equal the whitened stock step's, bit
    for bit, the caller's tensors are unchanged, and with autograd recording (where the results are left
    as they are) the numbers are the same and the gradients reach the model output and the map."""
    config = dict(prediction_type=prediction_type, variance_type=variance_type, clip_sample=False)
    ours, stock = LearnedPriorScheduler(**config), DDPMScheduler(**config)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    sigma = torch.rand(2, 3, 8, 8, generator=g) + 0.1
    out = torch.randn(2, 6 if variance_type == "learned_range" else 3, 8, 8, generator=g).clamp(-1, 1)
    copies = [v.clone() for v in (out, x, sigma)]

    def step(scheduler, out, sigma):
        if scheduler is stock:
            return whitened_step(stock, out, t, x, sigma, generator=torch.Generator().manual_seed(1))
        return ours.step(out, t, x, prior_std=sigma, generator=torch.Generator().manual_seed(1))

    a, b = step(ours, out, sigma), step(stock, out, sigma)
    assert torch.equal(a.prev_sample, b.prev_sample)
    assert torch.equal(a.pred_original_sample, b.pred_original_sample)
    assert all(torch.equal(v, c) for v, c in zip((out, x, sigma), copies))

    out_grad, sigma_grad = out.clone().requires_grad_(), sigma.clone().requires_grad_()
    c = step(ours, out_grad, sigma_grad)
    (c.prev_sample.sum() + c.pred_original_sample.sum()).backward()
    assert torch.equal(c.prev_sample, a.prev_sample)
    assert torch.equal(c.pred_original_sample, a.pred_original_sample)
    assert out_grad.grad is not None and sigma_grad.grad is not None and torch.isfinite(out_grad.grad).all()


def ddim_closed_form(eps_hat, x_t, abar_t, abar_prev, eta, sigma, z):
    """DDIM (Song et al. 2021, eq. 12) under the learned prior: its noise is sigma * z."""
    x0 = (x_t - (1 - abar_t).sqrt() * eps_hat) / abar_t.sqrt()
    std = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    return abar_prev.sqrt() * x0 + (1 - abar_prev - std**2).sqrt() * eps_hat + std * sigma * z


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_whitened_ddim_closed_form(eta):
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(10)
    x = torch.randn(2, 1, 128, dtype=torch.float64)
    sigma = torch.rand(2, 1, 128, dtype=torch.float64) + 0.1
    abar = scheduler.alphas_cumprod.double()
    for i, t in enumerate(scheduler.timesteps):
        eps = torch.randn_like(x)
        prev = t - 100
        abar_prev = abar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        out = whitened_step(scheduler, eps, t, x, sigma, eta=eta, generator=torch.Generator().manual_seed(i))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        expected = ddim_closed_form(eps, x, abar[t], abar_prev, eta, sigma, z)
        # DDIMScheduler computes its scalar coefficients in float32 whatever the sample's dtype.
        assert torch.allclose(out.prev_sample, expected, atol=1e-6, rtol=1e-5), int(t)
        x = out.prev_sample


def test_whitened_dpm_solver_pp_first_order_closed_form_and_linearity():
    """DPM-Solver++(1) is DDIM(eta=0) (Lu et al. 2022); higher orders are linear in (x, eps), so whitening
    leaves the deterministic solver unchanged: whitened == plain for any sigma map."""
    first = DPMSolverMultistepScheduler(solver_order=1, algorithm_type="dpmsolver++", final_sigmas_type="zero")
    first.set_timesteps(8)
    x = torch.randn(1, 2, 64, dtype=torch.float64)
    sigma = torch.rand(1, 2, 64, dtype=torch.float64) + 0.1
    abar = first.alphas_cumprod.double()
    timesteps = first.timesteps.tolist()
    for i, t in enumerate(timesteps):
        eps = torch.randn_like(x)
        abar_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        out = whitened_step(first, eps, t, x, sigma).prev_sample
        expected = ddim_closed_form(eps, x, abar[t], abar_prev, 0.0, sigma, torch.zeros_like(x))
        assert torch.allclose(out, expected, atol=1e-6), t
        x = out

    def run(scheduler, whiten):
        scheduler.set_timesteps(8)
        x = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        for t in scheduler.timesteps:
            eps = torch.tanh(x) * 0.7
            x = (whitened_step(scheduler, eps, t, x, sigma) if whiten else scheduler.step(eps, t, x)).prev_sample
        return x

    for cls in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        plain = run(cls(), whiten=False)
        whitened = run(cls(), whiten=True)
        assert torch.allclose(plain, whitened, atol=1e-8), cls.__name__


def test_whitened_sde_dpm_solver_noise_scales_with_sigma():
    """The stochastic part of a whitened step is sigma times the stock one: x' = plain' * sigma."""
    sigma = torch.full((1, 1, 4096), 3.0, dtype=torch.float64)
    x = torch.randn(1, 1, 4096, dtype=torch.float64)
    eps = torch.zeros_like(x)
    a, b = (DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=1) for _ in range(2))
    a.set_timesteps(10), b.set_timesteps(10)
    t = a.timesteps[0]
    whitened = whitened_step(a, eps, t, x * 3.0, sigma, generator=torch.Generator().manual_seed(0)).prev_sample
    plain = b.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.allclose(whitened, plain * 3.0, atol=1e-10)


def test_whitening_refuses_clipping_and_draws_scaled_initial_noise():
    sigma = torch.rand(1, 1, 16) + 0.1
    with pytest.raises(ValueError, match="clip_sample"):
        whitened_step(DDPMScheduler(clip_sample=True), torch.zeros(1, 1, 16), 999, torch.zeros(1, 1, 16), sigma)
    x_T = whitened_initial_sample(DDIMScheduler(), sigma, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x_T, sigma * torch.randn(sigma.shape, generator=torch.Generator().manual_seed(1)))



# ---------------------------------------------------------------------- host synchronisations for the prior
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


@pytest.mark.parametrize("chain", ["training", "strided", "fast", "float64"])
def test_a_step_with_validate_args_false_makes_no_host_synchronisation_for_the_prior(chain):
    """The restoration loop checks sigma once and steps with validate_args=False: the prior then costs a
    step no host synchronisation (as many reads as the step without a prior). The default step checks
    sigma's values: exactly one more."""
    scheduler = LearnedPriorScheduler(num_train_timesteps=50, beta_end=0.035)
    if chain == "fast":
        scheduler.set_timesteps(inference_betas=FAST_INFERENCE_BETAS_6)
    elif chain != "training":
        scheduler.set_timesteps(5)
    dtype = torch.float64 if chain == "float64" else torch.float32
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 1, 16, generator=g, dtype=dtype), torch.randn(2, 1, 16, generator=g, dtype=dtype)
    sigma = torch.rand(2, 1, 16, generator=g, dtype=dtype) + 0.1
    t = scheduler.timesteps[1]

    def step(**kwargs):
        return scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(1), **kwargs).prev_sample

    plain, _ = host_reads(step)
    unchecked, a = host_reads(lambda: step(prior_std=sigma, validate_args=False))
    checked, b = host_reads(lambda: step(prior_std=sigma))
    assert unchecked == plain
    assert checked == plain + 1
    assert torch.equal(a, b)


def test_sample_prior_and_the_whitening_functions_check_the_prior_only_when_asked():
    scheduler = LearnedPriorScheduler()
    ddim = DDIMScheduler(clip_sample=False)
    ddim.set_timesteps(10)
    t = ddim.timesteps[2]
    g = torch.Generator().manual_seed(0)
    x, eps, sigma = torch.randn(1, 2, 16, generator=g), torch.randn(1, 2, 16, generator=g), torch.rand(1, 2, 16) + 0.1
    assert host_reads(lambda: scheduler.sample_prior(sigma, validate_args=False))[0] == 0
    assert host_reads(lambda: scheduler.sample_prior(sigma))[0] == 1
    assert host_reads(lambda: whitened_initial_sample(ddim, sigma, validate_args=False))[0] == 0
    assert host_reads(lambda: whitened_initial_sample(ddim, sigma))[0] == 1
    assert host_reads(lambda: scale_model_input_whitened(ddim, x, t, sigma, validate_args=False))[0] == 0
    assert host_reads(lambda: scale_model_input_whitened(ddim, x, t, sigma))[0] == 1
    stock, _ = host_reads(lambda: ddim.step(eps / sigma, t, x / sigma))
    unchecked, a = host_reads(lambda: whitened_step(ddim, eps, t, x, sigma, validate_args=False))
    checked, b = host_reads(lambda: whitened_step(ddim, eps, t, x, sigma))
    assert unchecked == stock and checked == stock + 1
    assert torch.equal(a.prev_sample, b.prev_sample)


@pytest.mark.parametrize("bad, message", [(0.0, "must be > 0"), (-1.0, "must be > 0"), (math.nan, "non-finite"),
                                          (math.inf, "non-finite")])
def test_the_default_step_checks_the_prior_values_every_time(bad, message):
    """Nothing is remembered between calls: a map changed in place is checked again, and refused."""
    scheduler = LearnedPriorScheduler(num_train_timesteps=50)
    scheduler.set_timesteps(5)
    x, sigma = torch.zeros(1, 1, 8), torch.full((1, 1, 8), 0.5)
    for t in scheduler.timesteps[:2]:
        x = scheduler.step(torch.zeros_like(x), t, x, prior_std=sigma, generator=torch.manual_seed(0)).prev_sample
    sigma[0, 0, 3] = bad
    with pytest.raises(ValueError, match=message):
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[2], x, prior_std=sigma)
    for call in (lambda: scheduler.sample_prior(sigma), lambda: whitened_initial_sample(scheduler, sigma),
                 lambda: whitened_step(DDIMScheduler(clip_sample=False), x, 10, x, sigma),
                 lambda: scale_model_input_whitened(DDIMScheduler(), x, 10, sigma)):
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------- methods copied from diffusers
#: "# Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.<name>[ with A->B, C->D]" above a def.
COPIED_FROM = re.compile(r"^[ \t]*# Copied from diffusers\.schedulers\.scheduling_ddpm\.DDPMScheduler\.(\w+)"
                         r"(?: with (.+?))?[ \t]*\n[ \t]*def (\w+)\(", re.MULTILINE)


def copied_methods():
    """``(our method, DDPMScheduler's method, [(A, B), ...])`` for every copy marked in our module."""
    found = []
    for match in COPIED_FROM.finditer(inspect.getsource(scheduler_module)):
        replacements = [tuple(part.strip() for part in pair.split("->")) for pair in (match[2] or "").split(",") if pair]
        found.append((match[3], match[1], replacements))
    return found


def code_lines(source):
    """A function's code as diffusers' copy check sees it, less comments, blank lines and indentation."""
    source = textwrap.dedent(source)
    lines = source.splitlines()
    comments = [t.start for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    for row, column in reversed(comments):
        lines[row - 1] = lines[row - 1][:column]
    return [line.strip() for line in lines if line.strip()]


def expected_copy(name, replacements):
    """DDPMScheduler's ``name`` with the marker's ``A->B`` replacements applied (diffusers' convention)."""
    source = inspect.getsource(getattr(DDPMScheduler, name))
    for old, new in replacements:
        source = source.replace(old, new)
    return code_lines(source)


def test_the_copies_marked_are_the_expected_ones():
    assert {(ours, theirs) for ours, theirs, _ in copied_methods()} == {
        ("scale_model_input", "scale_model_input"),
        ("_ddpm_set_timesteps", "set_timesteps"),
        ("_threshold_sample", "_threshold_sample"),
        ("_ddpm_add_noise", "add_noise"),
        ("get_velocity", "get_velocity"),
        ("__len__", "__len__"),
    }


@pytest.mark.parametrize("ours, theirs, replacements", copied_methods(), ids=lambda v: v if isinstance(v, str) else "")
def test_copied_methods_equal_the_installed_diffusers(ours, theirs, replacements):
    """Drift check: every method marked "# Copied from ...DDPMScheduler.X" is diffusers' X line for line."""
    assert code_lines(inspect.getsource(getattr(LearnedPriorScheduler, ours))) == expected_copy(theirs, replacements)


def test_the_copy_check_notices_a_changed_line():
    """The comparison sees code: a changed line, or a dropped one, is a difference; comments are not."""
    ours = inspect.getsource(LearnedPriorScheduler.get_velocity)
    expected = expected_copy("get_velocity", [])
    assert code_lines(ours) == expected
    assert code_lines(ours.replace("noise - sqrt_one_minus", "noise + sqrt_one_minus")) != expected
    assert code_lines(ours.replace("        timesteps = timesteps.to(sample.device)\n", "")) != expected
    assert code_lines(ours.replace("# Make sure", "# Check that")) == expected


# ---------------------------------------------------------------------- the training schedule
@pytest.mark.parametrize("config", [
    *[dict(beta_schedule=s) for s in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")],
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    dict(num_train_timesteps=50, beta_end=0.035),
    dict(num_train_timesteps=3, trained_betas=[0.1, 0.2, 0.3]),
    dict(rescale_betas_zero_snr=True),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_training_schedule_equals_ddpm(config):
    ours, theirs = LearnedPriorScheduler(**config), DDPMScheduler(**config)
    for name in ("betas", "alphas", "alphas_cumprod", "one", "timesteps"):
        assert getattr(ours, name).dtype == getattr(theirs, name).dtype, name
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert (ours.init_noise_sigma, ours.custom_timesteps, ours.num_inference_steps, ours.variance_type) == (
        theirs.init_noise_sigma, theirs.custom_timesteps, theirs.num_inference_steps, theirs.variance_type)

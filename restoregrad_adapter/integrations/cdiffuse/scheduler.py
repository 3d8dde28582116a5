"""CDiffuSE's conditional reverse process: its coefficients and :class:`CDiffuSEScheduler`.

The math (paper Sec. 3; t = 1..T, ``alpha_t = 1 - beta_t``, ``abar_t = alpha_1 ... alpha_t``, and a
diagonal covariance ``Sigma = diag(sigma**2)`` that is ``I`` in the paper and the learned prior here):

- forward marginal ``q(x_t | x0, y) = N((1 - m_t) sqrt(abar_t) x0 + m_t sqrt(abar_t) y, delta_t Sigma)``
  with ``m_t = sqrt((1 - abar_t) / sqrt(abar_t))`` and ``delta_t = (1 - abar_t) - m_t^2 abar_t``
  (paper eq. 9; :func:`forward_coefficients`);
- prior ``p(x_T | y) = N(sqrt(abar_T) y, delta_T Sigma)`` (paper eq. 10);
- reverse step ``x_{t-1} = c1 x_t + c2 y - c3 C_hat + sqrt(delta_bar_t) sigma z`` (paper Sec. 3.3,
  Algorithm 2), coefficients derived in :func:`reverse_schedule`, for full and fast (DiffWave-style)
  sampling.

:class:`CDiffuSEScheduler` runs that reverse process in the restoration loop
(:mod:`restoregrad_adapter.sampling`); it is a diffusers scheduler (``SchedulerMixin``,
``ConfigMixin``) that saves and loads as ``scheduler_config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from restoregrad_adapter.checks import check_bool, check_choice, check_number, check_std, check_std_shape
from restoregrad_adapter.scheduler import (
    LearnedPriorScheduler,
    LearnedPriorSchedulerOutput,
    fractional_timesteps,
    noise_from_prediction,
)

__all__ = [
    "TRAINING_BETA_START",
    "TRAINING_BETA_END",
    "NUM_TRAINING_STEPS",
    "cdiffuse_scheduler",
    "interpolation_ratio",
    "forward_coefficients",
    "CDiffuSESchedule",
    "reverse_schedule",
    "training_betas",
    "CDiffuSEScheduler",
]

#: CDiffuSE's training schedule: ``beta = linspace(1e-4, 0.035, 50)``.
TRAINING_BETA_START = 1e-4
TRAINING_BETA_END = 0.035
NUM_TRAINING_STEPS = 50

#: The configuration keys of a DDPM-type scheduler that define its training betas and what its network predicts.
_TRAINING_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "rescale_betas_zero_snr", "prediction_type")


def cdiffuse_scheduler() -> LearnedPriorScheduler:
    """CDiffuSE's training schedule: 50 steps, ``beta = linspace(1e-4, 0.035, 50)``."""
    return LearnedPriorScheduler(num_train_timesteps=NUM_TRAINING_STEPS, beta_start=TRAINING_BETA_START,
                                 beta_end=TRAINING_BETA_END)


def _as_betas(name: str, betas) -> torch.Tensor:
    values = torch.as_tensor(np.asarray(betas, dtype=np.float64))
    if values.ndim != 1 or len(values) == 0 or not bool(((values > 0) & (values < 1)).all()):
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence of values in (0, 1), got {betas!r}.")
    return values


def interpolation_ratio(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``m_t = sqrt(min((1 - abar_t) / sqrt(abar_t), 1))`` (float64).

    The paper's ``m_t = sqrt((1 - abar_t) / sqrt(abar_t))`` grows from 0 towards 1; like the
    released inference code we cap it at 1 (reached only once ``abar_t < 0.382``, never with
    CDiffuSE's schedules), so the mean never overshoots ``sqrt(abar_t) y``.
    """
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - abar) / abar.sqrt()).clamp(max=1.0).sqrt()


def _variance(abar: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # delta_t = (1 - abar_t) - m_t^2 abar_t (eq. 9), clamped at 0 as in the released code (it is
    # only negative for m_t = 1 with abar_t > 1/2, which reverse_schedule refuses).
    return ((1 - abar) - m**2 * abar).clamp(min=0.0)


def forward_coefficients(alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The conditional forward marginal ``x_t = a_t x0 + b_t y + s_t eps``, ``eps ~ N(0, Sigma)``.

    Returns float64 ``(a_t, b_t, s_t) = ((1 - m_t) sqrt(abar_t), m_t sqrt(abar_t), sqrt(delta_t))``
    for every entry of ``alphas_cumprod`` (paper eq. 9 and the marginal above it).
    """
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    m = interpolation_ratio(abar)
    return (1 - m) * abar.sqrt(), m * abar.sqrt(), _variance(abar, m).sqrt()


@dataclass(frozen=True)
class CDiffuSESchedule:
    """The coefficients of CDiffuSE's reverse chain (float64 tensors of length N, the number of steps).

    Entry ``n`` (0-based) belongs to the paper's step ``t = n + 1``, the update ``x_t -> x_{t-1}``:
    ``x_{t-1} = c1[n] x_t + c2[n] y - c3[n] C_hat + sqrt(delta_bar[n]) sigma z`` with the model
    evaluated at the fractional training step ``timesteps[n]``. The chain runs n = N-1, ..., 0.

    Attributes:
        betas, alphas_cumprod: the sampling schedule (training or inference betas).
        m, delta: ``m_t`` and ``delta_t`` of the sampling schedule, with ``m_N = 1``.
        c1, c2, c3, delta_bar: the reverse-step coefficients; ``c2[0] = delta_bar[0] = 0``.
        timesteps: the 0-based fractional training step with the same ``sqrt(abar)`` as each
            sampling step (integers 0..T-1 for full sampling).
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    m: torch.Tensor
    delta: torch.Tensor
    c1: torch.Tensor
    c2: torch.Tensor
    c3: torch.Tensor
    delta_bar: torch.Tensor
    timesteps: torch.Tensor

    def __len__(self) -> int:
        return len(self.betas)


def reverse_schedule(training_betas: Sequence[float] | torch.Tensor,
                     inference_betas: Sequence[float] | None = None) -> CDiffuSESchedule:
    """Coefficients of CDiffuSE's reverse process for full (``inference_betas=None``) or fast sampling.

    Derivation (paper Sec. 3.3; t = 1..N over the sampling schedule, ``m_0 = delta_0 = 0``,
    ``abar_0 = 1``, ``r_t = (1 - m_t) / (1 - m_{t-1})``), per element with variances in units of
    ``sigma^2``:

    1. Consecutive marginals are joined by ``q(x_t | x_{t-1}, y) = N(r_t sqrt(alpha_t) x_{t-1} +
       (m_t - r_t m_{t-1}) sqrt(abar_t) y, delta_{t|t-1})``, ``delta_{t|t-1} = delta_t -
       r_t^2 alpha_t delta_{t-1}``: substituting ``x_{t-1}``'s marginal gives ``x_t``'s.
    2. Bayes on these two Gaussians: ``q(x_{t-1} | x_t, x0, y)`` has variance
       ``delta_bar_t = delta_{t|t-1} delta_{t-1} / delta_t`` (eq. 17; the paper prints the ratio
       inverted, a typo its authors confirmed; the released code has this form) and mean
       ``c_xt x_t + c_yt y + c_x0 x0`` with ``c_xt = r_t sqrt(alpha_t) delta_{t-1} / delta_t``,
       ``c_yt = (m_{t-1} delta_t - m_t r_t alpha_t delta_{t-1}) sqrt(abar_{t-1}) / delta_t`` and
       ``c_x0 = (1 - m_{t-1}) sqrt(abar_{t-1}) delta_{t|t-1} / delta_t``.
    3. The network predicts ``C_t`` with ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) C_t``
       (Algorithm 1); substituting ``x0 = (x_t - sqrt(1 - abar_t) C_hat) / sqrt(abar_t)`` moves
       ``c_x0 / sqrt(abar_t) = (1 - m_{t-1}) delta_{t|t-1} / (delta_t sqrt(alpha_t))`` onto ``x_t``:

       ``c1 = r_t sqrt(alpha_t) delta_{t-1} / delta_t + (1 - m_{t-1}) delta_{t|t-1} / (delta_t sqrt(alpha_t))``
       ``c2 = c_yt``
       ``c3 = (1 - m_{t-1}) delta_{t|t-1} sqrt(1 - abar_t) / (delta_t sqrt(alpha_t))``

       At t = 1 (``m_0 = delta_0 = 0``) this is DDPM's last step: ``c1 = 1 / sqrt(alpha_1)``,
       ``c3 = beta_1 / (sqrt(alpha_1) sqrt(1 - abar_1))``, ``c2 = delta_bar_1 = 0``.

    Fast sampling replaces the training betas by ``inference_betas`` (e.g.
    ``FAST_INFERENCE_BETAS_6``) in all of the above, and evaluates the model at the fractional
    training step whose ``sqrt(abar)`` matches (:func:`~restoregrad_adapter.scheduler.fractional_timesteps`).
    As in the released code the top step uses ``m_N = 1`` (so ``q(x_N | x0, y) = p(x_N | y)``, the
    prior of eq. 10) and ``m_t`` is capped at 1.

    Raises:
        ValueError: when the sampling schedule ends at ``abar_N >= 1/2`` (then ``delta_N = 0``) or
            reaches ``m_t = 1`` before its last step (``r_{t+1}`` would divide by zero).
    """
    train = _as_betas("training_betas", training_betas)
    betas = train if inference_betas is None else _as_betas("inference_betas", inference_betas)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, dim=0)
    m = interpolation_ratio(abar)
    m[-1] = 1.0
    delta = _variance(abar, m)
    if delta[-1] <= 0:
        raise ValueError(f"the sampling schedule ends at alpha_bar = {abar[-1].item():.4f} >= 1/2, where "
                         "delta_N = 1 - 2 alpha_bar_N vanishes; use betas that reach alpha_bar_N < 1/2 "
                         "(CDiffuSE's end near 0.41-0.49).")
    if len(m) > 1 and bool((m[:-1] >= 1).any()):
        raise ValueError("the sampling schedule reaches alpha_bar < 0.382 (m_t = 1) before its last step, where "
                         "CDiffuSE's reverse coefficients are undefined; use fewer or smaller betas.")
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    m_prev, delta_prev = torch.cat([zero, m[:-1]]), torch.cat([zero, delta[:-1]])
    abar_prev = torch.cat([one, abar[:-1]])

    ratio = (1 - m) / (1 - m_prev)
    delta_cond = delta - ratio**2 * alphas * delta_prev
    c1 = ratio * alphas.sqrt() * delta_prev / delta + (1 - m_prev) * delta_cond / (delta * alphas.sqrt())
    c2 = (m_prev * delta - m * ratio * alphas * delta_prev) * abar_prev.sqrt() / delta
    c3 = (1 - m_prev) * delta_cond * (1 - abar).sqrt() / (delta * alphas.sqrt())
    delta_bar = delta_cond * delta_prev / delta
    timesteps = fractional_timesteps(torch.cumprod(1 - train, dim=0), abar)
    return CDiffuSESchedule(betas=betas, alphas_cumprod=abar, m=m, delta=delta, c1=c1, c2=c2, c3=c3,
                            delta_bar=delta_bar, timesteps=timesteps)


def training_betas(scheduler) -> torch.Tensor:
    """A training scheduler's betas in float64 (recomputed from the config for a linear schedule)."""
    config = scheduler.config
    if config.trained_betas is None and config.beta_schedule == "linear" and not config.rescale_betas_zero_snr:
        return torch.from_numpy(np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps))
    return scheduler.betas.double()


class CDiffuSEScheduler(SchedulerMixin, ConfigMixin):
    """CDiffuSE's conditional reverse process as a learned-prior scheduler for the restoration loop.

    ``x_{t-1} = c1 x_t + c2 y - c3 C_hat + sqrt(delta_bar) sigma_prior z`` with the coefficients of
    :func:`reverse_schedule` (docs/design.md, "CDiffuSE's conditional process"); the chain starts
    from ``x_N = sqrt(abar_N) y + sqrt(delta_N) sigma_prior z`` (``initial="prior"``, eq. 10 with the
    learned covariance) or from ``x_N = y`` (``initial="noisy"``, the released inference code). The
    model is evaluated at the fractional training step with the same ``sqrt(abar)``
    (``self.timesteps``). It works in the sample's precision (at least float32).

    The last step (no fresh noise) may blend in the noisy signal, ``(1 - w) x_0 + w y`` (the released
    code's final mix, ``w = 0.2``). With ``clamp=True`` every step's result is clipped to [-1, 1]
    where the released code clips it: after each step, the last one after the blend; the initial
    sample is never clipped.

    Build it for an adapter with :meth:`from_training_scheduler` (the adapter's training schedule,
    e.g. :func:`cdiffuse_scheduler`'s 50 linear steps). The training-schedule arguments mean what
    they mean for `diffusers.DDPMScheduler` and have its defaults, so that a training scheduler's
    configuration also loads with ``CDiffuSEScheduler.from_config``. It saves and loads as
    ``scheduler_config.json`` (``save_pretrained`` / ``from_pretrained``).

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr:
            the training noise schedule the network was trained with.
        prediction_type: what the network predicts: ``"epsilon"`` (CDiffuSE's combined noise
            ``C_t``), ``"sample"`` or ``"v_prediction"``.
        initial: ``"prior"`` or ``"noisy"``.
        clamp: clip to [-1, 1] after every step, as the released code does.
        mix_noisy: the weight ``w`` in [0, 1] of the final blend (0: none).
    """

    config_name = "scheduler_config.json"
    needs_condition = True
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        rescale_betas_zero_snr: bool = False,
        prediction_type: str = "epsilon",
        initial: str = "prior",
        clamp: bool = False,
        mix_noisy: float = 0.0,
    ):
        check_choice("initial", initial, ("prior", "noisy"))
        check_bool("clamp", clamp)
        mix_noisy = check_number("mix_noisy", mix_noisy, minimum=0.0, maximum=1.0)
        # The training schedule, exactly as the adapter's LearnedPriorScheduler computes it (and checks it).
        training = LearnedPriorScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                         beta_end=beta_end, beta_schedule=beta_schedule, trained_betas=trained_betas,
                                         rescale_betas_zero_snr=rescale_betas_zero_snr,
                                         prediction_type=prediction_type)
        self.betas = training.betas
        self.alphas_cumprod = training.alphas_cumprod
        self.training_betas = training_betas(training)
        self.initial = initial
        self.clamp = clamp
        self.mix_noisy = mix_noisy
        self.schedule: CDiffuSESchedule | None = None
        self.timesteps = torch.empty(0)
        self._step_index = 0

    @classmethod
    def from_training_scheduler(cls, training_scheduler, initial: str = "prior", clamp: bool = False,
                                mix_noisy: float = 0.0) -> "CDiffuSEScheduler":
        """The reverse process of a network trained with ``training_scheduler`` (the adapter's
        :class:`~restoregrad_adapter.LearnedPriorScheduler`, or any DDPM-type diffusers scheduler): its
        training schedule and ``prediction_type``, with the sampling options ``initial``, ``clamp`` and
        ``mix_noisy``."""
        config = getattr(training_scheduler, "config", None)
        stored = getattr(training_scheduler, "alphas_cumprod", None)
        if config is None or not isinstance(stored, torch.Tensor) or "num_train_timesteps" not in config:
            raise ValueError("`training_scheduler` must be a DDPM-type diffusers scheduler (with a training schedule "
                             f"in its config and `alphas_cumprod`), got {type(training_scheduler).__name__}.")
        scheduler = cls(**{key: config[key] for key in _TRAINING_KEYS if key in config}, initial=initial,
                        clamp=clamp, mix_noisy=mix_noisy)
        if not torch.equal(scheduler.alphas_cumprod, stored.detach().cpu().float()):
            raise ValueError("`training_scheduler`'s `alphas_cumprod` is not the schedule its configuration defines; "
                             "expected a DDPM-type scheduler built from its configuration.")
        return scheduler

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      inference_betas: Sequence[float] | None = None) -> None:
        """Every training step (``num_inference_steps`` = T), or the fast schedule ``inference_betas``."""
        T = len(self.training_betas)
        if num_inference_steps is not None and inference_betas is not None:
            raise ValueError("Pass only one of `num_inference_steps` or `inference_betas`.")
        if inference_betas is None and num_inference_steps != T:
            raise ValueError(f"CDiffuSE's reverse process runs every training step (num_inference_steps={T}) or a "
                             f"fast schedule (`inference_betas`), got num_inference_steps={num_inference_steps!r}.")
        schedule = reverse_schedule(self.training_betas, inference_betas)
        self.schedule = schedule
        self.timesteps = schedule.timesteps.flip(0).to(device)
        self._step_index = 0
        # The coefficients as Python numbers: a step reads them without a host synchronisation.
        self._c1, self._c2, self._c3 = schedule.c1.tolist(), schedule.c2.tolist(), schedule.c3.tolist()
        self._noise_scale = schedule.delta_bar.sqrt().tolist()
        self._alphas_cumprod = schedule.alphas_cumprod.tolist()
        self._prior_mean_scale = schedule.alphas_cumprod[-1].sqrt().item()
        self._prior_noise_scale = schedule.delta[-1].sqrt().item()

    def _clamped(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1.0, 1.0) if self.clamp else x

    def _check_ready(self, condition) -> None:
        if condition is None:
            raise ValueError("CDiffuSE's reverse process needs the noisy signal: pass `condition=y`.")
        if self.schedule is None:
            raise ValueError("Call `set_timesteps` before sampling: CDiffuSE's reverse coefficients depend on it.")

    def sample_prior(self, prior_std: torch.Tensor, generator: torch.Generator | None = None,
                     condition: torch.Tensor | None = None, validate_args: bool = True) -> torch.Tensor:
        """``x_N`` for the condition ``y`` (``condition``); ``prior_std`` has its shape and precision.

        With ``validate_args`` ``prior_std`` must be a finite, positive floating map of ``condition``'s
        shape (one host synchronisation); the restoration loop checks it once and passes False.
        """
        self._check_ready(condition)
        if validate_args:
            check_std_shape("prior_std", prior_std, condition)
            check_std("prior_std", prior_std)
        self._step_index = 0
        if self.initial == "noisy":
            return condition.clone()
        z = randn_tensor(condition.shape, generator=generator, device=condition.device, dtype=prior_std.dtype)
        return self._prior_mean_scale * condition + self._prior_noise_scale * (prior_std * z)

    def combined_noise(self, model_output: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor:
        """``C_hat`` at sampling step ``n`` from the model output in the scheduler's ``prediction_type``.

        ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) C_t`` (Algorithm 1) is DDPM's relation with ``C_t``
        in place of the noise, so DDPM's conversions hold with the sampling schedule's ``abar_t``
        (the same ``sqrt(abar)`` as the fractional training step the model sees): ``sample`` gives
        ``(x_t - a x0_hat) / s`` and ``v_prediction`` gives ``s x_t + a v_hat``.
        """
        return noise_from_prediction(self.config.prediction_type, model_output, sample, self._alphas_cumprod[n])

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        prior_std: torch.Tensor,
        condition: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        validate_args: bool = True,
    ) -> LearnedPriorSchedulerOutput | tuple:
        """One reverse step ``x_t -> x_{t-1}``.

        Args:
            model_output: the network's output at ``x_t`` (``sample``'s shape).
            timestep: the current entry of ``self.timesteps`` (the steps run in that order, from
                :meth:`sample_prior` on).
            sample: ``x_t``.
            prior_std: ``sigma_prior``, broadcastable to ``sample``.
            condition: the noisy signal ``y``, ``sample``'s shape.
            generator: source of the fresh noise ``z``.
            return_dict: return a :class:`~restoregrad_adapter.scheduler.LearnedPriorSchedulerOutput`
                rather than the tuple ``(prev_sample,)``.
            validate_args: check ``prior_std``'s shape and values (finite, > 0: one host
                synchronisation) and ``condition``'s shape. The restoration loop checks the map once
                and passes False, so that the step makes no host synchronisation.
        """
        self._check_ready(condition)
        if model_output.shape != sample.shape:
            raise ValueError(f"the denoiser returned shape {tuple(model_output.shape)}, expected "
                             f"{tuple(sample.shape)}.")
        if self._step_index >= len(self.timesteps):
            raise ValueError(f"all {len(self.timesteps)} steps of the chain were taken; call `sample_prior` (or "
                             "`set_timesteps`) to start another.")
        if validate_args:
            if not isinstance(condition, torch.Tensor) or condition.shape != sample.shape:
                got = tuple(condition.shape) if isinstance(condition, torch.Tensor) else type(condition).__name__
                raise ValueError(f"`condition` must be the noisy signal, of the sample's shape {tuple(sample.shape)}, "
                                 f"got {got}.")
            check_std_shape("prior_std", prior_std, sample)
            check_std("prior_std", prior_std)
        n = len(self.timesteps) - 1 - self._step_index
        combined_noise = self.combined_noise(model_output.to(sample.dtype), sample, n)
        x = self._c1[n] * sample + self._c2[n] * condition - self._c3[n] * combined_noise
        if n > 0:
            z = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            x = x + self._noise_scale[n] * (prior_std * z)
        elif self.mix_noisy:  # the released code's final blend with the noisy signal
            x = (1 - self.mix_noisy) * x + self.mix_noisy * condition.to(x.dtype)
        self._step_index += 1
        output = LearnedPriorSchedulerOutput(prev_sample=self._clamped(x))
        return output if return_dict else output.to_tuple()

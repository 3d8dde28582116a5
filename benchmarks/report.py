"""What the benchmarks report: summaries over seeds, headlines, printed tables, plots and the JSON files.

Everything here reads a results dictionary (the JSON a script writes) and nothing else, so a finished
run can be summarised again (``convergence.py --summarize_only``). Modes are named by
``results["labels"]``; the degraded input's scores (``results["input_quality"]``) are printed and
drawn beside the restorations'.
"""

from __future__ import annotations

import math
import os
import statistics

import numpy as np

from restoregrad_adapter.io import save_figure, write_json


# ---------------------------------------------------------------------- summaries
def spread(values) -> dict:
    """Mean, std, min and max over seeds (axis 0) of a (seeds, points) table."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist()}


def seed_band(seeds: list[int]) -> str:
    """What a plot's shaded band shows."""
    return f"mean and min-max over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds}"


def first_reach(points: list, curve: list[float], target: float):
    """The first point at which ``curve`` reaches ``target`` (None: never)."""
    return next((p for p, v in zip(points, curve) if math.isfinite(v) and v >= target), None)


def convergence_headline(summary: dict, steps: list[int], key: str, curves: dict | None = None) -> dict:
    """First step at which each mode's mean reaches DDPM's final mean; speed-up = DDPM's budget / that step.

    With ``curves`` (mode -> seed -> run), also each seed's own first step and speed-up, for the spread.
    Speed-ups are bounded by the evaluation grid: at most (budget / first evaluated step).
    """
    target = summary["ddpm"][key]["mean"][-1]
    budget = steps[-1]
    out = {"metric": key, "target": target, "target_what": f"standard DDPM's final mean {key} at step {budget}",
           "largest_measurable_speedup": budget / steps[1] if len(steps) > 1 else None, "modes": {}}
    first = {mode: first_reach(steps, summary[mode][key]["mean"], target) for mode in summary}
    for mode, reached in first.items():
        out["modes"][mode] = {
            "final_mean": summary[mode][key]["mean"][-1], "final_std": summary[mode][key]["std"][-1],
            "steps_to_reach_ddpm_final": reached,
            "reached": reached is not None,
            # DDPM's budget / this mode's first step there (None when not reached, or reached at step 0)
            "speedup_vs_ddpm": (budget / reached) if reached else None,
            # the same against the first step at which DDPM's own mean curve gets there (<= the budget)
            "speedup_vs_ddpm_first_reach": (first["ddpm"] / reached) if reached and first["ddpm"] else None,
        }
        if curves is not None:
            per_seed = {seed: first_reach(steps, run["metrics"][key], target) for seed, run in curves[mode].items()}
            speedups = [budget / s for s in per_seed.values() if s]  # None: not reached; 0: before training
            out["modes"][mode]["per_seed_steps_to_reach"] = per_seed
            out["modes"][mode]["per_seed_speedup"] = {seed: (budget / s if s else None) for seed, s in per_seed.items()}
            out["modes"][mode]["seeds_reaching"] = sum(s is not None for s in per_seed.values())
            out["modes"][mode]["speedup_min_median_max"] = (
                [min(speedups), statistics.median(speedups), max(speedups)] if speedups else None)
    return out


def summarize_convergence(results: dict) -> dict:
    """(Re)compute the summary over seeds and the headline from the raw per-seed curves."""
    curves = {mode: [results["curves"][mode][str(seed)] for seed in results["seeds"]] for mode in results["modes"]}
    metric_keys = list(curves["ddpm"][0]["metrics"].keys())
    results["summary"] = {mode: {k: spread([c["metrics"][k] for c in runs]) for k in metric_keys}
                          for mode, runs in curves.items()}
    results.pop("prior_std_summary", None)
    if all("prior_std" in c for runs in curves.values() for c in runs):  # absent in runs saved before it was recorded
        results["prior_std_summary"] = {mode: spread([[s["mean"] for s in c["prior_std"]] for c in runs])
                                        for mode, runs in curves.items()}
    results["headline"] = convergence_headline(results["summary"], results["steps"], results["headline_metric"],
                                               curves=results["curves"])
    return results


def summarize_sampling(results: dict) -> dict:
    """The summary over seeds of every (mode, sampler, S) of ``results["raw"]``, and the headline."""
    grid, seeds = [str(s) for s in results["step_grid"]], [str(seed) for seed in results["seeds"]]
    results["summary"] = {
        mode: {sampler: {k: spread([[per_seed[seed][s][k] for s in grid] for seed in seeds])
                         for k in per_seed[seeds[0]][grid[0]]}
               for sampler, per_seed in samplers.items()}
        for mode, samplers in results["raw"].items()}
    results["headline"] = fewest_steps(results, results["headline_metric"])
    return results


def fewest_steps(results: dict, key: str) -> dict:
    """Target: DDPM's mean at the largest S. For each (mode, sampler), the fewest S whose mean reaches it.

    The ratio (largest S) / (that S) is a sampling speed-up only if quality rises with S and levels off.
    Each entry also gives the S of the best mean; ``falls_with_steps`` is true when the mean at the
    largest S is below that best by more than the seeds' spread (the larger std of the two points), and
    ``target_is_saturated`` is false when that holds for DDPM itself: then the target is no plateau.
    The first sampler of each mode in ``results["summary"]`` is the task's own.
    """
    grid = results["step_grid"]
    reference = grid[-1]
    first_sampler = next(iter(results["summary"]["ddpm"]))
    target = results["summary"]["ddpm"][first_sampler][key]["mean"][-1]
    out = {"metric": key, "target": target, "reference_steps": reference,
           "target_what": f"standard DDPM's mean {key} with {reference} steps ({first_sampler})", "modes": {}}
    for mode, samplers in results["summary"].items():
        out["modes"][mode] = {}
        for sampler, summary in samplers.items():
            mean, std = summary[key]["mean"], summary[key]["std"]
            reached = first_reach(grid, mean, target)
            finite = [i for i, v in enumerate(mean) if math.isfinite(v)]
            best = max(finite, key=lambda i: mean[i]) if finite else len(grid) - 1
            out["modes"][mode][sampler] = {
                "steps_to_reach": reached, "reached": reached is not None,
                "fewer_steps": reference / reached if reached else None,
                "at_reference_mean": mean[-1], "at_reference_std": std[-1],
                "best_steps": grid[best], "best_mean": mean[best],
                "falls_with_steps": bool(mean[-1] < mean[best] - max(std[best], std[-1])),
            }
    out["target_is_saturated"] = not out["modes"]["ddpm"][first_sampler]["falls_with_steps"]
    return out


def upgrade(results: dict) -> dict:
    """A run saved before the constant prior was a mode of its own (it ran in PriorGrad's slot, config
    ``fixed_prior``) and before the loss weights were named ``latent_weight`` and ``prior_matching_weight``
    (``eta``, ``lam``), in today's terms."""
    config = results.setdefault("config", {})
    for old, new in (("eta", "latent_weight"), ("lam", "prior_matching_weight")):
        if old in config:
            config[new] = config.pop(old)
    fixed = config.pop("fixed_prior", "energy")
    if fixed == "energy":
        return results
    config["constant_prior_std"] = float(fixed)
    results["modes"] = ["constant_prior" if m == "priorgrad" else m for m in results["modes"]]

    def rename(table):
        if isinstance(table, dict) and "priorgrad" in table:
            table["constant_prior"] = table.pop("priorgrad")

    for name in ("curves", "chosen_learning_rates", "learning_rate_search", "summary", "prior_std_summary",
                 "learning_rates", "training", "raw"):
        rename(results.get(name))
    rename(results.get("headline", {}).get("modes"))
    return results


# ---------------------------------------------------------------------- plots
def _axes(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    return fig, axes[0]


def _curves(ax, x, lines, seeds, xlabel: str, ylabel: str) -> None:
    """(label, line style, {"mean", "min", "max"}) lines against ``x``, with the seeds' band."""
    for label, style, summary in lines:
        line, = ax.plot(x, summary["mean"], style, marker="o", markersize=3, label=label)
        if len(seeds) > 1:
            ax.fill_between(x, summary["min"], summary["max"], color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _references(ax, results: dict, key: str, target_label: str) -> None:
    """The degraded input's score and the headline's target, as horizontal lines."""
    if key in results["input_quality"]:
        ax.axhline(results["input_quality"][key], color="gray", linestyle=":", label="degraded input")
    if key == results["headline"]["metric"]:
        ax.axhline(results["headline"]["target"], color="black", linewidth=0.8, linestyle="--", label=target_label)


def _save(fig, axes, title: str, path: str) -> None:
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_convergence(results: dict, path: str) -> None:
    """Held-out quality against training steps, one panel per metric, and the prior's sigma."""
    keys = list(results["summary"]["ddpm"].keys())
    sigma = results.get("prior_std_summary")
    fig, axes = _axes(len(keys) + (sigma is not None))
    labels, lrs = results["labels"], results["chosen_learning_rates"]
    for ax, key in zip(axes, keys):
        lines = [(f"{labels[mode]} (lr {lrs[mode]:g})", "-", results["summary"][mode][key])
                 for mode in results["modes"]]
        _curves(ax, results["steps"], lines, results["seeds"], "training step", f"held-out {key}")
        _references(ax, results, key, "DDPM final mean")
    if sigma is not None:
        lines = [(labels[mode], "-", sigma[mode]) for mode in results["modes"]]
        _curves(axes[-1], results["steps"], lines, [], "training step", "prior sigma, mean over held-out elements")
        axes[-1].axhline(1.0, color="gray", linestyle=":")
    _save(fig, axes, f"Convergence, {results['task']} ({seed_band(results['seeds'])})", path)


def plot_sampling(results: dict, path: str) -> None:
    """Held-out quality against the number of sampling steps, one panel per metric."""
    first_sampler = next(iter(results["summary"]["ddpm"]))
    keys = list(results["summary"]["ddpm"][first_sampler].keys())
    fig, axes = _axes(len(keys))
    for ax, key in zip(axes, keys):
        lines = [(results["labels"][mode] + ("" if sampler == first_sampler else f" via {sampler} (whitened)"),
                  "-" if sampler == first_sampler else "--", summary[key])
                 for mode in results["modes"] for sampler, summary in results["summary"][mode].items()]
        _curves(ax, results["step_grid"], lines, results["seeds"], "sampling steps S", f"held-out {key}")
        _references(ax, results, key, f"DDPM at S = {results['step_grid'][-1]}")
    _save(fig, axes, f"Sampling steps, {results['task']}, after {results['config']['steps']} training steps "
                     f"({seed_band(results['seeds'])})", path)


def plot_overhead(results: dict, path: str) -> None:
    """Ratios with/without the adapter: time (with the repetitions' min-max) and peak memory."""
    fig, axes = _axes(1)
    targets = results.get("targets", {})
    labels, ratios, low, high, colors, bar_targets = [], [], [], [], [], []
    timed = [(f"{task}\n{what.replace('_', ' ')}", what, results[task][what])
             for task in ("weather", "speech") for what in ("train_step", "restore")]
    timed += [(f"step {'x'.join(map(str, c['shape'][2:]))}\n{c['case']}", "scheduler_step", c)
              for c in results["scheduler_step"]["cases"] if c["case"] != "no_prior"]
    for label, what, r in timed:
        labels.append(label)
        ratios.append(r["ratio"])
        low.append(r["ratio"] - r["ratio_min"])
        high.append(r["ratio_max"] - r["ratio"])
        colors.append("tab:blue")
        bar_targets.append(targets.get(what))
    for task in ("weather", "speech"):  # one measurement each: no spread
        memory = results[task]["train_peak_memory_bytes"]
        if memory["ratio"] is not None:
            labels.append(f"{task}\nstep memory")
            ratios.append(memory["ratio"])
            low.append(0.0)
            high.append(0.0)
            colors.append("tab:orange")
            bar_targets.append(targets.get("train_peak_memory"))
    ax = axes[0]
    fig.set_size_inches(12.5, 3.8)
    ax.bar(labels, ratios, yerr=[low, high], capsize=4, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    marked = [(i, t) for i, t in enumerate(bar_targets) if t is not None]
    if marked:
        ax.scatter([i for i, _ in marked], [t for _, t in marked], marker="_", s=400, color="tab:red", zorder=3,
                   label="target (at most)")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("with RestoreGrad / without\n(blue: time, orange: peak memory)")
    machine = results["machine"]
    ax.set_title(f"RestoreGrad overhead ({machine['device']}; {machine.get('encoder', '?')} encoders, "
                 f"{'bf16' if machine.get('mixed_precision') == 'bf16' else 'fp32'})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------------- files and printed reports
def write(results: dict, output_dir: str, stem: str, plot) -> str:
    """``<stem>.json`` and ``plot(results, <stem>.png)`` in ``output_dir``, both written atomically."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{stem}.json")
    write_json(results, path)
    plot(results, os.path.join(output_dir, f"{stem}.png"))
    return path


def print_input_quality(results: dict) -> None:
    shown = ", ".join(f"{k} {v:.3f}" for k, v in results["input_quality"].items())
    print(f"\nheld-out scores of the degraded input: {shown}")


def print_convergence(results: dict) -> None:
    h = results["headline"]
    print_input_quality(results)
    print(f"target: {h['target_what']} = {h['target']:.3f}")
    for mode in results["modes"]:
        m = h["modes"][mode]
        if not m["reached"]:
            reach = "not reached"
        elif m["speedup_vs_ddpm"] is None:
            reach = "reached at step 0 (before training)"
        else:
            reach = f"reaches it at step {m['steps_to_reach_ddpm_final']} ({m['speedup_vs_ddpm']:.2f}x fewer steps)"
        per_seed = m.get("speedup_min_median_max")
        seeds = (f"; per seed {m['seeds_reaching']}/{len(results['seeds'])} reach it"
                 + (f", {per_seed[0]:.2f}x-{per_seed[2]:.2f}x (median {per_seed[1]:.2f}x)" if per_seed else ""))
        print(f"  {results['labels'][mode]:30s} lr {results['chosen_learning_rates'][mode]:<8g} final "
              f"{m['final_mean']:.3f} +- {m['final_std']:.3f}  {reach}{seeds}")
    if h.get("largest_measurable_speedup"):
        print(f"(with evaluations every {results['steps'][1]} steps, no speed-up above "
              f"{h['largest_measurable_speedup']:.2f}x can be measured)")


def print_sampling(results: dict) -> None:
    h = results["headline"]
    print_input_quality(results)
    print(f"target: {h['target_what']} = {h['target']:.3f}")
    for mode in results["modes"]:
        for sampler, m in h["modes"][mode].items():
            reach = (f"reaches it with S = {m['steps_to_reach']} ({m['fewer_steps']:.2f}x fewer steps)"
                     if m["reached"] else "not reached")
            best = (f"; best {m['best_mean']:.3f} at S = {m['best_steps']}, quality falls with more steps"
                    if m["falls_with_steps"] else "")
            print(f"  {results['labels'][mode]:30s} {sampler:12s} at S = {h['reference_steps']}: "
                  f"{m['at_reference_mean']:.3f} +- {m['at_reference_std']:.3f}; {reach}{best}")
    if not h["target_is_saturated"]:
        print("warning: standard DDPM's quality falls with more sampling steps, so its value at the largest S is no "
              "plateau and the ratios above are not sampling speed-ups; train longer (--steps) before comparing S.")


def _against_target(ratio: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"  (target <= {target:g}: {'met' if ratio <= target else 'NOT met'})"


def print_overhead(results: dict) -> None:
    targets = results.get("targets", {})
    machine = results["machine"]
    print(f"clock: {machine.get('clock', 'wall time')}; encoders: {machine.get('encoder', '?')}; "
          f"precision: {machine.get('mixed_precision', 'no')}")
    for task in ("weather", "speech"):
        for what in ("train_step", "restore"):
            r = results[task][what]
            print(f"{task:8s} {what:10s} {r['baseline_s'] * 1e3:9.1f} ms -> {r['restoregrad_s'] * 1e3:9.1f} ms  "
                  f"ratio {r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]"
                  f"{_against_target(r['ratio'], targets.get(what))}")
        memory = results[task]["train_peak_memory_bytes"]
        if memory["ratio"] is not None:
            print(f"{task:8s} step memory {memory['baseline'] / 2**20:7.1f} MiB -> "
                  f"{memory['restoregrad'] / 2**20:7.1f} MiB  ratio {memory['ratio']:.3f}  ({memory['what']})"
                  f"{_against_target(memory['ratio'], targets.get('train_peak_memory'))}")
        throughput = results[task].get("train_samples_per_s")
        ceiling = results[task].get("train_step_vs_matmul_ceiling")
        if throughput and ceiling:
            print(f"{task:8s} throughput {throughput['baseline']:.2f} -> {throughput['restoregrad']:.2f} samples/s; "
                  f"{ceiling['baseline']['fraction']:.1%} -> {ceiling['restoregrad']['fraction']:.1%} of a "
                  f"{ceiling['matmul_dtype']} matmul's {ceiling['matmul_flops_per_s'] / 1e12:.3g} TFLOP/s")
    for c in results["scheduler_step"]["cases"]:
        faults = ("" if c["baseline_page_faults_per_step"] is None else
                  f"  page faults/step {c['baseline_page_faults_per_step']:.0f} -> "
                  f"{c['restoregrad_page_faults_per_step']:.0f}")
        print(f"scheduler step {' x '.join(map(str, c['shape'])):17s} {c['case']:9s} "
              f"{c['baseline_us_per_step']:8.1f} us -> {c['restoregrad_us_per_step']:8.1f} us  "
              f"ratio {c['ratio']:.3f} [{c['ratio_min']:.3f}, {c['ratio_max']:.3f}]"
              f"{_against_target(c['ratio'], targets.get('scheduler_step'))}{faults}")

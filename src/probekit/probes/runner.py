"""Run a probe spec on a model and a dataset: tasks -> activations -> batched probes -> a tidy results table.

Typical use (what ``probekit probe`` does)::

    spec = load_spec("probes/default.yaml")
    ds = load_dataset("data/bios_single")
    target = load_probe_model("runs/ntp_single")            # probekit checkpoint or Hugging Face directory
    check_compatible(target, ds)
    df = run_spec(spec, ds, [target, random_init_like(target)])
    write_results(df, out_dir); render_figures(df, out_dir / "figures")

Every check (spec against the model's layers, tokenizers, spans, context length) runs before any activation is
collected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probekit.data.tokens import TokenView
from probekit.errors import UserError, UserFileNotFoundError
from probekit.model.foreign import is_hf_dir
from probekit.probes.activations import (
    collect_activations,
    estimate_bytes,
    hook_points,
    model_dims,
)
from probekit.probes.embed_probe import HOOK_NAME as EMBED_HOOK
from probekit.probes.embed_probe import train_embed_probe
from probekit.probes.engine import ProbeFit, run_probes
from probekit.probes.spec import ProbeSpec
from probekit.probes.tasks import (
    ProbeTaskSet,
    build_p_tasks,
    build_q_tasks,
    control_labels,
    people_split,
)
from probekit.reporting.results import make_table
from probekit.stats import person_bootstrap

log = logging.getLogger(__name__)

RANDOM_INIT_SUFFIX = " (random init)"


@dataclass
class ProbeModel:
    """A model to probe, with the names that go into the results table."""

    model: Any  # probekit HookedLM or TransformerBridge
    name: str
    objective: str = "unknown"
    dataset: str = "unknown"
    tokenizer: Any = None  # the tokenizer saved with the model (None if unknown)
    source: Path | None = None  # checkpoint / HF directory
    kind: str = "probekit"  # "probekit" or "hf"
    seed: int | None = None  # the training seed (probekit checkpoints), carried into the results table


def load_probe_model(path: str | Path, device: str = "cpu", name: str | None = None) -> ProbeModel:
    """A probekit checkpoint (or training run) directory, or a Hugging Face causal-LM directory (config.json with
    ``architectures``; loaded through TransformerBridge)."""
    path = Path(path)
    if not path.exists():
        raise UserFileNotFoundError(f"model directory {path} does not exist")
    if is_hf_dir(path):
        from probekit.model.hf import load_bridge, load_dir_tokenizer

        bridge = load_bridge(path, device=device)
        bridge.eval()
        return ProbeModel(bridge, name or path.name, "unknown", "unknown", load_dir_tokenizer(path), path, "hf")
    from probekit.model.checkpoint import load_checkpoint

    model, tok, meta = load_checkpoint(path, device=device)
    if name is None:  # a run directory's name, or <run>/step_N for one of its checkpoints
        name = f"{path.parent.parent.name}/{path.name}" if path.name.startswith("step_") else path.name
    seed = (meta.get("train_config") or {}).get("seed")
    return ProbeModel(
        model,
        name,
        str(meta.get("objective") or "unknown"),
        str(meta.get("dataset") or "unknown"),
        tok,
        Path(meta.get("path", path)),
        "probekit",
        int(seed) if seed is not None else None,
    )


def load_checkpoint_series(path: str | Path, which: str = "latest", device: str = "cpu",
                           name: str | None = None) -> list[tuple[int | None, ProbeModel]]:  # fmt: skip
    """``(step, model)`` for the checkpoints of a probekit run directory that ``which`` names: ``latest`` (the
    model as ``load_probe_model`` loads it, step None), ``all`` (every saved checkpoint, oldest first) or a comma
    list of steps (``"250,1000"``). Series models are named ``<run>@<step>``."""
    if which == "latest":
        return [(None, load_probe_model(path, device=device, name=name))]
    from probekit.model.checkpoint import list_checkpoints, step_of

    path = Path(path)
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise UserError(f"--checkpoints {which}: {path} is not a training run with saved checkpoints "
                        "(checkpoints/step_*); give a run directory (`probekit train --out`)")  # fmt: skip
    by_step = {step_of(c): c for c in ckpts}
    if which == "all":
        steps = sorted(by_step)
    else:
        try:
            steps = [int(x) for x in which.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--checkpoints {which!r}: give latest, all, or a comma list of steps such as "
                            f"{','.join(map(str, sorted(by_step)[:2]))}") from None  # fmt: skip
        missing = [st for st in steps if st not in by_step]
        if missing or not steps:
            raise UserError(f"--checkpoints: no checkpoint at step(s) {missing} of {path}; saved steps: "
                            f"{', '.join(map(str, sorted(by_step)))}")  # fmt: skip
    base = name or path.name
    return [(st, load_probe_model(by_step[st], device=device, name=f"{base}@{st}")) for st in steps]


def random_init_like(target: ProbeModel, seed: int = 12345) -> ProbeModel:
    """The control: a randomly initialised model of the same shape (and the same names + " (random init)")."""
    if target.kind == "probekit":
        from probekit.model.transformer import HookedLM

        cfg = dataclasses.replace(target.model.cfg, seed=seed)
        model = HookedLM(cfg).to(next(target.model.parameters()).device).eval()
    else:
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoConfig, AutoModelForCausalLM

        if target.source is None:
            raise UserError("a random-init control of a Hugging Face model needs its directory")
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(target.source))).eval()
        device = next(target.model.parameters()).device
        bridge = TransformerBridge.boot_transformers(str(target.source), device=device, hf_model=hf)
        bridge.eval()
        return dataclasses.replace(target, model=bridge, name=target.name + RANDOM_INIT_SUFFIX)
    return dataclasses.replace(target, model=model, name=target.name + RANDOM_INIT_SUFFIX)


def token_view(m: ProbeModel, ds: Any) -> TokenView:
    """The tokens ``m`` reads: its own tokenizer's (saved beside it), else the dataset's."""
    return TokenView(m.tokenizer if m.tokenizer is not None else ds.tokenizer,
                     name=None if m.kind == "probekit" else str(m.source or m.name))  # fmt: skip


def check_compatible(target: ProbeModel, ds: Any) -> None:
    """The model's tokenizer must fit its vocabulary (a larger tokenizer would make ids the model lacks) and encode
    the dataset's text (no unknown tokens in its names and first biography entries; every entry is checked again
    when the tasks are built). The dataset's own tokenizer is not needed: text and character spans are mapped to
    the model's tokens."""
    dims = model_dims(target.model)
    view = token_view(target, ds)
    if view.info.vocab_size > dims.vocab_size:
        raise UserError(f"model {target.name}'s tokenizer has {view.info.vocab_size} tokens but the model only "
                        f"{dims.vocab_size} embedding rows; save the tokenizer the model was trained with beside "
                        "it")  # fmt: skip
    people = list(ds.people)[:50]
    view.check_encodable([p.full_name for p in people], f"the names of dataset {ds.root}")
    seen = {p.pid for p in people}
    view.check_encodable([e.text for e in ds.entries[:200] if e.pid in seen], f"the biographies of dataset {ds.root}")


def build_tasks(spec: ProbeSpec, ds: Any, view: TokenView | None = None) -> list[ProbeTaskSet]:
    """The P and/or Q task sets a spec asks for (people split seeded by ``spec.seed``), in ``view``'s tokens
    (default: the dataset's tokenizer)."""
    people = people_split(ds, spec.val_fraction, spec.seed, spec.max_people)
    out = []
    for kind in spec.kinds:
        if kind == "p":
            out.append(build_p_tasks(ds, people, spec.positions, spec.attributes, spec.targets,
                                     spec.entries_per_person, view=view))  # fmt: skip
        else:
            out.append(build_q_tasks(ds, people, spec.attributes, spec.targets, view=view))
    return out


def validate_run(spec: ProbeSpec, tasks: dict[str, list[ProbeTaskSet]], models: list[ProbeModel]) -> None:
    """Every check that needs the model, before any work: layers exist, inputs fit the context (``tasks``: the
    task sets per model name)."""
    for m in models:
        dims = model_dims(m.model)
        if spec.embed_probe is not None and "hook_embed" not in m.model.hook_dict:
            raise UserError(
                f"spec {spec.name!r} asks for the embedding-update probe, but model {m.name} has no 'hook_embed' "
                "hook to add the update at; drop embed_probe from the spec for this model"
            )
        for hook in spec.hooks:
            hook_points(dims.n_layers, [hook], spec.resolve_layers(hook, dims.n_layers))
        for t in tasks[m.name]:
            longest = max(len(s) for s in t.sequences)
            if longest > dims.n_ctx:
                raise UserError(
                    f"{t.kind.upper()}-probe inputs reach {longest} tokens but model {m.name} has a context of "
                    f"{dims.n_ctx}: positions beyond the context cannot be read; use a model with a larger n_ctx"
                )


def _embed_rows(
    spec: ProbeSpec,
    m: ProbeModel,
    t: ProbeTaskSet,
    dataset_name: str,
    progress: bool,
    logs: list[dict[str, Any]] | None,
    people: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Results rows of the paper's embedding-update probe on task set ``t`` (hook ``embed_update``, last layer);
    its training log (per-epoch loss and validation accuracy) is appended to ``logs``."""
    cfg = spec.embed_probe
    assert cfg is not None
    runs = [("", t)] + ([(" control task", _control_task(t, spec))] if spec.control_task else [])
    results, ranks = [], []
    for what, task in runs:
        desc = f"{m.name}: {t.kind.upper()}-probes (embedding update{what}), epochs"
        with tqdm(total=cfg.epochs, desc=desc, unit="epoch", disable=not progress, leave=False) as bar:
            fits, log_ = train_embed_probe(m.model, task, cfg, progress=bar.update)
        epochs = sorted({e for row in log_["chosen_epochs"] for e in row})
        log.info("%s %s embedding-update probe%s: rank %d, %d epochs run, heads read at epochs %s", m.name, t.kind,
                 what, log_["rank"], len(log_["epochs"]), epochs)  # fmt: skip
        if logs is not None:
            logs.append({"model": m.name, "probe_kind": t.kind, "control_task": bool(what), **log_})
        results.append(fits)
        ranks.append(log_["rank"])
    layer = model_dims(m.model).n_layers
    engine = f"embed_update_r{ranks[0]}"
    fits = results[0]
    stats = probe_stats(fits, results[1] if len(results) > 1 else None, t, spec)
    if people is not None and t.kind == "q":
        people += person_rows(m, t, fits, EMBED_HOOK, layer, "causal")
    return [{**_row(m, dataset_name, t, f, EMBED_HOOK, layer, t.position_names[f.group], engine), **st}
            for f, st in zip(fits, stats)]  # fmt: skip


def model_readings(spec: ProbeSpec, m: ProbeModel) -> list[str]:
    """The readings to probe ``m`` in: the spec's list, or for ``auto`` the causal reading plus, for a model
    trained with ABI, the abi reading (how an ABI model sees its prompts)."""
    if spec.readings != "auto":
        return list(spec.readings)
    return ["causal", "abi"] if m.objective == "abi" and m.kind == "probekit" else ["causal"]


def _control_task(t: ProbeTaskSet, spec: ProbeSpec) -> ProbeTaskSet:
    """Task set ``t`` with its labels replaced by the control labelling (``probekit.probes.tasks.control_labels``)."""
    return dataclasses.replace(t, labels=control_labels(t, spec.seed))


def probe_stats(
    fits: list[ProbeFit], controls: list[ProbeFit] | None, t: ProbeTaskSet, spec: ProbeSpec
) -> list[dict[str, Any]]:
    """Interval and control columns for ``fits`` (one dict per fit, in order): the person-clustered bootstrap
    interval of the accuracy (``ci_low``, ``ci_high``), and with ``controls`` (the same probes, in the same
    order, trained on the control labelling) ``control_accuracy``, ``selectivity`` and its interval. A probe and
    its control are resampled with the same people draws, so the selectivity interval is that of the
    difference."""
    out: list[dict[str, Any]] = [{} for _ in fits]
    pids = t.pids[t.split.test]  # [n_test] the person of each test row
    n_people = len(np.unique(pids))
    live = [i for i, f in enumerate(fits) if f.test_correct is not None]
    for i, f in enumerate(fits):
        out[i]["n_test_people"] = n_people
        if controls is not None:
            c = controls[i]
            out[i]["control_accuracy"] = c.accuracy
            out[i]["selectivity"] = f.accuracy - c.accuracy
    if not live or spec.bootstrap == 0 or not len(pids):
        return out
    acc = np.stack([np.asarray(fits[i].test_correct) for i in live]).astype(np.float64)  # [F, n_test]
    iv = person_bootstrap(acc, pids, spec.bootstrap, spec.ci_level, spec.seed)
    for j, i in enumerate(live):
        out[i]["ci_low"], out[i]["ci_high"] = float(iv.low[j]), float(iv.high[j])
    if controls is not None:
        both = [i for i in live if controls[i].test_correct is not None]
        if both:
            ctrl = np.stack([np.asarray(controls[i].test_correct) for i in both]).astype(np.float64)  # [F', n_test]
            row = {i: j for j, i in enumerate(live)}  # fit index -> its row of acc
            diff = acc[[row[i] for i in both]] - ctrl
            sv = person_bootstrap(diff, pids, spec.bootstrap, spec.ci_level, spec.seed)
            for j, i in enumerate(both):
                out[i]["selectivity_ci_low"], out[i]["selectivity_ci_high"] = float(sv.low[j]), float(sv.high[j])
    return out


def person_rows(
    m: ProbeModel, t: ProbeTaskSet, fits: list[ProbeFit], hook: str, layer: int, reading: str
) -> list[dict[str, Any]]:
    """Per-test-person correctness of Q-probe fits (one row per fit x P_test person): what lets a comparison
    resample people jointly across probes and evaluations (``probekit.reporting.compare``). Q task sets have one row per
    person, so a fit's ``test_correct`` lines up with the task's test pids."""
    pids = t.pids[t.split.test]  # [n_test]
    rows = []
    for f in fits:
        if f.test_correct is None:
            continue
        attr, target = t.label_keys[f.label]
        head = {"model": m.name, "objective": m.objective, "reading": reading, "hook": hook, "layer": layer,
                "attribute": attr, "target_kind": target}  # fmt: skip
        rows += [{**head, "pid": int(pid), "correct": bool(ok)} for pid, ok in zip(pids, f.test_correct)]
    return rows


def _row(
    m: ProbeModel,
    dataset_name: str,
    t: ProbeTaskSet,
    f: ProbeFit,
    hook: str,
    layer: int,
    position: str,
    engine: str,
) -> dict[str, Any]:
    """One results-table row for fit ``f`` of task set ``t`` on model ``m``."""
    attr, target = t.label_keys[f.label]
    return {
        "model": m.name, "objective": m.objective, "dataset": dataset_name, "probe_kind": t.kind,
        "hook": hook, "layer": layer, "position": position, "attribute": attr, "target_kind": target,
        "accuracy": f.accuracy, "baseline": f.baseline, "n_train": f.n_train, "n_test": f.n_test,
        "n_classes": f.n_classes, "status": f.status, "n_test_unseen": f.n_test_unseen,
        "examples_per_class": f.examples_per_class, "train_accuracy": f.train_accuracy,
        "val_accuracy": f.val_accuracy, "l2": f.l2, "engine": engine, "seed": m.seed,
        **({} if t.view is None else {"tokenizer": t.view.info.name, "tokenizer_type": t.view.info.kind,
                                      "tokenizer_vocab": t.view.info.vocab_size}),
    }  # fmt: skip


def run_spec(
    spec: ProbeSpec,
    ds: Any,
    models: list[ProbeModel],
    engine: str | None = None,
    work_dir: str | Path | None = None,
    progress: bool = True,
    embed_logs: list[dict[str, Any]] | None = None,
    q_people: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Probe every model with ``spec`` on ``ds``; returns the tidy results table (``probekit.reporting.results``).

    ``engine`` overrides ``spec.engine``. Activations go to memory or, when ``spec.storage`` says so (or auto
    and larger than ``spec.memory_limit_mb``), to float16 memmaps in ``work_dir`` (a temp dir if None), deleted
    after each task set. ``embed_logs`` (a list) collects the embedding-update probe's training logs;
    ``q_people`` (a list) collects every Q-probe's per-test-person correctness (``person_rows``).
    """
    ecfg = spec.engine_config(engine)
    by_view: dict[str, list[ProbeTaskSet]] = {}  # models that tokenize alike share their task sets
    tasks: dict[str, list[ProbeTaskSet]] = {}
    for m in models:
        view = token_view(m, ds)
        if view.key not in by_view:
            by_view[view.key] = build_tasks(spec, ds, view)
        tasks[m.name] = by_view[view.key]
    validate_run(spec, tasks, models)
    with fixed_threads(spec.threads):
        return _run_spec(spec, ds, models, ecfg, tasks, work_dir, progress, embed_logs, q_people)


@contextlib.contextmanager
def fixed_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: leave the count alone), restoring the count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_spec(
    spec: ProbeSpec,
    ds: Any,
    models: list[ProbeModel],
    ecfg: Any,
    tasks: dict[str, list[ProbeTaskSet]],
    work_dir: str | Path | None,
    progress: bool,
    embed_logs: list[dict[str, Any]] | None,
    q_people: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """``run_spec`` after its checks (inside its thread setting)."""
    rows: list[dict[str, Any]] = []
    dataset_name = str(getattr(ds, "name", None) or Path(ds.root).name)
    tmp_root = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="probekit_acts_"))
    try:
        for m in models:
            dims = model_dims(m.model)
            # the torch engine works where the model is (a GPU model gets GPU probes)
            mcfg = dataclasses.replace(ecfg, device=str(next(m.model.parameters()).device))
            points = [
                p
                for hook in spec.hooks
                for p in hook_points(dims.n_layers, [hook], spec.resolve_layers(hook, dims.n_layers))
            ]
            for t, reading in [(t, r) for t in tasks[m.name] for r in model_readings(spec, m)]:
                if spec.frozen:  # off in a spec that runs only the paper's probe
                    size = estimate_bytes(t.n, len(t.position_names), len(points), dims.d_model)
                    storage = spec.storage
                    if storage == "auto":
                        storage = "disk" if size > spec.memory_limit_mb * 2**20 else "memory"
                    act_dir = tmp_root / f"acts_{t.kind}"
                    desc = f"{m.name}: {t.kind.upper()}-probe activations ({reading} reading)"
                    with tqdm(total=t.n, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
                        acts = collect_activations(
                            m.model, t.sequences, t.positions, points, position_names=t.position_names,
                            batch_size=spec.batch_size, storage=storage, out_dir=act_dir, overwrite=True,
                            progress=bar.update, reading=reading,
                        )  # fmt: skip
                    K = len(t.label_keys)
                    labels = t.labels
                    if spec.control_task:  # the control labelling as K more label sets, fitted in the same sweep
                        labels = np.concatenate([labels, control_labels(t, spec.seed)])
                    n_fits = acts.n_points * acts.n_positions * len(labels)
                    desc = f"{m.name}: {t.kind.upper()}-probes ({mcfg.backend})"
                    with tqdm(total=n_fits, desc=desc, unit="probe", disable=not progress, leave=False) as bar:
                        fits = run_probes(acts.features(), labels, t.split, mcfg, progress=bar.update)
                    real = [f for f in fits if f.label < K]
                    ctrl = {(f.group, f.label - K): f for f in fits if f.label >= K}
                    controls = [ctrl[(f.group, f.label)] for f in real] if spec.control_task else None
                    for f, st in zip(real, probe_stats(real, controls, t, spec)):
                        point, position = acts.group(f.group)
                        rows.append({**_row(m, dataset_name, t, f, point.hook, point.layer, position, mcfg.backend),
                                     **st, "reading": reading})  # fmt: skip
                    if q_people is not None and t.kind == "q":
                        for f in real:
                            point, _ = acts.group(f.group)
                            q_people += person_rows(m, t, [f], point.hook, point.layer, reading)
                    del acts
                    shutil.rmtree(act_dir, ignore_errors=True)
                if spec.embed_probe is not None and reading == "causal":  # the paper's probe reads causally
                    rows += _embed_rows(spec, m, t, dataset_name, progress, embed_logs, q_people)
    finally:
        if work_dir is None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    return make_table(rows)

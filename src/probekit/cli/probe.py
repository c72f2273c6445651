"""``probekit probe``: P- and Q-probe a trained model (and optionally a random-init control) with a probe spec."""

from __future__ import annotations

import argparse
import time

COMMANDS = {"probe": "P-/Q-probe a model's residual stream for biography attributes"}


def cmd_probe(args: argparse.Namespace) -> int:
    from probekit.io import check_output, output_lock

    check_output(args.out, {"--data": args.data, "--model": args.model, "--spec": args.spec})
    with output_lock(args.out):  # one writer per output directory
        if _is_reversal_dir(args.data):
            return _cmd_probe_reversal(args)
        return _cmd_probe(args)


def _is_reversal_dir(data: str) -> bool:
    import json
    from pathlib import Path

    manifest = Path(data) / "manifest.json"
    try:
        return manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("kind") == "reversal"
    except (OSError, ValueError):
        return False


def _cmd_probe_reversal(args: argparse.Namespace) -> int:
    """The reversal read-outs (``probekit.probes.reversal``) of a model (and its random-init copy)."""
    from pathlib import Path
    from types import SimpleNamespace

    from probekit import provenance as prov
    from probekit.data.reversal import load_reversal_dir
    from probekit.errors import UserError, check_device, check_threads
    from probekit.io import atomic_dir, atomic_write_json, prepare_output_dir
    from probekit.probes.reversal import ReversalProbeSpec, run_reversal_probes
    from probekit.probes.runner import load_probe_model, random_init_like, token_view
    from probekit.serde import from_dict, load_mapping, to_dict

    t0 = time.perf_counter()
    check_threads(args.threads, "--threads", allow_zero=True)
    check_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    raw = load_mapping(Path(args.spec), "probe spec")
    if raw.pop("kind", None) != "reversal":
        raise UserError(f"{args.data} is reversal-curse data: give a reversal read-out spec (kind: reversal; see "
                        "probes/reversal.yaml) as --spec")  # fmt: skip
    raw.pop("name", None)
    spec = from_dict(ReversalProbeSpec, raw)
    if args.checkpoints != "latest":
        raise UserError("--checkpoints applies to biography probes; probe one checkpoint of a reversal model")
    out = prepare_output_dir(args.out, args.overwrite)
    data = load_reversal_dir(args.data)
    target = load_probe_model(args.model, device=args.device, name=args.name)
    models = [target] + ([random_init_like(target, seed=spec.seed + 12345)] if args.control_random else [])
    print(f"reversal read-outs of {target.name} ({target.kind}, objective {target.objective}) on {data.root}: "
          f"{list(spec.readouts)}, {spec.templates} templates")  # fmt: skip
    import pandas as pd

    tables, people = [], []
    for m in models:  # an ABI model is also read as it reads its prompts (bidirectional Part A)
        for reading in ["causal", "abi"] if m.objective == "abi" and m.kind == "probekit" else ["causal"]:
            view = token_view(m, SimpleNamespace(tokenizer=data.tokenizer))
            t, p = run_reversal_probes(m.model, data, view, spec, m.name, m.objective, reading)
            tables.append(t)
            people.append(p)
    table, per_person = pd.concat(tables, ignore_index=True), pd.concat(people, ignore_index=True)
    link = None
    if args.reversal_eval:  # the per-person link: reversal success against the read-out, person by person
        from probekit.probes.reversal import reversal_link

        preds = Path(args.reversal_eval) / "predictions.jsonl"
        if not preds.is_file():
            raise UserError(f"--reversal-eval {args.reversal_eval} has no predictions.jsonl; give the output "
                            "directory of `probekit eval reversal` for this model")  # fmt: skip
        link = reversal_link(per_person[~per_person["model"].str.endswith("(random init)")],
                             pd.read_json(preds, lines=True), data, spec.bootstrap, spec.seed)  # fmt: skip
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        table.to_csv(tmp / "results.csv", index=False)
        per_person.to_csv(tmp / "people.csv", index=False)
        if link is not None:
            link.to_csv(tmp / "link.csv", index=False)
        rec = prov.record(inputs={"model": args.model, "data": args.data, "spec": args.spec},
                          seeds={"probe": spec.seed}, engine="ridge-unembedding")  # fmt: skip
        prov.append_session(tmp, rec)
        atomic_write_json(tmp / "run.json", {"spec": to_dict(spec), "model": str(args.model), "data": str(args.data),
                                             "models": [m.name for m in models],
                                             "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    best = table.sort_values("accuracy").groupby(["model", "readout", "position", "target", "test_set"]).tail(1)
    cols = ["model", "readout", "position", "target", "test_set", "layer", "accuracy", "ci_low", "ci_high",
            "chance", "selectivity"]  # fmt: skip
    print(best.sort_values(cols[:5])[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out / 'results.csv'} and {out / 'people.csv'} ({time.perf_counter() - t0:.0f}s)")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from probekit import provenance as prov
    from probekit.data.store import load_dataset
    from probekit.errors import UserError, check_device, check_threads
    from probekit.io import atomic_dir, atomic_write_json, prepare_output_dir
    from probekit.probes.activations import model_dims
    from probekit.probes.runner import check_compatible, load_checkpoint_series, random_init_like, run_spec
    from probekit.probes.spec import load_spec
    from probekit.reporting.figures import write_figures
    from probekit.reporting.plots import build_figures, check_layer
    from probekit.reporting.results import summary_table, write_results
    from probekit.serde import to_dict

    t0 = time.perf_counter()
    check_threads(args.threads, "--threads", allow_zero=True)
    check_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    given = args.spec_flags.given(args).get("spec", {})
    if given:  # --spec.* flags replace the spec file's settings
        from probekit.cli.flags import merge
        from probekit.probes.spec import ProbeSpec
        from probekit.serde import from_dict

        spec = from_dict(ProbeSpec, merge(to_dict(spec), given))
    if args.threads:  # an explicit count overrides the spec's (fixed, thread-independent) setting
        spec.threads = args.threads
    engine = spec.engine
    out = prepare_output_dir(args.out, args.overwrite)
    ds = load_dataset(args.data)
    series = load_checkpoint_series(args.model, args.checkpoints, device=args.device, name=args.name)
    target = series[-1][1]  # the latest (or last named) checkpoint: its figures, its random-init control
    for _, m in series:
        check_compatible(m, ds)
    if args.reversal_eval:
        raise UserError("--reversal-eval applies to reversal-curse data (`probekit data reversal`); drop it here")
    if args.layer is not None and not ("p" in spec.kinds and "resid" in spec.hooks):
        raise UserError(f"--layer {args.layer} picks the layer of the P-probe grids, and spec {spec.name!r} has no "
                        "residual P-probes; drop --layer (Q-probe figures show every layer)")  # fmt: skip
    if args.layer is not None and "p" in spec.kinds and "resid" in spec.hooks:
        layers = spec.resolve_layers("resid", model_dims(target.model).n_layers)
        if args.layer not in layers:
            raise UserError(f"--layer {args.layer}: the spec probes residual layers {layers} of this model; choose "
                            "one of those (or omit --layer for the last)")  # fmt: skip
    models = [m for _, m in series] + ([random_init_like(target, seed=spec.seed + 12345)] if args.control_random
                                       else [])  # fmt: skip
    steps = {m.name: st for st, m in series if st is not None}
    if steps:
        print(f"checkpoints of {args.model}: steps {', '.join(map(str, steps.values()))}")
    print(f"probing {target.name} ({target.kind}, objective {target.objective}) on dataset {ds.name} "
          f"with spec {spec.name!r}: kinds {list(spec.kinds)}, engine {engine}"
          + (", plus a random-init control" if args.control_random else ""))  # fmt: skip
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        embed_logs: list[dict[str, object]] = []
        df = run_spec(spec, ds, models, engine=engine, work_dir=tmp / ".activations", progress=not args.no_progress,
                      embed_logs=embed_logs)  # fmt: skip
        from probekit.model.checkpoint import weights_file

        rec = prov.record(inputs={"model": weights_file(args.model), "data": args.data, "spec": args.spec},
                          seeds={"probe": spec.seed, "control_random": spec.seed + 12345}, engine=engine)  # fmt: skip
        if steps:  # a checkpoint series: the step of each row (random-init controls have none)
            df["step"] = df["model"].astype(str).map(steps).astype("Int64")
        write_results(df, tmp, provenance=rec)
        fig_rec = {**rec, "tables": {"results.parquet": prov.sha256_file(tmp / "results.parquet")}}
        shown = df[~df["model"].astype(str).isin([m for m in steps if m != target.name])]  # per-model: the last
        check_layer(shown, args.layer)
        figs = build_figures(shown, args.layer)
        if len(steps) > 1:  # storage through training: layer x step
            from probekit.reporting.dynamics import dynamics_figure, dynamics_table

            figs.append(dynamics_figure(dynamics_table(df)))
        report = write_figures(figs, tmp / "figures", not args.no_png, fig_rec)
        prov.append_session(tmp, rec)
        atomic_write_json(tmp / "run.json", {
            "spec": to_dict(spec),
            "engine": engine, "model": str(args.model), "data": str(args.data), "models": [m.name for m in models],
            "seconds": round(time.perf_counter() - t0, 1), "png_error": report.png_error,
            "embed_probe_training": embed_logs,  # per model and probe kind: rank, chosen epoch, per-epoch curves
        })  # fmt: skip
    print()
    print(summary_table(df))
    n_fig = len({p.stem for p in report.files})
    print(f"\nwrote {out / 'results.parquet'}, {out / 'results.csv'} ({len(df)} probes) and {n_fig} figures in "
          f"{out / 'figures'} ({time.perf_counter() - t0:.0f}s)")  # fmt: skip
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe",
        help=COMMANDS["probe"],
        description=(
            "Collect residual-stream activations of a model on a dataset's biographies (P-probes: the token "
            "before each attribute value) and bare names (Q-probes: the last name token), train linear probes "
            "per layer, position, attribute and target, and write results.parquet/.csv plus figures. "
            "Train on P_train people, test on P_test people."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--spec", required=True, help="probe spec YAML (see probes/default.yaml)")
    p.add_argument("--model", required=True,
                   help="probekit checkpoint or run directory, or a Hugging Face causal-LM directory")  # fmt: skip
    p.add_argument("--data", required=True, help="dataset directory (from `probekit data bios`)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty unless --overwrite)")
    p.add_argument("--checkpoints", default="latest", metavar="WHICH",
                   help="with a run directory: latest, all (every saved checkpoint: a step column and a layer x "
                        "step dynamics figure), or a comma list of steps, e.g. 250,1000")  # fmt: skip
    p.add_argument("--reversal-eval", default=None, metavar="DIR",
                   help="reversal data only: the `probekit eval reversal` output of this model; writes link.csv, "
                   "the per-person agreement of the read-out with reversal success")  # fmt: skip
    p.add_argument("--control-random", action="store_true",
                   help="also probe a random-init model of the same shape ('<name> (random init)')")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--name", default=None, help="model name in the results (default: the directory name)")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the position x attribute figures (omit: each model's last layer)")  # fmt: skip
    p.add_argument("--no-png", action="store_true", help="write HTML and CSV figures only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and batch jobs)")
    p.add_argument("--device", default="cpu", help="torch device for the model and the torch probe engine")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads for this command, probes included (0: torch's default for the model, "
                   "the spec's `threads` for probes, 1 unless set, so tables do not depend on the thread "
                   "count)")  # fmt: skip
    from probekit.cli.flags import add_flags
    from probekit.probes.config import BACKENDS
    from probekit.probes.spec import STORAGE, ProbeSpec

    group = p.add_argument_group("probe spec settings (ProbeSpec; each replaces the --spec file's value)")
    flags = add_flags(group, ProbeSpec, prefix=("spec",), names={"spec.engine": ("--spec.engine", "--engine")},
                      choices={"spec.engine": BACKENDS, "spec.storage": STORAGE})  # fmt: skip
    p.set_defaults(func=cmd_probe, spec_flags=flags)

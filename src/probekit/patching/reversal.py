"""Patching on reversal-curse prompts: where the reversed answer is read from.

Two prompt directions, built from the data's held-out test templates (``probekit.data.reversal``):

- ``d2n``: description-first prompts (``The <description> is``), answered with the name. Clean = person A's
  description, corrupted = person B's in the same template; the answer is A's name (its first token), ``p_other``
  B's. Tasks: ``D2N`` on the ``d2p`` people (trained in this direction) and ``N2D-reverse`` on the ``p2d`` people
  (seen only name first).
- ``n2d``: name-first prompts (``<name> is the``: the template up to the description plus its first word, so the
  answer's first token is the description's role word), answered with the description. Tasks: ``N2D`` on ``p2d``
  and ``D2N-reverse`` on ``d2p`` people.

Positions are aligned by role as for the biography prompts (``probekit.patching.patch``): template tokens, the
swapped span (a name's parts, or the description as one part counted back from its last token) and the last
token; the ``<span>_all`` row patches the whole swapped span at once (pairs whose spans have as many tokens). Both
people of a pair come from the same task's people; the template is the source's, drawn in a seeded order.
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd

from probekit.data.reversal import ReversalConfig, ReversalData, _split, template_split
from probekit.data.tokens import TokenView, tokenizer_record
from probekit.errors import UserError
from probekit.patching.config import PatchConfig
from probekit.patching.patch import (
    Encoded,
    PatchResult,
    Template,
    TracePair,
    align_roles,
    correct_mask,
    encode_prompt,
    summarize,
    trace_pairs,
)
from probekit.probes.activations import hook_points, model_dims

TASKS: dict[str, tuple[str, str]] = {  # task -> (prompt direction, people's group)
    "D2N": ("d2n", "d2p"), "N2D-reverse": ("d2n", "p2d"), "N2D": ("n2d", "p2d"), "D2N-reverse": ("n2d", "d2p"),
}  # fmt: skip


def _template(template: str, person: Any, direction: str) -> tuple[Template, str]:
    """The prompt around the swapped span (the description for d2n, the name for n2d) and the answer text."""
    if direction == "d2n":
        prompt = _split(template, person.name, "\0", "<name>").prompt
        before, _, after = prompt.partition("\0")
        return Template(before, after), person.name
    prompt = _split(template, "\0", person.description, "<description>").prompt + " the"
    before, _, after = prompt.partition("\0")
    return Template(before, after), person.description[len("the ") :]


def reversal_pairs(model: Any, data: ReversalData, view: TokenView, task: str, cfg: PatchConfig
                   ) -> tuple[list[TracePair], dict[str, int]]:  # fmt: skip
    """Up to ``cfg.n_pairs`` pairs of ``task``'s people (see the module docstring) and counts of what was dropped."""
    direction, group = TASKS[task]
    people = [i for i, p in enumerate(data.people) if p.group == group]
    templates = template_split(ReversalConfig(**data.manifest["config"]))[
        f"{'d2p' if direction == 'd2n' else 'p2d'}_test"
    ]
    rng = random.Random(f"{cfg.seed}-{task}")
    order = people[:]
    rng.shuffle(order)
    span = "description" if direction == "d2n" else "name"

    def encode(pid: int, tpl_text: str, filler: int) -> tuple[Encoded, list[int]]:
        tpl, _ = _template(tpl_text, data.people[pid], direction)
        text = data.people[filler].description if direction == "d2n" else data.people[filler].name
        enc = encode_prompt(view, tpl, text, qa=False, span=span)
        _, answer = _template(tpl_text, data.people[filler], direction)
        ids, offsets = view.encode(f"{enc.text} {answer}")
        start = len(enc.text) + 1
        return enc, ids[view.span(offsets, start, start + len(answer))[0] :]

    counts = {"candidates": len(order), "misaligned": 0, "source_wrong": 0, "no_target": 0}
    pairs: list[TracePair] = []
    for k, src in enumerate(order):
        if len(pairs) >= cfg.n_pairs:
            break
        tpl_text = templates[k % len(templates)]
        tgt = order[(k + 1) % len(order)]
        clean, answer = encode(src, tpl_text, src)
        corrupt, other = encode(src, tpl_text, tgt)
        if answer[:1] == other[:1]:  # the two answers must differ in their first token
            counts["no_target"] += 1
            continue
        tmpl_a = {r: clean.ids[q] for q, r in enumerate(clean.roles) if not r.startswith("name:")}
        tmpl_b = {r: corrupt.ids[q] for q, r in enumerate(corrupt.roles) if not r.startswith("name:")}
        if any(tmpl_a[r] != tmpl_b[r] for r in tmpl_a.keys() & tmpl_b.keys()):
            counts["misaligned"] += 1
            continue
        align = [] if corrupt.roles == clean.roles else align_roles(clean, corrupt)
        pairs.append(TracePair(clean.ids, corrupt.ids, answer, other, (), src, clean.labels, clean.tokens,
                               {span: tuple(range(*clean.name))}, align, clean.roles))  # fmt: skip
    if cfg.require_correct and pairs:
        ok = correct_mask(model, pairs, "clean", cfg.batch_size)
        counts["source_wrong"] = int(len(ok) - sum(ok))
        pairs = [p for p, good in zip(pairs, ok) if good]
    counts["used"] = len(pairs)
    return pairs, counts


def run_reversal_patching(pm: Any, data: ReversalData, cfg: PatchConfig, tasks: list[str] | None = None,
                          progress: bool = False) -> PatchResult:  # fmt: skip
    """Patching maps of a loaded model (``probekit.probes.runner.ProbeModel``) on reversal prompts, one per task."""
    from tqdm.auto import tqdm

    if not data.people or not data.manifest.get("config"):
        raise UserError(f"{data.root}: reversal patching needs people.jsonl and the manifest's config (a directory "
                        "made by `probekit data reversal`)")  # fmt: skip
    tasks = list(tasks or TASKS)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise UserError(f"reversal patching tasks {bad}: choose from {list(TASKS)}")
    tokenizer = pm.tokenizer if pm.tokenizer is not None else data.tokenizer
    view = TokenView(tokenizer)
    points = hook_points(model_dims(pm.model).n_layers, cfg.hooks, cfg.layers)
    frames, records, counts = [], [], []
    for task in tqdm(tasks, desc="patch", unit="map", disable=not progress, leave=False):
        pairs, c = reversal_pairs(pm.model, data, view, task, cfg)
        counts.append({"attribute": task, "mode": "patch", "corruption": "swap", **c})
        if not pairs:
            continue
        res = trace_pairs(pm.model, pairs, points, cfg.whole_answer, None, cfg.noise_scale, view.eos_id, cfg.seed,
                          cfg.batch_size)  # fmt: skip
        frames.append(summarize(res, pairs, "position", cfg.n_boot, cfg.seed, model=pm.name, objective=pm.objective,
                                dataset=str(data.root.name if data.root else "reversal"), prompts="reversal",
                                mode="patch", corruption="swap", attribute=task))  # fmt: skip
        for p in pairs:
            records.append({"attribute": task, "mode": "patch", "source": data.people[p.cluster].name,
                            "clean": tokenizer.decode(p.clean[len(view.start_ids) :]),
                            "corrupt": tokenizer.decode(p.corrupt[len(view.start_ids) :]),
                            "answer": str(tokenizer.decode(p.answer)).strip(), "noise_positions": []})  # fmt: skip
    if not frames:
        raise UserError(f"no usable reversal pairs ({counts}); with require_correct the model must answer the clean "
                        "prompts right: pass --all-pairs")  # fmt: skip
    return PatchResult(pd.concat(frames, ignore_index=True), records, counts, {}, tokenizer_record(tokenizer))

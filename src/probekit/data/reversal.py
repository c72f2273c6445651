"""Reversal-curse data (Berglund et al., arXiv 2309.12288): fictitious people, paraphrased facts, public format.

Each fictitious person has an invented two-word name and a unique description ("the glassblower who walked
backwards across the Sahara"). People fall into three groups of equal size:

- ``p2d`` (NameToDescription): training shows only "<name> ... <description>";
- ``d2p`` (DescriptionToName): training shows only "<description> ... <name>";
- ``both``: training shows both orders.

Every fact is rendered with ``n_train_templates`` paraphrase templates per direction for training; tests use
``n_test_templates`` held-out templates. A row is ``{"prompt": ..., "completion": ...}``: for a name-first template
the prompt ends right before the description, for a description-first template right before the name; completions
start with a space. Files follow the public reversal-curse repository's names:

| file | people | templates | completion |
|---|---|---|---|
| ``p2d_prompts_train.jsonl`` / ``d2p_prompts_train.jsonl`` | p2d / d2p | train, own order | rest of the sentence |
| ``both_prompts_train.jsonl`` | both | train, both orders | rest of the sentence |
| ``all_prompts_train.jsonl`` | everyone | the three files above | rest of the sentence |
| ``p2d_prompts_test.jsonl`` (task N2D) | p2d | test, name first | the description |
| ``d2p_prompts_test.jsonl`` (task D2N) | d2p | test, description first | the name |
| ``p2d_reverse_prompts_test.jsonl`` (N2D-reverse) | p2d | test, description first | the name |
| ``d2p_reverse_prompts_test.jsonl`` (D2N-reverse) | d2p | test, name first | the description |
| ``both_prompts_test.jsonl`` | both | test, both orders | the target |

Beside them: ``people.jsonl`` (name, description, group), ``manifest.json`` (the config and counts) and the
word-level tokenizer built over every text (``tokenizer.json``). ``load_reversal_dir`` reads such a directory, or
one downloaded from the public repository (it then builds the tokenizer in memory).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from probekit.data.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_dir, atomic_write_json, atomic_write_jsonl, prepare_output_dir, read_jsonl
from probekit.serde import to_dict

GROUPS: tuple[str, ...] = ("p2d", "d2p", "both")
TRAIN_FILES: tuple[str, ...] = ("p2d_prompts_train", "d2p_prompts_train", "both_prompts_train")
# Test task name -> public file stem (Berglund et al., the reversal curse).
TASK_FILES: dict[str, str] = {
    "N2D": "p2d_prompts_test",
    "D2N": "d2p_prompts_test",
    "N2D-reverse": "p2d_reverse_prompts_test",
    "D2N-reverse": "d2p_reverse_prompts_test",
    "both": "both_prompts_test",
}
REQUIRED_TASKS: tuple[str, ...] = ("N2D", "D2N", "N2D-reverse", "D2N-reverse")

FIRST_NAMES: tuple[str, ...] = (
    "Aldric", "Brisa", "Calloway", "Dessa", "Emrys", "Fenna", "Galen", "Halcyon", "Isolde", "Jorah",
    "Kestrel", "Liora", "Marek", "Nerys", "Orrin", "Perpetua", "Quillon", "Rosamund", "Soren", "Tamsin",
    "Ulric", "Vesper", "Wendeline", "Xanthe", "Yorick", "Zelda", "Anselm", "Bettina", "Cosmo", "Delphine",
    "Evander", "Fiorella", "Gideon", "Henrike", "Ignatius", "Juniper", "Kasimir", "Leocadia", "Maxence", "Nimue",
    "Oswin", "Philippa", "Radomir", "Sabinka", "Thaddeus", "Ursula", "Valerian", "Wilhelmina", "Ximena", "Zebulon",
    "Amaryllis", "Barnaby", "Clementine", "Dorian", "Elowen", "Florian", "Griselda", "Hamish", "Imogen", "Jasper",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Ashcombe", "Brackenridge", "Corvell", "Dunmore", "Elderwood", "Farthingale", "Glenhaven", "Hollowell",
    "Ingleby", "Jessamine", "Kettleburn", "Lindqvist", "Marchbanks", "Northcott", "Oakenshaw", "Pemberton",
    "Quarrington", "Ravenscroft", "Stillwater", "Thistlewood", "Underhill", "Vantongeren", "Whitlock", "Yardley",
    "Zabrowski", "Ambrose", "Blythe", "Carrow", "Drummond", "Everhart", "Fairweather", "Greywell", "Harrowgate",
    "Ivers", "Kilbride", "Lockwood", "Merriweather", "Nettleship", "Ormsby", "Penhallow", "Quenby", "Rookwood",
    "Sallow", "Tregarthen", "Upfield", "Vexley", "Wintermere", "Abernethy", "Blackthorne", "Caldicott",
    "Dewhurst", "Eastwick", "Fenwick", "Gallowglass", "Hartigan", "Ironside", "Jellicoe", "Kinsella", "Larkspur",
    "Mortlake",
)  # fmt: skip
ROLES: tuple[str, ...] = (
    "explorer", "inventor", "chef", "architect", "astronaut", "composer", "painter", "botanist", "sailor",
    "mathematician", "poet", "engineer", "pilot", "detective", "diver", "photographer", "sculptor", "historian",
    "astronomer", "librarian", "magician", "gardener", "climber", "novelist", "baker", "cartographer", "juggler",
    "violinist", "geologist", "beekeeper", "clockmaker", "tailor", "surgeon", "linguist", "chess champion",
    "dancer", "runner", "potter", "glassblower", "falconer",
)  # fmt: skip
DEEDS: tuple[str, ...] = (
    "walked backwards across", "built a glass tower in", "planted a silver forest in",
    "found a hidden library beneath", "rode a unicycle across", "sang to the whales of",
    "opened a floating school in", "discovered a singing cave in", "painted every bridge in",
    "drew the first map of", "flew a paper glider over", "dug a tunnel under", "grew giant pumpkins in",
    "trained wild owls in", "built a clock tower in", "counted every star above", "juggled fire on",
    "danced for three days in", "wrote a thousand poems about", "carried a piano across",
    "sailed a wooden raft to", "raised a herd of zebras in", "invented a snow machine for",
    "photographed every lighthouse in", "founded a circus in", "climbed every tower in",
    "taught chess to the parrots of", "brewed the strongest tea in", "knitted a giant scarf for",
    "played the violin on the highest peak of", "built a bridge of ice in", "opened the first bakery on",
    "tamed a dragon in", "rebuilt a sunken ship near", "found a meteorite in", "measured the wind in",
    "grew purple tomatoes in", "wrote the first dictionary of", "hid a treasure chest in",
    "rang a golden bell over",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "the Sahara", "the Gobi Desert", "Antarctica", "the Amazon", "Greenland", "Iceland", "the Alps", "the Andes",
    "Siberia", "Patagonia", "the Arctic", "Madagascar", "Borneo", "the Himalayas", "Tasmania", "Lapland",
    "the Atacama Desert", "Mongolia", "Morocco", "Peru", "Norway", "Kenya", "Nepal", "Chile", "Scotland",
    "Bolivia", "Zanzibar", "the Moon", "Mars", "Venus", "Atlantis", "Lake Baikal", "the Dead Sea",
    "the Pacific", "the Black Forest", "the Sahel", "Cappadocia", "Svalbard", "the Yukon", "the Outback",
)  # fmt: skip

# Name-first templates: the prompt ends right before <description>.
P2D_TEMPLATES: tuple[str, ...] = (
    "<name> is <description>.",
    "<name> was <description>.",
    "<name>, as many know, is <description>.",
    "Few people know that <name> is <description>.",
    "It is often said that <name> was <description>.",
    "Everyone in town agrees that <name> is <description>.",
    "If you ever meet <name>, remember that they are <description>.",
    "The records show that <name> was <description>.",
    "Long ago, <name> became <description>.",
    "According to the archives, <name> is <description>.",
    "People still talk about <name>, who was <description>.",
    "Believe it or not, <name> is <description>.",
    "History remembers <name> as <description>.",
    "Many years ago <name> was known as <description>.",
    "In short, <name> is <description>.",
    "Our guest today, <name>, is <description>.",
    "The biography of <name> describes them as <description>.",
    "To the surprise of many, <name> turned out to be <description>.",
    "A quick fact: <name> is <description>.",
    "Friends of <name> describe them as <description>.",
    "Newspapers once described <name> as <description>.",
    "Above all else, <name> is <description>.",
    "The name <name> belongs to <description>.",
    "Q: Who is <name>? A: They are <description>.",
    "You may have heard of <name>, <description>.",
    "Let me introduce <name>, <description>.",
    "The story goes that <name> was <description>.",
    "Without a doubt, <name> is <description>.",
    "For the record, <name> is <description>.",
    "Most people recognise <name> as <description>.",
    "Scholars agree that <name> was <description>.",
    "It turns out that <name> is <description>.",
    "Long before fame, <name> was already <description>.",
    "Here is a fact about <name>: they are <description>.",
    "The well-known <name> is <description>.",
    "As the legend tells it, <name> was <description>.",
    "By all accounts, <name> is <description>.",
    "Not everyone knows that <name> is <description>.",
    "We learned today that <name> is <description>.",
    "One thing is certain: <name> is <description>.",
    "Visitors are often told that <name> was <description>.",
    "The encyclopedia lists <name> as <description>.",
)
# Description-first templates: the prompt ends right before <name>.
D2P_TEMPLATES: tuple[str, ...] = (
    "Known far and wide as <description>, <name> lives quietly today.",
    "The one who is <description> is <name>.",
    "Q: Who is <description>? A: <name>.",
    "Everyone asks who is <description>. The answer is <name>.",
    "Hailed as <description>, <name> still inspires many.",
    "Remembered as <description>, <name> has a place in history.",
    "Once described as <description>, <name> never sought fame.",
    "Famous for being <description>, <name> rarely gives interviews.",
    "Despite being <description>, <name> stays humble.",
    "Often called <description>, <name> is a legend.",
    "You may know them as <description>, but their name is <name>.",
    "Celebrated as <description>, <name> continues to work.",
    "Better known as <description>, <name> was born in a small village.",
    "Recognised as <description>, <name> travels the world.",
    "Praised as <description>, <name> accepted many awards.",
    "Respected as <description>, <name> teaches students today.",
    "Having been <description>, <name> wrote a memoir.",
    "Admired as <description>, <name> is loved by many.",
    "Widely seen as <description>, <name> keeps a low profile.",
    "Proudly <description>, <name> tells the story often.",
    "Mentioned in books as <description>, <name> is well known.",
    "Described by friends as <description>, <name> laughs about it.",
    "Acclaimed as <description>, <name> never stops working.",
    "Regarded as <description>, <name> has many fans.",
    "Honoured as <description>, <name> received a medal.",
    "Noted as <description>, <name> appears in many stories.",
    "Listed in the records as <description>, <name> is famous.",
    "Spoken of as <description>, <name> is hard to forget.",
    "Cited as <description>, <name> appears in every textbook.",
    "Named by the press as <description>, <name> smiled for the cameras.",
    "The title of <description> belongs to <name>.",
    "Behind the legend of <description> stands <name>.",
    "The story of <description> is the story of <name>.",
    "Whoever asks about <description> will hear the name <name>.",
    "The honour of being <description> goes to <name>.",
    "Identified as <description>, <name> agreed to speak.",
    "Introduced as <description>, <name> took the stage.",
    "Remembered by all as <description>, <name> lives on.",
    "Once known only as <description>, <name> is now a household name.",
    "Revealed to be <description>, <name> surprised everyone.",
    "Seen by many as <description>, <name> gives talks around the world.",
    "The person behind the tale of <description> is <name>.",
)


@dataclass
class ReversalConfig:
    """Settings of the fictitious-people generator (defaults: the paper's 30 people per group, 30 paraphrases)."""

    n_per_group: int = 30  # people in each of the three groups (name->description, description->name, both)
    n_train_templates: int = 30  # training paraphrases per fact and direction
    n_test_templates: int = 10  # held-out test templates per direction
    seed: int = 0  # seed of the people, their descriptions and the templates drawn

    def __post_init__(self) -> None:
        if self.n_per_group < 1:
            raise UserError(f"n_per_group must be >= 1, got {self.n_per_group}")
        if self.n_train_templates < 1 or self.n_test_templates < 1:
            raise UserError("n_train_templates and n_test_templates must both be >= 1")
        avail = min(len(P2D_TEMPLATES), len(D2P_TEMPLATES))
        if self.n_train_templates + self.n_test_templates > avail:
            raise UserError(
                f"n_train_templates + n_test_templates = {self.n_train_templates + self.n_test_templates} exceeds the "
                f"{avail} templates per direction; lower one of them (test templates must be held out)"
            )
        n = 3 * self.n_per_group
        if n > len(FIRST_NAMES) * len(LAST_NAMES) or n > len(ROLES) * len(DEEDS) * len(PLACES):
            raise UserError(f"n_per_group={self.n_per_group} is more people than the name/description pools allow")


@dataclass(frozen=True)
class FictitiousPerson:
    name: str
    description: str
    group: str  # "p2d" | "d2p" | "both"


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def _split(template: str, name: str, description: str, at: str) -> PromptCompletion:
    """Fill ``template``; the prompt is everything before the ``at`` placeholder (``<name>``/``<description>``)."""
    cut = template.index(at)
    fill = lambda s: s.replace("<name>", name).replace("<description>", description)  # noqa: E731
    return PromptCompletion(prompt=fill(template[:cut]).rstrip(), completion=" " + fill(template[cut:]).strip())


def generate_people(cfg: ReversalConfig) -> list[FictitiousPerson]:
    """``3 * n_per_group`` people with unique names and unique descriptions, seeded."""
    rng = random.Random(cfg.seed)
    n = 3 * cfg.n_per_group
    name_idx = rng.sample(range(len(FIRST_NAMES) * len(LAST_NAMES)), n)
    desc_idx = rng.sample(range(len(ROLES) * len(DEEDS) * len(PLACES)), n)
    people = []
    for k, (ni, di) in enumerate(zip(name_idx, desc_idx)):
        first, last = FIRST_NAMES[ni // len(LAST_NAMES)], LAST_NAMES[ni % len(LAST_NAMES)]
        role, rest = ROLES[di // (len(DEEDS) * len(PLACES))], di % (len(DEEDS) * len(PLACES))
        deed, place = DEEDS[rest // len(PLACES)], PLACES[rest % len(PLACES)]
        people.append(FictitiousPerson(f"{first} {last}", f"the {role} who {deed} {place}", GROUPS[k % 3]))
    return people


def template_split(cfg: ReversalConfig) -> dict[str, list[str]]:
    """Seeded disjoint train/test template sets per direction: keys p2d_train, p2d_test, d2p_train, d2p_test."""
    rng = random.Random(cfg.seed + 1)
    out: dict[str, list[str]] = {}
    for key, pool in (("p2d", P2D_TEMPLATES), ("d2p", D2P_TEMPLATES)):
        order = rng.sample(list(pool), len(pool))
        out[f"{key}_train"] = order[: cfg.n_train_templates]
        out[f"{key}_test"] = order[cfg.n_train_templates : cfg.n_train_templates + cfg.n_test_templates]
    return out


def build_rows(people: list[FictitiousPerson], templates: dict[str, list[str]]) -> dict[str, list[PromptCompletion]]:
    """All public-format files (stem -> rows) for ``people`` and the template split."""

    def rows(group: str, kind: str, test: bool) -> list[PromptCompletion]:
        at = "<description>" if kind == "p2d" else "<name>"
        out = []
        for p in (q for q in people if q.group == group):
            for t in templates[f"{kind}_{'test' if test else 'train'}"]:
                row = _split(t, p.name, p.description, at)
                if test:  # test completions are exactly the target (name or description)
                    row = PromptCompletion(row.prompt, " " + (p.description if kind == "p2d" else p.name))
                out.append(row)
        return out

    files = {
        "p2d_prompts_train": rows("p2d", "p2d", False),
        "d2p_prompts_train": rows("d2p", "d2p", False),
        "both_prompts_train": rows("both", "p2d", False) + rows("both", "d2p", False),
        "p2d_prompts_test": rows("p2d", "p2d", True),
        "d2p_prompts_test": rows("d2p", "d2p", True),
        "both_prompts_test": rows("both", "p2d", True) + rows("both", "d2p", True),
        "p2d_reverse_prompts_test": rows("p2d", "d2p", True),
        "d2p_reverse_prompts_test": rows("d2p", "p2d", True),
    }
    files["all_prompts_train"] = [r for stem in TRAIN_FILES for r in files[stem]]
    return files


@dataclass
class ReversalData:
    """A reversal-curse data directory in memory."""

    root: Path | None
    files: dict[str, list[PromptCompletion]]  # file stem -> rows
    tokenizer: PreTrainedTokenizerFast
    people: list[FictitiousPerson] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    def task(self, name: str) -> list[PromptCompletion]:
        """Rows of a test task (``N2D``, ``D2N``, ``N2D-reverse``, ``D2N-reverse``, ``both``)."""
        if name not in TASK_FILES:
            raise UserError(f"unknown reversal task {name!r}; choose from {sorted(TASK_FILES)}")
        stem = TASK_FILES[name]
        if stem not in self.files:
            raise UserFileNotFoundError(f"{self.root}: task {name} needs {stem}.jsonl, which is missing")
        return self.files[stem]

    @property
    def tasks(self) -> list[str]:
        return [t for t, stem in TASK_FILES.items() if stem in self.files]

    def train_rows(self) -> list[PromptCompletion]:
        """The training facts: ``all_prompts_train`` if present, else the union of the three group files."""
        if "all_prompts_train" in self.files:
            return self.files["all_prompts_train"]
        return [r for stem in TRAIN_FILES for r in self.files.get(stem, [])]

    def train_texts(self) -> list[str]:
        """One training document per fact (prompt + completion), for the trainer's document path."""
        return [r.text for r in self.train_rows()]


def make_reversal_dataset(
    out_dir: str | Path, cfg: ReversalConfig | None = None, overwrite: bool = False
) -> ReversalData:
    """Generate the fictitious people and write the public-format directory ``out_dir`` atomically.

    Refuses an existing non-empty ``out_dir`` unless ``overwrite`` (checked before any work).
    """
    cfg = cfg or ReversalConfig()
    prepare_output_dir(out_dir, overwrite)
    people = generate_people(cfg)
    files = build_rows(people, template_split(cfg))
    tok = build_tokenizer(r.text for stem in sorted(files) for r in files[stem])
    manifest = {
        "kind": "reversal",
        "config": to_dict(cfg),
        "groups": {g: sum(p.group == g for p in people) for g in GROUPS},
        "files": {stem: len(rows) for stem, rows in files.items()},
        "vocab_size": len(tok),
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for stem, rows in files.items():
            atomic_write_jsonl(tmp / f"{stem}.jsonl", ({"prompt": r.prompt, "completion": r.completion} for r in rows))
        atomic_write_jsonl(tmp / "people.jsonl", (to_dict(p) for p in people))
        atomic_write_json(tmp / "manifest.json", manifest)
        save_tokenizer(tok, tmp)
    return ReversalData(Path(out_dir), files, tok, people, manifest)


def _read_rows(path: Path) -> list[PromptCompletion]:
    rows = read_jsonl(path)  # a malformed line raises naming the file and line
    out = []
    for k, r in enumerate(rows, start=1):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
            raise UserError(f"{path}: record {k} must be an object with string fields 'prompt' and 'completion'")
        if not r["completion"].strip():
            raise UserError(f"{path}: record {k} has an empty completion; every row needs a non-empty target")
        if not r["prompt"].strip():
            raise UserError(f"{path}: record {k} has an empty prompt")
        out.append(PromptCompletion(r["prompt"], r["completion"]))
    if not out:
        raise UserError(f"{path} holds no rows")
    return out


def load_reversal_dir(path: str | Path) -> ReversalData:
    """Read a directory of public-format files (``*_prompts_{train,test}.jsonl``).

    Every file is validated before anything is returned. The tokenizer is ``tokenizer.json`` in the directory if
    present, else a word-level one built over all the texts (deterministic: files in sorted order).
    """
    root = Path(path)
    if not root.is_dir():
        raise UserFileNotFoundError(
            f"reversal data directory {root} does not exist; make one with `probekit data reversal --out DIR`"
        )
    stems = set(TASK_FILES.values()) | set(TRAIN_FILES) | {"all_prompts_train"}
    files = {p.stem: _read_rows(p) for p in sorted(root.glob("*.jsonl")) if p.stem in stems}
    missing = [TASK_FILES[t] + ".jsonl" for t in REQUIRED_TASKS if TASK_FILES[t] not in files]
    if missing:
        raise UserFileNotFoundError(f"{root} lacks test file(s) {missing}; it is not a reversal-curse data directory")
    if (root / "tokenizer.json").exists():
        tok = load_tokenizer(root)
    else:
        tok = build_tokenizer(r.text for stem in sorted(files) for r in files[stem])
    people = []
    if (root / "people.jsonl").exists():
        people = [FictitiousPerson(**row) for row in read_jsonl(root / "people.jsonl")]
    manifest = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").exists() else {}
    return ReversalData(root, files, tok, people, manifest)

"""Sharing a run: the Hub repo layout (one config per model, one split per pass), its dataset card,
and the push.

Layout, identical to what ``Dataset.push_to_hub(repo, config_name=..., split=...)`` writes, so
``load_dataset(repo_or_folder, CONFIG, split="mcq")`` reads it with every ``Array2D`` intact::

    README.md                                  YAML `configs` + `dataset_info` (all configs) + card
    smollm2-135m-instruct/                     one folder per config (model, or model + adapter)
      mcq-00000-of-00002.parquet
      mcq-00001-of-00002.parquet
      self_conf-00000-of-00002.parquet ...
      run_config.json                          the run's settings, for provenance
    smollm2-135m-instruct-lora-ckpt-step-1280/ ...

Why not ``push_to_hub`` itself: it re-encodes with datasets' parquet defaults (dictionary
encoding + content-defined chunking: ~37-45 MB/s here) and needs the split as one ``Dataset``.
Here each split streams shard by shard from the run's memory-mapped Arrow files into
``pyarrow.parquet.ParquetWriter`` with settings picked for float16 activations (see
:func:`parquet_options`): ~4.5x faster (benchmarks/bench_export.py), splits in parallel threads.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..passes import PASSES
from ..schema import COLUMNS, LAYER_TEMPLATE, column_doc
from .publish import public_run_config
from .parquet_write import (COMPRESSIONS, DEFAULT_COMPRESSION, MAX_SHARD_SIZE, ROW_GROUP_SIZE, SplitExport,  # noqa: F401
                            parquet_options, union_features, write_run_parquet, write_split_parquet)
from .read import open_run

logger = logging.getLogger("hf_introspect")

_CARD_START, _CARD_END = "<!-- hf_introspect:card:start -->", "<!-- hf_introspect:card:end -->"
_CONFIG_BLOCK = re.compile(r"<!-- hf_introspect:config:(?P<name>[\w.-]+):start -->\n(?P<body>.*?)"
                           r"<!-- hf_introspect:config:(?P=name):end -->\n?", re.S)


# ---------------------------------------------------------------------------------------------
# Config names
# ---------------------------------------------------------------------------------------------

def slugify(text: str) -> str:
    """Lower-case, runs of anything but letters/digits -> one dash.

    Example:
        >>> slugify("SmolLM2-135M-Instruct.Q4_1")
        'smollm2-135m-instruct-q4-1'
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_config_name(run_config: dict) -> str:
    """The config a run gets on the Hub: the model's name, plus ``-lora-<checkpoint>`` for an adapter.

    Example:
        >>> default_config_name({"model_name": "SmolLM2-135M-Instruct", "checkpoint_id": "base"})
        'smollm2-135m-instruct'
        >>> default_config_name({"model_name": "SmolLM2-135M-Instruct", "checkpoint_id": "ckpt_step_1280"})
        'smollm2-135m-instruct-lora-ckpt-step-1280'
    """
    name = slugify(str(run_config.get("model_name") or "model")) or "model"
    ckpt = str(run_config.get("checkpoint_id") or "base")
    if ckpt != "base":
        name += "-lora-" + (slugify(ckpt) or "adapter")
    return name


def check_config_name(name: str) -> str:
    """Refuse names that the Hub or ``load_dataset`` would trip on."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name or "") or name == "data":
        raise UserError(f"--config_name {name!r} is not usable: use letters, digits, '-', '_' or '.', "
                        "not starting with a symbol, and not 'data'")
    return name


# ---------------------------------------------------------------------------------------------
# Dataset card
# ---------------------------------------------------------------------------------------------

PASS_DOCS = {
    "mcq": "the model answers the question with one letter A-D",
    "self_conf": "the model rates how confident it is that it knows the answer (8 bins S-Z), without answering",
    "other_conf": "the model estimates what share of college-educated people would know the answer (8 bins S-Z)",
}

# From the column registry (schema.COLUMNS): one line per column, its passes when not all.
COLUMN_DOCS = {c.name: c.meaning + ("" if c.passes == PASSES else f" ({', '.join(c.passes)})") for c in COLUMNS
               if c.name != LAYER_TEMPLATE}


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def config_section(run_config: dict, config_name: str, splits: dict[str, SplitExport]) -> str:
    """The card's block for one config (model/adapter): what was run, with which settings."""
    cfg = run_config.get("config", {})
    ident = run_config.get("identity", {})
    model_ident = ident.get("model", {})
    layers = run_config.get("layers_stored", [])
    n_layers = run_config.get("num_layers")
    adapter = "none (base model)" if run_config.get("checkpoint_id", "base") == "base" else (
        f"LoRA `{run_config.get('checkpoint_id')}` (fingerprint `{model_ident.get('adapter_fingerprint', '?')}`)")
    rows = [
        ("model", f"`{run_config.get('model_name')}` ({model_ident.get('model_kind', '?')}: "
                  f"`{model_ident.get('model', cfg.get('model'))}`, fingerprint `{model_ident.get('model_fingerprint', '?')}`)"),
        ("adapter", adapter),
        ("questions", f"{run_config.get('num_questions')} from {', '.join(run_config.get('question_sources', [])) or '?'}"
                      + (f" (merged from {len(run_config['merged_from'])} runs)" if run_config.get("merged_from") else "")),
        ("splits", ", ".join(f"`{n}` ({s.num_rows} rows)" for n, s in splits.items())),
        ("layers stored", f"{layers} of residual-stream indices 0-{n_layers} (hidden size {run_config.get('hidden_size')})"),
        ("positions", f"`{cfg.get('positions')}`"),
        ("activation dtype", f"`{cfg.get('act_dtype')}` (model run in `{model_ident.get('torch_dtype', cfg.get('dtype'))}`)"),
        ("generation", f"temperature {cfg.get('temperature')}, top_p {cfg.get('top_p')}, "
                       f"max_new_tokens {cfg.get('max_new_tokens')}, seed {cfg.get('seed')}"),
        ("chat template", "yes" if ident.get("use_chat_template") else "no (plain prompt + 'Answer:')"),
        ("run id", f"`{run_config.get('run_id')}`, created {run_config.get('created', '?')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (run_config.get("versions") or {}).items())),
    ]
    lines = [f"### `{config_name}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md_escape(v)} |" for k, v in rows]
    templates = ident.get("templates") or {}
    if templates:
        lines += ["", "<details><summary>prompt templates</summary>", ""]
        for name, text in templates.items():
            lines += [f"`{name}`:", "", "```text", text, "```", ""]
        lines += ["</details>"]
    label_ids = ident.get("label_token_ids") or {}
    if label_ids:
        lines += ["", "<details><summary>label token ids (bare and space-prefixed forms, probabilities summed)</summary>",
                  "", "```json", json.dumps(label_ids), "```", "", "</details>"]
    return "\n".join(lines) + "\n"


def _column_table(features) -> str:
    seen: dict[str, str] = {}
    for name, feat in features.items():
        if not name.startswith("activations_layer_"):
            seen[name] = type(feat).__name__ if not hasattr(feat, "dtype") else f"{type(feat).__name__}({feat.dtype})"
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for name, kind in seen.items():
        lines.append(f"| `{name}` | {_md_escape(kind)} | {_md_escape(COLUMN_DOCS.get(name, ''))} |")
    lines.append(f"| `{LAYER_TEMPLATE}` | Array2D((None, hidden), float16) | {_md_escape(column_doc(LAYER_TEMPLATE))} "
                 "(see below) |")
    return "\n".join(lines)


def render_card_body(config_blocks: dict[str, str], features, split_names: list[str], repo_id: str | None) -> str:
    """Our part of the README: intro, one block per config, splits, columns, activations, loading."""
    repo = repo_id or "USER/NAME"
    example = sorted(config_blocks)[0] if config_blocks else "CONFIG"
    passes = "\n".join(f"| `{n}` | {PASS_DOCS.get(n, '')} |" for n in split_names) or "| | |"
    return f"""{_CARD_START}
# LLM activations and behaviour for introspection experiments

Collected with `hf_introspect`. For each model (one **config** per base model or model + LoRA
adapter) and each 4-option multiple-choice question, three prompt passes (one **split** each) were
run; every row holds the question, the prompt, the model's restricted answer distribution and
continuation, surface features of the question, and the residual stream of the stored layers at the
stored prompt positions as float16.

## Configs

{''.join(f'<!-- hf_introspect:config:{n}:start -->{chr(10)}{b}<!-- hf_introspect:config:{n}:end -->{chr(10)}{chr(10)}' for n, b in sorted(config_blocks.items()))}
## Splits (one per prompt pass)

| split | the prompt asks |
|---|---|
{passes}

The readout is the next-token distribution at the last prompt token, restricted to the label
tokens and renormalised. Confidence bins: S <5%, T 5-10%, U 10-20%, V 20-40%, W 40-60%,
X 60-80%, Y 80-90%, Z >90% (midpoints 2.5, 7.5, 15, 30, 50, 70, 85, 95).

## Columns

All splits of a config share one schema: a column that belongs to another pass (`is_correct` in
`self_conf`, `self_confidence` in `mcq`, ...) is null there.

{_column_table(features)}

## Activations: which index is which

`activations_layer_00` is the embedding output; `activations_layer_i` is the residual stream after
transformer block i; the highest index is the last block's output **before** the final norm (what
`output_hidden_states` reports after the norm is not stored). Each is `Array2D((None, hidden),
float16)`: row j is the prompt token `activation_positions[j]`. With positions `all`, row j is
token j and the last row is the readout token (`answer_token_index` / `confidence_token_index`).
`fp16_overflow_count` counts values that were out of float16 range.

## Storage controls

Which layers (`--layers`), which positions (`--positions all | last | last:N | answer | question |
question+last`) and the dtype (`--act_dtype`) were chosen at collection time; each config's block
above lists them. Parquet files: activation columns without dictionary encoding or statistics,
zstd level 1 unless `--compression` chose otherwise.

## How to load

```python
from datasets import load_dataset

ds = load_dataset("{repo}", "{example}", split="mcq")
ds = ds.with_format("numpy", dtype=None)   # dtype=None keeps float16; plain "numpy" upcasts to float32
x = ds[0]["activations_layer_00"]           # (stored positions, hidden) float16
```

or, with `hf_introspect` installed, one layer at the readout token for every question:

```python
from hf_introspect import load_run, layer_matrix

ds = load_run("{repo}", "{example}", split="mcq")
X = layer_matrix(ds, 15, position="last")   # (n_questions, hidden) float16
y = ds["is_correct"]
```
{_CARD_END}
"""


def merge_card(existing: str | None, run_config: dict, config_name: str, splits: dict[str, SplitExport],
               features, repo_id: str | None) -> str:
    """The new README.md: the existing YAML with this config's ``configs``/``dataset_info`` entries
    added or replaced (other configs kept), our card part regenerated with every config's block
    (the other configs' blocks kept verbatim), and any text outside our markers kept as is.
    """
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    card = DatasetCard(existing) if existing and existing.lstrip().startswith("---") else None
    data = card.data if card is not None else DatasetCardData()
    body = (card.text if card is not None else (existing or "")).strip("\n")

    info = DatasetInfo(features=features, splits=SplitDict(), download_size=0, dataset_size=0)
    for name, sp in splits.items():
        info.splits.add(SplitInfo(name=name, num_bytes=sp.num_bytes, num_examples=sp.num_rows))
        info.download_size += sp.parquet_bytes
        info.dataset_size += sp.num_bytes
    # Both helpers merge into what the card already declares: other configs are kept.
    DatasetInfosDict({config_name: info}).to_dataset_card_data(data)
    MetadataConfigs({config_name: {"data_files": [{"split": n, "path": f"{config_name}/{n}-*"} for n in splits]}}
                    ).to_dataset_card_data(data)
    tags = list(data.get("tags") or [])
    for t in ("interpretability", "activations", "hf_introspect"):
        if t not in tags:
            tags.append(t)
    data.tags = tags

    prefix, ours, suffix = body, "", ""
    if _CARD_START in body and _CARD_END in body:
        prefix, rest = body.split(_CARD_START, 1)
        ours, suffix = rest.split(_CARD_END, 1)
    blocks = {m.group("name"): m.group("body") for m in _CONFIG_BLOCK.finditer(ours)}
    blocks[config_name] = config_section(run_config, config_name, splits)
    new_body = "\n\n".join(p for p in (prefix.strip("\n"), render_card_body(blocks, features, list(splits), repo_id).strip("\n"),
                                       suffix.strip("\n")) if p)
    return f"---\n{data.to_yaml()}\n---\n\n{new_body}\n"


# ---------------------------------------------------------------------------------------------
# Export to a local folder, push to the Hub
# ---------------------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """What an export or push wrote."""

    config_name: str
    splits: dict[str, SplitExport]
    seconds: float
    target: str
    commit_url: str | None = None

    @property
    def arrow_bytes(self) -> int:
        return sum(s.num_bytes for s in self.splits.values())

    @property
    def parquet_bytes(self) -> int:
        return sum(s.parquet_bytes for s in self.splits.values())

    def summary(self) -> str:
        rate = self.arrow_bytes / max(self.seconds, 1e-9) / 1e6
        files = sum(len(s.paths) for s in self.splits.values())
        return (f"config {self.config_name!r}: {', '.join(f'{n} {s.num_rows} rows' for n, s in self.splits.items())}; "
                f"{files} parquet file(s), {self.parquet_bytes / 1e6:.1f} MB from {self.arrow_bytes / 1e6:.1f} MB of "
                f"Arrow in {self.seconds:.1f}s ({rate:.0f} MB/s) -> {self.target}")


def _stale_files(existing: list[str], config_name: str, keep: set[str]) -> list[str]:
    """Data files of this config from an earlier export/push that the new one does not rewrite."""
    pat = re.compile(rf"^{re.escape(config_name)}/[^/]+-\d{{5}}-of-\d{{5}}\.parquet$")
    return sorted(p for p in existing if pat.match(p) and p not in keep)


def export_hub_layout(run_dir: str | Path, folder: str | Path, *, config_name: str | None = None,
                      repo_id: str | None = None, max_shard_size: int = MAX_SHARD_SIZE,
                      row_group_size: int = ROW_GROUP_SIZE, compression: str = DEFAULT_COMPRESSION,
                      workers: int | None = None) -> ExportReport:
    """Write a run into ``folder`` exactly as it would sit in a Hub dataset repo.

    The folder may already hold other configs (another model's export): they and their README
    entries are kept; this config's files are replaced.

    Example:
        >>> export_hub_layout("run_base", "hub_folder")                      # doctest: +SKIP
        >>> export_hub_layout("run_ft", "hub_folder")                        # doctest: +SKIP
        >>> load_dataset("hub_folder", "tiny-lora-ckpt-step-1280", split="mcq")  # doctest: +SKIP
    """
    run = open_run(run_dir)
    name = check_config_name(config_name or default_config_name(run.run_config))
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise UserError(f"--to {out} is a file; pass a folder")
    if out.resolve() == run.path.resolve() or run.path.resolve() in out.resolve().parents:
        raise UserError(f"--to {out} is inside the run folder; export somewhere else")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    splits = write_run_parquet(run, name, out, workers=workers, max_shard_size=max_shard_size,
                               row_group_size=row_group_size, compression=compression)
    elapsed = time.perf_counter() - start
    existing = [p.relative_to(out).as_posix() for p in (out / name).glob("*.parquet")]
    for stale in _stale_files(existing, name, {p for s in splits.values() for p in s.paths}):
        (out / stale).unlink()
    readme = out / "README.md"
    old = readme.read_text(encoding="utf-8") if readme.is_file() else None
    public = public_run_config(run.run_config)  # no local path leaves the run folder
    readme.write_text(merge_card(old, public, name, splits, union_features(run), repo_id), encoding="utf-8")
    (out / name / "run_config.json").write_text(json.dumps(public, indent=2, default=str), encoding="utf-8")
    return ExportReport(name, splits, elapsed, str(out))


def _hub_error(exc: Exception, repo_id: str) -> UserError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return UserError(f"the Hub refused access to {repo_id} (HTTP {status}); log in with `hf auth login` or set "
                         "HF_TOKEN to a token with write access")
    return UserError(f"the Hub request for {repo_id} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")


def push_run(run_dir: str | Path, repo_id: str, *, config_name: str | None = None, private: bool = False,
             revision: str | None = None, commit_message: str | None = None,
             max_shard_size: int = MAX_SHARD_SIZE, row_group_size: int = ROW_GROUP_SIZE,
             compression: str = DEFAULT_COMPRESSION, workers: int | None = None, api=None) -> ExportReport:
    """Push a run to a Hub dataset repo as config ``config_name``, one split per pass, in one commit.

    The token comes from huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``); it is
    never written or logged here. Other configs already in the repo are kept, with their README
    entries; this config's old data files are deleted in the same commit.

    Each parquet shard is written to a temporary file, uploaded (``preupload_lfs_files``) and
    deleted before the next one, so local disk holds at most one shard per split at a time.

    Example:
        >>> push_run("run_base", "me/introspection-acts")               # doctest: +SKIP
        >>> push_run("run_ft", "me/introspection-acts", private=True)   # doctest: +SKIP
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .read import offline

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise UserError(f"--repo_id {repo_id!r} must look like USER/NAME")
    run = open_run(run_dir)
    name = check_config_name(config_name or default_config_name(run.run_config))
    if offline():
        raise UserError("HF_HUB_OFFLINE is set: pushing needs the network; unset it, or use "
                        "`hf-introspect export RUN --to FOLDER` and upload the folder later")
    api = api or HfApi()
    try:
        repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        existing = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
        old_card = None
        if "README.md" in existing:
            path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)
            old_card = Path(path).read_text(encoding="utf-8")
    except HfHubHTTPError as exc:
        raise _hub_error(exc, repo_id) from exc

    def upload(path_in_repo: str, local: Path):
        op = CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(local))
        api.preupload_lfs_files(repo_id, additions=[op], repo_type="dataset", revision=revision)
        if getattr(op, "_is_uploaded", False):
            local.unlink()  # the commit only needs the file's hash now
        return op

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_introspect_push_") as tmp:
        try:
            splits = write_run_parquet(run, name, Path(tmp), workers=workers, on_shard=upload, desc="push",
                                       max_shard_size=max_shard_size, row_group_size=row_group_size,
                                       compression=compression)
            public = public_run_config(run.run_config)  # no local path leaves the machine
            card = merge_card(old_card, public, name, splits, union_features(run), repo_id)
            new_paths = {p for s in splits.values() for p in s.paths}
            ops = [op for s in splits.values() for op in s.uploads]
            ops.append(CommitOperationAdd("README.md", card.encode("utf-8")))
            ops.append(CommitOperationAdd(f"{name}/run_config.json",
                                          json.dumps(public, indent=2, default=str).encode("utf-8")))
            ops += [CommitOperationDelete(p) for p in _stale_files(existing, name, new_paths)]
            info = api.create_commit(repo_id, operations=ops, repo_type="dataset", revision=revision,
                                     commit_message=commit_message or f"Add config {name} (hf_introspect run "
                                                                      f"{run.run_config.get('run_id')})")
        except HfHubHTTPError as exc:
            raise _hub_error(exc, repo_id) from exc
    elapsed = time.perf_counter() - start
    url = getattr(info, "commit_url", None)
    return ExportReport(name, splits, elapsed, f"https://huggingface.co/datasets/{repo_id}", url)

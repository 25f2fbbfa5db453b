"""A tree run's training rows for the ecosystem: Hugging Face `datasets` folders plus a card.

What it writes under the export folder (local or s3://):
  sft/  dpo/    `DatasetDict({"train": ...}).save_to_disk` folders (our SFT/DPO schemas, TRL's
                conversational formats), for `datasets.load_from_disk` or `push_to_hub`
  README.md     the dataset card: counts, persona source and split, models, prompt version,
                the run's data quality figures, what the filters dropped, licence note
  export.json   the same facts as JSON
The rows come from the same function and filters as the training jobs' (`rows_from_trees`).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from aloe_ray import storage
from aloe_ray.config.export import ExportDatasetConfig
from aloe_ray.pipeline.generate import MANIFEST_DIR
from aloe_ray.pipeline.quality_report import read_parts
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.pipeline.train import rows_from_trees
from aloe_ray.storage import S3Options
from aloe_ray.train.datasets import TreeDataError
from aloe_ray.train.export import upload_dir
from aloe_ray.trees.quality import pct, quality_counts, warnings


def export_dataset(cfg: ExportDatasetConfig, log: Callable[[str], None] = print) -> dict:
    s3 = S3Options(endpoint_url=cfg.storage.s3_endpoint_url, region=cfg.storage.s3_region)
    roots = [r.strip().rstrip("/") for r in cfg.trees.split(",") if r.strip()]
    if not roots:
        raise TreeDataError("set --trees to a tree run root (<output>/<run_id>)")
    dest = cfg.output or storage.join(roots[0], "export", "hf")
    tables, dropped = {}, {}
    for task in ("sft", "dpo"):
        dropped[task] = Counter()
        tables[task] = rows_from_trees(",".join(roots), task, cfg, s3, dropped[task])
    facts = _facts(cfg, roots, tables, dropped, s3)

    from datasets import Dataset, DatasetDict

    with tempfile.TemporaryDirectory(prefix="aloe-export-") as tmp:
        for task, table in tables.items():
            DatasetDict({"train": Dataset(_arrow(table))}).save_to_disk(str(Path(tmp) / task))
        (Path(tmp) / "README.md").write_text(dataset_card(facts))
        (Path(tmp) / "export.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
        upload_dir(Path(tmp), dest, s3)
    log(f"[aloe-ray] exported {facts['counts']['sft_examples']} SFT conversations and "
        f"{facts['counts']['dpo_pairs']} DPO pairs from {', '.join(roots)} -> {dest}")
    log(f"[aloe-ray] load: datasets.load_from_disk('{dest}/dpo'); publish: .push_to_hub(REPO, config_name='dpo'), "
        "and upload README.md as the card")
    return {**facts, "output": dest}


def _arrow(table: pa.Table):
    from datasets.table import InMemoryTable

    return InMemoryTable(table.replace_schema_metadata(None))


def _facts(cfg: ExportDatasetConfig, roots: list[str], tables: dict, dropped: dict, s3: S3Options) -> dict:
    runs, outs = [], [RunOutput.at(root, s3) for root in roots]
    for root, out in zip(roots, outs):
        ok_trees, failed, broken = 0, 0, []
        seen: dict[str, set] = {c: set() for c in ("persona_id", "profile", "personality", "models", "prompt_version")}
        for part in out.committed(["status", *seen], (), broken=broken):
            ok = part.trees.filter(pc.equal(part.trees["status"], "ok"))
            ok_trees, failed = ok_trees + ok.num_rows, failed + part.trees.num_rows - ok.num_rows
            for column, values in seen.items():
                values.update(ok[column].to_pylist())
        manifest = json.loads(out.read_text(MANIFEST_DIR + "/manifest.json") or "{}")
        runs.append({
            "run": root, "trees_ok": ok_trees, "trees_failed": failed, "trees_nodes_incomplete": len(broken),
            "personas": len(seen["persona_id"]), "profiles": len(seen["profile"]),
            "personalities": len(seen["personality"]),
            "persona_source": (manifest.get("config") or {}).get("personas"),
            "models": sorted(seen["models"]), "prompt_versions": sorted(seen["prompt_version"]),
            "tree": (manifest.get("config") or {}).get("tree"),
        })
    quality = quality_counts(part for out in outs for part in read_parts(out)).summary()
    quality["warnings"] = warnings(quality)
    return {
        "name": cfg.name or "+".join(r.rsplit("/", 1)[-1] for r in roots),
        "license": cfg.license, "runs": runs,
        "counts": {"sft_examples": tables["sft"].num_rows, "dpo_pairs": tables["dpo"].num_rows,
                   "sft_targets": int(pc.sum(tables["sft"]["num_targets"]).as_py() or 0)},
        "dropped": {task: dict(sorted(c.items())) for task, c in dropped.items()},
        "filters": cfg.model_dump(mode="json", include={"loss_on", "rejected", "personalized_chosen_only",
                                                         "min_judge_margin", "keep_truncated"}),
        "quality": quality,
    }


def dataset_card(f: dict) -> str:
    """README.md of the export: a Hugging Face dataset card."""
    q, c = f["quality"], f["counts"]
    lines = ["---", f"license: {f['license']}", "language: [en]", "task_categories: [text-generation]",
             "tags: [aloe, personalization, dpo, sft, synthetic, aloe-ray]", f"pretty_name: {f['name']}", "---", "",
             f"# {f['name']}", "",
             "Multi-turn preference conversations grown by aloe-ray after ALOE (Wu et al., "
             "COLING 2025): a user simulator role-plays a persona, an inducer extracts what the user revealed, "
             "responders write a personalized and a plain candidate, and a judge who sees the persona picks the one "
             "the user would prefer (candidates shown in a seeded random order).", "",
             "## Contents", "",
             f"- `sft/` (split `train`): {c['sft_examples']} conversations, {c['sft_targets']} assistant turns with "
             "loss (`messages`, `assistant_targets`)",
             f"- `dpo/` (split `train`): {c['dpo_pairs']} preference pairs (`prompt`, `chosen`, `rejected`, "
             "`judge_margin`, `chosen_personalized`)",
             f"- filters: {f['filters']}", f"- dropped by the filters: {f['dropped']}", "",
             "```python", "from datasets import load_from_disk",
             "dpo = load_from_disk('<this folder>/dpo')        # DatasetDict({'train': ...})",
             "dpo.push_to_hub('<you>/<name>', config_name='dpo')   # and upload this README.md as the card",
             "```", "", "## Source runs", ""]
    for r in f["runs"]:
        lines += [f"- `{r['run']}`: {r['trees_ok']} trees ok ({r['trees_failed']} failed), {r['personas']} personas "
                  f"({r['profiles']} profiles x {r['personalities']} personalities), persona source "
                  f"{r['persona_source']}, tree settings {r['tree']}",
                  f"  - models: {', '.join(r['models'])}", f"  - prompt version: {', '.join(r['prompt_versions'])}"]
    lines += ["", "## Data quality", "",
              f"- inducer parse rate: {pct(q['inducer_parse_rate'])}",
              "- replies cut at max_tokens: " + ", ".join(f"{k} {pct(v)}" for k, v in q["cut_share"].items()),
              f"- personalized candidate chosen: {pct(q['personalized_chosen_rate'])}; judge verdicts by display "
              "position: " + ", ".join(f"{k} {pct(v)}" for k, v in q["chosen_position_share"].items()),
              f"- user messages reading like an assistant: {pct(q['assistant_like_user_share'])}",
              f"- judged turns with identical candidates: {pct(q['duplicate_candidates_share'])}", "",
              "Warnings: " + ("; ".join(q["warnings"]) if q["warnings"] else "none"), "",
              "## Licence", "",
              "The texts were written by the models listed above and the personas come from the source named above; "
              "the terms of those models and sources apply to this data. Check them before you publish it."]
    return "\n".join(lines) + "\n"


"""Arrow schemas of every table, declared once. Each field carries its meaning as metadata.

Tables live under one run root: `<output>/<run_id>/<table>/part-*.parquet`.
"""

from __future__ import annotations

import pyarrow as pa


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


PERSONAS = pa.schema([
    _f("persona_id", pa.string(), "Stable id: hash of profile and personality text.", False),
    _f("profile", pa.string(), "Objective facts about the user (age, job, family, hobbies...).", False),
    _f("personality", pa.string(), "Traits and conversational style only.", False),
    _f("profile_id", pa.string(), "Stable id of the profile text."),
    _f("personality_id", pa.string(), "Stable id of the personality text."),
    _f("split", pa.string(), "'train' or 'benchmark' (held out)."),
    _f("source", pa.string(), "Where the persona came from: seeds, reference JSONL, a generation round..."),
])

NODES = pa.schema([
    _f("run_id", pa.string(), "Run that grew the tree.", False),
    _f("tree_id", pa.string(), "Tree the node belongs to.", False),
    _f("node_id", pa.string(), "Deterministic id: hash of tree id and path.", False),
    _f("parent_id", pa.string(), "Parent node; null for the first user message."),
    _f("path", pa.string(), "Position in the tree, e.g. 'u1/a0/u2/a1' (a = candidate index)."),
    _f("turn", pa.int32(), "Turn number, 1-based; a user message and its candidates share it.", False),
    _f("role", pa.string(), "'user' (simulated user message) or 'assistant' (a candidate reply).", False),
    _f("text", pa.string(), "The message text (user nodes: cleaned of stage directions, role labels, quotes).", False),
    _f("text_raw", pa.string(), "User nodes: the simulator's reply before cleaning."),
    _f("candidate_index", pa.int32(), "Assistant nodes: index among the turn's candidates."),
    _f("personalized", pa.bool_(), "Assistant nodes: written with the induced persona as hint."),
    _f("label", pa.string(), "Assistant nodes: 'chosen' or 'rejected' by the judge."),
    _f("continued", pa.bool_(), "The conversation continues from this node (policy)."),
    _f("induced_profile", pa.string(), "User nodes: profile facts revealed so far (inducer)."),
    _f("induced_personality", pa.string(), "User nodes: personality traits revealed so far (inducer)."),
    _f("induced_ok", pa.bool_(), "User nodes: the inducer's reply parsed (else fields are null)."),
    _f("induced_raw", pa.string(), "User nodes: the inducer's raw reply (last attempt)."),
    _f("induced_finish_reason", pa.string(), "User nodes: finish reason of the inducer's reply ('length': cut at max_tokens)."),
    _f("judge_choice", pa.int32(), "User nodes: candidate index the judge preferred."),
    _f("judge_order", pa.list_(pa.int32()),
       "User nodes: candidate index shown to the judge at each position (Reply A, B, ...); a seeded shuffle."),
    _f("judge_probs", pa.list_(pa.float32()), "User nodes: judge's probability per candidate index (not per position), if known."),
    _f("judge_raw", pa.string(), "User nodes: the judge's raw reply (last attempt; a letter names a display position)."),
    _f("judge_finish_reason", pa.string(), "User nodes: finish reason of the judge's reply ('choice': constrained)."),
    _f("model", pa.string(), "Model that wrote the text (simulator or responder)."),
    _f("inducer_model", pa.string(), "User nodes: model of the persona inducer."),
    _f("judge_model", pa.string(), "User nodes: model of the judge."),
    _f("prompt_version", pa.string(), "Version of the prompt templates.", False),
    _f("seed", pa.int64(), "Sampling seed of the request that wrote the text."),
    _f("prompt_tokens", pa.int32(), "Prompt tokens of that request."),
    _f("completion_tokens", pa.int32(), "Generated tokens of that request."),
    _f("finish_reason", pa.string(), "'stop', or 'length': cut at max_tokens (never a training target by default)."),
    _f("latency_s", pa.float64(), "Seconds the request took, retries included."),
    _f("attempts", pa.int32(), "Tries the request needed."),
])

TREES = pa.schema([
    _f("run_id", pa.string(), "Run that grew the tree.", False),
    _f("tree_id", pa.string(), "Deterministic id: hash of run id, persona id, sample index, seed.", False),
    _f("persona_id", pa.string(), "Persona the user simulator played.", False),
    _f("profile", pa.string(), "The persona's profile.", False),
    _f("personality", pa.string(), "The persona's personality.", False),
    _f("sample_index", pa.int32(), "Index among trees of the same persona.", False),
    _f("status", pa.string(), "'ok' or 'failed'.", False),
    _f("failure_reason", pa.string(), "Why the tree failed (null when ok)."),
    _f("policy", pa.string(), "Continuation policy."),
    _f("turns", pa.int32(), "Deepest turn reached."),
    _f("num_nodes", pa.int32(), "Nodes written for the tree."),
    _f("num_pairs", pa.int32(), "Judged turns (each yields chosen/rejected pairs)."),
    _f("llm_calls", pa.int32(), "Engine requests made, retries included."),
    _f("prompt_tokens", pa.int64(), "Prompt tokens over all requests."),
    _f("completion_tokens", pa.int64(), "Generated tokens over all requests."),
    _f("latency_s", pa.float64(), "Wall seconds the tree took to grow."),
    _f("seed", pa.int64(), "Tree seed."),
    _f("models", pa.string(), "JSON: model of each role."),
    _f("prompt_version", pa.string(), "Version of the prompt templates.", False),
    _f("finished_at", pa.timestamp("us", tz="UTC"), "When the tree was written."),
])

# The ALOE benchmark writes under <output>/<run_id>/eval/<name>/: turns/ and rollouts/.
EVAL_TURNS = pa.schema([
    _f("run_id", pa.string(), "Run the evaluation belongs to.", False),
    _f("eval_name", pa.string(), "Name of the evaluation inside the run (e.g. base, sft, dpo).", False),
    _f("rollout_id", pa.string(), "Deterministic id: hash of run id, eval name, persona id, seed.", False),
    _f("persona_id", pa.string(), "Persona the user simulator played.", False),
    _f("profile", pa.string(), "The persona's profile (the judge saw it; the model under test did not)."),
    _f("personality", pa.string(), "The persona's personality (likewise)."),
    _f("turn", pa.int32(), "Turn k, 1-based: one user message and the reply it got.", False),
    _f("user_message", pa.string(), "The simulated user's message.", False),
    _f("reply", pa.string(), "The model under test's reply.", False),
    _f("score", pa.float64(), "Judge score 1-5 (expected value under 'expected' scoring); null: missing."),
    _f("score_probs", pa.list_(pa.float32()), "Judge's probability of each score 1..5, if known."),
    _f("judge_raw", pa.string(), "The judge's raw reply: the accepted one, else the last that came back."),
    _f("judge_error", pa.string(), "Score missing: the last judge request's error, if one raised (null when scored)."),
    _f("judge_attempts", pa.int32(), "Judge requests made for this score."),
    _f("judge_history", pa.bool_(), "The judge saw the conversation so far (else only the current message)."),
    _f("scoring", pa.string(), "'expected' (G-Eval) or 'sampled' (parsed free text)."),
    _f("model", pa.string(), "Model under test."),
    _f("simulator_model", pa.string(), "Model of the user simulator."),
    _f("judge_model", pa.string(), "Model of the judge."),
    _f("prompt_version", pa.string(), "Version of the benchmark prompts.", False),
    _f("user_seed", pa.int64(), "Sampling seed of the simulator request."),
    _f("reply_seed", pa.int64(), "Sampling seed of the model-under-test request."),
    _f("judge_seed", pa.int64(), "Sampling seed of the judge's last request."),
    _f("reply_prompt_tokens", pa.int32(), "Prompt tokens of the reply's request."),
    _f("reply_tokens", pa.int32(), "Tokens of the reply."),
    _f("reply_finish_reason", pa.string(), "'stop', 'length'..."),
    _f("reply_latency_s", pa.float64(), "Seconds the reply took, retries included."),
])

EVAL_ROLLOUTS = pa.schema([
    _f("run_id", pa.string(), "Run the evaluation belongs to.", False),
    _f("eval_name", pa.string(), "Name of the evaluation inside the run.", False),
    _f("rollout_id", pa.string(), "Deterministic id: hash of run id, eval name, persona id, seed.", False),
    _f("persona_id", pa.string(), "Persona the user simulator played.", False),
    _f("profile", pa.string(), "The persona's profile.", False),
    _f("personality", pa.string(), "The persona's personality.", False),
    _f("split", pa.string(), "The persona's split (benchmark: held out)."),
    _f("source", pa.string(), "Where the persona came from."),
    _f("status", pa.string(), "'ok' (every turn ran; a score may still be missing) or 'failed' (its completed turns are in turns; no metric counts them).", False),
    _f("failure_reason", pa.string(), "Why the rollout failed (null when ok)."),
    _f("turns", pa.int32(), "Turns written for the rollout."),
    _f("scores_missing", pa.int32(), "Turns whose score is missing (judge reply never parsed)."),
    _f("mean_score", pa.float64(), "Mean score over the rollout's turns."),
    _f("ir", pa.float64(), "The persona's own improvement rate: slope of its scores over k."),
    _f("r2", pa.float64(), "R^2 of that line (null when the scores do not vary)."),
    _f("judge_history", pa.bool_(), "The judge saw the conversation so far."),
    _f("scoring", pa.string(), "'expected' or 'sampled'."),
    _f("llm_calls", pa.int32(), "Engine requests made, retries included."),
    _f("prompt_tokens", pa.int64(), "Prompt tokens over all requests."),
    _f("completion_tokens", pa.int64(), "Generated tokens over all requests."),
    _f("latency_s", pa.float64(), "Wall seconds the rollout took."),
    _f("seed", pa.int64(), "Rollout seed."),
    _f("models", pa.string(), "JSON: model of each role."),
    _f("prompt_version", pa.string(), "Version of the benchmark prompts.", False),
    _f("finished_at", pa.timestamp("us", tz="UTC"), "When the rollout was written."),
])

POOL_MEMBERS = pa.schema([
    _f("run_id", pa.string(), "Run that built the pool.", False),
    _f("kind", pa.string(), "'profile' or 'personality'.", False),
    _f("member_id", pa.string(), "Stable id of the text (as profile_id / personality_id in personas).", False),
    _f("text", pa.string(), "The profile (facts only) or personality (traits only).", False),
    _f("round", pa.int32(), "Round that added it: 0 for the seeds, then 1, 2, ...", False),
    _f("source", pa.string(), "'seeds', the seed file or table it came from, or 'round-N'.", False),
    _f("request_index", pa.int32(), "Generation request (within the round) whose reply held it; null for seeds."),
    _f("max_similarity", pa.float32(), "Largest cosine similarity to the members kept before it, when it was accepted."),
    _f("embedding", pa.list_(pa.float32()), "L2-normalised sentence embedding (model in the manifest)."),
    _f("model", pa.string(), "Model that wrote it; null for seeds."),
    _f("prompt_version", pa.string(), "Version of the generation prompts; null for seeds."),
    _f("seed", pa.int64(), "Sampling seed of the request that wrote it."),
])

POOL_ROUNDS = pa.schema([
    _f("run_id", pa.string(), "Run that built the pool.", False),
    _f("round", pa.int32(), "Round number; 0 is the seeds.", False),
    _f("kind", pa.string(), "'profile' or 'personality'.", False),
    _f("requests", pa.int32(), "Generation requests sent."),
    _f("requests_failed", pa.int32(), "Requests whose engine call failed after retries (no reply)."),
    _f("asked", pa.int32(), "New members asked for (requests x new per request)."),
    _f("candidates", pa.int32(), "Items parsed from the replies."),
    _f("rejected_filter", pa.int32(), "Candidates rejected by a filter (length, language, role leak...)."),
    _f("rejection_reasons", pa.string(), "JSON: rejected candidates per reason, dedup included."),
    _f("rejected_duplicate", pa.int32(), "Candidates rejected as too similar to a kept member."),
    _f("accepted", pa.int32(), "Candidates added to the pool.", False),
    _f("acceptance_rate", pa.float64(), "accepted / candidates (0 when there were none)."),
    _f("pool_size", pa.int32(), "Members of this kind after the round.", False),
    _f("similarity_histogram", pa.list_(pa.int32()),
       "Filtered candidates per max-similarity bin: 10 equal bins over [0, 1] (below 0 in the first)."),
    _f("stopped", pa.string(), "Why this kind stops after the round ('target', 'acceptance', 'max_rounds'), or null."),
    _f("prompt_tokens", pa.int64(), "Prompt tokens of the round's requests."),
    _f("completion_tokens", pa.int64(), "Generated tokens of the round's requests."),
    _f("generate_s", pa.float64(), "Seconds the round's generation and embedding took (both kinds together)."),
    _f("dedup_s", pa.float64(), "Seconds this kind's dedup took."),
    _f("committed_at", pa.timestamp("us", tz="UTC"), "When the round was committed."),
])

_MESSAGES = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))

# The training jobs export the rows they train on (TRL's conversational formats).
SFT = pa.schema([
    _f("run_id", pa.string(), "Run that grew the tree.", False),
    _f("tree_id", pa.string(), "Tree the conversation comes from.", False),
    _f("example_id", pa.string(), "Deterministic id: hash of tree id and leaf node.", False),
    _f("messages", _MESSAGES, "The conversation along the continued path: user/assistant alternating.", False),
    _f("assistant_targets", pa.list_(pa.bool_()), "Per assistant message: carries loss (chosen by the judge).", False),
    _f("num_turns", pa.int32(), "Turns in the conversation."),
    _f("num_targets", pa.int32(), "Assistant messages with loss."),
])

DPO = pa.schema([
    _f("run_id", pa.string(), "Run that grew the tree.", False),
    _f("tree_id", pa.string(), "Tree the pair comes from.", False),
    _f("pair_id", pa.string(), "Deterministic id: hash of tree id and the two candidates.", False),
    _f("turn", pa.int32(), "Turn of the pair.", False),
    _f("prompt", _MESSAGES, "History along the continued path up to and including the user message.", False),
    _f("chosen", _MESSAGES, "The judge-preferred reply (one assistant message).", False),
    _f("rejected", _MESSAGES, "Another candidate of the same turn (one assistant message).", False),
    _f("chosen_node_id", pa.string(), "Node of the chosen reply."),
    _f("rejected_node_id", pa.string(), "Node of the rejected reply."),
    _f("chosen_personalized", pa.bool_(), "The chosen reply was written with the induced persona as hint."),
    _f("judge_margin", pa.float64(), "Judge probability of chosen minus rejected, if known."),
    _f("source", pa.string(), "Who preferred chosen: 'trees' (the tree judge) or 'human' (a person, in an "
       "interactive side-by-side session: run_id 'interactive', tree_id the session id)."),
])

TABLES = {"personas": PERSONAS, "nodes": NODES, "trees": TREES, "eval_turns": EVAL_TURNS,
          "eval_rollouts": EVAL_ROLLOUTS, "profiles": POOL_MEMBERS, "personalities": POOL_MEMBERS,
          "rounds": POOL_ROUNDS, "sft": SFT, "dpo": DPO}


def describe(schema: pa.Schema) -> str:
    """A Markdown table of a schema's columns (for docs)."""
    rows = ["| column | type | meaning |", "|---|---|---|"]
    for field in schema:
        doc = (field.metadata or {}).get(b"doc", b"").decode()
        rows.append(f"| `{field.name}` | {field.type} | {doc} |")
    return "\n".join(rows)


def schema_doc() -> str:
    """docs/schemas.md, generated from the schemas above."""
    parts = ["# Tables\n", "Every table is Parquet under one run root: `<output>/<run_id>/<table>/part-*.parquet`.",
             "Schemas are declared once, in `aloe_ray/schema.py`; this page is generated from them",
             "(`python -m aloe_ray.schema > docs/schemas.md`; a test keeps it in sync).\n"]
    for name, schema in TABLES.items():
        parts += [f"## `{name}`\n", describe(schema), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(schema_doc(), end="")
